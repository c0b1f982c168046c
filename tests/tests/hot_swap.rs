//! Hot swap through the real broker: a stage's file replaced while 100,000
//! events stream, a broken component dropped in (rejected, the old stage
//! keeps serving), and stages added, removed, reordered and pinned through
//! the config file with the admin endpoint and SIGHUP.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::{
    Read, broker_with_topic, count, eventually_async, free_port, generate, host, http, log_file,
    metric, read_all, sigterm, spawn_pipeline, wait_admin, wait_count, wait_exit, wat_component,
    wat_stage,
};

/// Replaces `to` with `from` atomically (as a deploy tool would).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// The `stage_version` a record was stamped with (0 when none).
fn version(r: &Read) -> i64 {
    let v: serde_json::Value =
        serde_json::from_slice(r.record.value.as_deref().unwrap_or_default()).expect("json");
    v["stage_version"].as_i64().unwrap_or(0)
}

/// Every input offset appears exactly once in `out`; returns the versions
/// per partition in offset order.
async fn exactly_once(client: &rskafka::client::Client, out: &[Read]) -> BTreeMap<i32, Vec<i64>> {
    let input = read_all(client, "in").await;
    let mut expected: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &input {
        expected.entry(r.partition).or_default().push(r.offset);
    }
    let mut seen: BTreeMap<i32, BTreeMap<i64, i64>> = BTreeMap::new();
    for r in out {
        let (p, o) = r.source();
        let before = seen.entry(p).or_default().insert(o, version(r));
        assert!(
            before.is_none(),
            "partition {p} offset {o} was delivered twice"
        );
    }
    for (p, offsets) in &expected {
        let got: Vec<i64> = seen
            .get(p)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        assert_eq!(
            &got, offsets,
            "partition {p}: every input offset exactly once"
        );
    }
    seen.into_iter()
        .map(|(p, m)| (p, m.into_values().collect()))
        .collect()
}

