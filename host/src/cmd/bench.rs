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

use super::CmdError;
use crate::config::{KafkaArgs, StringOrList};
use crate::events::{EventMix, EventStream};
use crate::kafka::Kafka;
use crate::stages::native::{DEFAULT_STAGES, NativeRunner, default_stage};
use crate::stages::wasm::{Interrupt, WasmEngine};
use crate::stages::{Chain, StageError, StageLimits, StageRules, StageRunner, Tombstones};
use stage_sdk::batch::OutcomesBuilder;
use stage_sdk::{Batch, NativeStage, Outcome, Outcomes};

/// `pipeline-host bench`: the default chain in memory, WebAssembly against
/// native; or, with `--broker`, the broker alone.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Folder with the default stages' .wasm files.
    #[arg(long, default_value = "plugins")]
    pub plugins_dir: PathBuf,
    /// Runs per mode (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Instead of the in-memory chain, measure the broker alone at this
    /// address: produce then fetch `--events` events (topic `bench-ceiling`).
    #[arg(long)]
    pub broker: Option<String>,
    /// Partitions of the broker benchmark's topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Run only the in-memory modes whose name starts with this (`native`,
    /// `wasm, epoch`, `filter`), for profiling one of them.
    #[arg(long)]
    pub only: Option<String>,
    /// Instead, measure poison isolation: the `fixtures/hostile.wasm`
    /// stage trapping on batches that hold a poison record, over a clean
    /// batch of `--batch` records and batches with 1, 10 and every record
    /// poisoned: stage calls, dead letters, outputs and time.
    #[arg(long)]
    pub isolation: bool,
}

/// Runs the subcommand and prints its table (or, with `--broker`, one JSON
/// line).
pub async fn exec(args: BenchArgs) -> Result<(), CmdError> {
    if let Some(bootstrap) = &args.broker {
        let settings = KafkaArgs {
            bootstrap: Some(StringOrList::One(bootstrap.clone())),
            ..KafkaArgs::default()
        }
        .settings()?;
        let kafka = Kafka::connect(settings).await?;
        let c =
            broker_ceiling(&kafka, "bench-ceiling", args.events as u64, args.partitions).await?;
        println!(
            "{}",
            serde_json::json!({"produce_per_sec": c.produce_per_sec.round(), "fetch_per_sec": c.fetch_per_sec.round()})
        );
        return Ok(());
    }
    if args.isolation {
        print!("{}", isolation(&args)?);
        return Ok(());
    }
    let rows = run(&args)?;
    print!("{}", table(&rows, &args));
    Ok(())
}

