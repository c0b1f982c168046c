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
    corrupt_batch(&segment, 20, |batch| {
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
    });

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

/// Changes the record batch at `offset` in a Kafka log segment with
/// `damage` (given the batch's bytes from its base offset), in place, so
/// the broker's open segment serves it. Kafka serves a fetch from the
/// segment's bytes without checking them, so a reader sees the damage.
fn corrupt_batch(segment: &std::path::Path, offset: i64, damage: impl FnOnce(&mut [u8])) {
    let mut log = std::fs::read(segment).expect("read the log segment");
    let mut pos = 0;
    // Each batch: base offset (8 bytes), length (4), then `length` bytes.
    while pos + 12 <= log.len() {
        let base = i64::from_be_bytes(log[pos..pos + 8].try_into().expect("8"));
        let len = i32::from_be_bytes(log[pos + 8..pos + 12].try_into().expect("4")) as usize;
        let end = pos + 12 + len;
        if base == offset {
            damage(&mut log[pos..end]);
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(segment)
                .expect("open the segment");
            f.seek(SeekFrom::Start(pos as u64)).expect("seek");
            f.write_all(&log[pos..end]).expect("write");
            return;
        }
        pos = end;
    }
    panic!("no batch at offset {offset} in {}", segment.display());
}

/// A batch that fails its CRC at the end of a fetch says, in its
/// (unchecked) last-offset field, that it covers 1,000 offsets. The reader
/// must not believe it: the batch is a dead letter for the offsets it can
/// cover (up to the log's end), and records written after it are read. The
/// previous host moved to offset 1,030 and never read them.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_batch_at_the_end_of_a_fetch_does_not_skip_what_follows() {
    let mut broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let now = chrono::Utc::now().timestamp_millis();
    let one = |n: i64| {
        let mut b = EncodedRecords::new();
        b.push(None, Some(format!(r#"{{"n":{n}}}"#).as_bytes()), [], now);
        b
    };
    for n in 0..30 {
        produce_batch(&client, "in", 0, one(n)).await;
    }
    let segment = broker
        .kafka_mut()
        .node(1)
        .dir
        .join("data/in-0/00000000000000000000.log");
    // lastOffsetDelta: 8 (base) + 4 (length) + 4 (leader epoch) + 1
    // (magic) + 4 (CRC) + 2 (attributes) bytes in.
    corrupt_batch(&segment, 29, |batch| {
        batch[23..27].copy_from_slice(&1000i32.to_be_bytes());
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = wat_stage(dir.path(), "keep", "keep", 0);
    let mut member = pipeline_tests::pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(&stage)
        .args(["--group", "tail", "--fetch-max-wait-ms", "100"])
        .stderr(std::fs::File::create(dir.path().join("run.log")).expect("log"))
        .spawn()
        .expect("pipeline-host");
    pipeline_tests::wait_count(&client, "in-dlq", 1, std::time::Duration::from_secs(60)).await;
    for n in 30..40 {
        produce_batch(&client, "in", 0, one(n)).await;
    }
    let waited = pipeline_tests::eventually_async(
        std::time::Duration::from_secs(60),
        "the records after the corrupt batch are read",
        || async {
            let n = pipeline_tests::count(&client, "out").await;
            if n >= 39 {
                Ok(n)
            } else {
                Err(format!("{n} of 39 outputs"))
            }
        },
    )
    .await;
    pipeline_tests::sigterm(&member);
    let _ = pipeline_tests::wait_exit(&mut member, std::time::Duration::from_secs(30));
    let mut delivered: Vec<i64> = read_all(&client, "out")
        .await
        .iter()
        .map(|r| r.source().1)
        .collect();
    delivered.sort_unstable();
    let expected: Vec<i64> = (0..40).filter(|n| *n != 29).collect();
    assert_eq!(delivered, expected, "{waited} outputs");
    let dlq = read_all(&client, "in-dlq").await;
    assert_eq!(dlq.len(), 1);
    let why = dlq[0].header("pipeline.error.reason").unwrap_or_default();
    assert!(
        why.contains("(offset 29)"),
        "the batch covers offset 29 alone: {why}"
    );
    eprintln!("corrupt batch at the end of a fetch: {why}; offsets 30..39 read");
}

/// One record of a batch of 1,000 makes the stage trap: only it is a dead
/// letter (with the stage's reason), the 999 others are output. The
/// previous host sent the whole batch to the dead-letter topic.
#[tokio::test(flavor = "multi_thread")]
async fn one_record_that_traps_its_stage_is_the_only_dead_letter_of_its_batch() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let records: Vec<pipeline_tests::KeyValue> = (0..1000)
        .map(|n| {
            let v = if n == 617 {
                format!(r#"{{"n":{n},"poison":true}}"#)
            } else {
                format!(r#"{{"n":{n}}}"#)
            };
            (None, Some(v.into_bytes()))
        })
        .collect();
    pipeline_tests::produce(&client, "in", 0, records).await;
    let run = pipeline_tests::pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(pipeline_tests::plugin("fixtures/hostile"))
        .args([
            "--stage-config",
            "hostile.mode=trap",
            "--stage-config",
            "hostile.poison_field=poison",
            "--until-end",
            "--max-batch-records",
            "1000",
            "--log-format",
            "json",
        ])
        .output()
        .expect("pipeline-host");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    let dlq = read_all(&client, "in-dlq").await;
    assert_eq!(dlq.len(), 1, "one dead letter");
    assert_eq!(dlq[0].source().1, 617);
    assert_eq!(
        dlq[0].header("pipeline.error.stage").as_deref(),
        Some("hostile")
    );
    let why = dlq[0].header("pipeline.error.reason").unwrap_or_default();
    assert!(why.contains("trapped"), "{why}");
    let out = read_all(&client, "out").await;
    assert_eq!(out.len(), 999, "every other record is output");
    // The isolation, as its JSON event reports it.
    let event: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["culprits"].is_u64())
        .expect("the isolation event");
    assert_eq!(event["fields"]["culprits"].as_u64(), Some(1), "{event}");
    assert_eq!(event["fields"]["unresolved"].as_u64(), Some(0), "{event}");
    eprintln!(
        "one poison record in 1,000: 1 dead letter, 999 outputs, {} extra stage calls",
        event["fields"]["isolation_calls"]
    );
}

/// `pipeline-host bench --isolation` prints what isolation costs with the
/// real sandbox (a fresh instance per failed call): batches of 1,000 with
/// none, 1, 10 and all records poisoned. Each poisoned record is isolated
/// and nothing else fails; a batch where every record fails is given up
/// within the chain's budget.
#[test]
fn isolation_figures_for_one_ten_and_all_poison_records() {
    let out = pipeline_tests::host(&["bench", "--isolation", "--batch", "1000", "--runs", "3"])
        .arg("--plugins-dir")
        .arg(pipeline_tests::root().join("plugins"))
        .output()
        .expect("pipeline-host bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // poison, stage calls, isolated, dlq, output, ms, vs clean
    let (none, one, ten, all) = (row("none"), row("1"), row("10"), row("all"));
    assert_eq!(none[1..5], ["1", "0", "0", "1000"]);
    assert_eq!(one[2..5], ["1", "1", "999"]);
    assert_eq!(ten[2..5], ["10", "10", "990"]);
    assert_eq!(all[3..5], ["1000", "0"]);
    let calls: u64 = all[1].parse().expect("calls");
    assert!(calls <= 1 + 2 * 96, "bounded: {calls} calls");
}
