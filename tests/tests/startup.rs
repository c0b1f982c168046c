//! Start-up checks of the `pipeline-host` binary against a real broker.

use pipeline_tests::{Broker, count, create_topic, host, pipeline, plugin, produce};

/// A stage that refuses its configuration stops the host before it
/// consumes anything: non-zero exit (3), a message naming the stage and the
/// problem, and no output or dead-letter topic written.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_stage_config_stops_the_host_before_consuming() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    produce(
        &client,
        "in",
        0,
        vec![(
            None,
            Some(br#"{"device_type":"android","locale":"RU"}"#.to_vec()),
        )],
    )
    .await;

    let out = pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(plugin("android_filter"))
        .arg("--plugin")
        .arg(plugin("anomaly"))
        .args(["--stage-config", "anomaly.suspicious_locales=,"])
        .output()
        .expect("run pipeline-host");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("stage anomaly refused its configuration"),
        "{log}"
    );
    assert!(log.contains("suspicious_locales"), "{log}");
    assert!(
        !log.contains("connected to Kafka"),
        "must stop before connecting: {log}"
    );
    assert_eq!(count(&client, "out").await, 0);
    assert_eq!(count(&client, "in-dlq").await, 0);
}

/// A plugin file that is not a component, or missing, is refused with the
/// stage name and path (exit 3); a bad flag is a usage error (exit 2).
#[test]
fn bad_plugins_and_flags_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let out = host(&[
        "--bootstrap",
        "127.0.0.1:1",
        "--input",
        "a",
        "--output",
        "b",
        "--plugin",
    ])
    .arg(&junk)
    .output()
    .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("stage junk: cannot load") && log.contains("junk.wasm"),
        "{log}"
    );

    let out = host(&[
        "--input",
        "a",
        "--output",
        "b",
        "--plugin",
        "/nonexistent/x.wasm",
    ])
    .output()
    .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("cannot read the file"), "{log}");

    let out = host(&["--input", "a", "--output", "a", "--plugin", "x.wasm"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pointed at a listener that accepts connections and never answers, the
/// host logs timeouts, keeps retrying within its connect bound, then exits
/// 4 saying the brokers are unreachable: it never hangs.
#[test]
fn a_silent_broker_gives_logged_timeouts_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let _accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn); // accept, never answer
        }
    });
    let started = std::time::Instant::now();
    let out = pipeline(&addr, "in", "out")
        .args(["--plugin"])
        .arg(plugin("categorize"))
        .args([
            "--request-timeout-ms",
            "500",
            "--connect-timeout-ms",
            "3000",
        ])
        .output()
        .expect("run");
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(
        log.contains("no answer within 500ms"),
        "a logged timeout: {log}"
    );
    assert!(
        log.matches("Kafka not reachable yet").count() >= 2,
        "retries: {log}"
    );
    assert!(log.contains("cannot reach the Kafka brokers"), "{log}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "bounded: took {took:?}"
    );
}

/// With topic creation off, a missing input topic is a clear error naming
/// the topic and the flag, exit 4.
#[test]
fn a_missing_topic_is_a_clear_error_when_creation_is_off() {
    let broker = Broker::start();
    let out = pipeline(&broker.bootstrap(), "nope", "out")
        .args(["--create-topics", "false"])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(
        log.contains("topic nope does not exist") && log.contains("--create-topics"),
        "{log}"
    );
}

/// Started before the broker, the host waits with a logged backoff and
/// runs once the broker is up.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_waits_for_a_broker_that_starts_later() {
    let port = pipeline_tests::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut pipeline = pipeline(&bootstrap, "in", "out")
        .arg("--plugin")
        .arg(plugin("categorize"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // The broker starts three seconds after the host.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let broker = Broker::start_on(port);
    let client = broker.client().await;
    let limit = std::time::Duration::from_secs(40);
    // The host creates its topics once connected.
    pipeline_tests::eventually_async(
        limit,
        "the host connects and creates its topics",
        || async {
            let topics = client.list_topics().await.map_err(|e| e.to_string())?;
            if topics.iter().any(|t| t.name == "in") {
                Ok(())
            } else {
                Err(format!(
                    "topics: {:?}",
                    topics.iter().map(|t| &t.name).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    produce(
        &client,
        "in",
        0,
        vec![(None, Some(br#"{"device_type":"ipad"}"#.to_vec()))],
    )
    .await;
    pipeline_tests::eventually_async(limit, "the event reaches the output", || async {
        match count(&client, "out").await {
            0 => Err("no output record".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    pipeline_tests::sigterm(&pipeline);
    assert!(pipeline_tests::wait_exit(&mut pipeline, std::time::Duration::from_secs(30)).success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut pipeline.stderr.take().expect("stderr"), &mut log)
        .expect("log");
    assert!(
        log.contains("Kafka not reachable yet") && log.contains("retry_in"),
        "logged backoff: {log}"
    );
    assert!(log.contains("connected to Kafka"), "{log}");
}

/// A side-output topic or the state topic that is missing is found at
/// start: with topic creation off, the host exits 4 naming it. The
/// previous host started, and retried the missing topic forever inside the
/// first delivery or commit that needed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_side_output_or_state_topic_is_found_at_start() {
    let broker = Broker::start();
    let client = broker.client().await;
    for topic in ["in", "out", "in-dlq"] {
        pipeline_tests::create_topic(&client, topic, 1).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap = "{}"
[input]
topic = "in"
[output]
topic = "out"
[topics]
create = false
[group]
id = "missing"
[[stage]]
plugin = "{}"
outputs = {{ counts = "counts" }}
"#,
            broker.bootstrap(),
            plugin("version_counts").display()
        ),
    )
    .expect("config");
    let run = || {
        let mut child = pipeline_tests::host(&["--config"])
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let status = pipeline_tests::wait_exit(&mut child, std::time::Duration::from_secs(60));
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)
            .expect("log");
        (status.code(), log)
    };
    let (code, log) = run();
    assert_eq!(code, Some(4), "{log}");
    assert!(log.contains("topic counts does not exist"), "{log}");
    pipeline_tests::create_topic(&client, "counts", 1).await;
    let (code, log) = run();
    assert_eq!(code, Some(4), "{log}");
    assert!(log.contains("topic in-state does not exist"), "{log}");
    eprintln!("missing side-output and state topics: exit 4 at start, each named");
}
