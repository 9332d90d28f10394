//! The control endpoint of a running job or service host: an Arrow Flight server (on 127.0.0.1
//! unless bound elsewhere) whose `DoAction` calls change and report inference services while the
//! pipeline runs ([`ControlEndpoint`]), and the client that `weir scale`, `weir services` and
//! `weir stop-service` use ([`scale`], [`status`], [`call`]).
//!
//! It listens on loopback by default (`weir run --control-host` binds it elsewhere, with a
//! warning), and every call must carry the endpoint's token in the
//! `authorization` header (`Bearer TOKEN`); a call without it, or with another token, is refused
//! with `UNAUTHENTICATED` before anything is looked at. The token is drawn from the operating
//! system's random source when the endpoint starts and handed to clients through a control file
//! ([`ControlFile`], readable by its owner only), which also names the address.
//!
//! Actions (bodies are JSON):
//! - `scale` `{"service": NAME, "instances": N}` → one result: a line saying what changed. The
//!   service's bounds (`instances.min` / `max`) apply; an unknown service or an out-of-bounds
//!   number is `INVALID_ARGUMENT` with the reason.
//! - `status` (empty body) → one result per registered service: a JSON object with the fields of
//!   `weir_infer::ServiceStatus` plus `why_slow`.
//! - `shutdown` (empty body; service hosts only, see [`crate::host`]) → the host stops taking
//!   calls, drains the ones in flight and exits.

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{Action, ActionType, Empty, FlightClient};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use weir_infer::{ModelService, ServiceStatus};
use weir_types::{Error, Result};

/// What a client needs to reach a running job's control endpoint; written as JSON to the
/// control file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFile {
    /// `HOST:PORT` of the endpoint.
    pub addr: String,
    /// The bearer token every call must carry.
    pub token: String,
    /// The job's process id.
    pub pid: u32,
    /// The job's name.
    pub job: String,
}

impl ControlFile {
    /// Writes the file (mode 0600, created with that mode), creating its directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_private_json(self, path, "control file")
    }

    /// Reads a control file; the error names the file and says how to get one.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the control file {} (is the job running? `weir run` writes it when the spec declares services)",
                path.display()
            ))
            .with_source(e)
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::config(format!("{} is not a weir control file", path.display())).with_source(e)
        })
    }
}

/// Writes `value` as JSON to `path` readable by its owner only (it holds a token): into a
/// temporary file created with mode 0600 next to it, then renamed into place, so a reader never
/// sees a half-written file. Creates the directory. `what` names the file in errors.
pub(crate) fn write_private_json<T: Serialize>(value: &T, path: &Path, what: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(format!("cannot create the directory {}", dir.display())).with_source(e)
        })?;
    }
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("cannot encode the {what}")).with_source(e))?;
    let name = path
        .file_name()
        .map_or_else(|| "weir".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(json.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot write the {what} {}", path.display())).with_source(e)
        })
}

/// A fresh token: 32 hex digits from `/dev/urandom`.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("cannot read /dev/urandom for a control token").with_source(e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Deserialize)]
struct ScaleBody {
    service: String,
    instances: usize,
}

/// A service's status as the `status` action answers it: the service's own status (its fields
/// at the top level of the JSON) plus what is derived from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The counters and instance states.
    #[serde(flatten)]
    pub status: ServiceStatus,
    /// Why callers wait, if they do (`ServiceStatus::why_slow`).
    pub why_slow: Option<String>,
    /// Median call latency so far (ms, bucket bound).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile call latency so far (ms, bucket bound).
    pub latency_p99_ms: Option<f64>,
}

impl From<&ServiceStatus> for StatusReply {
    fn from(s: &ServiceStatus) -> Self {
        StatusReply {
            status: s.clone(),
            why_slow: s.why_slow(),
            latency_p50_ms: weir_infer::service::latency_quantile_ms(&s.latency_buckets, 0.5),
            latency_p99_ms: weir_infer::service::latency_quantile_ms(&s.latency_buckets, 0.99),
        }
    }
}

/// Called by the `shutdown` action (service hosts only).
pub type ShutdownHook = std::sync::Arc<dyn Fn() + Send + Sync>;

