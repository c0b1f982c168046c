//! Records the brokers refuse, through a real broker: the output topic's
//! `max.message.bytes` is smaller than what a stage makes of some records.
//! A refused output record goes to the dead-letter topic with the broker's
//! error and the pipeline moves on; when the dead-letter topic refuses it
//! too, the pipeline stops with exit code 9 and one clear line, committing
//! nothing past it. Today's code retried both forever.

use std::path::Path;
use std::time::Duration;

use pipeline_tests::kafka::tool;
use pipeline_tests::{Broker, KeyValue, count, pipeline, produce, read_all, wait_exit, wat_stage};

/// The largest record batch the limited topics take.
const LIMIT: &str = "1024";

/// A small event (fits anywhere) or a large one: 930 bytes of value fit
/// the input topic's 1024-byte batches, but not once the stage appended to
/// it and the sink added the source headers.
fn event(n: usize, large: bool) -> KeyValue {
    let pad = "x".repeat(if large { 930 - 30 } else { 100 });
    let value = format!(r#"{{"n":{n:>6},"pad":"{pad}"}}"#);
    (None, Some(value.into_bytes()))
}

/// Creates `topic` (one partition) with `max.message.bytes` = [`LIMIT`],
/// with Kafka's own topic tool.
fn limited_topic(broker: &Broker, topic: &str) {
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
            &format!("max.message.bytes={LIMIT}"),
        ],
    );
    assert!(ok, "create {topic}: {out} {err}");
}

/// Input "in": `small` small events with a large one after every tenth.
async fn fill_input(broker: &Broker, small: usize) -> Vec<usize> {
    limited_topic(broker, "in");
    let client = broker.client().await;
    let mut records = Vec::new();
    let mut large = Vec::new();
    for i in 0..small {
        records.push(event(records.len(), false));
        if i % 10 == 9 {
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
async fn a_dead_letter_its_topic_refuses_stops_the_pipeline_without_committing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let large = fill_input(&broker, 200).await;
    limited_topic(&broker, "out");
    limited_topic(&broker, "in-dlq");
    let (code, log) = run(dir.path(), &broker, &["--group", "refused"]);
    assert_eq!(code, Some(9), "{log}");
    assert!(
        log.contains("in-dlq/0 refused a dead letter: MESSAGE_TOO_LARGE (10)"),
        "one clear line: {log}"
    );
    let bootstrap = broker.bootstrap();
    let (ok, out, err) = tool(
        "consumer-groups",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--describe",
            "--group",
            "refused",
        ],
    );
    assert!(ok || err.contains("no active members"), "{out} {err}");
    // The line of partition 0: GROUP TOPIC PARTITION CURRENT-OFFSET ...
    let committed = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("in"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|o| o.parse::<usize>().ok());
    assert!(
        committed.is_none_or(|c| c <= large[0]),
        "nothing past the refused record is committed: {committed:?} (first large at {})",
        large[0]
    );
    eprintln!(
        "refused dead letter: exit 9, committed {committed:?}, first refused offset {}",
        large[0]
    );
}
