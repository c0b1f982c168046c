//! One input partition's work, in the order a record travels:
//!
//! 1. **fetch**: a task reads ahead (up to [`READ_AHEAD`] batches of at
//!    most `max_batch_records`) from the partition's [`PartitionSource`];
//! 2. **process**: the chain runs the batch on a blocking thread (stages
//!    are CPU work), after switching to reloaded stages if there are any;
//! 3. **deliver**: the sink produces outputs, dead letters and side
//!    records, one batch at a time per partition, while the next batch is
//!    fetched and processed;
//! 4. **acknowledge**: the delivered batch's end offset goes to the
//!    [`crate::offsets::DeliveryTracker`], from which the membership
//!    commits.
//!
//! [`Workers`] is the set of partition workers a process runs, started and
//! stopped by the pipeline (every partition) or the membership (the
//! partitions the group assigns).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::chrono::Utc;
use rskafka::client::partition::Undecodable;
use rskafka::record::RecordAndOffset;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::{Pipeline, READ_AHEAD, Shared};
use crate::backoff::Backoff;
use crate::format::{Decoded, Decoder, Encoder};
use crate::kafka::TopicPartition;
use crate::shutdown::CancellationToken;
use crate::sink::Delivered;
use crate::source::{Fetched, PartitionSource, StartFrom};
use crate::stages::set::SharedSet;
use crate::stages::windows::WindowCount;
use crate::stages::{Chain, ChainOutput, DeadLetter, Output, StageError, Tombstones};
use crate::stats::Stats;

/// How long a delivery waits for the commit of the batch before last.
const COMMIT_WAIT: Duration = Duration::from_secs(2);

/// Where a partition worker starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    /// At the group's committed offset.
    At(i64),
    /// Without a committed offset: at this end of the log (`--start`, or
    /// the earliest offset for a partition added while running, since
    /// all of its records are new to the pipeline).
    From(StartFrom),
}

impl Resume {
    /// The committed offset, if any.
    fn committed(self) -> Option<i64> {
        match self {
            Resume::At(o) => Some(o),
            Resume::From(_) => None,
        }
    }
}

/// The partition workers this process runs: each a task with its own stop
/// token (a child of the pipeline's).
#[derive(Debug)]
pub(super) struct Workers {
    parent: CancellationToken,
    tasks: JoinSet<()>,
    /// Partition -> its stop token, for every worker started and not yet
    /// stopped (finished ones included: their offsets are still committed).
    running: BTreeMap<TopicPartition, CancellationToken>,
    /// Task id -> partition.
    ids: HashMap<tokio::task::Id, TopicPartition>,
    /// Workers whose task has ended.
    done: BTreeSet<TopicPartition>,
}

impl Workers {
    /// No workers yet; theirs tokens will be children of `parent`.
    pub(super) fn new(parent: CancellationToken) -> Self {
        Self {
            parent,
            tasks: JoinSet::new(),
            running: BTreeMap::new(),
            ids: HashMap::new(),
            done: BTreeSet::new(),
        }
    }

    /// The partitions with a worker.
    pub(super) fn partitions(&self) -> Vec<TopicPartition> {
        self.running.keys().cloned().collect()
    }

    /// Starts partition `p` where `from` says.
    pub(super) fn start(
        &mut self,
        pipeline: &Pipeline,
        shared: &Arc<Shared>,
        p: &TopicPartition,
        from: Resume,
    ) -> Result<(), StageError> {
        let chain = pipeline.chain()?;
        shared.checkpoints.forget(p);
        // What an earlier ownership delivered must never be committed now:
        // until the worker has opened the partition, it has nothing to commit.
        shared.tracker.forget(p);
        let stop = self.parent.child_token();
        let task = self.tasks.spawn(PartitionWorker::run(
            shared.clone(),
            p.clone(),
            chain,
            stop.clone(),
            from,
        ));
        self.ids.insert(task.id(), p.clone());
        self.running.insert(p.clone(), stop);
        self.done.remove(p);
        Ok(())
    }

    /// Takes the next ended task off the set, noting its partition; `false`
    /// when no task is left.
    async fn reap(&mut self) -> bool {
        let (id, panicked) = match self.tasks.join_next_with_id().await {
            None => return false,
            Some(Ok((id, ()))) => (id, None),
            Some(Err(e)) if e.is_cancelled() => (e.id(), None),
            Some(Err(e)) => (e.id(), Some(e)),
        };
        let p = self.ids.remove(&id);
        if let Some(e) = panicked {
            tracing::error!(partition = ?p.as_ref().map(ToString::to_string), error = %e, "a partition worker panicked");
        }
        self.done.extend(p);
        true
    }