struct ControlServer {
    token: String,
    shutdown: Option<ShutdownHook>,
    services: Vec<Arc<dyn ModelService>>,
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ControlServer {
    fn check<T>(&self, r: &Request<T>) -> std::result::Result<(), Status> {
        let got = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same(got.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong control token (read it from the job's control file)",
            ))
        }
    }
}

fn act(
    action: &Action,
    shutdown: Option<&ShutdownHook>,
    services: &[Arc<dyn ModelService>],
) -> std::result::Result<Vec<Vec<u8>>, Status> {
    match action.r#type.as_str() {
        "shutdown" => match shutdown {
            Some(stop) => {
                tracing::info!("shutdown requested through the control endpoint");
                stop();
                Ok(vec![b"shutting down".to_vec()])
            }
            None => Err(Status::invalid_argument(
                "shutdown: only a shared service's host (`weir serve-service`) can be shut down this way; stop a job with Ctrl-C or SIGTERM",
            )),
        },
        "scale" => {
            let body: ScaleBody = serde_json::from_slice(&action.body).map_err(|e| {
                Status::invalid_argument(format!(
                    "scale: expected {{\"service\": NAME, \"instances\": N}}: {e}"
                ))
            })?;
            let svc = services
                .iter()
                .find(|s| s.name() == body.service)
                .ok_or_else(|| {
                    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
                    Status::invalid_argument(format!(
                        "no service named '{}' in this job (its services: {})",
                        body.service,
                        names.join(", ")
                    ))
                })?;
            let before = svc.status();
            svc.scale(body.instances)
                .map_err(|e| Status::invalid_argument(e.report()))?;
            tracing::info!(
                service = body.service,
                from = before.target,
                to = body.instances,
                "scaled through the control endpoint"
            );
            Ok(vec![
                format!(
                    "service '{}': {} -> {} instances ({} ready, {} loading now)",
                    body.service, before.target, body.instances, before.ready, before.loading
                )
                .into_bytes(),
            ])
        }
        "status" => services
            .iter()
            .map(|s| {
                serde_json::to_vec(&StatusReply::from(&s.status()))
                    .map_err(|e| Status::internal(format!("cannot encode a status: {e}")))
            })
            .collect(),
        other => Err(Status::invalid_argument(format!(
            "unknown action '{other}' (known: scale, status, shutdown)"
        ))),
    }
}

