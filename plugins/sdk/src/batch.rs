//! The columnar batch and outcome types of the contract (`wit/stage.wit`),
//! as plain Rust structs shared by the guest glue and the host.
//!
//! Field for field these mirror the WIT records, so the guest and the host
//! convert to and from their generated bindings by moving vectors, never by
//! copying records. Everything that knows how records are laid out in the
//! columns lives here: [`BatchBuilder`] writes them, [`Batch::record`]
//! reads them, [`OutcomesBuilder`] and [`Outcomes::get`] do the same for
//! outcomes.

use std::ops::Range;

/// Moves a batch between two struct types with the fields of the WIT
/// `batch` record (the SDK's [`Batch`], and the bindings generated for the
/// guest and the host). One field list for every conversion.
#[doc(hidden)]
#[macro_export]
macro_rules! move_batch {
    ($b:expr => $Batch:ty, $Context:ty) => {{
        type B = $Batch;
        type C = $Context;
        let b = $b;
        B {
            context: C {
                now_ms: b.context.now_ms,
                topic: b.context.topic,
                partition: b.context.partition,
            },
            values: b.values,
            value_ends: b.value_ends,
            keys: b.keys,
            key_ends: b.key_ends,
            key_null: b.key_null,
            header_data: b.header_data,
            header_ends: b.header_ends,
            header_index: b.header_index,
            timestamps: b.timestamps,
            offsets: b.offsets,
        }
    }};
}

/// Moves outcomes between two families of types with the shape of the WIT
/// `outcomes` record and its parts, like [`move_batch!`](crate::move_batch).
#[doc(hidden)]
#[macro_export]
macro_rules! move_outcomes {
    ($o:expr, $From:ty => $Outcomes:ty, $Verdict:ty, $NewRecord:ty, $Header:ty, $SideRecord:ty) => {{
        type From = $From;
        type To = $Verdict;
        type O = $Outcomes;
        type N = $NewRecord;
        type H = $Header;
        type S = $SideRecord;
        let o = $o;
        O {
            verdicts: o
                .verdicts
                .into_iter()
                .map(|v| match v {
                    From::Keep => To::Keep,
                    From::Drop => To::Drop,
                    From::Append => To::Append,
                    From::Replace => To::Replace,
                    From::Fail => To::Fail,
                })
                .collect(),
            data: o.data,
            data_ends: o.data_ends,
            replacements: o
                .replacements
                .into_iter()
                .map(|r| N {
                    input: r.input,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|h| H {
                            name: h.name,
                            value: h.value,
                        })
                        .collect(),
                })
                .collect(),
            side: o
                .side
                .into_iter()
                .map(|s| S {
                    output: s.output,
                    key: s.key,
                    value: s.value,
                })
                .collect(),
            route_ends: o.route_ends,
            routes: o.routes,
        }
    }};
}

/// Facts about a batch decided by the host (`batch-context` in WIT).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Host wall-clock time in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
}

/// A batch of records in columnar form (`batch` in WIT).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is documented in wit/stage.wit
pub struct Batch {
    pub context: Context,
    pub values: Vec<u8>,
    pub value_ends: Vec<u32>,
    pub keys: Vec<u8>,
    pub key_ends: Vec<u32>,
    pub key_null: Vec<bool>,
    pub header_data: Vec<u8>,
    pub header_ends: Vec<u32>,
    pub header_index: Vec<u32>,
    pub timestamps: Vec<i64>,
    pub offsets: Vec<i64>,
}

/// One record of a [`Batch`], borrowed from its columns.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// The value: a valid JSON object when it comes from the host.
    pub value: &'a [u8],
    /// The key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Kafka timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Source offset.
    pub offset: i64,
    batch: &'a Batch,
    headers: Range<usize>,
}