    /// Resolves once every worker has ended by itself (`--until-end`).
    pub(super) async fn all_done(&mut self) {
        while self.reap().await {}
    }

    /// Stops the workers of `partitions` and waits until their deliveries
    /// are done; their delivered offsets stay readable for a final commit
    /// until the next start.
    pub(super) async fn stop(&mut self, partitions: &[TopicPartition]) {
        let mut waiting = BTreeSet::new();
        for p in partitions {
            if let Some(stop) = self.running.remove(p) {
                stop.cancel();
                waiting.insert(p.clone());
            }
        }
        while waiting.iter().any(|p| !self.done.contains(p)) && self.reap().await {}
        for p in waiting {
            self.done.remove(&p);
        }
    }

    /// Stops every worker at once: their tasks, fetches and deliveries in
    /// flight are aborted, so nothing more is produced (a fenced member).
    /// Their offsets are not committed.
    pub(super) async fn abort_all(&mut self) {
        for (_, stop) in std::mem::take(&mut self.running) {
            stop.cancel();
        }
        self.tasks.abort_all();
        while self.reap().await {}
        self.done.clear();
    }

    /// Stops every worker.
    pub(super) async fn stop_all(&mut self) {
        let all = self.partitions();
        self.stop(&all).await;
    }
}

/// A processed batch on its way to the sink.
struct Processed {
    records: Vec<RecordAndOffset>,
    out: ChainOutput,
    /// The offset after the batch: delivered once the batch is.
    end: i64,
}

/// One partition: its chain, the stage set it follows, and the delivery in
/// flight.
struct PartitionWorker {
    shared: Arc<Shared>,
    /// The partition read.
    tp: TopicPartition,
    chain: Chain,
    /// The current stage set; a change switches the chain at the next batch.
    sets: watch::Receiver<SharedSet>,
    generation: u64,
    stop: CancellationToken,
    /// Aborted with the worker (a fenced member stops producing at once).
    /// Its result is the batch's output, whose buffers the chain reuses.
    delivering: Option<AbortOnDropHandle<Output>>,
    /// End offsets of the last two deliveries: the one before last must be
    /// committed before the next delivery (the in-flight bound).
    previous_end: Option<i64>,
    last_end: Option<i64>,
}

