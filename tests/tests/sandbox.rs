//! Hand-written hostile stages (WebAssembly text, `plugins/fixtures/wat`)
//! through the real broker: each costs only the batch it misbehaves on,
//! whose records land in the dead-letter topic with the limit named; the
//! other records flow. The per-stage failure policy (`on_error`) picks
//! dead-letter, skip or stop. Components that do not fit the world are
//! refused before anything is consumed.

use std::path::Path;

use pipeline_tests::{
    broker_with_topic, count, generate, host, pipeline, produce_batch, read_all, run_until_end,
    wat_component, wat_stage,
};
use rskafka::record::EncodedRecords;

/// Writes a pipeline config running the one `.wat` stage at `stage`.
fn config(dir: &Path, bootstrap: &str, out: &str, stage: &Path, extra: &str) -> std::path::PathBuf {
    config_batch(dir, bootstrap, out, stage, extra, 500)
}

/// [`config`] with batches of at most `batch` records.
fn config_batch(
    dir: &Path,
    bootstrap: &str,
    out: &str,
    stage: &Path,
    extra: &str,
    batch: usize,
) -> std::path::PathBuf {
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[kafka]
bootstrap = "{bootstrap}"
[input]
topic = "in"
max_batch_records = {batch}
[output]
topic = "{out}"
[dead_letter]
topic = "{out}-dlq"
[runtime]
watch = false
compile_cache = ""
[[stage]]
plugin = "{stage}"
time_budget_ms = 300
memory_mb = 16
stack_kb = 256
{extra}
"#,
            stage = stage.display()
        ),
    )
    .expect("write config");
    path
}

/// Every hostile fixture: the run finishes, the log names the limit, the
/// failed batches' records are dead letters naming the stage and the
/// limit, the other records reach the output, and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn each_hostile_stage_costs_only_its_batch() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 1).await;
    generate(&bootstrap, "in", &["--count", "3000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("endless_loop", "exceeded its time budget of 300ms"),
        ("memory_bomb", "exceeded its memory limit of 16777216 bytes"),
        (
            "memory_spread",
            "exceeded its memory limit of 16777216 bytes",
        ),
        ("deep_recursion", "overflowed its stack"),
        ("trap_second_call", "`unreachable` instruction executed"),
        ("short_outcomes", "returned malformed outcomes"),
        (
            "alias_copies",
            "returned more than its output limit of 67108864 bytes",
        ),
    ];
    for (fixture, reason) in cases {
        let stage = wat_stage(dir.path(), fixture, fixture, 0);
        let out_topic = format!("out-{}", fixture.replace('_', "-"));
        let cfg = config(dir.path(), &bootstrap, &out_topic, &stage, "");
        let (status, log) = run_until_end(&cfg, &[]);
        assert!(status.success(), "{fixture}: {log}");
        assert!(
            log.contains(reason),
            "{fixture}: the log names the limit: {log}"
        );

        let dlq = read_all(&client, &format!("{out_topic}-dlq")).await;
        assert!(
            !dlq.is_empty(),
            "{fixture}: its failing batches are dead letters"
        );
        for r in &dlq {
            assert_eq!(r.header("pipeline.error.stage").as_deref(), Some(fixture));
            let why = r.header("pipeline.error.reason").unwrap_or_default();
            assert!(why.contains(reason), "{fixture}: reason {why:?}");
        }
        let output = count(&client, &out_topic).await;
        assert!(output > 0, "{fixture}: the other batches flowed");
        assert_eq!(
            output + dlq.len() as i64,
            3000,
            "{fixture}: nothing lost, nothing doubled"
        );
    }
}

