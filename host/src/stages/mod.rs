//! Stages: run a batch of input records through the chain of transform
//! stages and sort the results into output records, dead letters and drops.
//!
//! - [`wasm`]: the sandboxed WebAssembly stages (wasmtime).
//! - `native`: the default stages compiled into the host (benchmarks).
//! - `chain`: validation of input, the stage loop, merging of appended
//!   fields, and the per-record bookkeeping of where each input went
//!   ([`Chain`]).
//! - `output`: the output records, borrowed from the last stage's batch.
//! - `routes`: the named outputs stages route records to, by number.
//! - `set`: the loaded stage set the partitions share, and its successor
//!   after a reload.
//! - `validate`: the check that a value is one UTF-8 JSON object.
//! - `windows`: the window counts a stateful stage reports, as the status
//!   page reads them.

pub(crate) mod chain;
pub(crate) mod native;
pub(crate) mod output;
pub(crate) mod routes;
pub(crate) mod set;
pub(crate) mod validate;
pub mod wasm;
pub(crate) mod windows;

use std::path::PathBuf;
use std::time::Duration;

use stage_sdk::batch::{self, SideRecord};
use stage_sdk::{Batch, Outcomes};

pub use chain::{
    Chain, ChainOutput, DeadLetter, HOST_STAGE, InputRecord, SideOut, StageRules, Tombstones,
};
pub use output::{OutRecord, OutRef, Output};
pub use routes::{DEFAULT_ROUTE, MAX_ROUTES, RouteTable, UNMAPPED};

/// Errors of the stage layer. Each names the stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The wasmtime engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// A plugin file could not be read, compiled or linked.
    #[error("stage {stage}: cannot load {}: {reason}", path.display())]
    Load {
        /// The stage, by its configured name.
        stage: String,
        /// Plugin file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The stage's `init` refused its configuration.
    #[error("stage {stage} refused its configuration: {message}")]
    ConfigRefused {
        /// The stage, by its configured name.
        stage: String,
        /// The stage's message.
        message: String,
    },
    /// The stage ran past its per-batch time budget.
    #[error("stage {stage} exceeded its time budget of {budget:?} for one batch")]
    TimeBudget {
        /// The stage, by its configured name.
        stage: String,
        /// The budget.
        budget: Duration,
    },
    /// The stage tried to grow its memory past the cap.
    #[error("stage {stage} exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The stage, by its configured name.
        stage: String,
        /// The cap.
        limit: usize,
    },
    /// The stage overflowed its stack.
    #[error("stage {stage} overflowed its stack")]
    StackOverflow {
        /// The stage, by its configured name.
        stage: String,
    },
    /// The stage trapped (panic, unreachable, out-of-bounds access).
    #[error("stage {stage} trapped: {message}")]
    Trap {
        /// The stage, by its configured name.
        stage: String,
        /// wasmtime's description.
        message: String,
    },
    /// The stage returned more than [`StageLimits::output_bytes`] for one
    /// batch.
    #[error(
        "stage {stage} returned more than its output limit of {limit} bytes for one batch \
         (4 x memory_mb); lower the batch size or raise memory_mb"
    )]
    OutputLimit {
        /// The stage, by its configured name.
        stage: String,
        /// The limit.
        limit: usize,
    },
    /// The stage declares (or routed a record to) a route the operator did
    /// not map to a topic.
    #[error(
        "stage {stage} routes records to {route}, which no topic is mapped to; map it with --route {route}=TOPIC (or [output] routes), or change the stage's settings"
    )]
    UnmappedRoute {
        /// The stage, by its configured name.
        stage: String,
        /// The route it declared.
        route: String,
    },
    /// The stage returned outcomes that break the contract.
    #[error("stage {stage} returned malformed outcomes: {problem}")]
    Malformed {
        /// The stage, by its configured name.
        stage: String,
        /// What is wrong.
        problem: String,
    },
}

/// Native stack of every host thread that runs stage code (the runtime's
/// workers and blocking threads; `main.rs` sets it).
pub const STAGE_THREAD_STACK: usize = 4 << 20;

/// The most native stack a stage may be given (`stack_kb`): half of
/// [`STAGE_THREAD_STACK`], so the host code around a call (and the host
/// functions the stage calls) always has the other half, and no more than
/// wasmtime's own bound for it (its async stack size, 2 MiB).
pub const MAX_STAGE_STACK: usize = 2 << 20;

/// Sandbox limits of one stage instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageLimits {
    /// Cap, in bytes, on everything one instance allocates: all its linear
    /// memories and tables together.
    pub memory_bytes: usize,
    /// Wall-clock budget for one `process` (or `init`) call.
    pub time_budget: Duration,
    /// Most native stack the stage's WebAssembly code may use, in bytes.
    pub stack_bytes: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            time_budget: Duration::from_secs(2),
            stack_bytes: 512 << 10,
        }
    }
}

