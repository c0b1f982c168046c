//! Prometheus metrics, served as text on the admin endpoint's `/metrics`.
//!
//! Everything an on-call engineer watches: records in, out, dropped and
//! dead-lettered (overall and per stage), sandbox limit hits, consumer lag
//! per partition, rebalances, stage reloads, and histograms of batch
//! processing time and end-to-end latency (record timestamp to delivered).
//! The counters are the same ones the `pipeline stats` log line prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::stages::StageError;
use crate::stages::chain::StageCounts;
use crate::stats::Stats;

/// Upper bounds of the histogram buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<HistogramData>,
}

#[derive(Debug, Default)]
struct HistogramData {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        self.observe_each([seconds]);
    }

    /// Records one observation per item, taking the lock once.
    pub fn observe_each(&self, seconds: impl IntoIterator<Item = f64>) {
        let mut h = self.inner.lock().expect("histogram");
        for s in seconds {
            if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
                h.counts[i] += 1;
            }
            h.count += 1;
            h.sum += s;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().expect("histogram");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(h.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
    }
}

/// The pipeline's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The overall counters (shared with the stats log line).
    pub stats: Arc<Stats>,
    stages: Mutex<BTreeMap<String, StageCounts>>,
    limit_hits: Mutex<BTreeMap<(String, &'static str), u64>>,
    lag: Mutex<BTreeMap<i32, i64>>,
    /// Accepted stage reloads.
    pub reloads_applied: AtomicU64,
    /// Rejected stage reloads.
    pub reloads_rejected: AtomicU64,
    /// Generation of the running stage set.
    pub generation: AtomicU64,
    /// Consumer-group rebalances this member took part in.
    pub rebalances: AtomicU64,
    /// Stages loaded and partitions assigned (or no group).
    pub ready: AtomicBool,
    /// Time to process one batch through the chain.
    pub batch_seconds: Histogram,
    /// Input record timestamp to its batch being delivered (output, dead
    /// letters and side records acknowledged), per input record.
    pub end_to_end_seconds: Histogram,
    /// Window counts seen on side outputs: window start (ms) -> app
    /// version -> count summed over this member's partitions.
    windows: Mutex<BTreeMap<i64, BTreeMap<String, u64>>>,
}

