//! The pipeline: wires source -> stages -> sink for every input partition.
//!
//! [`Pipeline::prepare`] compiles every stage and runs its `init` once,
//! so a bad plugin or a refused configuration stops the host before it
//! touches Kafka. [`Pipeline::run`] connects, checks the ACLs, creates
//! missing topics, and then runs the partitions: every one without a
//! group, or those the group assigns ([`membership`]).
//!
//! Each partition is a [`worker`]: fetch -> process -> deliver ->
//! acknowledge, overlapped (the next batch is fetched and processed while
//! the previous one is delivered). Deliveries of a partition happen one at
//! a time, in order, so order holds within a partition, and each completed
//! delivery advances that partition's delivered offset in the
//! [`DeliveryTracker`]: what the membership commits.

mod membership;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{ConfigError, Guarantee, PipelineConfig};
use crate::format::{Decoder, Encoder, FormatError};
use crate::group::GroupError;
use crate::kafka::access::{self, Need, Operation};
use crate::kafka::{Kafka, KafkaError};
use crate::metrics::Metrics;
use crate::offsets::DeliveryTracker;
use crate::reload::Contract;
use crate::shutdown::CancellationToken;
use crate::sink::sequences::Idempotence;
use crate::sink::transaction::{Transactions, TxnError};
use crate::sink::{Sink, SinkError};
use crate::source::StartFrom;
use crate::stages::set::{SharedSet, StageSet};
use crate::stages::wasm::WasmEngine;
use crate::stages::{Chain, StageError};
use crate::state::{Checkpoints, StateTopic};
use crate::stats::{Stats, StatsSnapshot};
use membership::Membership;
use worker::{Resume, Workers};

/// Fetched batches a partition buffers ahead of processing.
pub const READ_AHEAD: usize = 2;

/// Batches of one partition that may be fetched but not committed: read
/// ahead, processing, delivering, and one delivered awaiting its commit.
pub const IN_FLIGHT_BATCHES: usize = READ_AHEAD + 3;

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
    /// A topic refused a record for good where nothing else can take it.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The transactional producer was fenced or could not go on
    /// (exactly-once); nothing of its open transaction became visible.
    #[error(transparent)]
    Transaction(Box<TxnError>),
    /// A clean shutdown did not finish flushing in time.
    #[error(
        "shutdown did not finish within {0:?}: batches still in flight were not delivered (they will be read again)"
    )]
    ShutdownTimeout(Duration),
}

