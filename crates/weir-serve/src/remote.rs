//! A job's side of a shared service ([`RemoteService`]): a `weir_infer::ModelService` whose
//! instances run in a service host process ([`crate::host`]), found in the registry directory
//! and started there when no host runs yet.
//!
//! Calls go to the host's data endpoint over Arrow Flight (the tensor wire format of
//! [`crate::flight`]) with this caller's timeout, retries and backoff; `scale` and `status` go to
//! the host's control endpoint with the token from the registry file. When the host is gone
//! (killed, stopped, idle), the next attempt finds no live entry and starts a new host, so a
//! caller with retries left rides through the host's death: calls are only answered once, as the
//! `infer` operator emits a row only for an answer.

use crate::control::{self, StatusReply};
use crate::flight::{Outcome, exchange};
use crate::host::{HostEntry, TIMEOUT_HEADER};
use crate::spec::ServiceSpec;
use arrow_flight::FlightClient;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use weir_infer::{CallOptions, ModelInfo, ModelService, ServiceStatus, Tensors};
use weir_types::{Error, ErrorKind, Result};

/// How long a job waits for a host it started to announce itself.
const HOST_START: Duration = Duration::from_secs(60);

/// How long a status read from the host is reused (progress displays ask every tick).
const STATUS_TTL: Duration = Duration::from_millis(500);

/// What the call futures share.
struct Inner {
    spec: ServiceSpec,
    definition: String,
    /// The service's declaration as JSON, handed to a host this job starts.
    launch: String,
    dir: PathBuf,
    /// The connection to the current host, if one is open.
    conn: Mutex<Option<(HostEntry, tonic::transport::Channel)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteService")
            .field("service", &self.spec.name)
            .field("registry", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn name(&self) -> &str {
        &self.spec.name
    }

    /// The live host's entry with our definition; `None` when no live host is registered.
    fn live_entry(&self) -> Result<Option<HostEntry>> {
        let Some(e) = HostEntry::read(&self.dir, self.name())? else {
            return Ok(None);
        };
        if !e.alive() {
            return Ok(None);
        }
        if e.definition != self.definition {
            return Err(Error::config(format!(
                "shared service '{}' already runs (host pid {}, registry {}) with another definition: {}; this job declares: {}. Stop it with `weir stop-service {}` or give this one another name",
                self.name(),
                e.pid,
                self.dir.display(),
                e.definition,
                self.definition,
                self.name()
            )));
        }
        Ok(Some(e))
    }

    /// The running host's entry, starting a host when none runs (blocking: may wait for the new
    /// host to announce itself).
    fn ensure_host(&self) -> Result<HostEntry> {
        if let Some(e) = self.live_entry()? {
            return Ok(e);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Error::io(format!(
                "cannot create the service registry {}",
                self.dir.display()
            ))
            .with_source(e)
        })?;
        let lock_path = self.dir.join(format!("{}.lock", self.name()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                Error::io(format!("cannot open {}", lock_path.display())).with_source(e)
            })?;
        lock.lock().map_err(|e| {
            Error::io(format!("cannot lock {}", lock_path.display())).with_source(e)
        })?;
        // Another job may have started it while this one waited for the lock.
        if let Some(e) = self.live_entry()? {
            return Ok(e);
        }
        self.start_host()
    }

