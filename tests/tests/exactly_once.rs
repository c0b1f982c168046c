//! Exactly-once delivery (`--guarantee exactly-once`) through Apache Kafka:
//! the output, the dead letters and the input offsets are committed in
//! Kafka transactions, so `read_committed` readers find every input's
//! outcome once, whatever crashes in between. Checked with three readers:
//! the project's own (the vendored rskafka reads `read_committed`), Python
//! confluent-kafka, and Kafka's own console consumer; on one node and on a
//! three-node cluster whose partition leader is killed mid-stream. The same
//! crashes under at-least-once repeat records, which is what the setting
//! buys. The tests take turns: each streams for about a minute.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::kafka::{console_sources, tool};
use pipeline_tests::registry::Registry;
use pipeline_tests::{
    Broker, Crashes, audit, audit_totals, count, create_led_by, group_timers_for, host, pipeline,
    plugin, python_json, read_all, root, wait_count, wait_exit,
};

/// One streaming test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EXACTLY_ONCE: &str = "exactly-once";
const AT_LEAST_ONCE: &str = "at-least-once";

/// A generator streaming `count` events at `rate` per second into "in"
/// (6 partitions), 1% of them not JSON (dead letters).
fn stream(broker: &Broker, count: u64, rate: u64) -> Child {
    stream_as(broker, count, rate, &Edges::default())
}

/// The edges of a run: nothing for JSON to "out"; for a framed format,
/// the pipeline's flags and the generator's; with routes, the topics
/// outcomes go to besides "out" and "in-dlq".
#[derive(Default)]
struct Edges {
    pipeline: Vec<String>,
    generator: Vec<String>,
    routes: Vec<String>,
}

impl Edges {
    /// JSON, with `anomaly` after `categorize` routing the events it flags
    /// to route `suspicious`, mapped to topic "out-suspicious".
    fn routed() -> Self {
        let anomaly = plugin("anomaly").display().to_string();
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            pipeline: strings(&[
                "--plugin",
                &anomaly,
                "--stage-config",
                "anomaly.route=suspicious",
                "--route",
                "suspicious=out-suspicious",
            ]),
            generator: Vec::new(),
            routes: vec!["out-suspicious".into()],
        }
    }

    /// Every topic an outcome may be in.
    fn outcome_topics(&self) -> Vec<&str> {
        ["out", "in-dlq"]
            .into_iter()
            .chain(self.routes.iter().map(String::as_str))
            .collect()
    }

    /// Avro in (the seed schema, registered by the generator) and Avro out
    /// (categorize's output schema, registered by the host).
    fn avro(registry: &Registry) -> Self {
        let url = registry.url();
        let schema = root().join("tests/schemas/categorized-login.avsc");
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            pipeline: strings(&[
                "--registry-url",
                &url,
                "--input-format",
                "avro",
                "--output-format",
                "avro",
                "--output-schema",
                &schema.display().to_string(),
            ]),
            generator: strings(&["--format", "avro", "--registry-url", &url]),
            routes: Vec::new(),
        }
    }

    fn flags(&self) -> Vec<&str> {
        self.pipeline.iter().map(String::as_str).collect()
    }
}

/// [`stream`] in the generator format of `edges`.
fn stream_as(broker: &Broker, count: u64, rate: u64, edges: &Edges) -> Child {
    host(&["generate", "--bootstrap", &broker.kafka().bootstrap_all()])
        .args(["--topic", "in", "--partitions", "6", "--malformed", "0.01"])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--seed", "14"])
        .args(&edges.generator)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("generator")
}

/// A member of group "eo" with delivery `guarantee`, running `categorize`
/// (which passes every valid event on), logging JSON to `log`; a 6 s
/// session and a 10 s transaction timeout unless `extra` sets them.
fn member(broker: &Broker, log: &Path, guarantee: &str, extra: &[&str]) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let mut command = pipeline(&broker.kafka().bootstrap_all(), "in", "out");
    command
        .args(["--group", "eo", "--guarantee", guarantee])
        .arg("--plugin")
        .arg(plugin("categorize"));
    if !extra.contains(&"--session-timeout-ms") {
        command.args(group_timers_for(extra));
    }
    if guarantee == EXACTLY_ONCE {
        if !extra.contains(&"--transaction-timeout-ms") {
            command.args(["--transaction-timeout-ms", "10000"]);
        }
    } else {
        // The commit cadence of exactly-once's default transactions, so the
        // guarantee is the only difference. At-least-once's own default
        // commits as soon as offsets move, which leaves a window of a few
        // milliseconds for a kill to repeat anything: on a fast machine
        // five kills may miss it every time.
        command.args(["--commit-interval-ms", "100"]);
    }
    command
        .args(extra)
        .args(["--log-format", "json"])
        .stderr(file)
        .stdout(Stdio::null())
        .spawn()
        .expect("pipeline-host")
}