impl PartitionWorker {
    /// Runs partition `p` from `from` until `stop`, the end (`--until-end`)
    /// or a fatal stage error.
    async fn run(
        shared: Arc<Shared>,
        tp: TopicPartition,
        chain: Chain,
        stop: CancellationToken,
        from: Resume,
    ) {
        let Some((mut worker, mut fetched, fetcher)) =
            Self::open(shared, tp.clone(), chain, stop, from).await
        else {
            return;
        };
        let mut timer = tokio::time::interval(worker.shared.config.timer_interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                f = fetched.recv() => match f { Some(f) => f, None => break },
                _ = timer.tick(), if worker.chain.is_stateful() => {
                    worker.on_timer().await;
                    continue;
                }
            };
            if batch.records.is_empty() && batch.undecodable.is_empty() {
                worker.skip(&batch);
                continue;
            }
            worker.follow_reload(&batch).await;
            let Some(processed) = worker.process(batch).await else {
                break;
            };
            worker.deliver(processed).await;
        }
        // Unblocks a fetcher waiting to hand over a batch (after a fatal stop).
        drop(fetched);
        worker.finish_delivery().await;
        let _ = fetcher.await;
        tracing::debug!(topic = %tp.topic, partition = tp.partition, delivered = ?worker.shared.tracker.delivered(&tp), "partition stopped");
    }

    /// Opens the partition, seeks to `from`, restores stage state, and
    /// starts the fetch task; `None` when stopped first or the end offset
    /// cannot be read.
    async fn open(
        shared: Arc<Shared>,
        tp: TopicPartition,
        mut chain: Chain,
        stop: CancellationToken,
        from: Resume,
    ) -> Option<(Self, mpsc::Receiver<Fetched>, AbortOnDropHandle<()>)> {
        let p = tp.partition;
        let start = match from {
            Resume::From(s) => s,
            Resume::At(_) => shared.config.start,
        };
        let mut source = open_source(&shared, &tp, start, &stop).await?;
        let from = from.committed();
        if let Some(offset) = from {
            source.seek(offset);
        }
        let end = if shared.config.until_end {
            match source.end_offset().await {
                Ok(end) => Some(end),
                Err(e) => {
                    tracing::error!(topic = %tp.topic, partition = p, error = %e, "cannot read the end offset");
                    return None;
                }
            }
        } else {
            None
        };
        let mut sets = shared.sets.clone();
        let generation = sets.borrow_and_update().generation;
        if chain.is_stateful() {
            chain = restore_state(&shared, &tp, from, chain).await;
            if shared.state_topic.is_some() {
                // The state the partition starts from: carried to offsets
                // that move before the first snapshot of a batch.
                let (c, states) = on_stage_thread(chain, Chain::snapshot).await;
                chain = c;
                match states {
                    Ok(states) => shared.checkpoints.start(&tp, states),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot snapshot the stateful stages at start")
                    }
                }
            }
        }
        shared.tracker.start(&tp, source.position(), from.is_some());
        tracing::debug!(
            topic = %tp.topic,
            partition = p,
            offset = source.position(),
            ?end,
            "partition started"
        );
        let (tx, rx) = mpsc::channel::<Fetched>(READ_AHEAD);
        let fetcher = AbortOnDropHandle::new(tokio::spawn(fetch(
            source,
            end,
            tx,
            shared.config.max_batch_records,
            stop.clone(),
        )));
        let worker = Self {
            tp,
            shared,
            chain,
            sets,
            generation,
            stop,
            delivering: None,
            previous_end: None,
            last_end: None,
        };
        Some((worker, rx, fetcher))
    }

    /// Runs the stateful stages' `on-timer` and delivers their side records.
    /// The delivery in flight ends first, so the state after the timer is
    /// the checkpoint at the delivered offset: a restart from there does
    /// not emit the timer's records again.
    async fn on_timer(&mut self) {
        self.finish_delivery().await;
        let context = stage_sdk::batch::Context {
            now_ms: Utc::now().timestamp_millis(),
            topic: self.tp.topic.to_string(),
            partition: self.tp.partition,
        };
        let (side, state) = on_chain(&mut self.chain, move |c| {
            let side = c.on_timer(&context);
            let state = (!side.is_empty()).then(|| c.snapshot());
            (side, state)
        })
        .await;
        if side.is_empty() {
            return;
        }
        let shared = &self.shared;
        let p = self.tp.partition;
        shared
            .metrics
            .observe_windows(side.iter().filter_map(WindowCount::read));
        // With exactly-once, the side records and the checkpoint after the
        // timer go into one transaction: no commit can come between them.
        let _in_transaction = enter(shared).await;
        match shared.sink.deliver_side(p, &side).await {
            Ok(n) => Stats::add(&shared.metrics.stats.side_records, n),
            Err(e) => {
                refused(shared, p, "the stage timer's side records", e);
                return;
            }
        }
        // Only once the records are written does the state after the timer
        // become the checkpoint at the delivered offset: a commit before
        // that keeps the earlier state, and a restart emits them again.
        match (state, shared.tracker.delivered(&self.tp)) {
            (Some(Ok(state)), Some(end)) if shared.state_topic.is_some() => {
                shared.checkpoints.record(&self.tp, end, state);
            }
            (Some(Err(e)), _) => {
                tracing::warn!(partition = p, error = %e, "cannot snapshot a stateful stage after its timer; its checkpoint keeps the previous state");
            }
            _ => {}
        }
        // The commit that carries them (and the checkpoint).
        shared.tracker.nudge();
    }

    /// Switches to the reloaded stages, if a reload happened, before
    /// `batch`; on failure the partition keeps its stages.
    async fn follow_reload(&mut self, batch: &Fetched) {
        if !self.sets.has_changed().unwrap_or(false) {
            return;
        }
        let set = self.sets.borrow_and_update().clone();
        let next = on_chain(&mut self.chain, move |c| set.successor(c)).await;
        let (topic, p) = (&self.tp.topic, self.tp.partition);
        let at = batch
            .records
            .first()
            .map_or(batch.next_offset, |r| r.offset);
        match next {
            Ok(next) => {
                self.chain = next;
                let from_generation =
                    std::mem::replace(&mut self.generation, self.sets.borrow().generation);
                tracing::info!(topic = %topic, partition = p, offset = at, from_generation, generation = self.generation, "partition switched to the reloaded stages");
            }
            Err(e) => {
                tracing::error!(topic = %topic, partition = p, error = %e, "cannot switch to the reloaded stages; this partition keeps the previous ones");
            }
        }
    }

    /// A fetch with no records for the stages (transaction markers,
    /// aborted records): its offsets count as delivered once what came
    /// before is.
    fn skip(&self, batch: &Fetched) {
        let (shared, p, end) = (&self.shared, &self.tp, batch.next_offset);
        shared.metrics.set_lag(p, batch.high_watermark - end);
        if self.chain.is_stateful() {
            // The state holds at the new offset too: a commit there must
            // find a checkpoint, or the stages restart empty.
            shared.checkpoints.carry(p, end);
        }
        shared.tracker.register(p, end);
        shared.tracker.complete(p, end);
    }

    /// Runs the chain over `batch` and accounts for the result; `None` when
    /// a stage with `on_error = "stop"` failed (the pipeline then stops,
    /// and the batch is neither delivered nor committed).
    async fn process(&mut self, batch: Fetched) -> Option<Processed> {
        let shared = self.shared.clone();
        let end = batch.next_offset;
        shared.metrics.set_lag(&self.tp, batch.high_watermark - end);
        shared.tracker.register(&self.tp, end);
        let (records, mut out) = transform(
            &shared,
            &mut self.chain,
            &self.tp,
            (batch.records, batch.undecodable),
            &self.stop,
        )
        .await?;
        if shared.state_topic.is_some() && self.chain.is_stateful() {
            if out.state.is_empty() {
                // No records for the stages, or the snapshot failed: the
                // last state holds at this batch's end.
                shared.checkpoints.carry(&self.tp, end);
            } else {
                shared
                    .checkpoints
                    .record(&self.tp, end, std::mem::take(&mut out.state));
            }
        }
        Some(Processed { records, out, end })
    }

    /// Hands `batch` to the sink once the previous delivery is done and (in
    /// a group committing at once) the one before it is committed; the delivery runs while the
    /// next batch is processed, and acknowledges its end offset when done.
    async fn deliver(&mut self, batch: Processed) {
        self.finish_delivery().await;
        let commits_at_once = self
            .shared
            .config
            .group
            .as_ref()
            .is_some_and(|g| g.commit_interval.is_zero());
        if commits_at_once {
            // Commits follow every delivery: at most one delivered batch
            // waits for its commit while the next is delivered, which is
            // what bounds the repeats after a crash (see `in_flight_bound`).
            // With a commit interval the bound is the interval's worth
            // instead, and deliveries never wait for commits.
            if let Some(prev) = self.previous_end
                && !self.stop.is_cancelled()
            {
                tokio::select! {
                    reached = self.shared.tracker.wait_committed(&self.tp, prev, COMMIT_WAIT) => if !reached {
                        tracing::debug!(topic = %self.tp.topic, partition = self.tp.partition, offset = prev, "commit is late; delivering anyway");
                    },
                    _ = self.stop.cancelled() => {}
                }
            }
            self.previous_end = self.last_end;
            self.last_end = Some(batch.end);
        }
        let (shared, tp) = (self.shared.clone(), self.tp.clone());
        let topic = tp.topic.clone();
        let p = tp.partition;
        self.delivering = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            // With exactly-once, a delivery is all in one transaction.
            let _in_transaction = enter(&shared).await;
            match shared
                .sink
                .deliver(&topic, p, &batch.records, &batch.out)
                .await
            {
                Ok(d) => acknowledge(&shared, &tp, &batch, d),
                Err(e) => {
                    // Not acknowledged: nothing from this batch on is committed.
                    let first = batch.records.first().map_or(-1, |r| r.offset);
                    refused(
                        &shared,
                        p,
                        &format!("the batch from {topic}/{p}@{first}"),
                        e,
                    );
                }
            }
            batch.out.output
        })));
    }

    /// Waits for the delivery in flight, if any.
    async fn finish_delivery(&mut self) {
        if let Some(h) = self.delivering.take() {
            let output = h.await.expect("delivery task panicked");
            self.chain.recycle(output);
        }
    }
}

