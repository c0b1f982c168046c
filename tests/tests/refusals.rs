//! Records the brokers refuse, through a real broker: the output topic's
//! `max.message.bytes` is smaller than what a stage makes of some records
//! (even zstd-compressed). A refused output record goes to the dead-letter
//! topic with the broker's error and the pipeline moves on; when the
//! dead-letter topic refuses it too, a reference to the input is written
//! instead; when even that is refused, the pipeline stops with exit code 9
//! and one clear line, committing nothing past it, and under exactly-once
//! the transaction holding part of that batch is aborted, never committed.

use std::path::Path;
use std::time::Duration;

use pipeline_tests::kafka::tool;
use pipeline_tests::{Broker, KeyValue, count, pipeline, produce, read_all, wait_exit, wat_stage};

/// The largest record batch the limited topics take.
const LIMIT: &str = "1024";

/// A small event (fits anywhere) or a large one: 2,000 bytes of value
/// that no compression brings under the limited topics' 1024-byte batches
/// (pseudo-random base64 letters).
fn event(n: usize, large: bool) -> KeyValue {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = n as u64 * 2_654_435_761 + 1;
    let pad: String = (0..if large { 2000 - 30 } else { 100 })
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            LETTERS[(x % 64) as usize] as char
        })
        .collect();
    let value = format!(r#"{{"n":{n:>6},"pad":"{pad}"}}"#);
    (None, Some(value.into_bytes()))
}

/// Creates `topic` (one partition) with `max.message.bytes` = [`LIMIT`],
/// with Kafka's own topic tool.
fn limited_topic(broker: &Broker, topic: &str) {
    limited_to(broker, topic, LIMIT);
}

/// Creates `topic` (one partition) with `max.message.bytes` = `limit`.
fn limited_to(broker: &Broker, topic: &str, limit: &str) {
    let bootstrap = broker.bootstrap();
    let (ok, out, err) = tool(
        "topics",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--create",
            "--topic",
            topic,
            "--partitions",
            "1",
            "--config",
            &format!("max.message.bytes={limit}"),
        ],
    );
    assert!(ok, "create {topic}: {out} {err}");
}

/// Input "in": `small` small events with a large one after every tenth.
async fn fill_input(broker: &Broker, small: usize) -> Vec<usize> {
    fill_input_with(broker, small, |i| i % 10 == 9).await
}

/// Input "in" (one partition): `small` small events with a large one after
/// the `i`th where `large_after(i)`; the large ones' offsets.
async fn fill_input_with(
    broker: &Broker,
    small: usize,
    large_after: impl Fn(usize) -> bool,
) -> Vec<usize> {
    limited_to(broker, "in", "1048576");
    let client = broker.client().await;
    let mut records = Vec::new();
    let mut large = Vec::new();
    for i in 0..small {
        records.push(event(records.len(), false));
        if large_after(i) {
            large.push(records.len());
            records.push(event(records.len(), true));
        }
    }
    for chunk in records.chunks(1) {
        produce(&client, "in", 0, chunk.to_vec()).await;
    }
    large
}

