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
use crate::stages::native::{DEFAULT_STAGES, default_stage};
use crate::stages::wasm::{Interrupt, WasmEngine};
use crate::stages::{Chain, StageError, StageLimits, StageRunner, Tombstones};

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
    Ok(rows)
}

/// Formats the rows as a table.
pub fn table(rows: &[BenchRow], opts: &BenchOptions) -> String {
    let native = rows
        .iter()
        .find(|r| r.mode == "native")
        .map(|r| r.events_per_sec);
    let mut s = format!(
        "in-memory chain ({}), {} events, batches of {}, one thread\n{:<18} {:>14} {:>10} {:>12} {:>9} {:>7}\n",
        DEFAULT_STAGES.join(" -> "),
        opts.events,
        opts.batch,
        "mode",
        "events/s/core",
        "ns/event",
        "vs native",
        "output",
        "dlq"
    );
    for r in rows {
        let ratio = native.map_or(String::from("-"), |n| {
            format!("{:.2}x", n / r.events_per_sec)
        });
        s.push_str(&format!(
            "{:<18} {:>14.0} {:>10.0} {:>12} {:>9} {:>7}\n",
            r.mode,
            r.events_per_sec,
            1e9 / r.events_per_sec,
            ratio,
            r.output,
            r.dead
        ));
    }
    s
}
