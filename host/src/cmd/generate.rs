//! `pipeline-host generate`: produces seed-format login events (see
//! [`crate::events`]) to a topic, keyed by `user_id` and partitioned like the
//! Java client, at a chosen rate or as fast as the broker takes them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rskafka::chrono::Utc;
use rskafka::client::partition::Compression;
use rskafka::record::Record;

use crate::backoff::Backoff;
use crate::events::{EventMix, EventStream};
use crate::kafka::{Kafka, KafkaError, timed};
use crate::sink::partitioner::partition_for_key;

/// Generator options.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Topic to produce to.
    pub topic: String,
    /// Events to produce; `None` for no end.
    pub count: Option<u64>,
    /// Events per second; `None` for as fast as possible.
    pub rate: Option<u64>,
    /// Random seed.
    pub seed: u64,
    /// Event mix.
    pub mix: EventMix,
    /// Partitions if the topic has to be created.
    pub partitions: i32,
    /// Records per produce request and partition.
    pub batch: usize,
}

/// Produces events until `count` is reached (or forever), returning how
/// many were produced.
pub async fn run(
    kafka: &Kafka,
    opts: &GenerateOptions,
    mut shutdown: crate::shutdown::Shutdown,
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
    let mut events = EventStream::new(opts.seed, opts.mix);
    let started = Instant::now();
    let mut produced: u64 = 0;
    let mut round_robin = 0i32;
    let mut last_log = Instant::now();
    let step = (opts.batch * partitions as usize).max(1) as u64;
    loop {
        if shutdown.is_triggered() || opts.count.is_some_and(|c| produced >= c) {
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
            groups.entry(p).or_default().push(Record {
                key: e.key,
                value: Some(e.value),
                headers: BTreeMap::new(),
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
                    _ = shutdown.wait() => {}
                }
            }
        }
    }
    tracing::info!(produced, seconds = started.elapsed().as_secs_f64(), topic = %opts.topic, "generator done");
    Ok(produced)
}