impl<'a> Record<'a> {
    /// Value of the top-level JSON member `name`, found without parsing the
    /// rest of the event.
    pub fn field(&self, name: &str) -> Option<crate::json::Raw<'a>> {
        crate::json::field(self.value, name)
    }

    /// [`Record::field`] for a member usually near the end of the event,
    /// such as one an earlier stage appended ([`crate::json::field_near_end`]).
    pub fn field_near_end(&self, name: &str) -> Option<crate::json::Raw<'a>> {
        crate::json::field_near_end(self.value, name)
    }

    /// The record's headers as (name, value) pairs.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let b = self.batch;
        self.headers.clone().map(move |h| b.header(h))
    }

    /// The range of this record's entries among the batch's headers (for
    /// [`Batch::header`]).
    pub fn header_entries(&self) -> Range<usize> {
        self.headers.clone()
    }
}

fn span(ends: &[u32], i: usize) -> Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    start..ends[i] as usize
}

impl Batch {
    /// Header entry `h` of the batch as (name, value): entry `h`'s name
    /// ends at `header_ends[2h]` and its value at `header_ends[2h + 1]`.
    pub fn header(&self, h: usize) -> (&[u8], &[u8]) {
        let start = if h == 0 {
            0
        } else {
            self.header_ends[2 * h - 1] as usize
        };
        let mid = self.header_ends[2 * h] as usize;
        let end = self.header_ends[2 * h + 1] as usize;
        (&self.header_data[start..mid], &self.header_data[mid..end])
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Checks that every column has the length the record count implies and
    /// that every end lies inside its buffer, so [`Batch::record`] cannot
    /// panic. Returns a description of the first problem.
    pub fn check(&self) -> Result<(), String> {
        let n = self.len();
        let lens = [
            ("value-ends", self.value_ends.len()),
            ("key-ends", self.key_ends.len()),
            ("key-null", self.key_null.len()),
            ("header-index", self.header_index.len()),
            ("timestamps", self.timestamps.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(format!("{name} has {len} entries for {n} records"));
            }
        }
        monotonic("value-ends", &self.value_ends, self.values.len())?;
        monotonic("key-ends", &self.key_ends, self.keys.len())?;
        monotonic("header-ends", &self.header_ends, self.header_data.len())?;
        monotonic(
            "header-index",
            &self.header_index,
            self.header_ends.len() / 2,
        )?;
        if !self.header_ends.len().is_multiple_of(2) {
            return Err("header-ends has an odd length".into());
        }
        Ok(())
    }

    /// Record `i`. Panics if `i >= len()` or the batch fails [`Batch::check`].
    pub fn record(&self, i: usize) -> Record<'_> {
        Record {
            value: &self.values[span(&self.value_ends, i)],
            key: (!self.key_null[i]).then(|| &self.keys[span(&self.key_ends, i)]),
            timestamp_ms: self.timestamps[i],
            offset: self.offsets[i],
            batch: self,
            headers: span(&self.header_index, i),
        }
    }

    /// Iterates over the records.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        (0..self.len()).map(|i| self.record(i))
    }

    /// Empties every column, keeping their allocations for reuse.
    pub fn clear(&mut self) {
        self.values.clear();
        self.value_ends.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.key_null.clear();
        self.header_data.clear();
        self.header_ends.clear();
        self.header_index.clear();
        self.timestamps.clear();
        self.offsets.clear();
    }
}

fn monotonic(name: &str, ends: &[u32], len: usize) -> Result<(), String> {
    let mut prev = 0;
    for &e in ends {
        if e < prev || e as usize > len {
            return Err(format!("{name} is out of order or past its buffer"));
        }
        prev = e;
    }
    Ok(())
}

/// Appends records to a [`Batch`], column by column.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    batch: Batch,
}

impl BatchBuilder {
    /// A builder that reuses the allocations of `batch` (which is cleared).
    pub fn reuse(mut batch: Batch, context: Context) -> Self {
        batch.clear();
        batch.context = context;
        Self { batch }
    }

