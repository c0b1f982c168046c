//! Outcome checking, what the host does first with whatever a stage
//! returns: `Outcomes::check` against the batch, then the lookups and the
//! output-limit count the chain makes on outcomes that passed. Arbitrary
//! outcomes (any verdicts, ends, replacement indexes, side records, route
//! columns) must be refused or be safe to read: no panic, no index out of
//! bounds, for a batch the host built itself (checked) or not.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stage_sdk::batch::{
    Batch, Context, Header, NewRecord, OutcomeRef, Outcomes, SideRecord, Verdict,
};

#[derive(Debug, Arbitrary)]
struct Input {
    batch: RawBatch,
    verdicts: Vec<u8>,
    data: Vec<u8>,
    data_ends: Vec<u32>,
    replacements: Vec<(u32, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>)>,
    side: Vec<(String, Option<Vec<u8>>, Vec<u8>)>,
    route_ends: Vec<u32>,
    routes: Vec<u16>,
}

/// A batch's columns, as arbitrary as the outcomes.
#[derive(Debug, Arbitrary)]
struct RawBatch {
    context: RawContext,
    values: Vec<u8>,
    value_ends: Vec<u32>,
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    key_null: Vec<bool>,
    header_data: Vec<u8>,
    header_ends: Vec<u32>,
    header_index: Vec<u32>,
    timestamps: Vec<i64>,
    offsets: Vec<i64>,
}

/// The batch's context, which no check reads.
#[derive(Debug, Arbitrary)]
struct RawContext {
    now_ms: i64,
    topic: String,
    partition: i32,
}

fuzz_target!(|input: Input| {
    let batch = stage_sdk::move_batch!(input.batch => Batch, Context);
    let outcomes = Outcomes {
        verdicts: input
            .verdicts
            .iter()
            .map(|v| match v % 5 {
                0 => Verdict::Keep,
                1 => Verdict::Drop,
                2 => Verdict::Append,
                3 => Verdict::Replace,
                _ => Verdict::Fail,
            })
            .collect(),
        data: input.data,
        data_ends: input.data_ends,
        replacements: input
            .replacements
            .into_iter()
            .map(|(input, key, value, headers)| NewRecord {
                input,
                key,
                value,
                headers: headers
                    .into_iter()
                    .map(|(name, value)| Header { name, value })
                    .collect(),
            })
            .collect(),
        side: input
            .side
            .into_iter()
            .map(|(output, key, value)| SideRecord { output, key, value })
            .collect(),
        route_ends: input.route_ends,
        routes: input.routes,
    };
    let batch_ok = batch.check().is_ok();
    if batch_ok {
        for r in batch.records() {
            let _ = (r.value, r.key, r.headers().count());
        }
    }
    // The host checks outcomes against the number of records it sent.
    let n = if batch_ok { batch.len() } else { outcomes.verdicts.len() };
    let Ok(starts) = outcomes.check(n) else {
        return;
    };
    let mut replaced = 0;
    for i in 0..n {
        match outcomes.get(i, &starts) {
            OutcomeRef::Replace(r) => {
                assert!(r.iter().all(|r| r.input as usize == i), "another record's replacement");
                replaced += r.len();
            }
            OutcomeRef::Fail(reason) => assert!(std::str::from_utf8(reason.as_bytes()).is_ok()),
            _ => {}
        }
        let _ = outcomes.routes_of(i);
    }
    assert_eq!(replaced, outcomes.replacements.len(), "a replacement nobody gets");
    if batch_ok {
        let made = outcomes.made_bytes(&batch, &starts);
        assert!(made >= outcomes.data.len() as u64, "made bytes undercount");
    }
});