/// What happens to the records of a batch when a stage fails on it (trap,
/// exceeded limit, malformed outcomes). Records a stage fails one by one
/// (`fail` verdicts) always go to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Send the batch's records to the dead-letter topic with the error as
    /// reason, and go on.
    #[default]
    DeadLetter,
    /// Drop the batch's records (counted and logged with their offsets),
    /// and go on.
    Skip,
    /// Stop the pipeline (exit code 3) without delivering or committing the
    /// batch: a restart reads it again.
    Stop,
}

impl StageLimits {
    /// Most bytes one call's results may bring out of the sandbox, and most
    /// bytes the records a stage creates for one batch may hold
    /// ([`Outcomes::made_bytes`]): four times the memory cap (the host's
    /// copy of a record list takes up to three times the guest's), and never
    /// more than 2 GiB, so a batch's column ends stay within `u32`.
    ///
    /// wasmtime checks the first as it copies results out of the guest
    /// (`Store::set_hostcall_fuel`): a stage cannot make the host copy one
    /// region of its memory over and over by returning it under many
    /// records. The chain checks the second before it builds records.
    pub fn output_bytes(&self) -> usize {
        self.memory_bytes.saturating_mul(4).min(2 << 30)
    }

    /// The time budget in epoch ticks (at least one).
    pub fn budget_ticks(&self) -> u64 {
        (self.time_budget.as_millis() / 10).max(1) as u64
    }
}

/// A stage the chain can run: a WebAssembly instance or a native stage.
pub enum StageRunner {
    /// A sandboxed component instance.
    Wasm(Box<wasm::WasmStage>),
    /// A stage compiled into the host.
    Native(native::NativeRunner),
    /// A scripted stage for unit tests of the chain: its name and the
    /// function that answers each batch (an error fails the batch).
    #[cfg(test)]
    Scripted(String, Box<ScriptedStage>),
}

/// The answer of a scripted test stage to one batch.
#[cfg(test)]
pub type ScriptedStage = dyn FnMut(&Batch) -> Result<Outcomes, StageError> + Send;

impl std::fmt::Debug for StageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StageRunner").field(&self.name()).finish()
    }
}

impl StageRunner {
    /// The stage's name.
    pub fn name(&self) -> &str {
        match self {
            StageRunner::Wasm(s) => s.name(),
            StageRunner::Native(s) => &s.name,
            #[cfg(test)]
            StageRunner::Scripted(name, _) => name,
        }
    }

    /// Processes one batch; the batch's buffers come back for reuse.
    pub fn process(&mut self, batch: Batch) -> (Batch, Result<Outcomes, StageError>) {
        match self {
            StageRunner::Wasm(s) => s.process(batch),
            StageRunner::Native(s) => {
                let out = s.stage.process_batch(&batch);
                (batch, Ok(out))
            }
            #[cfg(test)]
            StageRunner::Scripted(_, f) => {
                let out = f(&batch);
                (batch, out)
            }
        }
    }

    /// The names of the routes the stage declared (contract 0.2.0).
    pub fn routes(&mut self) -> Result<Vec<String>, StageError> {
        match self {
            StageRunner::Wasm(s) => s.routes(),
            StageRunner::Native(s) => Ok(s.routes.clone()),
            #[cfg(test)]
            StageRunner::Scripted(..) => Ok(Vec::new()),
        }
    }

    /// The output limit of a sandboxed stage ([`StageLimits::output_bytes`]);
    /// `None` for a native stage, which is trusted.
    pub fn output_limit(&self) -> Option<usize> {
        match self {
            StageRunner::Wasm(s) => Some(s.plugin().limits().output_bytes()),
            _ => None,
        }
    }

    /// Discards the current instance after the stage broke the contract.
    pub fn recycle(&mut self) {
        if let StageRunner::Wasm(s) = self {
            s.recycle();
        }
    }

    /// True for a stage with state (`stateful-stage` world).
    pub fn is_stateful(&self) -> bool {
        matches!(self, StageRunner::Wasm(s) if s.is_stateful())
    }

    /// Runs the stage's timer (stateful stages only).
    pub fn on_timer(&mut self, context: &batch::Context) -> Result<Vec<SideRecord>, StageError> {
        match self {
            StageRunner::Wasm(s) => s.on_timer(context),
            _ => Ok(Vec::new()),
        }
    }

    /// The stage's state (stateful stages only).
    pub fn snapshot(&mut self) -> Result<Option<Vec<u8>>, StageError> {
        match self {
            StageRunner::Wasm(s) => s.snapshot(),
            _ => Ok(None),
        }
    }

    /// Restores a state taken by `snapshot` (stateful stages only).
    pub fn restore(&mut self, state: &[u8]) -> Result<(), StageError> {
        match self {
            StageRunner::Wasm(s) => s.restore(state),
            _ => Ok(()),
        }
    }
}