    /// Starts a record: pushes its value, key, timestamp and offset. Its
    /// headers follow with [`BatchBuilder::header`] and it ends with
    /// [`BatchBuilder::end_record`]. The value is taken from `write`, which
    /// appends it to the value buffer (so a merge can write in place).
    pub fn begin_record(
        &mut self,
        write_value: impl FnOnce(&mut Vec<u8>),
        key: Option<&[u8]>,
        timestamp_ms: i64,
        offset: i64,
    ) {
        let b = &mut self.batch;
        write_value(&mut b.values);
        b.value_ends.push(len32(b.values.len()));
        b.key_null.push(key.is_none());
        b.keys.extend_from_slice(key.unwrap_or_default());
        b.key_ends.push(len32(b.keys.len()));
        b.timestamps.push(timestamp_ms);
        b.offsets.push(offset);
    }

    /// Adds a header to the record begun last.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let b = &mut self.batch;
        b.header_data.extend_from_slice(name);
        b.header_ends.push(len32(b.header_data.len()));
        b.header_data.extend_from_slice(value);
        b.header_ends.push(len32(b.header_data.len()));
    }

    /// Ends the record begun last.
    pub fn end_record(&mut self) {
        let b = &mut self.batch;
        b.header_index.push(len32(b.header_ends.len() / 2));
    }

    /// Pushes a whole record with its headers.
    pub fn push<'h>(
        &mut self,
        value: &[u8],
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        timestamp_ms: i64,
        offset: i64,
    ) {
        self.begin_record(|v| v.extend_from_slice(value), key, timestamp_ms, offset);
        for (n, v) in headers {
            self.header(n, v);
        }
        self.end_record();
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The finished batch.
    pub fn finish(self) -> Batch {
        self.batch
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("a batch buffer exceeds 4 GiB")
}

/// What a stage decided for one record (`verdict` in WIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass on unchanged.
    Keep,
    /// Filter out.
    Drop,
    /// Pass on with members merged in.
    Append,
    /// Replace with zero or more new records.
    Replace,
    /// Send to the dead-letter topic with a reason.
    Fail,
}

/// A header of a record created by a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Name.
    pub name: String,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// A record a stage creates to replace an input record (`new-record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Index of the input record it replaces.
    pub input: u32,
    /// Key; `None` keeps the input record's key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers added to the input record's.
    pub headers: Vec<Header>,
}

/// A record for a named side output (`side-record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideRecord {
    /// Side output name.
    pub output: String,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
}

/// The result of processing a batch (`outcomes` in WIT).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is documented in wit/stage.wit
pub struct Outcomes {
    pub verdicts: Vec<Verdict>,
    pub data: Vec<u8>,
    pub data_ends: Vec<u32>,
    pub replacements: Vec<NewRecord>,
    pub side: Vec<SideRecord>,
    pub route_ends: Vec<u32>,
    pub routes: Vec<u16>,
}

/// What [`Outcomes::made_bytes`] counts for each record besides its bytes:
/// the host's per-record bookkeeping (column ends, timestamp, offset).
pub const RECORD_COST: u64 = 32;

/// What [`Outcomes::made_bytes`] counts for each header besides its bytes.
pub const HEADER_COST: u64 = 8;

