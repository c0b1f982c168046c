//! Committed offsets and consumer groups through a real broker. The stage
//! is `categorize`, which never drops or fails a valid event, so every input
//! record must appear in the output exactly once (or, after a crash, at
//! least once), identified by its source headers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{
    Broker, count, eventually_async, host, pipeline, plugin, read_all, sigterm, wait_count,
    wait_exit,
};

/// Input (partition, offset) -> how many output records came from it.
async fn tally(
    broker: &Broker,
    input: &str,
    output: &str,
) -> (BTreeSet<(i32, i64)>, BTreeMap<(i32, i64), usize>) {
    let client = broker.client().await;
    let inputs: BTreeSet<(i32, i64)> = read_all(&client, input)
        .await
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let mut seen = BTreeMap::new();
    for r in read_all(&client, output).await {
        *seen.entry(r.source()).or_insert(0) += 1;
    }
    (inputs, seen)
}

fn generate(broker: &Broker, topic: &str, count: u64, seed: u64) {
    let status = host(&[
        "generate",
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        "6",
        "--seed",
    ])
    .arg(seed.to_string())
    .arg("--count")
    .arg(count.to_string())
    .stderr(Stdio::null())
    .status()
    .expect("generate");
    assert!(status.success());
}

fn member(broker: &Broker, group: &str, log: &Path, extra: &[&str]) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    pipeline(&broker.bootstrap(), "in", "out")
        .args(["--group", group])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .args([
            "--session-timeout-ms",
            "6000",
            "--heartbeat-interval-ms",
            "500",
            "--commit-interval-ms",
            "500",
        ])
        .args(extra)
        .args(["--log-format", "json"])
        .stderr(file)
        .stdout(Stdio::null())
        .spawn()
        .expect("pipeline-host")
}

/// The fields of the events named `message` in a member's JSON log, in
/// order.
fn events(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["message"] == message)
        .map(|e| e["fields"].clone())
        .collect()
}

/// The partitions of the last "joined the group" event of a member's log.
fn assignment(log: &Path) -> Option<Vec<i32>> {
    let joined = events(log, "joined the group").pop()?;
    // The field is the Debug form of the partition list: "[0, 3]".
    let list = joined["partitions"].as_str()?;
    Some(
        list.trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// Waits until `ok`, returning how long that took.
async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    eventually_async(limit, what, || {
        std::future::ready(if ok() {
            Ok(())
        } else {
            Err("not yet".to_string())
        })
    })
    .await;
    start.elapsed()
}

/// The per-partition record bound a host logs at start.
fn in_flight_bound(log: &Path) -> usize {
    events(log, "pipeline running")
        .first()
        .and_then(|e| e["in_flight_records"].as_u64())
        .expect("the host logs its in-flight bound") as usize
}

/// SIGTERM, more input, restart with the same group: the restart resumes
/// from the committed offsets; every input is in the output exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_restart_resume_from_committed_offsets_without_duplicates() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in", 20_000, 1);
    let mut first = member(&broker, "g", &dir.path().join("1.log"), &[]);
    let client = broker.client().await;
    wait_count(&client, "out", 5_000, Duration::from_secs(30)).await;
    sigterm(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(30)).success());
    generate(&broker, "in", 5_000, 2);
    let mut second = member(&broker, "g", &dir.path().join("2.log"), &["--until-end"]);
    assert!(wait_exit(&mut second, Duration::from_secs(60)).success());
    let assigned = events(&dir.path().join("2.log"), "partition assigned");
    assert!(
        !assigned.is_empty()
            && assigned.iter().all(|e| e["committed"]
                .as_str()
                .is_some_and(|c| c.starts_with("Some("))),
        "the restart resumed every partition from its committed offset: {assigned:?}"
    );

    let (inputs, seen) = tally(&broker, "in", "out").await;
    assert_eq!(inputs.len(), 25_000);
    let missing: Vec<_> = inputs.iter().filter(|k| !seen.contains_key(k)).collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "{} duplicated, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert_eq!(seen.len(), inputs.len());
}

/// Three members split six partitions two each; after one is killed with
/// -9, the other two own all six within session timeout + 10 s; nothing is
/// missing at the end, and partitions the killed member never owned were
/// never produced twice. With the range assignor.
#[tokio::test(flavor = "multi_thread")]
async fn three_members_split_the_partitions_and_take_over_after_kill_9() {
    three_members("range").await;
}

