//! The chain: one batch of input records through every stage, in order.
//!
//! 1. The host validates each value: a null value is a tombstone (handled by
//!    [`Tombstones`]); anything that is not a UTF-8 JSON object becomes a
//!    dead letter with stage `host`. Only valid objects reach the stages.
//! 2. Each stage gets the surviving records as one columnar batch and
//!    returns one outcome per record. Keep and append carry the record on
//!    (appended members merged into the JSON without re-serialising it),
//!    replace substitutes new records, drop filters, fail makes a dead
//!    letter of the *original* input record with the stage's reason.
//! 3. A stage error (trap, limit, malformed outcomes) fails every record of
//!    that batch with the error as reason, and the stage's instance is
//!    recycled; the pipeline goes on with the next batch.
//!
//! Every input record ends up in exactly one place: output (possibly as
//! several records), dead letters, or dropped. [`ChainOutput`] says which.

use rskafka::record::RecordAndOffset;
use stage_sdk::batch::{BatchBuilder, Context, OutcomeRef};
use stage_sdk::{Batch, json};

use super::{StageError, StageRunner};

/// What happens to records with a null value (Kafka tombstones). They carry
/// no event, so no stage sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Tombstones {
    /// Filter them out (counted as dropped).
    #[default]
    Drop,
    /// Pass them to the output topic unchanged, so a deletion propagates to
    /// a compacted output.
    Forward,
    /// Send them to the dead-letter topic.
    DeadLetter,
}

/// A record for the output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Key (the input's unless a stage replaced it).
    pub key: Option<Vec<u8>>,
    /// Value; `None` only for forwarded tombstones.
    pub value: Option<Vec<u8>>,
    /// Headers (the input's plus any a stage added).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Timestamp of the input record, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Offset of the input record it came from.
    pub source_offset: i64,
}

/// An input record that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index of the record in the input slice.
    pub input: usize,
    /// The stage that failed it (`host` for undecodable input).
    pub stage: String,
    /// Why.
    pub reason: String,
}

/// Where the records of one input batch went.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// Records for the output topic, in input order.
    pub output: Vec<OutRecord>,
    /// Records for the dead-letter topic, in input order.
    pub dead: Vec<DeadLetter>,
    /// Input records filtered out (by a stage or as tombstones).
    pub dropped: u64,
    /// Stage errors of this batch (each failed the records it held).
    pub stage_errors: Vec<StageError>,
}

/// Per-stage record counts since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Records given to the stage.
    pub records_in: u64,
    /// Records it passed on (kept, appended, or replacement records).
    pub records_out: u64,
    /// Records it dropped.
    pub dropped: u64,
    /// Records it failed (including whole batches lost to a stage error).
    pub failed: u64,
    /// Stage errors (traps, limits, malformed outcomes).
    pub errors: u64,
}

/// The stage that validates input before the configured stages.
pub const HOST_STAGE: &str = "host";

/// An ordered chain of stage instances with reusable batch buffers.
#[derive(Debug)]
pub struct Chain {
    stages: Vec<StageRunner>,
    counts: Vec<StageCounts>,
    tombstones: Tombstones,
    spare: Vec<Batch>,
}

impl Chain {
    /// A chain running `stages` in order.
    pub fn new(stages: Vec<StageRunner>, tombstones: Tombstones) -> Self {
        let counts = vec![StageCounts::default(); stages.len()];
        Self {
            stages,
            counts,
            tombstones,
            spare: Vec::new(),
        }
    }

