//! Poison records through Apache Kafka (issue 13 item 6): input the client
//! cannot decode never blocks its partition. A record whose timestamp is
//! outside the date library's range (Kafka accepts it) and a batch that
//! fails its CRC (corrupted in the broker's log segment, which Kafka serves
//! as it is) go to the dead-letter topic with their bytes and the reason,
//! and the partition moves on. The previous host failed the whole fetch and
//! retried it at the same offset forever.

use pipeline_tests::{Broker, create_topic, produce_batch, read_all, run_stage_to_end, wat_stage};
use rskafka::record::EncodedRecords;

/// Milliseconds far before anything chrono can hold (about 285 million
/// years ago), which Kafka still accepts with its default
/// `message.timestamp.before.max.ms`.
const ANCIENT_MS: i64 = -9_000_000_000_000_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let mut broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let now = chrono::Utc::now().timestamp_millis();
    // One produce request (one record batch) per record, so the bad ones
    // are batches of their own: offsets 0..=9 good, 10 ancient, 11..=19
    // good, 20 corrupted below, 21..=29 good.
    for n in 0..30i64 {
        let value = format!(r#"{{"n":{n}}}"#);
        let mut one = EncodedRecords::new();
        let ts = if n == 10 { ANCIENT_MS } else { now };
        one.push(
            Some(format!("k{n}").as_bytes()),
            Some(value.as_bytes()),
            [],
            ts,
        );
        produce_batch(&client, "in", 0, one).await;
    }
    let segment = broker
        .kafka_mut()
        .node(1)
        .dir
        .join("data/in-0/00000000000000000000.log");
    corrupt_batch(&segment, 20);

    let dir = tempfile::tempdir().expect("tempdir");
    let stage = wat_stage(dir.path(), "keep", "keep", 0);
    run_stage_to_end(&broker.bootstrap(), "in", "out", &stage);

    let out = read_all(&client, "out").await;
    let mut delivered: Vec<i64> = out.iter().map(|r| r.source().1).collect();
    delivered.sort_unstable();
    let expected: Vec<i64> = (0..30).filter(|n| *n != 10 && *n != 20).collect();
    assert_eq!(delivered, expected, "every other record flowed");

    let dlq = read_all(&client, "in-dlq").await;
    assert_eq!(dlq.len(), 2, "the two poison records are dead letters");
    let ancient = dlq.iter().find(|r| r.source().1 == 10).expect("offset 10");
    assert_eq!(
        ancient.header("pipeline.error.stage").as_deref(),
        Some("host")
    );
    let why = ancient.header("pipeline.error.reason").unwrap_or_default();
    assert!(
        why.contains("timestamp") && why.contains("out of range"),
        "{why}"
    );
    assert_eq!(ancient.record.key.as_deref(), Some(&b"k10"[..]));
    assert_eq!(ancient.record.value.as_deref(), Some(&br#"{"n":10}"#[..]));

    let batch = dlq.iter().find(|r| r.source().1 == 20).expect("offset 20");
    let why = batch.header("pipeline.error.reason").unwrap_or_default();
    assert!(
        why.contains("undecodable record batch") && why.contains("CRC"),
        "{why}"
    );
    let raw = batch.record.value.as_deref().unwrap_or_default();
    assert!(
        raw.len() > 61 && raw[..8] == 20i64.to_be_bytes(),
        "the dead letter holds the raw batch, from its base offset: {} bytes",
        raw.len()
    );
    eprintln!("poison records: 28 delivered, 2 dead letters ({why})");
}

/// Flips the last byte (inside the CRC-checked part) of the record batch
/// at `offset` in a Kafka log segment. Kafka serves a fetch from the
/// segment's bytes without checking them, so a reader sees the damage.
fn corrupt_batch(segment: &std::path::Path, offset: i64) {
    let mut log = std::fs::read(segment).expect("read the log segment");
    let mut pos = 0;
    // Each batch: base offset (8 bytes), length (4), then `length` bytes.
    while pos + 12 <= log.len() {
        let base = i64::from_be_bytes(log[pos..pos + 8].try_into().expect("8"));
        let len = i32::from_be_bytes(log[pos + 8..pos + 12].try_into().expect("4")) as usize;
        let end = pos + 12 + len;
        if base == offset {
            log[end - 1] ^= 0xff;
            // In place, so the broker's open segment sees it.
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(segment)
                .expect("open the segment");
            f.seek(SeekFrom::Start((end - 1) as u64)).expect("seek");
            f.write_all(&log[end - 1..end]).expect("write");
            return;
        }
        pos = end;
    }
    panic!("no batch at offset {offset} in {}", segment.display());
}