/// The output limit counts what a stage's records inherit: 200 copies of
/// `{}` returned for a record with a 400 KiB header would make 80 MB of
/// records on the host (the previous host built and produced them all).
/// The batch is a dead letter naming the limit instead, and the others
/// flow unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn inherited_headers_count_toward_the_output_limit() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 1).await;
    let big = vec![b'h'; 400 << 10];
    let now = chrono::Utc::now().timestamp_millis();
    for pair in 0..5u8 {
        let mut batch = EncodedRecords::new();
        for n in [2 * pair, 2 * pair + 1] {
            batch.push(
                Some(&[n]),
                Some(br#"{"n":1}"#),
                [(&b"big"[..], big.as_slice())],
                now,
            );
        }
        produce_batch(&client, "in", 0, batch).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = wat_stage(dir.path(), "inherit_copies", "inherit_copies", 0);
    let cfg = config_batch(dir.path(), &bootstrap, "out", &stage, "", 2);
    let (status, log) = run_until_end(&cfg, &[]);
    assert!(status.success(), "{log}");
    let reason = "returned more than its output limit of 67108864 bytes";
    assert!(log.contains(reason), "the log names the limit: {log}");

    let out = read_all(&client, "out").await;
    let dlq = read_all(&client, "out-dlq").await;
    assert!(!dlq.is_empty(), "the copying batches are dead letters");
    for r in &dlq {
        let why = r.header("pipeline.error.reason").unwrap_or_default();
        assert!(why.contains(reason), "reason {why:?}");
        assert_eq!(r.record.headers.get("big"), Some(big.as_slice()));
    }
    assert!(!out.is_empty(), "the other batches flowed");
    for r in &out {
        assert_eq!(
            r.record.value.as_deref(),
            Some(&br#"{"n":1}"#[..]),
            "kept as it was"
        );
    }
    assert_eq!(out.len() + dlq.len(), 10, "nothing lost, nothing copied");
    eprintln!(
        "output limit: {} outputs, {} dead letters naming the limit",
        out.len(),
        dlq.len()
    );
}

/// `on_error = "skip"` drops the failed batch (counted, logged with its
/// offsets) and goes on; `on_error = "stop"` stops the pipeline with exit
/// code 3 without delivering or committing that batch, so the next run
/// (with the default policy) starts at it: output + dead letters = input.
#[tokio::test(flavor = "multi_thread")]
async fn failure_policies_skip_and_stop() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 1).await;
    generate(&bootstrap, "in", &["--count", "3000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = wat_stage(dir.path(), "trap", "trap_second_call", 0);

    let skip = config(
        dir.path(),
        &bootstrap,
        "skipped",
        &stage,
        r#"on_error = "skip""#,
    );
    let (status, log) = run_until_end(&skip, &[]);
    assert!(status.success(), "{log}");
    assert!(log.contains("its policy is skip"), "{log}");
    assert_eq!(
        count(&client, "skipped-dlq").await,
        0,
        "skip writes no dead letters"
    );
    let kept = count(&client, "skipped").await;
    assert!(
        kept > 0 && kept < 3000,
        "the failed batches were dropped: {kept}"
    );

    let stop = config(
        dir.path(),
        &bootstrap,
        "stopped",
        &stage,
        r#"on_error = "stop""#,
    );
    let (status, log) = run_until_end(&stop, &["--group", "policy"]);
    assert_eq!(status.code(), Some(3), "a stop is a stage failure: {log}");
    assert!(log.contains("its policy is stop"), "{log}");
    assert!(log.contains("trapped"), "the error is named: {log}");
    let before = count(&client, "stopped").await;
    assert!(before < 3000, "the run stopped at the failing batch");
    assert_eq!(count(&client, "stopped-dlq").await, 0);

    // The failing batch was not committed: the next run starts at it.
    let again = config(dir.path(), &bootstrap, "stopped", &stage, "");
    let (status, log) = run_until_end(&again, &["--group", "policy"]);
    assert!(status.success(), "{log}");
    let output = count(&client, "stopped").await;
    let dead = count(&client, "stopped-dlq").await;
    assert_eq!(
        output + dead,
        3000,
        "nothing lost, nothing doubled across the stop"
    );
}

/// Components that do not implement the world are refused at start with
/// exit code 3 and a message naming what is wrong, before any broker is
/// contacted.
#[test]
fn components_that_do_not_fit_the_world_are_refused() {
    let cases = [
        (
            "wrong_exports",
            "does not implement the world pipeline:stage/stage@0.1.0: pipeline:stage/transform@0.1.0 has no function init",
        ),
        (
            "unknown_import",
            "imports something the host does not offer",
        ),
    ];
    for (fixture, message) in cases {
        let run = pipeline("127.0.0.1:1", "in", "out")
            .arg("--plugin")
            .arg(wat_component(fixture))
            .arg("--no-compile-cache")
            .output()
            .expect("pipeline-host");
        let log = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(3), "{fixture}: {log}");
        assert!(log.contains(message), "{fixture}: {log}");
        assert!(
            log.contains("pipeline:stage/secrets") || fixture != "unknown_import",
            "the import is named: {log}"
        );
    }
    // And the well-formed shell loads and runs as text.
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = wat_stage(dir.path(), "keep", "keep", 0);
    let run = host(&["plugin", "check"])
        .arg(&keep)
        .output()
        .expect("check");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
