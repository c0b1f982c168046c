//! The windowed aggregation stage (`version_counts`, stateful) through the
//! real broker: counts per app version in 60 s event-time windows, emitted
//! to a stats topic keyed by (window, version, partition), exact across a
//! kill -9 mid-window (state checkpointed with the committed offsets), and
//! the global query (`pipeline-host counts`) equals an independent count.

use std::collections::BTreeMap;
use std::time::Duration;

use pipeline_tests::{
    Crashes, broker_with_topic, count, generate, host, plugin, read_all, spawn_pipeline,
    wait_count, wait_exit,
};

/// (window start ms, version, partition) -> count.
type Counts = BTreeMap<(i64, String, i32), u64>;

/// Counts of the closed windows of `in`, computed here from the events.
async fn expected(client: &rskafka::client::Client) -> Counts {
    let mut per_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for r in read_all(client, "in").await {
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("json");
        let ts = match &v["timestamp"] {
            serde_json::Value::String(s) => s.parse::<i64>().expect("epoch seconds"),
            other => other.as_i64().expect("epoch seconds"),
        };
        let version = v["app_version"].as_str().expect("app_version").to_string();
        per_partition
            .entry(r.partition)
            .or_default()
            .push((ts, version));
    }
    let mut counts = Counts::new();
    for (p, events) in per_partition {
        let watermark = events.iter().map(|(t, _)| *t).max().expect("events");
        for (ts, version) in events {
            let start = ts - ts.rem_euclid(60);
            if start + 60 <= watermark {
                *counts.entry((start * 1000, version, p)).or_default() += 1;
            }
        }
    }
    counts
}

/// The latest count per key of the stats topic, and how many records it
/// holds (more than keys where a window was emitted again).
async fn emitted(client: &rskafka::client::Client) -> (Counts, usize) {
    let mut latest = Counts::new();
    let records = read_all(client, "counts").await;
    for r in &records {
        let key = String::from_utf8(r.record.key.clone().expect("key")).expect("utf-8");
        let mut parts = key.splitn(3, '/');
        let (start, version, p) = (
            parts.next().and_then(|s| s.parse().ok()).expect("window"),
            parts.next().expect("version").to_string(),
            parts
                .next()
                .and_then(|s| s.parse().ok())
                .expect("partition"),
        );
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("json");
        assert_eq!(
            v["window_start_ms"].as_i64(),
            Some(start),
            "key and value agree"
        );
        latest.insert((start, version, p), v["count"].as_u64().expect("count"));
    }
    (latest, records.len())
}

/// Restarts the pipeline after a kill and runs it to the end of the input,
/// checking that it resumed from the checkpoints; returns the expected
/// counts, the emitted ones and how many count records were read.
async fn restart_to_end(
    client: &rskafka::client::Client,
    config: &std::path::Path,
    dir: &std::path::Path,
) -> (Counts, Counts, usize) {
    let (mut last, log_path) = spawn_pipeline(config, &["--until-end"], dir, "last");
    let status = wait_exit(&mut last, Duration::from_secs(120));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("stateful stages restored from their checkpoint"),
        "the restart resumed from checkpoints: {log}"
    );
    let (got, records) = emitted(client).await;
    (expected(client).await, got, records)
}