/// The same with the cooperative-sticky assignor: survivors keep their
/// partitions and take over the dead member's.
#[tokio::test(flavor = "multi_thread")]
async fn cooperative_sticky_members_take_over_after_kill_9() {
    three_members("cooperative-sticky").await;
}

async fn three_members(assignor: &str) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in", 30_000, 3);
    let logs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("m{i}.log")))
        .collect();
    let mut members: Vec<Child> = logs
        .iter()
        .map(|l| member(&broker, "trio", l, &["--assignor", assignor]))
        .collect();
    wait_for("two partitions each", Duration::from_secs(60), || {
        logs.iter()
            .all(|l| assignment(l).is_some_and(|a| a.len() == 2))
    })
    .await;
    let victim_partitions = assignment(&logs[0]).expect("assignment");
    members[0].kill().expect("kill -9");
    members[0].wait().expect("reap");
    let took = wait_for(
        "the survivors own all six",
        Duration::from_secs(6 + 10),
        || {
            let mut all: Vec<i32> = logs[1..]
                .iter()
                .filter_map(|l| assignment(l))
                .flatten()
                .collect();
            all.sort_unstable();
            all == [0, 1, 2, 3, 4, 5]
        },
    )
    .await;
    eprintln!("{assignor}: rebalance after kill -9 took {took:?} (session timeout 6 s)");
    if assignor == "cooperative-sticky" {
        for l in &logs[1..] {
            let now = assignment(l).expect("assignment");
            assert_eq!(now.len(), 3, "balanced: {now:?}");
        }
    }
    generate(&broker, "in", 10_000, 4);
    let client = broker.client().await;
    let start = Instant::now();
    loop {
        let (inputs, seen) = tally(&broker, "in", "out").await;
        if inputs.iter().all(|k| seen.contains_key(k)) {
            for (k, n) in &seen {
                assert!(
                    *n == 1 || victim_partitions.contains(&k.0),
                    "partition {} was produced twice at offset {} though only live members owned it",
                    k.0,
                    k.1
                );
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "inputs still missing from the output"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = count(&client, "out").await;
    for m in &mut members[1..] {
        sigterm(m);
        assert!(wait_exit(m, Duration::from_secs(30)).success());
    }
}

/// kill -9 at pseudo-random points while 100,000 events stream in on six
/// partitions, five times, restarting each time (as a static member, so
/// the restart takes over at once, as on Kubernetes): nothing is missing
/// from the output; the duplicates each crash caused are printed.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_loses_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = host(&[
        "generate",
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        "in",
        "--partitions",
        "6",
    ])
    .args(["--count", "100000", "--rate", "4000", "--seed", "5"])
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .expect("generator");
    let client = broker.client().await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut dups_before = 0;
    let static_member = [
        "--group-instance-id",
        "crashy-0",
        "--max-batch-records",
        "500",
    ];
    for round in 0..5 {
        let log = dir.path().join(format!("{round}.log"));
        let before = count(&client, "out").await;
        let mut m = member(&broker, "crashy", &log, &static_member);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = before + 2_000 + (rng % 6_000) as i64;
        let start = Instant::now();
        while count(&client, "out").await < target {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: no progress after restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m.kill().expect("kill -9");
        m.wait().expect("reap");
        let (_, seen) = tally(&broker, "in", "out").await;
        let dups: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
        let bound = in_flight_bound(&log) * 6;
        eprintln!(
            "crash {}: killed after {} new outputs; duplicates caused by the previous crash: {} (bound {bound})",
            round + 1,
            target - before,
            dups - dups_before
        );
        assert!(
            dups - dups_before <= bound,
            "more duplicates than the in-flight bound the host logged"
        );
        dups_before = dups;
    }
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    let mut last = member(
        &broker,
        "crashy",
        &dir.path().join("last.log"),
        &["--until-end", "--group-instance-id", "crashy-0"],
    );
    assert!(wait_exit(&mut last, Duration::from_secs(60)).success());
    let (inputs, seen) = tally(&broker, "in", "out").await;
    assert_eq!(inputs.len(), 100_000);
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    assert_eq!(missing, 0, "events missing after five kill -9");
    let dups: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    eprintln!(
        "duplicates caused by the last crash: {}; total {dups} of {} inputs",
        dups - dups_before,
        inputs.len()
    );
}
