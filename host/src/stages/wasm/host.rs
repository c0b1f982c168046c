//! What one stage instance's store holds, and the imports the instance may
//! call: the `host` interface (logging under the stage's name), a WASI
//! context with no files, sockets, environment or clocks (time reaches a
//! stage only as `batch-context.now-ms`), and the limiter that caps the
//! memory of the whole instance.
//!
//! No import may block past the call's time budget, because epoch
//! interruption only fires in guest code: stdin is closed, stdout and
//! stderr are sinks, there are no files or sockets, and the one pollable
//! that can wait, a monotonic-clock subscription (`std::thread::sleep`
//! becomes one), is replaced by [`BudgetedClock`]: ready at once when the
//! wait fits in the budget left (the clocks are frozen, so the guest cannot
//! tell), and failing the call as over its time budget when it does not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
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
    /// When the current call's time budget runs out (epoch interruption).
    pub(super) budget_ends: Option<Instant>,
}

impl HostState {
    /// The state of a new instance of stage `stage` whose memories and
    /// tables together may grow to `memory_bytes`.
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
            limiter: MemoryLimiter::new(memory_bytes),
            stage,
            budget_ends: None,
        }
    }
}

/// The error a memory or table grow past the limit traps with: typed, so
/// that the failure is classified as
/// [`crate::stages::StageError::MemoryLimit`] without reading wasmtime's
/// messages.
#[derive(Debug, thiserror::Error)]
#[error("the stage's memories and tables would take {desired} bytes, past its limit of {limit}")]
pub(super) struct MemoryLimitExceeded {
    desired: usize,
    limit: usize,
}

/// Bytes a table element is charged (a pointer: wasmtime's funcref).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Caps everything one instance can allocate: the sum of every linear
/// memory and table of every core instance in the component. wasmtime asks
/// the limiter for each one's initial size (from zero) and for every grow,
/// so a running total sees them all. Going past the cap traps with
/// [`MemoryLimitExceeded`].
#[derive(Debug)]
pub(super) struct MemoryLimiter {
    limit: usize,
    used: usize,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self { limit, used: 0 }
    }

    /// Charges a grow from `current` to `desired` bytes; `false` (the grow
    /// fails in the guest) when past the memory's own `maximum`.
    fn charge(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.limit,
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.charge(current, desired, maximum)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |n: usize| n.saturating_mul(TABLE_ELEMENT_BYTES);
        self.charge(bytes(current), bytes(desired), maximum.map(bytes))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_INSTANCES
    }
}

/// A stage asked to wait longer than what is left of its time budget.
#[derive(Debug, thiserror::Error)]
#[error("the stage asked to wait {requested:?}, past the {left:?} left of its time budget")]
pub(super) struct WaitPastBudget {
    requested: Duration,
    left: Duration,
}

/// `wasi:clocks/monotonic-clock` with subscriptions that never block: see
/// the module documentation.
pub(super) struct BudgetedClocks;

impl HasData for BudgetedClocks {
    type Data<'a> = BudgetedClock<'a>;
}

/// The monotonic clock of one instance, with its call's budget.
pub(super) struct BudgetedClock<'a> {
    clocks: WasiClocksCtxView<'a>,
    budget_ends: Option<Instant>,
}

/// The [`BudgetedClock`] of `state`, for the linker.
pub(super) fn budgeted_clock(state: &mut HostState) -> BudgetedClock<'_> {
    let budget_ends = state.budget_ends;
    BudgetedClock {
        clocks: state.clocks(),
        budget_ends,
    }
}

impl BudgetedClock<'_> {
    /// A pollable that is ready at once, or an error when waiting `nanos`
    /// would outlast the budget.
    fn ready_now(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        if let Some(ends) = self.budget_ends {
            let requested = Duration::from_nanos(nanos);
            let left = ends.saturating_duration_since(Instant::now());
            if requested > left {
                return Err(WaitPastBudget { requested, left }.into());
            }
        }
        monotonic_clock::Host::subscribe_duration(&mut self.clocks, 0)
    }
}

impl monotonic_clock::Host for BudgetedClock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.clocks)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.clocks)
    }

    fn subscribe_duration(
        &mut self,
        when: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_now(when)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.clocks)?;
        self.ready_now(when.saturating_sub(now))
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
