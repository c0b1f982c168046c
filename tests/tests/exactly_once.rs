//! Exactly-once delivery (`--guarantee exactly-once`) through Apache Kafka:
//! the output, the dead letters and the input offsets are committed in
//! Kafka transactions, so `read_committed` readers find every input's
//! outcome once, whatever crashes in between. Checked with three readers:
//! the project's own (the vendored rskafka reads `read_committed`), Python
//! confluent-kafka, and Kafka's own console consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::kafka::tool;
use pipeline_tests::{
    Broker, audit, audit_totals, count, host, pipeline, plugin, python, read_all, root, wait_exit,
};

/// A generator streaming `count` events at `rate` per second into "in"
/// (6 partitions), 1% of them not JSON (dead letters).
fn stream(broker: &Broker, count: u64, rate: u64) -> Child {
    host(&["generate", "--bootstrap", &broker.bootstrap()])
        .args(["--topic", "in", "--partitions", "6", "--malformed", "0.01"])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--seed", "14"])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("generator")
}

/// An exactly-once member of group "eo" running `categorize` (which passes
/// every valid event on), logging JSON to `log`.
fn member(broker: &Broker, log: &Path, extra: &[&str]) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    pipeline(&broker.bootstrap(), "in", "out")
        .args(["--group", "eo", "--guarantee", "exactly-once"])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .args([
            "--session-timeout-ms",
            "6000",
            "--heartbeat-interval-ms",
            "500",
        ])
        .args(["--transaction-timeout-ms", "10000"])
        .args(extra)
        .args(["--log-format", "json"])
        .stderr(file)
        .stdout(Stdio::null())
        .spawn()
        .expect("pipeline-host")
}

/// Input (partition, offset) -> how many outcomes (output records and
/// dead letters) a `read_committed` reader finds for it.
async fn outcomes(broker: &Broker) -> (BTreeSet<(i32, i64)>, BTreeMap<(i32, i64), usize>) {
    let client = broker.client().await;
    let inputs = read_all(&client, "in")
        .await
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let mut seen = BTreeMap::new();
    for topic in ["out", "in-dlq"] {
        for r in read_all(&client, topic).await {
            *seen.entry(r.source()).or_insert(0) += 1;
        }
    }
    (inputs, seen)
}

fn duplicates(seen: &BTreeMap<(i32, i64), usize>) -> usize {
    seen.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// Python confluent-kafka's `read_committed` count: (inputs, missing,
/// duplicates).
fn confluent_check(broker: &Broker) -> (u64, u64, u64) {
    let out = std::process::Command::new(python())
        .arg(root().join("tests/python/exactly_once.py"))
        .args([&broker.bootstrap(), "in", "out", "in-dlq"])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    let n = |k: &str| v[k].as_u64().expect("a count");
    (n("inputs"), n("missing"), n("duplicates"))
}

/// Kafka's own console consumer with `--isolation-level read_committed`:
/// the source (partition, offset) header pair of every record of `topic`.
fn console_sources(broker: &Broker, topic: &str, expect: usize) -> Vec<(i32, i64)> {
    let (ok, out, err) = tool(
        "console-consumer",
        &[
            "--bootstrap-server",
            &broker.bootstrap(),
            "--topic",
            topic,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            &expect.to_string(),
            "--timeout-ms",
            "20000",
            "--property",
            "print.headers=true",
            "--property",
            "headers.separator=;",
            "--property",
            "print.value=false",
        ],
    );
    // It exits non-zero on its timeout, which is how it ends when it read
    // fewer than `expect` records: the count is checked by the caller.
    let _ = ok;
    out.lines()
        .map(|line| {
            let header = |name: &str| -> i64 {
                line.split(';')
                    .find_map(|h| h.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}: {err}"))
            };
            (
                header("pipeline.source.partition:") as i32,
                header("pipeline.source.offset:"),
            )
        })
        .collect()
}

/// kill -9 at pseudo-random points while 100,000 events stream in on six
/// partitions, five times, restarting each time as the same static member
/// (whose transactional id fences its previous incarnation and aborts what
/// it left open): every input's outcome is in the output or the
/// dead-letter topic exactly once for `read_committed` readers, ours,
/// confluent-kafka's and Kafka's console consumer.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_repeats_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 100_000, 4000);
    let client = broker.client().await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let static_member = ["--group-instance-id", "eo-0", "--max-batch-records", "500"];
    for round in 0..5 {
        let log = dir.path().join(format!("{round}.log"));
        let before = count(&client, "out").await;
        let mut m = member(&broker, &log, &static_member);
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
        let (_, seen) = outcomes(&broker).await;
        eprintln!(
            "crash {}: killed after {} new output offsets; duplicates so far: {}",
            round + 1,
            target - before,
            duplicates(&seen)
        );
        assert_eq!(
            duplicates(&seen),
            0,
            "a read_committed reader saw a duplicate"
        );
    }
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    let mut last = member(
        &broker,
        &dir.path().join("last.log"),
        &["--until-end", "--group-instance-id", "eo-0"],
    );
    assert!(wait_exit(&mut last, Duration::from_secs(90)).success());

    let (inputs, seen) = outcomes(&broker).await;
    assert_eq!(inputs.len(), 100_000);
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let dead = read_all(&client, "in-dlq").await.len();
    eprintln!(
        "ours: {} inputs, {} outcomes ({dead} dead letters), {missing} missing, {} duplicates",
        inputs.len(),
        seen.values().sum::<usize>(),
        duplicates(&seen)
    );
    assert_eq!(missing, 0, "inputs with no outcome after five kill -9");
    assert_eq!(duplicates(&seen), 0, "inputs with two outcomes");
    assert!(
        dead > 500,
        "the 1% malformed events are dead letters: {dead}"
    );

    let args = [
        "--plugin".to_string(),
        plugin("categorize").display().to_string(),
        "--group".into(),
        "eo".into(),
        "--guarantee".into(),
        "exactly-once".into(),
    ];
    let (code, report) = audit(&broker.bootstrap(), &args);
    assert_eq!(code, Some(0), "audit: {report}");
    let totals = audit_totals(&report);
    eprintln!(
        "audit (exactly-once): inputs, delivered, filtered, missing, duplicates = {totals:?}"
    );
    assert_eq!((totals[3], totals[4]), (0, 0));

    let (n, missing, dups) = confluent_check(&broker);
    eprintln!("confluent-kafka read_committed: {n} inputs, {missing} missing, {dups} duplicates");
    assert_eq!((n, missing, dups), (100_000, 0, 0));

    let mut sources = console_sources(&broker, "out", seen.values().sum::<usize>() - dead);
    sources.extend(console_sources(&broker, "in-dlq", dead));
    let unique: BTreeSet<_> = sources.iter().collect();
    eprintln!(
        "kafka-console-consumer --isolation-level read_committed: {} outcomes, {} distinct",
        sources.len(),
        unique.len()
    );
    assert_eq!(sources.len(), 100_000, "every outcome read once");
    assert_eq!(unique.len(), 100_000, "no duplicate");
}

