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
//! every path but `/healthz` and `/readyz` (the probes) needs
//! `Authorization: Bearer <token>` (or `?token=<token>`, for the status page
//! in a browser), else `401`: a middleware layer on those routes. Every
//! request has a time limit ([`REQUEST_TIMEOUT`]). No TLS: bind it to
//! loopback or a private interface.

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
use tokio::net::TcpListener;
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

/// What the handlers share.
#[derive(Clone)]
struct Admin {
    control: Control,
    metrics: Arc<Metrics>,
}

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
    let app = router(Admin { control, metrics }, token.map(Arc::new));
    tracing::info!(address = %bound, "admin endpoint listening (GET /healthz, /readyz, /metrics, /status, /stages; POST /reload)");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(bound)
}

/// The routes: the probes open, the rest behind the token (if any).
fn router(admin: Admin, token: Option<Arc<Secret>>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/status.json", get(status_json))
        .route("/status", get(status_page))
        .route("/", get(status_page))
        .route("/stages", get(stages))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/health", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(not_found)
        .with_state(admin)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// The bearer check: `Authorization: Bearer <token>`, or `?token=` for a
/// browser on the status page.
async fn require_token(
    State(token): State<Option<Arc<Secret>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let expected = token.expose();
    let in_query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.strip_prefix("token=") == Some(expected));
    let in_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == expected);
    if in_query || in_header {
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

async fn reload(State(a): State<Admin>) -> Response {
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
