//! Helpers shared by the end-to-end tests: Apache Kafka itself ([`kafka`]:
//! one node shared by a test binary, or nodes and clusters of a test's own),
//! the built `pipeline-host` binary and plugins, and plain Kafka reads and
//! writes through `rskafka`.
//!
//! Paths come from the environment that `tests/scripts/test.sh` sets
//! (`KAFKA_LIBS`, `PIPELINE_HOST_BIN`, `PIPELINE_PYTHON`), with defaults in
//! the shared cache folder so `cargo test` alone works after one run of the
//! script.

pub mod kafka;
pub mod registry;

pub use kafka::{Kafka, Node, NodeOptions};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{EncodedRecords, Record, RecordAndOffset};

/// The repository's root folder.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared cache folder (`PIPELINE_CACHE`, default `~/.cache/wasm-pipeline`).
pub fn cache() -> PathBuf {
    std::env::var_os("PIPELINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into());
            home.join(".cache/wasm-pipeline")
        })
}

fn env_path(var: &str, default: PathBuf, hint: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found ({var}); {hint}",
        path.display()
    );
    path
}

/// The built `pipeline-host` binary.
pub fn host_bin() -> PathBuf {
    let default = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("target"))
        .join("release/pipeline-host");
    env_path(
        "PIPELINE_HOST_BIN",
        default,
        "run cargo build --release -p pipeline-host (or tests/scripts/test.sh)",
    )
}

/// A built plugin, e.g. `plugin("enrich")` or `plugin("fixtures/probe")`.
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} not found; run tests/scripts/build-plugins.sh",
        path.display()
    );
    path
}