/// Input (partition, offset) -> how many outcomes (output records and
/// dead letters) a `read_committed` reader finds for it.
async fn outcomes(
    broker: &Broker,
    edges: &Edges,
) -> (BTreeSet<(i32, i64)>, BTreeMap<(i32, i64), usize>) {
    let client = broker.client().await;
    let inputs = read_all(&client, "in")
        .await
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let mut seen = BTreeMap::new();
    for topic in edges.outcome_topics() {
        for r in read_all(&client, topic).await {
            *seen.entry(r.source()).or_insert(0) += 1;
        }
    }
    (inputs, seen)
}

/// A last member reads "in" to its end (logging to `dir`/last.log); then
/// a `read_committed` reader finds `expect` inputs, each with its outcome
/// once. `what` labels the figures printed.
async fn every_outcome_once(broker: &Broker, dir: &Path, expect: usize, what: &str) {
    let log = dir.join("last.log");
    let mut last = member(broker, &log, EXACTLY_ONCE, &["--until-end"]);
    assert!(wait_exit(&mut last, Duration::from_secs(120)).success());
    let (inputs, seen) = outcomes(broker, &Edges::default()).await;
    let missing = inputs.iter().filter(|k| !seen.contains_key(k)).count();
    let repeated = duplicates(&seen);
    eprintln!(
        "{what}: {} inputs, {missing} missing, {repeated} duplicates",
        inputs.len()
    );
    assert_eq!(inputs.len(), expect);
    assert_eq!(missing, 0);
    assert_eq!(repeated, 0, "{what}: outcomes became visible twice");
}

