//! `pipeline-host generate`: produces seed-format login events (see
//! [`crate::events`]) to a topic, keyed by `user_id` and partitioned like the
//! Java client, at a chosen rate or as fast as the broker takes them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rskafka::chrono::Utc;
use rskafka::client::partition::Compression;
use rskafka::record::Record;

use super::CmdError;
use crate::backoff::Backoff;
use crate::config::KafkaArgs;
use crate::events::{EventMix, EventStream};
use crate::format::{Encoder, Format, FormatConfig, tool_registry};
use crate::kafka::{Kafka, KafkaError, timed};
use crate::shutdown;
use crate::sink::partitioner::partition_for_key;

/// `pipeline-host generate`: produce seed-format login events to a topic.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The brokers and how to reach them.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to produce to.
    #[arg(long, default_value = "user-login")]
    pub topic: String,
    /// Events to produce (default: no end).
    #[arg(long)]
    pub count: Option<u64>,
    /// Events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of undecodable events, 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Share of events missing a field (or with a garbage timestamp), 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub missing: f64,
    /// Partitions if the topic has to be created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Draw user ids (the keys) from this many users, so keys repeat
    /// (default: a new user per event).
    #[arg(long)]
    pub users: Option<u64>,
    /// Records per produce request and partition.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Format of the values (default json). avro, protobuf and json-schema
    /// register the seed event's schema (host/schemas) under
    /// <topic>-value and frame each event with its id (a numeric
    /// timestamp, the seed's quirk, as its text); malformed and
    /// missing-field events are written as they are, unframed: bad input
    /// for the pipeline's dead-letter topic.
    #[arg(long, value_enum, default_value = "json", env = "PIPELINE_FORMAT")]
    pub format: Format,
    /// Schema registry URL (Confluent-compatible API), for every format
    /// but json.
    #[arg(long = "registry-url", env = "PIPELINE_REGISTRY_URL")]
    pub registry_url: Option<String>,
}

/// The seed event's schema in `format`.
fn seed_schema(format: Format) -> Option<&'static str> {
    match format {
        Format::Json => None,
        Format::Avro => Some(include_str!("../../schemas/user-login.avsc")),
        Format::Protobuf => Some(include_str!("../../schemas/user-login.proto")),
        Format::JsonSchema => Some(include_str!("../../schemas/user-login.schema.json")),
    }
}

/// The encoder of the seed events in `opts.format` (`None` for json),
/// with the schema registered under `<topic>-value`.
async fn seed_encoder(
    opts: &GenerateArgs,
    stop: &shutdown::CancellationToken,
) -> Result<Option<Encoder>, CmdError> {
    let Some(schema) = seed_schema(opts.format) else {
        return Ok(None);
    };
    let registry =
        tool_registry(opts.format, opts.registry_url.as_deref()).map_err(CmdError::Usage)?;
    let config = FormatConfig {
        output_value: opts.format,
        value_schema: Some(schema.to_owned()),
        auto_register: true,
        registry,
        ..FormatConfig::default()
    };
    Encoder::start(&config, &opts.topic, stop)
        .await
        .map_err(|e| CmdError::Usage(e.to_string()))
}

impl GenerateArgs {
    /// The mix of good and bad events these flags ask for.
    fn mix(&self) -> EventMix {
        EventMix {
            malformed: self.malformed,
            missing: self.missing,
            users: self.users,
            ..EventMix::default()
        }
    }
}

/// Runs the subcommand: connects, produces until `--count` or a signal.
pub async fn exec(args: GenerateArgs) -> Result<(), CmdError> {
    if !(0.0..=1.0).contains(&(args.malformed + args.missing)) {
        return Err(CmdError::Usage(
            "--malformed + --missing must be within 0..1".into(),
        ));
    }
    let kafka = Kafka::connect(args.kafka.settings()?).await?;
    let sd = shutdown::CancellationToken::new();
    shutdown::on_signals(sd.clone());
    let encoder = seed_encoder(&args, &sd).await?;
    run(&kafka, &args, encoder.as_ref(), sd).await?;
    Ok(())
}

/// The event `json` in the encoder's format. The seed's producer sends one
/// timestamp in twenty as a number; a schema has one type for the field
/// (a string), so such a timestamp is written as its text. A malformed or
/// incomplete event is returned as it is, unframed.
fn framed(encoder: &Encoder, json: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    if let Some(Ok(())) = encoder.encode_value(&json, &mut out) {
        return out;
    }
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_slice(&json) else {
        return json;
    };
    if let Some(serde_json::Value::Number(n)) = event.get("timestamp") {
        let text = n.to_string();
        event.insert("timestamp".into(), serde_json::Value::String(text));
        let normal = serde_json::to_vec(&event).expect("JSON");
        out.clear();
        if let Some(Ok(())) = encoder.encode_value(&normal, &mut out) {
            return out;
        }
    }
    json
}

/// Produces events until `count` is reached (or forever), returning how
/// many were produced.
pub(crate) async fn run(
    kafka: &Kafka,
    opts: &GenerateArgs,
    encoder: Option<&Encoder>,
    shutdown: shutdown::CancellationToken,
) -> Result<u64, KafkaError> {
    let partitions = kafka
        .ensure_topic(
            &opts.topic,
            Some((opts.partitions, crate::config::BROKER_DEFAULT_REPLICATION)),
        )
        .await?;
    let mut clients = Vec::new();
    for p in 0..partitions {
        clients.push(kafka.partition(&opts.topic, p).await?);
    }
    let mut events = EventStream::new(opts.seed, opts.mix());
    let started = Instant::now();
    let mut produced: u64 = 0;
    let mut round_robin = 0i32;
    let mut last_log = Instant::now();
    let step = (opts.batch.max(1) * partitions as usize).max(1) as u64;
    loop {
        if shutdown.is_cancelled() || opts.count.is_some_and(|c| produced >= c) {
            break;
        }
        let n = opts.count.map_or(step, |c| step.min(c - produced));
        let mut groups: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        let now = Utc::now();
        for e in events.by_ref().take(n as usize) {
            let p = match &e.key {
                Some(k) => partition_for_key(k, partitions),
                None => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            let value = match encoder {
                Some(encoder) => framed(encoder, e.value),
                None => e.value,
            };
            groups.entry(p).or_default().push(Record {
                key: e.key,
                value: Some(value),
                headers: Default::default(),
                timestamp: now,
            });
        }
        // Produce with retries, so the generator rides out a broker outage
        // (at least once: a retried batch may be written twice).
        let sends = groups.into_iter().map(|(p, records)| {
            let client = clients[p as usize].clone();
            let topic = opts.topic.clone();
            async move {
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                loop {
                    let len = records.len();
                    let r = timed(
                        || format!("producing {len} events to {topic}/{p}"),
                        kafka.request_timeout(),
                        client.produce(records.clone(), Compression::NoCompression),
                    )
                    .await;
                    match r {
                        Ok(_) => return,
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in = ?delay, "produce failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
        produced += n;
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(produced, per_sec = (produced as f64 / started.elapsed().as_secs_f64()) as u64, topic = %opts.topic, "generating");
            last_log = Instant::now();
        }
        if let Some(rate) = opts.rate {
            let due = Duration::from_secs_f64(produced as f64 / rate.max(1) as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::select! {
                    _ = tokio::time::sleep(due - elapsed) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
    tracing::info!(produced, seconds = started.elapsed().as_secs_f64(), topic = %opts.topic, "generator done");
    Ok(produced)
}