impl From<TxnError> for PipelineError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Denied(k) => PipelineError::Kafka(k),
            e => PipelineError::Transaction(Box::new(e)),
        }
    }
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
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// A fresh instance of the current chain (as each partition gets).
    pub fn chain(&self) -> Result<Chain, StageError> {
        self.sets.borrow().chain()
    }

    /// Runs until `shutdown` (or, with `until_end` configured, until every
    /// partition is read to its end), then flushes. A stage whose policy is
    /// `stop` ends the run with its error.
    pub async fn run(self, external: CancellationToken) -> Result<RunSummary, PipelineError> {
        let cfg = &self.config;
        // One signal for "stop": the caller's, or a fatal stage error
        // (which cancels this child only).
        let shutdown = external.child_token();
        let metrics = Arc::new(Metrics::new(Stats::new()));
        let guarantee = match cfg.exactly_once {
            Some(_) => Guarantee::ExactlyOnce,
            None => Guarantee::AtLeastOnce,
        };
        let _ = metrics.guarantee.set(guarantee.as_str());
        let contract = Arc::new(Contract::default());
        let control = crate::reload::start(
            self.engine.clone(),
            cfg.clone(),
            self.sets.clone(),
            metrics.clone(),
            contract.clone(),
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
        rskafka::record::set_inflation_limit(cfg.max_inflated_bytes);
        let start = async {
            let kafka = Kafka::connect(cfg.kafka.clone()).await?;
            let stateful = self.sets.borrow().is_stateful();
            access::check(&cfg.kafka, &access_needs(cfg, stateful)).await?;
            let input = kafka.ensure_topic(&cfg.input, cfg.create_topics).await?;
            let output = kafka.ensure_topic(&cfg.output, cfg.create_topics).await?;
            let dlq = kafka
                .ensure_topic(&cfg.dead_letter, cfg.create_topics)
                .await?;
            // Side outputs and the state topic are found (or created) now,
            // not at their first record, where a missing one could only be
            // retried inside a delivery or a commit.
            for topic in other_topics(cfg, stateful) {
                kafka.ensure_topic(&topic, cfg.create_topics).await?;
            }
            Ok::<_, PipelineError>((kafka, input, output, dlq))
        };
        let (kafka, input_partitions, output_partitions, dlq_partitions) = tokio::select! {
            started = start => started?,
            _ = shutdown.cancelled() => {
                tracing::info!("stopped during start-up; nothing was consumed");
                return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
            }
        };
        tracing::info!(
            input = %cfg.input, input_partitions, output = %cfg.output, output_partitions,
            dead_letter = %cfg.dead_letter, stages = ?cfg.stages.iter().map(|s| &s.name).collect::<Vec<_>>(),
            in_flight_records = IN_FLIGHT_BATCHES * cfg.max_batch_records,
            in_flight_bound = crash_bound(cfg),
            guarantee = guarantee.as_str(),
            "pipeline running"
        );
        let mut sink = Sink::new(
            kafka.clone(),
            (&cfg.output, output_partitions, cfg.output_compression),
            (
                &cfg.dead_letter,
                dlq_partitions,
                cfg.dead_letter_compression,
            ),
            cfg.create_topics,
        );
        if cfg.exactly_once.is_none() && cfg.idempotence {
            let init = async {
                let mut backoff = crate::backoff::Backoff::broker();
                let mut tries = 0;
                loop {
                    match Idempotence::init(&cfg.kafka).await {
                        Ok(i) => return Ok(i),
                        // Refusals for good: a principal without the grant,
                        // a broker without idempotence. The rest (a
                        // coordinator still loading, a timeout) passes.
                        Err(e)
                            if tries >= 20
                                || e.broker_error().is_some_and(|c| {
                                    matches!(
                                        c,
                                        kafka_protocol::ResponseError::ClusterAuthorizationFailed
                                            | kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed
                                            | kafka_protocol::ResponseError::UnsupportedVersion
                                            | kafka_protocol::ResponseError::UnsupportedForMessageFormat
                                    )
                                }) =>
                        {
                            return Err(ConfigError::Invalid(format!(
                                "the brokers refused an idempotent producer id ({e}); grant this principal WRITE on its topics (IDEMPOTENT_WRITE on the cluster before Kafka 3.0) or set --idempotence false"
                            )));
                        }
                        Err(e) => {
                            tries += 1;
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in = ?delay, "cannot get an idempotent producer id; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            };
            let idempotence = tokio::select! {
                i = init => i?,
                _ = shutdown.cancelled() => {
                    tracing::info!("stopped during start-up; nothing was consumed");
                    return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
                }
            };
            sink = sink.with_idempotence(Arc::new(idempotence));
        }
        if let (Some(eo), Some(g)) = (&cfg.exactly_once, &cfg.group) {
            let init = Transactions::init(
                &cfg.kafka,
                eo.transactional_id.clone(),
                g.group.clone(),
                eo.transaction_timeout,
            );
            let txn = tokio::select! {
                t = init => t?,
                _ = shutdown.cancelled() => {
                    tracing::info!("stopped during start-up; nothing was consumed");
                    return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
                }
            };
            sink = sink.with_transactions(Arc::new(txn));
        }
        let decoder = Decoder::new(&cfg.formats, metrics.registry.clone())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let encoder = tokio::select! {
            e = Encoder::start(&cfg.formats, &cfg.output, &shutdown) => match e {
                Ok(e) => e.map(Arc::new),
                Err(FormatError::Stopped) => {
                    tracing::info!("stopped during start-up; nothing was consumed");
                    return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
                }
                Err(e) => return Err(ConfigError::Invalid(e.to_string()).into()),
            },
            _ = shutdown.cancelled() => {
                tracing::info!("stopped during start-up; nothing was consumed");
                return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
            }
        };
        if let Some(e) = &encoder {
            contract.set_encoder(e.clone());
        }
        let follower = encoder
            .clone()
            .map(|e| tokio::spawn(e.follow(shutdown.clone())));
        let shared = Arc::new(Shared {
            decoder,
            encoder,
            contract,
            kafka,
            sink,
            tracker: DeliveryTracker::new(),
            metrics: metrics.clone(),
            config: cfg.clone(),
            sets: self.sets.subscribe(),
            checkpoints: Checkpoints::default(),
            state_topic: cfg.group.as_ref().map(|g| StateTopic {
                topic: cfg.state_topic.clone(),
                group: g.group.clone(),
                input: cfg.input.clone(),
            }),
            fatal: Mutex::new(None),
            stop: shutdown.clone(),
        });
        let started = Instant::now();
        let reporter = tokio::spawn(report(shared.metrics.stats.clone(), cfg.stats_interval));
        let result = match &cfg.group {
            None => {
                self.run_all(&shared, input_partitions, shutdown.clone())
                    .await
            }
            Some(settings) => {
                Membership::new(&self, &shared, settings.clone(), input_partitions)
                    .run(shutdown.clone())
                    .await
            }
        };
        reporter.abort();
        if let Some(f) = follower {
            f.abort();
        }
        shutdown.cancel();
        result?;
        if let Some(e) = shared.fatal.lock().expect("fatal error").take() {
            return Err(e);
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
        shutdown: CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut workers = Workers::new(shutdown.clone());
        let cfg = &self.config;
        for p in 0..partitions {
            workers.start(self, shared, p, Resume::From(cfg.start))?;
        }
        shared.metrics.ready.store(true, Ordering::Relaxed);
        let mut known = partitions;
        let mut refresh = refresh_timer(cfg.metadata_refresh);
        // Until every worker is done (`--until-end`) or a shutdown; without
        // an end, partitions added meanwhile are started as they appear.
        loop {
            tokio::select! {
                _ = workers.all_done() => return Ok(()),
                _ = shutdown.cancelled() => break,
                _ = refresh.tick(), if !cfg.until_end => {
                    let Some(now) = shared.input_partitions(known).await else { continue };
                    for p in known..now {
                        workers.start(self, shared, p, Resume::From(StartFrom::Earliest))?;
                    }
                    known = now;
                }
            }
        }
        let limit = self.config.shutdown_timeout;
        if tokio::time::timeout(limit, workers.stop_all())
            .await
            .is_err()
        {
            return Err(PipelineError::ShutdownTimeout(limit));
        }
        Ok(())
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
    needs.extend(
        other_topics(cfg, stateful)
            .iter()
            .map(|t| need(t, Operation::Write)),
    );
    if stateful && cfg.group.is_some() {
        needs.push(need(&cfg.state_topic, Operation::Read));
    }
    needs
}

/// The side-output topics of every stage and, for stateful stages in a
/// group, the state topic: the topics written besides output and dead
/// letters.
fn other_topics(cfg: &PipelineConfig, stateful: bool) -> std::collections::BTreeSet<String> {
    let mut topics: std::collections::BTreeSet<String> = cfg
        .stages
        .iter()
        .flat_map(|s| s.outputs.values().cloned())
        .collect();
    if stateful && cfg.group.is_some() {
        topics.insert(cfg.state_topic.clone());
    }
    topics
}

/// State shared by the partition workers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Framed input values and keys to JSON, when the input is not JSON.
    decoder: Option<Decoder>,
    /// JSON to framed output values and keys, when the output is not JSON.
    encoder: Option<Arc<Encoder>>,
    /// Recent input, to check a reload against the output's schema.
    contract: Arc<Contract>,
    kafka: Kafka,
    sink: Sink,
    tracker: DeliveryTracker,
    config: PipelineConfig,
    /// The current stage set; workers switch when it changes.
    sets: watch::Receiver<SharedSet>,
    /// Snapshots of stateful stages awaiting their commit.
    checkpoints: Checkpoints,
    /// Where checkpoints go (group mode only).
    state_topic: Option<StateTopic>,
    /// What stopped the pipeline from inside: a stage whose policy is
    /// `stop`, or a refusal with nowhere else to go. The first one wins.
    fatal: Mutex<Option<PipelineError>>,
    /// Prometheus metrics (the admin endpoint's `/metrics`).
    metrics: Arc<Metrics>,
    /// Stops the pipeline (cancelled by a fatal stage error).
    stop: CancellationToken,
}

/// Ticks every `every`, the first tick after one period.
pub(super) fn refresh_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

impl Shared {
    /// The input's partition count when it grew past `known` (logged);
    /// `None` when it did not, or the look-up failed (the next refresh
    /// tries again).
    async fn input_partitions(&self, known: i32) -> Option<i32> {
        let input = &self.config.input;
        match self.kafka.partitions(input).await {
            Ok(Some(now)) if now > known => {
                tracing::info!(topic = %input, from = known, to = now, "the input topic has new partitions: consuming them from their start");
                Some(now)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(topic = %input, error = %e, "cannot refresh the input's partition count");
                None
            }
        }
    }

    /// Stops the pipeline with `e` (the first such error is the one
    /// reported).
    fn fail(&self, e: PipelineError) {
        self.fatal.lock().expect("fatal error").get_or_insert(e);
        self.stop.cancel();
    }
}

/// Logs the statistics line every `every` while anything changed.
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

/// What a crash can repeat per partition, as the host logs it at start.
fn crash_bound(cfg: &PipelineConfig) -> String {
    if cfg.exactly_once.is_some() {
        return "exactly-once: a crash repeats nothing a read_committed reader sees (the open transaction is aborted)".into();
    }
    let records = IN_FLIGHT_BATCHES * cfg.max_batch_records;
    let batches = format!(
        "a crash repeats at most {records} records per partition ({IN_FLIGHT_BATCHES} batches of at most {} records)",
        cfg.max_batch_records
    );
    match &cfg.group {
        Some(g) if !g.commit_interval.is_zero() => format!(
            "{batches} plus what was delivered within one commit interval ({} ms)",
            g.commit_interval.as_millis()
        ),
        _ => batches,
    }
}