/// Writes `dir/<name>.wat`: the hand-written component shell of
/// `plugins/fixtures/wat/shell.wat` with the body `<body>.wat` pasted in
/// (`{{version}}` replaced by `version`), and returns its path. The
/// pipeline loads the text file as it is.
pub fn wat_stage(dir: &Path, name: &str, body: &str, version: u8) -> PathBuf {
    let folder = root().join("plugins/fixtures/wat");
    let read = |f: &str| {
        std::fs::read_to_string(folder.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"))
    };
    let text = read("shell.wat").replace(
        "{{body}}",
        &read(&format!("{body}.wat")).replace("{{version}}", &version.to_string()),
    );
    let path = dir.join(format!("{name}.wat"));
    std::fs::write(&path, text).expect("write the .wat stage");
    path
}

/// A complete component of `plugins/fixtures/wat` (`wrong_exports`,
/// `unknown_import`).
pub fn wat_component(name: &str) -> PathBuf {
    root().join(format!("plugins/fixtures/wat/{name}.wat"))
}

/// `--plugin FILE` arguments for built stages, in order.
pub fn plugin_args(stages: &[&str]) -> Vec<String> {
    stages
        .iter()
        .flat_map(|s| ["--plugin".to_string(), plugin(s).display().to_string()])
        .collect()
}

/// Waits until `topic` holds at least `n` records, failing after `limit`.
pub async fn wait_count(client: &Client, topic: &str, n: i64, limit: Duration) {
    let start = Instant::now();
    while count(client, topic).await < n {
        assert!(
            start.elapsed() < limit,
            "{topic} did not reach {n} records within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Python with confluent-kafka installed.
pub fn python() -> PathBuf {
    env_path(
        "PIPELINE_PYTHON",
        cache().join("venv/bin/python"),
        "run tests/scripts/test.sh, which installs confluent-kafka",
    )
}

/// A free loopback port, never one this process handed out before.
///
/// The kernel may hand the same ephemeral port to two binds in a row once
/// the first listener is closed, so a broker could get one port for both its
/// client and controller listeners; the set of issued ports rules that out.
pub fn free_port() -> u16 {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !issued.contains(&port) {
            issued.push(port);
            return port;
        }
    }
}

/// The broker of a test: an Apache Kafka node (or a three-node cluster)
/// of its own, killed when the test ends.
#[derive(Debug)]
pub struct Broker {
    kafka: Kafka,
    admin_port: Option<u16>,
}

impl Broker {
    /// A Kafka node of its own on a free port.
    pub fn start() -> Self {
        Self::own(Kafka::single(NodeOptions::default()))
    }

    /// A Kafka node of its own with `options` (extra settings).
    pub fn start_with(options: NodeOptions) -> Self {
        Self::own(Kafka::single(options))
    }

    /// A Kafka node on `port`.
    pub fn start_on(port: u16) -> Self {
        Self::own(Kafka::single(NodeOptions {
            port: Some(port),
            ..Default::default()
        }))
    }

    /// A Kafka node whose data lives in `dir`, so that it can be
    /// stopped and restarted with its data.
    pub fn start_persistent(dir: &Path) -> Self {
        Self::own(Kafka::single_in(&dir.join("kafka"), NodeOptions::default()))
    }

    /// A three-node Kafka cluster (replication factor 3,
    /// `min.insync.replicas=2`).
    pub fn start_cluster() -> Self {
        Self::own(Kafka::cluster())
    }

    /// Wraps a Kafka started with options of the test's own.
    pub fn own(kafka: Kafka) -> Self {
        Self {
            kafka,
            admin_port: None,
        }
    }

    /// A Kafka node in `dir` whose client listener is SASL_SSL only, with a
    /// certificate for 127.0.0.1 signed by a fresh CA, offering PLAIN,
    /// SCRAM-SHA-256 and SCRAM-SHA-512, and the StandardAuthorizer with no
    /// ACLs (so a user may do nothing until granted). `users` are `(name,
    /// password, mechanism)` with mechanism `scram256`, `scram512` or
    /// `plain`; every user can also log in with PLAIN. The broker's own
    /// PLAINTEXT listener (inter-broker traffic and the Java admin tools, as
    /// super user `ANONYMOUS`) is [`Broker::admin_bootstrap`]. Every user is
    /// a super user. Returns the broker and the CA certificate's PEM file.
    pub fn start_secure(dir: &Path, users: &[(&str, &str, &str)]) -> (Self, PathBuf) {
        Self::start_secure_with(dir, users, &[])
    }

    /// Like [`Broker::start_secure`], but the users named in `restricted`
    /// are not super users: they may do only what ACLs grant them.
    pub fn start_secure_with(
        dir: &Path,
        users: &[(&str, &str, &str)],
        restricted: &[&str],
    ) -> (Self, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pipeline test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("broker key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("broker params");
        let cert = params.signed_by(&key, &ca).expect("broker cert");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        // Kafka's PEM key store: the private key (PKCS#8) and the chain.
        let keystore = dir.join("broker-keystore.pem");
        std::fs::write(
            &keystore,
            format!("{}{}{}", key.serialize_pem(), cert.pem(), ca.pem()),
        )
        .expect("write key store");
        let admin_port = free_port();
        let super_users = std::iter::once("ANONYMOUS")
            .chain(
                users
                    .iter()
                    .map(|u| u.0)
                    .filter(|u| !restricted.contains(u)),
            )
            .map(|u| format!("User:{u}"))
            .collect::<Vec<_>>()
            .join(";");
        let plain_users: String = users
            .iter()
            .map(|(name, password, _)| format!(" user_{name}=\"{password}\""))
            .collect();
        let scram = |m: &str| {
            format!(
                "listener.name.sasl_ssl.{m}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        };
        let properties = vec![
            format!("listeners=SASL_SSL://127.0.0.1:{{port}},PLAINTEXT://127.0.0.1:{admin_port},CONTROLLER://127.0.0.1:{{controller_port}}"),
            format!("advertised.listeners=SASL_SSL://127.0.0.1:{{port}},PLAINTEXT://127.0.0.1:{admin_port}"),
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into(),
            format!("listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"),
            scram("scram-sha-256"),
            scram("scram-sha-512"),
            "ssl.keystore.type=PEM".into(),
            format!("ssl.keystore.location={}", keystore.display()),
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
            // The PLAINTEXT listeners (inter-broker, controller, admin tools)
            // authenticate nobody: their principal is ANONYMOUS.
            format!("super.users={super_users}"),
            "allow.everyone.if.no.acl.found=false".into(),
        ];
        let mut format_args = Vec::new();
        for (name, password, mechanism) in users {
            let m = match *mechanism {
                "scram256" => "SCRAM-SHA-256",
                "scram512" => "SCRAM-SHA-512",
                "plain" => continue,
                other => panic!("unknown mechanism {other}"),
            };
            format_args.push("--add-scram".to_string());
            format_args.push(format!("{m}=[name={name},password={password}]"));
        }
        let kafka = Kafka::single_in(
            &dir.join("kafka"),
            NodeOptions {
                port: None,
                properties,
                format_args,
            },
        );
        let mut broker = Self::own(kafka);
        broker.admin_port = Some(admin_port);
        (broker, ca_file)
    }

    /// The Kafka behind this broker.
    pub fn kafka(&self) -> &Kafka {
        &self.kafka
    }

    /// The Kafka behind this broker, to kill or restart single nodes.
    pub fn kafka_mut(&mut self) -> &mut Kafka {
        &mut self.kafka
    }

    /// Kills every node (as `kill -9`).
    pub fn stop(&mut self) {
        for n in &mut self.kafka.nodes {
            n.kill();
        }
    }

    /// Starts every node again with its data.
    pub fn restart(&mut self) {
        let kafka = &mut self.kafka;
        for n in &mut kafka.nodes {
            n.kill();
        }
        // Nodes of a cluster wait for each other's quorum.
        std::thread::scope(|s| {
            for n in &mut kafka.nodes {
                s.spawn(move || n.restart());
            }
        });
    }

    /// The first node's `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        self.kafka().bootstrap()
    }

    /// The PLAINTEXT listener of a secure broker, for admin work as super user.
    pub fn admin_bootstrap(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.admin_port.expect("not a secure broker")
        )
    }

    /// A plain Kafka client for this broker.
    pub async fn client(&self) -> Client {
        tokio::time::timeout(
            Duration::from_secs(10),
            ClientBuilder::new(vec![self.bootstrap()]).build(),
        )
        .await
        .expect("client build timed out")
        .expect("client build")
    }
}

/// A `pipeline-host` command with quiet third-party logs
/// (`PIPELINE_TEST_RUST_LOG` sets another filter, to look into a failure).
pub fn host(args: &[&str]) -> Command {
    let mut c = Command::new(host_bin());
    let filter =
        std::env::var("PIPELINE_TEST_RUST_LOG").unwrap_or_else(|_| "info,rskafka=warn".into());
    c.args(args)
        .env("RUST_LOG", filter)
        .env_remove("PIPELINE_BOOTSTRAP");
    c
}

/// The group protocol the pipeline-host processes of a test run speak
/// unless a test names one: `PIPELINE_GROUP_PROTOCOL` (which they read
/// too; test.sh runs the group suites again under `classic`), else what
/// the default `auto` picks: `consumer` on Kafka 4, `classic` on 3.9.
pub fn group_protocol() -> &'static str {
    match std::env::var("PIPELINE_GROUP_PROTOCOL").as_deref() {
        Ok("classic") => "classic",
        Ok("consumer") => "consumer",
        _ if kafka::version().starts_with("3.") => "classic",
        _ => "consumer",
    }
}

/// `flags` when the tests' members speak the classic protocol
/// ([`group_protocol`]), else none: settings the broker owns under the
/// consumer protocol (and that `auto` would take for a wish for classic).
pub fn classic_only<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    if group_protocol() == "classic" {
        flags.to_vec()
    } else {
        Vec::new()
    }
}

/// The timers every test broker gives consumer-protocol members
/// (tests/kafka/server.properties: a 6 s session, 500 ms heartbeats), as
/// flags for classic members ([`classic_only`]).
pub fn group_timers() -> Vec<&'static str> {
    classic_only(&CLASSIC_TIMERS)
}

/// [`group_timers`] for a member started with `flags`: those of the
/// protocol they name with `--group-protocol`, else of the run's.
pub fn group_timers_for(flags: &[&str]) -> Vec<&'static str> {
    match flags.windows(2).find(|w| w[0] == "--group-protocol") {
        Some(w) if w[1] == "classic" => CLASSIC_TIMERS.to_vec(),
        Some(_) => Vec::new(),
        None => group_timers(),
    }
}

