//! WebAssembly stages: the wasmtime engine, compiled plugins, and the
//! sandboxed instances that process batches.
//!
//! One [`WasmEngine`] per process (shared compiled code, one epoch ticker),
//! one [`Plugin`] per configured stage (compiled once, validated against the
//! `stage` world), and one [`WasmStage`] instance per partition worker. An
//! instance that traps, exceeds a limit or returns malformed outcomes is
//! discarded and a fresh one is initialised from the plugin before the next
//! batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stage_sdk::batch::{self, Batch, Outcomes};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::{StageError, StageLimits};

/// Bindings generated from `wit/stage.wit`, world `stage`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "stage",
        imports: { default: trappable },
    });
}

use bindings::pipeline::stage::types as wit;

/// How often the engine's epoch advances: the resolution of per-batch time
/// budgets.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The shared wasmtime engine and linker.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    _ticker: Arc<Ticker>,
}

/// Stops the epoch thread when the last engine clone is dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// Creates the engine (Cranelift, epoch interruption, component model)
    /// and starts the epoch ticker thread.
    pub fn new() -> Result<Self, StageError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.concurrency_support(false);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| StageError::Engine(e.to_string()))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        bindings::Stage::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| StageError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            _ticker: Arc::new(Ticker(ticker_stop)),
        })
    }

    /// Compiles the component at `path` and checks that it implements the
    /// `stage` world. `.wat` files are accepted as text.
    pub fn load(&self, name: &str, path: &Path, limits: StageLimits) -> Result<Plugin, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::Load {
            stage: name.into(),
            path: path.into(),
            reason: format!("cannot read the file: {e}"),
        })?;
        self.load_bytes(name, path, &bytes, limits)
    }

    /// Like [`WasmEngine::load`], from bytes already read.
    pub fn load_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
        limits: StageLimits,
    ) -> Result<Plugin, StageError> {
        let load_err = |reason: String| StageError::Load {
            stage: name.into(),
            path: path.into(),
            reason,
        };
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| load_err(format!("not a valid component: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("imports something the host does not offer: {e:#}")))?;
        let pre = bindings::StagePre::new(pre).map_err(|e| {
            load_err(format!(
                "does not implement the world pipeline:stage/stage@0.1.0: {e:#}"
            ))
        })?;
        Ok(Plugin {
            name: name.into(),
            path: path.into(),
            pre,
            engine: self.engine.clone(),
            limits,
            _ticker: self._ticker.clone(),
        })
    }
}

/// A compiled, validated stage component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    pre: bindings::StagePre<HostState>,
    engine: Engine,
    limits: StageLimits,
    /// Keeps the epoch thread running while the plugin (or an instance of
    /// it) lives, even after the [`WasmEngine`] is dropped.
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates a sandboxed instance and initialises it with `config`.
    /// A refused configuration is [`StageError::ConfigRefused`].
    pub fn instantiate(&self, config: &[(String, String)]) -> Result<WasmStage, StageError> {
        let (store, instance) = self.fresh(config)?;
        Ok(WasmStage {
            plugin: self.clone(),
            config: config.to_vec(),
            store,
            instance: Some(instance),
        })
    }

    fn fresh(
        &self,
        config: &[(String, String)],
    ) -> Result<(Store<HostState>, bindings::Stage), StageError> {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(64)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits,
                stage: self.name.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.limits.budget_ticks());
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.error(&e))?;
        let entries: Vec<wit::ConfigEntry> = config
            .iter()
            .map(|(k, v)| wit::ConfigEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        store.set_epoch_deadline(self.limits.budget_ticks());
        match instance
            .pipeline_stage_transform()
            .call_init(&mut store, &entries)
        {
            Ok(Ok(())) => Ok((store, instance)),
            Ok(Err(message)) => Err(StageError::ConfigRefused {
                stage: self.name.to_string(),
                message,
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// Classifies a wasmtime error into the limit that fired, if any.
    fn error(&self, e: &wasmtime::Error) -> StageError {
        let stage = self.name.to_string();
        let message = format!("{e:#}");
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => StageError::TimeBudget {
                stage,
                budget: self.limits.time_budget,
            },
            Some(Trap::StackOverflow) => StageError::StackOverflow { stage },
            _ if message.contains("forcing trap when growing memory") => StageError::MemoryLimit {
                stage,
                limit: self.limits.memory_bytes,
            },
            _ => StageError::Trap { stage, message },
        }
    }
}

/// Per-instance host state: the empty WASI context, limits and the stage's
/// name for log lines.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stage: Arc<str>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::pipeline::stage::types::Host for HostState {}

impl bindings::pipeline::stage::host::Host for HostState {
    fn log(&mut self, level: wit::Level, message: String) -> wasmtime::Result<()> {
        let stage = &*self.stage;
        match level {
            wit::Level::Trace => tracing::trace!(stage, "{message}"),
            wit::Level::Debug => tracing::debug!(stage, "{message}"),
            wit::Level::Info => tracing::info!(stage, "{message}"),
            wit::Level::Warn => tracing::warn!(stage, "{message}"),
            wit::Level::Error => tracing::error!(stage, "{message}"),
        }
        Ok(())
    }
}

/// A clock that always reads the Unix epoch: guests get no time from WASI.
/// Time reaches a stage only as `batch-context.now-ms`.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A live instance of a plugin.
pub struct WasmStage {
    plugin: Plugin,
    config: Vec<(String, String)>,
    store: Store<HostState>,
    /// `None` after a failure until the instance is rebuilt.
    instance: Option<bindings::Stage>,
}

impl std::fmt::Debug for WasmStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStage")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl WasmStage {
    /// The stage's name.
    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Runs the stage over `batch`. On a trap or exceeded limit the instance
    /// is discarded (a fresh one serves the next batch) and the error says
    /// which limit fired. The batch's buffers are handed back for reuse.
    pub fn process(&mut self, batch: Batch) -> (Batch, Result<Outcomes, StageError>) {
        if self.instance.is_none() {
            match self.plugin.fresh(&self.config) {
                Ok((store, instance)) => {
                    self.store = store;
                    self.instance = Some(instance);
                }
                Err(e) => return (batch, Err(e)),
            }
        }
        let instance = self.instance.as_ref().expect("instance was just ensured");
        let wit_batch = to_wit(batch);
        self.store
            .set_epoch_deadline(self.plugin.limits.budget_ticks());
        let result = instance
            .pipeline_stage_transform()
            .call_process(&mut self.store, &wit_batch);
        let batch = from_wit(wit_batch);
        match result {
            Ok(out) => (batch, Ok(outcomes_from_wit(out))),
            Err(e) => {
                let err = self.plugin.error(&e);
                tracing::warn!(stage = self.name(), error = %err, "stage failed; its instance is recycled");
                self.instance = None;
                (batch, Err(err))
            }
        }
    }

    /// Marks the instance as unusable (after malformed outcomes), so the
    /// next batch gets a fresh one.
    pub fn recycle(&mut self) {
        self.instance = None;
    }
}

fn to_wit(b: Batch) -> wit::Batch {
    stage_sdk::move_batch!(b => wit::Batch, wit::BatchContext)
}

fn from_wit(b: wit::Batch) -> Batch {
    stage_sdk::move_batch!(b => Batch, batch::Context)
}

fn outcomes_from_wit(o: wit::Outcomes) -> Outcomes {
    stage_sdk::move_outcomes!(o, wit::Verdict => Outcomes, batch::Verdict, batch::NewRecord, batch::Header, batch::SideRecord)
}