fn duplicates(seen: &BTreeMap<(i32, i64), usize>) -> usize {
    seen.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// Waits until the member delivers 1,000 more outputs than `before`, or,
/// once the generator is done, until the outputs and dead letters cover
/// the input (a round may start after the input is all consumed: the
/// generator's retried batches make it longer than planned, and a slow
/// round after a broker's death leaves the next nothing new to deliver).
async fn delivers_or_done(
    client: &rskafka::client::Client,
    before: i64,
    generator: &mut Child,
    edges: &Edges,
) {
    grows_or_done(
        client,
        before + 1_000,
        generator,
        edges,
        Duration::from_secs(60),
    )
    .await;
}

/// Waits until "out" holds `target` records, or, once the generator is
/// done, until the outputs and dead letters cover the input (no more can
/// come), failing after `limit`.
async fn grows_or_done(
    client: &rskafka::client::Client,
    target: i64,
    generator: &mut Child,
    edges: &Edges,
    limit: Duration,
) {
    let started = Instant::now();
    loop {
        let out = count(client, "out").await;
        if out >= target {
            return;
        }
        if generator.try_wait().expect("try_wait").is_some() {
            let mut outcomes = 0;
            for topic in edges.outcome_topics() {
                outcomes += count(client, topic).await;
            }
            if outcomes >= count(client, "in").await {
                return;
            }
        }
        assert!(
            started.elapsed() < limit,
            "out did not reach {target} records within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What our `read_committed` reader found after a crash run.
struct Found {
    inputs: usize,
    outcomes: usize,
    dead: usize,
    missing: usize,
    duplicates: usize,
    /// The duplicates each crash caused: what the next member delivered
    /// again.
    per_crash: Vec<usize>,
    /// Outcomes in the routes' topics, by topic.
    routed: Vec<(String, usize)>,
}

/// Streams 100,000 events into "in" and kills -9 a member with
/// `guarantee` five times at pseudo-random points, restarting it each time
/// as the same static member (whose transactional id fences its previous
/// incarnation and aborts what it left open). `fault(round, broker)` runs
/// in each round once the new member delivers. A last member then reads to
/// the end.
async fn five_kills(
    broker: &mut Broker,
    guarantee: &str,
    edges: &Edges,
    mut fault: impl FnMut(usize, &mut Broker),
) -> Found {
    let dir = pipeline_tests::log_dir();
    let mut generator = stream_as(broker, 100_000, 4000, edges);
    let client = broker.client().await;
    let mut crashes = Crashes::default();
    let mut static_member = vec!["--group-instance-id", "eo-0", "--max-batch-records", "500"];
    static_member.extend(edges.flags());
    // Duplicates found after each kill: a crash's repeats are delivered by
    // the member after it, so crash k caused `seen_after[k + 1] -
    // seen_after[k]` (the last one is counted after the last member).
    let mut seen_after = Vec::new();
    for round in 0..5 {
        let log = dir.path().join(format!("{round}.log"));
        let before = count(&client, "out").await;
        let mut m = member(broker, &log, guarantee, &static_member);
        delivers_or_done(&client, before, &mut generator, edges).await;
        fault(round, broker);
        // The kill comes after a pseudo-random number of new outputs, or
        // at once when the input is all delivered (a slow round after a
        // broker's death can leave the next one little to do).
        let grow = crashes.next_grow();
        grows_or_done(
            &client,
            before + grow,
            &mut generator,
            edges,
            Duration::from_secs(120),
        )
        .await;
        m.kill().expect("kill -9");
        m.wait().expect("reap");
        let grew = count(&client, "out").await - before;
        let (_, seen) = outcomes(broker, edges).await;
        let so_far = duplicates(&seen);
        eprintln!(
            "{guarantee}, crash {}: killed after {grew} new output offsets; duplicates so far: {so_far}",
            round + 1
        );
        seen_after.push(so_far);
    }
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    let mut last_flags = vec!["--until-end", "--group-instance-id", "eo-0"];
    last_flags.extend(edges.flags());
    let mut last = member(broker, &dir.path().join("last.log"), guarantee, &last_flags);
    assert!(wait_exit(&mut last, Duration::from_secs(90)).success());

    let (inputs, seen) = outcomes(broker, edges).await;
    seen_after.push(duplicates(&seen));
    let per_crash = seen_after.windows(2).map(|w| w[1] - w[0]).collect();
    let mut found = Found {
        inputs: inputs.len(),
        outcomes: seen.values().sum(),
        dead: read_all(&client, "in-dlq").await.len(),
        missing: inputs.iter().filter(|k| !seen.contains_key(k)).count(),
        duplicates: duplicates(&seen),
        per_crash,
        routed: Vec::new(),
    };
    for topic in &edges.routes {
        let n = read_all(&client, topic).await.len();
        found.routed.push((topic.clone(), n));
    }
    eprintln!(
        "{guarantee}, ours: {} inputs, {} outcomes ({} dead letters), {} missing, {} duplicates",
        found.inputs, found.outcomes, found.dead, found.missing, found.duplicates
    );
    // A generator that loses a partition leader may write an event twice
    // (it is an at-least-once producer): those are two inputs, each of
    // which must have its one outcome.
    assert!(found.inputs >= 100_000, "{} inputs", found.inputs);
    assert_eq!(
        found.missing, 0,
        "inputs with no outcome after five kill -9"
    );
    found
}

/// Asserts that an exactly-once run is exact for every reader: ours, the
/// audit, Python confluent-kafka and Kafka's console consumer.
fn exact_for_every_reader(broker: &Broker, found: &Found, edges: &Edges) {
    assert_eq!(found.per_crash, vec![0; 5], "a crash left duplicates");
    assert_eq!(found.duplicates, 0, "inputs with two outcomes");
    assert!(
        found.dead > 500,
        "the 1% malformed events are dead letters: {}",
        found.dead
    );
    let all = broker.kafka().bootstrap_all();
    let args = [
        "--plugin".to_string(),
        plugin("categorize").display().to_string(),
        "--group".into(),
        "eo".into(),
        "--guarantee".into(),
        EXACTLY_ONCE.into(),
    ]
    .into_iter()
    .chain(edges.pipeline.iter().cloned())
    .collect::<Vec<_>>();
    let (code, report) = audit(&all, &args);
    assert_eq!(code, Some(0), "audit: {report}");
    let totals = audit_totals(&report);
    eprintln!(
        "audit (exactly-once): inputs, delivered, filtered, missing, duplicates = {totals:?}"
    );
    assert_eq!((totals[3], totals[4]), (0, 0));

    let (n, missing, dups) = confluent_check(broker, edges);
    eprintln!("confluent-kafka read_committed: {n} inputs, {missing} missing, {dups} duplicates");
    assert_eq!((n, missing, dups), (found.inputs as u64, 0, 0));

    let all = broker.kafka().bootstrap_all();
    let mut routed = 0;
    let mut sources = Vec::new();
    for (topic, n) in &found.routed {
        let n = *n;
        eprintln!("route topic {topic}: {n} outcomes");
        assert!(n > 0, "nothing was routed to {topic}");
        routed += n;
        sources.extend(console_sources(&all, topic, n));
    }
    sources.extend(console_sources(
        &all,
        "out",
        found.outcomes - found.dead - routed,
    ));
    sources.extend(console_sources(&all, "in-dlq", found.dead));
    let unique: BTreeSet<_> = sources.iter().collect();
    eprintln!(
        "kafka-console-consumer --isolation-level read_committed: {} outcomes, {} distinct",
        sources.len(),
        unique.len()
    );
    assert_eq!(sources.len(), found.inputs, "every outcome read once");
    assert_eq!(unique.len(), found.inputs, "no duplicate");
}

/// Python confluent-kafka's `read_committed` count: (inputs, missing,
/// duplicates).
fn confluent_check(broker: &Broker, edges: &Edges) -> (u64, u64, u64) {
    let all = broker.kafka().bootstrap_all();
    let mut args = vec![all.as_str(), "in"];
    args.extend(edges.outcome_topics());
    let v = python_json("exactly_once.py", &args);
    let n = |k: &str| v[k].as_u64().expect("a count");
    (n("inputs"), n("missing"), n("duplicates"))
}

/// kill -9 at pseudo-random points while 100,000 events stream in on six
/// partitions, five times, restarting each time: every input's outcome is
/// in the output or the dead-letter topic exactly once for
/// `read_committed` readers, ours, confluent-kafka's and Kafka's console
/// consumer. Under the run's group protocol: on Kafka 4 the consumer
/// protocol (offsets commit in each transaction with the member epoch, and
/// the restarted static member waits until the broker releases its
/// instance id), and classic in test.sh's classic pass.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_repeats_nothing() {
    let _turn = SERIAL.lock().await;
    let mut broker = Broker::start();
    let found = five_kills(&mut broker, EXACTLY_ONCE, &Edges::default(), |_, _| {}).await;
    exact_for_every_reader(&broker, &found, &Edges::default());
}

/// The same five kills with Avro in and out through a schema registry
/// (the generator frames the seed schema's events, the host writes
/// categorize's output schema): exact for every reader, and the audit
/// decodes the Avro input to account for it.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_on_avro_repeats_nothing() {
    let _turn = SERIAL.lock().await;
    let mut broker = Broker::start();
    let registry = Registry::start();
    let edges = Edges::avro(&registry);
    let found = five_kills(&mut broker, EXACTLY_ONCE, &edges, |_, _| {}).await;
    exact_for_every_reader(&broker, &found, &edges);
}

/// The same five kills with routes: `anomaly` sends the events it flags
/// to a second topic, in the same transactions as the rest; every reader
/// finds every outcome once across the output, the route's topic and the
/// dead letters.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_with_routes_repeats_nothing() {
    let _turn = SERIAL.lock().await;
    let mut broker = Broker::start();
    let edges = Edges::routed();
    let found = five_kills(&mut broker, EXACTLY_ONCE, &edges, |_, _| {}).await;
    exact_for_every_reader(&broker, &found, &edges);
}

/// The same five kills under at-least-once: nothing is missing, but what
/// was delivered after the last commit is delivered again. This is what
/// the exactly-once test above would find without transactions.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_kills_repeat_records_at_least_once() {
    let _turn = SERIAL.lock().await;
    let mut broker = Broker::start();
    let found = five_kills(&mut broker, AT_LEAST_ONCE, &Edges::default(), |_, _| {}).await;
    eprintln!(
        "at-least-once: {} duplicates after five kill -9 ({:?} per crash)",
        found.duplicates, found.per_crash
    );
    assert!(
        found.duplicates > 0,
        "five kill -9 under at-least-once repeated nothing: the exactly-once test proves little"
    );
}

