//! Transactional input (issue 13 item 9), written by Python confluent-kafka
//! through Apache Kafka: the pipeline reads `read_committed`. Records of
//! aborted transactions never reach the stages, commit and abort markers
//! neither stop `--until-end` nor make the reader spin at the tail, and the
//! lag is 0 once everything is read.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use pipeline_tests::{
    Broker, free_port, http, metric, pipeline, python_json, read_all, run_stage_to_end, sigterm,
    wait_admin, wait_count, wait_exit, wat_stage,
};

/// Writes the interleaved transactional input into `topic`: the `n` a
/// read_committed reader must see and those it must not.
fn write_transactions(broker: &Broker, topic: &str) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let v = python_json("transactions.py", &[&broker.bootstrap(), topic]);
    let set = |k: &str| {
        v[k].as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_i64())
            .collect()
    };
    (set("visible"), set("hidden"))
}

/// The `n` of every record in `topic`.
async fn numbers(broker: &Broker, topic: &str) -> Vec<i64> {
    let client = broker.client().await;
    read_all(&client, topic)
        .await
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.record.value.as_deref()?).ok()?;
            v["n"].as_i64()
        })
        .collect()
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_transactions_never_reach_the_stages() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (visible, hidden) = write_transactions(&broker, "txn");
    let stage = wat_stage(dir.path(), "keep", "keep", 0);

    // --until-end ends although the log ends with a transaction marker.
    run_stage_to_end(&broker.bootstrap(), "txn", "txn-out", &stage);
    let seen = numbers(&broker, "txn-out").await;
    let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "nothing doubled");
    let leaked: Vec<_> = seen_set.intersection(&hidden).collect();
    assert!(
        leaked.is_empty(),
        "records of aborted transactions reached the output: {leaked:?}"
    );
    assert_eq!(seen_set, visible, "every committed and plain record, once");

    // At the tail: no busy fetch loop over the markers, and lag 0.
    let port = free_port();
    let mut tail = pipeline(&broker.bootstrap(), "txn", "txn-tail")
        .arg("--plugin")
        .arg(&stage)
        .args(["--admin", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    wait_admin(port);
    let client = broker.client().await;
    wait_count(
        &client,
        "txn-tail",
        visible.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_seconds(tail.id());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = cpu_seconds(tail.id()) - before;
    let (status, text) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    let lag = metric(
        &text,
        "pipeline_consumer_lag{topic=\"txn\",partition=\"0\"}",
    );
    sigterm(&tail);
    assert!(wait_exit(&mut tail, Duration::from_secs(30)).success());
    eprintln!(
        "transactional input: {} visible, {} aborted left out; at the tail {idle_cpu:.2} CPU s in 5 s, lag {lag:?}",
        visible.len(),
        hidden.len()
    );
    assert_eq!(lag, Some(0.0), "lag once everything is read: {text}");
    assert!(
        idle_cpu < 1.0,
        "the reader spins at the tail: {idle_cpu:.2} CPU seconds in 5 s"
    );
}
