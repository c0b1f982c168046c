//! The chain's output records, as the sink reads them: borrowed from the
//! last stage's columnar batch, with no record built per message.
//!
//! The last stage's [`Batch`] moves into [`Output`] whole; the output is the
//! list of its rows that reached the end (rows whose input record was failed
//! by a stage are left out). Forwarded tombstones, which no batch can hold
//! (their value is null), are kept as [`OutRecord`]s and come first. The
//! sink encodes produce requests straight from these borrowed slices.

use stage_sdk::Batch;

/// A record for the output topic that owns its bytes (a forwarded
/// tombstone).
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

/// The records of one input batch for the output topic, in order:
/// forwarded tombstones, then the last stage's records.
#[derive(Debug, Default)]
pub struct Output {
    owned: Vec<OutRecord>,
    batch: Batch,
    rows: Vec<u32>,
    /// The routes of each row (a bit per route number, 0 or none: the
    /// default output); empty when no row is routed.
    routes: Vec<u64>,
    /// Values and keys re-encoded for the output's format, by record.
    encoded: Option<Encoded>,
}

/// Values and keys in the output's format ([`Output::encode`]).
#[derive(Debug, Default)]
struct Encoded {
    buf: Vec<u8>,
    values: Vec<Slot>,
    keys: Vec<Slot>,
}

/// Where an encoded value or key is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Not re-encoded: the record's own bytes.
    Own,
    /// Null.
    Null,
    /// `buf[a..b]`.
    At(u32, u32),
}

impl Encoded {
    fn slot<'a>(&'a self, slot: Slot, own: Option<&'a [u8]>) -> Option<&'a [u8]> {
        match slot {
            Slot::Own => own,
            Slot::Null => None,
            Slot::At(a, b) => Some(&self.buf[a as usize..b as usize]),
        }
    }
}

/// Writes the encoded form of a record's JSON bytes (the record made from
/// the input at the offset given) into the buffer: `None` when the part
/// is not re-encoded, else `Err` with the reason it does not fit.
pub type EncodeFn<'a> = &'a dyn Fn(i64, &[u8], &mut Vec<u8>) -> Option<Result<(), String>>;

/// One output record, borrowed from an [`Output`].
#[derive(Debug, Clone, Copy)]
pub struct OutRef<'a> {
    /// Key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Value; `None` only for forwarded tombstones.
    pub value: Option<&'a [u8]>,
    /// Timestamp of the input record, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Offset of the input record it came from.
    pub source_offset: i64,
    from: From<'a>,
}

/// Where an [`OutRef`]'s headers live.
#[derive(Debug, Clone, Copy)]
enum From<'a> {
    Owned(&'a OutRecord),
    Row(&'a Batch, usize),
}

impl<'a> OutRef<'a> {
    /// The record's headers as (name, value) pairs, in order.
    pub fn headers(&self) -> Headers<'a> {
        match self.from {
            From::Owned(r) => Headers {
                owned: r.headers.iter(),
                batch: None,
                entries: 0..0,
            },
            From::Row(b, j) => Headers {
                owned: [].iter(),
                batch: Some(b),
                entries: b.record(j).header_entries(),
            },
        }
    }
}

/// Iterator over an [`OutRef`]'s headers (cloneable, so the sink can size
/// a record before writing it).
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    owned: std::slice::Iter<'a, (Vec<u8>, Vec<u8>)>,
    batch: Option<&'a Batch>,
    entries: std::ops::Range<usize>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((k, v)) = self.owned.next() {
            return Some((k, v));
        }
        let b = self.batch?;
        self.entries.next().map(|h| b.header(h))
    }
}

impl Output {
    /// Adds a record that owns its bytes (before any batch row).
    pub(super) fn push_owned(&mut self, record: OutRecord) {
        self.owned.push(record);
    }

    /// Makes rows `rows` of `batch` the records after the owned ones.
    pub(super) fn set_batch(&mut self, batch: Batch, rows: Vec<u32>, routes: Vec<u64>) {
        self.batch = batch;
        self.rows = rows;
        self.routes = routes;
    }

