//! WebAssembly stages: the wasmtime engine, compiled plugins, and the
//! sandboxed instances that process batches.
//!
//! One [`WasmEngine`] per process (shared compiled code, one epoch ticker),
//! one [`Plugin`] per configured stage (compiled once, validated against the
//! `stage` world), and one [`WasmStage`] instance per partition worker. An
//! instance that traps, exceeds a limit or returns malformed outcomes is
//! discarded and a fresh one is initialised from the plugin before the next
//! batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stage_sdk::batch::{self, Batch, Outcomes, SideRecord};
use wasmtime::component::{
    Component, ComponentExportIndex, HasSelf, Linker, ResourceTable, TypedFunc,
};
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

/// The shared wasmtime engines and linkers, and the on-disk compile cache.
///
/// wasmtime fixes the stack limit per engine, so there is one engine per
/// distinct `stack_kb` setting (usually one); compiled code belongs to the
/// engine it was compiled with.
#[derive(Clone)]
pub struct WasmEngine {
    interrupt: Interrupt,
    engines: Arc<Mutex<HashMap<usize, EngineParts>>>,
    ticking: Arc<Mutex<Vec<Engine>>>,
    cache: Option<Arc<CompileCache>>,
    _ticker: Arc<Ticker>,
}

/// One engine and its linker.
#[derive(Clone)]
struct EngineParts {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
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
        f.debug_struct("WasmEngine")
            .field("cache", &self.cache.as_ref().map(|c| &c.dir))
            .finish_non_exhaustive()
    }
}

/// How a runaway stage is stopped. The pipeline always uses
/// [`Interrupt::Epoch`]; the others exist so `pipeline-host bench` can
/// measure what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interrupt {
    /// A 10 ms epoch tick checked at loop heads and calls: a wall-clock
    /// budget per batch (the default).
    #[default]
    Epoch,
    /// Fuel metering (an instruction count), with an unlimited tank.
    Fuel,
    /// Nothing: a looping stage would hang its worker. Benchmarks only.
    None,
}

/// What loading a plugin did, for log lines and `plugin check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled with Cranelift now.
    Compiled,
    /// Read from the on-disk compile cache.
    Cached,
}

impl WasmEngine {
    /// Creates the engine set (Cranelift, epoch interruption, component
    /// model) and starts the epoch ticker thread. No compile cache.
    pub fn new() -> Result<Self, StageError> {
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticking: Arc<Mutex<Vec<Engine>>> = Arc::default();
        let (engines, stop) = (ticking.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for e in engines.lock().expect("engine list").iter() {
                        e.increment_epoch();
                    }
                }
            })
            .map_err(|e| StageError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            interrupt: Interrupt::Epoch,
            engines: Arc::default(),
            ticking,
            cache: None,
            _ticker: Arc::new(Ticker(ticker_stop)),
        })
    }

    /// Keeps compiled components in `dir` (created if missing), keyed by
    /// the sha256 of the plugin file and the engine's compatibility hash, so
    /// a restart loads them without compiling.
    pub fn with_compile_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.cache = dir.map(|dir| Arc::new(CompileCache { dir }));
        self
    }

    /// Selects how runaway stages are stopped (benchmarks); call before
    /// loading anything.
    pub fn with_interrupt(mut self, interrupt: Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// The engine for `stack_bytes`, created on first use.
    fn parts(&self, stack_bytes: usize) -> Result<EngineParts, StageError> {
        let mut engines = self.engines.lock().expect("engine map");
        if let Some(p) = engines.get(&stack_bytes) {
            return Ok(p.clone());
        }
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(self.interrupt == Interrupt::Epoch);
        config.consume_fuel(self.interrupt == Interrupt::Fuel);
        config.concurrency_support(false);
        config.max_wasm_stack(stack_bytes);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| StageError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        bindings::Stage::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        let parts = EngineParts {
            engine: engine.clone(),
            linker: Arc::new(linker),
        };
        self.ticking.lock().expect("engine list").push(engine);
        engines.insert(stack_bytes, parts.clone());
        Ok(parts)
    }

    /// Compiles the component at `path` (or reads it from the compile
    /// cache) and checks that it implements the `stage` world. `.wat` files
    /// are accepted as text.
    pub fn load(&self, name: &str, path: &Path, limits: StageLimits) -> Result<Plugin, StageError> {
        self.load_file(name, path, &PluginFile::read(name, path)?, limits)
    }

    /// Like [`WasmEngine::load`], from a file already read.
    pub fn load_file(
        &self,
        name: &str,
        path: &Path,
        file: &PluginFile,
        limits: StageLimits,
    ) -> Result<Plugin, StageError> {
        let (bytes, sha256) = (&file.bytes, &file.sha256);
        let load_err = |reason: String| StageError::Load {
            stage: name.into(),
            path: path.into(),
            reason,
        };
        let parts = self.parts(limits.stack_bytes)?;
        let (component, source) = match &self.cache {
            Some(cache) => cache.get_or_compile(&parts.engine, sha256, bytes),
            None => Component::new(&parts.engine, bytes).map(|c| (c, CompileSource::Compiled)),
        }
        .map_err(|e| load_err(format!("not a valid component: {e:#}")))?;
        let pre = parts
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("imports something the host does not offer: {e:#}")))?;
        let stateful = StatefulExports::find(&component);
        let pre = bindings::StagePre::new(pre).map_err(|e| {
            load_err(format!(
                "does not implement the world pipeline:stage/stage@0.1.0: {e:#}"
            ))
        })?;
        Ok(Plugin {
            name: name.into(),
            path: path.into(),
            sha256: sha256.as_str().into(),
            source,
            pre,
            stateful,
            engine: parts.engine,
            limits,
            interrupt: self.interrupt,
            _ticker: self._ticker.clone(),
        })
    }
}

