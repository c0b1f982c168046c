//! `pipeline-host audit`: checks, by event identity, that every input
//! record is accounted for. It reads every input (named, or matched by the
//! pattern now), the output and route topics and each input's dead-letter
//! topic to their current ends, runs the configured stages over the input
//! in memory to learn which records the chain filters out, and reports per
//! input topic and partition the records missing (neither delivered nor
//! filtered) and the records delivered more than once. Identity is the
//! source position every output and dead-letter record carries in its
//! `pipeline.source.topic` / `pipeline.source.partition` /
//! `pipeline.source.offset` headers: (input topic, partition, offset).
//! Topics are read `read_committed`, as the pipeline's consumers read them;
//! with `--guarantee exactly-once` a duplicate fails the audit too. A
//! framed input (`--input-format`) is decoded through the registry first.

use std::collections::{BTreeMap, HashMap};

use rskafka::record::RecordAndOffset;

use super::CmdError;
use crate::config::{PipelineConfig, Sources};
use crate::format::{Decoded, Decoder};
use crate::kafka::{Kafka, KafkaError, TopicPartition};
use crate::pipeline::Pipeline;
use crate::sink::{SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC};
use crate::source::{FetchSettings, PartitionSource, StartFrom};
use crate::stages::Chain;

/// `pipeline-host audit`: the pipeline's own flags (or config file) say
/// which topics and which chain to check.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The pipeline's configuration, as `run` takes it.
    #[command(flatten)]
    pub sources: Sources,
    /// Print one JSON object (per partition and in total) instead of the
    /// table, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand: prints the table; an error if anything is missing.
pub async fn exec(args: AuditArgs) -> Result<(), CmdError> {
    let pipeline = Pipeline::prepare(PipelineConfig::load(&args.sources)?)?;
    let cfg = pipeline.config();
    let kafka = Kafka::connect(cfg.kafka.clone()).await?;
    let mut chain = pipeline.chain()?;
    let decoder = Decoder::new(&cfg.formats, Default::default())
        .map_err(|e| CmdError::Usage(e.to_string()))?;
    let outputs: Vec<&str> = std::iter::once(cfg.output.as_str())
        .chain(cfg.routes.topics())
        .collect();
    // Every input there is now: named, or matched by the pattern.
    let listed = kafka.list_topics().await?.into_iter().collect();
    let mut report = BTreeMap::new();
    for input in cfg.inputs.select(&listed).keys() {
        let dead_letter = cfg.dead_letter.of(input);
        let of_input = run(
            &kafka,
            &mut chain,
            decoder.as_ref(),
            input,
            &outputs,
            &dead_letter,
        )
        .await?;
        report.extend(of_input);
    }
    if args.json {
        println!("{}", json(&report));
    } else {
        print!("{}", table(&report));
    }
    let missing: u64 = report.values().map(|a| a.missing).sum();
    let duplicates: u64 = report.values().map(|a| a.duplicates).sum();
    let (output, dead_letter) = (cfg.output.clone(), cfg.dead_letter.to_string());
    if missing > 0 {
        return Err(CmdError::Missing {
            missing,
            output,
            dead_letter,
        });
    }
    // At-least-once allows repeats after a crash; exactly-once does not.
    if duplicates > 0 && cfg.exactly_once.is_some() {
        return Err(CmdError::Duplicates {
            duplicates,
            output,
            dead_letter,
        });
    }
    Ok(())
}

/// The audit of one input partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PartitionAudit {
    /// Input records.
    pub inputs: u64,
    /// Inputs the chain filters out (expected in neither topic).
    pub filtered: u64,
    /// Inputs found in the output or the dead-letter topic.
    pub delivered: u64,
    /// Inputs expected but found in neither.
    pub missing: u64,
    /// Extra copies beyond what the chain makes of an input.
    pub duplicates: u64,
    /// Up to ten missing offsets, for a first look.
    pub missing_examples: Vec<i64>,
}

/// Every record of `topic` up to its current end, per partition.
pub(crate) async fn read_topic(
    kafka: &Kafka,
    topic: &str,
) -> Result<BTreeMap<i32, Vec<RecordAndOffset>>, KafkaError> {
    let partitions = kafka.ensure_topic(topic, None).await?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let mut source = PartitionSource::open(
            kafka,
            topic,
            p,
            StartFrom::Earliest,
            FetchSettings::default(),
        )
        .await?;
        let end = source.end_offset().await?;
        let mut records = Vec::new();
        while source.position() < end {
            records.extend(source.next_batch().await.records);
        }
        out.insert(p, records);
    }
    Ok(out)
}

/// Counts copies per source position of records from `input`.
fn copies(records: &BTreeMap<i32, Vec<RecordAndOffset>>, input: &str) -> HashMap<(i32, i64), u64> {
    let mut seen = HashMap::new();
    for r in records.values().flatten() {
        let h = &r.record.headers;
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| std::str::from_utf8(v).ok().map(str::to_owned))
        };
        if header(SOURCE_TOPIC).as_deref() != Some(input) {
            continue;
        }
        if let (Some(p), Some(o)) = (
            header(SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            header(SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        ) {
            *seen.entry((p, o)).or_insert(0) += 1;
        }
    }
    seen
}

