//! `pipeline-host redrive`: copies dead letters back into the input once
//! their cause is fixed (a corrected stage, a relaxed setting). Each record
//! goes back with its original key, value, timestamp and headers; the
//! pipeline's `pipeline.error.*` and `pipeline.source.*` headers are
//! removed. Records are keyed as before, so they land on the partition the
//! Java partitioner picks for their key (unkeyed: their source partition).
//!
//! It re-drives every dead letter now in the topic that matches the filter:
//! run it once per fix (or filter by `--stage`).

use std::collections::BTreeMap;

use rskafka::client::partition::Compression;
use rskafka::record::Record;

use super::CmdError;
use crate::cmd::audit::read_topic;
use crate::config::KafkaArgs;
use crate::kafka::{Kafka, KafkaError, timed};
use crate::sink::dead_letter::{ERROR_STAGE, is_pipeline_header};
use crate::sink::partitioner::partition_for_key;
use crate::sink::{SOURCE_PARTITION, SOURCE_TOPIC};

/// `pipeline-host redrive`: copy dead letters back into the input.
#[derive(Debug, Clone, clap::Args)]
pub struct RedriveArgs {
    /// The brokers and how to reach them.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Dead-letter topic to read.
    #[arg(long, default_value = "user-login-dlq")]
    pub dlq: String,
    /// Topic to write the records back to (default: each record's source
    /// topic).
    #[arg(long)]
    pub to: Option<String>,
    /// Only records failed by this stage.
    #[arg(long)]
    pub stage: Option<String>,
}

/// Runs the subcommand and prints how many records it re-drove.
pub async fn exec(args: RedriveArgs) -> Result<(), CmdError> {
    let kafka = Kafka::connect(args.kafka.settings()?).await?;
    let n = run(&kafka, &args.dlq, args.to.as_deref(), args.stage.as_deref()).await?;
    println!("re-drove {n} dead letters from {}", args.dlq);
    Ok(())
}

/// Re-drives the dead letters of `dlq` (only those failed by `stage` when
/// given) into `to`, or each record's source topic. Returns how many.
pub(crate) async fn run(
    kafka: &Kafka,
    dlq: &str,
    to: Option<&str>,
    stage: Option<&str>,
) -> Result<u64, KafkaError> {
    let mut groups: BTreeMap<(String, i32), Vec<Record>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
    for r in read_topic(kafka, dlq).await?.into_values().flatten() {
        let mut record = r.record;
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .and_then(|v| String::from_utf8(v.to_vec()).ok())
        };
        if stage.is_some_and(|s| header(ERROR_STAGE).as_deref() != Some(s)) {
            continue;
        }
        let Some(topic) = to.map(str::to_owned).or_else(|| header(SOURCE_TOPIC)) else {
            tracing::warn!(
                dlq,
                offset = r.offset,
                "dead letter without a source topic header; skipped (give --to)"
            );
            continue;
        };
        let source_partition: i32 = header(SOURCE_PARTITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let n = match partitions.get(&topic) {
            Some(n) => *n,
            None => {
                let n = kafka.ensure_topic(&topic, None).await?;
                partitions.insert(topic.clone(), n);
                n
            }
        };
        let p = match &record.key {
            Some(k) => partition_for_key(k, n),
            None => source_partition.rem_euclid(n),
        };
        record.headers.retain(|k, _| !is_pipeline_header(k));
        groups.entry((topic, p)).or_default().push(record);
    }
    let mut total = 0;
    for ((topic, p), records) in groups {
        let client = kafka.partition(&topic, p).await?;
        let n = records.len() as u64;
        for chunk in records.chunks(500) {
            timed(
                || format!("re-driving {} records to {topic}/{p}", chunk.len()),
                kafka.request_timeout(),
                client.produce(chunk.to_vec(), Compression::NoCompression),
            )
            .await?;
        }
        total += n;
    }
    Ok(total)
}
