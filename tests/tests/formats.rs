//! Formats behind a schema registry, through Apache Kafka and a real
//! registry (Apicurio Registry from Maven Central, its Confluent-compatible
//! API), with a client nobody here wrote on both ends: Python
//! confluent-kafka's `AvroSerializer` produces the input and its
//! `AvroDeserializer` reads the output back.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::registry::Registry;
use pipeline_tests::{
    Broker, KeyValue, count, create_topic, pipeline, plugin_args, produce, python_json, read_all,
    root, wait_count, wait_exit,
};

/// The default chain, as `--plugin` arguments.
const DEFAULT_CHAIN: [&str; 4] = ["android_filter", "enrich", "categorize", "anomaly"];

fn schema(name: &str) -> String {
    let host = root().join("host/schemas").join(name);
    let tests = root().join("tests/schemas").join(name);
    let path: PathBuf = if host.exists() { host } else { tests };
    path.display().to_string()
}

/// A broker with topic "in" of `partitions` partitions, and a registry.
async fn setup(partitions: i32) -> (Broker, Registry, rskafka::client::Client) {
    let broker = Broker::start();
    let registry = Registry::start();
    let client = broker.client().await;
    create_topic(&client, "in", partitions).await;
    (broker, registry, client)
}

/// Python confluent-kafka produces `count` seed events into `topic`,
/// Avro-serialized unless `extra` (flags of `formats.py produce`) says
/// `--format`. Returns how
/// many are android (what the default chain keeps).
fn produce_framed(
    broker: &Broker,
    registry: &Registry,
    topic: &str,
    count: u64,
    seed: u64,
    extra: &[&str],
) -> u64 {
    let count = count.to_string();
    let seed = seed.to_string();
    let bootstrap = broker.bootstrap();
    let url = registry.url();
    let schema = schema("user-login.avsc");
    let mut args = vec![
        "produce", &bootstrap, &url, topic, &count, &seed, "--schema", &schema,
    ];
    args.extend_from_slice(extra);
    let out = python_json("formats.py", &args);
    out["android"].as_u64().expect("android count")
}

/// confluent-kafka's `AvroDeserializer` reads `expect` records of `topic`.
fn consume_avro(
    broker: &Broker,
    registry: &Registry,
    topic: &str,
    expect: u64,
    keys: bool,
) -> serde_json::Value {
    let bootstrap = broker.bootstrap();
    let url = registry.url();
    let expect = expect.to_string();
    let mut args = vec!["consume", &bootstrap, &url, topic, &expect];
    if keys {
        args.push("--keys");
    }
    python_json("formats.py", &args)
}

/// `pipeline-host` from "in" to "out" on Avro values through the registry,
/// with `stages` and `extra` flags.
fn avro_pipeline(broker: &Broker, registry: &Registry, stages: &[&str], extra: &[&str]) -> Command {
    let mut c = pipeline(&broker.bootstrap(), "in", "out");
    c.args(plugin_args(stages))
        .args(["--registry-url", &registry.url()])
        .args(["--input-format", "avro", "--output-format", "avro"])
        .args(extra);
    c
}

/// Runs `command` with `--until-end`; its log on failure.
fn run_to_end(mut command: Command) -> String {
    let out = command
        .arg("--until-end")
        .stdout(Stdio::null())
        .output()
        .expect("pipeline-host");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pipeline-host failed: {}\n{log}",
        out.status
    );
    log
}