    /// The routes of output record `i`: a bit per route number
    /// ([`crate::stages::RouteTable`]); 0 is the default output.
    pub fn routes_of(&self, i: usize) -> u64 {
        match i.checked_sub(self.owned.len()) {
            Some(k) => self.routes.get(k).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Number of output records.
    pub fn len(&self) -> usize {
        self.owned.len() + self.rows.len()
    }

    /// True when the batch produced no output.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Output record `i` (panics when `i >= len()`, like slice indexing).
    pub fn get(&self, i: usize) -> OutRef<'_> {
        let r = self.own(i);
        match &self.encoded {
            None => r,
            Some(e) => OutRef {
                key: e.slot(e.keys[i], r.key),
                value: e.slot(e.values[i], r.value),
                ..r
            },
        }
    }

    /// Re-encodes every record's value and key with `value` and `key` (the
    /// output's formats; JSON in, framed bytes out). The records of an
    /// input whose output does not fit are all left out (an input is
    /// delivered whole or not at all); returns those inputs' offsets with
    /// the first reason, in order.
    pub fn encode(&mut self, value: EncodeFn, key: EncodeFn) -> Vec<(i64, String)> {
        let n = self.len();
        let mut e = std::mem::take(&mut self.encoded).unwrap_or_default();
        e.buf.clear();
        e.values.clear();
        e.keys.clear();
        let mut misfits: Vec<(i64, String)> = Vec::new();
        for i in 0..n {
            let r = self.own(i);
            let mut slot = |bytes: Option<&[u8]>, f: EncodeFn| -> Result<Slot, String> {
                let Some(bytes) = bytes else {
                    return Ok(Slot::Null);
                };
                let a = e.buf.len();
                match f(r.source_offset, bytes, &mut e.buf) {
                    None => Ok(Slot::Own),
                    Some(Ok(())) => Ok(Slot::At(a as u32, e.buf.len() as u32)),
                    Some(Err(reason)) => {
                        e.buf.truncate(a);
                        Err(reason)
                    }
                }
            };
            let encoded = slot(r.value, value).and_then(|v| Ok((v, slot(r.key, key)?)));
            match encoded {
                Ok((v, k)) => {
                    e.values.push(v);
                    e.keys.push(k);
                }
                Err(reason) => {
                    e.values.push(Slot::Null);
                    e.keys.push(Slot::Null);
                    if misfits.last().is_none_or(|(o, _)| *o != r.source_offset) {
                        misfits.push((r.source_offset, reason));
                    }
                }
            }
        }
        if !misfits.is_empty() {
            let failed = |offset: i64| misfits.iter().any(|(o, _)| *o == offset);
            let keep: Vec<bool> = (0..n).map(|i| !failed(self.own(i).source_offset)).collect();
            let owned = self.owned.len();
            let mut i = 0;
            self.owned.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            let mut j = owned;
            self.rows.retain(|_| {
                j += 1;
                keep[j - 1]
            });
            let mut j = owned;
            self.routes.retain(|_| {
                j += 1;
                keep[j - 1]
            });
            let mut k = 0;
            e.values.retain(|_| {
                k += 1;
                keep[k - 1]
            });
            let mut k = 0;
            e.keys.retain(|_| {
                k += 1;
                keep[k - 1]
            });
        }
        self.encoded = Some(e);
        misfits
    }

    /// Output record `i` as the chain made it.
    fn own(&self, i: usize) -> OutRef<'_> {
        match self.owned.get(i) {
            Some(r) => OutRef {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                timestamp_ms: r.timestamp_ms,
                source_offset: r.source_offset,
                from: From::Owned(r),
            },
            None => {
                let j = self.rows[i - self.owned.len()] as usize;
                let r = self.batch.record(j);
                OutRef {
                    key: r.key,
                    value: Some(r.value),
                    timestamp_ms: r.timestamp_ms,
                    source_offset: r.offset,
                    from: From::Row(&self.batch, j),
                }
            }
        }
    }

    /// The batch the records live in, for the chain to reuse its
    /// allocations ([`super::Chain::recycle`]).
    pub fn into_batch(self) -> Batch {
        self.batch
    }

    /// The output records, in order.
    pub fn iter(&self) -> impl Iterator<Item = OutRef<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::batch::BatchBuilder;

    #[test]
    fn owned_records_first_then_the_chosen_rows() {
        let mut b = BatchBuilder::default();
        b.push(b"{\"a\":0}", Some(b"k0"), [(&b"h"[..], &b"0"[..])], 10, 100);
        b.push(b"{\"a\":1}", None, [], 11, 101);
        b.push(b"{\"a\":2}", Some(b""), [(&b"h"[..], &b"2"[..])], 12, 102);
        let mut out = Output::default();
        out.push_owned(OutRecord {
            key: Some(b"t".to_vec()),
            value: None,
            headers: vec![(b"x".to_vec(), b"y".to_vec())],
            timestamp_ms: 9,
            source_offset: 99,
        });
        out.set_batch(b.finish(), vec![0, 2], Vec::new());
        assert_eq!(out.len(), 3);
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                let headers: Vec<_> = r.headers().collect();
                (r.key, r.value, r.timestamp_ms, r.source_offset, headers)
            })
            .collect();
        type Seen<'a> = (
            Option<&'a [u8]>,
            Option<&'a [u8]>,
            i64,
            i64,
            Vec<(&'a [u8], &'a [u8])>,
        );
        let want: Vec<Seen> = vec![
            (Some(b"t"), None, 9, 99, vec![(b"x", b"y")]),
            (Some(b"k0"), Some(b"{\"a\":0}"), 10, 100, vec![(b"h", b"0")]),
            (Some(b""), Some(b"{\"a\":2}"), 12, 102, vec![(b"h", b"2")]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn encoding_replaces_values_and_leaves_out_every_record_of_a_misfit_input() {
        let mut b = BatchBuilder::default();
        b.push(b"{\"a\":0}", Some(b"k0"), [], 10, 100);
        b.push(b"{\"a\":1}", None, [], 11, 101);
        b.push(b"{\"a\":2}", None, [], 11, 101);
        b.push(b"{\"a\":3}", Some(b"k3"), [], 12, 102);
        let mut out = Output::default();
        out.set_batch(b.finish(), vec![0, 1, 2, 3], Vec::new());
        let value = |_: i64, json: &[u8], buf: &mut Vec<u8>| {
            Some(if json == b"{\"a\":2}" {
                Err("a is 2".to_owned())
            } else {
                buf.extend_from_slice(b"#");
                buf.extend_from_slice(json);
                Ok(())
            })
        };
        let key = |_: i64, _: &[u8], _: &mut Vec<u8>| None;
        let misfits = out.encode(&value, &key);
        assert_eq!(misfits, [(101, "a is 2".to_owned())]);
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.key.unwrap(), r.value.unwrap(), r.source_offset))
            .collect();
        let want: Vec<(&[u8], &[u8], i64)> =
            vec![(b"k0", b"#{\"a\":0}", 100), (b"k3", b"#{\"a\":3}", 102)];
        assert_eq!(got, want, "both records of input 101 are left out");
    }
}
