//! Each default stage through the real host runtime: the built `.wasm`
//! files loaded by wasmtime exactly as `pipeline-host` loads them, fed
//! through the chain (host validation, columnar batches, merging), with
//! missing fields and odd types. Also: what a guest can see of the outside
//! world (nothing), and refused configurations.

use pipeline_host::stages::wasm::WasmEngine;
use pipeline_host::stages::{Chain, ChainOutput, StageError, StageLimits, StageRunner, Tombstones};
use pipeline_tests::plugin;
use rskafka::record::{Record, RecordAndOffset};
use serde_json::{Value, json};

/// 2023-11-14T22:13:20Z in milliseconds: the host's `now` in these tests.
const NOW_MS: i64 = 1_700_000_000_000;

fn chain(stages: &[(&str, &[(&str, &str)])]) -> Result<Chain, StageError> {
    let engine = WasmEngine::new()?;
    let mut runners = Vec::new();
    for (name, config) in stages {
        let p = engine.load(name, &plugin(name), StageLimits::default())?;
        let config: Vec<(String, String)> = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        runners.push(StageRunner::Wasm(Box::new(p.instantiate(&config)?)));
    }
    Ok(Chain::new(runners, Tombstones::Drop))
}

fn records(values: &[Option<&str>]) -> Vec<RecordAndOffset> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| RecordAndOffset {
            record: Record {
                key: Some(format!("k{i}").into_bytes()),
                value: v.map(|v| v.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: chrono::DateTime::from_timestamp_millis(NOW_MS).expect("valid"),
            },
            offset: 100 + i as i64,
        })
        .collect()
}

fn run(stages: &[(&str, &[(&str, &str)])], values: &[&str]) -> ChainOutput {
    let values: Vec<Option<&str>> = values.iter().map(|v| Some(*v)).collect();
    chain(stages)
        .expect("chain")
        .process("t", 0, NOW_MS, &records(&values))
}

fn out_json(out: &ChainOutput) -> Vec<Value> {
    out.output
        .iter()
        .map(|r| serde_json::from_slice(r.value.expect("value")).expect("output is JSON"))
        .collect()
}

fn reasons(out: &ChainOutput) -> Vec<(usize, String, String)> {
    out.dead
        .iter()
        .map(|d| (d.input, d.stage.clone(), d.reason.clone()))
        .collect()
}

/// android_filter keeps android in any case, drops others, and sends
/// events it cannot decide on to the dead-letter topic.
#[test]
fn android_filter() {
    let out = run(
        &[("android_filter", &[])],
        &[
            r#"{"device_type":"android","n":1}"#,
            r#"{"device_type":"ANDROID","n":2}"#,
            r#"{"device_type":"iOS"}"#,
            r#"{"n":3}"#,
            r#"{"device_type":null}"#,
            r#"{"device_type":5}"#,
            r#"{"nested":{"device_type":"android"}}"#,
            r#"{"device_type":"Andr\u006fid","n":4}"#,
        ],
    );
    assert_eq!(
        out_json(&out),
        [
            json!({"device_type":"android","n":1}),
            json!({"device_type":"ANDROID","n":2}),
            json!({"device_type":"Android","n":4})
        ]
    );
    let r = reasons(&out);
    assert_eq!(
        r.iter()
            .map(|(i, s, _)| (*i, s.as_str()))
            .collect::<Vec<_>>(),
        [
            (3, "android_filter"),
            (4, "android_filter"),
            (5, "android_filter"),
            (6, "android_filter")
        ]
    );
    assert_eq!(r[0].2, "missing field device_type");
    assert_eq!(r[1].2, "field device_type is not a string: null");
    assert_eq!(out.dropped, 1);
    // Output keeps key and source offset.
    assert_eq!(out.output.get(0).key, Some(&b"k0"[..]));
    assert_eq!(out.output.get(2).source_offset, 107);
}

/// enrich: string and numeric epoch seconds become RFC 3339; everything
/// else fails by default, or gets `login_time: null` when configured.
#[test]
fn enrich() {
    let events = [
        r#"{"timestamp":"1694479551"}"#,
        r#"{"timestamp":1694479551}"#,
        r#"{"timestamp":"0"}"#,
        r#"{"a":1}"#,
        r#"{"timestamp":"soon"}"#,
        r#"{"timestamp":1694479551.5}"#,
        r#"{"timestamp":-5}"#,
        r#"{"timestamp":null}"#,
        r#"{"timestamp":"253402300800"}"#,
    ];
    let out = run(&[("enrich", &[])], &events);
    let processed = NOW_MS / 1000;
    assert_eq!(
        out_json(&out),
        [
            json!({"timestamp":"1694479551","processed_timestamp":processed,"login_time":"2023-09-12T00:45:51Z"}),
            json!({"timestamp":1694479551,"processed_timestamp":processed,"login_time":"2023-09-12T00:45:51Z"}),
            json!({"timestamp":"0","processed_timestamp":processed,"login_time":"1970-01-01T00:00:00Z"}),
        ]
    );
    let r = reasons(&out);
    assert_eq!(
        r.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7, 8]
    );
    assert_eq!(r[0].2, "missing field timestamp");
    assert_eq!(r[1].2, "field timestamp is not epoch seconds: \"soon\"");

    let lenient = run(
        &[("enrich", &[("on_invalid_timestamp", "null")])],
        &events[3..5],
    );
    assert_eq!(
        out_json(&lenient),
        [
            json!({"a":1,"processed_timestamp":processed,"login_time":null,"login_time_error":"missing field timestamp"}),
            json!({"timestamp":"soon","processed_timestamp":processed,"login_time":null,"login_time_error":"field timestamp is not epoch seconds: \"soon\""}),
        ]
    );
}

