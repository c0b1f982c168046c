//! `pipeline-host bench`: the default chain over generated events in
//! memory, no broker, on one thread: events per second per core for the
//! WebAssembly stages (with epoch interruption, as the pipeline runs them;
//! with fuel metering; with nothing to stop a runaway stage) and for the
//! same stages compiled natively into the host. The ratios are what the
//! sandbox and each interruption scheme cost.

use std::path::PathBuf;
use std::time::Instant;

use rskafka::chrono::{DateTime, Utc};
use rskafka::record::{Record, RecordAndOffset};

use crate::events::{EventMix, EventStream};
use crate::stages::native::{DEFAULT_STAGES, NativeRunner, default_stage};
use crate::stages::wasm::{Interrupt, WasmEngine};
use crate::stages::{Chain, StageError, StageLimits, StageRunner, Tombstones};
use stage_sdk::batch::OutcomesBuilder;
use stage_sdk::{Batch, NativeStage, Outcome, Outcomes};

/// Benchmark options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per run.
    pub events: usize,
    /// Records per batch.
    pub batch: usize,
    /// Folder holding the default stages' `.wasm` files.
    pub plugins_dir: PathBuf,
    /// Runs per mode; the best is reported.
    pub runs: usize,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// What ran.
    pub mode: &'static str,
    /// Events processed per second on one core (best run).
    pub events_per_sec: f64,
    /// Output records of one run (a check that both modes agree).
    pub output: usize,
    /// Dead letters of one run.
    pub dead: usize,
}

fn input(opts: &BenchOptions) -> Vec<RecordAndOffset> {
    let mix = EventMix {
        malformed: 0.01,
        missing: 0.02,
        ..Default::default()
    };
    EventStream::new(1, mix)
        .take(opts.events)
        .enumerate()
        .map(|(i, e)| RecordAndOffset {
            record: Record {
                key: e.key,
                value: Some(e.value),
                headers: Default::default(),
                timestamp: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000)
                    .unwrap_or_default(),
            },
            offset: i as i64,
        })
        .collect()
}

fn measure(
    mode: &'static str,
    mut chain: Chain,
    records: &[RecordAndOffset],
    opts: &BenchOptions,
) -> BenchRow {
    let now = 1_700_000_000_000;
    // Warm-up: one batch.
    chain.process("bench", 0, now, &records[..opts.batch.min(records.len())]);
    let mut best = f64::MAX;
    let (mut output, mut dead) = (0, 0);
    for _ in 0..opts.runs.max(1) {
        let started = Instant::now();
        let (mut o, mut d) = (0, 0);
        for batch in records.chunks(opts.batch.max(1)) {
            let out = chain.process("bench", 0, now, batch);
            o += out.output.len();
            d += out.dead.len();
        }
        best = best.min(started.elapsed().as_secs_f64());
        (output, dead) = (o, d);
    }
    BenchRow {
        mode,
        events_per_sec: records.len() as f64 / best,
        output,
        dead,
    }
}

/// Runs every mode and returns the rows: the WebAssembly chain with each
/// way of stopping a runaway stage (epoch interruption is the pipeline's),
/// then the native chain.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>, StageError> {
    let records = input(opts);
    let modes = [
        ("wasm, epoch", Interrupt::Epoch),
        ("wasm, fuel", Interrupt::Fuel),
        ("wasm, unbounded", Interrupt::None),
    ];
    let mut rows = Vec::new();
    for (mode, interrupt) in modes {
        let engine = WasmEngine::new()?.with_interrupt(interrupt);
        let mut wasm = Vec::new();
        for name in DEFAULT_STAGES {
            let path = opts.plugins_dir.join(format!("{name}.wasm"));
            let plugin = engine.load(name, &path, StageLimits::default())?;
            wasm.push(StageRunner::Wasm(Box::new(plugin.instantiate(&[])?)));
        }
        rows.push(measure(
            mode,
            Chain::new(wasm, Tombstones::Drop),
            &records,
            opts,
        ));
    }
    let native = DEFAULT_STAGES
        .iter()
        .map(|n| default_stage(n, &[]))
        .collect::<Result<Vec<_>, _>>()?;
    rows.push(measure(
        "native",
        Chain::new(native, Tombstones::Drop),
        &records,
        opts,
    ));
    // One stage, two ways of reading the one field it needs.
    rows.push(measure(
        LAZY,
        Chain::new(
            vec![default_stage("android_filter", &[])?],
            Tombstones::Drop,
        ),
        &records,
        opts,
    ));
    let full = StageRunner::Native(NativeRunner {
        name: "android_filter_full_parse".into(),
        stage: Box::new(FullParseFilter),
    });
    rows.push(measure(
        FULL,
        Chain::new(vec![full], Tombstones::Drop),
        &records,
        opts,
    ));
    Ok(rows)
}

