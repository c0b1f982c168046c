//! The admin HTTP endpoint (`--admin 127.0.0.1:9700`): a deliberately tiny
//! HTTP/1.1 server for operators and orchestrators.
//!
//! - `GET /healthz` (also `/health`): `200 ok` while the process serves.
//! - `GET /readyz`: `200` once the stages are loaded and this member has
//!   partitions to work on (always, without a group); `503` before that and
//!   while a rebalance has left it nothing.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `GET /status`: a live status page for a person (throughput, lag,
//!   per-stage counts, the latest app-version window), refreshing from
//!   `GET /status.json` every two seconds.
//! - `GET /stages`: the running stage set (generation, names, files,
//!   sha256) as JSON.
//! - `POST /reload`: reload the stages now; `200` with the new set, or
//!   `422` with the reason the new stages were rejected (the running ones
//!   keep serving).
//!
//! With a token configured (`--admin-token-file`, `PIPELINE_ADMIN_TOKEN`),
//! every path but `/healthz` and `/readyz` (the probes) needs
//! `Authorization: Bearer <token>` (or `?token=<token>`, for the status page
//! in a browser), else `401`.
//!
//! One request per connection; no keep-alive, no TLS: bind it to loopback
//! or a private interface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::reload::Control;
use crate::secret::Secret;
use crate::shutdown::CancellationToken;

/// The status page: static HTML that polls `/status.json`.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `addr` and serves until shutdown. Returns the bound address (the
/// port may have been 0).
pub async fn serve(
    addr: SocketAddr,
    token: Option<Secret>,
    control: Control,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let token = Arc::new(token);
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "admin endpoint listening (GET /healthz, /readyz, /metrics, /stages; POST /reload)");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let (control, metrics, token) =
                        (control.clone(), metrics.clone(), token.clone());
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &control, &metrics, &token).await {
                            tracing::debug!(error = %e, "admin connection failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "admin endpoint: accept failed"),
            }
        }
    });
    Ok(bound)
}

async fn handle(
    mut stream: TcpStream,
    control: &Control,
    metrics: &Metrics,
    token: &Option<Secret>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let open = matches!(path, "/healthz" | "/health" | "/readyz");
    let authorized = match token {
        None => true,
        // A browser on the status page passes it as `?token=`.
        Some(t) => {
            let t = t.expose();
            query
                .split('&')
                .any(|kv| kv.strip_prefix("token=") == Some(t))
                || line.lines().any(|l| {
                    l.split_once(':').is_some_and(|(name, value)| {
                        name.trim().eq_ignore_ascii_case("authorization")
                            && value.trim().strip_prefix("Bearer ").map(str::trim) == Some(t)
                    })
                })
        }
    };
    let (status, body) = match (method, path) {
        _ if !open && !authorized => (
            401,
            "unauthorized: send Authorization: Bearer <token>\n".to_string(),
        ),
        ("GET", "/health" | "/healthz") => (200, "ok\n".to_string()),
        ("GET", "/readyz") => {
            if metrics.ready.load(Ordering::Relaxed) {
                (200, "ready\n".to_string())
            } else {
                (503, "not ready: no partitions assigned yet\n".to_string())
            }
        }
        ("GET", "/metrics") => (200, metrics.render()),
        ("GET", "/status.json") => (
            200,
            format!("{:#}\n", metrics.status(&control.stage_names())),
        ),
        ("GET", "/status" | "/") => (200, STATUS_PAGE.to_string()),
        ("GET", "/stages") => (200, format!("{:#}\n", control.describe())),
        ("POST", "/reload") => match control.reload().await {
            Ok(set) => (200, format!("{set:#}\n")),
            Err(reason) => (
                422,
                format!("{:#}\n", serde_json::json!({ "rejected": reason })),
            ),
        },
        (_, "/health" | "/healthz" | "/readyz" | "/metrics" | "/stages" | "/reload") => {
            (405, "method not allowed\n".into())
        }
        _ => (
            404,
            "not found: GET /healthz, /readyz, /metrics, /stages; POST /reload\n".into(),
        ),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unprocessable Entity",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        if body.starts_with('{') {
            "application/json"
        } else if body.starts_with("<!doctype") {
            "text/html; charset=utf-8"
        } else {
            "text/plain"
        },
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
