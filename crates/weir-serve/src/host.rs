//! Shared services across processes: the service host (`weir serve-service`, [`serve_host`])
//! and the registry through which jobs find it ([`HostEntry`]).
//!
//! A service declared with `lifecycle: shared` does not run inside a job. It runs in a host
//! process of its own, which holds the [`Service`] (instances, queue, routing, scaling,
//! autoscaler, healing) and offers two endpoints:
//! - a data endpoint: Arrow Flight `DoExchange` with the tensor wire format of [`crate::flight`]
//!   (the same as a `weir serve-model` instance), each call routed through the service's queue
//!   to the instance with the least outstanding work; the caller's per-attempt timeout travels
//!   in the `weir-timeout-ms` header;
//! - a control endpoint ([`crate::control`]): `scale`, `status` and `shutdown`, token-protected.
//!
//! The host announces itself with one JSON file in the registry directory, `NAME.json` (mode
//! 0600, since it holds the control token), written once both endpoints listen and removed when
//! the host stops. Jobs find the host there ([`crate::remote::RemoteService`]); the first one to
//! find none starts the host, under a lock file (`NAME.lock`) so that jobs starting together start
//! only one. The host stops after `idle_timeout` without a call, on `shutdown`, or on SIGTERM /
//! SIGINT: it removes its registry file first (so new callers start another host), refuses new
//! calls with `UNAVAILABLE` (callers retry), waits up to the service's `grace` for the calls in
//! flight, then stops its instances.

use crate::control::{ControlEndpoint, ShutdownHook};
use crate::flight::{read_tensors, status_of, tensors_response};
use crate::service::Service;
use crate::spec::ServiceSpec;
use arrow_flight::FlightData;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};
use weir_infer::{CallOptions, ModelService};
use weir_types::{Error, Result};

/// Header carrying the caller's per-attempt timeout, in milliseconds.
pub const TIMEOUT_HEADER: &str = "weir-timeout-ms";

/// The registry directory: `$WEIR_SERVICES_DIR`, else `.weir/services` in the working directory.
pub fn registry_dir() -> PathBuf {
    std::env::var_os("WEIR_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".weir/services"))
}

/// A running service host, as its registry file (`DIR/NAME.json`) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// The service's name.
    pub service: String,
    /// The service's definition (`ServiceSpec::describe`); callers with another one refuse to
    /// attach.
    pub definition: String,
    /// `HOST:PORT` of the data endpoint (`DoExchange`).
    pub addr: String,
    /// `HOST:PORT` of the control endpoint.
    pub control_addr: String,
    /// The control endpoint's bearer token.
    pub token: String,
    /// The host's process id.
    pub pid: u32,
}

impl HostEntry {
    /// The registry file of `service` in `dir`.
    pub fn path(dir: &Path, service: &str) -> PathBuf {
        dir.join(format!("{service}.json"))
    }

