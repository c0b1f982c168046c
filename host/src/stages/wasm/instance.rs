//! A stage instance's life: created from its plugin in a store of its own
//! with the sandbox limits, initialised with the stage's settings, called
//! with a fresh time budget per call, and discarded after a failure (a
//! trap, an exceeded limit, malformed outcomes), to be rebuilt, with the
//! last state of a stateful stage, before the next call.

use stage_sdk::batch::{self, Batch, Outcomes, SideRecord};
use wasmtime::Store;

use super::contract::Funcs;
use super::engine::Interrupt;
use super::host::HostState;
use super::plugin::Plugin;
use super::wit;
use crate::stages::{StageError, StageLimits};

impl Plugin {
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

    /// A new instance in a new store, initialised with `config`.
    fn fresh(&self, config: &[(String, String)]) -> Result<Live, StageError> {
        off_runtime(|| self.fresh_here(config))
    }

    /// [`Plugin::fresh`] on the calling thread.
    fn fresh_here(&self, config: &[(String, String)]) -> Result<Live, StageError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(self.name.clone(), self.limits.memory_bytes),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.limits.output_bytes());
        arm(self.interrupt, self.limits, &mut store);
        let raw = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.error(&e))?;
        let funcs = self
            .exports
            .load(&mut store, &raw)
            .map_err(|e| self.error(&e))?;
        let entries: Vec<wit::ConfigEntry> = config
            .iter()
            .map(|(k, v)| wit::ConfigEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        arm(self.interrupt, self.limits, &mut store);
        match funcs.init(&mut store, entries) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(StageError::ConfigRefused {
                    stage: self.name.to_string(),
                    message,
                });
            }
            Err(e) => return Err(self.error(&e)),
        }
        arm(self.interrupt, self.limits, &mut store);
        let routes = funcs.routes(&mut store).map_err(|e| self.error(&e))?;
        Ok(Live {
            store,
            funcs,
            routes,
        })
    }
}

/// Runs `f`, a call into a guest, where the WASI functions it may call can
/// block: wasmtime-wasi drives their futures (`poll`, stream writes) with
/// the current tokio runtime's `Handle::block_on`, which panics on a thread
/// that drives async tasks, so a stage that sleeps in `init` would crash
/// the host. On a runtime worker (or inside `Runtime::block_on`) the call
/// runs under `block_in_place`; on a blocking thread or outside a runtime
/// it runs as it is; a current-thread runtime (tests) gets a thread of the
/// stage threads' stack size for it.
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("stage".into())
                .stack_size(crate::stages::STAGE_THREAD_STACK)
                .spawn_scoped(s, f)
                .expect("spawn a stage thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
    }
}

/// Gives `store` a fresh budget for one call.
fn arm(interrupt: Interrupt, limits: StageLimits, store: &mut Store<HostState>) {
    match interrupt {
        Interrupt::Epoch => {
            store.set_epoch_deadline(limits.budget_ticks());
            store.data_mut().budget_ends = Some(std::time::Instant::now() + limits.time_budget);
        }
        Interrupt::Fuel => {
            let _ = store.set_fuel(u64::MAX);
        }
        Interrupt::None => {}
    }
}

/// One initialised instance in its store.
struct Live {
    store: Store<HostState>,
    funcs: Funcs,
    /// The route names the instance declared after `init`.
    routes: Vec<String>,
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
    fn call<R: Send>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R> + Send,
    ) -> Result<R, StageError> {
        let (interrupt, limits) = (self.plugin.interrupt, self.plugin.limits);
        let live = self.live()?;
        arm(interrupt, limits, &mut live.store);
        match off_runtime(|| f(live)) {
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
        let mut wit_batch = Some(to_wit(batch));
        let result = self.call(|l| {
            let (back, result) = l
                .funcs
                .process(&mut l.store, wit_batch.take().expect("batch"));
            wit_batch = Some(back);
            result
        });
        let batch = wit_batch.map(from_wit).unwrap_or_default();
        (batch, result)
    }

    /// The names of the routes the stage declared (empty for a 0.1.0
    /// stage); the instance is created if needed.
    pub fn routes(&mut self) -> Result<Vec<String>, StageError> {
        Ok(self.live()?.routes.clone())
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
        let side = self.call(|l| l.funcs.on_timer(&mut l.store, ctx))?;
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
        let state = self.call(|l| l.funcs.snapshot(&mut l.store))?;
        self.last_state.clone_from(&state);
        Ok(state)
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
    arm(plugin.interrupt, plugin.limits, &mut live.store);
    let result = off_runtime(|| live.funcs.restore(&mut live.store, state.to_vec()));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(StageError::ConfigRefused {
            stage: plugin.name().to_string(),
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
