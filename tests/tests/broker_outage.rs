//! The only broker (an Apache Kafka node) is killed for 10 s mid-stream and
//! comes back with its data: the pipeline resumes by itself and nothing is
//! missing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::{
    Broker, count, host, pipeline, plugin, read_all, sigterm, wait_count, wait_exit,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_resumes_after_the_broker_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start_persistent(dir.path());
    let b = broker.bootstrap();
    let mut generator = host(&[
        "generate",
        "--bootstrap",
        &b,
        "--topic",
        "in",
        "--partitions",
        "3",
    ])
    .args(["--count", "40000", "--rate", "2000", "--seed", "11"])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("generator");
    let mut pipeline = pipeline(&b, "in", "out")
        .args(["--group", "outage"])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .args(["--request-timeout-ms", "2000", "--partitions", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    let client = broker.client().await;
    wait_count(&client, "out", 5_000, Duration::from_secs(60)).await;
    drop(client);
    broker.stop();
    std::thread::sleep(Duration::from_secs(10));
    broker.restart();
    let restarted = Instant::now();
    let client = broker.client().await;
    let before = count(&client, "out").await;
    while count(&client, "out").await <= before {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "no progress after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "output moved again {:?} after the broker came back",
        restarted.elapsed()
    );
    assert!(
        wait_exit(&mut generator, Duration::from_secs(90)).success(),
        "the generator rode out the outage"
    );
    let inputs = count(&client, "in").await;
    assert!(inputs >= 40_000);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let outs: std::collections::BTreeSet<(String, String)> = read_all(&client, "out")
            .await
            .iter()
            .map(|r| {
                (
                    r.header("pipeline.source.partition").unwrap_or_default(),
                    r.header("pipeline.source.offset").unwrap_or_default(),
                )
            })
            .collect();
        if outs.len() as i64 == inputs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {inputs} inputs in the output",
            outs.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "recovered: all {inputs} inputs in the output, {:?} after the broker came back",
        restarted.elapsed()
    );
    sigterm(&pipeline);
    assert!(wait_exit(&mut pipeline, Duration::from_secs(30)).success());
}
