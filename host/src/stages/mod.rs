//! Stages: run a batch of input records through the chain of transform
//! stages and sort the results into output records, dead letters and drops.
//!
//! - [`wasm`]: the sandboxed WebAssembly stages (wasmtime).
//! - [`native`]: the default stages compiled into the host (benchmarks).
//! - [`chain`]: validation of input, the stage loop, merging of appended
//!   fields, and the per-record bookkeeping of where each input went.

pub mod chain;
pub mod native;
pub mod wasm;

use std::path::PathBuf;
use std::time::Duration;

use stage_sdk::{Batch, Outcomes};

pub use chain::{Chain, ChainOutput, DeadLetter, OutRecord, Tombstones};

/// Errors of the stage layer. Each names the stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The wasmtime engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// A plugin file could not be read, compiled or linked.
    #[error("stage {stage}: cannot load {}: {reason}", path.display())]
    Load {
        /// Stage name.
        stage: String,
        /// Plugin file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The stage's `init` refused its configuration.
    #[error("stage {stage} refused its configuration: {message}")]
    ConfigRefused {
        /// Stage name.
        stage: String,
        /// The stage's message.
        message: String,
    },
    /// The stage ran past its per-batch time budget.
    #[error("stage {stage} exceeded its time budget of {budget:?} for one batch")]
    TimeBudget {
        /// Stage name.
        stage: String,
        /// The budget.
        budget: Duration,
    },
    /// The stage tried to grow its memory past the cap.
    #[error("stage {stage} exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// Stage name.
        stage: String,
        /// The cap.
        limit: usize,
    },
    /// The stage overflowed its stack.
    #[error("stage {stage} overflowed its stack")]
    StackOverflow {
        /// Stage name.
        stage: String,
    },
    /// The stage trapped (panic, unreachable, out-of-bounds access).
    #[error("stage {stage} trapped: {message}")]
    Trap {
        /// Stage name.
        stage: String,
        /// wasmtime's description.
        message: String,
    },
    /// The stage returned outcomes that break the contract.
    #[error("stage {stage} returned malformed outcomes: {problem}")]
    Malformed {
        /// Stage name.
        stage: String,
        /// What is wrong.
        problem: String,
    },
}

/// Sandbox limits of one stage instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLimits {
    /// Linear memory cap in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget for one `process` (or `init`) call.
    pub time_budget: Duration,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            time_budget: Duration::from_secs(2),
        }
    }
}

impl StageLimits {
    /// The time budget in epoch ticks (at least one).
    pub fn budget_ticks(&self) -> u64 {
        (self.time_budget.as_millis() / 10).max(1) as u64
    }
}

/// A stage the chain can run: a WebAssembly instance or a native stage.
pub enum StageRunner {
    /// A sandboxed component instance.
    Wasm(wasm::WasmStage),
    /// A stage compiled into the host.
    Native(native::NativeRunner),
}

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
        }
    }

    /// Discards the current instance after the stage broke the contract.
    pub fn recycle(&mut self) {
        if let StageRunner::Wasm(s) = self {
            s.recycle();
        }
    }
}
