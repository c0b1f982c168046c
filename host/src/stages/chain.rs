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
//! 3. A stage error (trap, limit, malformed outcomes) discards the stage's
//!    instance. Under the `dead-letter` and `skip` policies the chain then
//!    isolates the records that cause it: it runs the stage again on halves
//!    of the batch until the failing records stand alone, so only they take
//!    the policy and the rest go on (within a bounded amount of extra work;
//!    past it, what is not yet resolved fails as a whole). A time-budget
//!    error is not isolated: each retry could cost the whole budget.
//!
//! Every input record ends up in exactly one place: output (possibly as
//! several records), dead letters, or dropped. [`ChainOutput`] says which.

use stage_sdk::batch::{BatchBuilder, Context, OutcomeRef};
use stage_sdk::{Batch, json};

use super::output::{OutRecord, Output};
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

/// An input record that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index of the record in the input slice.
    pub input: usize,
    /// The stage that failed it (`host` for undecodable input).
    pub stage: String,
    /// Why, as the `pipeline.error.reason` header says it.
    pub reason: String,
    /// The stage failed (a trap, a time or memory limit, a broken
    /// outcome) rather than judged the record: another delivery may
    /// succeed, so a share group releases it instead, up to its delivery
    /// limit.
    pub stage_error: bool,
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
    /// The stage's declared routes (by index) as the pipeline's route
    /// numbers ([`crate::stages::RouteTable`]; 0 is the default output,
    /// [`crate::stages::UNMAPPED`] a name no topic is mapped to).
    pub routes: Vec<u8>,
    /// The names the stage declared, in order (for errors).
    pub route_names: Vec<String>,
}

/// Where the records of one input batch went.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// Records for the output topic: forwarded tombstones, then the last
    /// stage's records in input order.
    pub output: Output,
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
    /// Extra calls made to isolate the records behind stage errors.
    pub isolation_calls: u64,
    /// Records isolated as the cause of a stage error (failed alone).
    pub isolated: u64,
}

impl StageCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &StageCounts) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.dropped += other.dropped;
        self.failed += other.failed;
        self.errors += other.errors;
        self.isolation_calls += other.isolation_calls;
        self.isolated += other.isolated;
    }

    /// The counts added since `earlier`.
    pub fn since(&self, earlier: &StageCounts) -> StageCounts {
        StageCounts {
            records_in: self.records_in - earlier.records_in,
            records_out: self.records_out - earlier.records_out,
            dropped: self.dropped - earlier.dropped,
            failed: self.failed - earlier.failed,
            errors: self.errors - earlier.errors,
            isolation_calls: self.isolation_calls - earlier.isolation_calls,
            isolated: self.isolated - earlier.isolated,
        }
    }
}

/// Most failed calls one batch's isolation may make (each costs a fresh
/// instance): enough to find about ten poison records in a batch of 1,000.
pub const ISOLATION_FAILED_CALLS: usize = 96;

/// Failed calls after which isolation gives up if no call has succeeded
/// yet: a stage that fails on every record costs this many calls, not
/// [`ISOLATION_FAILED_CALLS`] (depth first, the first success comes within
/// about one halving per ten records of a sparse batch).
pub const ISOLATION_PROBE_CALLS: usize = 12;

/// Most records one batch's isolation may give the stage again, as a
/// multiple of the batch's size.
pub const ISOLATION_RECORD_FACTOR: usize = 8;

/// True for the stage errors whose records are worth isolating: those a
/// retry finds quickly (not a time budget, which each retry would spend).
fn isolatable(e: &StageError) -> bool {
    matches!(
        e,
        StageError::Trap { .. }
            | StageError::MemoryLimit { .. }
            | StageError::StackOverflow { .. }
            | StageError::Malformed { .. }
            | StageError::OutputLimit { .. }
            | StageError::UnmappedRoute { .. }
    )
}

/// A stage's checked answer for one batch.
struct Called {
    outcomes: stage_sdk::Outcomes,
    /// Where each record's new records start ([`stage_sdk::Outcomes::check`]).
    starts: Vec<usize>,
    /// Its side records, mapped to topics.
    side: Vec<SideOut>,
}

/// The stage that validates input before the configured stages.
pub const HOST_STAGE: &str = "host";