impl Metrics {
    /// Metrics around the shared counters.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            generation: AtomicU64::new(1),
            ..Self::default()
        }
    }

    /// Adds one batch's per-stage counts.
    pub fn add_stage_counts(&self, names: &[&str], counts: &[StageCounts]) {
        let mut stages = self.stages.lock().expect("stage metrics");
        for (&name, c) in names.iter().zip(counts) {
            if !stages.contains_key(name) {
                stages.insert(name.to_owned(), StageCounts::default());
            }
            stages.get_mut(name).expect("just inserted").add(c);
        }
    }

    /// Counts a stage error under the limit that fired.
    pub fn limit_hit(&self, e: &StageError) {
        let (stage, kind) = match e {
            StageError::TimeBudget { stage, .. } => (stage, "time_budget"),
            StageError::MemoryLimit { stage, .. } => (stage, "memory"),
            StageError::StackOverflow { stage } => (stage, "stack"),
            StageError::Trap { stage, .. } => (stage, "trap"),
            StageError::Malformed { stage, .. } => (stage, "malformed_outcomes"),
            _ => return,
        };
        *self
            .limit_hits
            .lock()
            .expect("limit metrics")
            .entry((stage.clone(), kind))
            .or_default() += 1;
    }

    /// Sets the lag (high watermark minus next offset) of a partition.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.lag
            .lock()
            .expect("lag metrics")
            .insert(partition, lag.max(0));
    }

    /// Forgets a partition this member no longer owns.
    pub fn forget_partition(&self, partition: i32) {
        self.lag.lock().expect("lag metrics").remove(&partition);
    }

    /// Notes the window counts among side records (`version_counts`
    /// values: `window_start_ms`, `app_version`, `count`), keeping the
    /// latest few windows for the status page.
    pub fn observe_side(&self, side: &[crate::stages::SideOut]) {
        let mut windows = self.windows.lock().expect("window metrics");
        for r in side {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.value) else {
                continue;
            };
            let (Some(start), Some(version), Some(count), Some(p)) = (
                v["window_start_ms"].as_i64(),
                v["app_version"].as_str(),
                v["count"].as_u64(),
                v["partition"].as_i64(),
            ) else {
                continue;
            };
            // Keyed per partition so a re-emitted window overwrites.
            windows
                .entry(start)
                .or_default()
                .insert(format!("{version}\u{0}{p}"), count);
        }
        while windows.len() > 8 {
            windows.pop_first();
        }
    }

    /// The latest window with counts: (start ms, version -> count summed
    /// over partitions).
    pub fn latest_window(&self) -> Option<(i64, BTreeMap<String, u64>)> {
        let windows = self.windows.lock().expect("window metrics");
        let (start, per) = windows.last_key_value()?;
        let mut sums = BTreeMap::new();
        for (key, n) in per {
            let version = key.split('\u{0}').next().unwrap_or_default();
            *sums.entry(version.to_string()).or_default() += n;
        }
        Some((*start, sums))
    }

    /// What the status page shows, as JSON.
    pub fn status(&self, stages_in_order: &[String]) -> serde_json::Value {
        let s = self.stats.snapshot();
        let stages = self.stages.lock().expect("stage metrics");
        let lag = self.lag.lock().expect("lag metrics");
        serde_json::json!({
            "records_in": s.records_in,
            "records_out": s.records_out,
            "dropped": s.dropped,
            "dead_letters": s.dead_letters,
            "stage_errors": s.stage_errors,
            "generation": self.generation.load(Ordering::Relaxed),
            "ready": self.ready.load(Ordering::Relaxed),
            "lag": lag.iter().map(|(p, l)| (p.to_string(), serde_json::json!(l))).collect::<serde_json::Map<_, _>>(),
            "stages": stages_in_order.iter().map(|name| {
                let c = stages.get(name).cloned().unwrap_or_default();
                serde_json::json!({"name": name, "records_in": c.records_in, "records_out": c.records_out,
                    "dropped": c.dropped, "failed": c.failed, "errors": c.errors})
            }).collect::<Vec<_>>(),
            "window": self.latest_window().map(|(start, counts)| serde_json::json!({
                "start_ms": start, "counts": counts,
            })),
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let s = self.stats.snapshot();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "pipeline_records_in_total",
            "Input records processed.",
            s.records_in,
        );
        counter(
            &mut out,
            "pipeline_records_out_total",
            "Records produced to the output topic.",
            s.records_out,
        );
        counter(
            &mut out,
            "pipeline_records_dropped_total",
            "Input records filtered out.",
            s.dropped,
        );
        counter(
            &mut out,
            "pipeline_dead_letters_total",
            "Records produced to the dead-letter topic.",
            s.dead_letters,
        );
        counter(
            &mut out,
            "pipeline_stage_errors_total",
            "Stage errors (traps, limits, malformed outcomes).",
            s.stage_errors,
        );
        counter(
            &mut out,
            "pipeline_batches_total",
            "Batches delivered.",
            s.batches,
        );
        counter(
            &mut out,
            "pipeline_side_records_total",
            "Records produced to side outputs.",
            s.side_records,
        );
        counter(
            &mut out,
            "pipeline_rebalances_total",
            "Consumer-group rebalances.",
            self.rebalances.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP pipeline_stage_reloads_total Stage reloads by result.\n# TYPE pipeline_stage_reloads_total counter\n\
             pipeline_stage_reloads_total{{result=\"applied\"}} {}\npipeline_stage_reloads_total{{result=\"rejected\"}} {}",
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_rejected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP pipeline_stage_generation Generation of the running stage set.\n# TYPE pipeline_stage_generation gauge\npipeline_stage_generation {}",
            self.generation.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP pipeline_ready 1 when stages are loaded and partitions assigned.\n# TYPE pipeline_ready gauge\npipeline_ready {}",
            u8::from(self.ready.load(Ordering::Relaxed))
        );
        let stages = self.stages.lock().expect("stage metrics");
        let per_stage = [
            ("records_in", "Records given to the stage."),
            ("records_out", "Records the stage passed on."),
            ("dropped", "Records the stage dropped."),
            (
                "failed",
                "Records the stage failed (dead letters or skipped).",
            ),
            ("errors", "Stage errors."),
        ];
        for (field, help) in per_stage {
            let name = format!("pipeline_stage_{field}_total");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (stage, c) in stages.iter() {
                let v = match field {
                    "records_in" => c.records_in,
                    "records_out" => c.records_out,
                    "dropped" => c.dropped,
                    "failed" => c.failed,
                    _ => c.errors,
                };
                let _ = writeln!(out, "{name}{{stage=\"{stage}\"}} {v}");
            }
        }
        drop(stages);
        let _ = writeln!(
            out,
            "# HELP pipeline_sandbox_limit_hits_total Stage errors by stage and limit.\n# TYPE pipeline_sandbox_limit_hits_total counter"
        );
        for ((stage, kind), v) in self.limit_hits.lock().expect("limit metrics").iter() {
            let _ = writeln!(
                out,
                "pipeline_sandbox_limit_hits_total{{stage=\"{stage}\",limit=\"{kind}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP pipeline_consumer_lag Records between the partition's next offset and its high watermark.\n# TYPE pipeline_consumer_lag gauge"
        );
        for (p, lag) in self.lag.lock().expect("lag metrics").iter() {
            let _ = writeln!(out, "pipeline_consumer_lag{{partition=\"{p}\"}} {lag}");
        }
        self.batch_seconds.render(
            &mut out,
            "pipeline_batch_seconds",
            "Time to run one batch through the chain.",
        );
        self.end_to_end_seconds.render(
            &mut out,
            "pipeline_end_to_end_seconds",
            "Input record timestamp to its batch acknowledged (output, dead letters), per input record.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_stages_and_histograms() {
        let m = Metrics::new(Arc::new(Stats::default()));
        Stats::add(&m.stats.records_in, 7);
        m.add_stage_counts(
            &["f"],
            &[StageCounts {
                records_in: 7,
                records_out: 3,
                dropped: 4,
                ..StageCounts::default()
            }],
        );
        m.limit_hit(&StageError::StackOverflow { stage: "f".into() });
        m.set_lag(2, 40);
        m.batch_seconds.observe(0.003);
        let text = m.render();
        for line in [
            "pipeline_records_in_total 7",
            "pipeline_stage_records_out_total{stage=\"f\"} 3",
            "pipeline_sandbox_limit_hits_total{stage=\"f\",limit=\"stack\"} 1",
            "pipeline_consumer_lag{partition=\"2\"} 40",
            "pipeline_batch_seconds_bucket{le=\"0.005\"} 1",
            "pipeline_batch_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    /// Every metric the Grafana dashboard queries is one this host exports.
    #[test]
    fn the_dashboard_queries_exported_metrics() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/grafana/dashboards/pipeline-host.json");
        let dashboard = std::fs::read_to_string(path).unwrap();
        let m = Metrics::new(Arc::new(Stats::default()));
        m.add_stage_counts(&["s"], &[StageCounts::default()]);
        m.limit_hit(&StageError::StackOverflow { stage: "s".into() });
        m.set_lag(0, 0);
        let text = m.render();
        let mut rest = dashboard.as_str();
        let mut seen = 0;
        while let Some(i) = rest.find("pipeline_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            seen += 1;
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name} "))
                        || l.starts_with(&format!("{name}{{"))),
                "the dashboard queries {name}, which /metrics does not export"
            );
        }
        assert!(seen > 5);
    }
}