/// Avro in (confluent-kafka's serializer) -> the default chain -> Avro out
/// with the processed schema, registered by the host: confluent-kafka's
/// deserializer reads every android event, with the fields the chain added.
#[tokio::test(flavor = "multi_thread")]
async fn avro_in_default_chain_avro_out_read_by_confluent_kafka() {
    let (broker, registry, client) = setup(3).await;
    let android = produce_framed(&broker, &registry, "in", 2000, 7, &[]);
    let started = Instant::now();
    let processed = schema("processed-login.avsc");
    run_to_end(avro_pipeline(
        &broker,
        &registry,
        &DEFAULT_CHAIN,
        &["--output-schema", &processed],
    ));
    let took = started.elapsed();
    let out = consume_avro(&broker, &registry, "out", android, false);
    eprintln!(
        "avro: 2000 events in, {android} android, {} read back by AvroDeserializer; run {took:.1?}",
        out["count"]
    );
    assert_eq!(out["count"].as_u64(), Some(android));
    for v in out["values"].as_array().expect("values") {
        assert_eq!(
            v["device_type"].as_str().map(str::to_lowercase).as_deref(),
            Some("android"),
            "{v}"
        );
        assert_eq!(v["device_category"], "Mobile", "{v}");
        assert!(v["anomaly"].is_boolean(), "{v}");
        assert!(v["processed_timestamp"].is_i64(), "{v}");
    }
    assert_eq!(count(&client, "in-dlq").await, 0, "no dead letters");
}

/// A keep-only chain writes each kept Avro value back with the same
/// schema byte for byte, and Avro keys come through as the same keys.
#[tokio::test(flavor = "multi_thread")]
async fn avro_values_and_keys_pass_a_keep_only_chain_byte_for_byte() {
    let (broker, registry, client) = setup(1).await;
    let key_schema = schema("user-key.avsc");
    let android = produce_framed(
        &broker,
        &registry,
        "in",
        500,
        11,
        &["--key-schema", &key_schema],
    );
    let login = schema("user-login.avsc");
    run_to_end(avro_pipeline(
        &broker,
        &registry,
        &["android_filter"],
        &[
            "--output-schema",
            &login,
            "--input-key-format",
            "avro",
            "--output-key-format",
            "avro",
            "--output-key-schema",
            &key_schema,
        ],
    ));
    let inputs = read_all(&client, "in").await;
    let outputs = read_all(&client, "out").await;
    assert_eq!(outputs.len() as u64, android);
    let mut identical = 0;
    for o in &outputs {
        let (_, offset) = o.source();
        let i = inputs
            .iter()
            .find(|r| r.offset == offset)
            .expect("its input");
        let (a, b) = (
            i.record.value.as_deref().unwrap(),
            o.record.value.as_deref().unwrap(),
        );
        // Same payload after the 5-byte framing (the subject may differ).
        assert_eq!(a[5..], b[5..], "value of input offset {offset}");
        let (ka, kb) = (
            i.record.key.as_deref().unwrap(),
            o.record.key.as_deref().unwrap(),
        );
        assert_eq!(ka[5..], kb[5..], "key of input offset {offset}");
        identical += 1;
    }
    let out = consume_avro(&broker, &registry, "out", android, true);
    let keys = out["keys"].as_array().expect("keys");
    assert_eq!(keys.len() as u64, android);
    for (k, v) in keys.iter().zip(out["values"].as_array().unwrap()) {
        assert_eq!(k["user_id"], v["user_id"], "key and value agree");
    }
    eprintln!("keep-only: {identical} values and keys byte-identical after the framing");
}

/// A value naming a schema id the registry does not know, and a value that
/// is not framed at all, among good records: each is a dead letter with
/// its reason and its original bytes; the good records are all delivered.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_schema_ids_and_unframed_values_are_dead_letters() {
    let (broker, registry, client) = setup(1).await;
    let first = produce_framed(&broker, &registry, "in", 300, 3, &[]);
    let unknown = [0u8, 0x7f, 0xff, 0xff, 0xff, 0x02, 0x03].to_vec();
    let unframed = br#"{"user_id":"plain json"}"#.to_vec();
    let raw = vec![
        (None, Some(unknown.clone())),
        (None, Some(unframed.clone())),
    ];
    produce(&client, "in", 0, raw).await;
    let second = produce_framed(&broker, &registry, "in", 300, 4, &[]);
    let processed = schema("processed-login.avsc");
    run_to_end(avro_pipeline(
        &broker,
        &registry,
        &DEFAULT_CHAIN,
        &["--output-schema", &processed],
    ));
    assert_eq!(count(&client, "out").await as u64, first + second);
    let dead = read_all(&client, "in-dlq").await;
    assert_eq!(dead.len(), 2, "two dead letters");
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d.header("pipeline.error.reason").unwrap_or_default())
        .collect();
    eprintln!("dead-letter reasons: {reasons:?}");
    assert!(
        reasons[0].contains("schema id 2147483647 is unknown"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("not framed for a schema registry"),
        "{}",
        reasons[1]
    );
    assert_eq!(
        dead[0].record.value.as_deref(),
        Some(&unknown[..]),
        "original bytes"
    );
    assert_eq!(
        dead[1].record.value.as_deref(),
        Some(&unframed[..]),
        "original bytes"
    );
}

