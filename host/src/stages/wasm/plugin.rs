//! A plugin: one configured stage's component, read once, compiled, and
//! checked against the `stage` world (and, when it exports `stateful`,
//! the `stateful-stage` world), ready to instantiate; and the
//! classification of what went wrong when one of its calls failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Component;
use wasmtime::{Engine, Trap};

use super::contract::{Exports, Version};
use super::engine::{CompileSource, EngineParts, Interrupt, Ticker};
use super::host::{HostState, MemoryLimitExceeded, WaitPastBudget};
use crate::stages::{StageError, StageLimits};

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

/// A compiled, validated stage component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    pub(super) name: Arc<str>,
    path: PathBuf,
    sha256: Arc<str>,
    source: CompileSource,
    pub(super) pre: wasmtime::component::InstancePre<HostState>,
    pub(super) exports: Arc<Exports>,
    pub(super) engine: Engine,
    pub(super) limits: StageLimits,
    pub(super) interrupt: Interrupt,
    /// Keeps the epoch thread running while the plugin (or an instance of
    /// it) lives, even after the [`super::WasmEngine`] is dropped.
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
    /// Links `component` against the host's imports and checks its world.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: &str,
        path: &Path,
        sha256: &str,
        source: CompileSource,
        parts: &EngineParts,
        component: &Component,
        limits: StageLimits,
        interrupt: Interrupt,
        ticker: Arc<Ticker>,
    ) -> Result<Self, StageError> {
        let load_err = |reason: String| StageError::Load {
            stage: name.into(),
            path: path.into(),
            reason,
        };
        let pre = parts
            .linker
            .instantiate_pre(component)
            .map_err(|e| load_err(format!("imports something the host does not offer: {e:#}")))?;
        let exports = Exports::find(component).map_err(load_err)?;
        Ok(Plugin {
            name: name.into(),
            path: path.into(),
            sha256: sha256.into(),
            source,
            pre,
            exports: Arc::new(exports),
            engine: parts.engine.clone(),
            limits,
            interrupt,
            _ticker: ticker,
        })
    }

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
        self.exports.is_stateful()
    }

    /// The contract version the component targets.
    pub fn version(&self) -> Version {
        self.exports.version
    }

    /// Classifies a failed call into the limit that fired, if any.
    pub(super) fn error(&self, e: &wasmtime::Error) -> StageError {
        let stage = self.name.to_string();
        if e.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return StageError::MemoryLimit {
                stage,
                limit: self.limits.memory_bytes,
            };
        }
        if e.downcast_ref::<WaitPastBudget>().is_some() {
            return StageError::TimeBudget {
                stage,
                budget: self.limits.time_budget,
            };
        }
        // wasmtime's error for exhausted hostcall fuel is a private type:
        // its message is all there is to recognise it by (a test in
        // sandbox.rs sees it).
        if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
            return StageError::OutputLimit {
                stage,
                limit: self.limits.output_bytes(),
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => StageError::TimeBudget {
                stage,
                budget: self.limits.time_budget,
            },
            Some(Trap::StackOverflow) => StageError::StackOverflow { stage },
            Some(trap) => StageError::Trap {
                stage,
                message: trap.to_string(),
            },
            None => StageError::Trap {
                stage,
                message: format!("{e:#}").replace('\n', " "),
            },
        }
    }
}
