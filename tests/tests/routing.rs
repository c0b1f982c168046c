//! Routes (contract 0.2.0, issue 28), through Apache Kafka: stages send
//! records to named outputs the operator maps to topics.
//!
//! - Three outputs with fan-out: `anomaly` flags, a `router` sends flagged
//!   events to `suspicious`, a second `router` sends German events to
//!   `german` and keeps a copy on the default output; a hand-written 0.1.0
//!   stage runs first, unchanged. Every input is found where the routes
//!   say, once, with its key, headers and timestamp; `audit` agrees.
//! - A route no topic is mapped to: batches that use it fail under the
//!   stage's policy (dead letters naming the route; `stop` stops).
//! - A hot swap to a stage version that declares an unmapped route is
//!   rejected before it goes live; the old version keeps routing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pipeline_tests::{
    Broker, Read, audit, audit_totals, create_topic, free_port, host, plugin, produce_batch,
    read_all, sigterm, spawn_pipeline, wait_admin, wait_count, wait_exit, wat_stage,
};
use rskafka::record::EncodedRecords;

const LOCALES: [&str; 5] = ["DE", "RU", "US", "CN", "FR"];

/// Input `n`'s locale.
fn locale(n: usize) -> &'static str {
    LOCALES[n % LOCALES.len()]
}

