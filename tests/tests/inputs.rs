//! Several inputs (issue 28), through Apache Kafka: topics by name and by
//! pattern in one consumer group, and topics that change while it runs.
//!
//! - Three inputs, one named and two matching `orders-.*`, read by a group
//!   of two `pipeline-host` processes (cooperative-sticky across topics).
//!   While they run: a new topic matching the pattern is created (the time
//!   until its records are out is printed), partitions are added to an
//!   input with Kafka's own `kafka-topics --alter`, and an input is deleted
//!   with `kafka-topics --delete`: both processes keep running and keep
//!   delivering. A value that is not JSON goes to its own input's
//!   `<input>-dlq`. `group describe` lists every topic, the metrics count
//!   records per input topic, and `audit` finds 0 missing, 0 duplicates by
//!   (input topic, partition, offset).
//! - Without a group, a topic matching the pattern is read once created.
//! - Exactly-once across two inputs through three kill -9s: read_committed
//!   finds every input's outcome once, by (input topic, partition,
//!   offset), each input's malformed records in its own `<input>-dlq`.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::kafka::tool;
use pipeline_tests::{
    Broker, Crashes, audit_totals, classic_only, create_topic, free_port, group_timers, host, http,
    log_dir, log_file, metric, plugin, produce, produce_batch, read_all, sigterm, wait_admin,
    wait_count, wait_exit, wat_stage,
};
use rskafka::client::Client;
use rskafka::record::EncodedRecords;

/// How often the pipelines list the cluster's topics in these tests.
const REFRESH_MS: &str = "2000";

/// Produces `n` JSON events to `topic`/`partition`: key `k<i>`, value
/// `{"n":i,"topic":..}`.
async fn produce_events(client: &Client, topic: &str, partition: i32, n: usize) {
    let mut batch = EncodedRecords::new();
    for i in 0..n {
        let value = format!(r#"{{"n":{i},"topic":"{topic}","partition":{partition}}}"#);
        let key = format!("k{i}");
        batch.push(
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            std::iter::empty::<(&[u8], &[u8])>(),
            1_000_000 + i as i64,
        );
    }
    produce_batch(client, topic, partition, batch).await;
}

/// A `pipeline-host` reading `audit-log` and every `orders-.*` topic into
/// `out` in group `multi`, its log in `dir`, its admin endpoint on `port`.
fn member(
    bootstrap: &str,
    stage: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    port: u16,
) -> Child {
    let (_, log) = log_file(dir, &format!("member-{n}"));
    host(&["--bootstrap", bootstrap, "--input", "audit-log"])
        .args([
            "--input-pattern",
            "orders-.*",
            "--output",
            "out",
            "--group",
            "multi",
        ])
        .args(classic_only(&["--assignor", "cooperative-sticky"]))
        .args(["--metadata-refresh-ms", REFRESH_MS])
        .args(["--admin", &format!("127.0.0.1:{port}"), "--plugin"])
        .arg(stage)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pipeline-host")
}

/// Records of `out` per source topic (`pipeline.source.topic`).
async fn out_by_topic(client: &Client) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in read_all(client, "out").await {
        *by.entry(r.header("pipeline.source.topic").expect("source topic"))
            .or_insert(0) += 1;
    }
    by
}