/// Step 2, the stages' part: decodes framed input (waiting while the
/// registry cannot be reached), runs the chain over a batch of `tp` on the
/// stage thread, encodes its output, counts and logs what the stages did,
/// and makes undecodable input dead letters (after the records). `None`
/// when stopped while waiting, or when a stage whose policy is `stop`
/// failed (the pipeline then stops; nothing of the batch is delivered).
pub(super) async fn transform(
    shared: &Arc<Shared>,
    chain: &mut Chain,
    tp: &TopicPartition,
    (records, undecodable): (Vec<RecordAndOffset>, Vec<Undecodable>),
    stop: &CancellationToken,
) -> Option<(Vec<RecordAndOffset>, ChainOutput)> {
    let now_ms = Utc::now().timestamp_millis();
    let p = tp.partition;
    let topic = tp.topic.clone();
    let started = Instant::now();
    if let Some(decoder) = &shared.decoder {
        // Every schema the batch names, fetched before the stages run;
        // waits while the registry cannot be reached.
        let parts = records
            .iter()
            .map(|r| (r.record.key.as_deref(), r.record.value.as_deref()));
        if decoder.prepare(parts, &topic, p, stop).await.is_err() {
            return None;
        }
    }
    let edges = shared.clone();
    let (mut out, mut records) = if records.is_empty() {
        (ChainOutput::default(), records)
    } else {
        on_chain(chain, move |c| {
            let mut decoded = Decoded::default();
            let mut out = match &edges.decoder {
                None => {
                    edges.contract.sample(&records);
                    c.process(&topic, p, now_ms, &records)
                }
                Some(decoder) => {
                    let parts = records
                        .iter()
                        .map(|r| (r.record.key.as_deref(), r.record.value.as_deref()));
                    decoder.decode(parts, &mut decoded);
                    let views = decoded.records(&records);
                    edges.contract.sample(&views);
                    c.process(&topic, p, now_ms, &views)
                }
            };
            if let Some(encoder) = &edges.encoder {
                let inputs = edges.decoder.as_ref().map(|d| (d, &decoded));
                encode_output(encoder, inputs, &mut out, &records);
            }
            (out, records)
        })
        .await
    };
    let metrics = &shared.metrics;
    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.add_stage_counts(&chain.names(), &out.stage_counts);
    for e in out.stage_errors.iter().chain(&out.fatal) {
        metrics.limit_hit(e);
    }
    let topic = &tp.topic;
    let first_offset = records.first().map(|r| r.offset);
    if let Some(e) = out.fatal.take() {
        tracing::error!(topic = %topic, partition = p, first_offset, error = %e, "stage failed and its policy is stop: stopping the pipeline; this batch is neither delivered nor committed");
        shared.fail(e.into());
        return None;
    }
    Stats::add(&metrics.stats.records_in, records.len() as u64);
    metrics.count_input(&tp.topic, records.len() as u64);
    undecodable_to_dead_letters(&tp.topic, p, undecodable, &mut records, &mut out);
    Stats::add(&metrics.stats.dropped, out.dropped);
    Stats::add(&metrics.stats.stage_errors, out.stage_errors.len() as u64);
    for e in &out.stage_errors {
        tracing::warn!(topic = %topic, partition = p, first_offset, error = %e, "stage error: the records it failed go where the stage's on_error policy sends them");
    }
    if out.skipped > 0 {
        tracing::warn!(topic = %topic, partition = p, first_offset, last_offset = records.last().map(|r| r.offset), skipped = out.skipped, "stage failed and its policy is skip: the batch's records were dropped");
    }
    for d in &out.dead {
        tracing::debug!(topic = %topic, partition = p, offset = records[d.input].offset, stage = %d.stage, reason = %d.reason, "dead letter");
    }
    metrics.observe_windows(out.side.iter().filter_map(WindowCount::read));
    Some((records, out))
}