/// An output the writer schema cannot hold (here `anomaly` is declared an
/// int, the chain makes it a boolean) is a dead letter whose reason names
/// the field and the type expected; nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_does_not_fit_the_schema_is_a_dead_letter_naming_the_field() {
    let (broker, registry, client) = setup(1).await;
    let android = produce_framed(&broker, &registry, "in", 200, 5, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(schema("processed-login.avsc"))
        .unwrap()
        .replace(
            r#""name": "anomaly", "type": "boolean""#,
            r#""name": "anomaly", "type": "int""#,
        );
    assert!(text.contains(r#""anomaly", "type": "int""#));
    let wrong = dir.path().join("wrong.avsc");
    std::fs::write(&wrong, text).unwrap();
    run_to_end(avro_pipeline(
        &broker,
        &registry,
        &DEFAULT_CHAIN,
        &["--output-schema", wrong.to_str().unwrap()],
    ));
    assert_eq!(count(&client, "out").await, 0);
    let dead = read_all(&client, "in-dlq").await;
    assert_eq!(
        dead.len() as u64,
        android,
        "every android event is a dead letter"
    );
    let reason = dead[0].header("pipeline.error.reason").unwrap_or_default();
    eprintln!("misfit reason: {reason}");
    assert!(
        reason.contains("field $.anomaly: expected int, found a boolean"),
        "{reason}"
    );
    assert_eq!(
        dead[0].header("pipeline.error.stage").as_deref(),
        Some("host")
    );
}

/// The registry is killed for 20 s while the input moves to schema
/// version 2 (a new id the host has not seen): the partition waits and
/// retries, nothing becomes a dead letter, and once the registry is back
/// every event is delivered, version 2's decoded too.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_down_for_20_s_delays_records_and_loses_none() {
    let (broker, mut registry, client) = setup(2).await;
    create_topic(&client, "staging", 2).await;
    let v1 = produce_framed(&broker, &registry, "in", 1000, 21, &[]);
    // Version 2's records are made while the registry is up, kept aside.
    let v2_schema = schema("user-login-v2.avsc");
    let v2 = produce_framed(
        &broker,
        &registry,
        "staging",
        1000,
        22,
        &["--then-schema", &v2_schema, "--switch-at", "0"],
    );
    let port = pipeline_tests::free_port();
    let admin = format!("127.0.0.1:{port}");
    let processed = schema("processed-login.avsc");
    let mut host = avro_pipeline(
        &broker,
        &registry,
        &DEFAULT_CHAIN,
        &[
            "--output-schema",
            &processed,
            "--group",
            "formats",
            "--admin",
            &admin,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("pipeline-host");
    wait_count(&client, "out", v1 as i64, Duration::from_secs(60)).await;
    registry.kill();
    let staged = read_all(&client, "staging").await;
    for p in 0..2 {
        let records: Vec<KeyValue> = staged
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| (r.record.key.clone(), r.record.value.clone()))
            .collect();
        produce(&client, "in", p, records).await;
    }
    let down = Instant::now();
    pipeline_tests::eventually(
        Duration::from_secs(30),
        "a partition waits for the registry",
        || {
            let (_, body) = pipeline_tests::http(port, "GET", "/metrics");
            match pipeline_tests::metric(&body, "pipeline_registry_waiting") {
                Some(n) if n >= 1.0 => Ok(()),
                seen => Err(format!("{seen:?}")),
            }
        },
    );
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    assert_eq!(
        count(&client, "out").await as u64,
        v1,
        "nothing delivered while the registry is down"
    );
    assert_eq!(
        count(&client, "in-dlq").await,
        0,
        "no dead letter while the registry is down"
    );
    registry.restart();
    let back = Instant::now();
    wait_count(&client, "out", (v1 + v2) as i64, Duration::from_secs(60)).await;
    eprintln!(
        "registry down {:.1} s; every version-2 event delivered {:.1} s after it came back",
        back.duration_since(down).as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    let (_, body) = pipeline_tests::http(port, "GET", "/metrics");
    let errors = pipeline_tests::metric(&body, "pipeline_registry_errors_total").unwrap_or(0.0);
    assert!(errors >= 1.0, "the failed registry calls are counted");
    pipeline_tests::sigterm(&host);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());
    assert_eq!(count(&client, "in-dlq").await, 0, "no dead letter");
    assert_eq!(count(&client, "out").await as u64, v1 + v2);
}

/// Protobuf in: confluent-kafka's `ProtobufSerializer` writes a message
/// that is the second of its file, so its framing carries message indexes
/// `[1]`; the host reads the right message, and the default chain's JSON
/// output holds every android event with the `.proto` field names.
#[tokio::test(flavor = "multi_thread")]
async fn protobuf_in_second_message_of_its_file_to_json_out() {
    let (broker, registry, client) = setup(2).await;
    let android = produce_framed(&broker, &registry, "in", 1000, 9, &["--format", "protobuf"]);
    let first = read_all(&client, "in").await;
    let framing = &first[0].record.value.as_deref().unwrap()[..7];
    eprintln!("protobuf framing: {framing:02x?}");
    assert_eq!(
        &framing[5..7],
        &[2, 2],
        "message indexes [1]: count 1, index 1"
    );
    let mut c = pipeline(&broker.bootstrap(), "in", "out");
    c.args(plugin_args(&DEFAULT_CHAIN)).args([
        "--registry-url",
        &registry.url(),
        "--input-format",
        "protobuf",
    ]);
    run_to_end(c);
    let out = read_all(&client, "out").await;
    assert_eq!(out.len() as u64, android);
    for r in &out {
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["device_type"].as_str().map(str::to_lowercase).as_deref(),
            Some("android"),
            "{v}"
        );
        assert!(v["user_id"].is_string() && v["anomaly"].is_boolean(), "{v}");
    }
    assert_eq!(count(&client, "in-dlq").await, 0);
}

/// JSON Schema in and out: confluent-kafka's `JSONSerializer` frames the
/// input, the host validates it, runs the default chain, validates the
/// output against the processed schema it registers, and confluent-kafka's
/// `JSONDeserializer` reads every android event back. An input that breaks
/// its schema is a dead letter naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn json_schema_in_and_out_read_by_confluent_kafka() {
    let (broker, registry, client) = setup(1).await;
    let login = schema("user-login.schema.json");
    let android = produce_framed(
        &broker,
        &registry,
        "in",
        500,
        13,
        &["--format", "json-schema", "--schema", &login],
    );
    // A framed value with the same schema id whose device_type is a number.
    let good = read_all(&client, "in").await;
    let header = good[0].record.value.as_deref().unwrap()[..5].to_vec();
    let mut bad = header.clone();
    bad.extend_from_slice(br#"{"user_id":"u","app_version":"1","device_type":7,"ip":"i","locale":"US","device_id":"d","timestamp":"1"}"#);
    produce(&client, "in", 0, vec![(None, Some(bad))]).await;
    let processed = schema("processed-login.schema.json");
    let mut c = pipeline(&broker.bootstrap(), "in", "out");
    c.args(plugin_args(&DEFAULT_CHAIN))
        .args(["--registry-url", &registry.url()])
        .args([
            "--input-format",
            "json-schema",
            "--output-format",
            "json-schema",
        ])
        .args(["--output-schema", &processed]);
    run_to_end(c);
    let bootstrap = broker.bootstrap();
    let url = registry.url();
    let expect = android.to_string();
    let out = python_json(
        "formats.py",
        &[
            "consume",
            &bootstrap,
            &url,
            "out",
            &expect,
            "--format",
            "json-schema",
        ],
    );
    assert_eq!(out["count"].as_u64(), Some(android));
    for v in out["values"].as_array().unwrap() {
        assert_eq!(v["device_category"], "Mobile", "{v}");
    }
    let dead = read_all(&client, "in-dlq").await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0].header("pipeline.error.reason").unwrap_or_default();
    eprintln!("json-schema dead letter: {reason}");
    assert!(reason.contains("field $.device_type"), "{reason}");
}

