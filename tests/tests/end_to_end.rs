//! The whole pipeline through a real broker: `pipeline-host generate` feeds
//! the input, the `pipeline-host` binary runs the four default WebAssembly
//! stages, and the test reads input, output and dead-letter topics back with
//! a plain client. The expected output is computed here, from the input
//! records, with serde_json and chrono: independently of the project's code.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use pipeline_tests::{
    Broker, count, eventually_async, host, pipeline, plugin_args, read_all, sigterm, wait_exit,
};
use serde_json::{Map, Value};

const EVENTS: u64 = 20_000;
const SUSPICIOUS: [&str; 6] = ["RU", "CN", "KP", "IR", "NG", "BY"];

/// Where the test expects one input record to end up.
#[derive(Debug, PartialEq)]
enum Expected {
    Output(Map<String, Value>),
    DeadLetter(&'static str),
    Dropped,
}

/// The seed's processing, written independently of the stages.
fn expected(value: Option<&[u8]>) -> Expected {
    let Some(Ok(Value::Object(mut event))) = value.map(serde_json::from_slice::<Value>) else {
        return Expected::DeadLetter("host");
    };
    let Some(device) = event.get("device_type").and_then(Value::as_str) else {
        return Expected::DeadLetter("android_filter");
    };
    if device.to_lowercase() != "android" {
        return Expected::Dropped;
    }
    let secs = match event.get("timestamp") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok()
        }
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    let Some(secs) = secs.filter(|s| (0..=253_402_300_799).contains(s)) else {
        return Expected::DeadLetter("enrich");
    };
    let login = chrono::DateTime::from_timestamp(secs, 0).expect("in range");
    event.insert(
        "login_time".into(),
        Value::String(login.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    event.insert("device_category".into(), "Mobile".into());
    match event
        .get("locale")
        .and_then(Value::as_str)
        .map(str::to_uppercase)
    {
        Some(l) if SUSPICIOUS.contains(&l.as_str()) => {
            event.insert("anomaly".into(), true.into());
            event.insert(
                "anomaly_reasons".into(),
                Value::Array(vec![format!("suspicious locale {l}").into()]),
            );
        }
        Some(_) => {
            event.insert("anomaly".into(), false.into());
        }
        None => {
            event.insert("anomaly".into(), true.into());
            event.insert(
                "anomaly_reasons".into(),
                Value::Array(vec!["missing locale".into()]),
            );
        }
    }
    Expected::Output(event)
}

const STAGES: [&str; 4] = ["android_filter", "enrich", "categorize", "anomaly"];

/// 20,000 generated events with ~1% undecodable and ~2% field-missing:
/// the output holds exactly the android events with every added field
/// right, the dead-letter topic exactly the undecodable ones plus those a
/// stage could not process, and every input is accounted for once.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_lands_exactly_where_the_seed_logic_says() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let gen_status = host(&[
        "generate",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "user-login",
        "--count",
    ])
    .arg(EVENTS.to_string())
    .args([
        "--seed",
        "42",
        "--malformed",
        "0.01",
        "--missing",
        "0.02",
        "--partitions",
        "3",
    ])
    .status()
    .expect("run generate");
    assert!(gen_status.success());

    let started = chrono::Utc::now().timestamp();
    let output = pipeline(&bootstrap, "user-login", "processed-user-login")
        .args(["--until-end"])
        .args(plugin_args(&STAGES))
        .output()
        .expect("run pipeline-host");
    let finished = chrono::Utc::now().timestamp();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pipeline-host failed: {log}");
    assert!(log.contains("pipeline stopped"), "{log}");

    let client = broker.client().await;
    let input = read_all(&client, "user-login").await;
    let out = read_all(&client, "processed-user-login").await;
    let dlq = read_all(&client, "user-login-dlq").await;
    assert_eq!(input.len() as u64, EVENTS);

    let mut want_out = HashMap::new();
    let mut want_dlq = HashMap::new();
    let mut dropped = 0;
    for r in &input {
        match expected(r.record.value.as_deref()) {
            Expected::Output(v) => {
                want_out.insert((r.partition, r.offset), (v, r));
            }
            Expected::DeadLetter(stage) => {
                want_dlq.insert((r.partition, r.offset), (stage, r));
            }
            Expected::Dropped => dropped += 1,
        }
    }
    // The generated mix really exercises every path.
    let by_stage = want_dlq.values().fold(BTreeMap::new(), |mut m, (s, _)| {
        *m.entry(*s).or_insert(0) += 1;
        m
    });
    assert!(
        by_stage.get("host").copied().unwrap_or(0) > 100,
        "{by_stage:?}"
    );
    assert!(
        by_stage.get("android_filter").copied().unwrap_or(0) > 20,
        "{by_stage:?}"
    );
    assert!(
        by_stage.get("enrich").copied().unwrap_or(0) > 20,
        "{by_stage:?}"
    );
    assert!(dropped > 5_000 && want_out.len() > 5_000);

    assert_eq!(out.len(), want_out.len(), "output count");
    for r in &out {
        let src = r.source();
        let (want, input) = want_out
            .remove(&src)
            .unwrap_or_else(|| panic!("unexpected or duplicate output for {src:?}"));
        assert_eq!(r.record.key, input.record.key, "key kept for {src:?}");
        let mut got: Map<String, Value> =
            serde_json::from_slice(r.record.value.as_deref().expect("value"))
                .expect("output is JSON");
        let processed = got
            .remove("processed_timestamp")
            .and_then(|v| v.as_i64())
            .expect("processed_timestamp is an integer");
        assert!(
            (started - 1..=finished + 1).contains(&processed),
            "processed_timestamp {processed} outside the run"
        );
        assert_eq!(got, want, "output for {src:?}");
    }
    assert!(want_out.is_empty());

    assert_eq!(dlq.len(), want_dlq.len(), "dead-letter count");
    for r in &dlq {
        let src = r.source();
        let (stage, input) = want_dlq
            .remove(&src)
            .unwrap_or_else(|| panic!("unexpected or duplicate dead letter for {src:?}"));
        assert_eq!(
            r.header("pipeline.error.stage").as_deref(),
            Some(stage),
            "stage of {src:?}"
        );
        assert!(
            !r.header("pipeline.error.reason")
                .unwrap_or_default()
                .is_empty()
        );
        assert_eq!(
            r.header("pipeline.source.topic").as_deref(),
            Some("user-login")
        );
        assert_eq!(
            r.record.value, input.record.value,
            "original value bytes unchanged"
        );
        assert_eq!(r.record.key, input.record.key, "original key unchanged");
    }
    assert!(want_dlq.is_empty());
    assert_eq!(
        out.len() + dlq.len() + dropped,
        EVENTS as usize,
        "every input accounted for"
    );
}

