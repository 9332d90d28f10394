//! The HTTP server of a running job: the REST API (`/api/v1/...`), Prometheus metrics
//! (`/metrics`) and the web UI (`/`), on a thread of its own with its own single-threaded tokio
//! runtime, so serving never takes time from the job's executors.
//!
//! Security (see `docs/observability.md`):
//! - it binds to loopback unless told otherwise; there, reads are open to local processes and
//!   requests whose `Host` is not a loopback name are refused (no DNS rebinding);
//! - bound to any other address, every request needs the token, reads included;
//! - `POST` requests (stop, checkpoint now, scale) always need the token; without it they get
//!   401 and nothing happens;
//! - the token is `Authorization: Bearer TOKEN`, or HTTP Basic auth with the token as password
//!   (what a browser prompts for);
//! - no endpoint reads or writes a file named by the request (the UI is compiled in);
//! - responses carry no CORS header at all (same origin only), and `nosniff`, `DENY` framing,
//!   a strict content security policy, `no-referrer` and `no-store`.

use crate::api;
use crate::watch::Watch;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weir_types::{Error, ErrorKind, Result};

/// The OpenAPI document of the API.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// How long `POST /api/v1/checkpoints` waits for the checkpoint to end before answering 202.
pub const CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

/// How to serve.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Address to bind (`127.0.0.1:8642` by default in `weir run`; port 0 takes any free one).
    pub bind: SocketAddr,
    /// The token control requests (and, off loopback, every request) must carry.
    pub token: String,
    /// Ask for the token on every request even on loopback (it always is off loopback).
    pub always_token: bool,
}

pub(crate) struct AppState {
    pub(crate) watch: Arc<Watch>,
    token: String,
    /// Reads need no token (loopback binds).
    open_reads: bool,
    /// The bound address, allowed as `Host` besides loopback names.
    bound: SocketAddr,
    prometheus: prometheus_client::registry::Registry,
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct WebServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    /// Binds `opts.bind` (failing at once, naming the address, if it cannot) and serves `watch`
    /// on a thread of its own.
    pub fn start(watch: Arc<Watch>, opts: WebOptions) -> Result<Self> {
        let listener = std::net::TcpListener::bind(opts.bind).map_err(|e| {
            Error::config(format!(
                "cannot listen on {} for the web API (is the port taken? --http ADDR:PORT picks another, --http off disables it)",
                opts.bind
            ))
            .with_source(e)
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the web API's address").with_source(e))?;
        listener.set_nonblocking(true).map_err(|e| {
            Error::io("cannot make the web API's socket non-blocking").with_source(e)
        })?;
        let mut prometheus = prometheus_client::registry::Registry::default();
        prometheus.register_collector(Box::new(crate::prom::JobCollector::new(watch.clone())));
        let state = Arc::new(AppState {
            watch,
            token: opts.token,
            open_reads: addr.ip().is_loopback() && !opts.always_token,
            bound: addr,
            prometheus,
        });
        let app = router(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start the web API's runtime").with_source(e))?;
        let thread = std::thread::Builder::new()
            .name("weir-web".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!("the web API cannot serve: {e}");
                            return;
                        }
                    };
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::warn!("the web API stopped: {e}");
                    }
                });
                // Connections still open (a browser's keep-alive) are dropped with the runtime.
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(|e| Error::internal("cannot start the web API's thread").with_source(e))?;
        Ok(WebServer {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            // Graceful shutdown waits for requests in flight; a stuck client must not hold the
            // job's exit, so wait a little and then leave the thread to the process's end.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let _ = t.join();
                let _ = done_tx.send(());
            });
            if done_rx.recv_timeout(Duration::from_secs(2)).is_ok() {
                let _ = waiter.join();
            }
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(crate::ui::page))
        .route("/ui/app.js", get(crate::ui::script))
        .route("/ui/style.css", get(crate::ui::style))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.yaml", get(openapi))
        .route("/api/v1/job", get(job))
        .route("/api/v1/job/stop", post(stop))
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/operators", get(operators))
        .route("/api/v1/operators/{name}", get(operator))
        .route("/api/v1/checkpoints", get(checkpoints).post(checkpoint_now))
        .route("/api/v1/checkpoints/{id}", get(checkpoint))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}/scale", post(scale))
        .route("/api/v1/why", get(why))
        .route("/api/v1/overview", get(overview))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint (see /api/v1/openapi.yaml)",
    )
}