/// The five kills on a three-node cluster (replication factor 3,
/// `min.insync.replicas=2`) whose node 2 leads every partition of the
/// input, output and dead-letter topics; in the second round node 2 is
/// killed (kill -9) while transactions are open on its partitions. The
/// leaders move, the open transactions are aborted or completed by the
/// new coordinator, and every reader still finds every outcome once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_on_a_cluster_and_its_leader_dying_repeats_nothing() {
    let _turn = SERIAL.lock().await;
    let mut broker = Broker::start_cluster();
    let all = broker.kafka().bootstrap_all();
    for topic in ["in", "out", "in-dlq"] {
        create_led_by(&all, topic, 6, 2);
    }
    let found = five_kills(
        &mut broker,
        EXACTLY_ONCE,
        &Edges::default(),
        |round, broker| {
            if round == 1 {
                eprintln!("killing node 2, the leader of every partition");
                broker.kafka_mut().node(2).kill();
            }
        },
    )
    .await;
    exact_for_every_reader(&broker, &found, &Edges::default());
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
    let _turn = SERIAL.lock().await;
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
    let mut a = member(&broker, &dir.path().join("a.log"), EXACTLY_ONCE, &quick);
    pipeline_tests::wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    signal(&a, "STOP");
    let stopped = count(&client, "out").await;
    let mut b = member(&broker, &dir.path().join("b.log"), EXACTLY_ONCE, &quick);
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
    every_outcome_once(&broker, dir.path(), 40_000, "zombie").await;
}

