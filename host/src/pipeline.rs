//! The pipeline: wires source -> stages -> sink for every input partition.
//!
//! [`Pipeline::prepare`] compiles every stage and runs its `init` once,
//! so a bad plugin or a refused configuration stops the host before it
//! touches Kafka. [`Pipeline::run`] connects, creates missing topics, and
//! starts one worker per input partition. A worker is three steps in a row,
//! overlapped: a fetch task reads ahead (up to [`READ_AHEAD`] batches), the
//! chain processes a batch on a blocking thread (stages are CPU work), and
//! the delivery of the previous batch runs while the next is processed.
//! Deliveries of a partition happen one at a time, in order, so order holds
//! within a partition, and each completed delivery advances that partition's
//! delivered offset in the [`DeliveryTracker`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::config::{ConfigError, PipelineConfig};
use crate::group::coordinator::code;
use crate::group::member::{Beat, Member};
use crate::group::{Assignor, GroupError, GroupSettings};
use crate::kafka::access::{self, Need, Operation};
use crate::kafka::{Kafka, KafkaError};
use crate::metrics::Metrics;
use crate::offsets::DeliveryTracker;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::sink::Sink;
use crate::source::{Fetched, PartitionSource};
use crate::stages::set::{SharedSet, StageSet};
use crate::stages::wasm::WasmEngine;
use crate::stages::{Chain, StageError};
use crate::state::{Checkpoints, StateTopic};
use crate::stats::{Stats, StatsSnapshot};

/// Fetched batches a partition buffers ahead of processing.
pub const READ_AHEAD: usize = 2;

/// Batches of one partition that may be fetched but not committed: read
/// ahead, processing, delivering, and one delivered awaiting its commit.
pub const IN_FLIGHT_BATCHES: usize = READ_AHEAD + 3;

/// How long a delivery waits for the commit of the batch before last.
const COMMIT_WAIT: Duration = Duration::from_secs(2);

/// Errors that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A stage could not be loaded or refused its configuration.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// Kafka could not be used.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The consumer group refused this member for good.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A clean shutdown did not finish flushing in time.
    #[error(
        "shutdown did not finish within {0:?}: batches still in flight were not delivered (they will be read again)"
    )]
    ShutdownTimeout(Duration),
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Final counters.
    pub stats: StatsSnapshot,
    /// Delivered offset per input partition.
    pub delivered: std::collections::BTreeMap<i32, i64>,
}

/// A pipeline whose stages are loaded and validated.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    engine: WasmEngine,
    sets: watch::Sender<SharedSet>,
    until_end: bool,
}

