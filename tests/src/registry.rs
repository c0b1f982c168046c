//! Apicurio Registry for the tests, from the archive
//! `tests/scripts/registry.sh install` resolved from Maven Central: a
//! Confluent-compatible schema registry at `/apis/ccompat/v7`.
//!
//! As with Kafka nodes, the script owns the settings and the readiness
//! check; this module picks the port, starts `registry.sh run` and keeps
//! its standard input, so the registry dies with the test process. Its
//! storage is a file in its folder: [`Registry::restart`] brings the same
//! schemas and ids back.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command};
use std::time::Duration;

use crate::{free_port, root};

/// How long the registry may take from `registry.sh run` to answering.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// One running registry.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    dir: tempfile::TempDir,
    run: Option<(Child, ChildStdin)>,
    pid: Option<u32>,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("registry folder"),
            run: None,
            pid: None,
        };
        r.spawn();
        r
    }

    /// The Confluent-compatible API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new(root().join("tests/scripts/registry.sh"));
        command
            .arg("run")
            .arg(self.dir.path())
            .arg(self.port.to_string());
        let failed = format!(
            "the registry exited before it was ready; see {}",
            self.dir.path().join("registry.log").display()
        );
        let (child, stdin, rx) = crate::kafka::spawn_supervised(command, failed);
        self.run = Some((child, stdin));
        let pid = rx
            .recv_timeout(READY_LIMIT)
            .unwrap_or_else(|_| panic!("the registry was not ready within {READY_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.pid = Some(pid);
    }

    /// Kills the registry as `kill -9`.
    pub fn kill(&mut self) {
        crate::kafka::kill_supervised(&mut self.pid, &mut self.run);
    }

    /// Starts it again on the same port and storage, and waits for it.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Registers `schema` (of `kind`: `AVRO`, `PROTOBUF`, `JSON`) under
    /// `subject`: its id.
    pub fn register(&self, subject: &str, kind: &str, schema: &str) -> u32 {
        let body = serde_json::json!({"schema": schema, "schemaType": kind}).to_string();
        let (status, answer) = self.http("POST", &format!("/subjects/{subject}/versions"), &body);
        assert_eq!(status, 200, "register under {subject}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
        v["id"].as_u64().expect("id") as u32
    }

    /// One HTTP/1.1 request to the ccompat API: (status, body).
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect registry");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let request = format!(
            "{method} /apis/ccompat/v7{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // A chunked body: the chunks' payloads, joined.
        let body = if answer
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}