/// A plugin file read into memory, with its sha256 (computed once: the
/// pin check, the reuse check of a reload and the compile cache key all use
/// it).
#[derive(Debug)]
pub struct PluginFile {
    /// The file's bytes (`.wasm`, or `.wat` text).
    pub bytes: Vec<u8>,
    /// Lower-case hex sha256 of `bytes`.
    pub sha256: String,
}

impl PluginFile {
    /// Reads the plugin file of stage `name`.
    pub fn read(name: &str, path: &Path) -> Result<Self, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::Load {
            stage: name.into(),
            path: path.into(),
            reason: format!("cannot read the file: {e}"),
        })?;
        let sha256 = sha256_hex(&bytes);
        Ok(Self { bytes, sha256 })
    }
}

/// Lower-case hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiled components on disk.
#[derive(Debug)]
struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// The component for `bytes` (whose sha256 is `sha256`): from the cache
    /// when an entry for this content and engine exists, else compiled and
    /// stored. Cache problems are logged and never fail a load.
    fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CompileSource)> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let file = self.dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if file.exists() {
            // SAFETY: wasmtime requires that the file was produced by
            // `Component::serialize` with a compatible engine and not
            // tampered with. This host writes the cache directory itself
            // (atomically, via rename), the name binds the source hash and
            // the engine's compatibility hash, and wasmtime re-checks the
            // engine settings in the file's header. Operators must keep the
            // directory as private as the plugins themselves.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, &file) } {
                Ok(c) => return Ok((c, CompileSource::Cached)),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %format!("{e:#}"), "compile cache entry unusable; compiling again")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        let store = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, component.serialize().map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &file)
        };
        if let Err(e) = store() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache; loads will compile");
        }
        Ok((component, CompileSource::Compiled))
    }
}

/// Where a component's `stateful` exports are, when it has them.
#[derive(Debug, Clone, Copy)]
struct StatefulExports {
    on_timer: ComponentExportIndex,
    snapshot: ComponentExportIndex,
    restore: ComponentExportIndex,
}

/// The name of the `stateful` interface export.
const STATEFUL: &str = "pipeline:stage/stateful@0.1.0";

impl StatefulExports {
    fn find(component: &Component) -> Option<Self> {
        let iface = component.get_export_index(None, STATEFUL)?;
        let f = |name: &str| component.get_export_index(Some(&iface), name);
        Some(Self {
            on_timer: f("on-timer")?,
            snapshot: f("snapshot")?,
            restore: f("restore")?,
        })
    }
}

/// The `stateful` functions of one instance, type-checked.
struct StatefulFuncs {
    on_timer: TypedFunc<(wit::BatchContext,), (Vec<wit::SideRecord>,)>,
    snapshot: TypedFunc<(), (Vec<u8>,)>,
    restore: TypedFunc<(Vec<u8>,), (Result<(), String>,)>,
}

