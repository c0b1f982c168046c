//! Interoperability with Apache Kafka's own Java tools, from the same Maven
//! artifacts as the broker (`kafka.sh tool ...`):
//!
//! - `kafka-consumer-groups --describe` of the pipeline's group, with a
//!   member running, says what `pipeline-host group describe` says: the
//!   group's state, its member, and per partition the committed offset,
//!   the end, the lag and the owning member;
//! - an offset reset made with `kafka-consumer-groups --reset-offsets` is
//!   honoured by the next run of pipeline-host;
//! - `kafka-console-consumer` reads the pipeline's output, headers and all.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::kafka::{is_tool_notice, tool};
use pipeline_tests::{
    Broker, count, generate, host, pipeline, plugin_args, sigterm, wait_count, wait_exit,
};

/// Per partition: (committed, end, lag, owner).
type Rows = BTreeMap<i32, (String, String, String, String)>;

/// `pipeline-host group describe`: (header line, rows).
fn ours(bootstrap: &str, group: &str) -> (String, Rows) {
    let out = host(&["group", "describe", "--bootstrap", bootstrap])
        .args(["--group", group, "--topic", "in"])
        .output()
        .expect("group describe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = table
        .lines()
        .filter(|l| l.starts_with("in "))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (
                c[1].parse().expect("partition"),
                (c[2].into(), c[3].into(), c[4].into(), c[5].into()),
            )
        })
        .collect();
    (table, rows)
}

/// Kafka's `kafka-consumer-groups --describe` (offsets view): rows, with
/// `-` for no owner as ours prints it.
fn kafkas(bootstrap: &str, group: &str) -> (String, Rows) {
    let (ok, out, err) = tool(
        "consumer-groups",
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
    );
    assert!(ok, "kafka-consumer-groups failed: {err}");
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    let rows = out
        .lines()
        .filter(|l| l.starts_with(&format!("{group} ")))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c[1], "in", "{out}");
            (
                c[2].parse().expect("partition"),
                (c[3].into(), c[4].into(), c[5].into(), c[6].into()),
            )
        })
        .collect();
    (out, rows)
}

