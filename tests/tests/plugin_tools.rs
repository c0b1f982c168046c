//! The stage author's tools: `plugin check` and `plugin run`, the latter
//! checked against the real pipeline on the same events.

use std::collections::BTreeMap;

use pipeline_tests::{Broker, generate, host, pipeline, plugin, read_all};
use serde_json::Value;

/// `plugin check` accepts a good component with its settings, and names
/// the stage and problem of a refused configuration or a file that is not
/// a component.
#[test]
fn plugin_check_validates_components_and_settings() {
    let out = host(&["plugin", "check"])
        .arg(plugin("enrich"))
        .args(["--config", "on_invalid_timestamp=null"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("enrich: a valid pipeline:stage/stage@0.2.0 component"),
        "{text}"
    );

    let out = host(&["plugin", "check"])
        .arg(plugin("enrich"))
        .args(["--config", "on_invalid_timestamp=maybe"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("stage enrich refused its configuration")
            && err.contains("on_invalid_timestamp"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").expect("write");
    let out = host(&["plugin", "check"]).arg(&junk).output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stage junk: cannot load"));
}

/// The same generated events (undecodable and field-missing ones included)
/// through `plugin run` and through the pipeline: the same outputs, dead
/// letters (stage and reason) and drops, event by event.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_run_gives_the_pipelines_outcomes() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    generate(
        &b,
        "in",
        &[
            "--partitions",
            "1",
            "--count",
            "3000",
            "--seed",
            "8",
            "--malformed",
            "0.03",
            "--missing",
            "0.05",
        ],
    );
    let run = pipeline(&b, "in", "out")
        .args(["--until-end", "--plugin"])
        .arg(plugin("android_filter"))
        .output()
        .expect("pipeline-host");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let client = broker.client().await;
    let input = read_all(&client, "in").await;
    let mut from_pipeline: BTreeMap<i64, String> = BTreeMap::new();
    for r in read_all(&client, "out").await {
        let offset: i64 = r
            .header("pipeline.source.offset")
            .expect("header")
            .parse()
            .expect("number");
        let v: Value =
            serde_json::from_slice(r.record.value.as_deref().expect("value")).expect("json");
        from_pipeline.insert(offset, format!("output {v}"));
    }
    for r in read_all(&client, "in-dlq").await {
        let offset: i64 = r
            .header("pipeline.source.offset")
            .expect("header")
            .parse()
            .expect("number");
        let what = format!(
            "dead-letter {} {}",
            r.header("pipeline.error.stage").unwrap_or_default(),
            r.header("pipeline.error.reason").unwrap_or_default()
        );
        from_pipeline.insert(offset, what);
    }

    let mut jsonl = Vec::new();
    for r in &input {
        jsonl.extend_from_slice(r.record.value.as_deref().unwrap_or_default());
        jsonl.push(b'\n');
    }
    // Input from a file: a pipe for both directions would deadlock once
    // the output pipe fills.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, &jsonl).expect("write events");
    let out = host(&["plugin", "run"])
        .arg(plugin("android_filter"))
        .args(["--batch", "700"])
        .stdin(std::fs::File::open(&path).expect("open"))
        .output()
        .expect("plugin run");
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), input.len());
    let mut kinds = BTreeMap::new();
    for (r, line) in input.iter().zip(&lines) {
        let ours = match line["outcome"].as_str().expect("outcome") {
            "output" => format!("output {}", line["values"][0]),
            "dead-letter" => format!(
                "dead-letter {} {}",
                line["stage"].as_str().unwrap_or_default(),
                line["reason"].as_str().unwrap_or_default()
            ),
            other => other.to_string(),
        };
        *kinds
            .entry(line["outcome"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
        let pipeline = from_pipeline
            .get(&r.offset)
            .cloned()
            .unwrap_or_else(|| "dropped".into());
        assert_eq!(ours, pipeline, "input offset {}", r.offset);
    }
    assert!(
        kinds.len() == 3,
        "outputs, dead letters and drops all occur: {kinds:?}"
    );
}
