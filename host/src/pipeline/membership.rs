//! Group membership: the loop of a consumer-group member around the data
//! path. It joins and syncs ([`Member::join`]), revokes the partitions the
//! new assignment takes away (stop their workers, commit what they
//! delivered), starts workers for the partitions it gains (from their
//! committed offsets), then heartbeats and commits delivered offsets until
//! the next rebalance; at shutdown it flushes, commits and leaves.
//!
//! The protocol calls are in [`crate::group::member`]; the data path (the
//! partition workers) only sees start and stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use kafka_protocol::ResponseError;

use super::worker::{Resume, Workers};
use super::{Pipeline, PipelineError, Shared, refresh_timer};
use crate::backoff::Backoff;
use crate::group::heartbeat::{Beat, Heartbeats};
use crate::group::member::Member;
use crate::group::{Assignor, GroupError, GroupProtocol, GroupSettings};
use crate::kafka::topic_partition::listed;
use crate::kafka::{TopicPartition, access};
use crate::shutdown::CancellationToken;
use crate::sink::transaction::{Restarted, Transactions, TxnError};
use crate::source::StartFrom;

/// `--until-end`: the wait before a failed last commit is tried again.
const UNTIL_END_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A member of the group and the partition workers it runs.
pub(super) struct Membership<'a> {
    pipeline: &'a Pipeline,
    shared: &'a Arc<Shared>,
    settings: GroupSettings,
    member: Member,
    workers: Workers,
    /// The input topics and partition counts at start: partitions past
    /// them (of a topic found later, or added to one) appeared while
    /// running.
    initial: BTreeMap<String, i32>,
    /// Exactly-once: the open transaction was aborted and every worker
    /// stopped; they start again from the committed offsets.
    aborted: bool,
    /// Exactly-once: the pipeline is stopping (the producer was fenced, or
    /// the transaction could not go on); nothing more is committed.
    stopped: bool,
}

/// How the steady phase between rebalances ended.
enum Steady {
    /// The group rebalances, or this member lost its place: join again.
    Rejoin,
    /// Shutdown, or every partition read to its end (`--until-end`).
    Stop,
}

impl<'a> Membership<'a> {
    /// A member of `settings.group` for the input `topics` (name ->
    /// partition count).
    pub(super) fn new(
        pipeline: &'a Pipeline,
        shared: &'a Arc<Shared>,
        settings: GroupSettings,
        topics: BTreeMap<String, i32>,
    ) -> Self {
        let cfg = &pipeline.config;
        Self {
            member: Member::new(settings.clone(), &cfg.kafka, topics.clone()),
            workers: Workers::new(shared.stop.clone()),
            pipeline,
            shared,
            settings,
            initial: topics,
            aborted: false,
            stopped: false,
        }
    }

