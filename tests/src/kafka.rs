//! Apache Kafka for the tests: KRaft nodes (each broker + controller) run
//! from the jars `tests/scripts/kafka.sh install` resolved from Maven
//! Central.
//!
//! The script owns the settings (`tests/kafka/server.properties` plus what
//! `kafka.sh configure` adds per node) and the readiness check; this module
//! picks ports, starts `kafka.sh run` per node and keeps its standard input:
//! when the test process ends, however it ends, the pipe closes and the
//! script kills its broker.
//!
//! Every test gets a node (or a cluster) of its own, so no test sees
//! another's topics, groups or broker faults. Formatting a node's storage
//! is a JVM start of its own (seconds), so a test binary formats one
//! single-node folder once and copies it for each further node; a node's
//! start then costs only the broker's own start-up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use crate::{cache, free_port, root};

/// How long a node may take from `kafka.sh run` to serving clients.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// The script that installs, configures and runs Kafka.
pub fn script() -> PathBuf {
    root().join("tests/scripts/kafka.sh")
}

/// The folder of Kafka's jars (`KAFKA_LIBS`, as `tests/scripts/env.sh` sets
/// it). Without them a test fails at once with one line saying how to run
/// the tests, instead of waiting for a broker that cannot start.
pub fn libs() -> PathBuf {
    static LIBS: OnceLock<PathBuf> = OnceLock::new();
    LIBS.get_or_init(installed_libs).clone()
}

/// The Apache Kafka release the tests run (`KAFKA_VERSION`, as
/// `tests/scripts/env.sh` sets it; 4.4.0 by default).
pub fn version() -> String {
    std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "4.4.0".into())
}

/// [`libs`], checked once per test binary.
fn installed_libs() -> PathBuf {
    let libs = std::env::var_os("KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join(format!("kafka-{}/libs", version())));
    let installed = std::fs::read_dir(&libs).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("kafka-server")))
    });
    assert!(
        installed,
        "Apache Kafka is not installed in {}: run the tests with tests/scripts/test.sh (it installs Kafka, builds the plugins and the host, then runs cargo test)",
        libs.display()
    );
    libs
}

/// What a node is started with beyond the shared settings.
#[derive(Debug, Default, Clone)]
pub struct NodeOptions {
    /// The client port (default: a free one).
    pub port: Option<u16>,
    /// Lines appended to the node's `server.properties`; `{dir}` is replaced
    /// by the node's folder and `{port}`/`{controller_port}` by its ports.
    /// A key given here replaces the default (e.g. `listeners=`).
    pub properties: Vec<String>,
    /// Extra arguments of `kafka-storage format` (e.g. `--add-scram ...`).
    pub format_args: Vec<String>,
}

/// One KRaft node and the `kafka.sh run` process that supervises it.
#[derive(Debug)]
pub struct Node {
    /// The node id (1-based).
    pub id: i32,
    /// The client port on 127.0.0.1.
    pub port: u16,
    /// The node's folder: `server.properties`, `server.log`, `data/`.
    pub dir: PathBuf,
    run: Option<(Child, ChildStdin)>,
    /// The broker JVM's pid while it runs.
    pid: Option<u32>,
}

impl Node {
    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the node's broker process is running.
    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    /// The broker JVM's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The broker's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn spawn(&mut self) -> mpsc::Receiver<Result<u32, String>> {
        let mut command = Command::new(script());
        command.arg("run").arg(&self.dir);
        let failed = format!(
            "the Kafka node in {} exited before it was ready; see {}/server.log",
            self.dir.display(),
            self.dir.display()
        );
        let (child, stdin, rx) = spawn_supervised(command, failed);
        self.run = Some((child, stdin));
        rx
    }

    fn await_ready(&mut self, rx: mpsc::Receiver<Result<u32, String>>) {
        let pid = rx
            .recv_timeout(READY_LIMIT)
            .unwrap_or_else(|_| panic!("Kafka node {} not ready within {READY_LIMIT:?}", self.id))
            .unwrap_or_else(|e| panic!("{e}"));
        self.pid = Some(pid);
    }

    /// Kills the broker as `kill -9` and waits for it to be gone.
    pub fn kill(&mut self) {
        kill_supervised(&mut self.pid, &mut self.run);
    }

    /// Stops the broker with SIGTERM (a controlled shutdown: it hands its
    /// partitions' leadership over first) and waits up to `limit` before
    /// killing it.
    pub fn terminate(&mut self, limit: Duration) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline
                && Path::new(&format!("/proc/{pid}")).exists()
                && !zombie(pid)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// Starts the broker again with its data and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        let rx = self.spawn();
        self.await_ready(rx);
    }
}