/// categorize maps device types through its table; unknown, missing and
/// non-string device types get the explicit unknown category.
#[test]
fn categorize() {
    let events = [
        r#"{"device_type":"android"}"#,
        r#"{"device_type":"iPad"}"#,
        r#"{"device_type":"Windows"}"#,
        r#"{"device_type":"toaster"}"#,
        r#"{}"#,
        r#"{"device_type":["android"]}"#,
        r#"{"device_type":"android","device_category":"stale"}"#,
    ];
    let cats: Vec<Value> = out_json(&run(&[("categorize", &[])], &events))
        .into_iter()
        .map(|v| v["device_category"].clone())
        .collect();
    assert_eq!(
        cats,
        [
            "Mobile", "Tablet", "Desktop", "Unknown", "Unknown", "Unknown", "Mobile"
        ]
    );
    let custom = run(
        &[(
            "categorize",
            &[("table", "toaster:Appliance"), ("unknown", "Other")],
        )],
        &events[..4],
    );
    let cats: Vec<Value> = out_json(&custom)
        .into_iter()
        .map(|v| v["device_category"].clone())
        .collect();
    assert_eq!(cats, ["Other", "Other", "Other", "Appliance"]);
    // An appended member replaces an existing one instead of duplicating it.
    let replaced = run(&[("categorize", &[])], &events[6..]);
    let text =
        String::from_utf8(replaced.output.get(0).value.expect("value").to_vec()).expect("utf8");
    assert_eq!(text.matches("device_category").count(), 1, "{text}");
}

/// anomaly flags suspicious locales (case-insensitive) and missing ones,
/// with reasons; the list is configurable.
#[test]
fn anomaly() {
    let events = [
        r#"{"locale":"RU"}"#,
        r#"{"locale":"ru"}"#,
        r#"{"locale":"US"}"#,
        r#"{"x":1}"#,
        r#"{"locale":7}"#,
    ];
    assert_eq!(
        out_json(&run(&[("anomaly", &[])], &events)),
        [
            json!({"locale":"RU","anomaly":true,"anomaly_reasons":["suspicious locale RU"]}),
            json!({"locale":"ru","anomaly":true,"anomaly_reasons":["suspicious locale RU"]}),
            json!({"locale":"US","anomaly":false}),
            json!({"x":1,"anomaly":true,"anomaly_reasons":["missing locale"]}),
            json!({"locale":7,"anomaly":true,"anomaly_reasons":["missing locale"]}),
        ]
    );
    let custom = run(
        &[(
            "anomaly",
            &[
                ("suspicious_locales", "us"),
                ("flag_missing_locale", "false"),
            ],
        )],
        &events,
    );
    let flags: Vec<Value> = out_json(&custom)
        .into_iter()
        .map(|v| v["anomaly"].clone())
        .collect();
    assert_eq!(flags, [false, false, true, false, false]);
}