/// Version 1 serves; a component that does not implement the world is
/// dropped in and rejected (version 1 keeps serving); version 2 is dropped
/// in and takes over. Per partition the version changes once, at one
/// offset, and every one of the 100,000 events is in the output once.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_file_swaps_the_stage_without_loss_or_duplicates() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = wat_stage(dir.path(), "stamp", "stamp", 1);
    let v2 = wat_stage(dir.path(), "stamp-v2", "stamp", 2);

    let (log_path, log_out) = log_file(dir.path(), "swap");
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let mut pipeline = host(&[
        "--admin",
        &admin,
        "--bootstrap",
        &bootstrap,
        "--input",
        "in",
        "--output",
        "out",
        "--max-batch-records",
        "500",
        "--no-compile-cache",
    ])
    .arg("--plugin")
    .arg(&live)
    .stdout(Stdio::null())
    .stderr(log_out)
    .spawn()
    .expect("pipeline-host");
    let b = bootstrap.clone();
    let generator = std::thread::spawn(move || {
        generate(&b, "in", &["--count", "100000", "--rate", "20000"]);
    });

    wait_count(&client, "out", 20_000, Duration::from_secs(60)).await;
    wait_admin(port);
    replace(&wat_component("wrong_exports"), &live);
    // The rejection is an event the metrics count: wait for it.
    eventually_async(
        Duration::from_secs(30),
        "the broken file is rejected",
        || async {
            let (_, text) = http(port, "GET", "/metrics");
            match metric(&text, "pipeline_stage_reloads_total{result=\"rejected\"}") {
                Some(n) if n >= 1.0 => Ok(()),
                seen => Err(format!("rejected reloads: {seen:?}")),
            }
        },
    )
    .await;
    let after_rejection = count(&client, "out").await;
    wait_count(
        &client,
        "out",
        after_rejection + 5_000,
        Duration::from_secs(30),
    )
    .await;

    let swapped_at = chrono::Utc::now();
    replace(&v2, &live);
    let started = Instant::now();
    generator.join().expect("generator");
    wait_count(&client, "out", 100_000, Duration::from_secs(60)).await;
    eprintln!(
        "all 100000 delivered {:?} after the swap",
        started.elapsed()
    );
    sigterm(&pipeline);
    let status = wait_exit(&mut pipeline, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("reload rejected") && log.contains("does not implement the world"),
        "the broken component is rejected with the reason: {log}"
    );

    let out = read_all(&client, "out").await;
    assert_eq!(out.len(), 100_000);
    let versions = exactly_once(&client, &out).await;
    let mut v1_total = 0;
    for (p, seq) in &versions {
        let changes = seq.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 1, "partition {p}: the version changes once");
        assert_eq!(seq.first(), Some(&1), "partition {p} starts on version 1");
        assert_eq!(seq.last(), Some(&2), "partition {p} ends on version 2");
        v1_total += seq.iter().filter(|v| **v == 1).count() as i64;
    }
    assert!(
        v1_total > after_rejection,
        "version 1 kept serving after the rejected component ({v1_total} > {after_rejection})"
    );

    // Swap pause: from the new file to the first partition on version 2.
    let first_switch = log
        .lines()
        .filter(|l| l.contains("partition switched to the reloaded stages"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .min()
        .expect("a partition switched");
    let pause = first_switch.signed_duration_since(swapped_at);
    eprintln!(
        "swap pause (new file -> first partition serving version 2): {} ms",
        pause.num_milliseconds()
    );
    assert!(pause.num_milliseconds() >= 0);
}

fn stage_names(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The config file is the source of truth: stages are added and reordered
/// (admin `POST /reload`), a wrong sha256 pin is refused with 422 and
/// changes nothing, and a stage is removed with SIGHUP. Every event is
/// delivered once, each by the stages current when it was processed.
#[tokio::test(flavor = "multi_thread")]
async fn config_reloads_add_remove_reorder_and_pin_stages() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stamp1 = wat_stage(dir.path(), "stamp1", "stamp", 1);
    let stamp3 = wat_stage(dir.path(), "stamp3", "stamp", 3);
    let keep = wat_stage(dir.path(), "keep", "keep", 0);
    let sha3 = {
        let out = host(&["plugin", "check"])
            .arg(&stamp3)
            .output()
            .expect("check");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split('"').nth(1).expect("sha256 line").to_string()
    };
    let port = free_port();
    let config = dir.path().join("pipeline.toml");
    let write = |stages: &str| {
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap = \"{bootstrap}\"\n[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n\
                 [runtime]\nadmin = \"127.0.0.1:{port}\"\nwatch = false\n{stages}"
            ),
        )
        .expect("write config");
    };
    let stage = |name: &str, path: &Path, extra: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\nplugin = \"{}\"\n{extra}\n",
            path.display()
        )
    };
    write(&stage("stamp", &stamp1, ""));
    let (mut pipeline, log_path) = spawn_pipeline(&config, &[], dir.path(), "reload");
    wait_admin(port);
    generate(&bootstrap, "in", &["--count", "3000", "--seed", "1"]);
    wait_count(&client, "out", 3000, Duration::from_secs(60)).await;

    // Add a stage in front and switch the stamp to version 3.
    write(&format!(
        "{}{}",
        stage("keep", &keep, ""),
        stage("stamp", &stamp3, "")
    ));
    // Without a token, a reload needs the header a browser page cannot
    // send cross-origin.
    let (status, body) = http(port, "POST", "/reload");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Pipeline-Reload: 1"), "{body}");
    let (status, body) = pipeline_tests::reload(port);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stage_names(&body), ["keep", "stamp"]);
    generate(&bootstrap, "in", &["--count", "3000", "--seed", "2"]);
    wait_count(&client, "out", 6000, Duration::from_secs(60)).await;

    // A wrong pin is refused; the running stages stay.
    write(&format!(
        "{}{}",
        stage("keep", &keep, ""),
        stage(
            "stamp",
            &stamp3,
            &format!("sha256 = \"{}\"", "0".repeat(64))
        )
    ));
    let (status, body) = pipeline_tests::reload(port);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sha256 mismatch"), "{body}");
    let (_, current) = http(port, "GET", "/stages");
    assert_eq!(stage_names(&current), ["keep", "stamp"]);

    // Remove `keep` with the right pin, by SIGHUP.
    write(&stage("stamp", &stamp3, &format!("sha256 = \"{sha3}\"")));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pipeline.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    eventually_async(Duration::from_secs(20), "SIGHUP reloads", || async {
        let (_, current) = http(port, "GET", "/stages");
        if stage_names(&current) == ["stamp"] {
            Ok(())
        } else {
            Err(current)
        }
    })
    .await;
    generate(&bootstrap, "in", &["--count", "3000", "--seed", "3"]);
    wait_count(&client, "out", 9000, Duration::from_secs(60)).await;
    sigterm(&pipeline);
    let status = wait_exit(&mut pipeline, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "{log}");
    assert!(log.contains("stages reloaded"), "{log}");

    let out = read_all(&client, "out").await;
    let versions = exactly_once(&client, &out).await;
    let all: Vec<i64> = versions.values().flatten().copied().collect();
    assert_eq!(
        all.iter().filter(|v| **v == 1).count(),
        3000,
        "the first 3000 by version 1"
    );
    assert_eq!(
        all.iter().filter(|v| **v == 3).count(),
        6000,
        "the rest by version 3"
    );
}
