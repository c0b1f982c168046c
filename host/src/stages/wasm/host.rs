//! What one stage instance's store holds, and the imports the instance may
//! call: the `host` interface (logging under the stage's name), a WASI
//! context with no files, sockets, environment or clocks (time reaches a
//! stage only as `batch-context.now-ms`), and the limiter that caps the
//! instance's memory.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings;
use super::wit;

/// Instances (core modules) one component may create.
const MAX_INSTANCES: usize = 64;

/// Per-instance host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    stage: Arc<str>,
}

impl HostState {
    /// The state of a new instance of stage `stage` whose linear memories
    /// may each grow to `memory_bytes`.
    pub(super) fn new(stage: Arc<str>, memory_bytes: usize) -> Self {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { memory_bytes },
            stage,
        }
    }
}

/// The error a memory grow past the limit traps with: typed, so that the
/// failure is classified as [`crate::stages::StageError::MemoryLimit`]
/// without reading wasmtime's messages.
#[derive(Debug, thiserror::Error)]
#[error("a linear memory would grow to {desired} bytes, past the stage's limit of {limit}")]
pub(super) struct MemoryLimitExceeded {
    desired: usize,
    limit: usize,
}

/// Caps each linear memory of an instance at `memory_bytes`; growing past
/// it traps with [`MemoryLimitExceeded`].
#[derive(Debug)]
pub(super) struct MemoryLimiter {
    memory_bytes: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
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