/// Compares without an early exit, so the time taken does not tell how much of a guess is right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries `token` as a bearer token or as the Basic auth password.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    use base64::Engine;
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let given = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return false;
        };
        let text = String::from_utf8_lossy(&decoded).into_owned();
        match text.split_once(':') {
            Some((_, password)) => password.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    same(given.as_bytes(), token.as_bytes())
}

/// Whether a `Host` header names this server on a loopback bind: a loopback address or
/// `localhost` (any port), or the bound address itself.
fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == bound.ip(),
        Err(_) => false,
    }
}

fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
}

async fn guard(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut resp = match check(&s, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    };
    security_headers(resp.headers_mut());
    resp
}

/// Refuses the request (an answer) or lets it through (`None`).
fn check(s: &AppState, req: &Request) -> Option<Response> {
    if s.open_reads
        && let Some(host) = req.headers().get(header::HOST)
        && !host_allowed(host.to_str().unwrap_or(""), s.bound)
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            "this API answers only requests addressed to a loopback host name",
        ));
    }
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if (read && s.open_reads) || authorized(req.headers(), &s.token) {
        return None;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send 'Authorization: Bearer TOKEN' with the token from the job's api.json (mode 0600)",
    );
    if !s.open_reads {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"weir\", charset=\"UTF-8\""),
        );
    }
    Some(r)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        OPENAPI_YAML,
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &s.prometheus) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics (this is a bug, please report it)",
        ),
    }
}

async fn job(State(s): State<Arc<AppState>>) -> Response {
    Json(api::job(&s.watch)).into_response()
}

async fn graph(State(s): State<Arc<AppState>>) -> Response {
    Json(s.watch.topology()).into_response()
}

async fn operators(State(s): State<Arc<AppState>>) -> Response {
    let ops: Vec<api::OperatorView> = api::operators(&s.watch)
        .into_iter()
        .map(|o| o.operator)
        .collect();
    Json(ops).into_response()
}

async fn operator(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match api::operators(&s.watch)
        .into_iter()
        .find(|o| o.operator.name == name)
    {
        Some(o) => Json(o).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no step named '{name}'")),
    }
}

/// `?limit=N`.
#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn checkpoints(State(s): State<Arc<AppState>>, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(weir_runtime::observe::HISTORY_LEN);
    Json(api::checkpoints(&s.watch, limit)).into_response()
}

async fn checkpoint(State(s): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    let found = s
        .watch
        .checkpoints()
        .and_then(|(_, h)| h.into_iter().rev().find(|r| r.id == id));
    match found {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no checkpoint {id} in the kept history"),
        ),
    }
}

async fn dead_letters(State(s): State<Arc<AppState>>, Query(q): Query<Limit>) -> Response {
    let limit = q
        .limit
        .unwrap_or(weir_runtime::observe::DEAD_LETTER_SAMPLES);
    Json(api::dead_letters(&s.watch, limit)).into_response()
}

async fn services(State(s): State<Arc<AppState>>) -> Response {
    Json(api::services(&s.watch)).into_response()
}

async fn why(State(s): State<Arc<AppState>>) -> Response {
    Json(api::why(&s.watch)).into_response()
}

async fn overview(State(s): State<Arc<AppState>>) -> Response {
    Json(api::overview(&s.watch)).into_response()
}

/// The answer to a control request that was carried out.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    /// What happened, one line.
    pub message: String,
}

async fn stop(State(s): State<Arc<AppState>>) -> Response {
    let Some(c) = s.watch.control() else {
        return error(StatusCode::CONFLICT, "the job has not started yet");
    };
    c.stop();
    tracing::info!("stop requested through the web API");
    (
        StatusCode::ACCEPTED,
        Json(Done {
            message: "stopping: the inputs stop, what was read is written, then the final checkpoint is taken".into(),
        }),
    )
        .into_response()
}