/// Batches a chain keeps for reuse: one per stage and one for the output
/// in flight is what a steady state needs.
const MAX_SPARE: usize = 8;

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

    /// Takes back the buffers of a delivered batch's output, so the next
    /// batch is built in allocations that already have their size.
    pub fn recycle(&mut self, output: Output) {
        if self.spare.len() < MAX_SPARE {
            self.spare.push(output.into_batch());
        }
    }

    fn builder(&mut self, context: Context) -> BatchBuilder {
        BatchBuilder::reuse(self.spare.pop().unwrap_or_default(), context)
    }

    /// Runs `input` (records of `topic`/`partition`, in offset order)
    /// through every stage. `now_ms` is the host time given to stages.
    pub fn process<R: InputRecord>(
        &mut self,
        topic: &str,
        partition: i32,
        now_ms: i64,
        input: &[R],
    ) -> ChainOutput {
        let before = self.counts.clone();
        let mut pass = Pass::new(
            Context {
                now_ms,
                topic: topic.to_owned(),
                partition,
            },
            input.len(),
        );
        let mut batch = self.admit(&mut pass, input);
        for s in 0..self.stages.len() {
            if batch.is_empty() {
                break;
            }
            match self.run_stage(s, batch, &mut pass) {
                Step::Next(next) => batch = next,
                Step::Failed(emptied) => {
                    batch = emptied;
                    break;
                }
                Step::Stop(emptied) => {
                    self.spare.push(emptied);
                    return pass.out;
                }
            }
        }
        self.emit(&mut pass, batch, input);
        pass.out.stage_counts = self
            .counts
            .iter()
            .zip(&before)
            .map(|(now, then)| now.since(then))
            .collect();
        pass.out
    }

    /// Step 1: validates each input record; tombstones follow the
    /// [`Tombstones`] policy, anything not a JSON object becomes a dead
    /// letter of stage `host`, and the rest is the first stage's batch.
    fn admit<R: InputRecord>(&mut self, pass: &mut Pass, input: &[R]) -> Batch {
        let mut b = self.builder(pass.context.clone());
        for (i, r) in input.iter().enumerate() {
            if let Some(reason) = r.rejected() {
                pass.dead(i, HOST_STAGE, reason.to_owned());
                continue;
            }
            let Some(value) = r.value() else {
                match self.tombstones {
                    Tombstones::Drop => pass.out.dropped += 1,
                    Tombstones::Forward => pass.out.output.push_owned(OutRecord {
                        key: r.key().map(<[u8]>::to_vec),
                        value: None,
                        headers: r.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                        timestamp_ms: r.timestamp_ms(),
                        source_offset: r.offset(),
                    }),
                    Tombstones::DeadLetter => {
                        pass.dead(i, HOST_STAGE, "null value (tombstone)".into())
                    }
                }
                continue;
            };
            if let Err(reason) = validate_object(value) {
                pass.dead(i, HOST_STAGE, reason);
                continue;
            }
            b.push(value, r.key(), r.headers(), r.timestamp_ms(), r.offset());
            pass.sources.push(i as u32);
        }
        b.finish()
    }

    /// Step 2: stage `s` over `batch`; its outcomes make the next batch.
    /// When the stage fails on the batch as a whole and its policy lets the
    /// batch go on, the records that make it fail are isolated
    /// ([`Chain::isolate`]): only they take the policy.
    fn run_stage(&mut self, s: usize, batch: Batch, pass: &mut Pass) -> Step {
        let n = batch.len();
        self.counts[s].records_in += n as u64;
        let (mut batch, result) = self.call_stage(s, batch);
        match result {
            Ok(called) if keeps_all(&called) => {
                // Every record kept (a router, a pure observer): the batch
                // goes on as it is, only its routes change.
                let routes = std::mem::take(&mut pass.routes);
                let bits = &self.rules[s].routes;
                let mut to = Next {
                    sources: std::mem::take(&mut pass.sources),
                    routes: Vec::new(),
                };
                for j in 0..n {
                    to.route_one(j, record_routes(&called.outcomes, j, &routes, bits));
                }
                self.counts[s].records_out += n as u64;
                pass.out.side.extend(called.side);
                pass.sources = to.sources;
                pass.routes = to.routes;
                Step::Next(batch)
            }
            Ok(called) => {
                let mut next = self.builder(pass.context.clone());
                let mut to = Next {
                    sources: Vec::with_capacity(n),
                    routes: Vec::new(),
                };
                let sources = std::mem::take(&mut pass.sources);
                let routes = std::mem::take(&mut pass.routes);
                self.apply(
                    s,
                    &batch,
                    (&sources, &routes),
                    called,
                    &mut next,
                    &mut to,
                    pass,
                );
                self.counts[s].records_out += next.len() as u64;
                self.spare.push(batch);
                pass.sources = to.sources;
                pass.routes = to.routes;
                Step::Next(next.finish())
            }
            Err(e) if n > 1 && isolatable(&e) && self.rules[s].on_error != FailurePolicy::Stop => {
                self.isolate(s, batch, e, pass)
            }
            Err(e) => {
                batch.clear();
                self.stage_failed(s, e, batch, pass)
            }
        }
    }

    /// Calls stage `s` on `batch` and checks what it returned: one outcome
    /// per record, within the output limit, side records only to outputs
    /// it was given (else the batch fails under the stage's policy, before
    /// any of its outcomes count). The batch comes back unchanged.
    fn call_stage(&mut self, s: usize, batch: Batch) -> (Batch, Result<Called, StageError>) {
        let n = batch.len();
        let (batch, result) = self.stages[s].process(batch);
        let checked = result.and_then(|mut o| {
            let starts = o.check(n).map_err(|problem| StageError::Malformed {
                stage: self.stages[s].name().to_owned(),
                problem,
            })?;
            if let Some(limit) = self.stages[s].output_limit()
                && o.made_bytes(&batch, &starts) > limit as u64
            {
                return Err(StageError::OutputLimit {
                    stage: self.stages[s].name().to_owned(),
                    limit,
                });
            }
            let rules = &self.rules[s];
            let declared = rules.routes.len();
            for &r in &o.routes {
                match rules.routes.get(usize::from(r)) {
                    None => {
                        return Err(StageError::Malformed {
                            stage: self.stages[s].name().to_owned(),
                            problem: format!(
                                "routed a record to route {r}, but it declared {declared} route(s)"
                            ),
                        });
                    }
                    Some(&super::UNMAPPED) => {
                        return Err(StageError::UnmappedRoute {
                            stage: self.stages[s].name().to_owned(),
                            route: rules
                                .route_names
                                .get(usize::from(r))
                                .cloned()
                                .unwrap_or_else(|| r.to_string()),
                        });
                    }
                    Some(_) => {}
                }
            }
            let mut side = Vec::new();
            if !o.side.is_empty() {
                self.route_side(s, std::mem::take(&mut o.side), &mut side)?;
            }
            Ok(Called {
                outcomes: o,
                starts,
                side,
            })
        });
        if let Err(StageError::Malformed { .. } | StageError::OutputLimit { .. }) = &checked {
            // The instance broke the contract: the next call gets a fresh one.
            self.stages[s].recycle();
        }
        (batch, checked)
    }

    /// Adds what stage `s` made of `batch` (whose records came from inputs
    /// `sources`) to the next stage's batch: kept and appended records,
    /// replacements, dead letters of failed records, and side records.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        s: usize,
        batch: &Batch,
        (sources, routes): (&[u32], &[u64]),
        called: Called,
        next: &mut BatchBuilder,
        to: &mut Next,
        pass: &mut Pass,
    ) {
        let Called {
            outcomes,
            starts,
            side,
        } = called;
        let name = self.stages[s].name().to_owned();
        let more_stages = s + 1 < self.stages.len();
        let route_bits = &self.rules[s].routes;
        for (j, &src) in sources.iter().enumerate() {
            let rec = batch.record(j);
            let src_index = src as usize;
            let mask = record_routes(&outcomes, j, routes, route_bits);
            let next_sources = &mut to.sources;
            let before = next_sources.len();
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
                OutcomeRef::Drop => self.counts[s].dropped += 1,
                OutcomeRef::Append(fragment) => {
                    if let Err(problem) = validate_object(fragment) {
                        self.counts[s].failed += 1;
                        let reason = format!(
                            "stage {name} appended something that is not a JSON object: {problem}"
                        );
                        dead(
                            &mut pass.out,
                            &mut pass.dead_marked,
                            src_index,
                            &name,
                            reason,
                            false,
                        );
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
                            dead(
                                &mut pass.out,
                                &mut pass.dead_marked,
                                src_index,
                                &name,
                                reason,
                                false,
                            );
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
                        &mut pass.out,
                        &mut pass.dead_marked,
                        src_index,
                        &name,
                        reason.to_owned(),
                        false,
                    );
                }
            }
            to.route(before, mask);
        }
        pass.out.side.extend(side);
    }

    /// Stage `s` failed on `batch` as a whole with `first`: finds the
    /// records that make it fail by calling it again on halves of the batch
    /// (each failure gives the stage a fresh instance with its last state),
    /// depth first so outcomes stay in input order. The records that fail
    /// alone take the stage's policy with their own error; the rest go on.
    ///
    /// The work is bounded: at most [`ISOLATION_FAILED_CALLS`] failed calls
    /// ([`ISOLATION_PROBE_CALLS`] while none has succeeded) and
    /// [`ISOLATION_RECORD_FACTOR`] times the batch in records given again.
    /// Past that, the parts not yet resolved fail as a whole, as a batch
    /// did before isolation.
    fn isolate(&mut self, s: usize, mut batch: Batch, first: StageError, pass: &mut Pass) -> Step {
        let n = batch.len();
        let name = self.stages[s].name().to_owned();
        let sources = std::mem::take(&mut pass.sources);
        let routes = std::mem::take(&mut pass.routes);
        let mut next = self.builder(pass.context.clone());
        let mut to = Next {
            sources: Vec::with_capacity(n),
            routes: Vec::new(),
        };
        let mut failed_calls = 0usize;
        let mut records_left = ISOLATION_RECORD_FACTOR * n;
        let mut culprits = 0u64;
        let mut succeeded = 0usize;
        let calls_before = self.counts[s].isolation_calls;
        let mut unresolved = 0u64;
        // Ranges of the failed batch still to run, the next one last.
        let mut todo = vec![n / 2..n, 0..n / 2];
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let hopeless = succeeded == 0 && failed_calls >= ISOLATION_PROBE_CALLS;
            if hopeless || failed_calls >= ISOLATION_FAILED_CALLS || records_left < range.len() {
                // The budget is spent: what is left fails as a whole.
                unresolved += range.len() as u64;
                self.fail_records(s, &sources[range], &first, pass);
                continue;
            }
            self.counts[s].isolation_calls += 1;
            records_left = records_left.saturating_sub(range.len());
            let part = self.part(&batch, range.clone(), &pass.context);
            let (part, result) = self.call_stage(s, part);
            match result {
                Ok(called) => {
                    succeeded += 1;
                    let from = &sources[range.clone()];
                    let had = routes.get(range.clone()).unwrap_or_default();
                    self.apply(s, &part, (from, had), called, &mut next, &mut to, pass);
                    self.spare.push(part);
                    if self.stages[s].is_stateful() {
                        // A later failure discards the instance: the fresh
                        // one must start from the state after this part,
                        // not before the batch.
                        if let Err(e) = self.stages[s].snapshot() {
                            tracing::warn!(stage = %name, error = %e, "cannot snapshot a stateful stage while isolating a failure");
                        }
                    }
                }
                Err(e) => {
                    self.spare.push(part);
                    failed_calls += 1;
                    if range.len() == 1 {
                        culprits += 1;
                        self.fail_records(s, &sources[range], &e, pass);
                    } else {
                        let mid = range.start + range.len() / 2;
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                    }
                }
            }
        }
        let isolation_calls = self.counts[s].isolation_calls - calls_before;
        tracing::warn!(stage = %name, records = n, culprits, unresolved, failed_calls, isolation_calls, error = %first, "stage failed on a batch: its failing records were isolated, the others go on");
        self.counts[s].errors += 1;
        self.counts[s].isolated += culprits;
        self.counts[s].records_out += next.len() as u64;
        pass.out.stage_errors.push(first);
        batch.clear();
        self.spare.push(batch);
        pass.sources = to.sources;
        pass.routes = to.routes;
        Step::Next(next.finish())
    }

    /// Rows `range` of `batch` as a batch of their own.
    fn part(&mut self, batch: &Batch, range: std::ops::Range<usize>, context: &Context) -> Batch {
        let mut b = self.builder(context.clone());
        for j in range {
            let r = batch.record(j);
            b.push(r.value, r.key, r.headers(), r.timestamp_ms, r.offset);
        }
        b.finish()
    }

    /// Inputs `sources` take stage `s`'s failure policy (dead letters with
    /// `e` as reason, or skipped).
    fn fail_records(&mut self, s: usize, sources: &[u32], e: &StageError, pass: &mut Pass) {
        let name = self.stages[s].name().to_owned();
        self.counts[s].failed += sources.len() as u64;
        match self.rules[s].on_error {
            FailurePolicy::Skip => {
                let mut skipped = 0;
                for &src in sources {
                    if !std::mem::replace(&mut pass.dead_marked[src as usize], true) {
                        skipped += 1;
                    }
                }
                pass.out.skipped += skipped;
                pass.out.dropped += skipped;
            }
            _ => {
                let reason = e.to_string();
                for &src in sources {
                    pass.dead_of_failed_stage(src as usize, &name, reason.clone());
                }
            }
        }
    }

    /// A stage error on a whole batch that is not isolated: its records go
    /// where the stage's `on_error` policy says.
    fn stage_failed(&mut self, s: usize, e: StageError, emptied: Batch, pass: &mut Pass) -> Step {
        self.counts[s].errors += 1;
        if self.rules[s].on_error == FailurePolicy::Stop {
            self.counts[s].failed += pass.sources.len() as u64;
            pass.out.fatal = Some(e);
            return Step::Stop(emptied);
        }
        let sources = std::mem::take(&mut pass.sources);
        self.fail_records(s, &sources, &e, pass);
        pass.out.stage_errors.push(e);
        Step::Failed(emptied)
    }

    /// Step 3: what the last stage passed on becomes output (unless its
    /// input record already failed), the stateful stages' state is taken,
    /// and every input that went nowhere is counted as dropped.
    fn emit<R: InputRecord>(&mut self, pass: &mut Pass, batch: Batch, input: &[R]) {
        // Records whose source already failed are not delivered twice. The
        // batch itself becomes the output: no record is copied out of it.
        let mut produced = vec![false; input.len()];
        let mut rows = Vec::with_capacity(pass.sources.len());
        let mut routes = Vec::new();
        for (j, &src) in pass.sources.iter().enumerate() {
            if pass.dead_marked[src as usize] {
                continue;
            }
            produced[src as usize] = true;
            rows.push(j as u32);
            if !pass.routes.is_empty() {
                routes.push(pass.routes.get(j).copied().unwrap_or(0));
            }
        }
        pass.out.output.set_batch(batch, rows, routes);
        if self.is_stateful() {
            match self.snapshot() {
                Ok(state) => pass.out.state = state,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot snapshot a stateful stage; its checkpoint keeps the previous state");
                    pass.out.stage_errors.push(e);
                }
            }
        }
        // An input with a value that reached neither the output nor the
        // dead letters was filtered out by a stage.
        pass.out.dropped += input
            .iter()
            .enumerate()
            .filter(|(i, r)| r.value().is_some() && !produced[*i] && !pass.dead_marked[*i])
            .count() as u64;
    }
}