/// Hot swap checks the contract: with Avro out, a reload whose stages make
/// outputs the writer schema cannot hold (here categorize, which fills
/// `device_category`, is replaced by anomaly, which does not) is rejected
/// before it goes live, with the field named on `/reload`, `/stages` and in
/// the metrics; the old stage keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_hot_swap_whose_outputs_no_longer_fit_is_rejected() {
    let (broker, registry, client) = setup(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = dir.path().join("stage.wasm");
    std::fs::copy(pipeline_tests::plugin("categorize"), &stage).unwrap();
    let port = pipeline_tests::free_port();
    let admin = format!("127.0.0.1:{port}");
    let categorized = root().join("tests/schemas/categorized-login.avsc");
    let mut host = pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(&stage)
        .args(["--registry-url", &registry.url()])
        .args(["--input-format", "avro", "--output-format", "avro"])
        .arg("--output-schema")
        .arg(&categorized)
        .args(["--admin", &admin, "--watch", "false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    pipeline_tests::wait_admin(port);
    produce_framed(&broker, &registry, "in", 300, 31, &[]);
    wait_count(&client, "out", 300, Duration::from_secs(60)).await;
    std::fs::copy(pipeline_tests::plugin("anomaly"), &stage).unwrap();
    let (status, body) = pipeline_tests::reload(port);
    eprintln!("reload answer: {status} {body}");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("field $.device_category: expected string, found null"),
        "{body}"
    );
    let (_, stages) = pipeline_tests::http(port, "GET", "/stages");
    let stages: serde_json::Value = serde_json::from_str(&stages).unwrap();
    assert_eq!(
        stages["generation"], 1,
        "the old stages keep serving: {stages}"
    );
    assert!(
        stages["last_rejected_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("output's contract")),
        "{stages}"
    );
    let (_, metrics) = pipeline_tests::http(port, "GET", "/metrics");
    assert_eq!(
        pipeline_tests::metric(
            &metrics,
            "pipeline_stage_reloads_total{result=\"rejected\"}"
        ),
        Some(1.0)
    );
    produce_framed(&broker, &registry, "in", 300, 32, &[]);
    wait_count(&client, "out", 600, Duration::from_secs(60)).await;
    let out = consume_avro(&broker, &registry, "out", 600, false);
    assert_eq!(out["count"], 600);
    assert!(
        out["values"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["device_category"].is_string()),
        "every output still made by categorize"
    );
    assert_eq!(count(&client, "in-dlq").await, 0);
    pipeline_tests::sigterm(&host);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());
}

/// Avro schema resolution: events written with version 1 of the schema,
/// read with version 2 as the reader schema (`--input-reader-schema`),
/// reach the stages with version 2's new field at its default.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_schema_resolves_older_writers() {
    let (broker, registry, client) = setup(1).await;
    let android = produce_framed(&broker, &registry, "in", 200, 41, &[]);
    let v2 = schema("user-login-v2.avsc");
    let mut c = pipeline(&broker.bootstrap(), "in", "out");
    c.args(plugin_args(&["android_filter"]))
        .args(["--registry-url", &registry.url(), "--input-format", "avro"])
        .args(["--input-reader-schema", &v2]);
    run_to_end(c);
    let out = read_all(&client, "out").await;
    assert_eq!(out.len() as u64, android);
    for r in &out {
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_deref().unwrap()).unwrap();
        let members: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            members.last().map(|s| s.as_str()),
            Some("session_id"),
            "{v}"
        );
        assert!(v["session_id"].is_null(), "{v}");
    }
}
