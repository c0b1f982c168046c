//! The default chain on Confluent's native Rust client, written as a Rust
//! user would write it (issue 15): consume, filter android events, enrich
//! (processed timestamp, readable login time), categorize the device, flag
//! suspicious locales, count per app version, produce; commit after the
//! batch's produces are acknowledged (at-least-once).
//!
//! Its output records are meant to equal pipeline-host's with the default
//! stages (`plugins/android_filter`, `enrich`, `categorize`, `anomaly` with
//! their default settings), field for field: `tests/scripts/bench.sh` checks
//! that on the same input. Events the chain cannot process (undecodable,
//! missing `device_type`, a `timestamp` that is not epoch seconds) are
//! counted and skipped, where pipeline-host routes them to its dead-letter
//! topic.
//!
//! It reads from the earliest offset with a fresh group (KIP-848, the only
//! protocol this client speaks) until it has read `--count` events or
//! `--seconds` have passed since the first one, then prints one JSON line:
//! `{"events": N, "seconds": S, "rate": R, "produced": P, "failed": F}`.
//!
//! ```text
//! seed-confluent-rust --bootstrap HOST:PORT --input T --output T --group G --count N --seconds S
//!                     [--max-poll-records 10000] [--linger-ms 5]
//! ```
//!
//! The two knobs are tuned to this client's best on the benchmark's broker:
//! with the client's default `max.poll.records` of 500 every poll waits for
//! its acknowledgements and a commit, and the peer reads about 35,000
//! events/s; at 10,000 it reads about 240,000 (docs/benchmarks.md).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use confluent_kafka::common::serialization::{ByteArrayDeserializer, ByteArraySerializer};
use confluent_kafka::consumer::{Consumer, ConsumerConfig, KafkaConsumer};
use confluent_kafka::producer::{KafkaProducer, Producer, ProducerConfig, ProducerRecord};
use serde_json::{Map, Value};

/// The anomaly stage's default suspicious locales.
const SUSPICIOUS: [&str; 6] = ["RU", "CN", "KP", "IR", "NG", "BY"];

/// The latest instant the enrich stage accepts: 9999-12-31T23:59:59Z.
const MAX_SECONDS: i64 = 253_402_300_799;

/// The categorize stage's default table.
fn category(device: &str) -> &'static str {
    match device.to_lowercase().as_str() {
        "android" | "ios" | "iphone" | "mobile" => "Mobile",
        "ipad" | "tablet" | "android-tablet" | "kindle" => "Tablet",
        "windows" | "macos" | "mac" | "linux" | "desktop" | "web" | "chromeos" => "Desktop",
        _ => "Unknown",
    }
}

/// Epoch seconds as a number or a string of digits, as the enrich stage reads them.
fn epoch_seconds(v: &Value) -> Option<i64> {
    let secs = match v {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    (0..=MAX_SECONDS).contains(&secs).then_some(secs)
}

/// One message through the chain: `Ok(Some(value))` to produce, `Ok(None)`
/// when filtered out, `Err` when it cannot be processed.
fn process(
    raw: &[u8],
    now_secs: i64,
    counts: &mut HashMap<String, u64>,
) -> Result<Option<Vec<u8>>, &'static str> {
    let mut event: Map<String, Value> = serde_json::from_slice(raw).map_err(|_| "undecodable")?;
    let device = match event.get("device_type") {
        Some(Value::String(d)) => d,
        _ => return Err("device_type missing or not a string"),
    };
    if device.to_lowercase() != "android" {
        return Ok(None);
    }
    let category = category(device);
    let secs = event
        .get("timestamp")
        .and_then(epoch_seconds)
        .ok_or("timestamp is not epoch seconds")?;
    let login = chrono::DateTime::from_timestamp(secs, 0).ok_or("timestamp out of range")?;
    let reason = match event.get("locale").and_then(Value::as_str) {
        Some(l) => {
            let l = l.to_uppercase();
            SUSPICIOUS
                .iter()
                .find(|s| **s == l)
                .map(|s| format!("suspicious locale {s}"))
        }
        None => Some("missing locale".to_owned()),
    };
    let version = match event.get("app_version") {
        Some(Value::String(v)) => v.clone(),
        _ => "unknown".to_owned(),
    };
    *counts.entry(version).or_default() += 1;
    event.insert("processed_timestamp".into(), now_secs.into());
    event.insert(
        "login_time".into(),
        login.format("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
    );
    event.insert("device_category".into(), category.into());
    event.insert("anomaly".into(), reason.is_some().into());
    if let Some(r) = reason {
        event.insert("anomaly_reasons".into(), vec![Value::from(r)].into());
    }
    Ok(Some(serde_json::to_vec(&event).map_err(|_| "unencodable")?))
}

/// `--name value` pairs.
fn args() -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            bail!("unexpected argument {k}")
        };
        let value = it.next().with_context(|| format!("{k} needs a value"))?;
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

