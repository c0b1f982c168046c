//! Committed offsets and consumer groups through a real broker. The stage
//! is `categorize`, which never drops or fails a valid event, so every input
//! record must appear in the output exactly once (or, after a crash, at
//! least once), identified by its source headers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{
    Broker, count, eventually_async, group_timers, group_timers_for, host, pipeline, plugin,
    read_all, sigterm, wait_count, wait_exit,
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

/// A generator streaming `count` events at `rate` per second into "in"
/// (6 partitions) while the test goes on.
fn stream(broker: &Broker, count: u64, rate: u64, seed: u64) -> Child {
    host(&[
        "generate",
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        "in",
        "--partitions",
        "6",
    ])
    .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
    .args(["--seed", &seed.to_string()])
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .expect("generator")
}

fn member(broker: &Broker, group: &str, log: &Path, extra: &[&str]) -> Child {
    spawn_member(broker, group, log, extra, "info,rskafka=warn")
}

/// A member of `group` running `categorize` with short group timers,
/// logging JSON at `rust_log` to `log`.
fn spawn_member(broker: &Broker, group: &str, log: &Path, extra: &[&str], rust_log: &str) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let mut command = pipeline(&broker.bootstrap(), "in", "out");
    command
        .env("RUST_LOG", rust_log)
        .args(["--group", group])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .args(["--commit-interval-ms", "500"]);
    command
        .args(group_timers_for(extra))
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
    logged(log, message)
        .into_iter()
        .map(|mut e| e["fields"].take())
        .collect()
}

/// The whole JSON lines (timestamp, level, fields) of the events named
/// `message` in a member's log, in order.
fn logged(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["message"] == message)
        .collect()
}

/// The partitions of the last "joined the group" event of a member's log.
fn assignment(log: &Path) -> Option<Vec<i32>> {
    let joined = events(log, "joined the group").pop()?;
    // The field lists topic-partition pairs as Kafka's tools print them:
    // "in-0,in-3" (one input topic here).
    let list = joined["partitions"].as_str()?;
    Some(
        list.split(',')
            .filter_map(|tp| tp.rsplit_once('-')?.1.parse().ok())
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
    three_members(Join::Classic("range")).await;
}

/// The same with the cooperative-sticky assignor: survivors keep their
/// partitions and take over the dead member's.
#[tokio::test(flavor = "multi_thread")]
async fn cooperative_sticky_members_take_over_after_kill_9() {
    three_members(Join::Classic("cooperative-sticky")).await;
}

/// The same under KIP-848's consumer protocol: the broker assigns, and
/// the survivors keep their partitions and take over the dead member's.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_protocol_members_take_over_after_kill_9() {
    three_members(Join::Consumer).await;
}

/// How a test's members join their group.
#[derive(Debug, Clone, Copy)]
enum Join {
    /// The classic protocol with this assignor.
    Classic(&'static str),
    /// KIP-848's consumer protocol.
    Consumer,
}

impl Join {
    /// A broker for these members (the consumer protocol's timers are the
    /// broker's).
    fn broker(self) -> Broker {
        match self {
            Join::Classic(_) => Broker::start(),
            Join::Consumer => Broker::start(),
        }
    }

    fn flags(self) -> Vec<&'static str> {
        match self {
            Join::Classic(assignor) => vec!["--group-protocol", "classic", "--assignor", assignor],
            Join::Consumer => vec!["--group-protocol", "consumer"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Join::Classic(assignor) => assignor,
            Join::Consumer => "consumer protocol",
        }
    }