#[tonic::async_trait]
impl FlightService for ControlServer {
    crate::not_offered::flight_stream_types!();

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        self.check(&request)?;
        let results = act(request.get_ref(), self.shutdown.as_ref(), &self.services)?;
        let stream = futures::stream::iter(
            results
                .into_iter()
                .map(|body| Ok(arrow_flight::Result { body: body.into() })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        self.check(&request)?;
        let actions = [
            (
                "scale",
                "{\"service\": NAME, \"instances\": N}: set a service's instances",
            ),
            ("status", "every service's status, one JSON object each"),
            (
                "shutdown",
                "stop a shared service's host (drains, then exits)",
            ),
        ]
        .map(|(t, d)| {
            Ok(ActionType {
                r#type: t.into(),
                description: d.into(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }

    crate::not_offered::flight_not_offered!(
        handshake,
        list_flights,
        get_flight_info,
        poll_flight_info,
        get_schema,
        do_get,
        do_put,
        do_exchange
    );
}

/// A running control endpoint: a thread serving Flight (on 127.0.0.1 unless bound elsewhere). Dropping it stops the
/// server and removes the control file it wrote, if any.
#[derive(Debug)]
pub struct ControlEndpoint {
    addr: SocketAddr,
    token: String,
    file: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlEndpoint {
    /// Listens on `127.0.0.1:port` (0: any free port) with a fresh token, for `services`.
    pub fn start(port: u16, services: Vec<Arc<dyn ModelService>>) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], port)), None, services)
    }

    /// Listens on `bind` with a fresh token; `scale` and `status` reach `services` (those of the
    /// job, or the host's one); `shutdown` (service hosts) enables the `shutdown` action. An
    /// address that is not loopback is logged as a warning: the endpoint is then reachable from
    /// the network, protected by its token only (no TLS).
    pub fn start_on(
        bind: SocketAddr,
        shutdown: Option<ShutdownHook>,
        services: Vec<Arc<dyn ModelService>>,
    ) -> Result<Self> {
        let token = new_token()?;
        if !bind.ip().is_loopback() {
            tracing::warn!(
                "control endpoint bound to {bind}: reachable from the network, protected by its token only (no TLS)"
            );
        }
        let listener = std::net::TcpListener::bind(bind).map_err(|e| {
            Error::io(format!("cannot listen on {bind} for control")).with_source(e)
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("cannot set the control socket non-blocking").with_source(e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the control address").with_source(e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::internal("cannot build the control endpoint's runtime").with_source(e)
            })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = ControlServer {
            token: token.clone(),
            shutdown,
            services,
        };
        let thread = std::thread::Builder::new()
            .name("weir-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!("control endpoint not started: {e}");
                            return;
                        }
                    };
                    let r = tonic::transport::Server::builder()
                        .add_service(FlightServiceServer::new(server))
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(listener),
                            async {
                                let _ = stop_rx.await;
                            },
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::warn!("control endpoint failed: {e}");
                    }
                });
            })
            .map_err(|e| Error::internal("cannot start the control thread").with_source(e))?;
        Ok(ControlEndpoint {
            addr,
            token,
            file: None,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token calls must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Writes the control file for job `job` at `path`; it is removed when the endpoint stops.
    pub fn write_file(&mut self, path: &Path, job: &str) -> Result<()> {
        ControlFile {
            addr: self.addr.to_string(),
            token: self.token.clone(),
            pid: std::process::id(),
            job: job.to_string(),
        }
        .write(path)?;
        self.file = Some(path.to_path_buf());
        Ok(())
    }
}

impl Drop for ControlEndpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(f) = self.file.take() {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Runs one action against the endpoint at `addr` with `token`; returns the result bodies.
pub fn call(addr: &str, token: &str, action: &str, body: Vec<u8>) -> Result<Vec<Vec<u8>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::internal("cannot build a runtime for the control client").with_source(e)
        })?;
    let url = format!("http://{addr}");
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .map_err(|e| Error::config(format!("bad control address {url}")).with_source(e))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                Error::external(format!(
                    "cannot reach the job's control endpoint at {addr} (has the job ended?)"
                ))
                .with_source(e)
            })?;
        let mut client = FlightClient::new(channel);
        client
            .add_header("authorization", &format!("Bearer {token}"))
            .map_err(|e| Error::config("the control token is not a valid header").with_source(e))?;
        let stream = client
            .do_action(Action {
                r#type: action.into(),
                body: body.into(),
            })
            .await
            .map_err(|e| control_error(action, e))?;
        let out: Vec<_> = stream
            .try_collect()
            .await
            .map_err(|e| control_error(action, e))?;
        Ok(out.into_iter().map(|b| b.to_vec()).collect())
    })
}

fn control_error(action: &str, e: arrow_flight::error::FlightError) -> Error {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => match s.code() {
            tonic::Code::Unauthenticated => {
                Error::config(format!("control {action}: refused: {}", s.message()))
            }
            tonic::Code::InvalidArgument => {
                Error::config(format!("control {action}: {}", s.message()))
            }
            _ => Error::external(format!("control {action}: {}", s.message())),
        },
        other => Error::external(format!("control {action}: {other}")),
    }
}

/// Sets service `service` to `instances` instances in the job whose endpoint is at `addr`.
pub fn scale(addr: &str, token: &str, service: &str, instances: usize) -> Result<String> {
    let body = serde_json::json!({"service": service, "instances": instances}).to_string();
    let out = call(addr, token, "scale", body.into_bytes())?;
    Ok(out
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Every service's status in the job whose endpoint is at `addr`.
pub fn status(addr: &str, token: &str) -> Result<Vec<StatusReply>> {
    call(addr, token, "status", Vec::new())?
        .iter()
        .map(|b| {
            serde_json::from_slice(b).map_err(|e| {
                Error::external("the control endpoint sent a status that is not JSON")
                    .with_source(e)
            })
        })
        .collect()
}
