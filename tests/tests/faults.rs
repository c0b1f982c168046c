//! Misbehaving stages through the real broker: the pipeline keeps running,
//! the affected records land in the dead-letter topic with the reason, the
//! others flow, and nothing is lost.

use pipeline_tests::{Broker, count, generate, plugin, read_all, run_until_end};

/// A stage that loops forever on its second batch: that batch's records
/// are dead letters naming the time budget, later batches flow, and
/// output + dead letters + dropped = input.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_costs_one_batch_not_the_pipeline() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    generate(
        &bootstrap,
        "in",
        &["--count", "6000", "--partitions", "1", "--batch", "1000"],
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
fetch_max_bytes = 200000
[output]
topic = "out"
[[stage]]
plugin = "{hostile}"
time_budget_ms = 300
config = {{ mode = "loop", on_call = 2 }}
"#,
            hostile = plugin("fixtures/hostile").display()
        ),
    )
    .expect("write config");
    let (status, log) = run_until_end(&config, &[]);
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