/// One input record as the chain reads it, whatever decoded it (the
/// source implements it for the Kafka client's records).
pub trait InputRecord {
    /// The key.
    fn key(&self) -> Option<&[u8]>;
    /// The value; `None` for a tombstone.
    fn value(&self) -> Option<&[u8]>;
    /// The headers, in record order.
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
    /// The record timestamp, milliseconds since the Unix epoch.
    fn timestamp_ms(&self) -> i64;
    /// The record's offset in its partition.
    fn offset(&self) -> i64;
    /// Why the record cannot reach the stages (its value or key did not
    /// decode from the input's format): it becomes a dead letter of stage
    /// `host` with this reason.
    fn rejected(&self) -> Option<&str> {
        None
    }
}

/// The state of one [`Chain::process`] call.
struct Pass {
    out: ChainOutput,
    context: Context,
    /// Input records already failed (or skipped): never delivered.
    dead_marked: Vec<bool>,
    /// Index of the input record behind each record of the current batch.
    sources: Vec<u32>,
    /// The routes of each record of the current batch (a bit per route
    /// number, 0: the default output); shorter than `sources` (often
    /// empty) where the rest have none.
    routes: Vec<u64>,
}

/// Where the records a stage passes on came from, and their routes, as
/// [`Pass::sources`] and [`Pass::routes`] of the next stage.
struct Next {
    sources: Vec<u32>,
    routes: Vec<u64>,
}

