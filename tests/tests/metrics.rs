//! The admin endpoint's `/metrics`, scraped during a run through the real
//! broker: its counters equal the test's own counts of the topics, and
//! `/healthz` and `/readyz` answer. The endpoint is protected by a token:
//! without it only the probes answer, and the token never reaches the log.

use std::process::Stdio;
use std::time::Duration;

use pipeline_tests::{
    broker_with_topic, count, eventually_async, free_port, generate, http, http_auth, log_file,
    metric, plugin_args, read_all, sigterm, wait_admin, wait_exit,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_the_topics_hold() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 3).await;
    generate(
        &bootstrap,
        "in",
        &[
            "--count",
            "5000",
            "--malformed",
            "0.02",
            "--missing",
            "0.05",
            "--seed",
            "4",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (log_path, log_out) = log_file(dir.path(), "pipeline");
    let mut pipeline = pipeline_tests::pipeline(&bootstrap, "in", "out")
        .args(["--admin", &format!("127.0.0.1:{port}")])
        .env("PIPELINE_ADMIN_TOKEN", TOKEN)
        .args(plugin_args(&[
            "android_filter",
            "enrich",
            "categorize",
            "anomaly",
        ]))
        .stdout(Stdio::null())
        .stderr(log_out)
        .spawn()
        .expect("pipeline-host");
    wait_admin(port);
    assert_eq!(http(port, "GET", "/healthz").0, 200, "probes need no token");
    assert_eq!(
        http(port, "GET", "/metrics").0,
        401,
        "metrics need the token"
    );
    assert_eq!(http_auth(port, "GET", "/metrics", Some("wrong")).0, 401);
    assert_eq!(http(port, "POST", "/reload").0, 401, "so does a reload");
    assert_eq!(http(port, "GET", "/status.json").0, 401);
    let (status, _) = http(port, "GET", &format!("/status.json?token={TOKEN}"));
    assert_eq!(status, 401, "a token in a URL is not accepted");
    let (status, page) = http(port, "GET", "/status");
    assert_eq!(status, 200, "the page itself holds no data");
    assert!(
        page.contains("location.hash"),
        "it reads the token from its fragment"
    );

    // Wait until every input record is processed and delivered.
    let text = eventually_async(
        Duration::from_secs(60),
        "the metrics catch up with the topics",
        || async {
            let (status, text) = http_auth(port, "GET", "/metrics", Some(TOKEN));
            assert_eq!(status, 200);
            let done = metric(&text, "pipeline_records_in_total") == Some(5000.0)
                && metric(&text, "pipeline_consumer_lag{topic=\"in\",partition=\"0\"}")
                    == Some(0.0);
            let out = count(&client, "out").await as f64;
            let dlq = count(&client, "in-dlq").await as f64;
            let delivered = metric(&text, "pipeline_records_out_total") == Some(out)
                && metric(&text, "pipeline_dead_letters_total") == Some(dlq);
            if done && delivered {
                Ok(text)
            } else {
                Err(format!(
                    "{text}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ))
            }
        },
    )
    .await;
    assert_eq!(http(port, "GET", "/readyz").0, 200);

    let out = count(&client, "out").await as f64;
    let dlq = count(&client, "in-dlq").await as f64;
    assert!(out > 0.0 && dlq > 0.0, "both topics got records");
    assert_eq!(metric(&text, "pipeline_records_out_total"), Some(out));
    assert_eq!(metric(&text, "pipeline_dead_letters_total"), Some(dlq));
    assert_eq!(
        metric(&text, "pipeline_records_dropped_total"),
        Some(5000.0 - out - dlq),
        "every input is output, dead letter or dropped"
    );
    // The first stage saw every valid input; the last passed on the output.
    let filter_in = metric(
        &text,
        "pipeline_stage_records_in_total{stage=\"android_filter\"}",
    )
    .expect("per-stage counter");
    let host_dead = read_all(&client, "in-dlq")
        .await
        .iter()
        .filter(|r| r.header("pipeline.error.stage").as_deref() == Some("host"))
        .count() as f64;
    assert!(host_dead > 0.0);
    assert_eq!(
        filter_in + host_dead,
        5000.0,
        "undecodable events never reach a stage; the rest reach the first"
    );
    assert_eq!(
        metric(&text, "pipeline_stage_records_out_total{stage=\"anomaly\"}"),
        Some(out)
    );
    assert!(
        metric(&text, "pipeline_end_to_end_seconds_count").unwrap_or(0.0) >= 5000.0,
        "end-to-end latency observed per record"
    );
    assert!(text.contains("# TYPE pipeline_batch_seconds histogram"));
    sigterm(&pipeline);
    assert!(wait_exit(&mut pipeline, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(!log.contains(TOKEN), "the token is never logged");
}

/// The admin token of the test.
const TOKEN: &str = "t0ken-4-metrics";