impl Pipeline {
    /// Compiles every stage and initialises one instance of each with its
    /// configuration, failing on the first problem.
    pub fn prepare(config: PipelineConfig) -> Result<Self, PipelineError> {
        let engine = WasmEngine::new()?.with_compile_cache(config.compile_cache.clone());
        let set = StageSet::load(&engine, &config.stages, config.tombstones, None, 1)?;
        let (sets, _) = watch::channel(Arc::new(set));
        Ok(Self {
            config,
            engine,
            sets,
            until_end: false,
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Stop each partition once it reaches the end offset it had at start
    /// (for batch reprocessing and tests) instead of running until a signal.
    pub fn until_end(mut self, yes: bool) -> Self {
        self.until_end = yes;
        self
    }

    /// A fresh instance of the current chain (as each partition gets).
    pub fn chain(&self) -> Result<Chain, StageError> {
        self.sets.borrow().chain()
    }

    /// Runs until `shutdown` (or, with [`Pipeline::until_end`], until every
    /// partition is read to its end), then flushes. A stage whose policy is
    /// `stop` ends the run with its error.
    pub async fn run(self, external: Shutdown) -> Result<RunSummary, PipelineError> {
        let cfg = &self.config;
        // One signal for "stop": the caller's, or a fatal stage error.
        let (stop, shutdown) = shutdown::channel();
        let stop = Arc::new(stop);
        {
            let (mut external, stop) = (external.clone(), stop.clone());
            tokio::spawn(async move {
                external.wait().await;
                stop.trigger();
            });
        }
        let metrics = Arc::new(Metrics::new(Stats::new()));
        let control = crate::reload::start(
            self.engine.clone(),
            cfg.clone(),
            self.sets.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        if let Some(addr) = cfg.admin {
            crate::admin::serve(
                addr,
                cfg.admin_token.clone(),
                control,
                metrics.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(|e| {
                ConfigError::Invalid(format!("cannot serve the admin endpoint on {addr}: {e}"))
            })?;
        }
        let start = async {
            let kafka = Kafka::connect(cfg.kafka.clone()).await?;
            let stateful = self.sets.borrow().is_stateful();
            access::check(&cfg.kafka, &access_needs(cfg, stateful)).await?;
            let input = kafka.ensure_topic(&cfg.input, cfg.create_topics).await?;
            let output = kafka.ensure_topic(&cfg.output, cfg.create_topics).await?;
            let dlq = kafka
                .ensure_topic(&cfg.dead_letter, cfg.create_topics)
                .await?;
            Ok::<_, KafkaError>((kafka, input, output, dlq))
        };
        let mut sd = shutdown.clone();
        let (kafka, input_partitions, output_partitions, dlq_partitions) = tokio::select! {
            started = start => started?,
            _ = sd.wait() => {
                tracing::info!("stopped during start-up; nothing was consumed");
                return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
            }
        };
        tracing::info!(
            input = %cfg.input, input_partitions, output = %cfg.output, output_partitions,
            dead_letter = %cfg.dead_letter, stages = ?cfg.stages.iter().map(|s| &s.name).collect::<Vec<_>>(),
            in_flight_bound = format!(
                "a crash repeats at most {} records per partition ({} batches of at most {} records)",
                IN_FLIGHT_BATCHES * cfg.max_batch_records, IN_FLIGHT_BATCHES, cfg.max_batch_records
            ),
            "pipeline running"
        );
        let shared = Arc::new(Shared {
            kafka: kafka.clone(),
            sink: Sink::new(
                kafka,
                (&cfg.output, output_partitions),
                (&cfg.dead_letter, dlq_partitions),
                cfg.create_topics,
            ),
            tracker: DeliveryTracker::new(),
            metrics: metrics.clone(),
            config: cfg.clone(),
            until_end: self.until_end,
            sets: self.sets.subscribe(),
            checkpoints: Checkpoints::default(),
            state_topic: cfg.group.as_ref().map(|g| StateTopic {
                topic: cfg.state_topic.clone(),
                group: g.group.clone(),
                input: cfg.input.clone(),
            }),
            fatal: Mutex::new(None),
            stop: stop.clone(),
        });
        let started = Instant::now();
        let reporter = tokio::spawn(report(shared.metrics.stats.clone(), cfg.stats_interval));
        let result = match &cfg.group {
            None => self.run_all(&shared, input_partitions, shutdown).await,
            Some(settings) => {
                self.run_group(&shared, settings.clone(), input_partitions, shutdown)
                    .await
            }
        };
        reporter.abort();
        stop.trigger();
        result?;
        if let Some(e) = shared.fatal.lock().expect("fatal error").take() {
            return Err(PipelineError::Stage(e));
        }
        let summary = RunSummary {
            stats: shared.metrics.stats.snapshot(),
            delivered: shared.tracker.snapshot(),
        };
        summary.stats.log(
            &StatsSnapshot::default(),
            started.elapsed().as_secs_f64(),
            "pipeline stopped",
        );
        tracing::info!(delivered = ?summary.delivered, "delivered offsets per partition (everything below is in the output or the dead-letter topic)");
        Ok(summary)
    }

    /// Without a group: every partition, from `--start`, until shutdown
    /// (or the end with `--until-end`).
    async fn run_all(
        &self,
        shared: &Arc<Shared>,
        partitions: i32,
        mut shutdown: Shutdown,
    ) -> Result<(), PipelineError> {
        let mut workers = Workers::default();
        for p in 0..partitions {
            workers.start(self, shared, p, None)?;
        }
        shared.metrics.ready.store(true, Ordering::Relaxed);
        // Until every worker is done (`--until-end`) or a shutdown.
        loop {
            if workers.running.values().all(|w| w.task.is_finished()) {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.wait() => break,
            }
        }
        let limit = self.config.shutdown_timeout;
        if tokio::time::timeout(limit, workers.stop_all(shared))
            .await
            .is_err()
        {
            return Err(PipelineError::ShutdownTimeout(limit));
        }
        Ok(())
    }

    /// As a member of a consumer group: the partitions the group assigns,
    /// from the committed offsets, committing delivered offsets as they
    /// advance, on revocation and at shutdown.
    async fn run_group(
        &self,
        shared: &Arc<Shared>,
        settings: GroupSettings,
        partitions: i32,
        mut shutdown: Shutdown,
    ) -> Result<(), PipelineError> {
        let cfg = &self.config;
        let cooperative = settings.assignor == Assignor::CooperativeSticky;
        let mut member = Member::new(settings.clone(), &cfg.kafka, &cfg.input, partitions);
        let mut workers = Workers::default();
        let mut backoff = Backoff::broker();
        'membership: while !shutdown.is_triggered() {
            let owned = workers.partitions();
            let joined = tokio::select! {
                r = member.join(&owned) => r,
                _ = shutdown.wait() => break,
            };
            let assigned = match joined {
                Ok(a) => {
                    backoff.reset();
                    shared.metrics.rebalances.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.ready.store(!a.is_empty(), Ordering::Relaxed);
                    a
                }
                Err(e @ GroupError::FencedInstance(_)) => {
                    workers.stop_all(shared).await;
                    return Err(PipelineError::Group(e));
                }
                Err(GroupError::Broker {
                    code: code::GROUP_AUTHORIZATION_FAILED,
                    ..
                }) => {
                    workers.stop_all(shared).await;
                    return Err(PipelineError::Kafka(access::denied_group(
                        &cfg.kafka,
                        &settings.group,
                    )));
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(group = %settings.group, error = %e, retry_in = ?delay, "cannot join the group");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => break,
                    }
                    continue;
                }
            };
            let revoked: Vec<i32> = owned
                .iter()
                .copied()
                .filter(|p| !assigned.contains(p))
                .collect();
            if !revoked.is_empty() {
                for p in &revoked {
                    shared.metrics.forget_partition(*p);
                }
                tracing::info!(group = %settings.group, partitions = ?revoked, "partitions revoked");
                workers.stop(shared, &revoked).await;
                commit(&mut member, shared, &revoked).await;
            }
            let new: Vec<i32> = assigned
                .iter()
                .copied()
                .filter(|p| !owned.contains(p))
                .collect();
            if !new.is_empty() {
                let committed = match member.committed(&new).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(group = %settings.group, error = %e, "cannot read committed offsets; rejoining");
                        continue;
                    }
                };
                for p in &new {
                    let start = committed.get(p).copied().flatten();
                    tracing::info!(group = %settings.group, partition = p, committed = ?start, "partition assigned");
                    workers.start(self, shared, *p, start)?;
                }
            }
            if cooperative && !revoked.is_empty() {
                // Cooperative protocol: rejoin at once so the partitions
                // given up here can be assigned to their new owners.
                continue;
            }
            let mut last_ok = Instant::now();
            let mut last_commit = Instant::now();
            let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
            let mut next_beat = tokio::time::Instant::now() + settings.heartbeat_interval;
            let mut commit_pending = false;
            loop {
                // Commit as soon as delivered offsets move (at most once per
                // commit interval), so a crash repeats little; heartbeat on
                // schedule.
                let commit_at =
                    tokio::time::Instant::from_std(last_commit + settings.commit_interval);
                let beat_due = tokio::select! {
                    _ = tokio::time::sleep_until(next_beat) => true,
                    _ = shared.tracker.moved() => false,
                    _ = tokio::time::sleep_until(commit_at), if commit_pending => false,
                    _ = shutdown.wait() => break 'membership,
                };
                commit_pending = true;
                if last_commit.elapsed() >= settings.commit_interval {
                    commit_pending = false;
                    let delivered = shared.tracker.snapshot();
                    let changed: Vec<i32> = workers
                        .partitions()
                        .into_iter()
                        .filter(|p| {
                            delivered
                                .get(p)
                                .is_some_and(|d| committed.get(p) != Some(d))
                        })
                        .collect();
                    if !changed.is_empty() && commit(&mut member, shared, &changed).await {
                        committed.extend(
                            changed
                                .iter()
                                .filter_map(|p| delivered.get(p).map(|d| (*p, *d))),
                        );
                    }
                    last_commit = Instant::now();
                }
                if shared.until_end && workers.running.values().all(|w| w.task.is_finished()) {
                    break 'membership;
                }
                if !beat_due {
                    continue;
                }
                next_beat = tokio::time::Instant::now() + settings.heartbeat_interval;
                match member.heartbeat().await {
                    Ok(Beat::Stable) => last_ok = Instant::now(),
                    Ok(Beat::Rebalance) => {
                        tracing::info!(group = %settings.group, "rebalance started");
                        if !cooperative {
                            let all = workers.partitions();
                            workers.stop(shared, &all).await;
                            commit(&mut member, shared, &all).await;
                        } else {
                            commit(&mut member, shared, &workers.partitions()).await;
                        }
                        continue 'membership;
                    }
                    Ok(Beat::Fenced) => {
                        tracing::warn!(group = %settings.group, "this member was fenced (stale generation): stopping its partitions without committing");
                        workers.stop_all(shared).await;
                        continue 'membership;
                    }
                    Err(e) if last_ok.elapsed() > settings.session_timeout => {
                        tracing::warn!(group = %settings.group, error = %e, "no heartbeat within the session timeout: the group may have moved this member's partitions; stopping them without committing");
                        workers.stop_all(shared).await;
                        member.fenced();
                        continue 'membership;
                    }
                    Err(e) => {
                        tracing::warn!(group = %settings.group, error = %e, "heartbeat failed")
                    }
                }
            }
        }
        // Shutdown: flush, commit, leave.
        let limit = self.config.shutdown_timeout;
        let all = workers.partitions();
        let flushed = tokio::time::timeout(limit, workers.stop(shared, &all)).await;
        if flushed.is_ok() {
            commit(&mut member, shared, &all).await;
        }
        member.leave().await;
        flushed.map_err(|_| PipelineError::ShutdownTimeout(limit))
    }
}

/// What the pipeline must be allowed to do on its topics: READ the input,
/// WRITE the output, the dead letters and every side output, and, when a
/// stateful stage checkpoints in a group, READ and WRITE the state topic.
fn access_needs(cfg: &PipelineConfig, stateful: bool) -> Vec<Need> {
    let need = |topic: &str, operation| Need {
        topic: topic.to_string(),
        operation,
    };
    let mut needs = vec![
        need(&cfg.input, Operation::Read),
        need(&cfg.output, Operation::Write),
        need(&cfg.dead_letter, Operation::Write),
    ];
    for stage in &cfg.stages {
        needs.extend(stage.outputs.values().map(|t| need(t, Operation::Write)));
    }
    if stateful && cfg.group.is_some() {
        needs.push(need(&cfg.state_topic, Operation::Read));
        needs.push(need(&cfg.state_topic, Operation::Write));
    }
    needs
}

/// Commits the delivered offsets of `partitions`, logging the outcome;
/// true when committed.
async fn commit(member: &mut Member, shared: &Shared, partitions: &[i32]) -> bool {
    let offsets: Vec<(i32, i64)> = partitions
        .iter()
        .filter_map(|p| shared.tracker.delivered(*p).map(|o| (*p, o)))
        .collect();
    if offsets.is_empty() {
        return true;
    }
    if let Some(state) = &shared.state_topic {
        for (p, o) in &offsets {
            if let Some(states) = shared.checkpoints.at(*p, *o) {
                state.save(&shared.sink, *p, *o, &states).await;
            }
        }
    }
    match member.commit(&offsets).await {
        Ok(()) => {
            tracing::debug!(generation = member.generation(), offsets = ?offsets, "committed");
            shared.tracker.mark_committed(&offsets);
            true
        }
        Err(e) => {
            tracing::warn!(offsets = ?offsets, error = %e, "commit failed; the records will be read again after a restart");
            false
        }
    }
}

/// A running partition worker.
#[derive(Debug)]
struct Worker {
    stop: Trigger,
    task: JoinHandle<()>,
}

/// The partition workers this process runs.
#[derive(Debug, Default)]
struct Workers {
    running: BTreeMap<i32, Worker>,
}

impl Workers {
    fn partitions(&self) -> Vec<i32> {
        self.running.keys().copied().collect()
    }