/// The host validates input before any stage: undecodable values and
/// non-objects become dead letters of stage `host`; tombstones are dropped.
#[test]
fn host_validation_and_tombstones() {
    let inputs = records(&[
        Some("not json"),
        Some("[1,2]"),
        Some(""),
        None,
        Some(r#"{"device_type":"android","timestamp":"1"}"#),
        Some("{\"a\":\"\u{1}\"}"),
    ]);
    let mut c = chain(&[("android_filter", &[]), ("enrich", &[])]).expect("chain");
    let out = c.process("t", 0, NOW_MS, &inputs);
    let r = reasons(&out);
    assert_eq!(
        r.iter()
            .map(|(i, s, _)| (*i, s.as_str()))
            .collect::<Vec<_>>(),
        [(0, "host"), (1, "host"), (2, "host"), (5, "host")]
    );
    assert!(r[0].2.starts_with("value is not JSON"));
    assert_eq!(r[1].2, "value is JSON but not an object");
    assert_eq!(out.dropped, 1, "the tombstone");
    assert_eq!(out.output.len(), 1);
}

/// The full default chain in order on one event.
#[test]
fn default_chain() {
    let out = run(
        &[
            ("android_filter", &[]),
            ("enrich", &[]),
            ("categorize", &[]),
            ("anomaly", &[]),
        ],
        &[
            r#"{"user_id":"u","app_version":"2.3.0","device_type":"android","ip":"1.2.3.4","locale":"RU","device_id":"593-47-5928","timestamp":"1694479551"}"#,
        ],
    );
    assert_eq!(
        out_json(&out),
        [
            json!({"user_id":"u","app_version":"2.3.0","device_type":"android","ip":"1.2.3.4","locale":"RU","device_id":"593-47-5928","timestamp":"1694479551",
            "processed_timestamp": NOW_MS / 1000, "login_time":"2023-09-12T00:45:51Z","device_category":"Mobile","anomaly":true,"anomaly_reasons":["suspicious locale RU"]})
        ]
    );
}

/// A `std` guest that reads the environment, arguments, clock and a file
/// gets nothing: no variables, no arguments, the clock at the Unix epoch,
/// no file. Its stdout is discarded without harm.
#[test]
fn a_guest_sees_nothing_of_the_host() {
    let out = run(&[("fixtures/probe", &[])], &[r#"{"a":1}"#]);
    assert_eq!(
        out_json(&out),
        [
            json!({"a":1,"probe_env_vars":0,"probe_args":0,"probe_clock_secs":0,"probe_file_read":false,"probe_version":"1"})
        ]
    );
}

/// A refused configuration is an error naming the stage and the problem.
#[test]
fn refused_configuration_names_stage_and_problem() {
    let err = chain(&[("anomaly", &[("suspicious_locales", " , ")])]).expect_err("must refuse");
    let text = err.to_string();
    assert!(matches!(err, StageError::ConfigRefused { .. }), "{text}");
    assert!(
        text.contains("stage anomaly") && text.contains("suspicious_locales"),
        "{text}"
    );
    let err = chain(&[("enrich", &[("on_invalid_timestamp", "maybe")])]).expect_err("must refuse");
    assert!(err.to_string().contains("on_invalid_timestamp"), "{err}");
    let err = chain(&[("categorize", &[("tabel", "a:b")])]).expect_err("must refuse");
    assert!(
        err.to_string().contains("unknown setting(s) tabel"),
        "{err}"
    );
}

fn hostile_chain(settings: &[(&str, &str)], limits: StageLimits) -> Chain {
    let engine = WasmEngine::new().expect("engine");
    let p = engine
        .load("hostile", &plugin("fixtures/hostile"), limits)
        .expect("load");
    let config: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Chain::new(
        vec![StageRunner::Wasm(Box::new(
            p.instantiate(&config).expect("init"),
        ))],
        Tombstones::Drop,
    )
}

/// A stage that traps, exhausts memory or stack, or returns the wrong
/// number of outcomes on a batch holding a poison record fails only that
/// record, with a reason naming the limit: the chain isolates it on fresh
/// instances and the other records flow. A loop is not isolated (each
/// retry would spend the time budget): its batch fails as a whole. The
/// next batch flows either way.
#[test]
fn misbehaving_stages_fail_only_their_poison_records() {
    let limits = StageLimits {
        memory_bytes: 16 << 20,
        time_budget: std::time::Duration::from_millis(200),
        ..StageLimits::default()
    };
    let cases = [
        ("trap", "trapped", true),
        ("loop", "exceeded its time budget", false),
        ("memory", "exceeded its memory limit", true),
        ("recursion", "overflowed its stack", true),
        (
            "wrong-count",
            "returned 0 outcomes for a batch of 1 records",
            true,
        ),
    ];
    let batch = records(&[
        Some(r#"{"a":1}"#),
        Some(r#"{"a":2,"poison":true}"#),
        Some(r#"{"a":3}"#),
    ]);
    let clean = records(&[Some(r#"{"a":1}"#), Some(r#"{"a":3}"#)]);
    for (mode, reason, isolated) in cases {
        let mut c = hostile_chain(&[("mode", mode), ("poison_field", "poison")], limits);
        let out = c.process("t", 0, NOW_MS, &batch);
        let dead: Vec<usize> = out.dead.iter().map(|d| d.input).collect();
        if isolated {
            assert_eq!(out.output.len(), 2, "{mode}: the others flow");
            assert_eq!(dead, [1], "{mode}: only the poison record");
        } else {
            assert_eq!(out.output.len(), 0, "{mode}");
            assert_eq!(dead, [0, 1, 2], "{mode}: the whole batch");
        }
        assert_eq!(out.stage_errors.len(), 1, "{mode}");
        for d in &out.dead {
            assert_eq!(d.stage, "hostile");
            assert!(d.reason.contains(reason), "{mode}: {}", d.reason);
        }
        let next = c.process("t", 0, NOW_MS, &clean);
        assert_eq!(
            (next.output.len(), next.dead.len()),
            (2, 0),
            "{mode}: recycled"
        );
        assert_eq!(c.counts()[0].errors, 1);
        assert_eq!(c.counts()[0].isolated, u64::from(isolated), "{mode}");
    }
}