/// Runs the stamping stage over "in" to its end; `(exit code, log)`.
fn run(dir: &Path, broker: &Broker, extra: &[&str]) -> (Option<i32>, String) {
    let stage = wat_stage(dir, "stamp", "stamp", 1);
    let log = dir.join("run.log");
    let mut child = pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(&stage)
        .args(["--until-end", "--max-batch-records", "50"])
        .args(extra)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("pipeline-host");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_record_its_topic_refuses_becomes_a_dead_letter() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let large = fill_input(&broker, 200).await;
    limited_topic(&broker, "out");
    let (code, log) = run(dir.path(), &broker, &[]);
    assert_eq!(code, Some(0), "{log}");

    let client = broker.client().await;
    let dlq = read_all(&client, "in-dlq").await;
    let refused: Vec<i64> = dlq.iter().map(|r| r.source().1).collect();
    assert_eq!(
        refused,
        large.iter().map(|o| *o as i64).collect::<Vec<_>>(),
        "exactly the grown records are dead letters"
    );
    for r in &dlq {
        assert_eq!(r.header("pipeline.error.stage").as_deref(), Some("sink"));
        let why = r.header("pipeline.error.reason").unwrap_or_default();
        assert!(
            why.contains("output topic out refused the record: MESSAGE_TOO_LARGE (10)"),
            "reason: {why}"
        );
    }
    let input = read_all(&client, "in").await;
    for r in &dlq {
        let original = &input[r.source().1 as usize];
        assert_eq!(
            r.record.value, original.record.value,
            "the dead letter is the original"
        );
    }
    assert_eq!(
        count(&client, "out").await,
        200,
        "every small record flowed"
    );
    eprintln!(
        "refused by the output topic (max.message.bytes {LIMIT}): {} dead letters, 200 outputs",
        dlq.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_its_topic_refuses_is_written_as_a_reference() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let large = fill_input(&broker, 200).await;
    limited_topic(&broker, "out");
    limited_topic(&broker, "in-dlq");
    let (code, log) = run(dir.path(), &broker, &["--group", "refused"]);
    assert_eq!(code, Some(0), "the partition moves on: {log}");
    let client = broker.client().await;
    let dlq = read_all(&client, "in-dlq").await;
    let offsets: Vec<i64> = dlq.iter().map(|r| r.source().1).collect();
    assert_eq!(
        offsets,
        large.iter().map(|o| *o as i64).collect::<Vec<_>>(),
        "one reference per refused dead letter"
    );
    for r in &dlq {
        assert_eq!(
            r.header("pipeline.dead_letter.reference").as_deref(),
            Some("true")
        );
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("json");
        assert_eq!(v["topic"], "in");
        assert_eq!(v["partition"], 0);
        assert_eq!(v["offset"].as_i64(), Some(r.source().1));
        let original = &read_all(&client, "in").await[r.source().1 as usize];
        let value = original.record.value.as_deref().expect("value");
        assert_eq!(v["value_bytes"].as_u64(), Some(value.len() as u64));
        assert!(
            v["refused"]
                .as_str()
                .unwrap_or_default()
                .contains("MESSAGE_TOO_LARGE"),
            "{v}"
        );
        assert!(
            v["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("output topic out refused the record"),
            "{v}"
        );
        let prefix = v["value_prefix"].as_str().expect("prefix");
        let original = &read_all(&client, "in").await[r.source().1 as usize];
        assert!(
            original
                .record
                .value
                .as_deref()
                .expect("value")
                .starts_with(prefix.as_bytes()),
            "the prefix is the original's"
        );
    }
    assert_eq!(
        count(&client, "out").await,
        200,
        "every small record flowed"
    );
    eprintln!("refused dead letters: {} references written", dlq.len());
}

/// The dead-letter topic's limit, too small for even a reference.
const TINY: &str = "100";

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_its_topic_refuses_too_stops_the_pipeline_without_committing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let large = fill_input(&broker, 200).await;
    limited_topic(&broker, "out");
    limited_to(&broker, "in-dlq", TINY);
    let (code, log) = run(dir.path(), &broker, &["--group", "refused"]);
    assert_eq!(code, Some(9), "{log}");
    assert!(
        log.contains("in-dlq/0 refused a dead letter's reference: MESSAGE_TOO_LARGE (10)"),
        "one clear line: {log}"
    );
    let committed = committed_offset(&broker, "refused");
    assert!(
        committed.is_none_or(|c| c <= large[0]),
        "nothing past the refused record is committed: {committed:?} (first large at {})",
        large[0]
    );
    eprintln!(
        "refused reference: exit 9, committed {committed:?}, first refused offset {}",
        large[0]
    );
}

/// Under exactly-once, a batch whose dead letter the broker refuses stops
/// the pipeline, and the transaction holding that batch's outputs (with
/// the batches delivered since the last commit) is aborted: three runs that
/// each meet the refusal leave every output of the committed offsets
/// exactly once, and nothing past them, for `read_committed` readers (ours,
/// Python confluent-kafka and Kafka's console consumer). The previous host
/// committed that transaction at shutdown without its offsets, so each run
/// added the failing batch's outputs again.
#[tokio::test(flavor = "multi_thread")]
async fn under_exactly_once_a_refused_dead_letter_aborts_its_transaction() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // One large record, at offset 600, amid 700 small ones.
    let large = fill_input_with(&broker, 700, |i| i == 599).await;
    assert_eq!(large, vec![600]);
    limited_topic(&broker, "out");
    limited_to(&broker, "in-dlq", TINY);
    let eo = [
        "--group",
        "refused-eo",
        "--guarantee",
        "exactly-once",
        "--group-instance-id",
        "eo-0",
    ];
    for round in 0..3 {
        let (code, log) = run(dir.path(), &broker, &eo);
        assert_eq!(code, Some(9), "round {round}: {log}");
    }
    // What the group committed: the batches before the refused one, less
    // those of the aborted transaction (at most one commit interval's).
    let committed = committed_offset(&broker, "refused-eo").expect("a committed offset");
    assert!(
        (1..=600).contains(&committed),
        "committed {committed}: never past the refused batch"
    );
    let client = broker.client().await;
    let out = read_all(&client, "out").await;
    let mut seen: Vec<i64> = out.iter().map(|r| r.source().1).collect();
    seen.sort_unstable();
    let expected: Vec<i64> = (0..committed as i64).collect();
    assert_eq!(
        seen, expected,
        "every committed output, once, and nothing else"
    );
    assert!(
        read_all(&client, "in-dlq").await.is_empty(),
        "only transaction markers in the dead-letter topic"
    );

    let bootstrap = broker.bootstrap();
    let v = pipeline_tests::python_json("exactly_once.py", &[&bootstrap, "in", "out", "in-dlq"]);
    eprintln!("confluent-kafka read_committed after three refused runs: {v}");
    assert_eq!(v["duplicates"].as_u64(), Some(0), "{v}");
    assert_eq!(v["outcomes"].as_u64(), Some(committed as u64), "{v}");
    let console = pipeline_tests::kafka::console_sources(&bootstrap, "out", 700);
    let unique: std::collections::BTreeSet<_> = console.iter().collect();
    eprintln!(
        "exactly-once, three runs meeting a refused dead letter: committed {committed}; kafka-console-consumer read_committed: {} outputs, {} distinct",
        console.len(),
        unique.len()
    );
    assert_eq!((console.len(), unique.len()), (committed, committed));
}

/// The committed offset of partition 0 of "in" for `group`, with Kafka's
/// own `kafka-consumer-groups`.
fn committed_offset(broker: &Broker, group: &str) -> Option<usize> {
    let bootstrap = broker.bootstrap();
    let (ok, out, err) = tool(
        "consumer-groups",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--describe",
            "--group",
            group,
        ],
    );
    assert!(ok || err.contains("no active members"), "{out} {err}");
    // The line of partition 0: GROUP TOPIC PARTITION CURRENT-OFFSET ...
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some("in"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|o| o.parse::<usize>().ok())
}