/// One record's outcome, borrowed from [`Outcomes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeRef<'a> {
    /// Pass on unchanged.
    Keep,
    /// Filter out.
    Drop,
    /// Merge this JSON object into the value.
    Append(&'a [u8]),
    /// Replace with these records.
    Replace(&'a [NewRecord]),
    /// Dead-letter with this reason.
    Fail(&'a str),
}

impl Outcomes {
    /// Checks the outcomes against a batch of `records` records: one verdict
    /// and one data segment per record, ends inside the buffer, replacement
    /// indexes ascending and pointing at `replace` verdicts, reasons UTF-8.
    /// On success returns the start of each record's replacements, so
    /// [`Outcomes::get`] runs in constant time.
    pub fn check(&self, records: usize) -> Result<Vec<usize>, String> {
        if self.verdicts.len() != records {
            return Err(format!(
                "returned {} outcomes for a batch of {records} records",
                self.verdicts.len()
            ));
        }
        if self.data_ends.len() != records {
            return Err(format!(
                "returned {} data segments for a batch of {records} records",
                self.data_ends.len()
            ));
        }
        monotonic("data-ends", &self.data_ends, self.data.len())?;
        let mut starts = Vec::new();
        let mut prev: Option<u32> = None;
        for r in &self.replacements {
            if prev.is_some_and(|p| r.input < p) {
                return Err("replacements are not in input order".into());
            }
            match self.verdicts.get(r.input as usize) {
                Some(Verdict::Replace) => {}
                _ => {
                    return Err(format!(
                        "a replacement names input {} whose verdict is not replace",
                        r.input
                    ));
                }
            }
            prev = Some(r.input);
        }
        let mut next = 0;
        for i in 0..records {
            starts.push(next);
            while next < self.replacements.len() && self.replacements[next].input as usize == i {
                next += 1;
            }
        }
        starts.push(next);
        for (i, v) in self.verdicts.iter().enumerate() {
            if *v == Verdict::Fail
                && std::str::from_utf8(&self.data[span(&self.data_ends, i)]).is_err()
            {
                return Err(format!("the failure reason of record {i} is not UTF-8"));
            }
        }
        if !self.route_ends.is_empty() || !self.routes.is_empty() {
            if self.route_ends.len() != records {
                return Err(format!(
                    "returned {} route ends for a batch of {records} records",
                    self.route_ends.len()
                ));
            }
            monotonic("route-ends", &self.route_ends, self.routes.len())?;
        }
        Ok(starts)
    }

    /// The routes of record `i` (indexes into the stage's route names);
    /// empty when the stage did not route it. Call after
    /// [`Outcomes::check`].
    pub fn routes_of(&self, i: usize) -> &[u16] {
        if self.route_ends.is_empty() {
            return &[];
        }
        &self.routes[span(&self.route_ends, i)]
    }

    /// Bytes the records these outcomes create will hold on the host:
    /// appended fragments and failure reasons, and every replacement and
    /// side record with its key and headers, counting the key and headers a
    /// replacement inherits from its input record (`input`, the batch the
    /// outcomes answer). Each record and header also counts the host's
    /// bookkeeping for it ([`RECORD_COST`], [`HEADER_COST`]), so millions of
    /// empty records are not free. Kept records are not counted: they were
    /// in the input. `starts` comes from [`Outcomes::check`].
    pub fn made_bytes(&self, input: &Batch, starts: &[usize]) -> u64 {
        let mut made = self.data.len() as u64;
        for (i, v) in self.verdicts.iter().enumerate() {
            if *v != Verdict::Replace || starts[i] == starts[i + 1] {
                continue;
            }
            let rec = input.record(i);
            let (inherited_headers, inherited_bytes) =
                rec.headers().fold((0u64, 0u64), |(n, b), (k, v)| {
                    (n + 1, b + (k.len() + v.len()) as u64)
                });
            for r in &self.replacements[starts[i]..starts[i + 1]] {
                let key = r
                    .key
                    .as_ref()
                    .map_or(rec.key.map_or(0, <[u8]>::len), Vec::len);
                let own: u64 = r
                    .headers
                    .iter()
                    .map(|h| (h.name.len() + h.value.len()) as u64 + HEADER_COST)
                    .sum();
                made += RECORD_COST
                    + (key + r.value.len()) as u64
                    + own
                    + inherited_bytes
                    + inherited_headers * HEADER_COST;
            }
        }
        made + self
            .side
            .iter()
            .map(|s| {
                RECORD_COST
                    + (s.output.len() + s.key.as_ref().map_or(0, Vec::len) + s.value.len()) as u64
            })
            .sum::<u64>()
    }

    /// Outcome of record `i`; `starts` comes from [`Outcomes::check`].
    pub fn get<'a>(&'a self, i: usize, starts: &[usize]) -> OutcomeRef<'a> {
        let data = &self.data[span(&self.data_ends, i)];
        match self.verdicts[i] {
            Verdict::Keep => OutcomeRef::Keep,
            Verdict::Drop => OutcomeRef::Drop,
            Verdict::Append => OutcomeRef::Append(data),
            Verdict::Replace => OutcomeRef::Replace(&self.replacements[starts[i]..starts[i + 1]]),
            Verdict::Fail => {
                OutcomeRef::Fail(std::str::from_utf8(data).unwrap_or("(invalid reason)"))
            }
        }
    }
}

