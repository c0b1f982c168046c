//! `pipeline-host plugin check|run`: what a stage author uses while writing
//! one. `check` compiles a component, validates it against the `stage`
//! world, runs its `init` with the given settings and prints what it is.
//! `run` feeds JSON lines from standard input through the stage (with the
//! host's input validation, as in the pipeline) and prints one outcome line
//! per input line, no broker needed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rskafka::chrono::Utc;
use rskafka::record::{Record, RecordAndOffset};
use serde_json::{Value, json};

use super::CmdError;
use crate::stages::wasm::{CompileSource, WasmEngine};
use crate::stages::{Chain, StageError, StageLimits, StageRules, StageRunner, Tombstones};

/// `pipeline-host plugin`: a stage author's tools.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PluginCommand {
    /// Compile and validate a component against the stage world, run its
    /// init with the given settings, and print what it is.
    Check {
        /// The component (.wasm or .wat).
        file: PathBuf,
        /// A setting KEY=VALUE, repeatable.
        #[arg(long = "config", value_parser = setting)]
        config: Vec<(String, String)>,
    },
    /// Run a stage over JSON lines from standard input (one event per
    /// line) and print one outcome per line; no broker needed.
    Run {
        /// The component (.wasm or .wat).
        file: PathBuf,
        /// A setting KEY=VALUE, repeatable.
        #[arg(long = "config", value_parser = setting)]
        config: Vec<(String, String)>,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

/// Parses `--config KEY=VALUE`.
fn setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

/// Runs the subcommand.
pub fn exec(cmd: PluginCommand) -> Result<(), CmdError> {
    match cmd {
        PluginCommand::Check { file, config } => {
            let r = check(&file, &config)?;
            // A closed stdout (`| head -1`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}: a valid pipeline:stage/{}@{} component ({} bytes, {} in {} ms); init accepted {} setting(s){}\nsha256 = \"{}\"",
                r.name,
                r.world,
                r.version,
                r.bytes,
                if r.cached {
                    "loaded from the compile cache"
                } else {
                    "compiled"
                },
                r.compile_ms,
                config.len(),
                if r.routes.is_empty() {
                    String::new()
                } else {
                    format!("; routes: {}", r.routes.join(", "))
                },
                r.sha256
            );
        }
        PluginCommand::Run {
            file,
            config,
            batch,
        } => {
            let mut chain = single_stage(&file, &config)?;
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            run(&mut chain, stdin, std::io::BufWriter::new(stdout), batch)
                .map_err(|e| CmdError::Io("writing the outcomes to standard output", e))?;
        }
    }
    Ok(())
}

/// The stage name of a plugin file (its stem).
pub(crate) fn stage_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "stage".into(), |s| s.to_string_lossy().into_owned())
}

/// What `check` found.
#[derive(Debug, Clone)]
pub(crate) struct CheckReport {
    /// Stage name.
    pub name: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Compile (or cache load) and validation time in milliseconds.
    pub compile_ms: u128,
    /// True when the compiled code came from the compile cache.
    pub cached: bool,
    /// Lower-case hex sha256 of the file (for `sha256` pins).
    pub sha256: String,
    /// The world it implements: `stage` or `stateful-stage`.
    pub world: &'static str,
    /// The contract version it targets.
    pub version: &'static str,
    /// The routes it declared.
    pub routes: Vec<String>,
}

/// The engine of the tools, with the default compile cache.
fn engine() -> Result<WasmEngine, StageError> {
    Ok(WasmEngine::new()?.with_compile_cache(crate::config::default_compile_cache()))
}

/// Compiles, validates and initialises the stage at `path`.
pub(crate) fn check(path: &Path, config: &[(String, String)]) -> Result<CheckReport, StageError> {
    let engine = engine()?;
    let name = stage_name(path);
    let started = Instant::now();
    let plugin = engine.load(&name, path, StageLimits::default())?;
    let compile_ms = started.elapsed().as_millis();
    let routes = plugin.instantiate(config)?.routes()?;
    Ok(CheckReport {
        version: plugin.version().as_str(),
        routes,
        name,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        compile_ms,
        cached: plugin.source() == CompileSource::Cached,
        sha256: plugin.sha256().to_owned(),
        world: if plugin.is_stateful() {
            "stateful-stage"
        } else {
            "stage"
        },
    })
}

