//! Pipeline counters shared by the partition workers, and the periodic log
//! line that reports them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start, over all partitions.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input records fetched and processed.
    pub records_in: AtomicU64,
    /// Records produced to the output topic.
    pub records_out: AtomicU64,
    /// Input records filtered out.
    pub dropped: AtomicU64,
    /// Records produced to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Stage errors (traps, limits, malformed outcomes).
    pub stage_errors: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Records produced to side output topics (window counts).
    pub side_records: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::records_in`].
    pub records_in: u64,
    /// See [`Stats::records_out`].
    pub records_out: u64,
    /// See [`Stats::dropped`].
    pub dropped: u64,
    /// See [`Stats::dead_letters`].
    pub dead_letters: u64,
    /// See [`Stats::stage_errors`].
    pub stage_errors: u64,
    /// See [`Stats::batches`].
    pub batches: u64,
    /// See [`Stats::side_records`].
    pub side_records: u64,
}

impl Stats {
    /// Shared, zeroed counters.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            stage_errors: self.stage_errors.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            side_records: self.side_records.load(Ordering::Relaxed),
        }
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl StatsSnapshot {
    /// Logs the counters and the input rate since `prev` over `secs`.
    pub fn log(&self, prev: &StatsSnapshot, secs: f64, message: &str) {
        let rate = (self.records_in - prev.records_in) as f64 / secs.max(1e-9);
        tracing::info!(
            records_in = self.records_in,
            records_out = self.records_out,
            dropped = self.dropped,
            dead_letters = self.dead_letters,
            stage_errors = self.stage_errors,
            side_records = self.side_records,
            in_per_sec = rate.round() as u64,
            "{message}"
        );
    }
}