    /// Survivors keep what they own and end up balanced.
    fn sticky(self) -> bool {
        matches!(self, Join::Classic("cooperative-sticky") | Join::Consumer)
    }
}

async fn three_members(join: Join) {
    let assignor = join.label();
    let broker = join.broker();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in", 30_000, 3);
    let logs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("m{i}.log")))
        .collect();
    let mut members: Vec<Child> = logs
        .iter()
        .map(|l| member(&broker, "trio", l, &join.flags()))
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
    if join.sticky() {
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

/// kill -9 at pseudo-random points while events stream in on six
/// partitions at 4,000 a second, five times, restarting each time (as a
/// static member, so the restart takes over at once, as on Kubernetes):
/// nothing is missing from the output; the duplicates each crash caused are
/// printed.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_loses_nothing() {
    kill_9_five_times(Join::Classic("range")).await;
}

/// The same five kill -9 under KIP-848's consumer protocol: the restarted
/// static member waits until the broker releases its instance id (the
/// session timeout), then resumes from the committed offsets.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_under_the_consumer_protocol_loses_nothing() {
    kill_9_five_times(Join::Consumer).await;
}

async fn kill_9_five_times(join: Join) {
    let broker = join.broker();
    let dir = pipeline_tests::log_dir();
    // The stream runs until the five rounds are over, however long they
    // take: a consumer-protocol restart waits a session timeout before it
    // runs, and a stream that ended first left a round with nothing to do.
    let mut generator = stream(&broker, u64::MAX, 4000, 5);
    let client = broker.client().await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut dups_before = 0;
    let static_member = [
        &join.flags()[..],
        &[
            "--group-instance-id",
            "crashy-0",
            "--max-batch-records",
            "500",
        ],
    ]
    .concat();
    for round in 0..5 {
        let log = dir.path().join(format!("{round}.log"));
        let before = count(&client, "out").await;
        let mut m = logged_member(&broker, "crashy", &log, &static_member);
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
        // Not before its first commit: a member that catches up a backlog
        // (under the consumer protocol a restarted static member waits a
        // session timeout for its instance id) can deliver the target
        // within one commit interval, and a kill then repeats the whole
        // round, past the in-flight bound.
        wait_for("the member's first commit", Duration::from_secs(30), || {
            !events(&log, "committed").is_empty()
        })
        .await;
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
    sigterm(&generator);
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    let mut last = member(
        &broker,
        "crashy",
        &dir.path().join("last.log"),
        &[
            &join.flags()[..],
            &["--until-end", "--group-instance-id", "crashy-0"],
        ]
        .concat(),
    );
    assert!(wait_exit(&mut last, Duration::from_secs(60)).success());
    let (inputs, seen) = tally(&broker, "in", "out").await;
    // The first round alone delivered 2,000 outputs, none of them repeated.
    assert!(inputs.len() >= 2_000, "{} inputs", inputs.len());
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    assert_eq!(missing, 0, "events missing after five kill -9");
    let dups: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    eprintln!(
        "{}: duplicates caused by the last crash: {}; total {dups} of {} inputs",
        join.label(),
        dups - dups_before,
        inputs.len()
    );
}

/// Every "committed" event of a member's JSON log (debug level):
/// (timestamp, partition, offset), in log order.
fn commits(log: &Path) -> Vec<(String, i32, i64)> {
    let mut out = Vec::new();
    for e in logged(log, "committed") {
        let at = e["timestamp"].as_str().unwrap_or_default().to_string();
        // The field is the Debug form of the list of (topic-partition,
        // offset) pairs; the topic here ("in") has no digits.
        let list = e["fields"]["offsets"].as_str().unwrap_or_default();
        for pair in list.split("), (") {
            let nums: Vec<i64> = pair
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [p, o] = nums[..] {
                out.push((at.clone(), p as i32, o));
            }
        }
    }
    out
}

/// A member whose commits are logged, so the test can check that the
/// group's committed offsets never move back.
fn logged_member(broker: &Broker, group: &str, log: &Path, extra: &[&str]) -> Child {
    spawn_member(
        broker,
        group,
        log,
        extra,
        "info,rskafka=warn,pipeline_host::pipeline::membership=debug",
    )
}

/// Graceful scaling 2 -> 3 -> 2 -> 3 while events stream: members join
/// and leave (SIGTERM, never a crash). Every input appears exactly once:
/// a partition moves only after its old owner delivered, committed and
/// stopped it. The group's committed offset of every partition never
/// moves back (no stale commit from an earlier ownership).
async fn graceful_scaling(join: Join) {
    let assignor = join.label();
    let broker = join.broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 60000, 2000, 11);
    let client = broker.client().await;
    let mut logs = Vec::new();
    let mut start = |name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        logs.push(log.clone());
        logged_member(
            &broker,
            "scale",
            &log,
            &[&join.flags()[..], &["--max-batch-records", "200"]].concat(),
        )
    };
    let mut a = start("a");
    let mut b = start("b");
    wait_count(&client, "out", 4_000, Duration::from_secs(60)).await;
    // 2 -> 3
    let mut c = start("c");
    let seen = count(&client, "out").await;
    wait_count(&client, "out", seen + 6_000, Duration::from_secs(60)).await;
    // 3 -> 2: b leaves.
    sigterm(&b);
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());
    let seen = count(&client, "out").await;
    wait_count(&client, "out", seen + 6_000, Duration::from_secs(60)).await;
    // 2 -> 3: d joins.
    let mut d = start("d");
    assert!(wait_exit(&mut generator, Duration::from_secs(90)).success());
    wait_count(&client, "out", 60_000, Duration::from_secs(60)).await;
    for m in [&mut a, &mut c, &mut d] {
        sigterm(m);
        assert!(wait_exit(m, Duration::from_secs(30)).success());
    }
    let (inputs, seen) = tally(&broker, "in", "out").await;
    assert_eq!(inputs.len(), 60_000);
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{assignor}: graceful 2 -> 3 -> 2 -> 3: {missing} missing, {} duplicated",
        duplicated.len()
    );
    assert_eq!(missing, 0, "inputs missing from the output");
    assert!(
        duplicated.is_empty(),
        "{} inputs produced twice, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    committed_never_moves_back(&logs);
}