/// Client properties from pairs.
fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let get = |k: &str| {
        a.get(k)
            .cloned()
            .with_context(|| format!("--{k} is required"))
    };
    let (bootstrap, input, output, group) = (
        get("bootstrap")?,
        get("input")?,
        get("output")?,
        get("group")?,
    );
    let count: u64 = get("count")?.parse()?;
    let seconds: f64 = get("seconds")?.parse()?;
    let max_poll = a
        .get("max-poll-records")
        .cloned()
        .unwrap_or_else(|| "10000".into());
    let linger = a.get("linger-ms").cloned().unwrap_or_else(|| "5".into());

    let consumer_config = ConsumerConfig::new(&props(&[
        ("bootstrap.servers", &bootstrap),
        ("group.id", &group),
        ("group.protocol", "consumer"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
        ("max.poll.records", &max_poll),
    ]))?;
    let mut consumer = KafkaConsumer::<Vec<u8>, Vec<u8>>::new(
        consumer_config,
        ByteArrayDeserializer::default(),
        ByteArrayDeserializer::default(),
    )?;
    let producer_config = ProducerConfig::new(&props(&[
        ("bootstrap.servers", &bootstrap),
        ("linger.ms", &linger),
        ("batch.size", "262144"),
    ]))?;
    let producer = KafkaProducer::<Vec<u8>, Vec<u8>>::new(
        producer_config,
        ByteArraySerializer::default(),
        ByteArraySerializer::default(),
    )?;
    consumer.subscribe_with_topics(vec![input]).await?;

    let mut counts = HashMap::new();
    let (mut events, mut produced, mut failed) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let limit = Duration::from_secs_f64(seconds);
    while events < count && first.is_none_or(|f| f.elapsed() < limit) {
        let records = consumer.poll(Duration::from_millis(100)).await?;
        if records.count() == 0 {
            continue;
        }
        first.get_or_insert_with(Instant::now);
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let mut acks = Vec::with_capacity(records.count());
        for r in &records {
            events += 1;
            let value = match r.value().map(|v| process(v, now_secs, &mut counts)) {
                Some(Ok(Some(value))) => value,
                Some(Ok(None)) => continue,
                Some(Err(_)) | None => {
                    failed += 1;
                    continue;
                }
            };
            // The byte-slice send: the client's zero-copy path for bytes.
            let key = r.key().map(Vec::as_slice);
            let record = ProducerRecord::with_key(output.clone(), key, Some(value.as_slice()));
            acks.push(producer.send(record, None).await?);
            produced += 1;
        }
        // Commit only after every produce of the batch is acknowledged.
        for ack in acks {
            ack.get().await?;
        }
        consumer.commit_sync().await?;
    }
    producer.flush().await?;
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let line = serde_json::json!({
        "events": events, "seconds": secs, "rate": events as f64 / secs.max(1e-9),
        "produced": produced, "failed": failed, "app_versions": counts.len(),
    });
    println!("{line}");
    producer.close().await?;
    consumer.close().await?;
    Ok(())
}
