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

use super::validate::validate_object;
use super::{FailurePolicy, StageError, StageRunner};

/// What happens to records with a null value (Kafka tombstones). They carry
/// no event, so no stage sees them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
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

/// A record for a side output topic (for example window counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideOut {
    /// Destination topic (the stage's `outputs` map).
    pub topic: String,
    /// Key; a compacted topic keeps the last value per key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
}

/// How the chain treats one stage's failures and side outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageRules {
    /// What a stage error does to its batch.
    pub on_error: FailurePolicy,
    /// Side output name -> topic.
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Send every side output to a "topic" named after it, configured or
    /// not (`plugin run`, which prints them).
    pub any_output: bool,
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
    /// Input records dropped because a stage with the `skip` policy failed
    /// on their batch (also counted in `dropped`).
    pub skipped: u64,
    /// Set when a stage with the `stop` policy failed: nothing of this
    /// batch may be delivered, and the pipeline stops.
    pub fatal: Option<StageError>,
    /// Records for side outputs, delivered with the batch.
    pub side: Vec<SideOut>,
    /// State of each stateful stage after this batch (name, snapshot), for
    /// the checkpoint taken with the batch's commit.
    pub state: Vec<(String, Vec<u8>)>,
    /// What each stage did with this batch, in stage order.
    pub stage_counts: Vec<StageCounts>,
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

impl StageCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &StageCounts) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.dropped += other.dropped;
        self.failed += other.failed;
        self.errors += other.errors;
    }

    /// The counts added since `earlier`.
    pub fn since(&self, earlier: &StageCounts) -> StageCounts {
        StageCounts {
            records_in: self.records_in - earlier.records_in,
            records_out: self.records_out - earlier.records_out,
            dropped: self.dropped - earlier.dropped,
            failed: self.failed - earlier.failed,
            errors: self.errors - earlier.errors,
        }
    }
}

/// The stage that validates input before the configured stages.
pub const HOST_STAGE: &str = "host";

/// An ordered chain of stage instances with reusable batch buffers.
#[derive(Debug)]
pub struct Chain {
    stages: Vec<StageRunner>,
    rules: Vec<StageRules>,
    counts: Vec<StageCounts>,
    tombstones: Tombstones,
    spare: Vec<Batch>,
}

impl Chain {
    /// A chain running `stages` in order.
    pub fn new(stages: Vec<StageRunner>, tombstones: Tombstones) -> Self {
        let counts = vec![StageCounts::default(); stages.len()];
        Self {
            rules: vec![StageRules::default(); stages.len()],
            stages,
            counts,
            tombstones,
            spare: Vec::new(),
        }
    }

    /// Sets each stage's rules, in stage order (missing entries keep the
    /// defaults: dead-letter, no side outputs).
    pub fn with_rules(mut self, rules: Vec<StageRules>) -> Self {
        for (slot, r) in self.rules.iter_mut().zip(rules) {
            *slot = r;
        }
        self
    }

    /// True when a stage keeps state (timers, checkpoints, hand-over).
    pub fn is_stateful(&self) -> bool {
        self.stages.iter().any(StageRunner::is_stateful)
    }

    /// Runs every stateful stage's timer with the host's time and returns
    /// the side records it emits. A failing timer is logged; the stage's
    /// instance is rebuilt from its last state.
    pub fn on_timer(&mut self, context: &Context) -> Vec<SideOut> {
        let mut side = Vec::new();
        for s in 0..self.stages.len() {
            match self.stages[s].on_timer(context) {
                Ok(records) => {
                    if let Err(e) = self.route_side(s, records, &mut side) {
                        tracing::warn!(error = %e, "timer output dropped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stage timer failed"),
            }
        }
        side
    }

    /// Snapshots of the stateful stages, by name.
    pub fn snapshot(&mut self) -> Result<Vec<(String, Vec<u8>)>, StageError> {
        let mut states = Vec::new();
        for stage in &mut self.stages {
            if let Some(state) = stage.snapshot()? {
                states.push((stage.name().to_owned(), state));
            }
        }
        Ok(states)
    }

    /// Gives each stateful stage the state saved under its name (stages
    /// without a saved state start empty).
    pub fn restore(&mut self, states: &[(String, Vec<u8>)]) -> Result<(), StageError> {
        for stage in &mut self.stages {
            if let Some((_, state)) = states.iter().find(|(n, _)| n == stage.name()) {
                stage.restore(state)?;
            }
        }
        Ok(())
    }

    /// Maps a stage's side records to topics; an unknown output name is a
    /// malformed outcome.
    fn route_side(
        &self,
        s: usize,
        records: Vec<stage_sdk::batch::SideRecord>,
        into: &mut Vec<SideOut>,
    ) -> Result<(), StageError> {
        for r in records {
            let rules = &self.rules[s];
            let topic = match rules.outputs.get(&r.output) {
                Some(t) => Some(t.clone()),
                None => rules.any_output.then(|| r.output.clone()),
            };
            let Some(topic) = topic else {
                return Err(StageError::Malformed {
                    stage: self.stages[s].name().to_owned(),
                    problem: format!(
                        "side output {:?} is not configured; add `outputs = {{ {} = \"TOPIC\" }}` to the stage",
                        r.output, r.output
                    ),
                });
            };
            into.push(SideOut {
                topic,
                key: r.key,
                value: r.value,
            });
        }
        Ok(())
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
        let before = self.counts.clone();
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
            let (mut outcomes, starts) = match outcomes {
                Ok(ok) => ok,
                Err(e) => {
                    if matches!(e, StageError::Malformed { .. }) {
                        self.stages[s].recycle();
                    }
                    let name = self.stages[s].name().to_owned();
                    self.counts[s].failed += n as u64;
                    self.counts[s].errors += 1;
                    match self.rules[s].on_error {
                        FailurePolicy::DeadLetter => {
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
                        }
                        FailurePolicy::Skip => {
                            // Marked as handled so they are not counted
                            // twice below; they are neither output nor dead.
                            for &src in &sources {
                                if !std::mem::replace(&mut dead_marked[src as usize], true) {
                                    out.skipped += 1;
                                }
                            }
                            out.dropped += out.skipped;
                        }
                        FailurePolicy::Stop => {
                            out.fatal = Some(e);
                            batch.clear();
                            self.spare.push(batch);
                            return out;
                        }
                    }
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
                let side = std::mem::take(&mut outcomes.side);
                if let Err(e) = self.route_side(s, side, &mut out.side) {
                    tracing::warn!(error = %e, "side output records dropped");
                    out.stage_errors.push(e);
                }
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
        if self.is_stateful() {
            match self.snapshot() {
                Ok(state) => out.state = state,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot snapshot a stateful stage; its checkpoint keeps the previous state");
                    out.stage_errors.push(e);
                }
            }
        }
        out.stage_counts = self
            .counts
            .iter()
            .zip(&before)
            .map(|(now, then)| now.since(then))
            .collect();
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