    /// Stage names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.stages.iter().map(StageRunner::name).collect()
    }

    /// Per-stage counts since start, in stage order.
    pub fn counts(&self) -> &[StageCounts] {
        &self.counts
    }

    fn builder(&mut self, context: Context) -> BatchBuilder {
        BatchBuilder::reuse(self.spare.pop().unwrap_or_default(), context)
    }

    /// Runs `input` (records of `topic`/`partition`, in offset order)
    /// through every stage. `now_ms` is the host time given to stages.
    pub fn process(
        &mut self,
        topic: &str,
        partition: i32,
        now_ms: i64,
        input: &[RecordAndOffset],
    ) -> ChainOutput {
        let mut out = ChainOutput::default();
        let context = Context {
            now_ms,
            topic: topic.to_owned(),
            partition,
        };
        // Index of the input record behind each record of the current batch.
        let mut sources: Vec<u32> = Vec::with_capacity(input.len());
        let mut dead_marked = vec![false; input.len()];
        let mut b = self.builder(context.clone());
        for (i, r) in input.iter().enumerate() {
            let rec = &r.record;
            let Some(value) = &rec.value else {
                match self.tombstones {
                    Tombstones::Drop => out.dropped += 1,
                    Tombstones::Forward => out.output.push(OutRecord {
                        key: rec.key.clone(),
                        value: None,
                        headers: rec
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                            .collect(),
                        timestamp_ms: rec.timestamp.timestamp_millis(),
                        source_offset: r.offset,
                    }),
                    Tombstones::DeadLetter => dead(
                        &mut out,
                        &mut dead_marked,
                        i,
                        HOST_STAGE,
                        "null value (tombstone)".into(),
                    ),
                }
                continue;
            };
            if let Err(reason) = validate_object(value) {
                dead(&mut out, &mut dead_marked, i, HOST_STAGE, reason);
                continue;
            }
            b.push(
                value,
                rec.key.as_deref(),
                rec.headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_slice())),
                rec.timestamp.timestamp_millis(),
                r.offset,
            );
            sources.push(i as u32);
        }
        let mut batch = b.finish();

        for s in 0..self.stages.len() {
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            self.counts[s].records_in += n as u64;
            let (returned, result) = self.stages[s].process(batch);
            batch = returned;
            let outcomes = result.and_then(|o| {
                let starts = o.check(n).map_err(|problem| StageError::Malformed {
                    stage: self.stages[s].name().to_owned(),
                    problem,
                })?;
                Ok((o, starts))
            });
            let (outcomes, starts) = match outcomes {
                Ok(ok) => ok,
                Err(e) => {
                    if matches!(e, StageError::Malformed { .. }) {
                        self.stages[s].recycle();
                    }
                    let name = self.stages[s].name().to_owned();
                    let reason = e.to_string();
                    for &src in &sources {
                        dead(
                            &mut out,
                            &mut dead_marked,
                            src as usize,
                            &name,
                            reason.clone(),
                        );
                    }
                    self.counts[s].failed += n as u64;
                    self.counts[s].errors += 1;
                    out.stage_errors.push(e);
                    batch.clear();
                    sources.clear();
                    break;
                }
            };
            let name = self.stages[s].name().to_owned();
            let mut next = self.builder(context.clone());
            let mut next_sources = Vec::with_capacity(n);
            let more_stages = s + 1 < self.stages.len();
            for (j, &src) in sources.iter().enumerate() {
                let rec = batch.record(j);
                match outcomes.get(j, &starts) {
                    OutcomeRef::Keep => {
                        next.push(
                            rec.value,
                            rec.key,
                            rec.headers(),
                            rec.timestamp_ms,
                            rec.offset,
                        );
                        next_sources.push(src);
                    }
                    OutcomeRef::Drop => {
                        self.counts[s].dropped += 1;
                    }
                    OutcomeRef::Append(fragment) => {
                        if let Err(problem) = validate_object(fragment) {
                            self.counts[s].failed += 1;
                            let reason = format!(
                                "stage {name} appended something that is not a JSON object: {problem}"
                            );
                            dead(&mut out, &mut dead_marked, src as usize, &name, reason);
                            continue;
                        }
                        next.begin_record(
                            |buf| {
                                json::merge_into(buf, rec.value, fragment)
                                    .expect("both sides were validated as JSON objects");
                            },
                            rec.key,
                            rec.timestamp_ms,
                            rec.offset,
                        );
                        for (k, v) in rec.headers() {
                            next.header(k, v);
                        }
                        next.end_record();
                        next_sources.push(src);
                    }
                    OutcomeRef::Replace(records) => {
                        for new in records {
                            if more_stages && let Err(problem) = validate_object(&new.value) {
                                self.counts[s].failed += 1;
                                let reason = format!(
                                    "stage {name} replaced a record with something that is not a JSON object: {problem}"
                                );
                                dead(&mut out, &mut dead_marked, src as usize, &name, reason);
                                continue;
                            }
                            let key = match &new.key {
                                Some(k) => Some(k.as_slice()),
                                None => rec.key,
                            };
                            next.begin_record(
                                |buf| buf.extend_from_slice(&new.value),
                                key,
                                rec.timestamp_ms,
                                rec.offset,
                            );
                            for (k, v) in rec.headers() {
                                next.header(k, v);
                            }
                            for h in &new.headers {
                                next.header(h.name.as_bytes(), &h.value);
                            }
                            next.end_record();
                            next_sources.push(src);
                        }
                    }
                    OutcomeRef::Fail(reason) => {
                        self.counts[s].failed += 1;
                        dead(
                            &mut out,
                            &mut dead_marked,
                            src as usize,
                            &name,
                            reason.to_owned(),
                        );
                    }
                }
            }
            if !outcomes.side.is_empty() {
                tracing::warn!(stage = %name, records = outcomes.side.len(), "side output records are not supported by a stateless stage; ignored");
            }
            self.counts[s].records_out += next.len() as u64;
            self.spare
                .push(std::mem::replace(&mut batch, next.finish()));
            sources = next_sources;
        }

        // Records whose source already failed are not delivered twice.
        let mut produced = vec![false; input.len()];
        for (j, &src) in sources.iter().enumerate() {
            if dead_marked[src as usize] {
                continue;
            }
            produced[src as usize] = true;
            let rec = batch.record(j);
            out.output.push(OutRecord {
                key: rec.key.map(<[u8]>::to_vec),
                value: Some(rec.value.to_vec()),
                headers: rec
                    .headers()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect(),
                timestamp_ms: rec.timestamp_ms,
                source_offset: rec.offset,
            });
        }
        self.spare.push(batch);
        // An input with a value that reached neither the output nor the
        // dead letters was filtered out by a stage.
        out.dropped += input
            .iter()
            .enumerate()
            .filter(|(i, r)| r.record.value.is_some() && !produced[*i] && !dead_marked[*i])
            .count() as u64;
        out
    }
}

fn dead(out: &mut ChainOutput, marked: &mut [bool], input: usize, stage: &str, reason: String) {
    if std::mem::replace(&mut marked[input], true) {
        return;
    }
    out.dead.push(DeadLetter {
        input,
        stage: stage.to_owned(),
        reason,
    });
}

/// Checks that `value` is a UTF-8 JSON object, saying what is wrong if not.
pub fn validate_object(value: &[u8]) -> Result<(), String> {
    let first = value.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err("value is empty".into()),
        Some(b'{') => {}
        Some(_) => {
            // Say whether it is JSON at all.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
                    Ok(_) => "value is JSON but not an object".into(),
                    Err(e) => format!("value is not JSON: {e}"),
                },
            );
        }
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(value)
        .map(|_| ())
        .map_err(|e| format!("value is not JSON: {e}"))
}