/// Produces `per_partition` events to each of `partitions` partitions of
/// `in`: key `k<n>`, headers `trace=<n>` and two `dup`s, value
/// `{"n":N,"locale":L}`, timestamp 1,000,000 + n.
async fn produce_events(client: &rskafka::client::Client, partitions: i32, per_partition: usize) {
    for p in 0..partitions {
        let mut batch = EncodedRecords::new();
        for i in 0..per_partition {
            let n = p as usize * per_partition + i;
            let value = format!(r#"{{"n":{n},"locale":"{}"}}"#, locale(n));
            let trace = n.to_string();
            let key = format!("k{n}");
            batch.push(
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                [
                    (&b"trace"[..], trace.as_bytes()),
                    (b"dup", b"a"),
                    (b"dup", b"b"),
                ],
                1_000_000 + n as i64,
            );
        }
        produce_batch(client, "in", p, batch).await;
    }
}

/// A `[[stage]]` entry.
fn stage(name: &str, path: &Path, config: &str) -> String {
    format!(
        "[[stage]]\nname = \"{name}\"\nplugin = \"{}\"\nconfig = {{ {config} }}\n",
        path.display()
    )
}

/// The event number of an output record.
fn n_of(r: &Read) -> usize {
    let v: serde_json::Value =
        serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("JSON");
    v["n"].as_u64().expect("n") as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn records_reach_three_outputs_with_fan_out_and_keep_keys_headers_timestamps() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 3).await;
    let per_partition = 400;
    produce_events(&client, 3, per_partition).await;
    let inputs = 3 * per_partition;

    let dir = tempfile::tempdir().expect("tempdir");
    // A 0.1.0 component written by hand: appends {"stage_version":7}.
    let stamp = wat_stage(dir.path(), "stamp", "stamp", 7);
    let check = host(&["plugin", "check"])
        .arg(&stamp)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("pipeline:stage/stage@0.1.0"), "{text}");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}{}{}",
            stage("stamp", &stamp, ""),
            stage("anomaly", &plugin("anomaly"), ""),
            stage("to_suspicious", &plugin("router"), "route = \"suspicious\""),
            stage(
                "to_german",
                &plugin("router"),
                "field = \"locale\", values = \"DE\", route = \"german\", copy_to_default = true"
            ),
        ),
    )
    .expect("config");
    let flags = [
        "--bootstrap",
        &broker.bootstrap(),
        "--input",
        "in",
        "--output",
        "out",
        "--route",
        "suspicious=suspicious-logins",
        "--route",
        "german=german-logins",
    ];
    let status = host(&["--config"])
        .arg(&config)
        .args(flags)
        .arg("--until-end")
        .stderr(Stdio::null())
        .status()
        .expect("pipeline-host");
    assert!(status.success());

    // Where each input went, by event number.
    let mut found: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut records = Vec::new();
    for topic in ["out", "suspicious-logins", "german-logins"] {
        for r in read_all(&client, topic).await {
            found.entry(n_of(&r)).or_default().push(topic);
            records.push(r);
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in 0..inputs {
        let mut want = match locale(n) {
            "DE" => vec!["out", "german-logins"],
            "RU" | "CN" => vec!["suspicious-logins"],
            _ => vec!["out"],
        };
        let mut got = found.remove(&n).unwrap_or_default();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "event {n} ({})", locale(n));
        for t in got {
            *counts.entry(t).or_default() += 1;
        }
    }
    assert!(found.is_empty(), "records of no input: {found:?}");
    eprintln!("routes: {counts:?} of {inputs} inputs");

    for r in &records {
        let n = n_of(r);
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("JSON");
        assert_eq!(v["stage_version"], 7, "the 0.1.0 stage ran: {v}");
        assert_eq!(v["anomaly"], matches!(locale(n), "RU" | "CN"), "{v}");
        assert_eq!(r.record.key.as_deref(), Some(format!("k{n}").as_bytes()));
        assert_eq!(r.record.timestamp.timestamp_millis(), 1_000_000 + n as i64);
        assert_eq!(r.header("trace"), Some(n.to_string()));
        let dups: Vec<&[u8]> = r
            .record
            .headers
            .iter()
            .filter(|(k, _)| *k == b"dup")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(dups, [b"a", b"b"], "repeated headers kept in order");
        assert_eq!(r.header("pipeline.source.topic").as_deref(), Some("in"));
    }

    let args = [
        "--config".to_string(),
        config.display().to_string(),
        "--route".into(),
        "suspicious=suspicious-logins".into(),
        "--route".into(),
        "german=german-logins".into(),
    ];
    let (code, report) = audit(&broker.bootstrap(), &args);
    assert_eq!(code, Some(0), "audit: {report}");
    let totals = audit_totals(&report);
    eprintln!("audit: inputs, delivered, filtered, missing, duplicates = {totals:?}");
    assert_eq!(totals[0], inputs as u64);
    assert_eq!((totals[3], totals[4]), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_no_topic_is_mapped_to_fails_its_batches_under_the_stage_policy() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    produce_events(&client, 1, 500).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |output: &str, policy: &str| {
        let config = dir.path().join(format!("{output}.toml"));
        std::fs::write(
            &config,
            format!(
                "{}{}on_error = \"{policy}\"\n",
                stage("anomaly", &plugin("anomaly"), ""),
                stage(
                    "router",
                    &plugin("router"),
                    "field = \"n\", values = \"7,77,277\", route = \"nowhere\""
                ),
            ),
        )
        .expect("config");
        host(&["--config"])
            .arg(&config)
            .args(["--bootstrap", &broker.bootstrap(), "--input", "in"])
            .args(["--output", output, "--dlq", &format!("{output}-dlq")])
            .arg("--until-end")
            .stderr(Stdio::null())
            .status()
            .expect("pipeline-host")
    };
    // dead-letter: the three events routed to `nowhere` are dead letters
    // naming the route (isolated from their batch); the others are
    // delivered.
    assert!(run("out", "dead-letter").success());
    let out = read_all(&client, "out").await;
    let dead = read_all(&client, "out-dlq").await;
    let flagged = 3;
    let mut dead_n: Vec<usize> = dead.iter().map(n_of).collect();
    dead_n.sort_unstable();
    assert_eq!(dead_n, [7, 77, 277], "the routed records, isolated");
    assert_eq!(out.len(), 500 - flagged);
    let reason = dead[0].header("pipeline.error.reason").expect("reason");
    assert!(reason.contains("nowhere"), "{reason}");
    assert_eq!(
        dead[0].header("pipeline.error.stage").as_deref(),
        Some("router")
    );
    // skip: the same records are dropped, the others delivered.
    assert!(run("skipped", "skip").success());
    assert_eq!(read_all(&client, "skipped").await.len(), 500 - flagged);
    assert!(read_all(&client, "skipped-dlq").await.is_empty());
    // stop: the pipeline stops without delivering the batch.
    let stopped = run("stopped", "stop");
    assert!(!stopped.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_swap_to_an_unmapped_route_is_rejected_and_the_old_stage_keeps_routing() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("pipeline.toml");
    let write = |route: &str| {
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap = \"{}\"\n[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n\
                 routes = {{ suspicious = \"suspicious-logins\" }}\n\
                 [runtime]\nadmin = \"127.0.0.1:{port}\"\nwatch = false\n{}{}",
                broker.bootstrap(),
                stage("anomaly", &plugin("anomaly"), ""),
                stage("router", &plugin("router"), &format!("route = \"{route}\"")),
            ),
        )
        .expect("config");
    };
    write("suspicious");
    let (mut pipeline, log_path) = spawn_pipeline(&config, &[], dir.path(), "swap");
    wait_admin(port);
    produce_events(&client, 1, 500).await;
    let flagged = (0..500)
        .filter(|n| matches!(locale(*n), "RU" | "CN"))
        .count() as i64;
    wait_count(
        &client,
        "suspicious-logins",
        flagged,
        Duration::from_secs(60),
    )
    .await;

    // The new version routes to `elsewhere`, which no topic is mapped to.
    write("elsewhere");
    let (status, body) = pipeline_tests::reload(port);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("elsewhere"), "{body}");
    let (_, stages) = pipeline_tests::http(port, "GET", "/stages");
    let stages: serde_json::Value = serde_json::from_str(&stages).expect("JSON");
    assert_eq!(stages["generation"], 1, "{stages}");
    assert_eq!(stages["stages"][1]["routes"][0], "suspicious", "{stages}");
    assert_eq!(stages["stages"][1]["contract"], "0.2.0", "{stages}");

    // The old version still routes the next events.
    let mut batch = EncodedRecords::new();
    for n in 0..100usize {
        let value = format!(r#"{{"n":{},"locale":"RU"}}"#, 1000 + n);
        batch.push(None, Some(value.as_bytes()), [], 0);
    }
    produce_batch(&client, "in", 0, batch).await;
    wait_count(
        &client,
        "suspicious-logins",
        flagged + 100,
        Duration::from_secs(60),
    )
    .await;
    sigterm(&pipeline);
    let status = wait_exit(&mut pipeline, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "{log}");
    assert_eq!(
        read_all(&client, "suspicious-logins").await.len() as i64,
        flagged + 100
    );
}