    /// Writes the entry atomically (a 0600 temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::control::write_private_json(self, &Self::path(dir, &self.service), "registry entry")
    }

    /// The entry of `service` in `dir`, if there is one.
    pub fn read(dir: &Path, service: &str) -> Result<Option<Self>> {
        let path = Self::path(dir, service);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::config(format!(
                    "{} is not a weir service registry entry (remove it)",
                    path.display()
                ))
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display())).with_source(e)),
        }
    }

    /// Every entry in `dir` (unreadable files are skipped), by service name.
    pub fn list(dir: &Path) -> Vec<Self> {
        let mut out: Vec<Self> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .filter_map(|p| std::fs::read_to_string(p).ok())
                    .filter_map(|t| serde_json::from_str(&t).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// Whether the host process still runs (it exists and is not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Removes the entry if it is still this host's (another host may have replaced it).
    fn remove_if_mine(dir: &Path, service: &str, pid: u32) {
        if let Ok(Some(e)) = Self::read(dir, service)
            && e.pid == pid
        {
            let _ = std::fs::remove_file(Self::path(dir, service));
        }
    }
}

/// What `weir serve-service` is given.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The service to run (its `lifecycle` is not looked at: a host always keeps its instances).
    pub spec: ServiceSpec,
    /// Address of the data endpoint (port 0: any free port).
    pub bind: SocketAddr,
    /// Address of the control endpoint (port 0: any free port).
    pub control_bind: SocketAddr,
    /// The registry directory to announce the host in.
    pub dir: PathBuf,
    /// Stop after this long without a call; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The data endpoint's Flight service.
struct HostServer {
    service: Arc<dyn ModelService>,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    last_call: Arc<Mutex<Instant>>,
}

struct CallGuard {
    in_flight: Arc<AtomicUsize>,
    last_call: Arc<Mutex<Instant>>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.last_call.lock() {
            *t = Instant::now();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl FlightService for HostServer {
    crate::not_offered::flight_stream_types!();

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the service host is shutting down"));
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard {
            in_flight: self.in_flight.clone(),
            last_call: self.last_call.clone(),
        };
        let timeout = request
            .metadata()
            .get(TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(CallOptions::default().timeout, Duration::from_millis);
        let inputs = read_tensors(request).await?;
        // The caller retries; the host makes one attempt (re-dispatching it if an instance dies).
        let options = CallOptions {
            timeout,
            retries: 0,
            ..CallOptions::default()
        };
        let out = self
            .service
            .call(inputs, &options)
            .await
            .map_err(|e| status_of(&e))?;
        drop(guard);
        tensors_response(&out)
    }

    crate::not_offered::flight_not_offered!(
        handshake,
        list_flights,
        get_flight_info,
        poll_flight_info,
        get_schema,
        do_get,
        do_put,
        do_action,
        list_actions
    );
}

/// Runs a service host until it is idle for `idle_timeout`, told to `shutdown`, or gets SIGTERM
/// or SIGINT (see the module docs). Prints `serving NAME on ADDR (control CONTROL)` on stdout
/// once the registry entry is written.
pub async fn serve_host(opts: HostOptions) -> Result<()> {
    let name = opts.spec.name.clone();
    let grace = opts.spec.grace;
    let service = Arc::new(Service::new(opts.spec)?);
    let definition = service.definition();
    let dyn_service: Arc<dyn ModelService> = service.clone();
    dyn_service.attach()?;

    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let hook_tx = stop_tx.clone();
    let hook: ShutdownHook = Arc::new(move || {
        let _ = hook_tx.send("shutdown requested");
    });
    let control =
        ControlEndpoint::start_on(opts.control_bind, Some(hook), vec![dyn_service.clone()])?;

    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .map_err(|e| {
            Error::io(format!(
                "cannot listen on {} for service '{name}'",
                opts.bind
            ))
            .with_source(e)
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address").with_source(e))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "service '{name}' data endpoint bound to {addr}: reachable from the network without authentication"
        );
    }
    let draining = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let last_call = Arc::new(Mutex::new(Instant::now()));
    let server = HostServer {
        service: dyn_service.clone(),
        draining: draining.clone(),
        in_flight: in_flight.clone(),
        last_call: last_call.clone(),
    };
    let pid = std::process::id();
    HostEntry {
        service: name.clone(),
        definition,
        addr: addr.to_string(),
        control_addr: control.addr().to_string(),
        token: control.token().to_string(),
        pid,
    }
    .write(&opts.dir)?;
    println!(
        "serving {name} on {addr} (control {}, registry {})",
        control.addr(),
        HostEntry::path(&opts.dir, &name).display()
    );
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(server))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = server_stop_rx.await;
            },
        );
    let mut serve = Box::pin(serve);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::internal("cannot install the SIGTERM handler").with_source(e))?;
    if let Some(idle) = opts.idle_timeout {
        let (in_flight, last_call, stop_tx) = (in_flight.clone(), last_call.clone(), stop_tx);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250).min(idle)).await;
                let quiet = last_call.lock().map(|t| t.elapsed()).unwrap_or_default();
                if in_flight.load(Ordering::SeqCst) == 0 && quiet >= idle {
                    let _ = stop_tx.send("idle");
                    return;
                }
            }
        });
    }
    let why = tokio::select! {
        r = &mut serve => {
            HostEntry::remove_if_mine(&opts.dir, &name, pid);
            return r.map_err(|e| Error::external("the service host's flight server failed").with_source(e));
        }
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
        Some(why) = stop_rx.recv() => why,
    };
    HostEntry::remove_if_mine(&opts.dir, &name, pid);
    draining.store(true, Ordering::SeqCst);
    let n = in_flight.load(Ordering::SeqCst);
    tracing::info!(service = name, reason = why, in_flight = n, grace = ?grace, "service host stopping");
    let deadline = tokio::time::Instant::now() + grace;
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = server_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_millis(500), serve).await;
    drop(control);
    service.stop();
    tracing::info!(service = name, reason = why, "service host stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_round_trip_and_belong_to_their_host() {
        let dir = tempfile::tempdir().unwrap();
        let e = HostEntry {
            service: "clf".into(),
            definition: "service clf ...".into(),
            addr: "127.0.0.1:1".into(),
            control_addr: "127.0.0.1:2".into(),
            token: "t".into(),
            pid: std::process::id(),
        };
        assert_eq!(HostEntry::read(dir.path(), "clf").unwrap(), None);
        e.write(dir.path()).unwrap();
        assert_eq!(HostEntry::read(dir.path(), "clf").unwrap(), Some(e.clone()));
        assert!(e.alive(), "this process runs");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(HostEntry::path(dir.path(), "clf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the entry holds a token");
        assert_eq!(HostEntry::list(dir.path()), vec![e.clone()]);
        // Another host's pid does not remove it; its own does.
        HostEntry::remove_if_mine(dir.path(), "clf", e.pid + 1);
        assert!(HostEntry::read(dir.path(), "clf").unwrap().is_some());
        HostEntry::remove_if_mine(dir.path(), "clf", e.pid);
        assert_eq!(HostEntry::read(dir.path(), "clf").unwrap(), None);
        let gone = HostEntry { pid: u32::MAX, ..e };
        assert!(!gone.alive());
        std::fs::write(HostEntry::path(dir.path(), "bad"), "{").unwrap();
        let err = HostEntry::read(dir.path(), "bad").unwrap_err().report();
        assert!(err.contains("not a weir service registry entry"), "{err}");
    }
}
