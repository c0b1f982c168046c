//! The only broker (an Apache Kafka node) is killed for 10 s mid-stream and
//! comes back with its data: the pipeline resumes by itself and nothing is
//! missing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::{
    Broker, Read, count, eventually_async, host, pipeline, plugin, read_all, sigterm, wait_count,
    wait_exit,
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
    // The outage itself: ten seconds without a broker.
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.restart();
    let restarted = Instant::now();
    let client = broker.client().await;
    let before = count(&client, "out").await;
    eventually_async(
        Duration::from_secs(60),
        "the output moves again after the broker came back",
        || async {
            match count(&client, "out").await {
                n if n > before => Ok(()),
                n => Err(format!(
                    "{n} output records, {before} before the outage ended"
                )),
            }
        },
    )
    .await;
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
    eventually_async(
        Duration::from_secs(90),
        "every input reaches the output",
        || async {
            let outs: std::collections::BTreeSet<(i32, i64)> = read_all(&client, "out")
                .await
                .iter()
                .map(Read::source)
                .collect();
            if outs.len() as i64 == inputs {
                Ok(())
            } else {
                Err(format!("{} of {inputs} inputs in the output", outs.len()))
            }
        },
    )
    .await;
    eprintln!(
        "recovered: all {inputs} inputs in the output, {:?} after the broker came back",
        restarted.elapsed()
    );
    sigterm(&pipeline);
    assert!(wait_exit(&mut pipeline, Duration::from_secs(30)).success());
}
