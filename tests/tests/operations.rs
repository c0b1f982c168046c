//! Operator tools through a real broker: `group describe`, `group reset`
//! (refused while the group has members) and `redrive` of dead letters.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::{
    Broker, count, generate, host, pipeline, plugin_args, read_all, sigterm, wait_count, wait_exit,
};

/// Events with 5% missing fields into `in` (3 partitions).
fn produce_events(b: &str, seed: &str, n: &str) {
    generate(
        b,
        "in",
        &[
            "--partitions",
            "3",
            "--missing",
            "0.05",
            "--seed",
            seed,
            "--count",
            n,
        ],
    );
}

fn tool(args: &[&str]) -> (Option<i32>, String, String) {
    let out = host(args).output().expect("run tool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// describe shows the member, its partitions, committed offsets and lag;
/// reset is refused while a member is active, works once it stopped, and
/// the next run reprocesses from the new offsets.
#[tokio::test(flavor = "multi_thread")]
async fn describe_and_reset_a_group() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    produce_events(&b, "1", "3000");
    let mut m = pipeline(&b, "in", "out")
        .args(["--group", "ops", "--group-instance-id", "ops-0"])
        .args(plugin_args(&["categorize"]))
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("member");
    let client = broker.client().await;
    wait_count(&client, "out", 3000, Duration::from_secs(30)).await;
    let describe = [
        "group",
        "describe",
        "--bootstrap",
        &b,
        "--group",
        "ops",
        "--topic",
        "in",
    ];
    let (code, table, err) = tool(&describe);
    assert_eq!(code, Some(0), "{err}");
    // A static member: its instance id is the owner of every partition.
    assert!(
        table.contains("state Stable") && table.contains("members 1"),
        "{table}"
    );
    assert!(table.contains("(instance ops-0)"), "{table}");
    assert!(table.contains("total lag 0"), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("in "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows.iter().all(|r| r[2] == r[3] && r[4] == "0"),
        "committed = end: {table}"
    );
    assert!(
        rows.iter().all(|r| r[5] == "ops-0"),
        "the static member owns every partition: {table}"
    );

    let reset = [
        "group",
        "reset",
        "--bootstrap",
        &b,
        "--group",
        "ops",
        "--topic",
        "in",
        "--to",
        "earliest",
    ];
    let (code, _, err) = tool(&reset);
    assert_eq!(code, Some(1), "refused while a member is active: {err}");
    assert!(err.contains("active member"), "{err}");

    sigterm(&m);
    assert!(wait_exit(&mut m, Duration::from_secs(30)).success());
    // A static member does not leave: wait until its session expires.
    let start = Instant::now();
    loop {
        let (code, out, err) = tool(&reset);
        if code == Some(0) {
            assert_eq!(
                out.lines()
                    .filter(|l| l.ends_with("committed offset set to 0"))
                    .count(),
                3,
                "{out}"
            );
            break;
        }
        assert!(err.contains("active member"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the member never expired: {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, table, _) = tool(&describe);
    assert!(table.contains("total lag 3000"), "{table}");

    let rerun = pipeline(&b, "in", "out")
        .args(["--group", "ops", "--until-end"])
        .args(plugin_args(&["categorize"]))
        .output()
        .expect("rerun");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        count(&client, "out").await,
        6000,
        "everything reprocessed after the reset"
    );
    let (_, table, _) = tool(&describe);
    assert!(
        table.contains("total lag 0") && table.contains("state Empty"),
        "{table}"
    );
}

/// Events enrich failed (bad timestamps) go back into the input with
/// `redrive --stage enrich` without the pipeline's headers; a run with the
/// lenient setting then delivers them.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_dead_letters_after_the_cause_is_fixed() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    produce_events(&b, "2", "4000");
    let chain = plugin_args(&["android_filter", "enrich"]);
    let run = |extra: &[&str]| {
        let out = pipeline(&b, "in", "out")
            .args(["--group", "rd", "--until-end"])
            .args(&chain)
            .args(extra)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[]);
    let client = broker.client().await;
    let dlq = read_all(&client, "in-dlq").await;
    let enrich_failed = dlq
        .iter()
        .filter(|r| r.header("pipeline.error.stage").as_deref() == Some("enrich"))
        .count() as i64;
    assert!(enrich_failed > 10, "the mix has bad timestamps");
    let (out_before, in_before) = (count(&client, "out").await, count(&client, "in").await);

    let (code, stdout, err) = tool(&[
        "redrive",
        "--bootstrap",
        &b,
        "--dlq",
        "in-dlq",
        "--stage",
        "enrich",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains(&format!("re-drove {enrich_failed} dead letters")),
        "{stdout}"
    );
    assert_eq!(count(&client, "in").await, in_before + enrich_failed);
    let redriven = read_all(&client, "in").await;
    assert!(
        redriven.iter().all(|r| r
            .record
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with(b"pipeline."))),
        "pipeline headers removed"
    );

    run(&["--stage-config", "enrich.on_invalid_timestamp=null"]);
    assert_eq!(
        count(&client, "out").await,
        out_before + enrich_failed,
        "the re-driven events are delivered"
    );
}