/// Across the members' logs, in time order, the committed offset of every
/// partition never moves back (no stale commit from an earlier
/// ownership), and every partition was committed.
fn committed_never_moves_back(logs: &[std::path::PathBuf]) {
    let mut all: Vec<(String, i32, i64)> = logs.iter().flat_map(|l| commits(l)).collect();
    all.sort();
    let mut last: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for (at, p, o) in &all {
        if let Some((prev, prev_at)) = last.get(p) {
            assert!(
                o >= prev,
                "partition {p}: committed {o} at {at} after {prev} at {prev_at}: a stale commit moved the group back"
            );
        }
        last.insert(*p, (*o, at.clone()));
    }
    assert_eq!(last.len(), 6, "every partition was committed: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_scaling_with_range_repeats_nothing() {
    graceful_scaling(Join::Classic("range")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_scaling_with_cooperative_sticky_repeats_nothing() {
    graceful_scaling(Join::Classic("cooperative-sticky")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_scaling_under_the_consumer_protocol_repeats_nothing() {
    graceful_scaling(Join::Consumer).await;
}

/// A live group moved member by member from the classic protocol to
/// KIP-848's and back, as a rolling restart does (SIGTERM, restart with the
/// other protocol), while 40,000 events stream: the broker converts the
/// group when the first consumer-protocol member joins and back when the
/// last one leaves (`group.consumer.migration.policy=bidirectional`), and
/// classic members go on in the converted group. Every input appears
/// exactly once; the group's committed offsets never move back.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_group_migrates_to_the_consumer_protocol_and_back() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 40_000, 2_000, 23);
    let client = broker.client().await;
    let mut logs = Vec::new();
    let mut start = |name: &str, join: Join| {
        let log = dir.path().join(format!("{name}.log"));
        logs.push(log.clone());
        logged_member(
            &broker,
            "migrate",
            &log,
            &[&join.flags()[..], &["--max-batch-records", "200"]].concat(),
        )
    };
    let classic = Join::Classic("range");
    let mut members = vec![start("a-classic", classic), start("b-classic", classic)];
    wait_count(&client, "out", 2_000, Duration::from_secs(60)).await;
    // Each step replaces one member with the other protocol, then waits
    // until the output moves on.
    let steps = [
        ("a-consumer", Join::Consumer),
        ("b-consumer", Join::Consumer),
        ("a-classic-again", classic),
        ("b-classic-again", classic),
    ];
    for (i, (name, join)) in steps.into_iter().enumerate() {
        let mut old = members.remove(0);
        sigterm(&old);
        assert!(
            wait_exit(&mut old, Duration::from_secs(30)).success(),
            "{name}: the member it replaces stopped cleanly"
        );
        members.push(start(name, join));
        let seen = count(&client, "out").await;
        wait_count(&client, "out", seen + 3_000, Duration::from_secs(60)).await;
        eprintln!("migration step {}: {name} joined; {} outputs", i + 1, seen);
    }
    assert!(wait_exit(&mut generator, Duration::from_secs(90)).success());
    wait_count(&client, "out", 40_000, Duration::from_secs(60)).await;
    for m in &mut members {
        sigterm(m);
        assert!(wait_exit(m, Duration::from_secs(30)).success());
    }
    let (inputs, seen) = tally(&broker, "in", "out").await;
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "classic -> consumer -> classic under load: {} inputs, {missing} missing, {duplicated} duplicated",
        inputs.len()
    );
    for (log, protocol) in logs.iter().zip([
        "classic", "classic", "consumer", "consumer", "classic", "classic",
    ]) {
        let chosen = events(log, "group protocol chosen");
        assert_eq!(
            chosen.first().and_then(|e| e["protocol"].as_str()),
            Some(protocol),
            "{}",
            log.display()
        );
    }
    assert_eq!(inputs.len(), 40_000);
    assert_eq!((missing, duplicated), (0, 0), "missing, duplicated");
    committed_never_moves_back(&logs);
}

/// Rebalance figures, one workload per protocol: three members share 12
/// partitions while 2,000 events/s stream in; a fourth member joins, then
/// one leaves (SIGTERM). Printed for each: the time from the join (the
/// leave) until every partition that moved runs again (the last "partition
/// assigned" after it, in the members' logs; the eager protocol moves them
/// all), and the records processed twice. Nothing may be missing.
async fn rebalance_figures(join: Join) {
    let broker = join.broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = host(&["generate", "--bootstrap", &broker.bootstrap()])
        .args(["--topic", "in", "--partitions", "12", "--count", "60000"])
        .args(["--rate", "2000", "--seed", "29"])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("generator");
    let client = broker.client().await;
    let logs: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("m{i}.log")))
        .collect();
    let start = |i: usize| logged_member(&broker, "figures", &logs[i], &join.flags());
    let mut members: Vec<Child> = (0..3).map(start).collect();
    let sizes = |ls: &[std::path::PathBuf], each: usize| {
        ls.iter()
            .all(|l| assignment(l).is_some_and(|a| a.len() == each))
    };
    wait_for("four partitions each", Duration::from_secs(60), || {
        sizes(&logs[..3], 4)
    })
    .await;
    wait_count(&client, "out", 4_000, Duration::from_secs(60)).await;
    let joined_at = chrono::Utc::now();
    members.push(start(3));
    wait_for("three partitions each", Duration::from_secs(60), || {
        sizes(&logs, 3)
    })
    .await;
    let join_pause = last_assigned_since(&logs, joined_at);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left_at = chrono::Utc::now();
    sigterm(&members[0]);
    assert!(wait_exit(&mut members[0], Duration::from_secs(30)).success());
    wait_for(
        "four partitions each again",
        Duration::from_secs(60),
        || sizes(&logs[1..], 4),
    )
    .await;
    let leave_pause = last_assigned_since(&logs[1..], left_at);
    assert!(wait_exit(&mut generator, Duration::from_secs(90)).success());
    wait_count(&client, "out", 60_000, Duration::from_secs(60)).await;
    for m in &mut members[1..] {
        sigterm(m);
        assert!(wait_exit(m, Duration::from_secs(30)).success());
    }
    let (inputs, seen) = tally(&broker, "in", "out").await;
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let twice: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    eprintln!(
        "rebalance figures, {}: 3 members, 12 partitions, 2,000 events/s; a 4th joins: {} partitions paused, every one runs again after {:.2} s; one leaves: {} paused, after {:.2} s; records processed twice: {twice}; missing: {missing}",
        join.label(),
        join_pause.1,
        join_pause.0.as_secs_f64(),
        leave_pause.1,
        leave_pause.0.as_secs_f64()
    );
    assert_eq!(missing, 0, "inputs missing from the output");
}

/// The time from `since` to the last "partition assigned" event after it
/// in `logs`, and how many partitions were (re)assigned after it: each
/// had stopped, so that many paused.
fn last_assigned_since(
    logs: &[std::path::PathBuf],
    since: chrono::DateTime<chrono::Utc>,
) -> (Duration, usize) {
    let after: Vec<_> = logs
        .iter()
        .flat_map(|l| logged(l, "partition assigned"))
        .filter_map(|e| {
            e["timestamp"]
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok()
        })
        .filter(|t| *t >= since)
        .collect();
    let last = after.iter().max().map_or(Duration::ZERO, |t| {
        (*t - since).to_std().unwrap_or_default()
    });
    (last, after.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_figures_classic_eager() {
    rebalance_figures(Join::Classic("range")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_figures_classic_cooperative_sticky() {
    rebalance_figures(Join::Classic("cooperative-sticky")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_figures_consumer_protocol() {
    rebalance_figures(Join::Consumer).await;
}

/// `--group-protocol auto` (the default) asks the coordinator: the
/// consumer protocol on Kafka 4 (its `group.version` feature is on),
/// classic on 3.x (the compatibility run); the choice is logged, and the
/// member consumes. A classic-only setting makes auto choose classic.
#[tokio::test(flavor = "multi_thread")]
async fn auto_chooses_the_protocol_the_broker_offers() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in", 3_000, 21);
    let log = dir.path().join("auto.log");
    let mut m = member(
        &broker,
        "auto",
        &log,
        &["--group-protocol", "auto", "--until-end"],
    );
    // Session flags are the classic protocol's: auto runs without them.
    assert!(wait_exit(&mut m, Duration::from_secs(90)).success());
    let chosen = events(&log, "group protocol chosen");
    let protocol = chosen.first().expect("the choice is logged")["protocol"]
        .as_str()
        .expect("protocol")
        .to_owned();
    let version = pipeline_tests::kafka::version();
    let expected = if version.starts_with("3.") {
        "classic"
    } else {
        "consumer"
    };
    eprintln!("auto on Kafka {version}: {protocol}");
    assert_eq!(protocol, expected);
    let (inputs, seen) = tally(&broker, "in", "out").await;
    assert!(
        inputs.iter().all(|k| seen.contains_key(k)),
        "every input delivered"
    );
    // A classic-only setting keeps a group classic under auto: a
    // configuration written for classic keeps working as it did.
    let log = dir.path().join("auto-classic.log");
    let mut m = member(
        &broker,
        "auto-classic",
        &log,
        &[
            "--group-protocol",
            "auto",
            "--session-timeout-ms",
            "6000",
            "--until-end",
        ],
    );
    assert!(wait_exit(&mut m, Duration::from_secs(90)).success());
    let chosen = events(&log, "group protocol chosen");
    let chosen = chosen.first().expect("the choice is logged");
    assert_eq!(chosen["protocol"].as_str(), Some("classic"), "{chosen}");
    assert_eq!(
        chosen["because"].as_str(),
        Some("--session-timeout-ms is a classic protocol setting"),
        "{chosen}"
    );
}

/// Settings the consumer protocol does not use are refused, not ignored.
#[test]
fn classic_only_settings_are_refused_under_the_consumer_protocol() {
    let out = pipeline("127.0.0.1:1", "in", "out")
        .args(["--group", "g", "--group-protocol", "consumer"])
        .args(["--session-timeout-ms", "6000"])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .output()
        .expect("pipeline-host");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--session-timeout-ms does not apply to --group-protocol consumer"),
        "{err}"
    );
}

/// A second process with the same `--group-instance-id` under the
/// classic protocol (named: this is classic's behaviour) takes the first's
/// place: the broker fences the first, which must stop producing at once (within a heartbeat or two, well
/// inside its session timeout) and exit with the group error code (6).
/// Prints how long it took and how many records were repeated; nothing is
/// missing. (Under the consumer protocol the broker refuses the twin
/// instead: `a_static_twin_waits_under_the_consumer_protocol`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_static_member_stops_at_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 30000, 2000, 12);
    let client = broker.client().await;
    let static_id = ["--group-protocol", "classic", "--group-instance-id", "twin"];
    let first_log = dir.path().join("first.log");
    let mut first = logged_member(&broker, "twins", &first_log, &static_id);
    wait_count(&client, "out", 3_000, Duration::from_secs(60)).await;
    let second_log = dir.path().join("second.log");
    let mut second = logged_member(&broker, "twins", &second_log, &static_id);
    wait_for("the second joins", Duration::from_secs(60), || {
        !events(&second_log, "joined the group").is_empty()
    })
    .await;
    let joined = Instant::now();
    let status = wait_exit(&mut first, Duration::from_secs(30));
    let took = joined.elapsed();
    let (missing, repeated) = twins_end(&broker, &mut generator, &mut second).await;
    eprintln!(
        "fenced static member: stopped {:.2} s after its twin joined (session timeout 6 s); {repeated} records repeated, {missing} missing",
        took.as_secs_f64()
    );
    assert_eq!(missing, 0);
    assert_eq!(
        status.code(),
        Some(6),
        "the fenced member exits with the group error code: {}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );
    assert!(
        took < Duration::from_secs(3),
        "the fenced member took {took:?} to stop (heartbeat 500 ms, session 6 s)"
    );
}

/// The end of a static-twin test: once the generator's 30,000 events are
/// all out, stops the member still running and returns the inputs
/// missing from the output and the records repeated.
async fn twins_end(broker: &Broker, generator: &mut Child, last: &mut Child) -> (usize, usize) {
    assert!(wait_exit(generator, Duration::from_secs(90)).success());
    wait_count(
        &broker.client().await,
        "out",
        30_000,
        Duration::from_secs(60),
    )
    .await;
    sigterm(last);
    assert!(wait_exit(last, Duration::from_secs(30)).success());
    let (inputs, seen) = tally(broker, "in", "out").await;
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let repeated: usize = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    (missing, repeated)
}

/// Under KIP-848's consumer protocol a second process with a static
/// member's `--group-instance-id` is refused (UNRELEASED_INSTANCE_ID) while
/// the first lives: it waits, retrying, and joins no group, while the
/// first goes on undisturbed. Once the first leaves (SIGTERM: a static
/// leave, epoch -2), the twin takes its place and its partitions at once.
/// Prints how long the takeover took; nothing is missing, nothing repeated.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_twin_waits_under_the_consumer_protocol() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 30000, 2000, 12);
    let client = broker.client().await;
    let flags = [
        "--group-protocol",
        "consumer",
        "--group-instance-id",
        "twin",
    ];
    let first_log = dir.path().join("first.log");
    let mut first = logged_member(&broker, "twins", &first_log, &flags);
    wait_count(&client, "out", 3_000, Duration::from_secs(60)).await;
    let second_log = dir.path().join("second.log");
    let mut second = logged_member(&broker, "twins", &second_log, &flags);
    // The twin is refused while the first keeps delivering.
    let before = count(&client, "out").await;
    wait_for("the twin is refused", Duration::from_secs(30), || {
        std::fs::read_to_string(&second_log).is_ok_and(|l| l.contains("UNRELEASED_INSTANCE_ID"))
    })
    .await;
    wait_count(&client, "out", before + 2_000, Duration::from_secs(60)).await;
    assert!(
        events(&second_log, "joined the group").is_empty(),
        "the twin joined while the first lived"
    );
    assert!(
        first.try_wait().expect("status").is_none(),
        "the first still runs"
    );
    sigterm(&first);
    let left = Instant::now();
    assert!(wait_exit(&mut first, Duration::from_secs(30)).success());
    wait_for("the twin joins", Duration::from_secs(30), || {
        assignment(&second_log).is_some_and(|a| !a.is_empty())
    })
    .await;
    let took = left.elapsed();
    let (missing, repeated) = twins_end(&broker, &mut generator, &mut second).await;
    eprintln!(
        "static twin (consumer protocol): took over {:.2} s after the first was stopped; {repeated} records repeated, {missing} missing",
        took.as_secs_f64()
    );
    assert_eq!((missing, repeated), (0, 0), "missing, repeated");
}

/// The input grows from 3 to 6 partitions while the pipeline runs, and
/// events land in the new partitions before it notices: they are consumed
/// from their start, as Kafka's consumers do after a metadata refresh (in
/// a group, the leader rebalances to assign them).
async fn added_partitions(group: bool) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let generate_on = |count: &str, partitions: &str, seed: &str| {
        let status = host(&["generate", "--bootstrap", &broker.bootstrap()])
            .args(["--topic", "in", "--partitions", partitions])
            .args(["--count", count, "--seed", seed])
            .stderr(Stdio::null())
            .status()
            .expect("generate");
        assert!(status.success());
    };
    generate_on("3000", "3", "21");
    let refresh = ["--metadata-refresh-ms", "1000"];
    let log = dir.path().join("m.log");
    let mut m = if group {
        member(&broker, "growing", &log, &refresh)
    } else {
        pipeline(&broker.bootstrap(), "in", "out")
            .arg("--plugin")
            .arg(plugin("categorize"))
            .args(refresh)
            .stderr(std::fs::File::create(&log).expect("log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("pipeline-host")
    };
    let client = broker.client().await;
    wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    let bootstrap = broker.bootstrap();
    let (ok, out, err) = pipeline_tests::kafka::tool(
        "topics",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--alter",
            "--topic",
            "in",
            "--partitions",
            "6",
        ],
    );
    assert!(ok, "{out} {err}");
    generate_on("6000", "6", "22");
    wait_count(&client, "out", 9000, Duration::from_secs(60)).await;
    sigterm(&m);
    assert!(wait_exit(&mut m, Duration::from_secs(30)).success());
    let (inputs, seen) = tally(&broker, "in", "out").await;
    assert_eq!(inputs.len(), 9000);
    let missing: Vec<_> = inputs.iter().filter(|k| !seen.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let new_partitions: BTreeSet<i32> = seen.keys().map(|(p, _)| *p).filter(|p| *p >= 3).collect();
    assert_eq!(new_partitions, BTreeSet::from([3, 4, 5]));
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_while_running_are_consumed_in_a_group() {
    added_partitions(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_while_running_are_consumed_alone() {
    added_partitions(false).await;
}

/// Two pipelines share one group id but read different topics ("in-a" and
/// "in-b"). Each member is assigned only partitions of the topic it reads,
/// as Java's assignors do, so every event of both topics has its output
/// exactly once. The previous leader assigned its own topic's partitions
/// to every member, so the other pipeline read nothing, silently.
#[tokio::test(flavor = "multi_thread")]
async fn pipelines_reading_different_topics_can_share_a_group() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in-a", 1200, 31);
    generate(&broker, "in-b", 900, 32);
    let start = |input: &str, output: &str, name: &str| {
        let file = std::fs::File::create(dir.path().join(name)).expect("log");
        pipeline(&broker.bootstrap(), input, output)
            .args(["--group", "shared"])
            .arg("--plugin")
            .arg(plugin("categorize"))
            .args(group_timers())
            .args(["--log-format", "json"])
            .stderr(file)
            .stdout(Stdio::null())
            .spawn()
            .expect("pipeline-host")
    };
    let mut a = start("in-a", "out-a", "a.log");
    let mut b = start("in-b", "out-b", "b.log");
    let client = broker.client().await;
    let client = &client;
    let outcomes = |topic: &'static str, output: &'static str| async move {
        read_all(client, output).await.len() + read_all(client, &format!("{topic}-dlq")).await.len()
    };
    let done = eventually_async(
        Duration::from_secs(90),
        "both topics fully read",
        || async {
            let (na, nb) = (
                outcomes("in-a", "out-a").await,
                outcomes("in-b", "out-b").await,
            );
            if na >= 1200 && nb >= 900 {
                Ok((na, nb))
            } else {
                Err(format!("in-a {na} of 1200, in-b {nb} of 900"))
            }
        },
    )
    .await;
    for m in [&a, &b] {
        sigterm(m);
    }
    assert!(wait_exit(&mut a, Duration::from_secs(30)).success());
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());
    for (input, output) in [("in-a", "out-a"), ("in-b", "out-b")] {
        let (inputs, seen) = tally(&broker, input, output).await;
        let dead = read_all(client, &format!("{input}-dlq")).await.len();
        assert!(seen.values().all(|n| *n == 1), "{input}: a record twice");
        assert_eq!(seen.len() + dead, inputs.len(), "{input}: every event once");
    }
    let plans = events(&dir.path().join("a.log"), "leader assigned partitions")
        .into_iter()
        .chain(events(
            &dir.path().join("b.log"),
            "leader assigned partitions",
        ))
        .count();
    eprintln!(
        "two pipelines, one group id, topics in-a and in-b: {done:?} outcomes; {plans} leader plans"
    );
}

/// A coordinator that stops answering (its JVM stopped with SIGSTOP, the
/// TCP connection still open): the member gives up its partitions once
/// its session must have expired (6 s), not after a heartbeat call blocked
/// for the request timeout (30 s), and takes them back once the broker
/// answers again. The previous host waited for the call's 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_coordinator_ends_the_session_at_the_session_timeout() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&broker, "in", 600, 41);
    let log = dir.path().join("m.log");
    let mut m = member(&broker, "silent", &log, &["--request-timeout-ms", "30000"]);
    let client = broker.client().await;
    wait_count(&client, "out", 1, Duration::from_secs(60)).await;
    wait_for("the member joined", Duration::from_secs(30), || {
        assignment(&log).is_some_and(|a| !a.is_empty())
    })
    .await;
    let pid = broker.kafka_mut().node(1).pid().expect("broker pid");
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    kill("-STOP");
    let lost = "no heartbeat within the session timeout: the group may have moved this member's partitions; stopping them at once, without committing";
    let took = wait_for("the session ends", Duration::from_secs(40), || {
        !events(&log, lost).is_empty()
    })
    .await;
    kill("-CONT");
    eprintln!(
        "silent coordinator: session given up after {took:?} (session 6 s, request timeout 30 s)"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Back in the group, the member goes on.
    generate(&broker, "in", 300, 42);
    let all = eventually_async(Duration::from_secs(90), "the rest is read", || async {
        let (inputs, seen) = tally(&broker, "in", "out").await;
        let dead = read_all(&broker.client().await, "in-dlq").await.len();
        if seen.len() + dead >= inputs.len() {
            Ok(inputs.len())
        } else {
            Err(format!("{} of {}", seen.len() + dead, inputs.len()))
        }
    })
    .await;
    sigterm(&m);
    assert!(wait_exit(&mut m, Duration::from_secs(30)).success());
    eprintln!("after the pause: all {all} inputs have their outcome");
}
