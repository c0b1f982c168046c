//! `pipeline-host latency`: end-to-end latency as a reader sees it. Tails a
//! topic from its end and, for every record, takes the time from the
//! record's timestamp (set by the producer of the input event; the pipeline
//! keeps it on the output) to the moment the record is read. Prints the
//! percentiles once `seconds` have passed after a warm-up.

use std::time::{Duration, Instant};

use rskafka::chrono::Utc;

use super::CmdError;
use crate::config::KafkaArgs;
use crate::kafka::{Kafka, KafkaError};
use crate::source::{FetchSettings, PartitionSource, StartFrom};

/// `pipeline-host latency`: tail a topic and measure timestamp -> readable.
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// The brokers and how to reach them.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to tail (the pipeline's output).
    #[arg(long)]
    pub topic: String,
    /// Seconds ignored at the start.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
}

/// Runs the subcommand: prints p50/p99/max as one JSON line.
pub async fn exec(args: LatencyArgs) -> Result<(), CmdError> {
    let kafka = Kafka::connect(args.kafka.settings()?).await?;
    let l = measure(
        &kafka,
        &args.topic,
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.seconds),
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"records": l.records, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms})
    );
    Ok(())
}

/// Latency percentiles over the records read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Latency {
    /// Records measured.
    pub records: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

/// Tails every partition of `topic`, ignores what arrives during `warmup`,
/// then measures for `seconds`.
pub(crate) async fn measure(
    kafka: &Kafka,
    topic: &str,
    warmup: Duration,
    seconds: Duration,
) -> Result<Latency, KafkaError> {
    let partitions = loop {
        match kafka.ensure_topic(topic, None).await {
            Ok(n) => break n,
            Err(KafkaError::MissingTopic { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e),
        }
    };
    let started = Instant::now();
    let (from, until) = (started + warmup, started + warmup + seconds);
    let reads = (0..partitions).map(|p| async move {
        let settings = FetchSettings {
            max_wait: Duration::from_millis(2),
            ..FetchSettings::default()
        };
        let mut source =
            PartitionSource::open(kafka, topic, p, StartFrom::Latest, settings).await?;
        let mut samples = Vec::new();
        while Instant::now() < until {
            let Ok(batch) =
                tokio::time::timeout(Duration::from_millis(500), source.next_batch()).await
            else {
                continue;
            };
            let now = Utc::now().timestamp_millis();
            if Instant::now() < from {
                continue;
            }
            samples.extend(
                batch
                    .records
                    .iter()
                    .map(|r| (now - r.record.timestamp.timestamp_millis()) as f64),
            );
        }
        Ok::<_, KafkaError>(samples)
    });
    let mut all = Vec::new();
    for r in futures::future::join_all(reads).await {
        all.extend(r?);
    }
    all.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Latency {
        records: all.len() as u64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
    })
}