/// `kafka-topics` with `args` on `bootstrap`, failing the test if it fails.
fn kafka_topics(bootstrap: &str, args: &[&str]) {
    let mut all = vec!["--bootstrap-server", bootstrap];
    all.extend_from_slice(args);
    let (ok, out, err) = tool("topics", &all);
    assert!(ok, "kafka-topics {args:?} failed:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_inputs_by_name_and_pattern_in_a_group_of_two_while_topics_change() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let client = broker.client().await;
    let logs = log_dir();
    let stage = wat_stage(logs.path(), "keep", "keep", 0);
    for (topic, partitions) in [
        ("audit-log", 2),
        ("orders-eu", 2),
        ("orders-us", 1),
        ("other", 1),
    ] {
        create_topic(&client, topic, partitions).await;
    }
    let per = 500;
    for (topic, partitions) in [
        ("audit-log", 2),
        ("orders-eu", 2),
        ("orders-us", 1),
        ("other", 1),
    ] {
        for p in 0..partitions {
            produce_events(&client, topic, p, per).await;
        }
    }
    // Not JSON: a dead letter in orders-eu's own dead-letter topic.
    produce(
        &client,
        "orders-eu",
        0,
        vec![(None, Some(b"not json".to_vec()))],
    )
    .await;
    let first = 5 * per as i64;
    let ports = [free_port(), free_port()];
    let mut members: Vec<Child> = (0..2)
        .map(|i| member(&b, &stage, logs.path(), i, ports[i]))
        .collect();
    for port in ports {
        wait_admin(port);
    }
    wait_count(&client, "out", first, Duration::from_secs(90)).await;
    let by = out_by_topic(&client).await;
    assert_eq!(
        by,
        BTreeMap::from([
            ("audit-log".to_string(), 2 * per),
            ("orders-eu".to_string(), 2 * per),
            ("orders-us".to_string(), per),
        ]),
        "every input, and not `other`"
    );
    // Produced after the events, it may come in a later batch than the
    // outputs waited for.
    wait_count(&client, "orders-eu-dlq", 1, Duration::from_secs(30)).await;
    let dead = read_all(&client, "orders-eu-dlq").await;
    assert_eq!(
        dead.len(),
        1,
        "the undecodable record, in its input's own dead-letter topic"
    );
    assert_eq!(
        dead[0].header("pipeline.source.topic").as_deref(),
        Some("orders-eu")
    );

    // A topic matching the pattern, created while the group runs.
    let created = Instant::now();
    create_topic(&client, "orders-new", 1).await;
    produce_events(&client, "orders-new", 0, 300).await;
    wait_count(&client, "out", first + 300, Duration::from_secs(60)).await;
    let found_in = created.elapsed();
    eprintln!(
        "a new topic matching the pattern was read and delivered {:.1} s after its creation (metadata refresh every {REFRESH_MS} ms)",
        found_in.as_secs_f64()
    );

    // Partitions added to an input with Kafka's own tool.
    kafka_topics(
        &b,
        &["--alter", "--topic", "orders-eu", "--partitions", "4"],
    );
    let added = Instant::now();
    // The producer's metadata must show them before it can write there.
    loop {
        let topics = client.list_topics().await.expect("list topics");
        if topics
            .iter()
            .any(|t| t.name == "orders-eu" && t.partitions.len() == 4)
        {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(20),
            "orders-eu never had 4 partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in [2, 3] {
        produce_events(&client, "orders-eu", p, 200).await;
    }
    wait_count(&client, "out", first + 700, Duration::from_secs(60)).await;
    eprintln!(
        "partitions added to orders-eu were read {:.1} s after kafka-topics --alter",
        added.elapsed().as_secs_f64()
    );

    // The group describes every topic; the metrics count per topic.
    let describe = host(&["group", "describe", "--bootstrap", &b, "--group", "multi"])
        .output()
        .expect("group describe");
    let table = String::from_utf8_lossy(&describe.stdout);
    for topic in ["audit-log", "orders-eu", "orders-us", "orders-new"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{topic} "))),
            "{topic} missing from group describe:\n{table}"
        );
    }
    assert!(!table.contains("\nother "), "{table}");
    let read_of = |topic: &str| -> f64 {
        ports
            .iter()
            .map(|port| {
                let (_, text) = http(*port, "GET", "/metrics");
                metric(
                    &text,
                    &format!("pipeline_input_records_total{{topic=\"{topic}\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum()
    };
    assert!(
        read_of("orders-new") >= 300.0,
        "orders-new read {}",
        read_of("orders-new")
    );
    assert!(
        read_of("orders-eu") >= 1400.0,
        "orders-eu read {}",
        read_of("orders-eu")
    );

    // An input deleted while running: the members let it go and go on.
    kafka_topics(&b, &["--delete", "--topic", "orders-us"]);
    tokio::time::sleep(Duration::from_millis(3 * 2000 + 2000)).await;
    produce_events(&client, "audit-log", 0, 100).await;
    wait_count(&client, "out", first + 800, Duration::from_secs(60)).await;
    for m in &mut members {
        assert!(
            m.try_wait().expect("try_wait").is_none(),
            "a member exited after the deletion"
        );
    }
    let log = |i: usize| {
        std::fs::read_to_string(logs.path().join(format!("member-{i}.log"))).unwrap_or_default()
    };
    assert!(
        (0..2).any(|i| log(i).contains("an input topic is gone")),
        "no member saw orders-us go:\n{}\n{}",
        log(0),
        log(1)
    );
    for m in &members {
        sigterm(m);
    }
    for m in &mut members {
        let status = wait_exit(m, Duration::from_secs(60));
        assert!(
            status.success(),
            "a member did not stop cleanly: {status:?}"
        );
    }

    // Every record of every input still there, accounted for once.
    let audit = host(&["audit", "--json", "--bootstrap", &b, "--input", "audit-log"])
        .args([
            "--input-pattern",
            "orders-.*",
            "--output",
            "out",
            "--plugin",
        ])
        .arg(&stage)
        .output()
        .expect("audit");
    let report = String::from_utf8_lossy(&audit.stdout);
    eprintln!("audit: {report}");
    let totals = audit_totals(&report);
    let inputs = (2 * per + 100) + (2 * per + 1 + 400) + 300;
    assert_eq!(
        totals,
        [inputs as u64, inputs as u64, 0, 0, 0],
        "inputs, delivered, filtered, missing, duplicates"
    );
    assert_eq!(audit.status.code(), Some(0), "{report}");
    let by = out_by_topic(&client).await;
    assert_eq!(
        by["orders-us"], per,
        "the deleted input's records, delivered before"
    );
    assert!(!by.contains_key("other"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_group_a_topic_matching_the_pattern_is_read_once_created() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let client = broker.client().await;
    let logs = log_dir();
    let stage = wat_stage(logs.path(), "keep", "keep", 0);
    create_topic(&client, "t-1", 1).await;
    produce_events(&client, "t-1", 0, 100).await;
    let (_, log) = log_file(logs.path(), "solo.log");
    let mut solo = host(&[
        "--bootstrap",
        &b,
        "--input-pattern",
        "t-.*",
        "--output",
        "out",
    ])
    .args(["--metadata-refresh-ms", REFRESH_MS, "--plugin"])
    .arg(&stage)
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("start pipeline-host");
    wait_count(&client, "out", 100, Duration::from_secs(60)).await;
    let created = Instant::now();
    create_topic(&client, "t-2", 2).await;
    for p in 0..2 {
        produce_events(&client, "t-2", p, 100).await;
    }
    wait_count(&client, "out", 300, Duration::from_secs(60)).await;
    eprintln!(
        "without a group, a new topic was read {:.1} s after its creation",
        created.elapsed().as_secs_f64()
    );
    sigterm(&solo);
    assert!(wait_exit(&mut solo, Duration::from_secs(60)).success());
    let by = out_by_topic(&client).await;
    assert_eq!(
        by,
        BTreeMap::from([("t-1".into(), 100), ("t-2".into(), 200)])
    );
}

/// A generator streaming `count` seed events (1% not JSON) into `topic`
/// (3 partitions) at `rate` per second.
fn stream(bootstrap: &str, topic: &str, count: u64, rate: u64, seed: &str) -> Child {
    host(&["generate", "--bootstrap", bootstrap, "--topic", topic])
        .args(["--partitions", "3", "--malformed", "0.01", "--seed", seed])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("generator")
}

/// An exactly-once member reading `in-a` and `in-b` into `out` in group
/// `eo-inputs`, running `categorize`, its log in `dir`.
fn exactly_once_member(
    bootstrap: &str,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> Child {
    let (_, log) = log_file(dir, name);
    host(&[
        "--bootstrap",
        bootstrap,
        "--input",
        "in-a,in-b",
        "--output",
        "out",
    ])
    .args(["--group", "eo-inputs", "--guarantee", "exactly-once"])
    .args(group_timers())
    .args(["--transaction-timeout-ms", "10000", "--plugin"])
    .arg(plugin("categorize"))
    .args(extra)
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("start pipeline-host")
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_across_two_inputs_through_three_kills() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let client = broker.client().await;
    let logs = log_dir();
    let per_input = 40_000;
    let mut generators = [
        stream(&b, "in-a", per_input, 4_000, "31"),
        stream(&b, "in-b", per_input, 4_000, "32"),
    ];
    let mut crashes = Crashes::default();
    let mut before = 0;
    for round in 0..3 {
        let mut m = exactly_once_member(&b, logs.path(), &format!("round-{round}"), &[]);
        let grew = crashes.kill_after(&client, "out", before, &mut m).await;
        before += grew;
        eprintln!("round {round}: killed after {grew} new outputs");
    }
    for g in &mut generators {
        assert!(
            wait_exit(g, Duration::from_secs(120)).success(),
            "generator failed"
        );
    }
    let mut last = exactly_once_member(&b, logs.path(), "last", &["--until-end"]);
    assert!(wait_exit(&mut last, Duration::from_secs(120)).success());
    // Outcomes by (input topic, partition, offset), read_committed.
    let mut seen: BTreeMap<(String, i32, i64), usize> = BTreeMap::new();
    let mut dead = [0usize; 2];
    for (i, topic) in ["out", "in-a-dlq", "in-b-dlq"].into_iter().enumerate() {
        for r in read_all(&client, topic).await {
            if i > 0 {
                dead[i - 1] += 1;
            }
            let (p, o) = r.source();
            let t = r.header("pipeline.source.topic").expect("source topic");
            *seen.entry((t, p, o)).or_insert(0) += 1;
        }
    }
    let mut inputs = 0;
    let mut missing = 0;
    for topic in ["in-a", "in-b"] {
        for r in read_all(&client, topic).await {
            inputs += 1;
            missing += usize::from(!seen.contains_key(&(topic.to_string(), r.partition, r.offset)));
        }
    }
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "exactly-once across two inputs, 3 kills: {inputs} inputs, {missing} missing, {repeated} duplicates, dead letters {dead:?} in in-a-dlq and in-b-dlq"
    );
    assert!(inputs >= 2 * per_input as usize, "{inputs} inputs");
    assert_eq!((missing, repeated), (0, 0), "missing, duplicates");
    assert!(
        dead.iter().all(|n| *n > 0),
        "each input's malformed records in its own dead-letter topic"
    );
    let audit = host(&["audit", "--json", "--bootstrap", &b, "--input", "in-a,in-b"])
        .args([
            "--output",
            "out",
            "--group",
            "eo-inputs",
            "--guarantee",
            "exactly-once",
        ])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .output()
        .expect("audit");
    let report = String::from_utf8_lossy(&audit.stdout);
    let totals = audit_totals(&report);
    assert_eq!(
        (totals[3], totals[4]),
        (0, 0),
        "audit: missing, duplicates\n{report}"
    );
    assert_eq!(audit.status.code(), Some(0), "{report}");
}
