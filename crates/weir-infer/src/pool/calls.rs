//! The callers' side of the pool: making it ([`Shared::new`]), attaching and detaching,
//! scaling, its status, and one call ([`call`]: submitted, awaited with the attempt's timeout,
//! cancelled when dropped, retried with backoff).

use super::Membership;
use super::PoolConfig;
use super::state::{Answer, Phase, Shared, State};
use crate::backend::BackendFactory;
use crate::model::ModelInfo;
use crate::service::{CallOptions, InstanceStatus, ServiceStatus, Tensors};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use weir_types::{Error, Result};

impl Shared {
    /// A pool with nothing started.
    pub(super) fn new(
        config: PoolConfig,
        factory: BackendFactory,
        processes: Option<Arc<Mutex<Vec<u32>>>>,
    ) -> Self {
        let now = Instant::now();
        let state = State {
            running: false,
            attached: 0,
            target: 0,
            next_instance: 0,
            next_request: 0,
            dispatches: 0,
            instances: BTreeMap::new(),
            queue: VecDeque::new(),
            requests: HashMap::new(),
            load_failures: 0,
            broken: None,
            answered: 0,
            served: BTreeMap::new(),
            retries: 0,
            deaths: 0,
            failed: 0,
            answered_rows: 0,
            latency: vec![0; crate::service::LATENCY_BUCKETS],
            busy: Duration::ZERO,
            window_start: now,
            last_change: now,
            autoscaler: None,
        };
        let (members, _) = watch::channel(Membership::default());
        Shared {
            config,
            factory,
            info: OnceLock::new(),
            state: Mutex::new(state),
            members,
            processes,
        }
    }

    /// The model's metadata, read from its file once.
    pub(super) fn info(&self) -> Result<ModelInfo> {
        let r = self.info.get_or_init(|| {
            ModelInfo::load(&self.config.model).map_err(|e| (e.kind(), e.report()))
        });
        match r {
            Ok(i) => Ok(i.clone()),
            Err((kind, msg)) => Err(Error::new(*kind, format!("{}: {msg}", self.label()))),
        }
    }

    /// Requests answered by each instance so far.
    pub(super) fn served(&self) -> BTreeMap<u64, u64> {
        self.lock().served.clone()
    }

    pub(super) fn attach(self: &Arc<Self>) {
        let mut st = self.lock();
        st.attached += 1;
        if !st.running {
            self.start(&mut st);
        }
    }

    pub(super) fn detach(&self) {
        let mut st = self.lock();
        st.attached = st.attached.saturating_sub(1);
        if st.attached == 0 && !self.config.keep_when_detached {
            self.stop(&mut st);
        }
    }

    pub(super) fn in_use(&self) -> bool {
        self.lock().attached > 0
    }

    pub(super) fn scale(self: &Arc<Self>, instances: usize) -> Result<()> {
        let (min, max) = (self.config.min, self.config.max);
        if instances < min || instances > max {
            return Err(Error::config(format!(
                "{}: cannot scale to {instances} instances: the spec allows {min} to {max} (instances.min / instances.max)",
                self.label()
            )));
        }
        let mut st = self.lock();
        tracing::info!(
            pool = self.name(),
            from = st.target,
            to = instances,
            "scaling"
        );
        st.target = instances;
        st.last_change = Instant::now();
        self.reconcile(&mut st);
        self.dispatch(&mut st);
        self.publish(&st);
        Ok(())
    }

    pub(super) fn status(&self) -> ServiceStatus {
        let st = self.lock();
        ServiceStatus {
            name: self.config.name.clone(),
            target: st.target,
            loading: st.count(Phase::Loading),
            ready: st.count(Phase::Ready),
            draining: st.count(Phase::Draining),
            queued: st.queue.len(),
            in_flight: st.instances.values().map(|i| i.outstanding.len()).sum(),
            utilisation: st.utilisation(Instant::now()),
            answered: st.answered,
            retries: st.retries,
            deaths: st.deaths,
            failed: st.failed,
            processes: self
                .processes
                .as_ref()
                .and_then(|p| p.lock().ok().map(|p| p.clone()))
                .unwrap_or_default(),
            answered_rows: st.answered_rows,
            latency_buckets: st.latency.clone(),
            instances: st
                .instances
                .iter()
                .map(|(id, i)| InstanceStatus {
                    id: *id,
                    phase: match i.phase {
                        Phase::Loading => "loading",
                        Phase::Ready => "ready",
                        Phase::Draining => "draining",
                    }
                    .into(),
                    outstanding_requests: i.outstanding.len(),
                    outstanding_rows: i.work,
                    answered: st.served.get(id).copied().unwrap_or(0),
                    running_ms: i
                        .running
                        .as_ref()
                        .map(|(_, t)| t.elapsed().as_millis() as u64),
                })
                .collect(),
        }
    }
}

/// Cancels a request when the call future is dropped before its answer.
struct CancelOnDrop {
    shared: Arc<Shared>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel(self.id, None);
        }
    }
}

/// One call: submitted at once (so an instance can start on it before the caller first polls
/// the future), awaited with the attempt's timeout, cancelled when the future is dropped,
/// retried with backoff; the answer comes with how long the model ran for it.
pub(super) fn call(
    shared: Arc<Shared>,
    inputs: Arc<Tensors>,
    options: CallOptions,
) -> BoxFuture<'static, Result<(Tensors, Duration)>> {
    let first = shared.submit(inputs.clone()).map(|(id, rx)| {
        let guard = CancelOnDrop {
            shared: shared.clone(),
            id,
            armed: true,
        };
        (guard, rx)
    });
    Box::pin(attempts(shared, inputs, options, first))
}

async fn attempts(
    shared: Arc<Shared>,
    inputs: Arc<Tensors>,
    options: CallOptions,
    mut first: Result<(CancelOnDrop, oneshot::Receiver<Answer>)>,
) -> Result<(Tensors, Duration)> {
    let started = Instant::now();
    let rows = inputs
        .first()
        .and_then(|(_, t)| t.shape.first().copied())
        .unwrap_or(0);
    let mut backoff = options.backoff;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let submitted = if attempt == 1 {
            std::mem::replace(&mut first, Err(Error::internal("submitted twice")))
        } else {
            shared.submit(inputs.clone()).map(|(id, rx)| {
                let guard = CancelOnDrop {
                    shared: shared.clone(),
                    id,
                    armed: true,
                };
                (guard, rx)
            })
        };
        let (mut guard, rx) = submitted?;
        let id = guard.id;
        let outcome = tokio::time::timeout(options.timeout, rx).await;
        guard.armed = false;
        let err = match outcome {
            Ok(Ok(Ok(out))) => {
                shared.count_answer(rows, started.elapsed());
                return Ok(out);
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => {
                Error::external(format!("{} dropped the request (stopped)", shared.label()))
            }
            Err(_) => {
                shared.cancel(id, Some(options.timeout));
                Error::external(format!(
                    "{}: no answer within the timeout of {:?}",
                    shared.label(),
                    options.timeout
                ))
            }
        };
        if !err.kind().is_retryable() || attempt > options.retries {
            shared.count_failed();
            let msg = if attempt > 1 {
                format!("{} (gave up after {attempt} attempts)", err.message())
            } else {
                err.message().to_string()
            };
            return Err(Error::new(err.kind(), msg));
        }
        shared.count_retry();
        tracing::debug!(pool = shared.name(), attempt, error = %err.report(), "retrying a call");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
