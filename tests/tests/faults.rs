//! Misbehaving stages through the real broker: the pipeline keeps running,
//! the affected records land in the dead-letter topic with the reason, the
//! others flow, and nothing is lost.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use pipeline_tests::{Broker, count, generate, plugin, read_all, run_until_end};

/// Starts a broker with `records` events on one partition of "in"
/// (produced 500 a time) and runs to the end a pipeline whose one stage is
/// the hostile fixture with the `stage` lines; `input` lines go into
/// `[input]`. Returns the broker, the run's status and log, and how long
/// the run took.
fn run_hostile(records: u64, input: &str, stage: &str) -> (Broker, ExitStatus, String, Duration) {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let count = records.to_string();
    generate(
        &bootstrap,
        "in",
        &["--count", &count, "--partitions", "1", "--batch", "500"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap = "{bootstrap}"
[input]
topic = "in"
{input}
[output]
topic = "out"
[[stage]]
plugin = "{hostile}"
{stage}
"#,
            hostile = plugin("fixtures/hostile").display()
        ),
    )
    .expect("write config");
    let started = Instant::now();
    let (status, log) = run_until_end(&config, &[]);
    (broker, status, log, started.elapsed())
}

/// A stage that loops forever on its second batch: that batch's records
/// are dead letters naming the time budget, later batches flow, and
/// output + dead letters + dropped = input.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_costs_one_batch_not_the_pipeline() {
    let (broker, status, log, _) = run_hostile(
        6000,
        "fetch_max_bytes = 200000",
        "time_budget_ms = 300\nconfig = { mode = \"loop\", on_call = 2 }",
    );
    assert!(status.success(), "{log}");
    assert!(
        log.contains("exceeded its time budget"),
        "the limit is named in the log: {log}"
    );

    let client = broker.client().await;
    let dlq = read_all(&client, "in-dlq").await;
    assert!(
        !dlq.is_empty(),
        "the looping batch went to the dead-letter topic"
    );
    for r in &dlq {
        assert_eq!(r.header("pipeline.error.stage").as_deref(), Some("hostile"));
        assert!(
            r.header("pipeline.error.reason")
                .unwrap_or_default()
                .contains("time budget")
        );
    }
    let output = count(&client, "out").await;
    assert!(output > 0, "later batches flowed");
    assert_eq!(
        output + dlq.len() as i64,
        6000,
        "nothing lost, nothing doubled"
    );
}

/// A stage that sleeps in a host call (`std::thread::sleep`, a WASI clock
/// subscription and poll) for 10 s on its second batch, under a 1 s time
/// budget: the call fails with the time-budget reason at once instead of
/// stalling the partition for the sleep, and later batches flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_stage_is_held_to_its_time_budget() {
    let (broker, status, log, took) = run_hostile(
        3000,
        "max_batch_records = 500",
        "time_budget_ms = 1000\nconfig = { mode = \"sleep\", sleep_ms = 10000, on_call = 2 }",
    );
    assert!(status.success(), "{log}");
    let client = broker.client().await;
    let dlq = read_all(&client, "in-dlq").await;
    eprintln!(
        "sleeping stage (10 s sleep, 1 s budget): whole run {:.2} s, {} dead letters",
        took.as_secs_f64(),
        dlq.len()
    );
    assert!(
        !dlq.is_empty(),
        "the sleeping batch went to the dead-letter topic: {log}"
    );
    for r in &dlq {
        let why = r.header("pipeline.error.reason").unwrap_or_default();
        assert!(why.contains("time budget"), "reason: {why}");
    }
    assert_eq!(count(&client, "out").await + dlq.len() as i64, 3000);
    assert!(
        took < Duration::from_secs(10),
        "the run outlasted the 10 s sleep ({took:?}): the sleep was not cut short"
    );
}

/// A stage that waits in `init` (`std::thread::sleep`, a WASI clock
/// subscription and poll, made on the thread that starts the pipeline): a
/// wait within the time budget returns at once and the stage runs; one
/// past it refuses the stage at start with exit code 3, naming the budget.
/// The previous host panicked instead ("Cannot start a runtime from within
/// a runtime"): wasmtime-wasi's poll blocked on the tokio runtime from a
/// thread that was driving it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_that_waits_in_init_runs_or_is_refused_cleanly() {
    let (broker, status, log, _) = run_hostile(
        1000,
        "",
        "time_budget_ms = 1000\nconfig = { mode = \"sleep\", sleep_ms = 200, on_call = 0 }",
    );
    assert!(status.success(), "a short wait in init is fine: {log}");
    assert!(!log.contains("panicked"), "{log}");
    let client = broker.client().await;
    assert_eq!(count(&client, "out").await, 1000, "every record flowed");

    let (_broker, status, log, took) = run_hostile(
        10,
        "",
        "time_budget_ms = 1000\nconfig = { mode = \"sleep\", sleep_ms = 60000, on_call = 0 }",
    );
    assert_eq!(status.code(), Some(3), "refused at start: {log}");
    assert!(
        log.contains("exceeded its time budget of 1s"),
        "the budget is named: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        took < Duration::from_secs(30),
        "refused without waiting out the sleep ({took:?})"
    );
}
