//! The records of a fetch response, as bytes from a broker (or anything
//! posing as one) reach the client: the lenient batch reader of the
//! vendored rskafka (`FetchRecords`, each undecodable batch kept apart with
//! its bytes) and the step that turns batches into the host's records
//! (offsets, timestamps, aborted transactions, undecodable records). It
//! must never panic, and what it returns must be consistent: every record
//! at or past the requested offset, the next fetch offset past each of
//! them, every undecodable range well-formed.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use rskafka::client::partition::fuzz_extract_records;
use rskafka::protocol::messages::FetchResponseAbortedTransaction;
use rskafka::protocol::primitives::{FetchRecords, Int64};
use rskafka::protocol::traits::ReadType;

fuzz_target!(|data: &[u8]| {
    // 8 bytes of requested offset, 1 byte of flags (bits 0-1: the number of
    // aborted transactions, each 16 bytes: producer id, first offset; bit 7:
    // give every batch its right CRC, so that the fuzzer reaches the
    // records behind it), then the records field as the response holds it
    // (a length, then batches).
    if data.len() < 9 {
        return;
    }
    let request_offset = i64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    let aborts = usize::from(data[8] & 3);
    let mut rest = &data[9..];
    let mut aborted = Vec::new();
    for _ in 0..aborts {
        if rest.len() < 16 {
            return;
        }
        aborted.push(FetchResponseAbortedTransaction {
            producer_id: Int64(i64::from_be_bytes(rest[..8].try_into().expect("8 bytes"))),
            first_offset: Int64(i64::from_be_bytes(rest[8..16].try_into().expect("8 bytes"))),
        });
        rest = &rest[16..];
    }
    let mut field = Vec::with_capacity(rest.len() + 4);
    field.extend_from_slice(&(rest.len() as i32).to_be_bytes());
    field.extend_from_slice(rest);
    if data[8] & 0x80 != 0 {
        fix_crcs(&mut field[4..]);
    }
    let Ok(records) = FetchRecords::read(&mut Cursor::new(&field)) else {
        return;
    };
    let Ok((records, undecodable, next_offset)) =
        fuzz_extract_records(records, request_offset, &aborted)
    else {
        return;
    };
    assert!(next_offset >= request_offset, "the next fetch goes back");
    // Offsets saturate at i64::MAX (where the broker answers
    // OFFSET_OUT_OF_RANGE); below it, the next fetch is past everything.
    let past = |offset: i64| offset < next_offset || next_offset == i64::MAX;
    for r in &records {
        assert!(r.offset >= request_offset, "a record before the request");
        assert!(past(r.offset), "a record at or past the next fetch");
    }
    for u in &undecodable {
        assert!(u.first_offset <= u.last_offset, "an empty undecodable range");
        assert!(past(u.last_offset), "an undecodable range past the next fetch");
    }
});

/// Writes the right CRC-32C into each batch of `batches` (base offset 8,
/// length 4, leader epoch 4, magic 1, CRC 4 over the rest of the batch).
fn fix_crcs(batches: &mut [u8]) {
    let mut pos = 0;
    while batches.len() - pos >= 21 {
        let len = i32::from_be_bytes(batches[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        let end = pos + 12 + len;
        if len < 9 || end > batches.len() {
            return;
        }
        let crc = crc32c::crc32c(&batches[pos + 21..end]);
        batches[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}
