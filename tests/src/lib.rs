//! Helpers shared by the end-to-end tests: a real broker per test (nisshi on
//! a free loopback port), the built `pipeline-host` binary and plugins, and
//! plain Kafka reads and writes through `rskafka`.
//!
//! Paths come from the environment that `tests/scripts/test.sh` sets
//! (`NISSHI_BIN`, `PIPELINE_HOST_BIN`, `PIPELINE_PYTHON`), with defaults in
//! the shared cache folder so `cargo test` alone works after one run of the
//! script.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};

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

/// The nisshi broker binary.
pub fn nisshi_bin() -> PathBuf {
    env_path(
        "NISSHI_BIN",
        cache().join("nisshi-0.8.1-dynostore-libsql/bin/nisshi"),
        "run tests/scripts/broker.sh install (or tests/scripts/test.sh)",
    )
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

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A nisshi broker, killed on drop: in-memory storage, or sqlite storage
/// in a folder (which survives a restart).
#[derive(Debug)]
pub struct Broker {
    child: Child,
    port: u16,
    data: Option<PathBuf>,
    extra: Vec<String>,
}

impl Broker {
    /// Starts a broker with in-memory storage on a free port and waits
    /// until it accepts connections.
    pub fn start() -> Self {
        Self::launch(free_port(), None, Vec::new())
    }

    /// Starts a broker with in-memory storage on `port`.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, None, Vec::new())
    }

    /// Starts a broker whose data lives in `dir` (sqlite), so that it can be
    /// stopped and restarted with its data.
    pub fn start_persistent(dir: &Path) -> Self {
        Self::launch(free_port(), Some(dir.to_path_buf()), Vec::new())
    }

    /// Starts a broker in `dir` (sqlite storage) that accepts only TLS
    /// connections, with a certificate for 127.0.0.1 signed by a fresh CA,
    /// and requires SCRAM authentication. `users` are `(name, password,
    /// mechanism)` with mechanism `scram256` or `scram512`. Returns the
    /// broker and the CA certificate's PEM file.
    pub fn start_secure(dir: &Path, users: &[(&str, &str, &str)]) -> (Self, PathBuf) {
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
        std::fs::write(dir.join("broker.pem"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("broker.key"), key.serialize_pem()).expect("write key");
        // `nisshi user create` talks plaintext without authenticating, so
        // users are made on a plain broker over the same sqlite file first.
        let port = free_port();
        let mut plain = Self::launch(port, Some(dir.to_path_buf()), Vec::new());
        for (name, password, mechanism) in users {
            let status = Command::new(nisshi_bin())
                .args(["user", "create", name, password, "--mechanism", mechanism])
                .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run nisshi user create");
            assert!(status.success(), "nisshi user create {name} failed");
        }
        plain.stop();
        let extra = [
            "--authentication",
            "--cert",
            "broker.pem",
            "--key",
            "broker.key",
        ];
        let broker = Self::launch(
            port,
            Some(dir.to_path_buf()),
            extra.iter().map(|s| s.to_string()).collect(),
        );
        (broker, ca_file)
    }

    fn launch(port: u16, data: Option<PathBuf>, extra: Vec<String>) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(nisshi_bin());
        cmd.arg("broker");
        match &data {
            Some(dir) => {
                cmd.current_dir(dir)
                    .args(["--storage-engine", "sqlite://data.db"]);
            }
            None => {
                cmd.args(["--storage-engine", &format!("memory://test-{port}/")]);
            }
        }
        let child = cmd
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nisshi");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nisshi did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            data,
            extra,
        }
    }

    /// Kills the broker (as `kill -9`).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::launch(self.port, self.data.clone(), self.extra.clone());
        *self = again;
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pipeline-host` command with quiet third-party logs.
pub fn host(args: &[&str]) -> Command {
    let mut c = Command::new(host_bin());
    c.args(args)
        .env("RUST_LOG", "info,rskafka=warn")
        .env_remove("PIPELINE_BOOTSTRAP");
    c
}

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
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .expect("create topic");
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
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.record
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic` (all partitions, up to their current end), or
/// nothing if the topic does not exist.
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
        let end = pc
            .get_offset(OffsetAt::Latest)
            .await
            .expect("latest offset");
        let mut offset = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest offset");
        while offset < end {
            let (records, _) = tokio::time::timeout(
                Duration::from_secs(10),
                pc.fetch_records(offset, 1..4_000_000, 500),
            )
            .await
            .expect("fetch timed out")
            .expect("fetch");
            for RecordAndOffset { record, offset: o } in records {
                if o >= offset {
                    offset = o + 1;
                    out.push(Read {
                        partition: p,
                        offset: o,
                        record,
                    });
                }
            }
        }
    }
    out
}

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
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\n{auth}content-length: 0\r\n\r\n"
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "admin endpoint did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
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