/// SIGTERM while events stream: the host finishes the batches in flight,
/// flushes, exits 0, and the topics hold exactly what its final counters
/// say it delivered.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_what_was_processed_and_exits_zero() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let mut generator = host(&[
        "generate",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "in",
        "--rate",
        "20000",
        "--seed",
        "7",
    ])
    .args(["--malformed", "0.01", "--missing", "0.02"])
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .expect("generator");
    let mut pipeline = pipeline(&bootstrap, "in", "out")
        .args(plugin_args(&STAGES))
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    let client = broker.client().await;
    eventually_async(
        Duration::from_secs(30),
        "2,000 records in the output",
        || async {
            match count(&client, "out").await {
                n if n >= 2_000 => Ok(()),
                n => Err(format!("{n} records")),
            }
        },
    )
    .await;
    sigterm(&pipeline);
    let status = wait_exit(&mut pipeline, Duration::from_secs(30));
    sigterm(&generator);
    assert!(
        wait_exit(&mut generator, Duration::from_secs(10)).success(),
        "the generator stops cleanly on SIGTERM"
    );
    let mut log = String::new();
    std::io::Read::read_to_string(&mut pipeline.stderr.take().expect("stderr"), &mut log)
        .expect("read log");
    assert!(status.success(), "exit status {status:?}: {log}");
    // The final statistics, from the JSON log line that carries them.
    let last: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "pipeline stopped")
        .unwrap_or_else(|| panic!("no final stats line: {log}"))["fields"]
        .clone();
    let field = |name: &str| -> i64 {
        last[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} missing in {last}"))
    };
    assert_eq!(count(&client, "out").await, field("records_out"), "{last}");
    assert_eq!(
        count(&client, "in-dlq").await,
        field("dead_letters"),
        "{last}"
    );
    assert!(field("records_in") >= 2_000);
}
