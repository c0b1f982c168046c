//! Prometheus metrics, served as text on the admin endpoint's `/metrics`.
//!
//! Everything an on-call engineer watches: records in, out, dropped and
//! dead-lettered (overall and per stage), sandbox limit hits, consumer lag
//! per partition, rebalances, stage reloads, and histograms of batch
//! processing time and end-to-end latency (record timestamp to delivered).
//! The counters are the same ones the `pipeline stats` log line prints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};

use crate::kafka::TopicPartition;
use crate::stages::StageError;
use crate::stages::chain::StageCounts;
use crate::stages::windows::WindowCount;
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

    /// The histogram as a metric family (cumulative buckets).
    fn family(&self, name: &str, help: &str) -> MetricFamily {
        let h = self.inner.lock().expect("histogram");
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(h.counts)
            .map(|(bound, c)| {
                cumulative += c;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(h.count);
        histogram.set_sample_sum(h.sum);
        histogram.set_bucket(buckets);
        let mut m = Metric::default();
        m.set_histogram(histogram);
        family(name, help, MetricType::HISTOGRAM, vec![m])
    }
}

/// The pipeline's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The overall counters (shared with the stats log line).
    pub stats: Arc<Stats>,
    stages: Mutex<BTreeMap<String, StageCounts>>,
    limit_hits: Mutex<BTreeMap<(String, &'static str), u64>>,
    lag: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Per input topic: (records read, dead letters written).
    topics: Mutex<BTreeMap<Arc<str>, (u64, u64)>>,
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
    /// The delivery guarantee in force (`at-least-once`, `exactly-once`).
    pub guarantee: std::sync::OnceLock<&'static str>,
    /// Transactions committed (exactly-once).
    pub transactions_committed: AtomicU64,
    /// Transactions aborted (exactly-once).
    pub transactions_aborted: AtomicU64,
    /// Schema-registry counters (framed formats).
    pub registry: Arc<crate::format::RegistryStats>,
    /// Transactions the coordinator aborted and whose epoch it bumped,
    /// after which the producer went on with that epoch (exactly-once):
    /// they stayed open longer than the transaction timeout.
    pub transaction_timeouts: AtomicU64,
    /// First record of a transaction to its commit.
    pub transaction_seconds: Histogram,
    /// Window counts seen on side outputs: window start (ms) -> app
    /// version -> count summed over this member's partitions.
    windows: Mutex<BTreeMap<i64, BTreeMap<String, u64>>>,
    /// Share group acknowledgements, by type (gap, accept, release,
    /// reject, as [`crate::group::share::Ack`] numbers them).
    pub share_acks: [AtomicU64; 4],
    /// Share group records received with a delivery count above 1.
    pub share_redelivered: AtomicU64,
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
            StageError::OutputLimit { stage, .. } => (stage, "output"),
            StageError::UnmappedRoute { stage, .. } => (stage, "unmapped_route"),
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
    pub fn set_lag(&self, partition: &TopicPartition, lag: i64) {
        let mut all = self.lag.lock().expect("lag metrics");
        match all.get_mut(partition) {
            Some(l) => *l = lag.max(0),
            None => {
                all.insert(partition.clone(), lag.max(0));
            }
        }
    }

    /// Forgets a partition this member no longer owns.
    pub fn forget_partition(&self, partition: &TopicPartition) {
        self.lag.lock().expect("lag metrics").remove(partition);
    }

    /// Counts `n` records read from input `topic`.
    pub fn count_input(&self, topic: &Arc<str>, n: u64) {
        self.per_topic(topic, |c| c.0 += n);
    }

    /// Counts `n` dead letters of records from input `topic`.
    pub fn count_dead_letters(&self, topic: &Arc<str>, n: u64) {
        if n > 0 {
            self.per_topic(topic, |c| c.1 += n);
        }
    }

    fn per_topic(&self, topic: &Arc<str>, f: impl FnOnce(&mut (u64, u64))) {
        let mut topics = self.topics.lock().expect("topic metrics");
        match topics.get_mut(topic) {
            Some(c) => f(c),
            None => f(topics.entry(topic.clone()).or_default()),
        }
    }

    /// Notes window counts ([`WindowCount`]), keeping the latest few
    /// windows for the status page.
    pub fn observe_windows(&self, counts: impl IntoIterator<Item = WindowCount>) {
        let mut windows = self.windows.lock().expect("window metrics");
        for w in counts {
            // Keyed per partition so a re-emitted window overwrites.
            windows
                .entry(w.start_ms)
                .or_default()
                .insert(format!("{}\u{0}{}", w.value, w.partition), w.count);
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

    /// The delivery guarantee in force.
    pub fn guarantee(&self) -> &'static str {
        self.guarantee.get().copied().unwrap_or("at-least-once")
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
            "guarantee": self.guarantee(),
            "lag": lag.iter().map(|(p, l)| (p.to_string(), serde_json::json!(l))).collect::<serde_json::Map<_, _>>(),
            "topics": self.topics.lock().expect("topic metrics").iter().map(|(t, (read, dead))| {
                (t.to_string(), serde_json::json!({"records_in": read, "dead_letters": dead}))
            }).collect::<serde_json::Map<_, _>>(),
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

    /// The Prometheus text exposition, encoded (and its label values
    /// escaped) by the `prometheus` crate's text encoder.
    pub fn render(&self) -> String {
        let mut families = Vec::with_capacity(24);
        let s = self.stats.snapshot();
        let totals = [
            ("records_in", "Input records processed.", s.records_in),
            (
                "records_out",
                "Records produced to the output topic and the routes' topics (a copy per route).",
                s.records_out,
            ),
            ("records_dropped", "Input records filtered out.", s.dropped),
            (
                "dead_letters",
                "Records produced to the dead-letter topic.",
                s.dead_letters,
            ),
            (
                "stage_errors",
                "Stage errors (traps, limits, malformed outcomes).",
                s.stage_errors,
            ),
            ("batches", "Batches delivered.", s.batches),
            (
                "side_records",
                "Records produced to side outputs.",
                s.side_records,
            ),
            (
                "rebalances",
                "Consumer-group rebalances.",
                self.rebalances.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in totals {
            families.push(family(
                &format!("pipeline_{name}_total"),
                help,
                MetricType::COUNTER,
                vec![sample(&[], Value::Counter(v as f64))],
            ));
        }
        families.push(by_result(
            "pipeline_stage_reloads_total",
            "Stage reloads by result.",
            [
                ("applied", &self.reloads_applied),
                ("rejected", &self.reloads_rejected),
            ],
        ));
        families.push(family(
            "pipeline_stage_generation",
            "Generation of the running stage set.",
            MetricType::GAUGE,
            vec![sample(
                &[],
                Value::Gauge(self.generation.load(Ordering::Relaxed) as f64),
            )],
        ));
        families.push(family(
            "pipeline_ready",
            "1 when stages are loaded and partitions assigned.",
            MetricType::GAUGE,
            vec![sample(
                &[],
                Value::Gauge(f64::from(u8::from(self.ready.load(Ordering::Relaxed)))),
            )],
        ));
        let stages = self.stages.lock().expect("stage metrics");
        type Field = fn(&StageCounts) -> u64;
        let per_stage: [(&str, &str, Field); 7] = [
            ("records_in", "Records given to the stage.", |c| {
                c.records_in
            }),
            ("records_out", "Records the stage passed on.", |c| {
                c.records_out
            }),
            ("dropped", "Records the stage dropped.", |c| c.dropped),
            (
                "failed",
                "Records the stage failed (dead letters or skipped).",
                |c| c.failed,
            ),
            ("errors", "Stage errors.", |c| c.errors),
            (
                "isolation_calls",
                "Extra stage calls made to isolate the records behind stage errors.",
                |c| c.isolation_calls,
            ),
            (
                "isolated",
                "Records isolated as the cause of a stage error.",
                |c| c.isolated,
            ),
        ];
        for (field, help, get) in per_stage {
            families.push(family(
                &format!("pipeline_stage_{field}_total"),
                help,
                MetricType::COUNTER,
                stages
                    .iter()
                    .map(|(stage, c)| sample(&[("stage", stage)], Value::Counter(get(c) as f64)))
                    .collect(),
            ));
        }
        drop(stages);
        families.push(family(
            "pipeline_sandbox_limit_hits_total",
            "Stage errors by stage and limit.",
            MetricType::COUNTER,
            self.limit_hits
                .lock()
                .expect("limit metrics")
                .iter()
                .map(|((stage, kind), v)| {
                    sample(
                        &[("stage", stage), ("limit", kind)],
                        Value::Counter(*v as f64),
                    )
                })
                .collect(),
        ));
        families.push(family(
            "pipeline_consumer_lag",
            "Records between the partition's next offset and the end a read_committed reader can reach (the last stable offset).",
            MetricType::GAUGE,
            self.lag
                .lock()
                .expect("lag metrics")
                .iter()
                .map(|(p, lag)| {
                    sample(
                        &[("topic", &p.topic), ("partition", &p.partition.to_string())],
                        Value::Gauge(*lag as f64),
                    )
                })
                .collect(),
        ));
        let topics = self.topics.lock().expect("topic metrics").clone();
        for (name, help, of) in [
            (
                "pipeline_input_records_total",
                "Records read, per input topic.",
                (|c: &(u64, u64)| c.0) as fn(&(u64, u64)) -> u64,
            ),
            (
                "pipeline_input_dead_letters_total",
                "Dead letters written, per input topic of their record.",
                |c: &(u64, u64)| c.1,
            ),
        ] {
            families.push(family(
                name,
                help,
                MetricType::COUNTER,
                topics
                    .iter()
                    .map(|(t, c)| sample(&[("topic", t)], Value::Counter(of(c) as f64)))
                    .collect(),
            ));
        }
        families.push(family(
            "pipeline_guarantee",
            "1 for the delivery guarantee in force.",
            MetricType::GAUGE,
            vec![sample(
                &[("guarantee", self.guarantee())],
                Value::Gauge(1.0),
            )],
        ));
        if self
            .share_acks
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
        {
            let a = &self.share_acks;
            families.push(by_result(
                "pipeline_share_acknowledgements_total",
                "Share group records acknowledged, by type: accept (delivered or dropped), release (a stage failed: delivered again), reject (dead-lettered), gap (no record at the offset).",
                [
                    ("accept", &a[1]),
                    ("release", &a[2]),
                    ("reject", &a[3]),
                    ("gap", &a[0]),
                ],
            ));
            families.push(family(
                "pipeline_share_redelivered_total",
                "Share group records received with a delivery count above 1 (released by a member, or held by one that died).",
                MetricType::COUNTER,
                vec![sample(
                    &[],
                    Value::Counter(self.share_redelivered.load(Ordering::Relaxed) as f64),
                )],
            ));
        }
        if self.guarantee() == "exactly-once" {
            families.push(by_result(
                "pipeline_transactions_total",
                "Transactions ended, by result (exactly-once).",
                [
                    ("committed", &self.transactions_committed),
                    ("aborted", &self.transactions_aborted),
                ],
            ));
            families.push(family(
                "pipeline_transaction_timeouts_total",
                "Transactions the coordinator aborted for outliving the transaction timeout, after which the producer went on with a new epoch (exactly-once).",
                MetricType::COUNTER,
                vec![sample(
                    &[],
                    Value::Counter(self.transaction_timeouts.load(Ordering::Relaxed) as f64),
                )],
            ));
            families.push(self.transaction_seconds.family(
                "pipeline_transaction_seconds",
                "A transaction's first record to its commit (exactly-once).",
            ));
        }
        if self.registry.fetched.load(Ordering::Relaxed) > 0
            || self.registry.errors.load(Ordering::Relaxed) > 0
        {
            let r = &self.registry;
            for (name, help, v, kind) in [
                (
                    "pipeline_registry_schemas_fetched_total",
                    "Schemas fetched from the schema registry by id.",
                    &r.fetched,
                    MetricType::COUNTER,
                ),
                (
                    "pipeline_registry_errors_total",
                    "Schema registry calls that failed and were retried (the partition waited).",
                    &r.errors,
                    MetricType::COUNTER,
                ),
                (
                    "pipeline_registry_waiting",
                    "Partitions waiting for the schema registry now.",
                    &r.waiting,
                    MetricType::GAUGE,
                ),
                (
                    "pipeline_registry_unknown_ids_total",
                    "Records naming a schema id the registry does not know (dead letters).",
                    &r.unknown_ids,
                    MetricType::COUNTER,
                ),
            ] {
                let n = v.load(Ordering::Relaxed) as f64;
                let value = if kind == MetricType::GAUGE {
                    Value::Gauge(n)
                } else {
                    Value::Counter(n)
                };
                families.push(family(name, help, kind, vec![sample(&[], value)]));
            }
        }
        families.push(self.batch_seconds.family(
            "pipeline_batch_seconds",
            "Time to run one batch through the chain.",
        ));
        families.push(self.end_to_end_seconds.family(
            "pipeline_end_to_end_seconds",
            "Input record timestamp to its batch acknowledged (output, dead letters), per input record.",
        ));
        // Empty families are left out, as Prometheus clients do.
        families.retain(|f| !f.get_metric().is_empty());
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# cannot encode the metrics: {e}\n"))
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// One sample's value.
enum Value {
    Counter(f64),
    Gauge(f64),
}

/// A sample with its labels.
fn sample(labels: &[(&str, &str)], value: Value) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut l = LabelPair::default();
                l.set_name((*name).to_owned());
                l.set_value((*value).to_owned());
                l
            })
            .collect(),
    );
    match value {
        Value::Counter(v) => {
            let mut c = proto::Counter::default();
            c.set_value(v);
            m.set_counter(c);
        }
        Value::Gauge(v) => {
            let mut g = proto::Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
    }
    m
}

/// A metric family of `samples`.
/// A counter family with one sample per `result` label.
fn by_result<const N: usize>(
    name: &str,
    help: &str,
    counts: [(&str, &AtomicU64); N],
) -> MetricFamily {
    family(
        name,
        help,
        MetricType::COUNTER,
        counts
            .into_iter()
            .map(|(result, n)| {
                sample(
                    &[("result", result)],
                    Value::Counter(n.load(Ordering::Relaxed) as f64),
                )
            })
            .collect(),
    )
}

fn family(name: &str, help: &str, kind: MetricType, samples: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(samples);
    f
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
        m.set_lag(&TopicPartition::new("in", 2), 40);
        m.count_input(&"in".into(), 7);
        m.batch_seconds.observe(0.003);
        let text = m.render();
        for line in [
            "pipeline_records_in_total 7",
            "pipeline_stage_records_out_total{stage=\"f\"} 3",
            "pipeline_sandbox_limit_hits_total{stage=\"f\",limit=\"stack\"} 1",
            "pipeline_consumer_lag{topic=\"in\",partition=\"2\"} 40",
            "pipeline_input_records_total{topic=\"in\"} 7",
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
        m.set_lag(&TopicPartition::new("in", 0), 0);
        m.count_input(&"in".into(), 1);
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