/// Sends `signal` (`STOP`, `CONT`) to `child`.
fn signal(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A zombie: member A is stopped (SIGSTOP) while it has a transaction
/// open, member B takes its partitions after A's session timeout, then A
/// is let go (SIGCONT). A's late transaction is fenced (its generation is
/// stale, or the broker timed the transaction out) and nothing it wrote
/// becomes visible: `read_committed` readers find every outcome once.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_member_writes_nothing_visible() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 40_000, 2000);
    let client = broker.client().await;
    let quick = [
        "--rebalance-timeout-ms",
        "10000",
        "--max-batch-records",
        "200",
    ];
    let mut a = member(&broker, &dir.path().join("a.log"), &quick);
    pipeline_tests::wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    signal(&a, "STOP");
    let stopped = count(&client, "out").await;
    let mut b = member(&broker, &dir.path().join("b.log"), &quick);
    // B owns everything once A's session (6 s) is over, and delivers.
    let start = Instant::now();
    while count(&client, "out").await < stopped + 5000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "B did not take over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = start.elapsed();
    signal(&a, "CONT");
    // A wakes up with its old generation and its open transaction.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let a_log = std::fs::read_to_string(dir.path().join("a.log")).expect("A's log");
    let fenced = a_log.contains("transaction aborted")
        || a_log.contains("was fenced")
        || a_log.contains("cannot commit");
    eprintln!("B took over {took_over:?} after A stopped; A fenced after SIGCONT: {fenced}");
    assert!(fenced, "A's late transaction was not fenced:\n{a_log}");
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    for m in [&mut a, &mut b] {
        pipeline_tests::sigterm(m);
        let status = wait_exit(m, Duration::from_secs(30));
        // A may have stopped by itself with exit code 10 (fenced producer).
        assert!(status.success() || status.code() == Some(10), "{status}");
    }
    let mut last = member(&broker, &dir.path().join("last.log"), &["--until-end"]);
    assert!(wait_exit(&mut last, Duration::from_secs(90)).success());
    let (inputs, seen) = outcomes(&broker).await;
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    eprintln!(
        "zombie: {} inputs, {missing} missing, {} duplicates",
        inputs.len(),
        duplicates(&seen)
    );
    assert_eq!(inputs.len(), 40_000);
    assert_eq!(missing, 0);
    assert_eq!(duplicates(&seen), 0, "the zombie's writes became visible");
}
