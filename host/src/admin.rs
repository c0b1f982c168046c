//! The admin HTTP endpoint (`--admin 127.0.0.1:9700`) for operators and
//! orchestrators, served by axum (hyper underneath).
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
//! every path but the probes (`/healthz`, `/readyz`) and the status page's
//! HTML (`/status`, which holds no data) needs `Authorization: Bearer
//! <token>`, else `401`: a middleware layer on those routes; the token is
//! compared in constant time. It is never taken from a URL (URLs end up in
//! logs, histories and Referer headers): the status page reads it from its
//! fragment (`/status#token=...`), which the browser keeps to itself, and
//! sends it in the header.
//!
//! `POST /reload` changes what runs. On a non-loopback address it is
//! refused (`403`) unless a token is set. Without a token (on loopback) it
//! needs the header `X-Pipeline-Reload: 1`: a web page cannot send that
//! header to another origin without a CORS preflight, which this endpoint
//! never grants, so a page in the operator's browser cannot trigger a
//! reload (a bearer token, itself a non-simple header, does the same).
//!
//! Slow or idle clients cannot tie it up: at most [`MAX_CONNECTIONS`] are
//! served at once (others wait in the listen backlog), headers must arrive
//! within [`HEADER_READ_TIMEOUT`], a request is answered within
//! [`REQUEST_TIMEOUT`] and a connection lives at most
//! [`CONNECTION_LIFETIME`]. No TLS: bind it to loopback or a private
//! interface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::Metrics;
use crate::reload::Control;
use crate::secret::Secret;
use crate::shutdown::CancellationToken;

/// The status page: static HTML that polls `/status.json`.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// The longest a request may take, reading it and answering included (a
/// reload compiles stages, which takes seconds at most).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client may take to send a request's headers, from the
/// connection's opening (or the end of the previous response): an idle or
/// trickling client is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one connection lives, however busy: keep-alive clients
/// reconnect, nobody holds a slot for ever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Connections served at once. A connection beyond it is closed at once,
/// so the endpoint cannot use up the process's file descriptors (the
/// pipeline needs its own) however many clients connect; with
/// [`HEADER_READ_TIMEOUT`], an idle client holds a slot a few seconds.
pub const MAX_CONNECTIONS: usize = 256;

/// What the handlers share.
#[derive(Clone)]
struct Admin {
    control: Control,
    metrics: Arc<Metrics>,
    /// `POST /reload` changes what runs: refused on a non-loopback address
    /// without a token.
    reload_allowed: bool,
    /// A token guards the endpoint.
    token_set: bool,
}

/// The header `POST /reload` needs when no token is set.
const RELOAD_HEADER: &str = "x-pipeline-reload";

/// Binds `addr` and serves until shutdown. Returns the bound address (the
/// port may have been 0).
pub async fn serve(
    addr: SocketAddr,
    token: Option<Secret>,
    control: Control,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let reload_allowed = token.is_some() || bound.ip().is_loopback();
    if !reload_allowed {
        tracing::warn!(address = %bound, "admin endpoint on a non-loopback address without a token: POST /reload is refused (set --admin-token-file or PIPELINE_ADMIN_TOKEN)");
    }
    let app = router(
        Admin {
            control,
            metrics,
            reload_allowed,
            token_set: token.is_some(),
        },
        token.map(Arc::new),
    );
    tracing::info!(address = %bound, "admin endpoint listening (GET /healthz, /readyz, /metrics, /status, /stages; POST /reload)");
    tokio::spawn(accept(listener, app, shutdown));
    Ok(bound)
}

/// Accepts connections and serves up to [`MAX_CONNECTIONS`] of them at
/// once with hyper's HTTP/1.1 server (closing any beyond): headers within
/// [`HEADER_READ_TIMEOUT`], the connection closed after
/// [`CONNECTION_LIFETIME`]. (axum's `serve` sets neither bound, hence this
/// loop around hyper's connection builder.)
async fn accept(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin endpoint: every connection slot is taken; closing");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let (shutdown, http) = (shutdown.clone(), http.clone());
        tokio::spawn(async move {
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                r = &mut connection => if let Err(e) = r {
                    tracing::debug!(error = %e, "admin connection ended");
                },
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            drop(slot);
        });
    }
}

/// The routes: the probes open, the rest behind the token (if any).
fn router(admin: Admin, token: Option<Arc<Secret>>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/status.json", get(status_json))
        .route("/stages", get(stages))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/health", get(healthz))
        .route("/readyz", get(readyz))
        // The page itself holds no data; it fetches /status.json.
        .route("/status", get(status_page))
        .route("/", get(status_page))
        .merge(guarded)
        .fallback(not_found)
        .with_state(admin)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// The bearer check: `Authorization: Bearer <token>` (never a token in the
/// URL).
async fn require_token(
    State(token): State<Option<Arc<Secret>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let in_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .is_some_and(|t| token.matches(t.trim()));
    if in_header {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer <token>\n",
        )
            .into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(a): State<Admin>) -> (StatusCode, &'static str) {
    if a.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no partitions assigned yet\n",
        )
    }
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        a.metrics.render(),
    )
}

/// Pretty JSON with a trailing newline, for people with curl.
fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v:#}\n"),
    )
        .into_response()
}

async fn status_json(State(a): State<Admin>) -> Response {
    json(StatusCode::OK, &a.metrics.status(&a.control.stage_names()))
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn stages(State(a): State<Admin>) -> Response {
    json(StatusCode::OK, &a.control.describe())
}

async fn reload(State(a): State<Admin>, headers: axum::http::HeaderMap) -> Response {
    if !a.reload_allowed {
        return (
            StatusCode::FORBIDDEN,
            "forbidden: POST /reload on a non-loopback address needs a token (--admin-token-file or PIPELINE_ADMIN_TOKEN)\n",
        )
            .into_response();
    }
    // With a token, the middleware has checked it. Without one, a request
    // a browser page could send cross-origin (no custom header) is refused.
    if !a.token_set && headers.get(RELOAD_HEADER).is_none_or(|v| v != "1") {
        return (
            StatusCode::FORBIDDEN,
            "forbidden: POST /reload without an admin token needs the header X-Pipeline-Reload: 1 (a browser page cannot send it cross-origin)\n",
        )
            .into_response();
    }
    match a.control.reload().await {
        Ok(set) => json(StatusCode::OK, &set),
        Err(reason) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "rejected": reason.to_string() }),
        ),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: GET /healthz, /readyz, /metrics, /status, /stages; POST /reload\n",
    )
}
