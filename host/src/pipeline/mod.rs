//! The pipeline: wires source -> stages -> sink for every input partition
//! of every input topic (named, or matched by the pattern and found again
//! at every metadata refresh).
//!
//! [`Pipeline::prepare`] compiles every stage and runs its `init` once,
//! so a bad plugin or a refused configuration stops the host before it
//! touches Kafka. [`Pipeline::run`] connects, checks the ACLs, creates
//! missing topics, and then runs the partitions: every one without a
//! group, or those the group assigns ([`membership`]).
//!
//! With `--share-group`, [`share`] reads as a share group's member
//! instead, and acknowledges records in place of committing offsets.
//!
//! Each partition is a [`worker`]: fetch -> process -> deliver ->
//! acknowledge, overlapped (the next batch is fetched and processed while
//! the previous one is delivered). Deliveries of a partition happen one at
//! a time, in order, so order holds within a partition, and each completed
//! delivery advances that partition's delivered offset in the
//! [`DeliveryTracker`]: what the membership commits.

mod membership;
mod share;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{ConfigError, Guarantee, PipelineConfig};
use crate::format::{Decoder, Encoder, FormatError};
use crate::group::GroupError;
use crate::kafka::access::{self, Need, Operation};
use crate::kafka::{Kafka, KafkaError, TopicPartition};
use crate::metrics::Metrics;
use crate::offsets::DeliveryTracker;
use crate::reload::Contract;
use crate::shutdown::CancellationToken;
use crate::sink::dead_letter::DeadLetterTopics;
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
    pub delivered: BTreeMap<TopicPartition, i64>,
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
        let set = StageSet::load(
            &engine,
            &config.stages,
            config.tombstones,
            &config.routes,
            false,
            None,
            1,
        )?;
        if let Some(share) = &config.share_group
            && set.is_stateful()
        {
            return Err(ConfigError::Invalid(format!(
                "share group {share}: stateful stages cannot run on a share group: it spreads each partition's records over its members, so a stage's state would see only a share of them and has no offset to be checkpointed at; run stateful stages (such as version_counts) in a consumer group (--group)"
            ))
            .into());
        }
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
            let matched = cfg.inputs.select(&listed(&kafka).await?);
            access::check(&cfg.kafka, &access_needs(cfg, stateful, matched.keys())).await?;
            for name in cfg.inputs.names() {
                kafka.ensure_topic(name, cfg.create_topics).await?;
            }
            let inputs = cfg.inputs.select(&listed(&kafka).await?);
            if inputs.is_empty() {
                tracing::warn!(inputs = %cfg.inputs, every = ?cfg.metadata_refresh, "no topic matches the input pattern yet (topics this principal may not DESCRIBE are not listed); the cluster's topics are listed again at every metadata refresh");
            }
            let output = kafka.ensure_topic(&cfg.output, cfg.create_topics).await?;
            let dlq = match &cfg.dead_letter {
                DeadLetterTopics::One(t) => Some(kafka.ensure_topic(t, cfg.create_topics).await?),
                DeadLetterTopics::PerInput => {
                    for input in inputs.keys() {
                        kafka
                            .ensure_topic(&cfg.dead_letter.of(input), cfg.create_topics)
                            .await?;
                    }
                    None
                }
            };
            // Side outputs and the state topic are found (or created) now,
            // not at their first record, where a missing one could only be
            // retried inside a delivery or a commit.
            for topic in other_topics(cfg, stateful) {
                kafka.ensure_topic(&topic, cfg.create_topics).await?;
            }
            Ok::<_, PipelineError>((kafka, inputs, output, dlq))
        };
        let (kafka, input_topics, output_partitions, dlq_partitions) = tokio::select! {
            started = start => started?,
            _ = shutdown.cancelled() => {
                tracing::info!("stopped during start-up; nothing was consumed");
                return Ok(RunSummary { stats: StatsSnapshot::default(), delivered: Default::default() });
            }
        };
        tracing::info!(
            inputs = %cfg.inputs, input_topics = ?input_topics, output = %cfg.output, output_partitions,
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
                match &cfg.dead_letter {
                    DeadLetterTopics::One(t) => dlq_partitions.map(|n| (t.as_str(), n)),
                    DeadLetterTopics::PerInput => None,
                },
                cfg.dead_letter_compression,
            ),
            cfg.create_topics,
        )
        .with_routes(&cfg.routes);
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
            }),
            fatal: Mutex::new(None),
            stop: shutdown.clone(),
        });
        let started = Instant::now();
        let reporter = tokio::spawn(report(shared.metrics.stats.clone(), cfg.stats_interval));
        let result = match (&cfg.group, &cfg.share_group) {
            (None, Some(share)) => {
                share::run(&self, &shared, share, input_topics, shutdown.clone()).await
            }
            (None, None) => self.run_all(&shared, input_topics, shutdown.clone()).await,
            (Some(settings), _) => {
                Membership::new(&self, &shared, settings.clone(), input_topics)
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
        let delivered: BTreeMap<String, i64> = summary
            .delivered
            .iter()
            .map(|(tp, o)| (tp.to_string(), *o))
            .collect();
        tracing::info!(delivered = ?delivered, "delivered offsets per partition (everything below is in the output or the dead-letter topic)");
        Ok(summary)
    }

    /// Without a group: every partition of every input, from `--start`,
    /// until shutdown (or the end with `--until-end`).
    async fn run_all(
        &self,
        shared: &Arc<Shared>,
        topics: BTreeMap<String, i32>,
        shutdown: CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut workers = Workers::new(shutdown.clone());
        let cfg = &self.config;
        for tp in partitions_of(&topics) {
            workers.start(self, shared, &tp, Resume::From(cfg.start))?;
        }
        shared.metrics.ready.store(true, Ordering::Relaxed);
        let mut known = topics;
        let mut refresh = refresh_timer(cfg.metadata_refresh);
        // Until every worker is done (`--until-end`) or a shutdown; without
        // an end, topics and partitions added meanwhile are started as they
        // appear, from their start, and deleted topics stopped.
        loop {
            tokio::select! {
                _ = workers.all_done() => return Ok(()),
                _ = shutdown.cancelled() => break,
                _ = refresh.tick(), if !cfg.until_end => {
                    let Some(now) = shared.input_topics(&known).await else { continue };
                    let (before, after) = (partitions_of(&known), partitions_of(&now));
                    let gone: Vec<TopicPartition> =
                        before.iter().filter(|tp| !after.contains(tp)).cloned().collect();
                    workers.stop(&gone).await;
                    for tp in &gone {
                        shared.metrics.forget_partition(tp);
                    }
                    for tp in after.iter().filter(|tp| !before.contains(tp)) {
                        workers.start(self, shared, tp, Resume::From(StartFrom::Earliest))?;
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

/// What the pipeline must be allowed to do on its topics: READ every
/// input (named, or matched by the pattern now), WRITE the output, the
/// dead letters and every side output, and, when a stateful stage
/// checkpoints in a group, READ and WRITE the state topic.
fn access_needs<'a>(
    cfg: &'a PipelineConfig,
    stateful: bool,
    matched: impl IntoIterator<Item = &'a String>,
) -> Vec<Need> {
    let need = |topic: &str, operation| Need {
        topic: topic.to_string(),
        operation,
    };
    let mut inputs: std::collections::BTreeSet<&str> =
        cfg.inputs.names().iter().map(String::as_str).collect();
    inputs.extend(matched.into_iter().map(String::as_str));
    // In the order an operator grants them: what is read, then written.
    let mut needs: Vec<Need> = inputs.iter().map(|i| need(i, Operation::Read)).collect();
    needs.push(need(&cfg.output, Operation::Write));
    for input in inputs {
        needs.push(need(&cfg.dead_letter.of(input), Operation::Write));
    }
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

/// The side-output topics of every stage, the routes' topics and, for
/// stateful stages in a group, the state topic: the topics written besides
/// output and dead letters.
fn other_topics(cfg: &PipelineConfig, stateful: bool) -> std::collections::BTreeSet<String> {
    let mut topics: std::collections::BTreeSet<String> = cfg
        .stages
        .iter()
        .flat_map(|s| s.outputs.values().cloned())
        .chain(cfg.routes.topics().map(str::to_owned))
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

/// Every partition of `topics` (name -> partition count).
pub(super) fn partitions_of(topics: &BTreeMap<String, i32>) -> Vec<TopicPartition> {
    topics
        .iter()
        .flat_map(|(t, n)| {
            let topic: Arc<str> = t.as_str().into();
            (0..*n).map(move |p| TopicPartition::new(topic.clone(), p))
        })
        .collect()
}

/// The cluster's topics and partition counts.
async fn listed(kafka: &Kafka) -> Result<BTreeMap<String, i32>, KafkaError> {
    Ok(kafka.list_topics().await?.into_iter().collect())
}

impl Shared {
    /// The input topics as the cluster lists them now, when they differ
    /// from `known` (logged): a topic that matches the pattern appeared
    /// (its dead-letter topic is made ready and its READ checked first: a
    /// denied one is left out, with an error), a topic has more
    /// partitions, or a topic is gone (absent from two listings a second
    /// apart, so a broker's stale metadata does not drop one). `None` when
    /// nothing changed or the listing failed (the next refresh tries
    /// again).
    async fn input_topics(&self, known: &BTreeMap<String, i32>) -> Option<BTreeMap<String, i32>> {
        let cfg = &self.config;
        let list = || async {
            match listed(&self.kafka).await {
                Ok(all) => Some(cfg.inputs.select(&all)),
                Err(e) => {
                    tracing::warn!(inputs = %cfg.inputs, error = %e, "cannot list the cluster's topics to refresh the inputs");
                    None
                }
            }
        };
        let mut now = list().await?;
        if known.keys().any(|t| !now.contains_key(t)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = list().await?;
            // A known topic stays unless both listings lack it.
            for t in known.keys() {
                if let (false, Some(n)) = (now.contains_key(t), again.get(t)) {
                    now.insert(t.clone(), *n);
                }
            }
        }
        let mut added: Vec<String> = now
            .keys()
            .filter(|t| !known.contains_key(*t))
            .cloned()
            .collect();
        if !added.is_empty() {
            let needs: Vec<Need> = added
                .iter()
                .map(|t| Need {
                    topic: t.clone(),
                    operation: Operation::Read,
                })
                .collect();
            if let Err(e) = access::check(&cfg.kafka, &needs).await {
                tracing::error!(topics = ?added, error = %e, "a topic matching the input pattern cannot be read; it is left out");
                now.retain(|t, _| !added.contains(t));
                added.clear();
            }
        }
        for t in &added {
            let dlq = cfg.dead_letter.of(t);
            if let Err(e) = self.kafka.ensure_topic(&dlq, cfg.create_topics).await {
                tracing::warn!(topic = %t, dead_letter = %dlq, error = %e, "the new input's dead-letter topic is not ready; its dead letters wait for it");
            }
        }
        let removed: Vec<&String> = known.keys().filter(|t| !now.contains_key(*t)).collect();
        let grown: Vec<(&String, i32, i32)> = now
            .iter()
            .filter_map(|(t, n)| known.get(t).filter(|k| n > *k).map(|k| (t, *k, *n)))
            .collect();
        if added.is_empty() && removed.is_empty() && grown.is_empty() {
            return None;
        }
        for t in &added {
            tracing::info!(topic = %t, partitions = now[t], "a new input topic: consuming it from its start");
        }
        for (t, from, to) in &grown {
            tracing::info!(topic = %t, from, to, "an input topic has new partitions: consuming them from their start");
        }
        for t in &removed {
            tracing::warn!(topic = %t, "an input topic is gone (deleted): its partitions are let go");
        }
        // Counts never shrink while a topic lives.
        Some(
            now.into_iter()
                .map(|(t, n)| {
                    let k = known.get(&t).copied().unwrap_or(0);
                    (t, n.max(k))
                })
                .collect(),
        )
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