/// What the client could not decode becomes dead letters of stage `host`,
/// as inputs after the batch's records (the stages never see them): the
/// raw bytes (a batch) or the record's key and value, with the reason and
/// the offsets it covers.
fn undecodable_to_dead_letters(
    topic: &str,
    p: i32,
    undecodable: Vec<Undecodable>,
    records: &mut Vec<RecordAndOffset>,
    out: &mut ChainOutput,
) {
    for u in undecodable {
        tracing::warn!(topic, partition = p, first_offset = u.first_offset, last_offset = u.last_offset, reason = %u.reason, "input the client cannot decode goes to the dead-letter topic");
        let span = if u.first_offset == u.last_offset {
            format!("offset {}", u.first_offset)
        } else {
            format!("offsets {} to {}", u.first_offset, u.last_offset)
        };
        out.dead.push(DeadLetter {
            input: records.len(),
            stage: "host".into(),
            reason: format!("{} ({span})", u.reason),
            stage_error: false,
        });
        records.push(RecordAndOffset {
            record: rskafka::record::Record {
                key: u.key,
                value: Some(u.value),
                headers: Default::default(),
                timestamp: Utc::now(),
            },
            offset: u.first_offset,
        });
    }
}

/// The sink edge: the chain's output re-encoded in the output's format;
/// an input whose output does not fit the writer schema becomes a dead
/// letter of stage `host` (with its original bytes), naming the field.
fn encode_output(
    encoder: &Encoder,
    inputs: Option<(&Decoder, &Decoded)>,
    out: &mut ChainOutput,
    records: &[rskafka::record::RecordAndOffset],
) {
    let misfits = crate::format::encode_outputs(encoder, inputs, &mut out.output, records);
    if misfits.is_empty() {
        return;
    }
    for (offset, reason) in misfits {
        if let Ok(input) = records.binary_search_by_key(&offset, |r| r.offset) {
            out.dead.push(DeadLetter {
                input,
                stage: crate::stages::HOST_STAGE.into(),
                reason,
                stage_error: false,
            });
        }
    }
    out.dead.sort_by_key(|d| d.input);
}