/// Kafka's `kafka-transactions describe` of transactional id `id`: the
/// producer epoch and the transaction state.
fn transaction_state(broker: &Broker, id: &str) -> (String, String) {
    let bootstrap = broker.kafka().bootstrap_all();
    let args = ["--bootstrap-server", &bootstrap, "describe"];
    let (_, out, err) = tool(
        "transactions",
        &[&args[..], &["--transactional-id", id]].concat(),
    );
    // CoordinatorId TransactionalId ProducerId ProducerEpoch TransactionState ...
    let row: Vec<&str> = out
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    match row.as_slice() {
        [_, _, _, epoch, state, ..] => (epoch.to_string(), state.to_string()),
        _ => (String::new(), format!("no transaction: {out}{err}")),
    }
}

/// The coordinator aborts a transaction that outlives its timeout and
/// bumps the producer's epoch: here the member is stopped (SIGSTOP) while
/// a transaction is open, for longer than its 2 s transaction timeout but
/// well within its 45 s session. Let go, it finds its epoch fenced, learns
/// from the coordinator that its transaction timed out, and goes on in
/// process with a new epoch from the committed offsets: it never exits,
/// counts the timeout, and `read_committed` readers find every outcome
/// once. The previous host took the bumped epoch for another producer and
/// exited 10.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_the_coordinator_timed_out_goes_on_in_process() {
    let _turn = SERIAL.lock().await;
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 400_000, 20_000);
    let client = broker.client().await;
    let port = pipeline_tests::free_port();
    let admin = format!("127.0.0.1:{port}");
    let stall = [
        "--transaction-timeout-ms",
        "2000",
        "--session-timeout-ms",
        "45000",
        "--heartbeat-interval-ms",
        "3000",
        "--transactional-id",
        "stalled",
        "--admin",
        &admin,
    ];
    let log = dir.path().join("m.log");
    let mut m = member(&broker, &log, EXACTLY_ONCE, &stall);
    wait_count(&client, "out", 20_000, Duration::from_secs(60)).await;
    // Stopped with a transaction open: try until the coordinator shows one.
    let mut tries = 0;
    let epoch = loop {
        signal(&m, "STOP");
        let (epoch, state) = transaction_state(&broker, "stalled");
        if state == "Ongoing" {
            break epoch;
        }
        signal(&m, "CONT");
        tries += 1;
        assert!(tries < 30, "never stopped inside a transaction: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stopped = Instant::now();
    // The coordinator looks for timed-out transactions every 10 s.
    pipeline_tests::eventually(
        Duration::from_secs(60),
        "the coordinator aborts the stalled transaction",
        || match transaction_state(&broker, "stalled") {
            (_, state) if state == "CompleteAbort" => Ok(()),
            seen => Err(format!("{seen:?}")),
        },
    );
    eprintln!(
        "stopped inside a transaction of epoch {epoch} after {tries} tries; the coordinator aborted it after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    signal(&m, "CONT");
    let resumed = Instant::now();
    pipeline_tests::eventually(Duration::from_secs(30), "the timeout is counted", || {
        let (_, body) = pipeline_tests::http(port, "GET", "/metrics");
        match pipeline_tests::metric(&body, "pipeline_transaction_timeouts_total") {
            Some(n) if n >= 1.0 => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    });
    let before = count(&client, "out").await;
    wait_count(&client, "out", before + 20_000, Duration::from_secs(60)).await;
    eprintln!(
        "went on {:.2} s after SIGCONT with epoch {:?}",
        resumed.elapsed().as_secs_f64(),
        transaction_state(&broker, "stalled").0
    );
    assert!(
        m.try_wait().expect("try_wait").is_none(),
        "the member exited:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(wait_exit(&mut generator, Duration::from_secs(90)).success());
    pipeline_tests::sigterm(&m);
    assert!(wait_exit(&mut m, Duration::from_secs(30)).success());
    every_outcome_once(&broker, dir.path(), 400_000, "timed-out transaction").await;
}

/// Another process that starts with the same transactional id still
/// fences the first, which stops (exit 10) instead of taking the id back,
/// and nothing the first left open becomes visible: going on after a
/// timed-out transaction never fences a producer that took the id.
#[tokio::test(flavor = "multi_thread")]
async fn a_twin_transactional_id_still_stops_the_first_process() {
    let _turn = SERIAL.lock().await;
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generator = stream(&broker, 40_000, 4000);
    let client = broker.client().await;
    let twin = ["--transactional-id", "twin"];
    let mut a = member(&broker, &dir.path().join("a.log"), EXACTLY_ONCE, &twin);
    wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    let mut b = member(&broker, &dir.path().join("b.log"), EXACTLY_ONCE, &twin);
    let status = wait_exit(&mut a, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(10),
        "the fenced process exits with the transaction code:\n{}",
        std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default()
    );
    assert!(wait_exit(&mut generator, Duration::from_secs(60)).success());
    assert!(
        b.try_wait().expect("try_wait").is_none(),
        "the second process runs on"
    );
    pipeline_tests::sigterm(&b);
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());
    every_outcome_once(&broker, dir.path(), 40_000, "twin transactional id").await;
}

/// `--start latest` under exactly-once commits the position it starts
/// from before anything arrives: a member killed before its first
/// transaction restarts there, so the events written meanwhile are read.
/// The previous host committed nothing until its first delivery, so the
/// restart started at the (later) end of the log and skipped them.
#[tokio::test(flavor = "multi_thread")]
async fn start_latest_commits_its_starting_position() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = broker.kafka().bootstrap_all();
    let generate = |count: &str, seed: &str| {
        let status = host(&["generate", "--bootstrap", &all, "--topic", "in"])
            .args(["--partitions", "6", "--count", count, "--seed", seed])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("generator");
        assert!(status.success());
    };
    generate("600", "1");
    let client = broker.client().await;
    let before = count(&client, "in").await;
    let latest = ["--start", "latest", "--group-instance-id", "eo-latest"];
    let mut first = member(
        &broker,
        &dir.path().join("first.log"),
        EXACTLY_ONCE,
        &latest,
    );
    // Every partition's starting position is committed, with no record read.
    pipeline_tests::eventually(Duration::from_secs(60), "the start is committed", || {
        let (_, out, err) = tool(
            "consumer-groups",
            &["--bootstrap-server", &all, "--describe", "--group", "eo"],
        );
        let committed: i64 = out
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("in"))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
            .sum();
        if committed == before {
            Ok(())
        } else {
            Err(format!("committed {committed} of {before}: {out} {err}"))
        }
    });
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    generate("300", "2");
    let mut last = member(
        &broker,
        &dir.path().join("last.log"),
        EXACTLY_ONCE,
        &[&latest[..], &["--until-end"]].concat(),
    );
    assert!(wait_exit(&mut last, Duration::from_secs(60)).success());
    let outcomes = read_all(&client, "out").await.len() + read_all(&client, "in-dlq").await.len();
    eprintln!(
        "--start latest, exactly-once, killed before any record: {outcomes} of 300 events written meanwhile have their outcome"
    );
    assert_eq!(outcomes, 300, "every event written after the start");
}
