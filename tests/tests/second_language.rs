//! A stage written in Python (componentize-py, `plugins/python/anomaly`)
//! through the real broker: it gives byte-for-byte the output of the Rust
//! `anomaly` stage, and its compiled code comes from the on-disk compile
//! cache on the second start.

use std::collections::BTreeMap;

use pipeline_tests::{broker_with_topic, generate, pipeline, plugin, read_all};

/// Output values by source (partition, offset).
async fn by_offset(client: &rskafka::client::Client, topic: &str) -> BTreeMap<(i64, i64), Vec<u8>> {
    read_all(client, topic)
        .await
        .into_iter()
        .map(|r| {
            let num = |h: &str| r.header(h).and_then(|o| o.parse().ok()).expect(h);
            let at = (
                num("pipeline.source.partition"),
                num("pipeline.source.offset"),
            );
            (at, r.record.value.expect("value"))
        })
        .collect()
}

/// The `load_ms` and `compile` fields of the "stage loaded" line.
fn load_line(log: &str) -> (String, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("stage loaded"))
        .unwrap_or_else(|| panic!("no stage loaded line: {log}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .trim_matches('"')
            .to_string()
    };
    (field("compile"), field("load_ms").parse().expect("number"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_stage_matches_the_rust_stage_and_is_cached() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 2).await;
    generate(
        &bootstrap,
        "in",
        &["--count", "4000", "--seed", "5", "--missing", "0.1"],
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let run = |stage: &str, out: &str| {
        let run = pipeline(&bootstrap, "in", out)
            .arg("--until-end")
            .arg("--compile-cache")
            .arg(cache.path())
            .arg("--plugin")
            .arg(plugin(stage))
            .args([
                "--stage-config",
                &format!("{stage}.suspicious_locales=RU,CN,us"),
            ])
            .output()
            .expect("pipeline-host");
        let log = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{stage}: {log}");
        log
    };
    run("anomaly", "out-rust");
    let first = run("anomaly_py", "out-python");
    let rust = by_offset(&client, "out-rust").await;
    let python = by_offset(&client, "out-python").await;
    assert_eq!(rust.len(), 4000);
    assert_eq!(
        python, rust,
        "the Python stage's output is the Rust stage's"
    );

    let again = run("anomaly_py", "out-python-again");
    let (how, compile_ms) = load_line(&first);
    let (cached, cache_ms) = load_line(&again);
    assert_eq!(how, "compiled");
    assert_eq!(cached, "cache", "the second start reads the compile cache");
    eprintln!(
        "anomaly_py (18 MB component): compiled in {compile_ms} ms, loaded from the compile cache in {cache_ms} ms"
    );
}