/// With exactly-once, a place in the open transaction: its commit waits
/// until this is dropped.
async fn enter(shared: &Shared) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
    match shared.sink.transactions() {
        Some(txn) => Some(txn.enter().await),
        None => None,
    }
}

/// A delivery failed for good: with exactly-once its transaction may only
/// be aborted (it may hold part of the batch, whose offsets never follow).
/// When the brokers ended the transaction (an epoch or sequence they no
/// longer accept: it outlived its timeout, or another producer took the
/// transactional id), the membership aborts it and every partition starts
/// again from its committed offset; anything else stops the pipeline.
/// Called while the delivery still holds its place in the transaction, so
/// no commit can take the transaction first. `what` names the delivery in
/// the log.
fn refused(shared: &Shared, p: i32, what: &str, e: crate::sink::SinkError) {
    if let Some(txn) = shared.sink.transactions() {
        txn.doom(e.to_string(), e.transaction);
        if e.transaction {
            tracing::warn!(partition = p, what, error = %e, "the transaction cannot go on: aborting it; every partition starts again from its committed offset");
            shared.tracker.nudge();
            return;
        }
    }
    tracing::error!(partition = p, what, error = %e, "stopping the pipeline: a refused record has nowhere to go; nothing from it on is committed");
    shared.fail(e.into());
}

/// Step 4: the batch is in the output and dead-letter topics; its end
/// offset is delivered (and may be committed), and the metrics count it.
fn acknowledge(shared: &Shared, p: &TopicPartition, batch: &Processed, d: Delivered) {
    shared.tracker.complete(p, batch.end);
    count_delivered(shared, p, &batch.records, d);
}

/// The metrics of a delivered batch of `p` (its input `records`).
pub(super) fn count_delivered(
    shared: &Shared,
    p: &TopicPartition,
    records: &[RecordAndOffset],
    d: Delivered,
) {
    let metrics = &shared.metrics;
    let now = Utc::now().timestamp_millis();
    metrics.end_to_end_seconds.observe_each(
        records
            .iter()
            .map(|r| (now - r.record.timestamp.timestamp_millis()) as f64 / 1e3),
    );
    Stats::add(&metrics.stats.records_out, d.output);
    Stats::add(&metrics.stats.dead_letters, d.dead_letters);
    metrics.count_dead_letters(&p.topic, d.dead_letters);
    Stats::add(&metrics.stats.side_records, d.side);
    Stats::add(&metrics.stats.batches, 1);
}

