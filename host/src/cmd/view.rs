//! `pipeline-host view`: prints a topic's records as JSON lines, from the
//! beginning or following the end, like the seed's viewer but usable with
//! `jq`. On a terminal the JSON is pretty-printed and coloured.

use std::io::Write;

use serde_json::Value;
use tokio::sync::mpsc;

use super::CmdError;
use crate::config::KafkaArgs;
use crate::format::{Decoded, Decoder, Format, FormatConfig, tool_registry};
use crate::kafka::{Kafka, KafkaError};
use crate::shutdown;
use crate::source::{FetchSettings, PartitionSource, StartFrom};

/// `pipeline-host view`: print a topic's records as JSON lines.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    /// The brokers and how to reach them.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long, default_value = "processed-user-login")]
    pub topic: String,
    /// Start at the beginning or the end.
    #[arg(long, value_enum, default_value_t = StartFrom::Earliest)]
    pub from: StartFrom,
    /// Exit at the end instead of waiting for new records.
    #[arg(long)]
    pub no_follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Print partition, offset, timestamp, key and headers around each
    /// value: `{"partition","offset","key","headers","value"}` objects;
    /// `headers` is the record's list of `[name, value]` pairs, in order
    /// (a name may repeat, as in Kafka).
    #[arg(long)]
    pub meta: bool,
    /// Pretty-print and colour: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value_t = Pretty::Auto)]
    pub pretty: Pretty,
    /// Format of the values (default json): avro, protobuf and
    /// json-schema values are decoded through the schema registry into
    /// the JSON the stages see; one that does not decode prints as
    /// `{"undecodable": reason}`.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Schema registry URL (Confluent-compatible API), for every format
    /// but json.
    #[arg(long = "registry-url", env = "PIPELINE_REGISTRY_URL")]
    pub registry_url: Option<String>,
}

/// The decoder of `opts.format` (`None` for json).
fn decoder(opts: &ViewArgs) -> Result<Option<Decoder>, CmdError> {
    let registry =
        tool_registry(opts.format, opts.registry_url.as_deref()).map_err(CmdError::Usage)?;
    let config = FormatConfig {
        input_value: opts.format,
        registry,
        cache_size: 1000,
        ..FormatConfig::default()
    };
    Decoder::new(&config, Default::default()).map_err(|e| CmdError::Usage(e.to_string()))
}

/// When to pretty-print and colour.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Pretty {
    /// When standard output is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never: one compact JSON value per line.
    Never,
}

impl Pretty {
    fn on(self) -> bool {
        match self {
            Pretty::Always => true,
            Pretty::Never => false,
            Pretty::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        }
    }
}

/// Runs the subcommand: connects and prints until done or a signal.
pub async fn exec(args: ViewArgs) -> Result<(), CmdError> {
    let decoder = decoder(&args)?;
    let kafka = Kafka::connect(args.kafka.settings()?).await?;
    let sd = shutdown::CancellationToken::new();
    shutdown::on_signals(sd.clone());
    run(&kafka, &args, decoder.as_ref(), sd).await?;
    Ok(())
}

/// One record as printed; `decoded`: its value decoded from the topic's
/// format, or why not.
fn render(
    r: &rskafka::record::RecordAndOffset,
    partition: i32,
    meta: bool,
    decoded: Option<Result<Option<&[u8]>, &str>>,
) -> Value {
    let json = |v: &[u8]| {
        serde_json::from_slice(v)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned()))
    };
    let value = match decoded {
        Some(Ok(Some(v))) => json(v),
        Some(Ok(None)) => Value::Null,
        Some(Err(reason)) => serde_json::json!({ "undecodable": reason }),
        None => r.record.value.as_deref().map_or(Value::Null, json),
    };
    if !meta {
        return value;
    }
    let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
    serde_json::json!({
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.record.timestamp.timestamp_millis(),
        "key": r.record.key.as_deref().map_or(Value::Null, text),
        "headers": r.record.headers.iter().map(|(k, v)| Value::Array(vec![text(k), text(v)])).collect::<Vec<_>>(),
        "value": value,
    })
}

/// Reads and prints until done (or forever when following); returns the
/// number of records printed.
pub(crate) async fn run(
    kafka: &Kafka,
    opts: &ViewArgs,
    decoder: Option<&Decoder>,
    shutdown: shutdown::CancellationToken,
) -> Result<u64, KafkaError> {
    // The topic may not exist yet (the viewer started before the pipeline):
    // wait for it rather than fail.
    let mut waiting_logged = false;
    let partitions = loop {
        match kafka.ensure_topic(&opts.topic, None).await {
            Ok(n) => break n,
            Err(KafkaError::MissingTopic { .. }) => {
                if !std::mem::replace(&mut waiting_logged, true) {
                    tracing::info!(topic = %opts.topic, "waiting for the topic to exist");
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return Ok(0),
                }
            }
            Err(e) => return Err(e),
        }
    };
    let (tx, mut rx) = mpsc::channel(16);
    for p in 0..partitions {
        let mut source =
            PartitionSource::open(kafka, &opts.topic, p, opts.from, FetchSettings::default())
                .await?;
        let end = if opts.no_follow {
            Some(source.end_offset().await?)
        } else {
            None
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while end.is_none_or(|e| source.position() < e) {
                let batch = source.next_batch().await;
                if tx.send((p, batch.records)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut printed = 0u64;
    let pretty = opts.pretty.on();
    let stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = shutdown.cancelled() => None,
        };
        let Some((p, records)) = next else { break };
        let mut decoded = Decoded::default();
        if let Some(d) = decoder {
            let parts = || {
                records
                    .iter()
                    .map(|r| (r.record.key.as_deref(), r.record.value.as_deref()))
            };
            if d.prepare(parts(), &opts.topic, p, &shutdown).await.is_err() {
                break;
            }
            d.decode(parts(), &mut decoded);
        }
        let mut out = stdout.lock();
        for (i, r) in records.iter().enumerate() {
            let v = render(r, p, opts.meta, decoder.map(|_| decoded.value(i)));
            let line = if pretty { colour(&v, 0) } else { v.to_string() };
            if writeln!(out, "{line}").is_err() {
                return Ok(printed); // stdout closed (e.g. `| head`)
            }
            printed += 1;
            if opts.max.is_some_and(|m| printed >= m) {
                return Ok(printed);
            }
        }
        let _ = out.flush();
    }
    Ok(printed)
}

/// Pretty JSON with ANSI colours: keys blue, strings green, numbers cyan,
/// literals magenta.
pub(crate) fn colour(v: &Value, indent: usize) -> String {
    const KEY: &str = "\x1b[34m";
    const STR: &str = "\x1b[32m";
    const NUM: &str = "\x1b[36m";
    const LIT: &str = "\x1b[35m";
    const RESET: &str = "\x1b[0m";
    let pad = "  ".repeat(indent + 1);
    let end_pad = "  ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{pad}{KEY}{}{RESET}: {}",
                        Value::String(k.clone()),
                        colour(v, indent + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{end_pad}}}", items.join(",\n"))
        }
        Value::Array(a) if !a.is_empty() => {
            let items: Vec<String> = a
                .iter()
                .map(|v| format!("{pad}{}", colour(v, indent + 1)))
                .collect();
            format!("[\n{}\n{end_pad}]", items.join(",\n"))
        }
        Value::String(_) => format!("{STR}{v}{RESET}"),
        Value::Number(_) => format!("{NUM}{v}{RESET}"),
        _ => format!("{LIT}{v}{RESET}"),
    }
}