    /// Runs the partitions the group assigns, from the committed offsets,
    /// committing delivered offsets as they advance, on revocation and at
    /// shutdown.
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        let mut backoff = Backoff::broker();
        while !shutdown.is_cancelled() {
            let owned = self.workers.partitions();
            // Subscribe to (and, as leader, assign) every input there is now.
            if let Some(now) = self.shared.input_topics(self.member.topics()).await {
                self.member.set_topics(now);
            }
            let joined = tokio::select! {
                r = self.member.join(&owned) => r,
                _ = shutdown.cancelled() => break,
            };
            let assigned = match joined {
                Ok(a) => {
                    backoff.reset();
                    let metrics = &self.shared.metrics;
                    metrics.rebalances.fetch_add(1, Ordering::Relaxed);
                    metrics.ready.store(!a.is_empty(), Ordering::Relaxed);
                    a
                }
                Err(e) => {
                    self.refused(e).await?;
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            // Incremental: only what moves stops (the consumer protocol
            // always is).
            let cooperative = self.settings.assignor == Assignor::CooperativeSticky
                || self.member.protocol() == Some(GroupProtocol::Consumer);
            // Heartbeats start now, so revoking (which waits for deliveries)
            // and reading committed offsets never delay them.
            let mut beats = self.member.heartbeats();
            let revoked = self.revoke(&owned, &assigned).await;
            self.member.set_owned(&self.workers.partitions());
            // After an aborted transaction no worker runs: all start again.
            let owned = if std::mem::take(&mut self.aborted) {
                Vec::new()
            } else {
                owned
            };
            let started = self.assign(&owned, &assigned).await?;
            self.member.set_owned(&self.workers.partitions());
            if !started {
                continue;
            }
            if cooperative && !revoked.is_empty() {
                // Cooperative protocol: rejoin at once so the partitions
                // given up here can be assigned to their new owners.
                continue;
            }
            match self.steady(&shutdown, cooperative, &mut beats).await? {
                Steady::Rejoin => continue,
                Steady::Stop => break,
            }
        }
        self.leave().await
    }

    /// A failed join: an error when the group refuses this member for
    /// good (its workers stopped), `Ok` to retry.
    async fn refused(&mut self, e: GroupError) -> Result<(), PipelineError> {
        match e {
            e @ GroupError::FencedInstance(_) => {
                self.workers.stop_all().await;
                Err(PipelineError::Group(e))
            }
            GroupError::Broker {
                error: ResponseError::GroupAuthorizationFailed,
                ..
            } => {
                self.workers.stop_all().await;
                Err(PipelineError::Kafka(access::denied_group(
                    &self.pipeline.config.kafka,
                    &self.settings.group,
                )))
            }
            e => {
                tracing::warn!(group = %self.settings.group, error = %e, "cannot join the group; retrying");
                Ok(())
            }
        }
    }

    /// Stops the workers of the partitions in `owned` but not in
    /// `assigned`, and commits what they delivered; returns them.
    async fn revoke(
        &mut self,
        owned: &[TopicPartition],
        assigned: &[TopicPartition],
    ) -> Vec<TopicPartition> {
        let revoked: Vec<TopicPartition> = owned
            .iter()
            .filter(|p| !assigned.contains(p))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            for p in &revoked {
                self.shared.metrics.forget_partition(p);
            }
            tracing::info!(group = %self.settings.group, partitions = %listed(&revoked), "partitions revoked");
            self.workers.stop(&revoked).await;
            self.commit(&revoked).await;
        }
        revoked
    }

