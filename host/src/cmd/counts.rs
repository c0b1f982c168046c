//! `pipeline-host counts`: the global window counts of `version_counts`.
//!
//! The stage counts per input partition and keys each record
//! `<window>/<app_version>/<partition>`; a re-emitted window overwrites its
//! key. This command reads the stats topic, keeps the latest record per key
//! (what a compacted topic keeps), and sums the partitions of each
//! (window, version): the figure for the whole consumer group.

use std::collections::BTreeMap;

use serde_json::Value;

use super::CmdError;
use crate::cmd::audit::read_topic;
use crate::config::KafkaArgs;
use crate::kafka::{Kafka, KafkaError};

/// `pipeline-host counts`: global window counts from a stats topic.
#[derive(Debug, Clone, clap::Args)]
pub struct CountsArgs {
    /// The brokers and how to reach them.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The stats topic (`outputs = { counts = "..." }` of the stage).
    #[arg(long, default_value = "app-version-counts")]
    pub topic: String,
}

/// Runs the subcommand: one JSON line per (window, version).
pub async fn exec(args: CountsArgs) -> Result<(), CmdError> {
    let kafka = Kafka::connect(args.kafka.settings()?).await?;
    for r in global(&kafka, &args.topic).await? {
        println!(
            "{}",
            serde_json::json!({
                "window_start": r.window_start,
                "window_start_ms": r.window_start_ms,
                "app_version": r.app_version,
                "count": r.count,
                "partitions": r.partitions,
            })
        );
    }
    Ok(())
}

/// The global count of one (window, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowCount {
    /// Window start, milliseconds since the Unix epoch.
    pub window_start_ms: i64,
    /// Window start as RFC 3339.
    pub window_start: String,
    /// The counted field's value.
    pub app_version: String,
    /// Events over every partition.
    pub count: u64,
    /// Input partitions that reported this window and version.
    pub partitions: usize,
}

/// Reads `topic` and sums the latest count per key over partitions.
pub(crate) async fn global(kafka: &Kafka, topic: &str) -> Result<Vec<WindowCount>, KafkaError> {
    let records = read_topic(kafka, topic).await?;
    // Latest value per key, in offset order within each partition (a key
    // always lands in the same partition).
    let mut latest: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
    for r in records.values().flatten() {
        let (Some(key), Some(value)) = (&r.record.key, &r.record.value) else {
            continue;
        };
        match serde_json::from_slice(value) {
            Ok(v) => {
                latest.insert(key.clone(), v);
            }
            Err(e) => {
                tracing::warn!(topic, offset = r.offset, error = %e, "skipping a record that is not JSON")
            }
        }
    }
    let mut sums: BTreeMap<(i64, String), WindowCount> = BTreeMap::new();
    for v in latest.values() {
        let (Some(start), Some(version), Some(count)) = (
            v["window_start_ms"].as_i64(),
            v["app_version"].as_str(),
            v["count"].as_u64(),
        ) else {
            continue;
        };
        let entry = sums
            .entry((start, version.to_owned()))
            .or_insert_with(|| WindowCount {
                window_start_ms: start,
                window_start: v["window_start"].as_str().unwrap_or_default().to_owned(),
                app_version: version.to_owned(),
                count: 0,
                partitions: 0,
            });
        entry.count += count;
        entry.partitions += 1;
    }
    Ok(sums.into_values().collect())
}