/// Both tools' descriptions of `group` once they agree row for row and
/// the lag is 0 everywhere (the member commits on an interval): (ours,
/// Kafka's); fails after 30 s of disagreement.
async fn agreeing(bootstrap: &str, group: &str) -> (String, String) {
    let start = Instant::now();
    loop {
        let (table, ours_rows) = ours(bootstrap, group);
        let (theirs_text, theirs) = kafkas(bootstrap, group);
        let settled = ours_rows.values().all(|r| r.2 == "0");
        if settled && ours_rows == theirs {
            return (table, theirs_text);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the tools disagree:\nours:\n{table}\nKafka's:\n{theirs_text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// 3,000 events (generator seed `seed`) on three partitions of `in`, and
/// one member with `flags` that has written them all to `out`: the client,
/// the member, and the folder of its log.
async fn one_member(
    broker: &Broker,
    seed: &str,
    flags: &[&str],
) -> (
    rskafka::client::Client,
    std::process::Child,
    tempfile::TempDir,
) {
    let b = broker.bootstrap();
    generate(
        &b,
        "in",
        &["--count", "3000", "--seed", seed, "--partitions", "3"],
    );
    let client = broker.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, log) = pipeline_tests::log_file(dir.path(), "member");
    let member = pipeline(&b, "in", "out")
        .args(flags)
        .args(plugin_args(&["categorize"]))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("member");
    wait_count(&client, "out", 3000, Duration::from_secs(60)).await;
    (client, member, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn kafkas_group_command_agrees_and_its_reset_is_honoured() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let (client, mut member, _logs) = one_member(
        &broker,
        "5",
        &[
            "--group",
            "kafka-tools",
            "--group-protocol",
            "classic",
            "--client-id",
            "tools-test",
        ],
    )
    .await;

    let (table, theirs) = agreeing(&b, "kafka-tools").await;
    eprintln!(
        "pipeline-host group describe:\n{table}\nkafka-consumer-groups --describe:\n{theirs}"
    );
    assert!(
        table.contains("state Stable") && table.contains("members 1"),
        "{table}"
    );

    // Members and state: Kafka's views of the group and of its member.
    let view = |flag: &str| {
        let (ok, text, err) = tool(
            "consumer-groups",
            &[
                "--bootstrap-server",
                &b,
                "--describe",
                "--group",
                "kafka-tools",
                flag,
            ],
        );
        assert!(ok, "{err}");
        text
    };
    let state = view("--state");
    assert!(
        state.contains("Stable") && state.contains("range"),
        "{state}"
    );
    let members = view("--members");
    let member_line = members
        .lines()
        .find(|l| l.starts_with("kafka-tools "))
        .unwrap_or_else(|| panic!("no member row:\n{members}"));
    let c: Vec<&str> = member_line.split_whitespace().collect();
    // GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS
    assert_eq!(c[3], "tools-test", "{members}");
    assert_eq!(c[4], "3", "the member owns all three partitions: {members}");
    assert!(table.contains(c[1]), "the same member id in both: {table}");

    // A reset by Kafka's tool: refused while the member is there, then
    // done after it leaves; the next run reprocesses from there.
    sigterm(&member);
    assert!(wait_exit(&mut member, Duration::from_secs(30)).success());
    let reset = |extra: &[&str]| {
        let mut args = vec![
            "--bootstrap-server",
            &b,
            "--group",
            "kafka-tools",
            "--reset-offsets",
            "--execute",
        ];
        args.extend_from_slice(extra);
        tool("consumer-groups", &args)
    };
    let start = Instant::now();
    loop {
        let (ok, out, err) = reset(&["--topic", "in", "--to-earliest"]);
        if ok && !err.contains("Error") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "reset refused: {out}{err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, out, err) = reset(&["--topic", "in:1", "--to-offset", "700"]);
    assert!(ok, "{out}{err}");
    let (_, rows) = ours(&b, "kafka-tools");
    assert_eq!(rows[&0].0, "0", "{rows:?}");
    assert_eq!(rows[&1].0, "700", "{rows:?}");
    let ends: i64 = rows.values().map(|r| r.1.parse::<i64>().unwrap()).sum();
    let before = count(&client, "out").await;
    let run = pipeline(&b, "in", "out")
        .args(["--group", "kafka-tools", "--until-end"])
        .args(plugin_args(&["categorize"]))
        .output()
        .expect("rerun");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        count(&client, "out").await - before,
        ends - 700,
        "the rerun started where Kafka's tool put the offsets"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kafkas_console_consumer_reads_the_output() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    generate(
        &b,
        "in",
        &["--count", "500", "--seed", "9", "--partitions", "2"],
    );
    let run = pipeline(&b, "in", "out")
        .args(["--until-end"])
        .args(plugin_args(&["enrich"]))
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let client = broker.client().await;
    let n = count(&client, "out").await;
    assert!(n > 400, "{n}");
    let (ok, out, err) = tool(
        "console-consumer",
        &[
            "--bootstrap-server",
            &b,
            "--topic",
            "out",
            "--from-beginning",
            "--max-messages",
            &n.to_string(),
            "--timeout-ms",
            "30000",
            "--property",
            "print.headers=true",
            "--property",
            "headers.separator=;",
            "--property",
            "print.key=false",
        ],
    );
    assert!(ok, "{err}");
    // Records only, without the notices newer tools print.
    let lines: Vec<&str> = out.lines().filter(|l| !is_tool_notice(l)).collect();
    assert_eq!(lines.len() as i64, n, "{out}\n{err}");
    for line in lines {
        // HEADERS \t VALUE
        let (headers, value) = line.split_once('\t').expect("headers and value");
        assert!(headers.contains("pipeline.source.offset:"), "{headers}");
        let v: serde_json::Value = serde_json::from_str(value).expect("JSON value");
        assert!(v["processed_timestamp"].is_i64(), "{value}");
    }
}

/// A KIP-848 group (`--group-protocol consumer`): `group describe` reads it
/// with ConsumerGroupDescribe (member epochs, the broker's assignor) and
/// says what `kafka-consumer-groups --describe` says, per partition and
/// for its member.
#[tokio::test(flavor = "multi_thread")]
async fn kafkas_group_command_agrees_on_a_consumer_protocol_group() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let group = ["--group", "kip848-tools", "--client-id", "kip848-test"];
    let consumer = ["--group-protocol", "consumer"];
    let (_, mut member, _logs) = one_member(&broker, "6", &[&group[..], &consumer].concat()).await;
    let (table, theirs) = agreeing(&b, "kip848-tools").await;
    eprintln!(
        "pipeline-host group describe (consumer protocol):\n{table}\nkafka-consumer-groups --describe:\n{theirs}"
    );
    assert!(
        table.contains("protocol consumer (KIP-848, assignor uniform")
            && table.contains("members 1")
            && table.contains("  epoch "),
        "{table}"
    );
    let (ok, state, err) = tool(
        "consumer-groups",
        &[
            "--bootstrap-server",
            &b,
            "--describe",
            "--group",
            "kip848-tools",
            "--state",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        state.contains("Stable") && state.contains("uniform"),
        "{state}"
    );
    let ours_state = table.split_whitespace().nth(3).unwrap_or_default();
    assert!(
        state.to_lowercase().contains(&ours_state.to_lowercase()),
        "the same state: ours {ours_state}, Kafka's {state}"
    );
    sigterm(&member);
    assert!(wait_exit(&mut member, Duration::from_secs(30)).success());
}