const CLASSIC_TIMERS: [&str; 4] = [
    "--session-timeout-ms",
    "6000",
    "--heartbeat-interval-ms",
    "500",
];

/// `pipeline-host` running `input` -> `output` on `bootstrap`; add stages
/// and flags with `.args(..)`.
pub fn pipeline(bootstrap: &str, input: &str, output: &str) -> Command {
    host(&[
        "--bootstrap",
        bootstrap,
        "--input",
        input,
        "--output",
        output,
    ])
}

/// Runs the pipeline from `input` to `output` through the one stage
/// `stage` with `--until-end`, and fails unless it ends well within a
/// minute.
pub fn run_stage_to_end(bootstrap: &str, input: &str, output: &str, stage: &Path) {
    let mut run = pipeline(bootstrap, input, output)
        .arg("--plugin")
        .arg(stage)
        .arg("--until-end")
        .stderr(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    assert!(
        wait_exit(&mut run, Duration::from_secs(60)).success(),
        "the run from {input} to {output} reaches the end"
    );
}

/// Runs `pipeline-host generate` into `topic` with `args` and waits for it.
pub fn generate(bootstrap: &str, topic: &str, args: &[&str]) {
    let status = host(&["generate", "--bootstrap", bootstrap, "--topic", topic])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pipeline-host generate");
    assert!(status.success(), "generate failed");
}

/// A fresh broker with `topic` created with `partitions` partitions:
/// `(broker, bootstrap address, client)`.
pub async fn broker_with_topic(topic: &str, partitions: i32) -> (Broker, String, Client) {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let client = broker.client().await;
    create_topic(&client, topic, partitions).await;
    (broker, bootstrap, client)
}

/// Runs `pipeline-host --config <config> --until-end <extra..>` to its
/// end: `(exit status, log)`.
pub fn run_until_end(config: &Path, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let run = host(&["--config"])
        .arg(config)
        .arg("--until-end")
        .args(extra)
        .output()
        .expect("run pipeline-host");
    (
        run.status,
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(client: &Client, topic: &str, partitions: i32) {
    client
        .controller_client()
        .expect("controller")
        .create_topic(topic, partitions, -1, 10_000)
        .await
        .expect("create topic");
    // The controller answers before every broker's metadata has the
    // topic: a pipeline started right after could find it missing.
    let start = Instant::now();
    loop {
        let topics = client.list_topics().await.expect("list topics");
        if topics
            .iter()
            .any(|t| t.name == topic && t.partitions.len() == partitions as usize)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{topic} not in metadata"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A record as read back, with its partition.
#[derive(Debug, Clone)]
pub struct Read {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record.
    pub record: Record,
}

impl Read {
    /// The input record an output or dead-letter record came from: its
    /// `pipeline.source.partition` / `pipeline.source.offset` headers.
    pub fn source(&self) -> (i32, i64) {
        let header = |name: &str| {
            self.header(name)
                .unwrap_or_else(|| panic!("no {name} header on {self:?}"))
        };
        (
            header("pipeline.source.partition")
                .parse()
                .expect("source partition"),
            header("pipeline.source.offset")
                .parse()
                .expect("source offset"),
        )
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.record
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic` that a `read_committed` reader finds up to the
/// high watermark at the call (all partitions), or nothing if the topic
/// does not exist. A transaction still open below that mark (a killed
/// exactly-once member's, until the coordinator aborts it after its
/// timeout) holds the last stable offset back: the read waits for it to
/// end, up to [`STABLE_WITHIN`], rather than stop at the last stable offset
/// and miss what follows it.
pub async fn read_all(client: &Client, topic: &str) -> Vec<Read> {
    let topics = client.list_topics().await.expect("list topics");
    let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in t.partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest offset");
        let deadline = Instant::now() + STABLE_WITHIN;
        let mut end = None;
        // Read read_committed: records of aborted transactions are left
        // out, and the position moves past them and past markers.
        loop {
            let batch = tokio::time::timeout(
                Duration::from_secs(10),
                pc.fetch_batch(offset, 1..4_000_000, 0),
            )
            .await
            .expect("fetch timed out")
            .expect("fetch");
            let end = *end.get_or_insert(batch.high_watermark);
            for RecordAndOffset { record, offset: o } in batch.records {
                if o >= offset {
                    out.push(Read {
                        partition: p,
                        offset: o,
                        record,
                    });
                }
            }
            let moved = batch.next_offset > offset;
            offset = offset.max(batch.next_offset);
            if offset >= end {
                break;
            }
            if !moved {
                assert!(
                    Instant::now() < deadline,
                    "{topic}/{p}: a transaction open for {STABLE_WITHIN:?} holds the last stable offset at {:?}, below the high watermark {end}",
                    batch.last_stable_offset
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    out
}

/// How long [`read_all`] waits for open transactions to end: a transaction
/// timeout of the tests (10 s) plus the coordinator's check for timed-out
/// transactions (every 10 s by default), with room.
pub const STABLE_WITHIN: Duration = Duration::from_secs(60);

/// Number of records in `topic` (sum of partition end offsets), 0 if absent.
pub async fn count(client: &Client, topic: &str) -> i64 {
    let topics = client.list_topics().await.expect("list topics");
    let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
        return 0;
    };
    let mut n = 0;
    for p in t.partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        n += pc
            .get_offset(OffsetAt::Latest)
            .await
            .expect("latest offset");
    }
    n
}

/// Produces `batch` (records already encoded, headers and timestamps as
/// given) to one partition, as one record batch.
pub async fn produce_batch(client: &Client, topic: &str, partition: i32, batch: EncodedRecords) {
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client")
        .produce_encoded(std::sync::Arc::new(batch), Compression::NoCompression)
        .await
        .unwrap_or_else(|e| panic!("Kafka refused a batch for {topic}/{partition}: {e}"));
}

/// A key and a value, either possibly null.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `records` (key, value) to one partition.
pub async fn produce(client: &Client, topic: &str, partition: i32, records: Vec<KeyValue>) {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let records = records
        .into_iter()
        .map(|(key, value)| Record {
            key,
            value,
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    pc.produce(records, Compression::NoCompression)
        .await
        .expect("produce");
}

/// Calls `check` every 100 ms until it returns `Some`, and returns that; if
/// `limit` passes first, fails the test with `what` and the last `Err`
/// `check` gave (what was seen instead).
pub fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// [`eventually`] for async tests: awaits `check` every 100 ms (sleeping
/// on the runtime, never blocking its thread).
pub async fn eventually_async<T, F>(limit: Duration, what: &str, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits for `child` to exit within `limit`, killing it otherwise.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary folder for a test's logs; kept (its path printed) when
/// `PIPELINE_KEEP_TEST_LOGS` is set, to read what a failed run left.
pub fn log_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("tempdir");
    keep_if_asked(&mut dir, "logs");
    dir
}

/// Keeps `dir` after the test (and prints where, naming `what` it holds)
/// when `PIPELINE_KEEP_TEST_LOGS` is set.
pub(crate) fn keep_if_asked(dir: &mut tempfile::TempDir, what: &str) {
    if std::env::var_os("PIPELINE_KEEP_TEST_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("{what} kept in {}", dir.path().display());
    }
}

/// A log file for a child's stderr (a pipe nobody reads could fill up and
/// block the child): `(path, file)`.
pub fn log_file(dir: &Path, name: &str) -> (PathBuf, std::fs::File) {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).expect("create log file");
    (path, file)
}

/// Sends one HTTP request to the admin endpoint; returns (status, body).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    http_auth(port, method, path, None)
}

/// Like [`http`], with `Authorization: Bearer <token>` when given.
pub fn http_auth(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| ("authorization", format!("Bearer {t}")));
    let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_with(port, method, path, &headers)
}

/// `POST /reload` as an operator's tool sends it: with the header
/// `X-Pipeline-Reload: 1` that a browser page cannot send cross-origin.
pub fn reload(port: u16) -> (u16, String) {
    http_with(port, "POST", "/reload", &[("x-pipeline-reload", "1")])
}

/// An HTTP/1.1 request to the admin endpoint with `headers`; `(status,
/// body)`.
pub fn http_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{extra}content-length: 0\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits until the admin endpoint answers.
pub fn wait_admin(port: u16) {
    eventually(
        Duration::from_secs(30),
        "the admin endpoint answers",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        },
    );
}

/// Starts `pipeline-host --config <config> <extra..>` in the background,
/// its log going to `<dir>/<name>.log`: `(child, log path)`.
pub fn spawn_pipeline(config: &Path, extra: &[&str], dir: &Path, name: &str) -> (Child, PathBuf) {
    let (log_path, log_out) = log_file(dir, name);
    let child = host(&["--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_out)
        .spawn()
        .expect("start pipeline-host");
    (child, log_path)
}

/// The value of the Prometheus line `name` (labels included) in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `pipeline-host audit --json` of `in` -> `out` on `bootstrap` with the
/// stages `plugins` (`--plugin FILE` arguments): (exit code, report).
pub fn audit(bootstrap: &str, plugins: &[String]) -> (Option<i32>, String) {
    let out = host(&[
        "audit",
        "--json",
        "--bootstrap",
        bootstrap,
        "--input",
        "in",
        "--output",
        "out",
    ])
    .args(plugins)
    .output()
    .expect("audit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The totals of an audit report (`audit --json`): inputs, delivered,
/// filtered, missing, duplicates.
pub fn audit_totals(report: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(report)
        .unwrap_or_else(|e| panic!("the audit report is not JSON ({e}):\n{report}"));
    ["inputs", "delivered", "filtered", "missing", "duplicates"]
        .iter()
        .map(|k| {
            v["total"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("no total {k} in the audit:\n{report}"))
        })
        .collect()
}

/// Runs `tests/python/<script>` with `args` and parses the one JSON line it
/// prints, failing with its stderr if it fails.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// Creates `topic` on a three-node cluster with `partitions` partitions
/// whose preferred leader (first replica) is node `leader`, with Kafka's
/// own `kafka-topics`.
pub fn create_led_by(bootstrap: &str, topic: &str, partitions: usize, leader: i32) {
    let others: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    let replicas = format!("{leader}:{}:{}", others[0], others[1]);
    let assignment = vec![replicas.as_str(); partitions].join(",");
    let (ok, out, err) = kafka::tool(
        "topics",
        &[
            "--bootstrap-server",
            bootstrap,
            "--create",
            "--topic",
            topic,
            "--replica-assignment",
            &assignment,
        ],
    );
    assert!(ok, "create {topic}: {out}{err}");
}

/// The kill -9 points of a crash test: pseudo-random (the same on every
/// run), each 2,000 to 8,000 new records of the watched topic after the
/// process under test started.
#[derive(Debug)]
pub struct Crashes {
    rng: u64,
}

impl Default for Crashes {
    fn default() -> Self {
        Self {
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }
}

impl Crashes {
    /// The next pseudo-random number of records (2,000 to 7,999) to wait
    /// for before a kill.
    pub fn next_grow(&mut self) -> i64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        2_000 + (self.rng % 6_000) as i64
    }

    /// Waits until `topic` holds the next pseudo-random number of records
    /// past `before` (within 120 s: on a loaded machine a round that
    /// lost a partition leader and coordinator has taken over 60 s), then
    /// kills `child` with SIGKILL and reaps it. Returns how many records
    /// past `before` it waited for.
    pub async fn kill_after(
        &mut self,
        client: &Client,
        topic: &str,
        before: i64,
        child: &mut Child,
    ) -> i64 {
        let grow = self.next_grow();
        wait_count(client, topic, before + grow, Duration::from_secs(120)).await;
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        grow
    }
}