    /// Starts workers for the partitions in `assigned` but not in `owned`,
    /// from their committed offsets; `false` when those cannot be read
    /// (the member rejoins).
    async fn assign(
        &mut self,
        owned: &[TopicPartition],
        assigned: &[TopicPartition],
    ) -> Result<bool, PipelineError> {
        let new: Vec<TopicPartition> = assigned
            .iter()
            .filter(|p| !owned.contains(p))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(true);
        }
        // Offsets inside a transaction still open (another member's, being
        // committed or aborted) are read once it ends.
        let patience = tokio::time::Instant::now() + self.settings.rebalance_timeout / 2;
        let committed = loop {
            match self.member.committed(&new).await {
                Ok(c) => break c,
                Err(e)
                    if e.broker_error() == Some(ResponseError::UnstableOffsetCommit)
                        && tokio::time::Instant::now() < patience =>
                {
                    tracing::info!(group = %self.settings.group, partitions = %listed(&new), "committed offsets wait for an open transaction to end");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!(group = %self.settings.group, error = %e, "cannot read committed offsets; rejoining");
                    return Ok(false);
                }
            }
        };
        for p in &new {
            let start = committed.get(p).copied().flatten();
            tracing::info!(group = %self.settings.group, topic = %p.topic, partition = p.partition, committed = ?start, "partition assigned");
            let appeared = p.partition >= self.initial.get(&*p.topic).copied().unwrap_or(0);
            let from = match start {
                Some(o) => Resume::At(o),
                None if appeared => Resume::From(StartFrom::Earliest),
                None => Resume::From(self.pipeline.config.start),
            };
            self.workers.start(self.pipeline, self.shared, p, from)?;
        }
        Ok(true)
    }

    /// Between rebalances: commits as soon as delivered offsets move (at
    /// most once per commit interval), so a crash repeats little, and acts
    /// on what the heartbeat task reports. A fenced instance is an error:
    /// its workers are stopped at once and the member exits.
    async fn steady(
        &mut self,
        shutdown: &CancellationToken,
        cooperative: bool,
        beats: &mut Heartbeats,
    ) -> Result<Steady, PipelineError> {
        let settings = self.settings.clone();
        let shared = self.shared;
        let mut last_commit = Instant::now();
        let mut committed: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut commit_pending = false;
        let mut refresh = refresh_timer(shared.config.metadata_refresh);
        let settled = tokio::time::Instant::now() + self.member.assignment_settles_in();
        loop {
            let commit_at = tokio::time::Instant::from_std(last_commit + settings.commit_interval);
            let beat = tokio::select! {
                beat = beats.next() => Some(beat),
                _ = refresh.tick(), if !shared.config.until_end => {
                    match shared.input_topics(self.member.topics()).await {
                        // Topics found or gone change this member's
                        // subscription: it rejoins, and the group
                        // rebalances. New partitions of the same topics:
                        // the leader rebalances to assign them.
                        Some(now) => {
                            let resubscribe = !now.keys().eq(self.member.topics().keys());
                            self.member.set_topics(now);
                            if !resubscribe && !self.member.is_leader() {
                                continue;
                            }
                            Some(Beat::Rebalance)
                        }
                        None => continue,
                    }
                }
                _ = shared.tracker.moved() => None,
                _ = tokio::time::sleep_until(commit_at), if commit_pending => None,
                _ = async {
                    tokio::time::sleep_until(settled).await;
                    self.workers.all_done().await
                }, if shared.config.until_end => {
                    // `--until-end` stops once what was read up to the end
                    // is committed, not merely delivered (and, under the
                    // consumer protocol, not before the partitions of a
                    // member that died could have come to this one): a
                    // last transaction that aborts (its delivery refused,
                    // its commit failed) starts every partition again from
                    // its committed offset, and a failed commit is tried
                    // again.
                    let all = self.workers.partitions();
                    if self.commit(&all).await || self.stopped {
                        return Ok(Steady::Stop);
                    }
                    if std::mem::take(&mut self.aborted) {
                        tracing::info!(group = %settings.group, "the last transaction aborted: reading again from the committed offsets");
                        return Ok(Steady::Rejoin);
                    }
                    tokio::time::sleep(UNTIL_END_RETRY).await;
                    continue;
                }
                _ = shutdown.cancelled() => return Ok(Steady::Stop),
            };
            let Some(beat) = beat else {
                commit_pending = true;
                if last_commit.elapsed() >= settings.commit_interval {
                    commit_pending = false;
                    self.commit_moved(&mut committed).await;
                    last_commit = Instant::now();
                    if std::mem::take(&mut self.aborted) {
                        return Ok(Steady::Rejoin);
                    }
                }
                continue;
            };
            match beat {
                Beat::Rebalance => {
                    tracing::info!(group = %settings.group, "rebalance started");
                    let all = self.workers.partitions();
                    if !cooperative {
                        self.workers.stop(&all).await;
                    }
                    self.commit(&all).await;
                    return Ok(Steady::Rejoin);
                }
                Beat::Fenced => {
                    tracing::warn!(group = %settings.group, "this member was fenced (stale generation or unknown member): stopping its partitions at once, without committing");
                    self.workers.abort_all().await;
                    self.member.fenced();
                    self.abort_transaction("the member was fenced").await;
                    return Ok(Steady::Rejoin);
                }
                Beat::Lost(e) => {
                    tracing::warn!(group = %settings.group, error = %e, "no heartbeat within the session timeout: the group may have moved this member's partitions; stopping them at once, without committing");
                    self.workers.abort_all().await;
                    self.member.fenced();
                    self.abort_transaction("the member lost its session").await;
                    return Ok(Steady::Rejoin);
                }
                Beat::FencedInstance(id) => {
                    self.workers.abort_all().await;
                    return Err(PipelineError::Group(GroupError::FencedInstance(id)));
                }
            }
        }
    }

    /// Commits the partitions whose delivered offset moved since `committed`
    /// (what this steady phase last committed), and notes them there.
    async fn commit_moved(&mut self, committed: &mut BTreeMap<TopicPartition, i64>) {
        if self.shared.sink.transactions().is_some() {
            // The transaction finds what moved itself.
            self.commit(&[]).await;
            return;
        }
        let delivered = self.shared.tracker.snapshot();
        let changed: Vec<TopicPartition> = self
            .workers
            .partitions()
            .into_iter()
            .filter(|p| {
                delivered
                    .get(p)
                    .is_some_and(|d| committed.get(p) != Some(d))
            })
            .collect();
        if !changed.is_empty() && self.commit(&changed).await {
            committed.extend(
                changed
                    .iter()
                    .filter_map(|p| delivered.get(p).map(|d| (p.clone(), *d))),
            );
        }
    }

    /// True when `p`'s topic is still an input: a deleted topic's offsets
    /// cannot be committed (and would fail the commit of the others).
    fn subscribed(&self, p: &TopicPartition) -> bool {
        self.member.topics().contains_key(&*p.topic)
    }

    /// Shutdown: flush, commit, leave.
    async fn leave(mut self) -> Result<(), PipelineError> {
        let limit = self.pipeline.config.shutdown_timeout;
        let all = self.workers.partitions();
        let flushed = tokio::time::timeout(limit, self.workers.stop(&all)).await;
        if flushed.is_ok() {
            self.commit(&all).await;
        }
        self.member.leave().await;
        flushed.map_err(|_| PipelineError::ShutdownTimeout(limit))
    }

    /// Commits the delivered offsets of `partitions` (with the stateful
    /// stages' checkpoints at those offsets first), logging the outcome;
    /// true when committed.
    async fn commit(&mut self, partitions: &[TopicPartition]) -> bool {
        if let Some(txn) = self.shared.sink.transactions().cloned() {
            return self.commit_transaction(&txn, partitions).await;
        }
        let shared = self.shared;
        let offsets: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter(|p| self.subscribed(p))
            .filter_map(|p| shared.tracker.delivered(p).map(|o| (p.clone(), o)))
            .collect();
        if offsets.is_empty() {
            return true;
        }
        if let Some(state) = &shared.state_topic {
            for (p, o) in &offsets {
                if let Some(states) = shared.checkpoints.at(p, *o)
                    && let Err(e) = state.save(&shared.sink, p, *o, &states).await
                {
                    tracing::error!(topic = %p.topic, partition = p.partition, offset = o, error = %e, "the state topic refused a checkpoint: stopping the pipeline without committing");
                    shared.fail(e.into());
                    return false;
                }
            }
        }
        match self.member.commit(&offsets).await {
            Ok(()) => {
                tracing::debug!(generation = self.member.generation(), offsets = ?offsets, "committed");
                shared.tracker.mark_committed(&offsets);
                true
            }
            Err(e) => {
                tracing::warn!(offsets = ?offsets, error = %e, "commit failed; the records will be read again after a restart");
                false
            }
        }
    }

    /// Exactly-once: commits the open transaction with the input offsets of
    /// every partition that moved or has a checkpoint waiting (one
    /// transaction holds the deliveries of all partitions, so their offsets
    /// all go with it, not only those of `partitions`) and the checkpoints
    /// at them. When that fails the transaction is aborted and every worker
    /// starts again from the last committed offsets; when the producer is
    /// fenced the pipeline stops. True when committed.
    async fn commit_transaction(
        &mut self,
        txn: &Arc<Transactions>,
        partitions: &[TopicPartition],
    ) -> bool {
        if self.stopped {
            return false;
        }
        let shared = self.shared;
        // No delivery is in flight from here until the transaction ends.
        let closed = txn.close().await;
        if let Some(doom) = txn.doomed() {
            // A delivery in it failed: its outputs must never become
            // visible without their offsets.
            self.workers.abort_all().await;
            if doom.recoverable {
                // The brokers ended it: abort, and go on from the
                // committed offsets with a new epoch.
                drop(closed);
                self.abort_transaction(&doom.why).await;
                return false;
            }
            // The failed delivery stopped the pipeline.
            tracing::error!(
                transactional_id = txn.id(),
                why = doom.why,
                "aborting the open transaction: a delivery in it failed; nothing of it becomes visible"
            );
            self.stopped = true;
            if let Err(e) = txn.end(false).await {
                tracing::warn!(transactional_id = txn.id(), error = %e, "abort not confirmed; the next producer epoch aborts the transaction");
            }
            shared
                .metrics
                .transactions_aborted
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut all: BTreeSet<TopicPartition> = self.workers.partitions().into_iter().collect();
        all.extend(partitions.iter().cloned());
        all.retain(|p| self.subscribed(p));
        let mut offsets = Vec::new();
        let mut states = Vec::new();
        for p in all {
            let Some(delivered) = shared.tracker.delivered(&p) else {
                continue;
            };
            let state = shared.checkpoints.take(&p, delivered);
            if shared.tracker.committed(&p) != Some(delivered) || state.is_some() {
                offsets.push((p.clone(), delivered));
                states.extend(state.map(|s| (p, delivered, s)));
            }
        }
        if offsets.is_empty() {
            if !txn.is_open().await {
                return true;
            }
            // A transaction holding only records of no new offset (a stage
            // timer's side records): its offsets are committed again all
            // the same, so TxnOffsetCommit fences it by the group
            // generation like any other. A member that lost its partitions
            // cannot commit it.
            offsets = self
                .workers
                .partitions()
                .into_iter()
                .filter_map(|p| shared.tracker.delivered(&p).map(|d| (p, d)))
                .collect();
        }
        let ended = async {
            if let Some(state) = &shared.state_topic {
                for (p, o, s) in &states {
                    state
                        .save(&shared.sink, p, *o, s)
                        .await
                        .map_err(|e| Ended::Stop(e.into()))?;
                }
            }
            if !offsets.is_empty() {
                txn.add_offsets().await.map_err(Ended::from)?;
                self.commit_in_retrying(txn, &offsets)
                    .await
                    .map_err(Ended::Abort)?;
            }
            txn.end(true).await.map_err(Ended::from)
        }
        .await;
        let metrics = &shared.metrics;
        match ended {
            Ok(age) => {
                tracing::debug!(generation = self.member.generation(), offsets = ?offsets, "transaction committed");
                shared.tracker.mark_committed(&offsets);
                metrics
                    .transactions_committed
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(age) = age {
                    metrics.transaction_seconds.observe(age.as_secs_f64());
                }
                true
            }
            Err(Ended::Abort(e)) => {
                tracing::warn!(transactional_id = txn.id(), offsets = ?offsets, error = %e, "the transaction cannot commit: aborting it; every partition starts again from its last committed offset");
                self.workers.abort_all().await;
                drop(closed);
                self.abort_transaction("its commit failed").await;
                false
            }
            Err(Ended::Stop(e)) => {
                tracing::error!(transactional_id = txn.id(), error = %e, "stopping the pipeline: the transaction cannot go on, and nothing of it becomes visible");
                self.workers.abort_all().await;
                self.stopped = true;
                let _ = txn.end(false).await;
                shared.fail(e);
                false
            }
        }
    }

    /// Exactly-once: the offsets' TxnOffsetCommit, retried in the same
    /// transaction after a new coordinator look-up while the group
    /// coordinator moves, loads, times out or loses the connection (as
    /// Kafka's producer does), for at most half the transaction timeout;
    /// other errors (a stale generation above all) end it.
    async fn commit_in_retrying(
        &mut self,
        txn: &Transactions,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), crate::group::GroupError> {
        let limit = self
            .pipeline
            .config
            .exactly_once
            .as_ref()
            .map_or(std::time::Duration::from_secs(30), |eo| {
                eo.transaction_timeout / 2
            });
        let started = Instant::now();
        let mut backoff = Backoff::broker();
        loop {
            match self.member.commit_in(&txn.producer(), offsets).await {
                Ok(()) => return Ok(()),
                Err(e) if retriable_commit(&e) && started.elapsed() < limit => {
                    let delay = backoff.next_delay();
                    tracing::warn!(transactional_id = txn.id(), error = %e, retry_in = ?delay, "TxnOffsetCommit failed; retrying in the same transaction");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Exactly-once: aborts the open transaction and readies the producer
    /// for the next; the workers start again from the committed offsets at
    /// the next assignment. The caller has stopped every worker
    /// ([`Workers::abort_all`]) first, so nothing more joins the
    /// transaction.
    async fn abort_transaction(&mut self, why: &str) {
        let Some(txn) = self.shared.sink.transactions().cloned() else {
            return;
        };
        if self.stopped {
            return;
        }
        debug_assert!(
            self.workers.partitions().is_empty(),
            "workers run while aborting"
        );
        self.aborted = true;
        let _closed = txn.close().await;
        if let Err(e) = txn.end(false).await {
            tracing::warn!(transactional_id = txn.id(), error = %e, "abort not confirmed; the next producer epoch aborts the transaction");
        }
        self.shared
            .metrics
            .transactions_aborted
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            transactional_id = txn.id(),
            why,
            "transaction aborted: nothing of it becomes visible"
        );
        match txn.restart().await {
            Ok(Restarted::Epoch) => {}
            Ok(Restarted::TimedOut) => {
                self.shared
                    .metrics
                    .transaction_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(transactional_id = txn.id(), error = %e, "stopping the pipeline: the transactional producer cannot start again");
                self.stopped = true;
                self.shared.fail(e.into());
            }
        }
    }
}

/// True for TxnOffsetCommit failures that a new coordinator look-up and a
/// retry in the same transaction fix: the coordinator moved, is loading,
/// is not available, timed out, the transaction's last markers are still
/// being written, the connection was lost, or (consumer protocol) the
/// member epoch moved on meanwhile (the retry sends the new one). A member whose session
/// expired is not retried: the heartbeat task reports it.
fn retriable_commit(e: &crate::group::GroupError) -> bool {
    use crate::group::GroupError;
    match e {
        // The same offsets again in the same transaction: harmless if the
        // lost call had reached the broker.
        GroupError::Connect { .. } | GroupError::Wire { .. } => true,
        GroupError::Timeout { call, .. } => *call != kafka_protocol::messages::ApiKey::OffsetCommit,
        _ => e.broker_error().is_some_and(|c| {
            matches!(
                c,
                ResponseError::NotCoordinator
                    | ResponseError::StaleMemberEpoch
                    | ResponseError::CoordinatorLoadInProgress
                    | ResponseError::CoordinatorNotAvailable
                    | ResponseError::RequestTimedOut
                    | ResponseError::ConcurrentTransactions
            )
        }),
    }
}

/// How a transaction that did not commit ended.
enum Ended {
    /// Abort it and go on from the committed offsets.
    Abort(GroupError),
    /// Stop the pipeline.
    Stop(PipelineError),
}

impl From<TxnError> for Ended {
    fn from(e: TxnError) -> Self {
        match e {
            e @ (TxnError::Fenced { .. } | TxnError::Denied(_) | TxnError::Doomed { .. }) => {
                Ended::Stop(e.into())
            }
            TxnError::Call { source, .. } => Ended::Abort(source),
        }
    }
}
