//! TLS and SASL against Apache Kafka: a SASL_SSL listener with a
//! certificate signed by a CA made here (rcgen), PLAIN, SCRAM-SHA-256 and
//! SCRAM-SHA-512, and the StandardAuthorizer.
//!
//! - End to end over SASL_SSL: the generator (SCRAM-SHA-256, flags) fills
//!   the input, the pipeline (SCRAM-SHA-512, config file) runs the default
//!   stages in a consumer group, so data and coordinator connections are
//!   both secured; `group describe` (PLAIN) reads the commits back and a
//!   PLAIN client reads the output.
//! - A wrong password or an untrusted certificate: a clear error, a non-zero
//!   exit within seconds, and nothing consumed.
//! - ACLs: a principal without READ on the input or the group, or without
//!   WRITE on the output or dead-letter topic, gets one line naming the
//!   operation and the resource, exit code 8, and nothing is consumed or
//!   committed; with every grant the same run succeeds.
//! - PLAIN at the protocol level against a scripted broker: the exact
//!   RFC 4616 message and both answers.
//!
//! No secret may appear in any log, at debug level.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use pipeline_host::kafka::security::{self, SaslMechanism, SaslOptions, TlsOptions};
use pipeline_host::kafka::transport::{ConnectError, Transport};
use pipeline_host::secret::Secret;
use pipeline_tests::kafka::tool;
use pipeline_tests::{Broker, count, eventually_async, host, plugin_args, read_all};
use rskafka::client::{Client, ClientBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: (&str, &str) = ("alice", "alice-Pw-7c1e");
const BOB: (&str, &str) = ("bob", "bob-Pw-91d4");
const CAROL: (&str, &str) = ("carol", "carol-Pw-3e8a");
const EVENTS: u64 = 6_000;

/// A client authenticated as `user` with the password in `pw_file`.
async fn secure_client(
    bootstrap: &str,
    ca: &Path,
    mechanism: SaslMechanism,
    user: &str,
    pw_file: &Path,
) -> Client {
    let transport = security::transport(
        Some(&TlsOptions {
            ca_file: Some(ca.to_path_buf()),
            ..Default::default()
        }),
        Some(&SaslOptions {
            mechanism: Some(mechanism),
            username: Some(user.into()),
            password_file: Some(pw_file.to_path_buf()),
            ..Default::default()
        }),
    )
    .expect("transport");
    tokio::time::timeout(
        Duration::from_secs(20),
        transport
            .configure(ClientBuilder::new(vec![bootstrap.to_owned()]))
            .build(),
    )
    .await
    .expect("secure client build timed out")
    .expect("secure client build")
}

/// A client authenticated as alice (SCRAM-SHA-256), trusting `ca`.
async fn alice_client(dir: &Path, bootstrap: &str, ca: &Path) -> Client {
    let pw = write(dir, "alice.pw", ALICE.1);
    secure_client(bootstrap, ca, SaslMechanism::ScramSha256, ALICE.0, &pw).await
}

/// The flags for alice over TLS trusting `ca` (the password goes in the
/// environment).
fn alice_flags(ca: &str) -> [&str; 6] {
    [
        "--tls-ca-file",
        ca,
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--sasl-username",
        ALICE.0,
    ]
}

/// `pipeline-host` with debug logs, so the no-secret check sees everything.
fn host_debug(args: &[&str]) -> Command {
    let mut c = host(args);
    c.env("RUST_LOG", "debug")
        .env_remove("PIPELINE_SASL_PASSWORD");
    c
}

fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_secret(log: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!log.contains(s), "a password appears in the log:\n{log}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_scram_end_to_end_on_data_and_coordinator_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = Broker::start_secure(
        dir.path(),
        &[(ALICE.0, ALICE.1, "scram256"), (BOB.0, BOB.1, "scram512")],
    );
    let bootstrap = broker.bootstrap();
    let ca_s = ca.to_str().unwrap();
    let bob_pw = write(dir.path(), "bob.pw", &format!("{}\n", BOB.1));

    // The generator: flags, SCRAM-SHA-256, password from the environment.
    let gen_out = host_debug(&[
        "generate",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "events",
        "--partitions",
        "3",
    ])
    .args(alice_flags(ca_s))
    .args(["--count", &EVENTS.to_string()])
    .env("PIPELINE_SASL_PASSWORD", ALICE.1)
    .output()
    .expect("run generate");
    let gen_log = log_of(&gen_out);
    assert!(gen_out.status.success(), "generate failed:\n{gen_log}");
    assert_no_secret(&gen_log, &[ALICE.1]);

    // The pipeline: config file, SCRAM-SHA-512, password from a file, in a
    // group (the coordinator connection is ours, not rskafka's).
    let config = write(
        dir.path(),
        "pipeline.toml",
        &format!(
            "[kafka]\nbootstrap = \"{bootstrap}\"\n\n[kafka.tls]\nca_file = \"{ca_s}\"\n\n\
             [kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_file = \"{}\"\n\n\
             [input]\ntopic = \"events\"\n\n[output]\ntopic = \"processed\"\n",
            BOB.0,
            bob_pw.display()
        ),
    );
    let mut args = vec!["--config".to_string(), config.display().to_string()];
    args.extend(["--until-end", "--group", "secure-g"].map(String::from));
    args.extend(plugin_args(&[
        "android_filter",
        "enrich",
        "categorize",
        "anomaly",
    ]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let run = host_debug(&args).output().expect("run pipeline");
    let run_log = log_of(&run);
    assert!(run.status.success(), "pipeline failed:\n{run_log}");
    assert_no_secret(&run_log, &[ALICE.1, BOB.1]);
    eprintln!("pipeline over TLS + SCRAM-SHA-512: {:?}", started.elapsed());

    // Read back over TLS + PLAIN with an rskafka client and check the
    // output against the input: every Android event, nothing else.
    let alice_pw = write(dir.path(), "alice-plain.pw", ALICE.1);
    let client = secure_client(&bootstrap, &ca, SaslMechanism::Plain, ALICE.0, &alice_pw).await;
    let input = read_all(&client, "events").await;
    assert_eq!(input.len() as u64, EVENTS);
    let android = input
        .iter()
        .filter(|r| {
            let v: serde_json::Value =
                serde_json::from_slice(r.record.value.as_deref().unwrap()).unwrap();
            v["device_type"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case("android"))
        })
        .count() as i64;
    assert!(android > 0);
    assert_eq!(
        count(&client, "processed").await,
        android,
        "output = Android events"
    );
    assert_eq!(count(&client, "events-dlq").await, 0);

    // The commits, read back through the coordinator over TLS + SCRAM.
    let describe = host_debug(&[
        "group",
        "describe",
        "--bootstrap",
        &bootstrap,
        "--group",
        "secure-g",
        "--topic",
        "events",
        "--tls-ca-file",
        ca_s,
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        BOB.0,
        "--sasl-password-file",
        bob_pw.to_str().unwrap(),
    ])
    .output()
    .expect("run group describe");
    let table = String::from_utf8_lossy(&describe.stdout).into_owned();
    assert!(
        describe.status.success(),
        "group describe failed:\n{}",
        log_of(&describe)
    );
    assert!(table.contains("total lag 0\n"), "{table}");
    assert_no_secret(&log_of(&describe), &[BOB.1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_or_untrusted_certificate_is_refused_and_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = Broker::start_secure(dir.path(), &[(ALICE.0, ALICE.1, "scram256")]);
    let bootstrap = broker.bootstrap();
    let ca_s = ca.to_str().unwrap();
    let client = alice_client(dir.path(), &bootstrap, &ca).await;
    pipeline_tests::create_topic(&client, "events", 2).await;
    produce_events(&client).await;

    let wrong = "not-the-Pw-5a3b";
    let base = [
        "--bootstrap",
        &bootstrap,
        "--input",
        "events",
        "--output",
        "processed",
        "--group",
        "g",
        "--until-end",
        "--connect-timeout-ms",
        "60000",
    ];
    let cases: [(&str, Vec<&str>, Option<&str>); 2] = [
        (
            "SASL SCRAM-SHA-256 authentication as alice",
            alice_flags(ca_s).to_vec(),
            Some(wrong),
        ),
        // The Mozilla roots do not include the test CA.
        (
            "TLS handshake with",
            vec![
                "--tls",
                "--sasl-mechanism",
                "SCRAM-SHA-256",
                "--sasl-username",
                ALICE.0,
            ],
            Some(ALICE.1),
        ),
    ];
    for (expected, flags, password) in cases {
        let started = Instant::now();
        let mut cmd = host_debug(&base);
        cmd.args(&flags).args(plugin_args(&["android_filter"]));
        if let Some(p) = password {
            cmd.env("PIPELINE_SASL_PASSWORD", p);
        }
        let out = cmd.output().expect("run pipeline");
        let log = log_of(&out);
        assert_eq!(out.status.code(), Some(7), "exit 7 (refused):\n{log}");
        assert!(log.contains(expected), "expected {expected:?} in:\n{log}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a refusal is not retried until the connect timeout: {:?}",
            started.elapsed()
        );
        assert_no_secret(&log, &[wrong, ALICE.1]);
        eprintln!(
            "refused as expected in {:?}: {}",
            started.elapsed(),
            log.lines().find(|l| l.contains(expected)).unwrap_or("")
        );
    }

    // Nothing consumed: no output topic, and the group's first good run
    // starts from the beginning and delivers all 100 events.
    assert_eq!(count(&client, "processed").await, 0);
    let out = host(&base)
        .args(alice_flags(ca_s))
        .args(plugin_args(&["android_filter"]))
        .env("PIPELINE_SASL_PASSWORD", ALICE.1)
        .output()
        .expect("run pipeline");
    assert!(out.status.success(), "good run failed:\n{}", log_of(&out));
    assert_eq!(count(&client, "processed").await, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_denials_name_the_operation_and_resource_and_consume_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) =
        Broker::start_secure_with(dir.path(), &[(CAROL.0, CAROL.1, "scram256")], &[CAROL.0]);
    let (bootstrap, admin) = (broker.bootstrap(), broker.admin_bootstrap());
    let ca_s = ca.to_str().unwrap();
    // The admin (the PLAINTEXT listener's super user) makes the topics and
    // the input.
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        ClientBuilder::new(vec![admin.clone()]).build(),
    )
    .await
    .expect("admin client timed out")
    .expect("admin client");
    for t in ["events", "processed", "events-dlq"] {
        pipeline_tests::create_topic(&client, t, 2).await;
    }
    produce_events(&client).await;
    let run = || {
        host_debug(&[])
            .args(run_args(&bootstrap, ca_s))
            .args(plugin_args(&["categorize"]))
            .env("PIPELINE_SASL_PASSWORD", CAROL.1)
            .output()
            .expect("run pipeline")
    };
    let grant = |args: &[&str]| {
        let mut all = vec![
            "--bootstrap-server",
            admin.as_str(),
            "--add",
            "--allow-principal",
            "User:carol",
        ];
        all.extend_from_slice(args);
        let (ok, out, err) = tool("acls", &all);
        assert!(ok, "kafka-acls {args:?}: {out}{err}");
    };
    let committed_nothing = || {
        let out = host(&["group", "describe", "--bootstrap", &admin])
            .args(["--group", "carol-g", "--topic", "events"])
            .output()
            .expect("group describe");
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("events ")).collect();
        assert_eq!(rows.len(), 2, "{table}{}", log_of(&out));
        assert!(
            rows.iter()
                .all(|r| r.split_whitespace().nth(2) == Some("-")),
            "nothing committed: {table}"
        );
    };
    let steps: [(&str, &[&str]); 4] = [
        (
            "READ topic events",
            &["--operation", "READ", "--topic", "events"],
        ),
        (
            "WRITE topic processed",
            &["--operation", "WRITE", "--topic", "processed"],
        ),
        (
            "WRITE topic events-dlq",
            &["--operation", "WRITE", "--topic", "events-dlq"],
        ),
        (
            "READ group carol-g",
            &["--operation", "READ", "--group", "carol-g"],
        ),
    ];
    for (missing, acl) in steps {
        let started = Instant::now();
        let out = run();
        let log = log_of(&out);
        assert_eq!(
            out.status.code(),
            Some(8),
            "exit 8 (denied) without {missing}:
{log}"
        );
        let line = format!("User:carol is not authorized to {missing}");
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
        assert!(
            !hits.is_empty(),
            "expected {line:?} in:
{log}"
        );
        eprintln!("denied in {:?}: {}", started.elapsed(), hits[0]);
        assert_no_secret(&log, &[CAROL.1]);
        assert_eq!(count(&client, "processed").await, 0, "nothing produced");
        committed_nothing();
        grant(acl);
    }
    let out = run();
    assert!(
        out.status.success(),
        "with every grant:
{}",
        log_of(&out)
    );
    assert_eq!(count(&client, "processed").await, 100);

    // Exactly-once needs WRITE on the transactional id too: a dynamic
    // member's id is `<group>-<pid>-<start time>`, so the grant is a prefix.
    produce_events(&client).await;
    let exactly_once = || {
        host_debug(&[])
            .args(run_args(&bootstrap, ca_s))
            .args(["--guarantee", "exactly-once"])
            .args(plugin_args(&["categorize"]))
            .env("PIPELINE_SASL_PASSWORD", CAROL.1)
            .output()
            .expect("run pipeline")
    };
    let out = exactly_once();
    let log = log_of(&out);
    assert_eq!(
        out.status.code(),
        Some(8),
        "exit 8 without the transactional id:\n{log}"
    );
    let line = "User:carol is not authorized to WRITE transactional-id carol-g-";
    assert!(log.contains(line), "expected {line:?} in:\n{log}");
    assert_no_secret(&log, &[CAROL.1]);
    let processed = read_all(&client, "processed").await;
    assert_eq!(processed.len(), 100, "nothing more produced");
    grant(&[
        "--operation",
        "WRITE",
        "--transactional-id",
        "carol-g",
        "--resource-pattern-type",
        "prefixed",
    ]);
    let out = exactly_once();
    let log = log_of(&out);
    assert!(
        out.status.success(),
        "with the transactional id granted:\n{log}"
    );
    // The commit markers are written after EndTxn returns.
    eventually_async(
        Duration::from_secs(10),
        "the second 100, read_committed",
        || async {
            match read_all(&client, "processed").await.len() {
                200 => Ok(()),
                n => Err(format!("{n} records; the run's log:\n{log}")),
            }
        },
    )
    .await;
}

/// Carol's flags for a run from `events` to `processed` in group `carol-g`.
fn run_args(bootstrap: &str, ca: &str) -> Vec<String> {
    [
        "--bootstrap",
        bootstrap,
        "--input",
        "events",
        "--output",
        "processed",
        "--group",
        "carol-g",
        "--until-end",
        "--tls-ca-file",
        ca,
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--sasl-username",
        CAROL.0,
    ]
    .map(String::from)
    .to_vec()
}

/// 100 Android events into `events` (two partitions, 50 each).
async fn produce_events(client: &Client) {
    let value = br#"{"user_id":"u","app_version":"2.3.0","device_type":"android","ip":"1.2.3.4","locale":"US","device_id":"d","timestamp":"1700000000"}"#;
    for p in 0..2 {
        pipeline_tests::produce(client, "events", p, vec![(None, Some(value.to_vec())); 50]).await;
    }
}

/// Reads one request frame: (api key, version, correlation id, body).
async fn read_request(s: &mut tokio::net::TcpStream) -> (i16, i16, i32, bytes::Bytes) {
    let len = s.read_i32().await.expect("length");
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.expect("frame");
    let mut b = bytes::Bytes::from(buf);
    let key = i16::from_be_bytes([b[0], b[1]]);
    let version = i16::from_be_bytes([b[2], b[3]]);
    let header_version = match key {
        17 => SaslHandshakeRequest::header_version(version),
        36 => SaslAuthenticateRequest::header_version(version),
        other => panic!("unexpected api key {other}"),
    };
    let header = RequestHeader::decode(&mut b, header_version).expect("header");
    (key, version, header.correlation_id, b)
}

async fn respond<R: Encodable + HeaderVersion>(
    s: &mut tokio::net::TcpStream,
    correlation: i32,
    version: i16,
    body: R,
) {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut buf, R::header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).await.unwrap();
}

/// A broker that offers only PLAIN and accepts `alice` / `open-sesame`;
/// returns what each client sent in SaslAuthenticate.
async fn plain_broker(listener: tokio::net::TcpListener, clients: usize) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    for _ in 0..clients {
        let (mut s, _) = listener.accept().await.unwrap();
        let (key, version, corr, mut body) = read_request(&mut s).await;
        assert_eq!(key, 17, "SaslHandshake first");
        let hs = SaslHandshakeRequest::decode(&mut body, version).unwrap();
        assert_eq!(hs.mechanism.as_str(), "PLAIN");
        respond(
            &mut s,
            corr,
            version,
            SaslHandshakeResponse::default()
                .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]),
        )
        .await;
        let (key, version, corr, mut body) = read_request(&mut s).await;
        assert_eq!(key, 36, "then SaslAuthenticate");
        let auth = SaslAuthenticateRequest::decode(&mut body, version).unwrap();
        assert!(!body.has_remaining());
        let ok = auth.auth_bytes.as_ref() == b"\0alice\0open-sesame";
        seen.push(auth.auth_bytes.to_vec());
        let resp = if ok {
            SaslAuthenticateResponse::default()
        } else {
            SaslAuthenticateResponse::default()
                .with_error_code(58)
                .with_error_message(Some(StrBytes::from_static_str(
                    "Authentication failed: invalid credentials",
                )))
        };
        respond(&mut s, corr, version, resp).await;
    }
    seen
}

#[tokio::test]
async fn plain_exchange_at_the_protocol_level() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(plain_broker(listener, 2));
    let with = |password: &str| Transport {
        sasl: Some(security::SaslCredentials {
            mechanism: SaslMechanism::Plain,
            username: "alice".into(),
            password: Secret::new(password),
        }),
        ..Transport::plain()
    };
    with("open-sesame")
        .connect(&addr, "test")
        .await
        .expect("PLAIN with the right password");
    let err = with("wrong")
        .connect(&addr, "test")
        .await
        .expect_err("PLAIN with a wrong password");
    assert!(
        matches!(err, ConnectError::Auth { .. }) && err.is_fatal(),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("SASL PLAIN authentication as alice")
            && msg.contains("error code 58: Authentication failed")
            && !msg.contains("wrong"),
        "{msg}"
    );
    let seen = server.await.unwrap();
    assert_eq!(
        seen,
        vec![b"\0alice\0open-sesame".to_vec(), b"\0alice\0wrong".to_vec()]
    );
}