/// Starts a `run` script that prints `ready pid=PID ...` once its server
/// answers and kills the server when its standard input closes: the child,
/// its standard input (keep it open), and where the pid arrives (or
/// `failed` if the script ends first).
pub(crate) fn spawn_supervised(
    mut command: Command,
    failed: String,
) -> (Child, ChildStdin, mpsc::Receiver<Result<u32, String>>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ready pid=") {
                let pid = rest.split_whitespace().next().and_then(|p| p.parse().ok());
                let _ = tx.send(pid.ok_or_else(|| format!("bad ready line {line:?}")));
                return;
            }
        }
        let _ = tx.send(Err(failed));
    });
    (child, stdin, rx)
}

/// Kills the server `pid` as `kill -9`, then closes its script's standard
/// input and waits for the script.
pub(crate) fn kill_supervised(pid: &mut Option<u32>, run: &mut Option<(Child, ChildStdin)>) {
    if let Some(pid) = pid.take() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    if let Some((mut child, stdin)) = run.take() {
        drop(stdin);
        let _ = child.wait();
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One or three Apache Kafka nodes forming one KRaft cluster.
#[derive(Debug)]
pub struct Kafka {
    /// The nodes, by id - 1.
    pub nodes: Vec<Node>,
    _dir: Option<tempfile::TempDir>,
}

impl Kafka {
    /// A node of its own, in a temporary folder.
    pub fn single(options: NodeOptions) -> Self {
        Self::start(1, options, None)
    }

    /// A node of its own whose folder is `dir` (kept after the test).
    pub fn single_in(dir: &Path, options: NodeOptions) -> Self {
        Self::start(1, options, Some(dir.to_path_buf()))
    }

    /// Three nodes, each broker and controller: replication factor 3 and
    /// `min.insync.replicas=2` for every topic.
    pub fn cluster() -> Self {
        Self::start(3, NodeOptions::default(), None)
    }

    fn start(count: i32, options: NodeOptions, dir: Option<PathBuf>) -> Self {
        assert!(
            libs().join(".complete").exists(),
            "Apache Kafka is not installed in {}: run tests/scripts/kafka.sh install (or tests/scripts/test.sh)",
            libs().display()
        );
        let (tmp, base) = match dir {
            Some(d) => (None, d),
            None => {
                let mut t = tempfile::Builder::new()
                    .prefix("kafka-")
                    .tempdir()
                    .expect("temp dir");
                // The brokers' logs (`<dir>/<node>/server.log`) are kept
                // with the pipelines' (`log_dir`).
                crate::keep_if_asked(&mut t, "broker logs");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let ports: Vec<(u16, u16)> = (0..count)
            .map(|i| {
                let port = if i == 0 { options.port } else { None };
                (port.unwrap_or_else(free_port), free_port())
            })
            .collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = sh(Command::new(script()).arg("cluster-id"));
        let mut nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cport))| {
                let id = i as i32 + 1;
                let dir = if count == 1 {
                    base.clone()
                } else {
                    base.join(format!("node{id}"))
                };
                std::fs::create_dir_all(&dir).expect("node dir");
                let extra = dir.join("extra.properties");
                let text = options
                    .properties
                    .iter()
                    .map(|l| {
                        l.replace("{dir}", &dir.display().to_string())
                            .replace("{port}", &port.to_string())
                            .replace("{controller_port}", &cport.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                std::fs::write(&extra, text + "\n").expect("write extra properties");
                sh(Command::new(script())
                    .arg("configure")
                    .arg(&dir)
                    .args([id.to_string(), port.to_string(), cport.to_string()])
                    .arg(&voters)
                    .arg(&extra));
                Node {
                    id,
                    port,
                    dir,
                    run: None,
                    pid: None,
                }
            })
            .collect();
        if count == 1 && options.format_args.is_empty() {
            copy_dir(&template(), &nodes[0].dir.join("data"));
        } else {
            // Formatting is a JVM start each: format the nodes side by side.
            std::thread::scope(|s| {
                for n in &nodes {
                    let (dir, id, args) = (&n.dir, &cluster_id, &options.format_args);
                    s.spawn(move || format(dir, id, args));
                }
            });
        }
        // A quorum needs its voters: start every node, then wait for each.
        let waits: Vec<_> = nodes.iter_mut().map(|n| n.spawn()).collect();
        for (n, rx) in nodes.iter_mut().zip(waits) {
            n.await_ready(rx);
        }
        Self { nodes, _dir: tmp }
    }

    /// The first node's address (one node is enough to bootstrap from).
    pub fn bootstrap(&self) -> String {
        self.nodes[0].bootstrap()
    }

    /// Every node's address, comma-separated.
    pub fn bootstrap_all(&self) -> String {
        self.nodes
            .iter()
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node with id `id`.
    pub fn node(&mut self, id: i32) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }
}

fn format(dir: &Path, cluster_id: &str, args: &[String]) {
    sh(Command::new(script())
        .arg("format")
        .arg(dir)
        .arg(cluster_id)
        .args(args));
}

/// The data folder of a formatted single node (node id 1), made once per
/// cache (`<KAFKA_LIBS>/../template`) and copied for each single node:
/// they all carry the same cluster id, which does not matter to clusters
/// of one that never meet.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let done = libs()
                .parent()
                .expect("KAFKA_LIBS has a parent")
                .join("template");
            if !done.join("data/meta.properties").exists() {
                let tmp = done.with_extension(format!("tmp-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                let (port, cport) = (free_port(), free_port());
                sh(Command::new(script())
                    .arg("configure")
                    .arg(&tmp)
                    .args(["1", &port.to_string(), &cport.to_string()])
                    .arg(format!("1@127.0.0.1:{cport}")));
                let id = sh(Command::new(script()).arg("cluster-id"));
                format(&tmp, &id, &[]);
                // Another test process may have won the race: either is fine.
                if std::fs::rename(&tmp, &done).is_err() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
            done.join("data")
        })
        .clone()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create data dir");
    for entry in std::fs::read_dir(from).expect("read template") {
        let entry = entry.expect("template entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy template file");
        }
    }
}

/// Runs a command to success and returns its trimmed standard output.
fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs one of Kafka's own command-line tools (`kafka.sh tool NAME ..`),
/// e.g. `tool("consumer-groups", &["--bootstrap-server", b, "--list"])`:
/// `(success, stdout, stderr)`.
pub fn tool(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(script())
        .args(["tool", name])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run kafka.sh tool {name}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True for the notices newer Kafka tools print among the records: the
/// group protocol's (KIP-1274, 4.3+) and `--property`'s deprecation (4.4;
/// its successor `--formatter-property` does not exist in 3.9).
pub fn is_tool_notice(line: &str) -> bool {
    line.starts_with("The consumer rebalance protocol (KIP-848)")
        || line.starts_with("Option --property is deprecated")
}

/// Kafka's own console consumer with `--isolation-level read_committed`:
/// the source (partition, offset) header pair of every record of `topic`,
/// reading at most `expect` records (or 20 s without one).
pub fn console_sources(bootstrap: &str, topic: &str, expect: usize) -> Vec<(i32, i64)> {
    let (ok, out, err) = tool(
        "console-consumer",
        &[
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            &expect.to_string(),
            "--timeout-ms",
            "20000",
            "--property",
            "print.headers=true",
            "--property",
            "headers.separator=;",
            "--property",
            "print.value=false",
        ],
    );
    // It exits non-zero on its timeout, which is how it ends when it read
    // fewer than `expect` records: the count is checked by the caller.
    let _ = ok;
    out.lines()
        .filter(|line| !is_tool_notice(line))
        .map(|line| {
            let header = |name: &str| -> i64 {
                line.split(';')
                    .find_map(|h| h.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}: {err}"))
            };
            (
                header("pipeline.source.partition:") as i32,
                header("pipeline.source.offset:"),
            )
        })
        .collect()
}
