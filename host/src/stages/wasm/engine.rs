//! The engine: wasmtime engines with the component model, Cranelift and
//! epoch interruption (one per stack size, since wasmtime fixes the stack
//! limit per engine), their linkers with the host's imports, and the epoch
//! thread that advances every engine's epoch each [`EPOCH_TICK`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings;
use super::cache::CompileCache;
use super::host::{BudgetedClocks, HostState, budgeted_clock};
use super::plugin::{Plugin, PluginFile};
use crate::stages::{StageError, StageLimits};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;

/// How often the engine's epoch advances: the resolution of per-batch time
/// budgets.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

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
pub(super) struct EngineParts {
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<HostState>>,
}

/// Stops the epoch thread when the last engine clone is dropped.
pub(super) struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("cache", &self.cache.as_ref().map(|c| c.dir()))
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
        self.cache = dir.map(|dir| Arc::new(CompileCache::new(dir)));
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
        // `PIPELINE_PERFMAP=1`: the compiled stages' functions named in
        // /tmp/perf-PID.map, so `perf report` attributes guest time to
        // them (README, Writing a stage).
        if std::env::var_os("PIPELINE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| StageError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        // Clock subscriptions that never block past the budget (host.rs).
        linker.allow_shadowing(true);
        monotonic_clock::add_to_linker::<HostState, BudgetedClocks>(&mut linker, budgeted_clock)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        linker.allow_shadowing(false);
        bindings::Stage::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| StageError::Engine(e.to_string()))?;
        super::contract::link_v01(&mut linker).map_err(|e| StageError::Engine(e.to_string()))?;
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
        Plugin::new(
            name,
            path,
            sha256,
            source,
            &parts,
            &component,
            limits,
            self.interrupt,
            self._ticker.clone(),
        )
    }
}