    fn start_host(&self) -> Result<HostEntry> {
        let exe = host_executable(self.name())?;
        let log_path = self.dir.join(format!("{}.log", self.name()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("cannot open {}", log_path.display())).with_source(e))?;
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(&exe)
            .arg("serve-service")
            .arg("--definition")
            .arg(&self.launch)
            .arg("--services-dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the job does not stop the shared host.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::external(format!(
                    "cannot start the host of shared service '{}' ({})",
                    self.name(),
                    exe.display()
                ))
                .with_source(e)
            })?;
        let pid = child.id();
        tracing::info!(
            service = self.name(),
            pid,
            log = %log_path.display(),
            "started a host for the shared service"
        );
        let started = Instant::now();
        loop {
            if let Some(e) = HostEntry::read(&self.dir, self.name())?
                && e.pid == pid
            {
                // Reaps the host if it ends while this process still runs.
                let _ = std::thread::Builder::new()
                    .name("weir-host-reaper".into())
                    .spawn(move || child.wait());
                return Ok(e);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(Error::external(format!(
                    "the host of shared service '{}' exited ({status}) before it served; last lines of {}: {}",
                    self.name(),
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if started.elapsed() > HOST_START {
                let _ = child.kill();
                return Err(Error::external(format!(
                    "the host of shared service '{}' did not announce itself within {HOST_START:?} (see {})",
                    self.name(),
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A channel to the host, connecting (and starting a host) when none is open.
    async fn channel(self: &Arc<Self>) -> Result<tonic::transport::Channel> {
        if let Some((_, c)) = self.conn.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let me = self.clone();
        let entry = tokio::task::spawn_blocking(move || me.ensure_host())
            .await
            .map_err(|e| Error::internal("the host lookup panicked").with_source(e))??;
        let url = format!("http://{}", entry.addr);
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .map_err(|e| Error::config(format!("bad service host address {url}")).with_source(e))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                Error::external(format!(
                    "cannot connect to the host of shared service '{}' at {url}",
                    self.name()
                ))
                .with_source(e)
            })?;
        if let Ok(mut c) = self.conn.lock() {
            *c = Some((entry, channel.clone()));
        }
        Ok(channel)
    }

    fn forget_connection(&self) {
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// The host's entry for control calls (starting none).
    fn control_entry(&self) -> Result<HostEntry> {
        self.live_entry()?.ok_or_else(|| {
            Error::external(format!(
                "shared service '{}' has no running host (registry {})",
                self.name(),
                self.dir.display()
            ))
        })
    }

    /// One attempt.
    async fn attempt(self: &Arc<Self>, inputs: &Tensors, timeout: Duration) -> Result<Tensors> {
        let channel = self.channel().await?;
        let mut client = FlightClient::new(channel);
        client
            .add_header(TIMEOUT_HEADER, &timeout.as_millis().to_string())
            .map_err(|e| Error::internal("cannot set the timeout header").with_source(e))?;
        match exchange(&mut client, inputs).await? {
            Outcome::Answer(out) => Ok(out),
            Outcome::Failed(e) => Err(e),
            Outcome::Gone(why) => {
                self.forget_connection();
                Err(Error::external(format!(
                    "the host of shared service '{}' is gone or going ({why})",
                    self.name()
                )))
            }
        }
    }
}

async fn call(inner: Arc<Inner>, inputs: Tensors, options: CallOptions) -> Result<Tensors> {
    let mut backoff = options.backoff;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let err =
            match tokio::time::timeout(options.timeout, inner.attempt(&inputs, options.timeout))
                .await
            {
                Ok(Ok(out)) => return Ok(out),
                Ok(Err(e)) => e,
                Err(_) => Error::external(format!(
                    "shared service '{}': no answer within the timeout of {:?}",
                    inner.name(),
                    options.timeout
                )),
            };
        if !err.kind().is_retryable() || attempt > options.retries {
            let msg = if attempt > 1 {
                format!("{} (gave up after {attempt} attempts)", err.message())
            } else {
                err.message().to_string()
            };
            return Err(Error::new(err.kind(), msg));
        }
        tracing::debug!(service = inner.name(), attempt, error = %err.report(), "retrying a call to the shared service");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs `f` on a thread of its own: control calls build a runtime of their own, which must not
/// happen on a runtime's thread (the control endpoint and progress display call from those).
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::Builder::new()
        .name("weir-remote-control".into())
        .spawn(f)
        .map_err(|e| Error::internal("cannot start a control thread").with_source(e))?
        .join()
        .map_err(|_| Error::internal("a control call panicked"))?
}

/// The `weir` executable a job starts hosts with: this program when it is `weir`, else
/// `$WEIR_EXE`.
fn host_executable(service: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_EXE") {
        return Ok(PathBuf::from(p));
    }
    crate::service::this_weir(
        &format!("shared service '{service}': its host is started as `weir serve-service`"),
        "set WEIR_EXE to the weir binary",
    )
}

/// A shared service as one job sees it. See the module docs.
#[derive(Debug)]
pub struct RemoteService {
    inner: Arc<Inner>,
    /// Runs the calls (its tonic channels live on it), whichever runtime awaits them.
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    info: OnceLock<std::result::Result<ModelInfo, (ErrorKind, String)>>,
    attached: AtomicUsize,
    status: Mutex<Option<(Instant, ServiceStatus)>>,
}

impl RemoteService {
    /// The shared service `spec`, whose declaration as JSON is `launch` (what a host started by
    /// this job is given), announced in the registry directory `dir`. Starts nothing.
    pub fn new(spec: ServiceSpec, launch: String, dir: PathBuf) -> Result<Self> {
        spec.validate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("weir-remote-{}", spec.name))
            .enable_all()
            .build()
            .map_err(|e| {
                Error::internal("cannot build a runtime for a shared service's calls")
                    .with_source(e)
            })?;
        Ok(RemoteService {
            inner: Arc::new(Inner {
                definition: spec.describe(),
                spec,
                launch,
                dir,
                conn: Mutex::new(None),
            }),
            rt: Some(rt),
            info: OnceLock::new(),
            attached: AtomicUsize::new(0),
            status: Mutex::new(None),
        })
    }

    /// The host serving this service now, if one runs.
    pub fn host(&self) -> Result<Option<HostEntry>> {
        self.inner.live_entry()
    }
}

impl ModelService for RemoteService {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn definition(&self) -> String {
        self.inner.definition.clone()
    }

    fn info(&self) -> Result<ModelInfo> {
        let r = self.info.get_or_init(|| {
            ModelInfo::load(&self.inner.spec.model).map_err(|e| (e.kind(), e.report()))
        });
        match r {
            Ok(i) => Ok(i.clone()),
            Err((kind, msg)) => Err(Error::new(
                *kind,
                format!("service '{}': {msg}", self.inner.spec.name),
            )),
        }
    }

    fn max_batch(&self) -> Option<usize> {
        Some(self.inner.spec.batch.max_size)
    }

    fn attach(&self) -> Result<()> {
        let inner = self.inner.clone();
        off_runtime(move || inner.ensure_host())?;
        self.attached.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn detach(&self) {
        // The host keeps running for other jobs; it stops on its own when idle.
        let _ = self
            .attached
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    fn in_use(&self) -> bool {
        self.attached.load(Ordering::SeqCst) > 0
    }

    fn call(&self, inputs: Tensors, options: &CallOptions) -> BoxFuture<'static, Result<Tensors>> {
        let name = self.inner.name().to_string();
        let Some(rt) = &self.rt else {
            return futures::future::ready(Err(Error::internal(format!(
                "shared service '{name}' was dropped"
            ))))
            .boxed();
        };
        let task = rt.spawn(call(self.inner.clone(), inputs, options.clone()));
        // Dropping the returned future aborts the call (and so its request on the host).
        let abort = task.abort_handle();
        let guard = AbortOnDrop(Some(abort));
        async move {
            let r = task.await;
            drop(guard);
            r.map_err(|e| {
                Error::internal(format!("a call to shared service '{name}' panicked"))
                    .with_source(e)
            })?
        }
        .boxed()
    }

    fn scale(&self, instances: usize) -> Result<()> {
        let entry = self.inner.control_entry()?;
        let name = self.name().to_string();
        off_runtime(move || control::scale(&entry.control_addr, &entry.token, &name, instances))?;
        if let Ok(mut s) = self.status.lock() {
            *s = None;
        }
        Ok(())
    }

    fn status(&self) -> ServiceStatus {
        if let Ok(s) = self.status.lock()
            && let Some((at, st)) = s.as_ref()
            && at.elapsed() < STATUS_TTL
        {
            return st.clone();
        }
        let inner = self.inner.clone();
        let fetched = off_runtime(move || {
            let entry = inner.control_entry()?;
            let replies: Vec<StatusReply> = control::status(&entry.control_addr, &entry.token)?;
            replies
                .into_iter()
                .find(|r| r.status.name == inner.spec.name)
                .map(|r| r.status)
                .ok_or_else(|| Error::external("the host did not report the service"))
        });
        let st = fetched.unwrap_or_else(|e| {
            tracing::debug!(service = self.name(), error = %e.report(), "no status from the shared service's host");
            ServiceStatus {
                name: self.name().to_string(),
                ..ServiceStatus::default()
            }
        });
        if let Ok(mut s) = self.status.lock() {
            *s = Some((Instant::now(), st.clone()));
        }
        st
    }
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abort();
        }
    }
}

impl Drop for RemoteService {
    fn drop(&mut self) {
        // Calls still running end with the runtime (without blocking: this may run on a
        // runtime's thread).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