    fn start(
        &mut self,
        pipeline: &Pipeline,
        shared: &Arc<Shared>,
        p: i32,
        from: Option<i64>,
    ) -> Result<(), StageError> {
        let chain = pipeline.chain()?;
        shared.checkpoints.forget(p);
        let (stop, stopped) = shutdown::channel();
        let task = tokio::spawn(run_partition(shared.clone(), p, chain, stopped, from));
        self.running.insert(p, Worker { stop, task });
        Ok(())
    }

    /// Stops the workers of `partitions` and waits until their deliveries
    /// are done; their delivered offsets stay readable for a final commit
    /// until the next start.
    async fn stop(&mut self, _shared: &Shared, partitions: &[i32]) {
        let mut tasks = Vec::new();
        for p in partitions {
            if let Some(w) = self.running.remove(p) {
                w.stop.trigger();
                tasks.push(w.task);
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn stop_all(&mut self, shared: &Shared) {
        let all = self.partitions();
        self.stop(shared, &all).await;
    }
}

/// State shared by the partition workers.
#[derive(Debug)]
struct Shared {
    kafka: Kafka,
    sink: Sink,
    tracker: DeliveryTracker,
    config: PipelineConfig,
    until_end: bool,
    /// The current stage set; workers switch when it changes.
    sets: watch::Receiver<SharedSet>,
    /// Snapshots of stateful stages awaiting their commit.
    checkpoints: Checkpoints,
    /// Where checkpoints go (group mode only).
    state_topic: Option<StateTopic>,
    /// The error of a stage whose policy is `stop`.
    fatal: Mutex<Option<StageError>>,
    /// Prometheus metrics (the admin endpoint's `/metrics`).
    metrics: Arc<Metrics>,
    /// Stops the pipeline (set off by a fatal stage error).
    stop: Arc<Trigger>,
}

/// Sends a fetched batch as chunks of at most `max` records, so a batch
/// (and what a crash can repeat) has a known bound.
async fn send_chunks(tx: &mpsc::Sender<Fetched>, batch: Fetched, max: usize) -> Result<(), ()> {
    let mut records = batch.records;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(max.max(1)));
        let next_offset = records.last().map_or(batch.next_offset, |r| r.offset + 1);
        let chunk = Fetched {
            records,
            next_offset,
            high_watermark: batch.high_watermark,
        };
        tx.send(chunk).await.map_err(|_| ())?;
        records = rest;
    }
    Ok(())
}

async fn report(stats: Arc<Stats>, every: Duration) {
    let mut prev = stats.snapshot();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = stats.snapshot();
        if now != prev {
            now.log(&prev, every.as_secs_f64(), "pipeline stats");
        }
        prev = now;
    }
}

/// Opens a partition, retrying with backoff until it works or shutdown.
async fn open_source(shared: &Shared, p: i32, shutdown: &mut Shutdown) -> Option<PartitionSource> {
    let cfg = &shared.config;
    let mut backoff = Backoff::broker();
    loop {
        let open = PartitionSource::open(&shared.kafka, &cfg.input, p, cfg.start, cfg.fetch);
        let delay = backoff.peek();
        tokio::select! {
            _ = shutdown.wait() => return None,
            r = open => match r {
                Ok(s) => return Some(s),
                Err(e) => tracing::warn!(topic = %cfg.input, partition = p, error = %e, retry_in = ?delay, "cannot open partition"),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn run_partition(
    shared: Arc<Shared>,
    p: i32,
    mut chain: Chain,
    mut shutdown: Shutdown,
    from: Option<i64>,
) {
    let Some(mut source) = open_source(&shared, p, &mut shutdown).await else {
        return;
    };
    if let Some(offset) = from {
        source.seek(offset);
    }
    let end = if shared.until_end {
        match source.end_offset().await {
            Ok(end) => Some(end),
            Err(e) => {
                tracing::error!(partition = p, error = %e, "cannot read the end offset");
                return;
            }
        }
    } else {
        None
    };
    let mut sets = shared.sets.clone();
    let mut generation = sets.borrow_and_update().generation;
    if chain.is_stateful() {
        chain = restore_state(&shared, p, from, chain).await;
    }
    shared.tracker.start(p, source.position());
    tracing::debug!(
        partition = p,
        offset = source.position(),
        ?end,
        "partition started"
    );

    let (tx, mut rx) = mpsc::channel::<Fetched>(READ_AHEAD);
    let max_records = shared.config.max_batch_records;
    let mut fetch_shutdown = shutdown.clone();
    let fetcher = tokio::spawn(async move {
        loop {
            if end.is_some_and(|e| source.position() >= e) || fetch_shutdown.is_triggered() {
                break;
            }
            tokio::select! {
                biased;
                _ = fetch_shutdown.wait() => break,
                batch = source.next_batch() => {
                    if send_chunks(&tx, batch, max_records).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let topic: Arc<str> = shared.config.input.as_str().into();
    let mut delivering: Option<JoinHandle<()>> = None;
    let (mut previous_end, mut last_end): (Option<i64>, Option<i64>) = (None, None);
    let mut stop_waiting = shutdown.clone();
    let mut stateful = chain.is_stateful();
    let mut timer = tokio::time::interval(shared.config.timer_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let fetched = tokio::select! {
            f = rx.recv() => match f { Some(f) => f, None => break },
            _ = timer.tick(), if stateful => {
                let context = stage_sdk::batch::Context {
                    now_ms: Utc::now().timestamp_millis(),
                    topic: topic.to_string(),
                    partition: p,
                };
                let (c, side) = on_stage_thread(chain, move |c| c.on_timer(&context)).await;
                chain = c;
                if !side.is_empty() {
                    shared.metrics.observe_side(&side);
                    let n = shared.sink.deliver_side(p, &side).await;
                    Stats::add(&shared.metrics.stats.side_records, n);
                }
                continue;
            }
        };
        let end = fetched.next_offset;
        shared.metrics.set_lag(p, fetched.high_watermark - end);
        if sets.has_changed().unwrap_or(false) {
            let set = sets.borrow_and_update().clone();
            let (c, next) = on_stage_thread(chain, move |c| set.successor(c)).await;
            chain = c;
            let at = fetched.records.first().map_or(end, |r| r.offset);
            match next {
                Ok(next) => {
                    chain = next;
                    stateful = chain.is_stateful();
                    let from_generation =
                        std::mem::replace(&mut generation, sets.borrow().generation);
                    tracing::info!(topic = %topic, partition = p, offset = at, from_generation, generation, "partition switched to the reloaded stages");
                }
                Err(e) => {
                    tracing::error!(topic = %topic, partition = p, error = %e, "cannot switch to the reloaded stages; this partition keeps the previous ones");
                }
            }
        }
        shared.tracker.register(p, end);
        let now_ms = Utc::now().timestamp_millis();
        let t = topic.clone();
        let started = std::time::Instant::now();
        let records = fetched.records;
        let (c, (mut out, records)) = on_stage_thread(chain, move |c| {
            let out = c.process(&t, p, now_ms, &records);
            (out, records)
        })
        .await;
        chain = c;
        shared
            .metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        shared
            .metrics
            .add_stage_counts(&chain.names(), &out.stage_counts);
        for e in out.stage_errors.iter().chain(&out.fatal) {
            shared.metrics.limit_hit(e);
        }
        if let Some(e) = out.fatal.take() {
            tracing::error!(topic = %topic, partition = p, first_offset = records.first().map(|r| r.offset), error = %e, "stage failed and its policy is stop: stopping the pipeline; this batch is neither delivered nor committed");
            *shared.fatal.lock().expect("fatal error") = Some(e);
            shared.stop.trigger();
            break;
        }
        Stats::add(&shared.metrics.stats.records_in, records.len() as u64);
        Stats::add(&shared.metrics.stats.dropped, out.dropped);
        Stats::add(
            &shared.metrics.stats.stage_errors,
            out.stage_errors.len() as u64,
        );
        for e in &out.stage_errors {
            tracing::warn!(topic = %topic, partition = p, first_offset = records.first().map(|r| r.offset), error = %e, "stage error: the batch's records go to the dead-letter topic");
        }
        if out.skipped > 0 {
            tracing::warn!(topic = %topic, partition = p, first_offset = records.first().map(|r| r.offset), last_offset = records.last().map(|r| r.offset), skipped = out.skipped, "stage failed and its policy is skip: the batch's records were dropped");
        }
        for d in &out.dead {
            tracing::debug!(topic = %topic, partition = p, offset = records[d.input].offset, stage = %d.stage, reason = %d.reason, "dead letter");
        }
        shared.metrics.observe_side(&out.side);
        if shared.state_topic.is_some() && !out.state.is_empty() {
            shared
                .checkpoints
                .record(p, end, std::mem::take(&mut out.state));
        }
        if let Some(h) = delivering.take() {
            h.await.expect("delivery task panicked");
        }
        if shared.config.group.is_some() {
            // At most one delivered batch waits for its commit while the
            // next is delivered: this is what bounds the repeats after a
            // crash (see `in_flight_bound`).
            if let Some(prev) = previous_end
                && !stop_waiting.is_triggered()
            {
                tokio::select! {
                    reached = shared.tracker.wait_committed(p, prev, COMMIT_WAIT) => if !reached {
                        tracing::debug!(partition = p, offset = prev, "commit is late; delivering anyway");
                    },
                    _ = stop_waiting.wait() => {}
                }
            }
            previous_end = last_end;
            last_end = Some(end);
        }
        let (shared2, topic2) = (shared.clone(), topic.clone());
        delivering = Some(tokio::spawn(async move {
            let d = shared2.sink.deliver(&topic2, p, &records, &out).await;
            shared2.tracker.complete(p, end);
            let now = Utc::now().timestamp_millis();
            shared2.metrics.end_to_end_seconds.observe_each(
                records
                    .iter()
                    .map(|r| (now - r.record.timestamp.timestamp_millis()) as f64 / 1e3),
            );
            Stats::add(&shared2.metrics.stats.records_out, d.output);
            Stats::add(&shared2.metrics.stats.dead_letters, d.dead_letters);
            Stats::add(&shared2.metrics.stats.side_records, d.side);
            Stats::add(&shared2.metrics.stats.batches, 1);
        }));
    }
    // Unblocks a fetcher waiting to hand over a batch (after a fatal stop).
    drop(rx);
    if let Some(h) = delivering.take() {
        h.await.expect("delivery task panicked");
    }
    let _ = fetcher.await;
    tracing::debug!(partition = p, delivered = ?shared.tracker.delivered(p), "partition stopped");
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

/// Gives a stateful chain the checkpoint taken at the partition's committed
/// offset `from`, so its state matches the records read next. Without a
/// group, a commit or a checkpoint, the state starts empty (and says so).
async fn restore_state(shared: &Shared, p: i32, from: Option<i64>, mut chain: Chain) -> Chain {
    let (Some(state), Some(offset)) = (&shared.state_topic, from) else {
        tracing::info!(
            partition = p,
            "stateful stages start empty (no committed offset to resume from)"
        );
        return chain;
    };
    let loaded = state.load(&shared.kafka, p, offset).await;
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