/// The pipeline's configuration: `bootstrap`, input `in` (200-record
/// batches), output `out`, group `windows` with `group` settings added,
/// `output` settings added, and the `version_counts` stage with
/// `settings`, its counts to the topic `counts`.
fn config(bootstrap: &str, output: &str, group: &str, settings: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap = "{bootstrap}"
[input]
topic = "in"
max_batch_records = 200
[output]
topic = "out"
{output}
[group]
id = "windows"
session_timeout_ms = 6000
{group}
[runtime]
watch = false
[[stage]]
plugin = "{stage}"
outputs = {{ counts = "counts" }}
config = {{ {settings} }}
"#,
        stage = plugin("version_counts").display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn window_counts_are_exact_across_a_kill_mid_window() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("pipeline.toml");
    let write = |settings: &str| {
        std::fs::write(&config_path, config(&bootstrap, "", "", settings)).expect("write config");
    };
    write("window_secs = 60");

    // 30,000 events at 10 per second of event time: 50 windows of 60 s.
    let b = bootstrap.clone();
    let generator = std::thread::spawn(move || {
        generate(
            &b,
            "in",
            &["--count", "30000", "--rate", "6000", "--seed", "11"],
        );
    });
    let (mut first, first_log) = spawn_pipeline(&config_path, &[], dir.path(), "first");
    wait_count(&client, "counts", 20, Duration::from_secs(60)).await;
    // Swap the stage mid-stream (new settings, same meaning): the running
    // instances hand their open windows to their successors.
    write("window_secs = 60, allowed_lateness_secs = 0");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &first.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    // Once every partition has switched, let windows that were open at the
    // switch close and their offsets be committed, then kill.
    pipeline_tests::eventually_async(
        Duration::from_secs(30),
        "the reload reaches every partition",
        || async {
            let switched = std::fs::read_to_string(&first_log)
                .expect("log")
                .matches("partition switched to the reloaded stages")
                .count();
            if switched >= 3 {
                Ok(())
            } else {
                Err(format!("{switched} of 3 partitions switched"))
            }
        },
    )
    .await;
    let at_switch = count(&client, "counts").await;
    wait_count(&client, "counts", at_switch + 40, Duration::from_secs(60)).await;
    first.kill().expect("kill -9");
    let killed = first.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "killed by SIGKILL"
    );
    let log = std::fs::read_to_string(&first_log).expect("log");
    assert!(
        log.contains("partition switched to the reloaded stages"),
        "the stage was swapped before the kill: {log}"
    );
    let at_kill = count(&client, "in").await;
    generator.join().expect("generator");
    assert!(at_kill < 30_000, "killed mid-stream ({at_kill} events in)");

    let (want, got, _) = restart_to_end(&client, &config_path, dir.path()).await;
    assert!(want.len() > 100, "enough windows to mean something");
    assert_eq!(
        got, want,
        "the last record per key equals the independent count"
    );

    // The global query sums the partitions.
    let query = host(&["counts", "--bootstrap", &bootstrap, "--topic", "counts"])
        .output()
        .expect("pipeline-host counts");
    assert!(query.status.success());
    let mut global: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for ((start, version, _), n) in &want {
        *global.entry((*start, version.clone())).or_default() += n;
    }
    let mut answered: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&query.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        answered.insert(
            (
                v["window_start_ms"].as_i64().expect("start"),
                v["app_version"].as_str().expect("version").to_string(),
            ),
            v["count"].as_u64().expect("count"),
        );
    }
    assert_eq!(
        answered, global,
        "pipeline-host counts gives the global figures"
    );
}

/// Under exactly-once the window counts a stage emits, its state
/// checkpoint and the input offsets commit in one transaction: kill -9
/// three times mid-stream, and a `read_committed` reader of the stats topic
/// finds every closed window once, with its exact count. (Under
/// at-least-once the test above reads the latest record per key, because
/// windows closed after the last commit are emitted again.)
#[tokio::test(flavor = "multi_thread")]
async fn window_counts_are_emitted_once_under_exactly_once_across_kills() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("pipeline.toml");
    std::fs::write(
        &config_path,
        config(
            &bootstrap,
            r#"guarantee = "exactly-once""#,
            r#"instance_id = "windows-0""#,
            "window_secs = 60",
        ),
    )
    .expect("write config");
    // 60,000 events at 10 per second of event time: 100 windows of 60 s.
    let b = bootstrap.clone();
    let generator = std::thread::spawn(move || {
        generate(
            &b,
            "in",
            &["--count", "60000", "--rate", "2000", "--seed", "12"],
        );
    });
    let mut crashes = Crashes::default();
    for round in 0..3 {
        let before = count(&client, "out").await;
        let (mut p, _) = spawn_pipeline(&config_path, &[], dir.path(), &format!("crash-{round}"));
        let grew = crashes.kill_after(&client, "out", before, &mut p).await;
        eprintln!("windows, exactly-once: killed after {grew} new output offsets");
    }
    let at_kill = count(&client, "in").await;
    generator.join().expect("generator");
    assert!(at_kill < 60_000, "killed mid-stream ({at_kill} events in)");

    let (want, got, records) = restart_to_end(&client, &config_path, dir.path()).await;
    eprintln!(
        "windows, exactly-once: {} windows expected, {} keys and {records} records read",
        want.len(),
        got.len()
    );
    assert!(want.len() > 200, "enough windows to mean something");
    assert_eq!(records, got.len(), "a window was emitted twice");
    assert_eq!(got, want, "every window's count is exact");
}