/// The routes of record `j` after a stage: the ones the stage gave it (its
/// route indexes as the pipeline's numbers `bits`), else those it came
/// with (`had`).
fn record_routes(outcomes: &stage_sdk::Outcomes, j: usize, had: &[u64], bits: &[u8]) -> u64 {
    let given = outcomes.routes_of(j);
    if given.is_empty() {
        return had.get(j).copied().unwrap_or(0);
    }
    given
        .iter()
        .fold(0u64, |m, &r| m | 1 << bits[usize::from(r)])
}

/// True when a stage kept every record of its batch, with nothing to
/// append or replace.
fn keeps_all(called: &Called) -> bool {
    called
        .outcomes
        .verdicts
        .iter()
        .all(|v| *v == stage_sdk::batch::Verdict::Keep)
}

impl Next {
    /// Record `j` of a batch passed on whole carries routes `mask`.
    fn route_one(&mut self, j: usize, mask: u64) {
        if mask == 0 && self.routes.is_empty() {
            return;
        }
        self.routes.resize(j, 0);
        self.routes.push(mask);
    }

    /// The records pushed since `before` carry routes `mask`; the routes
    /// column starts with the first routed record.
    fn route(&mut self, before: usize, mask: u64) {
        let after = self.sources.len();
        if after == before || (mask == 0 && self.routes.is_empty()) {
            return;
        }
        self.routes.resize(before, 0);
        self.routes.resize(after, mask);
    }
}