/// Row of the filter reading `device_type` with the SDK's lazy scanner.
const LAZY: &str = "filter, lazy field";
/// Row of the same filter parsing the whole event first.
const FULL: &str = "filter, full parse";

/// The android filter as a stage would be written without the SDK's lazy
/// field access: parse the whole event into a `serde_json::Value`, then
/// look at one member. Same outcomes as `android_filter`.
struct FullParseFilter;

impl NativeStage for FullParseFilter {
    fn process_batch(&mut self, batch: &Batch) -> Outcomes {
        let mut out = OutcomesBuilder::with_capacity(batch.len());
        for r in batch.records() {
            let event: serde_json::Value = match serde_json::from_slice(r.value) {
                Ok(v) => v,
                Err(e) => {
                    out.push(Outcome::fail(format!("not JSON: {e}")));
                    continue;
                }
            };
            out.push(match event.get("device_type") {
                Some(serde_json::Value::String(d)) if d.eq_ignore_ascii_case("android") => {
                    Outcome::Keep
                }
                Some(serde_json::Value::String(_)) => Outcome::Drop,
                _ => Outcome::fail("missing or non-string field device_type"),
            });
        }
        out.finish()
    }
}

/// Formats the rows as a table: the default chain against native, then the
/// one-stage rows against the lazy filter.
pub fn table(rows: &[BenchRow], opts: &BenchOptions) -> String {
    let rate = |mode: &str| {
        rows.iter()
            .find(|r| r.mode == mode)
            .map(|r| r.events_per_sec)
    };
    let header = |title: String| {
        format!(
            "{title}\n{:<22} {:>14} {:>10} {:>12} {:>9} {:>7}\n",
            "mode", "events/s/core", "ns/event", "vs baseline", "output", "dlq"
        )
    };
    let line = |r: &BenchRow, base: Option<f64>| {
        let ratio = base.map_or(String::from("-"), |b| {
            format!("{:.2}x", b / r.events_per_sec)
        });
        format!(
            "{:<22} {:>14.0} {:>10.0} {:>12} {:>9} {:>7}\n",
            r.mode,
            r.events_per_sec,
            1e9 / r.events_per_sec,
            ratio,
            r.output,
            r.dead
        )
    };
    let mut s = header(format!(
        "in-memory chain ({}), {} events, batches of {}, one thread; baseline: native",
        DEFAULT_STAGES.join(" -> "),
        opts.events,
        opts.batch,
    ));
    for r in rows.iter().filter(|r| r.mode != LAZY && r.mode != FULL) {
        s.push_str(&line(r, rate("native")));
    }
    s.push_str(&header(
        "\none stage reading one field (native), same events; baseline: lazy field".into(),
    ));
    for r in rows.iter().filter(|r| r.mode == LAZY || r.mode == FULL) {
        s.push_str(&line(r, rate(LAZY)));
    }
    s
}

/// What the broker alone sustains: the ceiling every end-to-end figure is
/// read against.
#[derive(Debug, Clone, Copy)]
pub struct BrokerCeiling {
    /// Events produced per second (the generator's path: keyed, acks=all,
    /// one concurrent request per partition).
    pub produce_per_sec: f64,
    /// Events fetched per second (every partition read concurrently, no
    /// processing).
    pub fetch_per_sec: f64,
}

/// Produces `events` generated events to `topic` (created with
/// `partitions`) as fast as the broker takes them, then fetches them all
/// back.
pub async fn broker_ceiling(
    kafka: &crate::kafka::Kafka,
    topic: &str,
    events: u64,
    partitions: i32,
) -> Result<BrokerCeiling, crate::kafka::KafkaError> {
    use crate::cmd::generate::{GenerateOptions, run as generate};
    let opts = GenerateOptions {
        topic: topic.into(),
        count: Some(events),
        rate: None,
        seed: 3,
        mix: EventMix::default(),
        partitions,
        batch: 1000,
    };
    let (_trigger, never) = crate::shutdown::channel();
    let started = Instant::now();
    let produced = generate(kafka, &opts, never).await?;
    let produce_secs = started.elapsed().as_secs_f64();

    let n = kafka.ensure_topic(topic, None).await?;
    let started = Instant::now();
    let reads = (0..n).map(|p| async move {
        let mut source = crate::source::PartitionSource::open(
            kafka,
            topic,
            p,
            crate::source::StartFrom::Earliest,
            crate::source::FetchSettings::default(),
        )
        .await?;
        let end = source.end_offset().await?;
        let mut count = 0u64;
        while source.position() < end {
            count += source.next_batch().await.records.len() as u64;
        }
        Ok::<_, crate::kafka::KafkaError>(count)
    });
    let mut fetched = 0;
    for r in futures::future::join_all(reads).await {
        fetched += r?;
    }
    let fetch_secs = started.elapsed().as_secs_f64();
    Ok(BrokerCeiling {
        produce_per_sec: produced as f64 / produce_secs,
        fetch_per_sec: fetched as f64 / fetch_secs,
    })
}