/// A chain of the one stage at `path`.
pub(crate) fn single_stage(path: &Path, config: &[(String, String)]) -> Result<Chain, StageError> {
    let engine = engine()?;
    let plugin = engine.load(&stage_name(path), path, StageLimits::default())?;
    Ok(Chain::new(
        vec![StageRunner::Wasm(Box::new(plugin.instantiate(config)?))],
        Tombstones::Drop,
    )
    .with_rules(vec![StageRules {
        any_output: true,
        ..StageRules::default()
    }]))
}

/// Runs `chain` over the lines of `input` in batches of `batch`, writing
/// one JSON outcome line per input line to `out`:
/// `{"line":N,"outcome":"output","values":[...]}`,
/// `{"line":N,"outcome":"dead-letter","stage":..,"reason":..}` or
/// `{"line":N,"outcome":"dropped"}`; side records (window counts of a
/// stateful stage) follow their batch as `{"side":NAME,"key":..,"value":..}`,
/// and those of the final timer call close the output. Returns the number
/// of lines.
pub(crate) fn run(
    chain: &mut Chain,
    input: impl BufRead,
    mut out: impl Write,
    batch: usize,
) -> std::io::Result<u64> {
    let mut lines = input.split(b'\n').enumerate().peekable();
    let mut n = 0;
    while lines.peek().is_some() {
        let mut records = Vec::new();
        for (i, line) in lines.by_ref().take(batch.max(1)) {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            records.push(RecordAndOffset {
                record: Record {
                    key: None,
                    value: Some(line),
                    headers: Default::default(),
                    timestamp: Utc::now(),
                },
                offset: i as i64 + 1,
            });
        }
        let result = chain.process("stdin", 0, Utc::now().timestamp_millis(), &records);
        let mut values: std::collections::BTreeMap<i64, Vec<Value>> = Default::default();
        for o in result.output.iter() {
            let v = o.value.map_or(Value::Null, |v| {
                serde_json::from_slice(v)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned()))
            });
            values.entry(o.source_offset).or_default().push(v);
        }
        let dead: std::collections::BTreeMap<i64, (&str, &str)> = result
            .dead
            .iter()
            .map(|d| {
                (
                    records[d.input].offset,
                    (d.stage.as_str(), d.reason.as_str()),
                )
            })
            .collect();
        for r in &records {
            let line = if let Some((stage, reason)) = dead.get(&r.offset) {
                json!({"line": r.offset, "outcome": "dead-letter", "stage": stage, "reason": reason})
            } else if let Some(v) = values.remove(&r.offset) {
                json!({"line": r.offset, "outcome": "output", "values": v})
            } else {
                json!({"line": r.offset, "outcome": "dropped"})
            };
            writeln!(out, "{line}")?;
            n += 1;
        }
        side_lines(&mut out, &result.side)?;
    }
    let context = stage_sdk::batch::Context {
        now_ms: Utc::now().timestamp_millis(),
        topic: "stdin".into(),
        partition: 0,
    };
    let last = chain.on_timer(&context);
    side_lines(&mut out, &last)?;
    Ok(n)
}

/// Prints side records, values as JSON when they are.
fn side_lines(mut out: impl Write, side: &[crate::stages::SideOut]) -> std::io::Result<()> {
    for s in side {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let value =
            serde_json::from_slice(&s.value).unwrap_or_else(|_| Value::String(text(&s.value)));
        writeln!(
            out,
            "{}",
            json!({"side": s.topic, "key": s.key.as_deref().map(text), "value": value})
        )?;
    }
    Ok(())
}
