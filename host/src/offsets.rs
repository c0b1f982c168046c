//! Delivered-offset tracking: per partition, the offset below which every
//! input record has been delivered (produced and acknowledged to the output
//! or the dead-letter topic, or deliberately dropped).
//!
//! This is exactly what may be committed: a consumer restarting from it
//! loses nothing. Batches are registered in offset order when fetched and
//! completed in any order; the watermark only moves over a contiguous run of
//! completed batches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::kafka::TopicPartition;

/// The delivery state of one partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// Everything below this offset is delivered.
    delivered: Option<i64>,
    /// Registered batches not yet covered by `delivered`, in offset order:
    /// (end offset exclusive, completed).
    pending: VecDeque<(i64, bool)>,
    /// The offset last committed to the group.
    committed: Option<i64>,
}

/// Shared, cloneable tracker of delivered offsets for all partitions of the
/// input topics.
#[derive(Debug, Clone, Default)]
pub struct DeliveryTracker {
    inner: Arc<Mutex<BTreeMap<TopicPartition, PartitionState>>>,
    moved: Arc<tokio::sync::Notify>,
    committed_moved: Arc<tokio::sync::Notify>,
}

impl DeliveryTracker {
    /// A tracker with no partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `partition` from `offset` (where consumption begins:
    /// everything below it counts as delivered). When `offset` is not the
    /// group's committed offset (a partition started from `--start`), it
    /// is due for a commit at once: a restart before the first delivery
    /// must start there too, not at a later end of the log.
    pub fn start(&self, partition: &TopicPartition, offset: i64, committed: bool) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        inner.insert(
            partition.clone(),
            PartitionState {
                delivered: Some(offset),
                pending: VecDeque::new(),
                committed: committed.then_some(offset),
            },
        );
        drop(inner);
        if !committed {
            self.moved.notify_one();
        }
    }

    /// Stops tracking `partition`: nothing of it is delivered until
    /// [`DeliveryTracker::start`] again (a partition changing hands).
    pub fn forget(&self, partition: &TopicPartition) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        inner.remove(partition);
    }

    /// Registers a fetched batch ending (exclusive) at `end`. Batches of a
    /// partition must be registered in offset order.
    pub fn register(&self, partition: &TopicPartition, end: i64) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        let state = inner.entry(partition.clone()).or_default();
        debug_assert!(state.pending.back().is_none_or(|(e, _)| *e <= end));
        state.pending.push_back((end, false));
    }

    /// Marks the batch ending at `end` as delivered and advances the
    /// watermark over every contiguous delivered batch. Returns the new
    /// watermark.
    pub fn complete(&self, partition: &TopicPartition, end: i64) -> Option<i64> {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        let state = inner.entry(partition.clone()).or_default();
        if let Some(entry) = state.pending.iter_mut().find(|(e, _)| *e == end) {
            entry.1 = true;
        }
        while let Some(&(e, true)) = state.pending.front() {
            state.delivered = Some(e);
            state.pending.pop_front();
        }
        self.moved.notify_one();
        state.delivered
    }

    /// Wakes the committer as a moved offset does: records wait in the
    /// open transaction (a stage timer's side records, exactly-once).
    pub fn nudge(&self) {
        self.moved.notify_one();
    }

    /// Resolves after a delivered offset may have moved (a permit is kept
    /// if nobody was waiting, so no change is missed).
    pub async fn moved(&self) {
        self.moved.notified().await;
    }

    /// The offset below which everything of `partition` is delivered.
    pub fn delivered(&self, partition: &TopicPartition) -> Option<i64> {
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner.get(partition).and_then(|s| s.delivered)
    }

    /// Records that `offsets` were committed to the group.
    pub fn mark_committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        for (p, o) in offsets {
            if let Some(state) = inner.get_mut(p) {
                state.committed = Some(state.committed.map_or(*o, |c| c.max(*o)));
            }
        }
        drop(inner);
        self.committed_moved.notify_waiters();
    }

    /// The offset last committed for `partition`.
    pub fn committed(&self, partition: &TopicPartition) -> Option<i64> {
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner.get(partition).and_then(|s| s.committed)
    }

    /// Waits until the committed offset of `partition` reaches `offset`,
    /// or `limit` passes (commits may fail; the pipeline goes on, at the
    /// cost of more repeats after a crash). True when reached.
    pub async fn wait_committed(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limit: std::time::Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.committed_moved.notified();
            if self.committed(partition).is_some_and(|c| c >= offset) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Delivered offsets of every tracked partition.
    pub fn snapshot(&self) -> BTreeMap<TopicPartition, i64> {
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner
            .iter()
            .filter_map(|(p, s)| s.delivered.map(|d| (p.clone(), d)))
            .collect()
    }

    /// Batches registered but not delivered, over all partitions.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner
            .values()
            .map(|s| s.pending.iter().filter(|(_, done)| !done).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> TopicPartition {
        TopicPartition::new("in", n)
    }

    #[test]
    fn watermark_moves_only_over_contiguous_deliveries() {
        let t = DeliveryTracker::new();
        t.start(&p(0), 100, true);
        t.register(&p(0), 110);
        t.register(&p(0), 120);
        t.register(&p(0), 130);
        assert_eq!(t.delivered(&p(0)), Some(100));
        assert_eq!(
            t.complete(&p(0), 120),
            Some(100),
            "a later batch alone does not move it"
        );
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.complete(&p(0), 110), Some(120), "now both are covered");
        assert_eq!(t.complete(&p(0), 130), Some(130));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.snapshot(), BTreeMap::from([(p(0), 130)]));
    }

    #[test]
    fn partitions_are_independent() {
        let t = DeliveryTracker::new();
        t.start(&p(0), 0, true);
        t.start(&p(1), 50, false);
        t.register(&p(0), 10);
        t.register(&p(1), 60);
        t.complete(&p(1), 60);
        assert_eq!(t.snapshot(), BTreeMap::from([(p(0), 0), (p(1), 60)]));
    }
}