impl Pass {
    fn new(context: Context, inputs: usize) -> Self {
        Self {
            out: ChainOutput::default(),
            context,
            dead_marked: vec![false; inputs],
            sources: Vec::with_capacity(inputs),
            routes: Vec::new(),
        }
    }

    /// Makes input `input` a dead letter of `stage` (once).
    fn dead(&mut self, input: usize, stage: &str, reason: String) {
        dead(
            &mut self.out,
            &mut self.dead_marked,
            input,
            stage,
            reason,
            false,
        );
    }

    /// [`Pass::dead`] for an input its stage failed on (a stage error, not
    /// a verdict): [`DeadLetter::stage_error`].
    fn dead_of_failed_stage(&mut self, input: usize, stage: &str, reason: String) {
        dead(
            &mut self.out,
            &mut self.dead_marked,
            input,
            stage,
            reason,
            true,
        );
    }
}

/// How a stage's turn ended.
enum Step {
    /// Its outcomes: the next stage's batch.
    Next(Batch),
    /// It failed the batch (dead letters or skipped); no later stage runs.
    Failed(Batch),
    /// It failed under the `stop` policy: nothing of the batch is delivered.
    Stop(Batch),
}

fn dead(
    out: &mut ChainOutput,
    marked: &mut [bool],
    input: usize,
    stage: &str,
    reason: String,
    stage_error: bool,
) {
    if std::mem::replace(&mut marked[input], true) {
        return;
    }
    out.dead.push(DeadLetter {
        input,
        stage: stage.to_owned(),
        reason,
        stage_error,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use stage_sdk::Outcome;
    use stage_sdk::batch::{OutcomesBuilder, SideRecord};

    use super::*;
    use crate::stages::StageRunner;

    /// An input record of a test: value `{"n":N}` (or `{"n":N,"poison":1}`)
    /// at offset N.
    struct Input(Vec<u8>, i64);

    impl InputRecord for Input {
        fn key(&self) -> Option<&[u8]> {
            None
        }
        fn value(&self) -> Option<&[u8]> {
            Some(&self.0)
        }
        fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
            std::iter::empty()
        }
        fn timestamp_ms(&self) -> i64 {
            0
        }
        fn offset(&self) -> i64 {
            self.1
        }
    }

    fn inputs(n: usize, poison: impl Fn(usize) -> bool) -> Vec<Input> {
        (0..n)
            .map(|i| {
                let v = if poison(i) {
                    format!(r#"{{"n":{i},"poison":1}}"#)
                } else {
                    format!(r#"{{"n":{i}}}"#)
                };
                Input(v.into_bytes(), i as i64)
            })
            .collect()
    }

    /// A stage that traps on any batch holding a poison record and keeps
    /// every record otherwise; `calls` counts its calls.
    fn trapping(calls: Arc<AtomicUsize>) -> StageRunner {
        StageRunner::Scripted(
            "trapper".into(),
            Box::new(move |b: &Batch| {
                calls.fetch_add(1, Ordering::Relaxed);
                if b.records().any(|r| r.field("poison").is_some()) {
                    return Err(StageError::Trap {
                        stage: "trapper".into(),
                        message: "poison".into(),
                    });
                }
                let mut o = OutcomesBuilder::with_capacity(b.len());
                for _ in 0..b.len() {
                    o.push(Outcome::Keep);
                }
                Ok(o.finish())
            }),
        )
    }

    fn chain(stages: Vec<StageRunner>, on_error: FailurePolicy) -> Chain {
        let rules = stages
            .iter()
            .map(|_| StageRules {
                on_error,
                ..Default::default()
            })
            .collect();
        Chain::new(stages, Tombstones::Drop).with_rules(rules)
    }

    fn offsets(out: &ChainOutput) -> Vec<i64> {
        out.output.iter().map(|r| r.source_offset).collect()
    }

    #[test]
    fn one_poison_record_of_a_thousand_is_the_only_dead_letter() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = chain(vec![trapping(calls.clone())], FailurePolicy::DeadLetter);
        let input = inputs(1000, |i| i == 617);
        let out = c.process("t", 0, 0, &input);
        assert_eq!(out.dead.len(), 1);
        assert_eq!(out.dead[0].input, 617);
        assert!(
            out.dead[0].reason.contains("trapped: poison"),
            "{}",
            out.dead[0].reason
        );
        assert!(out.dead[0].stage_error, "a trap is the stage's failure");
        let expected: Vec<i64> = (0..1000).filter(|i| *i != 617).collect();
        assert_eq!(offsets(&out), expected, "the good records go on, in order");
        let counts = &out.stage_counts[0];
        assert_eq!((counts.isolated, counts.failed, counts.errors), (1, 1, 1));
        // A binary search: two calls per halving.
        assert!(calls.load(Ordering::Relaxed) <= 2 * 10 + 1, "{calls:?}");
    }

    #[test]
    fn ten_poison_records_are_each_isolated() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = chain(vec![trapping(calls.clone())], FailurePolicy::DeadLetter);
        let poison = |i: usize| i % 97 == 13 && i < 970;
        let input = inputs(1000, poison);
        let out = c.process("t", 0, 0, &input);
        let dead: Vec<usize> = out.dead.iter().map(|d| d.input).collect();
        let expected: Vec<usize> = (0..1000).filter(|i| poison(*i)).collect();
        assert_eq!(expected.len(), 10);
        assert_eq!(dead, expected);
        assert_eq!(out.output.len(), 990);
        assert_eq!(out.stage_counts[0].isolated, 10);
    }

    #[test]
    fn a_stage_failing_on_every_record_gives_up_within_its_budget() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = chain(vec![trapping(calls.clone())], FailurePolicy::DeadLetter);
        let input = inputs(1000, |_| true);
        let out = c.process("t", 0, 0, &input);
        assert_eq!(out.dead.len(), 1000, "every record is a dead letter");
        assert_eq!(out.output.len(), 0);
        let made = calls.load(Ordering::Relaxed);
        assert!(made <= ISOLATION_PROBE_CALLS + 1, "{made} calls");
        // Records given again: at most the budget.
        assert!(out.stage_counts[0].isolation_calls as usize <= ISOLATION_FAILED_CALLS);
    }

    #[test]
    fn isolation_under_skip_drops_only_the_culprit() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = chain(vec![trapping(calls)], FailurePolicy::Skip);
        let input = inputs(100, |i| i == 3);
        let out = c.process("t", 0, 0, &input);
        assert!(out.dead.is_empty());
        assert_eq!((out.skipped, out.dropped), (1, 1));
        assert_eq!(out.output.len(), 99);
    }

    #[test]
    fn a_stop_policy_is_not_isolated() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = chain(vec![trapping(calls.clone())], FailurePolicy::Stop);
        let out = c.process("t", 0, 0, &inputs(100, |i| i == 3));
        assert!(out.fatal.is_some());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_side_record_to_an_unknown_output_fails_the_batch() {
        let stage = StageRunner::Scripted(
            "sider".into(),
            Box::new(|b: &Batch| {
                let mut o = OutcomesBuilder::with_capacity(b.len());
                for _ in 0..b.len() {
                    o.push(Outcome::Keep);
                }
                o.side(SideRecord {
                    output: "nowhere".into(),
                    key: None,
                    value: b"{}".to_vec(),
                });
                Ok(o.finish())
            }),
        );
        let mut c = chain(vec![stage], FailurePolicy::DeadLetter);
        let out = c.process("t", 0, 0, &inputs(1, |_| false));
        assert!(out.side.is_empty());
        assert_eq!(out.output.len(), 0, "nothing of the batch goes on");
        assert_eq!(out.dead.len(), 1);
        assert!(
            out.dead[0]
                .reason
                .contains("side output \"nowhere\" is not configured")
        );
    }

    /// A `fail` verdict is the stage's judgement, not its failure: its dead
    /// letter is not marked as a stage error (a share group rejects it
    /// instead of delivering it again).
    #[test]
    fn a_fail_verdict_is_not_a_stage_error() {
        let mut c = chain(
            vec![deciding("judge", |_| Outcome::fail("bad"))],
            FailurePolicy::DeadLetter,
        );
        let out = c.process("t", 0, 0, &inputs(2, |_| false));
        assert_eq!(out.dead.len(), 2);
        assert!(out.dead.iter().all(|d| !d.stage_error && d.reason == "bad"));
    }

    /// A stage that answers every record with `decide(record index)`,
    /// declaring route numbers `routes` (its route i is the pipeline's
    /// route routes[i]).
    fn deciding(name: &str, decide: impl Fn(usize) -> Outcome + Send + 'static) -> StageRunner {
        StageRunner::Scripted(
            name.into(),
            Box::new(move |b: &Batch| {
                let mut o = OutcomesBuilder::with_capacity(b.len());
                for r in b.records() {
                    let n = r.field("n").and_then(|v| v.as_i64()).unwrap_or(0);
                    o.push(decide(n as usize));
                }
                Ok(o.finish())
            }),
        )
    }

    fn routed_chain(stages: Vec<(StageRunner, Vec<u8>)>, on_error: FailurePolicy) -> Chain {
        let rules = stages
            .iter()
            .map(|(_, routes)| StageRules {
                on_error,
                routes: routes.clone(),
                ..StageRules::default()
            })
            .collect();
        Chain::new(
            stages.into_iter().map(|(s, _)| s).collect(),
            Tombstones::Drop,
        )
        .with_rules(rules)
    }

    fn routes_by_offset(out: &ChainOutput) -> Vec<(i64, u64)> {
        (0..out.output.len())
            .map(|i| (out.output.get(i).source_offset, out.output.routes_of(i)))
            .collect()
    }

    #[test]
    fn routes_follow_records_through_later_stages_and_fan_out() {
        use stage_sdk::{Fields, Replacement, Route};
        // Stage 1 routes n % 3 == 1 to its route 0 (pipeline route 2), and
        // n % 3 == 2 to both its routes (2 and 0, the default: fan-out).
        let first = deciding("router", |n| match n % 3 {
            1 => Outcome::Keep.to(Route::at(0)),
            2 => Outcome::Keep.to(Route::at(0)).to(Route::at(1)),
            _ => Outcome::Keep,
        });
        // Stage 2 appends to every record, replaces n == 4 with two
        // records, and re-routes n == 7 to pipeline route 1.
        let second = deciding("enrich", |n| match n {
            4 => Outcome::Replace(vec![
                Replacement::value(br#"{"a":1}"#.to_vec()),
                Replacement::value(br#"{"a":2}"#.to_vec()),
            ]),
            7 => Outcome::Append(Fields::new().int("x", 1)).to(Route::at(0)),
            _ => Outcome::Append(Fields::new().int("x", 1)),
        });
        let mut chain = routed_chain(
            vec![(first, vec![2, 0]), (second, vec![1])],
            FailurePolicy::DeadLetter,
        );
        let out = chain.process("t", 0, 0, &inputs(9, |_| false));
        assert_eq!(
            routes_by_offset(&out),
            [
                (0, 0),
                (1, 0b100),
                (2, 0b101),
                (3, 0),
                (4, 0b100),
                (4, 0b100),
                (5, 0b101),
                (6, 0),
                (7, 0b010),
                (8, 0b101),
            ]
        );
        // A batch nobody routes keeps no route column at all.
        let mut plain = routed_chain(
            vec![(deciding("keep", |_| Outcome::Keep), vec![])],
            FailurePolicy::DeadLetter,
        );
        let out = plain.process("t", 0, 0, &inputs(3, |_| false));
        assert!(routes_by_offset(&out).iter().all(|(_, r)| *r == 0));
    }

    #[test]
    fn a_route_the_stage_did_not_declare_fails_the_batch_under_its_policy() {
        use stage_sdk::Route;
        let routing = || deciding("router", |_| Outcome::Keep.to(Route::at(1)));
        let mut chain = routed_chain(vec![(routing(), vec![0])], FailurePolicy::DeadLetter);
        let out = chain.process("t", 0, 0, &inputs(4, |_| false));
        assert_eq!(out.output.len(), 0);
        assert_eq!(out.dead.len(), 4);
        assert!(
            out.dead[0].reason.contains("declared 1 route"),
            "{}",
            out.dead[0].reason
        );
        let mut chain = routed_chain(vec![(routing(), vec![0])], FailurePolicy::Skip);
        let out = chain.process("t", 0, 0, &inputs(4, |_| false));
        assert_eq!((out.output.len(), out.dead.len(), out.skipped), (0, 0, 4));
        let mut chain = routed_chain(vec![(routing(), vec![0])], FailurePolicy::Stop);
        let out = chain.process("t", 0, 0, &inputs(4, |_| false));
        assert!(out.fatal.is_some());
    }

    #[test]
    fn records_routed_where_no_topic_is_mapped_are_isolated_dead_letters() {
        use stage_sdk::Route;
        // Odd records go to route 0, declared but not mapped.
        let stage = deciding("router", |n| {
            if n % 2 == 1 {
                Outcome::Keep.to(Route::at(0))
            } else {
                Outcome::Keep
            }
        });
        let mut chain = Chain::new(vec![stage], Tombstones::Drop).with_rules(vec![StageRules {
            routes: vec![crate::stages::UNMAPPED],
            route_names: vec!["nowhere".into()],
            ..StageRules::default()
        }]);
        let out = chain.process("t", 0, 0, &inputs(6, |_| false));
        assert_eq!(offsets(&out), [0, 2, 4]);
        let dead: Vec<usize> = out.dead.iter().map(|d| d.input).collect();
        assert_eq!(dead, [1, 3, 5]);
        assert!(
            out.dead[0].reason.contains("nowhere"),
            "{}",
            out.dead[0].reason
        );
    }
}
