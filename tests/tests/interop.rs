//! Interop with Python `confluent-kafka` (librdkafka): it produces the
//! events, reads the pipeline's output and dead letters back and checks
//! them against its own computation (`tests/python/interop.py`).

use pipeline_tests::{Broker, host_bin, python, root};

/// confluent-kafka in, pipeline-host in the middle, confluent-kafka out.
#[test]
fn confluent_kafka_produces_and_reads_back() {
    let broker = Broker::start();
    let out = std::process::Command::new(python())
        .arg(root().join("tests/python/interop.py"))
        .arg(broker.bootstrap())
        .arg(host_bin())
        .arg(root().join("plugins"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "interop.py failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("interop ok"), "{stdout}");
}