/// A compiled, validated stage component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    sha256: Arc<str>,
    source: CompileSource,
    pre: bindings::StagePre<HostState>,
    stateful: Option<StatefulExports>,
    engine: Engine,
    limits: StageLimits,
    interrupt: Interrupt,
    /// Keeps the epoch thread running while the plugin (or an instance of
    /// it) lives, even after the [`WasmEngine`] is dropped.
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lower-case hex sha256 of the plugin file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether this load compiled the component or read it from the cache.
    pub fn source(&self) -> CompileSource {
        self.source
    }

    /// The sandbox limits.
    pub fn limits(&self) -> StageLimits {
        self.limits
    }

    /// True when the component implements the `stateful-stage` world
    /// (timers and state hand-over).
    pub fn is_stateful(&self) -> bool {
        self.stateful.is_some()
    }

    /// Creates a sandboxed instance and initialises it with `config`.
    /// A refused configuration is [`StageError::ConfigRefused`].
    pub fn instantiate(&self, config: &[(String, String)]) -> Result<WasmStage, StageError> {
        let live = self.fresh(config)?;
        Ok(WasmStage {
            plugin: self.clone(),
            config: config.to_vec(),
            live: Some(Box::new(live)),
            last_state: None,
        })
    }

    fn fresh(&self, config: &[(String, String)]) -> Result<Live, StageError> {
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
        arm(self.interrupt, self.limits, &mut store);
        let raw = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| self.error(&e))?;
        let instance = bindings::Stage::new(&mut store, &raw).map_err(|e| self.error(&e))?;
        let stateful = match &self.stateful {
            None => None,
            Some(x) => Some(StatefulFuncs {
                on_timer: raw
                    .get_typed_func(&mut store, x.on_timer)
                    .map_err(|e| self.malformed_world(&e))?,
                snapshot: raw
                    .get_typed_func(&mut store, x.snapshot)
                    .map_err(|e| self.malformed_world(&e))?,
                restore: raw
                    .get_typed_func(&mut store, x.restore)
                    .map_err(|e| self.malformed_world(&e))?,
            }),
        };
        let entries: Vec<wit::ConfigEntry> = config
            .iter()
            .map(|(k, v)| wit::ConfigEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        arm(self.interrupt, self.limits, &mut store);
        match instance
            .pipeline_stage_transform()
            .call_init(&mut store, &entries)
        {
            Ok(Ok(())) => Ok(Live {
                store,
                instance,
                stateful,
            }),
            Ok(Err(message)) => Err(StageError::ConfigRefused {
                stage: self.name.to_string(),
                message,
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    fn malformed_world(&self, e: &wasmtime::Error) -> StageError {
        StageError::Load {
            stage: self.name.to_string(),
            path: self.path.clone(),
            reason: format!("exports {STATEFUL} with the wrong types: {e:#}"),
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
            Some(trap) => StageError::Trap {
                stage,
                message: trap.to_string(),
            },
            None => StageError::Trap {
                stage,
                message: message.replace('\n', " "),
            },
        }
    }
}

/// Gives `store` a fresh budget for one call.
fn arm(interrupt: Interrupt, limits: StageLimits, store: &mut Store<HostState>) {
    match interrupt {
        Interrupt::Epoch => store.set_epoch_deadline(limits.budget_ticks()),
        Interrupt::Fuel => {
            let _ = store.set_fuel(u64::MAX);
        }
        Interrupt::None => {}
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

/// One initialised instance in its store.
struct Live {
    store: Store<HostState>,
    instance: bindings::Stage,
    stateful: Option<StatefulFuncs>,
}

/// A stage instance of a plugin that replaces itself after a failure.
pub struct WasmStage {
    plugin: Plugin,
    config: Vec<(String, String)>,
    /// `None` after a failure until the instance is rebuilt.
    live: Option<Box<Live>>,
    /// The state last taken from (or given to) a stateful instance: a
    /// rebuilt instance starts from it.
    last_state: Option<Vec<u8>>,
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

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The live instance, rebuilt (and given the last state) if a failure
    /// discarded it.
    fn live(&mut self) -> Result<&mut Live, StageError> {
        if self.live.is_none() {
            let mut live = self.plugin.fresh(&self.config)?;
            if let Some(state) = &self.last_state {
                restore(&self.plugin, &mut live, state)?;
            }
            self.live = Some(Box::new(live));
        }
        Ok(self.live.as_mut().expect("instance was just ensured"))
    }

    /// Runs `f` on the live instance with a fresh time budget; a failure
    /// discards the instance and names the limit that fired.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, StageError> {
        let (interrupt, limits) = (self.plugin.interrupt, self.plugin.limits);
        let live = self.live()?;
        arm(interrupt, limits, &mut live.store);
        match f(live) {
            Ok(r) => Ok(r),
            Err(e) => {
                let err = self.plugin.error(&e);
                tracing::warn!(stage = self.name(), error = %err, "stage failed; its instance is recycled");
                self.live = None;
                Err(err)
            }
        }
    }

    /// Runs the stage over `batch`. On a trap or exceeded limit the instance
    /// is discarded (a fresh one serves the next batch) and the error says
    /// which limit fired. The batch's buffers are handed back for reuse.
    pub fn process(&mut self, batch: Batch) -> (Batch, Result<Outcomes, StageError>) {
        let wit_batch = to_wit(batch);
        let result = self.call(|l| {
            l.instance
                .pipeline_stage_transform()
                .call_process(&mut l.store, &wit_batch)
        });
        (from_wit(wit_batch), result.map(outcomes_from_wit))
    }

    /// Marks the instance as unusable (after malformed outcomes), so the
    /// next batch gets a fresh one.
    pub fn recycle(&mut self) {
        self.live = None;
    }

    /// True when the plugin implements the `stateful-stage` world.
    pub fn is_stateful(&self) -> bool {
        self.plugin.is_stateful()
    }

    /// Calls the stage's `on-timer` (stateful stages; others return
    /// nothing) and returns its side records.
    pub fn on_timer(&mut self, context: &batch::Context) -> Result<Vec<SideRecord>, StageError> {
        if !self.is_stateful() {
            return Ok(Vec::new());
        }
        let ctx = wit::BatchContext {
            now_ms: context.now_ms,
            topic: context.topic.clone(),
            partition: context.partition,
        };
        let side = self.call(|l| {
            let f = &l.stateful.as_ref().expect("stateful plugin").on_timer;
            let (side,) = f.call(&mut l.store, (ctx,))?;
            Ok(side)
        })?;
        Ok(side
            .into_iter()
            .map(|s| SideRecord {
                output: s.output,
                key: s.key,
                value: s.value,
            })
            .collect())
    }

    /// The stage's state (stateful stages; `None` for others). The state is
    /// also kept so that an instance rebuilt after a failure resumes from it.
    pub fn snapshot(&mut self) -> Result<Option<Vec<u8>>, StageError> {
        if !self.is_stateful() {
            return Ok(None);
        }
        let state = self.call(|l| {
            let f = &l.stateful.as_ref().expect("stateful plugin").snapshot;
            let (state,) = f.call(&mut l.store, ())?;
            Ok(state)
        })?;
        self.last_state = Some(state.clone());
        Ok(Some(state))
    }

    /// Gives the stage a state taken by `snapshot` of this or an earlier
    /// version of the stage.
    pub fn restore(&mut self, state: &[u8]) -> Result<(), StageError> {
        if !self.is_stateful() {
            return Ok(());
        }
        let plugin = self.plugin.clone();
        let live = self.live()?;
        restore(&plugin, live, state)?;
        self.last_state = Some(state.to_vec());
        Ok(())
    }
}

/// Calls `restore` on `live`, turning a refusal into a stage error.
fn restore(plugin: &Plugin, live: &mut Live, state: &[u8]) -> Result<(), StageError> {
    let Some(funcs) = &live.stateful else {
        return Ok(());
    };
    arm(plugin.interrupt, plugin.limits, &mut live.store);
    let result = funcs
        .restore
        .call(&mut live.store, (state.to_vec(),))
        .map(|(r,)| r);
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(StageError::ConfigRefused {
            stage: plugin.name.to_string(),
            message: format!("refused the state handed to it: {message}"),
        }),
        Err(e) => Err(plugin.error(&e)),
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