/// Event `n` of app version 1.0 at event time `ts` (epoch seconds).
fn version_event(n: usize, ts: i64) -> pipeline_tests::KeyValue {
    let v = format!(r#"{{"n":{n},"app_version":"1.0","timestamp":{ts}}}"#);
    (None, Some(v.into_bytes()))
}

/// A broker with a one-partition "in" and the configuration of the
/// `version_counts` stage with `settings`: (broker, bootstrap, client, the
/// folder holding the file, the file).
async fn one_partition(
    settings: &str,
) -> (
    pipeline_tests::Broker,
    String,
    rskafka::client::Client,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let (broker, bootstrap, client) = broker_with_topic("in", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("pipeline.toml");
    std::fs::write(&config_path, config(&bootstrap, "", "", settings)).expect("write config");
    (broker, bootstrap, client, dir, config_path)
}

/// An upstream transaction aborted at the input's tail moves the committed
/// offset past records the stage never sees (the aborted ones and their
/// marker). The checkpoint must follow it: a restart from that offset
/// restores the window's state, and the window of 1,000 events counts
/// 1,000. The previous host committed the offset without a checkpoint at
/// it, so the restart started empty ("no checkpoint at the committed
/// offset") and the window counted 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_window_stays_exact_across_an_aborted_upstream_transaction() {
    let (_broker, bootstrap, client, _dir, config_path) = one_partition("window_secs = 60").await;
    // Event time 970 s: the window [960 s, 1020 s).
    let first: Vec<_> = (0..500).map(|n| version_event(n, 970)).collect();
    pipeline_tests::produce(&client, "in", 0, first).await;
    let run = |name: &str| {
        let (status, log) = pipeline_tests::run_until_end(&config_path, &[]);
        assert!(status.success(), "{name}: {log}");
        log
    };
    run("first run");

    pipeline_tests::python_json("aborted_tail.py", &[&bootstrap, "in", "20"]);
    // The abort marker is written after the producer's abort returns.
    pipeline_tests::eventually_async(
        Duration::from_secs(30),
        "500 events, 20 aborted records and their marker",
        || async {
            match count(&client, "in").await {
                521 => Ok(()),
                n => Err(format!("log end {n}")),
            }
        },
    )
    .await;
    let log = run("the run over the aborted tail");
    assert!(
        !log.contains("no checkpoint at the committed offset"),
        "{log}"
    );

    // 500 more events of the same window, then one that closes it.
    let mut second: Vec<_> = (500..1000).map(|n| version_event(n, 970)).collect();
    second.push(version_event(1000, 1100));
    pipeline_tests::produce(&client, "in", 0, second).await;
    let log = run("the run after the restart");
    assert!(
        log.contains("stateful stages restored from their checkpoint"),
        "{log}"
    );
    let (counts, _) = emitted(&client).await;
    let window = counts.get(&(960_000, "1.0".to_string(), 0)).copied();
    eprintln!("aborted upstream tail: window [960 s, 1020 s) counted {window:?} of 1000");
    assert_eq!(window, Some(1000), "{counts:?}");
}

/// A stage that emits side records to an output it was not given breaks
/// the contract: the batch fails under the stage's policy (here its
/// records go to the dead-letter topic, isolated to the one that closed
/// the window), and nothing of it is lost. The previous host dropped the
/// side records with a warning and delivered and committed the batch.
#[tokio::test(flavor = "multi_thread")]
async fn side_records_to_an_unmapped_output_fail_their_batch() {
    let (_broker, _, client, _dir, config_path) =
        one_partition(r#"window_secs = 60, output = "unmapped""#).await;
    let mut events: Vec<_> = (0..100).map(|n| version_event(n, 970)).collect();
    events.push(version_event(100, 1100));
    pipeline_tests::produce(&client, "in", 0, events).await;
    let (status, log) = pipeline_tests::run_until_end(&config_path, &[]);
    assert!(status.success(), "{log}");
    let dlq = read_all(&client, "in-dlq").await;
    let offsets: Vec<i64> = dlq.iter().map(|r| r.source().1).collect();
    assert_eq!(offsets, vec![100], "the record that closed the window");
    let why = dlq[0].header("pipeline.error.reason").unwrap_or_default();
    assert!(
        why.contains(r#"side output "unmapped" is not configured"#),
        "{why}"
    );
    assert_eq!(read_all(&client, "out").await.len(), 100);
    assert!(read_all(&client, "counts").await.is_empty());
    eprintln!("side records to an unmapped output: 1 dead letter ({why}), 100 outputs");
}