/// Step 1: reads the partition until `end` (if any) or `stop`, handing
/// batches of at most `max_records` to the worker.
async fn fetch(
    mut source: PartitionSource,
    end: Option<i64>,
    tx: mpsc::Sender<Fetched>,
    max_records: usize,
    stop: CancellationToken,
) {
    loop {
        if end.is_some_and(|e| source.position() >= e) || stop.is_cancelled() {
            break;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            batch = source.next_batch() => {
                if send_chunks(&tx, batch, max_records).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends a fetched batch as chunks of at most `max` records, so a batch
/// (and what a crash can repeat) has a known bound. Fails when the worker
/// is gone.
async fn send_chunks(
    tx: &mpsc::Sender<Fetched>,
    batch: Fetched,
    max: usize,
) -> Result<(), mpsc::error::SendError<Fetched>> {
    let mut records = batch.records;
    let mut undecodable = batch.undecodable;
    if records.is_empty() {
        // Only markers, aborted or undecodable records: the position still
        // moves, so the worker records (and may commit) it.
        return tx
            .send(Fetched {
                records,
                undecodable,
                ..batch
            })
            .await;
    }
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(max.max(1)));
        let next_offset = if rest.is_empty() {
            batch.next_offset
        } else {
            records.last().map_or(batch.next_offset, |r| r.offset + 1)
        };
        // An undecodable part goes with the chunk that covers its offsets,
        // so it is dead-lettered before they may be committed.
        let covered = undecodable.partition_point(|u| u.first_offset < next_offset);
        let rest_undecodable = undecodable.split_off(covered);
        let chunk = Fetched {
            records,
            undecodable,
            next_offset,
            high_watermark: batch.high_watermark,
        };
        tx.send(chunk).await?;
        records = rest;
        undecodable = rest_undecodable;
    }
    Ok(())
}

/// Opens a partition, retrying with backoff until it works or `stop`.
async fn open_source(
    shared: &Shared,
    tp: &TopicPartition,
    start: StartFrom,
    stop: &CancellationToken,
) -> Option<PartitionSource> {
    let cfg = &shared.config;
    let mut backoff = Backoff::broker();
    let p = tp.partition;
    loop {
        let open = PartitionSource::open(&shared.kafka, &tp.topic, p, start, cfg.fetch);
        let delay = backoff.peek();
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = open => match r {
                Ok(s) => return Some(s),
                Err(e) => tracing::warn!(topic = %tp.topic, partition = p, error = %e, retry_in = ?delay, "cannot open partition"),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Runs `f` on `chain` on a blocking thread (stage work is CPU work) and
/// hands the chain back with the result.
async fn on_stage_thread<R: Send + 'static>(
    mut chain: Chain,
    f: impl FnOnce(&mut Chain) -> R + Send + 'static,
) -> (Chain, R) {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut chain);
        (chain, r)
    })
    .await
    .expect("the stage thread panicked")
}

/// [`on_stage_thread`] for a chain held in place: it moves to the blocking
/// thread and back, an empty chain (no allocation) holding its place
/// meanwhile.
async fn on_chain<R: Send + 'static>(
    chain: &mut Chain,
    f: impl FnOnce(&mut Chain) -> R + Send + 'static,
) -> R {
    let taken = std::mem::replace(chain, Chain::new(Vec::new(), Tombstones::Drop));
    let (back, r) = on_stage_thread(taken, f).await;
    *chain = back;
    r
}

/// Gives a stateful chain the checkpoint taken at the partition's committed
/// offset `from`, so its state matches the records read next. Without a
/// group, a commit or a checkpoint, the state starts empty (and says so).
async fn restore_state(
    shared: &Shared,
    tp: &TopicPartition,
    from: Option<i64>,
    mut chain: Chain,
) -> Chain {
    let p = tp.partition;
    let (Some(state), Some(offset)) = (&shared.state_topic, from) else {
        tracing::info!(
            partition = p,
            "stateful stages start empty (no committed offset to resume from)"
        );
        return chain;
    };
    let loaded = state.load(&shared.kafka, tp, offset).await;
    match loaded {
        Ok(Some(states)) => {
            let (c, restored) = on_stage_thread(chain, move |c| c.restore(&states)).await;
            chain = c;
            match restored {
                Ok(()) => tracing::info!(
                    partition = p,
                    offset,
                    "stateful stages restored from their checkpoint"
                ),
                Err(e) => {
                    tracing::error!(partition = p, offset, error = %e, "a stage refused its checkpoint; it starts empty")
                }
            }
        }
        Ok(None) => {
            tracing::warn!(partition = p, offset, topic = %state.topic, "no checkpoint at the committed offset; stateful stages start empty (counts of open windows restart)")
        }
        Err(e) => {
            tracing::warn!(partition = p, offset, error = %e, "cannot read the state topic; stateful stages start empty")
        }
    }
    chain
}
