//! Share groups (KIP-932) as an input mode, through Apache Kafka 4.4:
//! several processes share one partition's records, what a killed member
//! held is delivered again, and a record a stage traps on is released
//! until the group's delivery limit, then dead-lettered with the reason;
//! `group describe` agrees with Kafka's `kafka-share-groups`.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::kafka::tool;
use pipeline_tests::{
    Broker, KeyValue, NodeOptions, create_topic, eventually_async, free_port, generate, host, http,
    log_dir, log_file, metric, pipeline, plugin_args, produce, read_all, sigterm, wait_admin,
    wait_count, wait_exit,
};

/// A broker whose share groups release a dead member's records after 5 s
/// (Kafka's default lock is 30 s).
fn broker() -> Broker {
    Broker::start_with(NodeOptions {
        properties: [
            "group.share.min.record.lock.duration.ms=1000",
            "group.share.record.lock.duration.ms=5000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
}

/// A member of share group `group` reading `in` into `out` through
/// `stages`, with its metrics on `admin`.
fn member(
    broker: &Broker,
    group: &str,
    stages: &[String],
    extra: &[&str],
    admin: u16,
    log: &std::path::Path,
) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    pipeline(&broker.bootstrap(), "in", "out")
        .args([
            "--share-group",
            group,
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(stages)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start pipeline-host")
}

/// A counter of a member's `/metrics` (0 when absent or unreachable).
fn scrape(admin: u16, name: &str) -> f64 {
    let (status, body) = http(admin, "GET", "/metrics");
    if status != 200 {
        return 0.0;
    }
    metric(&body, name).unwrap_or(0.0)
}

/// Three processes share 100,000 records of a one-partition topic; one is
/// killed with kill -9 while it holds records. What it held comes again
/// (delivery count 2) to the others once its locks expire, and every
/// input record reaches the output.
#[tokio::test(flavor = "multi_thread")]
async fn three_processes_share_one_partition_and_take_over_what_a_killed_one_held() {
    let broker = broker();
    let client = broker.client().await;
    let events = 100_000;
    generate(
        &broker.bootstrap(),
        "in",
        &["--count", &events.to_string(), "--partitions", "1"],
    );
    let logs = log_dir();
    let stages = plugin_args(&["enrich"]);
    let admins: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut members: Vec<Child> = admins
        .iter()
        .enumerate()
        .map(|(i, &admin)| {
            let log = logs.path().join(format!("m{i}.log"));
            member(&broker, "queue", &stages, &[], admin, &log)
        })
        .collect();
    for &admin in &admins {
        wait_admin(admin);
    }
    // Kill the first member once it is in the middle of its share.
    let victim = eventually_async(Duration::from_secs(120), "member 0 reads", || async {
        let n = scrape(admins[0], "pipeline_records_in_total");
        if n >= 5_000.0 {
            Ok(n)
        } else {
            Err(format!("{n} records in"))
        }
    })
    .await;
    members[0].kill().expect("kill -9");
    members[0].wait().expect("reap");
    let started = Instant::now();
    let sources = eventually_async(
        Duration::from_secs(120),
        "every input record in the output",
        || async {
            let out = read_all(&client, "out").await;
            let mut by_offset: BTreeMap<i64, usize> = BTreeMap::new();
            for r in &out {
                *by_offset.entry(r.source().1).or_default() += 1;
            }
            if by_offset.len() == events {
                Ok((out, by_offset))
            } else {
                Err(format!("{} distinct of {events}", by_offset.len()))
            }
        },
    )
    .await;
    let (out, by_offset) = sources;
    let twice = out.len() - by_offset.len();
    let redelivered_in_output = out
        .iter()
        .filter(|r| r.header("pipeline.delivery.count").as_deref() == Some("2"))
        .count();
    let shares: Vec<f64> = admins[1..]
        .iter()
        .map(|&a| scrape(a, "pipeline_records_in_total"))
        .collect();
    let redelivered: f64 = admins[1..]
        .iter()
        .map(|&a| scrape(a, "pipeline_share_redelivered_total"))
        .sum();
    eprintln!(
        "share group, 3 processes, 1 partition, {events} records: member 0 took {victim} before kill -9, members 1 and 2 took {} and {}; all {events} in the output {:.1} s after the kill; {redelivered} redelivered to the survivors ({redelivered_in_output} output records carry delivery count 2); {twice} written twice",
        shares[0],
        shares[1],
        started.elapsed().as_secs_f64()
    );
    assert!(
        shares.iter().all(|&s| s > 0.0),
        "every survivor takes a share: {shares:?}"
    );
    assert!(
        redelivered > 0.0 && redelivered_in_output > 0,
        "what the killed member held comes again with delivery count 2"
    );
    assert_eq!(by_offset.len(), events, "0 missing");
    for m in &mut members[1..] {
        sigterm(m);
        assert!(
            wait_exit(m, Duration::from_secs(30)).success(),
            "a member stops cleanly"
        );
    }
}

/// A stage that traps on one record: the record is released and comes
/// again until the group's delivery limit (Kafka's default, 5); then it
/// is dead-lettered with the reason and rejected. The other records flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_its_stage_traps_on_comes_again_then_is_dead_lettered_at_the_limit() {
    let broker = broker();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let mut records: Vec<KeyValue> = (0..20)
        .map(|i| (None, Some(format!(r#"{{"n":{i}}}"#).into_bytes())))
        .collect();
    records.insert(10, (None, Some(br#"{"n":99,"poison":true}"#.to_vec())));
    produce(&client, "in", 0, records).await;
    let logs = log_dir();
    let (log, _) = log_file(logs.path(), "member");
    let admin = free_port();
    let mut stages = plugin_args(&["fixtures/hostile"]);
    stages.extend(
        [
            "--stage-config",
            "hostile.mode=trap",
            "--stage-config",
            "hostile.poison_field=poison",
        ]
        .map(String::from),
    );
    let mut m = member(&broker, "traps", &stages, &[], admin, &log);
    wait_admin(admin);
    let dead = eventually_async(
        Duration::from_secs(60),
        "the poison record dead-lettered",
        || async {
            let dead = read_all(&client, "in-dlq").await;
            if dead.len() == 1 {
                Ok(dead)
            } else {
                Err(format!("{} dead letters", dead.len()))
            }
        },
    )
    .await;
    let reason = dead[0].header("pipeline.error.reason").unwrap_or_default();
    let out = read_all(&client, "out").await;
    let acks = |kind: &str| {
        scrape(
            admin,
            &format!("pipeline_share_acknowledgements_total{{result=\"{kind}\"}}"),
        )
    };
    eprintln!(
        "trap on one record of 21: {} outputs; the poison record released {} times, rejected {}; dead letter reason: {reason}",
        out.len(),
        acks("release"),
        acks("reject")
    );
    assert_eq!(out.len(), 20, "the other records flow");
    assert!(
        reason.contains("trap") && reason.contains("delivery 5"),
        "the reason names the trap and the delivery limit: {reason}"
    );
    assert_eq!(acks("release"), 4.0, "released on deliveries 1 to 4");
    assert_eq!(acks("reject"), 1.0, "rejected once dead-lettered");
    assert_eq!(scrape(admin, "pipeline_share_redelivered_total"), 4.0);
    sigterm(&m);
    assert!(wait_exit(&mut m, Duration::from_secs(30)).success());
}

/// What a share group cannot do is refused before anything is read, with
/// the reason: exactly-once, and stateful stages.
#[test]
fn exactly_once_and_stateful_stages_are_refused_with_a_share_group() {
    let refused = |extra: &[&str], stages: &[&str]| {
        let out = pipeline("127.0.0.1:1", "in", "out")
            .args(["--share-group", "q"])
            .args(extra)
            .args(plugin_args(stages))
            .output()
            .expect("run pipeline-host");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&["--guarantee", "exactly-once"], &["enrich"]);
    assert!(e.contains("exactly-once cannot read share group q"), "{e}");
    let e = refused(&[], &["enrich", "version_counts"]);
    assert!(
        e.contains("stateful stages cannot run on a share group"),
        "{e}"
    );
    let e = refused(&["--group", "g"], &["enrich"]);
    assert!(e.contains("--group does not apply to share group q"), "{e}");
}

/// `pipeline-host group describe` of a share group says what Kafka's
/// `kafka-share-groups --describe` says: the same members (with their
/// epochs) and assignments, and per partition the same share-partition
/// start offset
/// (everything below it acknowledged; Kafka moves it lazily: here it
/// stayed below the end with every record acknowledged), and no lag of its
/// own making (`-`).
#[tokio::test(flavor = "multi_thread")]
async fn group_describe_agrees_with_kafkas_share_groups_command() {
    let broker = broker();
    let b = broker.bootstrap();
    let client = broker.client().await;
    generate(&b, "in", &["--count", "3000", "--partitions", "2"]);
    let logs = log_dir();
    let stages = plugin_args(&["enrich"]);
    let mut members: Vec<Child> = (0..2)
        .map(|i| {
            let log = logs.path().join(format!("m{i}.log"));
            member(&broker, "described", &stages, &[], free_port(), &log)
        })
        .collect();
    wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    let (table, offsets, members_view) = eventually_async(
        Duration::from_secs(30),
        "both views: two members, the same start offsets",
        || async {
            let out = host(&[
                "group",
                "describe",
                "--bootstrap",
                &b,
                "--group",
                "described",
            ])
            .output()
            .expect("group describe");
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            let kafkas = |extra: &[&str]| {
                let args = [
                    &[
                        "--bootstrap-server",
                        &b,
                        "--describe",
                        "--group",
                        "described",
                    ],
                    extra,
                ];
                tool("share-groups", &args.concat())
            };
            let (ok, offsets, err) = kafkas(&[]);
            let (ok_m, members_view, err_m) = kafkas(&["--members"]);
            if !(out.status.success() && ok && ok_m) {
                return Err(format!(
                    "{table}{}\n{err}\n{err_m}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // Ours: topic, partition, start, end, lag, owners.
            let ours: BTreeMap<i32, String> = table
                .lines()
                .filter(|l| l.starts_with("in "))
                .filter_map(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    Some((c.get(1)?.parse().ok()?, (*c.get(2)?).to_owned()))
                })
                .collect();
            let theirs = columns(&offsets, "PARTITION", "START-OFFSET");
            let members_listed = table.matches("  member ").count();
            if members_listed == 2 && ours.len() == 2 && ours == theirs {
                Ok((table, offsets, members_view))
            } else {
                Err(format!("ours:\n{table}\nkafka-share-groups:\n{offsets}"))
            }
        },
    )
    .await;
    eprintln!(
        "pipeline-host group describe:\n{table}\nkafka-share-groups --describe:\n{offsets}\nkafka-share-groups --describe --members:\n{members_view}"
    );
    assert!(table.contains("protocol share (KIP-932"), "{table}");
    assert!(
        table.contains("  epoch "),
        "members with their epochs: {table}"
    );
    // Each partition's owners in our table are the members Kafka shows
    // with that partition in their assignment (`in:0,1`).
    for row in table.lines().filter(|l| l.starts_with("in ")) {
        let c: Vec<&str> = row.split_whitespace().collect();
        for owner in c[5].split(',') {
            let line = members_view
                .lines()
                .find(|l| l.contains(owner))
                .unwrap_or_else(|| panic!("Kafka lists member {owner} too:\n{members_view}"));
            let assignment = line.split_whitespace().last().unwrap_or_default();
            let partitions = assignment.strip_prefix("in:").unwrap_or_default();
            assert!(
                partitions.split(',').any(|p| p == c[1]),
                "Kafka assigns partition {} to {owner} too: {line}",
                c[1]
            );
        }
    }
    for m in &mut members {
        sigterm(m);
        assert!(wait_exit(m, Duration::from_secs(30)).success());
    }
}

/// The `key` and `value` columns of a Kafka tool's table (found by their
/// headers) as `key -> value`, for rows whose key is a number.
fn columns(text: &str, key: &str, value: &str) -> BTreeMap<i32, String> {
    let mut lines = text.lines().skip_while(|l| !l.contains(value));
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let (Some(k), Some(v)) = (
        names.iter().position(|n| *n == key),
        names.iter().position(|n| *n == value),
    ) else {
        return BTreeMap::new();
    };
    lines
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            Some((c.get(k)?.parse().ok()?, (*c.get(v)?).to_owned()))
        })
        .collect()
}