/// Audits `input` against `outputs` (the output topic and the routes'
/// topics) and `dead_letter`, using `chain` to know what is filtered and
/// how many outputs an input makes (a routed record counts once per
/// route); `decoder` reads a framed input (Avro, Protobuf, JSON Schema) as
/// the pipeline does.
pub(crate) async fn run(
    kafka: &Kafka,
    chain: &mut Chain,
    decoder: Option<&Decoder>,
    input: &str,
    outputs: &[&str],
    dead_letter: &str,
) -> Result<BTreeMap<TopicPartition, PartitionAudit>, KafkaError> {
    let never = crate::shutdown::CancellationToken::new();
    let mut decoded = Decoded::default();
    let inputs = read_topic(kafka, input).await?;
    let mut out: HashMap<(i32, i64), u64> = HashMap::new();
    for topic in outputs {
        for (k, n) in copies(&read_topic(kafka, topic).await?, input) {
            *out.entry(k).or_insert(0) += n;
        }
    }
    let dlq = copies(&read_topic(kafka, dead_letter).await?, input);
    let mut report = BTreeMap::new();
    for (p, records) in &inputs {
        let mut a = PartitionAudit::default();
        for batch in records.chunks(1000) {
            let result = match decoder {
                None => chain.process(input, *p, 0, batch),
                Some(d) => {
                    let parts = || {
                        batch
                            .iter()
                            .map(|r| (r.record.key.as_deref(), r.record.value.as_deref()))
                    };
                    // Waits for a registry that cannot be reached.
                    let _ = d.prepare(parts(), input, *p, &never).await;
                    d.decode(parts(), &mut decoded);
                    chain.process(input, *p, 0, &decoded.records(batch))
                }
            };
            // Outputs the chain makes per input record.
            let mut made: HashMap<i64, u64> = HashMap::new();
            for (i, o) in result.output.iter().enumerate() {
                let routes = result.output.routes_of(i).count_ones().max(1);
                *made.entry(o.source_offset).or_insert(0) += u64::from(routes);
            }
            let dead: std::collections::HashSet<i64> =
                result.dead.iter().map(|d| batch[d.input].offset).collect();
            for r in batch {
                a.inputs += 1;
                let key = (*p, r.offset);
                let found =
                    out.get(&key).copied().unwrap_or(0) + dlq.get(&key).copied().unwrap_or(0);
                let expected =
                    made.get(&r.offset).copied().unwrap_or(0) + u64::from(dead.contains(&r.offset));
                if found == 0 && expected == 0 {
                    a.filtered += 1;
                    continue;
                }
                if found == 0 {
                    a.missing += 1;
                    if a.missing_examples.len() < 10 {
                        a.missing_examples.push(r.offset);
                    }
                    continue;
                }
                a.delivered += 1;
                a.duplicates += found.saturating_sub(expected.max(1));
            }
        }
        report.insert(TopicPartition::new(input, *p), a);
    }
    Ok(report)
}

/// The report as a table.
pub(crate) fn json(report: &BTreeMap<TopicPartition, PartitionAudit>) -> serde_json::Value {
    let row = |a: &PartitionAudit| {
        serde_json::json!({
            "inputs": a.inputs, "delivered": a.delivered, "filtered": a.filtered,
            "missing": a.missing, "duplicates": a.duplicates, "missing_examples": a.missing_examples,
        })
    };
    serde_json::json!({
        "partitions": report.iter().map(|(p, a)| (p.to_string(), row(a))).collect::<serde_json::Map<_, _>>(),
        "total": row(&total(report)),
    })
}

/// The sums over every partition (no examples).
fn total(report: &BTreeMap<TopicPartition, PartitionAudit>) -> PartitionAudit {
    let mut total = PartitionAudit::default();
    for a in report.values() {
        total.inputs += a.inputs;
        total.delivered += a.delivered;
        total.filtered += a.filtered;
        total.missing += a.missing;
        total.duplicates += a.duplicates;
    }
    total
}

/// Formats the report as a table with a total line.
pub(crate) fn table(report: &BTreeMap<TopicPartition, PartitionAudit>) -> String {
    let mut s = format!(
        "{:<24} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10}  missing offsets (first 10)\n",
        "topic", "partition", "inputs", "delivered", "filtered", "missing", "duplicates"
    );
    for (p, a) in report {
        s.push_str(&format!(
            "{:<24} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10}  {:?}\n",
            p.topic,
            p.partition,
            a.inputs,
            a.delivered,
            a.filtered,
            a.missing,
            a.duplicates,
            a.missing_examples
        ));
    }
    let total = total(report);
    s.push_str(&format!(
        "{:<24} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10}\n",
        "all", "", total.inputs, total.delivered, total.filtered, total.missing, total.duplicates
    ));
    s
}