/// Collects outcomes record by record, in input order.
#[derive(Debug, Default)]
pub struct OutcomesBuilder {
    out: Outcomes,
}

impl OutcomesBuilder {
    /// A builder with room for `records` outcomes.
    pub fn with_capacity(records: usize) -> Self {
        let mut out = Outcomes::default();
        out.verdicts.reserve(records);
        out.data_ends.reserve(records);
        Self { out }
    }

    /// Records the outcome of the next input record.
    pub fn push(&mut self, outcome: crate::Outcome) {
        let (outcome, routes) = match outcome {
            crate::Outcome::Routed(routes, routed) => (routed.into(), routes),
            other => (other, crate::Routes::NONE),
        };
        // The columns start with the first routed record (the ones before
        // it get empty entries); a batch with no route has none.
        if !routes.is_empty() || !self.out.routes.is_empty() {
            let ends = len32(self.out.routes.len());
            self.out.route_ends.resize(self.out.verdicts.len(), ends);
            self.out.routes.extend(routes.indexes());
            self.out.route_ends.push(len32(self.out.routes.len()));
        }
        let input = u32::try_from(self.out.verdicts.len()).expect("batch too large");
        let verdict = match outcome {
            crate::Outcome::Keep => Verdict::Keep,
            crate::Outcome::Drop => Verdict::Drop,
            crate::Outcome::Routed(..) => unreachable!("routes were taken off above"),
            crate::Outcome::Append(fields) => {
                self.out.data.extend_from_slice(&fields.into_bytes());
                Verdict::Append
            }
            crate::Outcome::Replace(records) => {
                self.out
                    .replacements
                    .extend(records.into_iter().map(|r| NewRecord {
                        input,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    }));
                Verdict::Replace
            }
            crate::Outcome::Fail(reason) => {
                self.out.data.extend_from_slice(reason.as_bytes());
                Verdict::Fail
            }
        };
        self.out.verdicts.push(verdict);
        self.out.data_ends.push(len32(self.out.data.len()));
    }

    /// Adds a record for a side output.
    pub fn side(&mut self, record: SideRecord) {
        self.out.side.push(record);
    }

    /// The finished outcomes.
    pub fn finish(self) -> Outcomes {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, json::Fields};