/// The isolation benchmark's table: for a clean batch and batches with 1,
/// 10 and every record poisoned, the stage calls the chain made (the
/// first, failed one included), dead letters, outputs, and the time of the
/// batch (best of `--runs`) against the clean batch's.
fn isolation(opts: &BenchArgs) -> Result<String, StageError> {
    let engine = WasmEngine::new()?;
    let path = opts.plugins_dir.join("fixtures/hostile.wasm");
    let plugin = engine.load("hostile", &path, StageLimits::default())?;
    let config = [
        ("mode".to_string(), "trap".to_string()),
        ("poison_field".to_string(), "poison".to_string()),
    ];
    let n = opts.batch.max(1);
    let batch = |poisoned: &dyn Fn(usize) -> bool| -> Vec<RecordAndOffset> {
        (0..n)
            .map(|i| {
                let value = if poisoned(i) {
                    format!(r#"{{"n":{i},"poison":true}}"#)
                } else {
                    format!(r#"{{"n":{i}}}"#)
                };
                RecordAndOffset {
                    record: Record {
                        key: None,
                        value: Some(value.into_bytes()),
                        headers: Default::default(),
                        timestamp: Utc::now(),
                    },
                    offset: i as i64,
                }
            })
            .collect()
    };
    let spread = (n / 10).max(1);
    let cases: [(&str, Vec<RecordAndOffset>); 4] = [
        ("none", batch(&|_| false)),
        ("1", batch(&|i| i == n * 6 / 10)),
        (
            "10",
            batch(&|i| i % spread == spread / 2 && i / spread < 10),
        ),
        ("all", batch(&|_| true)),
    ];
    let mut table = format!(
        "poison isolation: hostile.wasm traps on a batch holding a poison record; batches of {n}\n{:<8} {:>11} {:>9} {:>8} {:>8} {:>10} {:>9}\n",
        "poison", "stage calls", "isolated", "dlq", "output", "ms", "vs clean"
    );
    let mut clean = None;
    for (name, records) in &cases {
        let mut chain = Chain::new(
            vec![StageRunner::Wasm(Box::new(plugin.instantiate(&config)?))],
            Tombstones::Drop,
        );
        let mut best = f64::MAX;
        let mut last = None;
        for _ in 0..opts.runs.max(1) {
            let started = Instant::now();
            let out = chain.process("bench", 0, 0, records);
            best = best.min(started.elapsed().as_secs_f64());
            last = Some(out);
        }
        let out = last.expect("at least one run");
        let c = &out.stage_counts[0];
        let calls = 1 + c.isolation_calls;
        let clean_ms = *clean.get_or_insert(best * 1e3);
        table.push_str(&format!(
            "{name:<8} {calls:>11} {:>9} {:>8} {:>8} {:>10.3} {:>8.1}x\n",
            c.isolated,
            out.dead.len(),
            out.output.len(),
            best * 1e3,
            best * 1e3 / clean_ms
        ));
    }
    // What a normal batch costs: the default chain over as many generated
    // events, so "a few times a normal batch" can be read off.
    let events = input(&BenchArgs {
        events: n,
        ..opts.clone()
    });
    let mut chain = wasm_chain(&WasmEngine::new()?, opts, &DEFAULT_STAGES)?;
    let mut best = f64::MAX;
    for _ in 0..opts.runs.max(1) + 1 {
        let started = Instant::now();
        let out = chain.process("bench", 0, 0, &events);
        best = best.min(started.elapsed().as_secs_f64());
        chain.recycle(out.output);
    }
    table.push_str(&format!(
        "a normal batch: the default chain (4 stages) over {n} generated events takes {:.3} ms\n",
        best * 1e3
    ));
    Ok(table)
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub(crate) struct BenchRow {
    /// What ran.
    pub mode: &'static str,
    /// Events processed per second on one core (best run).
    pub events_per_sec: f64,
    /// Output records of one run (a check that both modes agree).
    pub output: usize,
    /// Dead letters of one run.
    pub dead: usize,
}

fn input(opts: &BenchArgs) -> Vec<RecordAndOffset> {
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
    opts: &BenchArgs,
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
            chain.recycle(out.output);
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

/// The chain of the WebAssembly stages `names` (files in
/// `--plugins-dir`) with their default settings; the routes a stage
/// declares are mapped to route numbers 1.. (a router's records are
/// routed, not failed as unmapped).
fn wasm_chain(engine: &WasmEngine, opts: &BenchArgs, names: &[&str]) -> Result<Chain, StageError> {
    let mut stages = Vec::new();
    let mut rules = Vec::new();
    for name in names {
        let path = opts.plugins_dir.join(format!("{name}.wasm"));
        let plugin = engine.load(name, &path, StageLimits::default())?;
        let mut stage = StageRunner::Wasm(Box::new(plugin.instantiate(&[])?));
        let routes = stage.routes()?;
        rules.push(StageRules {
            routes: (1..=routes.len() as u8).collect(),
            route_names: routes,
            ..StageRules::default()
        });
        stages.push(stage);
    }
    Ok(Chain::new(stages, Tombstones::Drop).with_rules(rules))
}

/// Runs every mode and returns the rows: the WebAssembly chain with each
/// way of stopping a runaway stage (epoch interruption is the pipeline's),
/// then the native chain.
pub(crate) fn run(opts: &BenchArgs) -> Result<Vec<BenchRow>, StageError> {
    let records = input(opts);
    let wanted = |mode: &str| opts.only.as_deref().is_none_or(|o| mode.starts_with(o));
    let modes = [
        ("wasm, epoch", Interrupt::Epoch),
        ("wasm, fuel", Interrupt::Fuel),
        ("wasm, unbounded", Interrupt::None),
    ];
    let mut rows = Vec::new();
    for (mode, interrupt) in modes.into_iter().filter(|(m, _)| wanted(m)) {
        let engine = WasmEngine::new()?.with_interrupt(interrupt);
        let chain = wasm_chain(&engine, opts, &DEFAULT_STAGES)?;
        rows.push(measure(mode, chain, &records, opts));
    }
    if wanted(ROUTED) {
        // The default chain plus `router`, its route mapped: what a fifth
        // stage that only routes costs, without a broker's noise.
        let engine = WasmEngine::new()?;
        let chain = wasm_chain(&engine, opts, &[&DEFAULT_STAGES[..], &["router"]].concat())?;
        rows.push(measure(ROUTED, chain, &records, opts));
    }
    if wanted(NATIVE) {
        let native = DEFAULT_STAGES
            .iter()
            .map(|n| default_stage(n, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(measure(
            NATIVE,
            Chain::new(native, Tombstones::Drop),
            &records,
            opts,
        ));
    }
    if !wanted(LAZY) && !wanted(FULL) {
        return Ok(rows);
    }
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
        routes: Vec::new(),
    });
    rows.push(measure(
        FULL,
        Chain::new(vec![full], Tombstones::Drop),
        &records,
        opts,
    ));
    Ok(rows)
}

/// Row of the default chain plus the `router` stage (WebAssembly, epoch).
const ROUTED: &str = "wasm, epoch, + router";
/// Row of the native chain, the baseline of the WebAssembly rows.
const NATIVE: &str = "native";
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
pub(crate) fn table(rows: &[BenchRow], opts: &BenchArgs) -> String {
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
        s.push_str(&line(r, rate(NATIVE)));
    }
    if !rows.iter().any(|r| r.mode == LAZY || r.mode == FULL) {
        return s;
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
pub(crate) struct BrokerCeiling {
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
pub(crate) async fn broker_ceiling(
    kafka: &crate::kafka::Kafka,
    topic: &str,
    events: u64,
    partitions: i32,
) -> Result<BrokerCeiling, crate::kafka::KafkaError> {
    use crate::cmd::generate::{GenerateArgs, run as generate};
    let opts = GenerateArgs {
        kafka: crate::config::KafkaArgs::default(),
        topic: topic.into(),
        count: Some(events),
        rate: None,
        seed: 3,
        malformed: 0.0,
        missing: 0.0,
        users: None,
        partitions,
        batch: 1000,
        format: crate::format::Format::Json,
        registry_url: None,
    };
    let never = crate::shutdown::CancellationToken::new();
    let started = Instant::now();
    let produced = generate(kafka, &opts, None, never).await?;
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