async fn checkpoint_now(State(s): State<Arc<AppState>>) -> Response {
    let Some(c) = s.watch.control() else {
        return error(StatusCode::CONFLICT, "the job has not started yet");
    };
    if !c.checkpoints() {
        return error(
            StatusCode::CONFLICT,
            "the job takes no checkpoints (its spec has no 'checkpoint:' section)",
        );
    }
    tracing::info!("checkpoint requested through the web API");
    match tokio::time::timeout(CHECKPOINT_WAIT, c.checkpoint_now()).await {
        Ok(Ok(record)) => Json(record).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e.report()),
        Err(_) => (
            StatusCode::ACCEPTED,
            Json(Done {
                message: format!(
                    "the checkpoint has not ended after {} s; see GET /api/v1/checkpoints",
                    CHECKPOINT_WAIT.as_secs()
                ),
            }),
        )
            .into_response(),
    }
}

/// `POST /api/v1/services/{name}/scale` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The number of instances wanted.
    pub instances: usize,
}

async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(body): Json<ScaleRequest>,
) -> Response {
    let Some(svc) = state.watch.service(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("the job declares no service '{name}'"),
        );
    };
    // A remote service's scale is a call to its host: keep it off the server's thread.
    let n = body.instances;
    let done = tokio::task::spawn_blocking(move || {
        let before = svc.status();
        svc.scale(n).map(|()| before)
    })
    .await;
    match done {
        Ok(Ok(before)) => {
            tracing::info!(
                service = name,
                from = before.target,
                to = n,
                "scaled through the web API"
            );
            Json(Done {
                message: format!(
                    "service '{name}': {} -> {n} instances ({} ready, {} loading now)",
                    before.target, before.ready, before.loading
                ),
            })
            .into_response()
        }
        Ok(Err(e)) if e.kind() == ErrorKind::Config => error(StatusCode::BAD_REQUEST, e.report()),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e.report()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scaling panicked (this is a bug, please report it): {e}"),
        ),
    }
}

/// What a client needs to reach a job's API: written as JSON, mode 0600, to `api.json` in
/// the job's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFile {
    /// Base URL, `http://HOST:PORT`.
    pub url: String,
    /// The token.
    pub token: String,
    /// The job's process id.
    pub pid: u32,
    /// The job's name.
    pub job: String,
}

impl ApiFile {
    /// Writes it (mode 0600, atomically), creating the directory.
    pub fn write(&self, path: &FsPath) -> Result<()> {
        weir_serve::control::write_private_json(self, path, "API file")
    }

    /// Reads one; the error names the file.
    pub fn read(path: &FsPath) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the API file {} (is the job running with its web API on?)",
                path.display()
            ))
            .with_source(e)
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::config(format!("{} is not a weir API file", path.display())).with_source(e)
        })
    }
}

/// Removes an API file when dropped, if it is still this process's.
#[derive(Debug)]
pub struct ApiFileGuard(pub PathBuf);

impl Drop for ApiFileGuard {
    fn drop(&mut self) {
        if ApiFile::read(&self.0).is_ok_and(|f| f.pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_taken_from_bearer_or_basic() {
        use base64::Engine;
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(authorized(&h, "abc"));
        assert!(!authorized(&h, "abd"));
        assert!(!authorized(&h, "ab"));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("weir:abc")
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&basic).expect("header"),
        );
        assert!(authorized(&h, "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!authorized(&h, "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Token abc"));
        assert!(!authorized(&h, "abc"));
    }

    #[test]
    fn only_loopback_host_names_pass_on_loopback() {
        let bound: SocketAddr = "127.0.0.1:8642".parse().expect("addr");
        for ok in [
            "127.0.0.1:8642",
            "localhost:8642",
            "LOCALHOST",
            "[::1]:80",
            "127.0.0.2",
        ] {
            assert!(host_allowed(ok, bound), "{ok}");
        }
        for bad in ["evil.example:8642", "10.0.0.1:8642", "", "[fe80::1]:1"] {
            assert!(!host_allowed(bad, bound), "{bad}");
        }
    }
}