    #[test]
    fn records_round_trip_through_columns() {
        let mut b = BatchBuilder::default();
        b.push(
            br#"{"a":1}"#,
            Some(b"k1"),
            [(&b"h1"[..], &b"v1"[..]), (b"h2", b"")],
            10,
            100,
        );
        b.push(b"{}", None, [], 11, 101);
        b.push(
            br#"{"b":2}"#,
            Some(b""),
            [(&b"h3"[..], &b"v3"[..])],
            12,
            102,
        );
        let batch = b.finish();
        batch.check().unwrap();
        let r: Vec<_> = batch.records().collect();
        assert_eq!(r[0].value, br#"{"a":1}"#);
        assert_eq!(r[0].key, Some(&b"k1"[..]));
        assert_eq!(r[1].key, None);
        assert_eq!(r[2].key, Some(&b""[..]));
        assert_eq!(
            r[0].headers().collect::<Vec<_>>(),
            [(&b"h1"[..], &b"v1"[..]), (b"h2", b"")]
        );
        assert_eq!(r[1].headers().count(), 0);
        assert_eq!(
            r[2].headers().collect::<Vec<_>>(),
            [(&b"h3"[..], &b"v3"[..])]
        );
        assert_eq!((r[2].timestamp_ms, r[2].offset), (12, 102));
    }

    #[test]
    fn malformed_batches_are_refused() {
        let mut b = BatchBuilder::default();
        b.push(b"{}", None, [], 1, 1);
        let mut batch = b.finish();
        batch.value_ends[0] = 99;
        assert!(batch.check().is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        let mut o = OutcomesBuilder::with_capacity(5);
        o.push(Outcome::Keep);
        o.push(Outcome::Append(Fields::new().int("x", 1)));
        o.push(Outcome::Fail("bad".into()));
        o.push(Outcome::Replace(vec![
            crate::Replacement::value(b"{}".to_vec()),
            crate::Replacement::value(b"{\"y\":1}".to_vec()),
        ]));
        o.push(Outcome::Drop);
        let out = o.finish();
        let starts = out.check(5).unwrap();
        assert_eq!(out.get(0, &starts), OutcomeRef::Keep);
        assert_eq!(out.get(1, &starts), OutcomeRef::Append(br#"{"x":1}"#));
        assert_eq!(out.get(2, &starts), OutcomeRef::Fail("bad"));
        match out.get(3, &starts) {
            OutcomeRef::Replace(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(out.get(4, &starts), OutcomeRef::Drop);
        assert!(
            out.check(4)
                .unwrap_err()
                .contains("5 outcomes for a batch of 4")
        );
    }

    #[test]
    fn routes_are_columns_only_once_a_record_is_routed() {
        let (a, b) = (crate::Route::at(0), crate::Route::at(3));
        let mut first = OutcomesBuilder::with_capacity(2);
        first.push(Outcome::Keep.to(a));
        first.push(Outcome::Keep);
        assert_eq!(first.finish().route_ends, [1, 1]);
        let mut o = OutcomesBuilder::with_capacity(4);
        o.push(Outcome::Keep);
        o.push(Outcome::Keep.to(b));
        o.push(Outcome::Append(Fields::new().int("x", 1)).to(a).to(b));
        o.push(Outcome::Drop.to(a));
        let out = o.finish();
        out.check(4).unwrap();
        assert_eq!(out.route_ends, [0, 1, 3, 3]);
        assert_eq!(out.routes_of(0), [0u16; 0]);
        assert_eq!(out.routes_of(1), [3]);
        assert_eq!(out.routes_of(2), [0, 3]);
        assert_eq!(
            out.get(2, &out.check(4).unwrap()),
            OutcomeRef::Append(br#"{"x":1}"#)
        );
        let mut none = OutcomesBuilder::with_capacity(1);
        none.push(Outcome::Keep);
        assert!(none.finish().route_ends.is_empty());
        let mut bad = out.clone();
        bad.route_ends[3] = 9;
        assert!(bad.check(4).is_err());
    }

    #[test]
    fn made_bytes_counts_inherited_keys_and_headers() {
        let mut b = BatchBuilder::default();
        b.push(b"{}", Some(b"key"), [(&b"h"[..], &b"0123456789"[..])], 1, 1);
        b.push(b"{}", None, [], 2, 2);
        let input = b.finish();
        let mut o = OutcomesBuilder::with_capacity(2);
        let copies = (0..1000)
            .map(|_| crate::Replacement::value(b"{}".to_vec()))
            .collect();
        o.push(Outcome::Replace(copies));
        o.push(Outcome::Append(Fields::new().int("x", 1)));
        o.side(SideRecord {
            output: "counts".into(),
            key: Some(b"k".to_vec()),
            value: b"1".to_vec(),
        });
        let out = o.finish();
        let starts = out.check(2).unwrap();
        // Each copy: its 2 value bytes, the inherited 3-byte key and
        // 11-byte header, and the bookkeeping of one record and one header.
        let per_copy = 2 + 3 + 11 + RECORD_COST + HEADER_COST;
        let side = RECORD_COST + 6 + 1 + 1;
        assert_eq!(
            out.made_bytes(&input, &starts),
            1000 * per_copy + br#"{"x":1}"#.len() as u64 + side
        );
    }
}
