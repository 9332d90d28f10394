//! The running service ([`Service`]): its instances, the queue of requests waiting for one,
//! routing by least outstanding work, scaling, draining, and what happens when an instance dies.
//!
//! All of it is one state value behind one mutex ([`State`]), changed only by short functions
//! that never block and never await while holding it: callers submit and cancel requests,
//! instance threads report "loaded", "done" and "died", the autoscaler sets a target. Every
//! request is in exactly one place at a time (the queue, or one instance's outstanding set) and
//! has one reply sender, which is consumed when it is answered; that is what makes "none lost,
//! none answered twice" hold through scaling and deaths.

use crate::autoscale::{self, Observation};
use crate::instance::{self, Part, Work};
use crate::spec::{Lifecycle, Placement, ServiceSpec};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use weir_infer::{
    BackendFactory, BackendOptions, CallOptions, InstanceStatus, ModelInfo, ModelService,
    OrtBackend, ServiceStatus, Tensors,
};
use weir_types::{Error, ErrorKind, Result};

/// Which instances a service has, pushed to subscribers on every change
/// ([`Service::members`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Instances the service wants.
    pub target: usize,
    /// Instances loading their model or warming up (not routable).
    pub loading: Vec<u64>,
    /// Instances receiving requests.
    pub ready: Vec<u64>,
    /// Instances finishing their requests before they stop (not routable).
    pub draining: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
    Draining,
}

/// One instance as the service sees it.
#[derive(Debug)]
struct Inst {
    phase: Phase,
    jobs: mpsc::Sender<Work>,
    /// Requests sent to it and not answered.
    outstanding: BTreeSet<u64>,
    /// Rows of those requests: the work the router balances.
    work: usize,
    /// When it was last sent work (a dispatch count): among equally loaded instances the one
    /// that waited longest gets the next request, so light load still reaches every instance.
    last_sent: u64,
    /// The requests it is running (one batch) and since when.
    running: Option<(Vec<u64>, Instant)>,
}

/// A request not answered yet.
#[derive(Debug)]
struct Pending {
    inputs: Arc<Tensors>,
    rows: usize,
    reply: oneshot::Sender<Result<Tensors>>,
    /// The instance holding it; `None` while queued.
    on: Option<u64>,
    /// Instances that died while running it.
    deaths: u32,
    /// Never merged with other requests again: it was in a merged batch that failed or killed
    /// its instance, so it runs alone to find out whether it is the cause.
    alone: bool,
}

/// Everything that changes, behind one mutex.
#[derive(Debug)]
struct State {
    running: bool,
    attached: usize,
    target: usize,
    next_instance: u64,
    next_request: u64,
    /// Dispatches so far (stamps `Inst::last_sent`).
    dispatches: u64,
    instances: BTreeMap<u64, Inst>,
    queue: VecDeque<u64>,
    requests: HashMap<u64, Pending>,
    load_failures: u32,
    broken: Option<String>,
    answered: u64,
    /// Requests answered per instance (also instances gone since).
    served: BTreeMap<u64, u64>,
    retries: u64,
    deaths: u64,
    failed: u64,
    answered_rows: u64,
    latency: Vec<u64>,
    busy: Duration,
    window_start: Instant,
    last_change: Instant,
    /// Dropping it stops the autoscaler thread.
    autoscaler: Option<mpsc::Sender<()>>,
}

impl State {
    fn count(&self, phase: Phase) -> usize {
        self.instances.values().filter(|i| i.phase == phase).count()
    }

    /// Instances that are not draining.
    fn live(&self) -> usize {
        self.instances
            .values()
            .filter(|i| i.phase != Phase::Draining)
            .count()
    }

    fn utilisation(&self, now: Instant) -> f64 {
        let ready = self.count(Phase::Ready).max(1);
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed.is_zero() {
            return 0.0;
        }
        let running: Duration = self
            .instances
            .values()
            .filter_map(|i| {
                i.running
                    .as_ref()
                    .map(|(_, t)| now.saturating_duration_since(*t))
            })
            .sum();
        let busy = (self.busy + running).as_secs_f64();
        (busy / (elapsed.as_secs_f64() * ready as f64)).min(1.0)
    }
}

/// What the instance threads, the autoscaler and callers share.
pub(crate) struct Shared {
    pub(crate) spec: ServiceSpec,
    pub(crate) factory: BackendFactory,
    info: OnceLock<std::result::Result<ModelInfo, (ErrorKind, String)>>,
    state: Mutex<State>,
    members: watch::Sender<Membership>,
    /// Process ids of the instance processes started so far (`placement: process`).
    processes: Option<Arc<Mutex<Vec<u32>>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("service", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the state is half-changed (no user code runs under the
        // lock), so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn publish(&self, st: &State) {
        let ids = |p: Phase| -> Vec<u64> {
            st.instances
                .iter()
                .filter(|(_, i)| i.phase == p)
                .map(|(id, _)| *id)
                .collect()
        };
        let m = Membership {
            target: st.target,
            loading: ids(Phase::Loading),
            ready: ids(Phase::Ready),
            draining: ids(Phase::Draining),
        };
        self.members.send_if_modified(|old| {
            if *old == m {
                false
            } else {
                *old = m;
                true
            }
        });
    }

    /// Starts or drains instances until the live ones match the target.
    fn reconcile(self: &Arc<Self>, st: &mut State) {
        if !st.running {
            return;
        }
        while st.live() < st.target && st.broken.is_none() {
            self.spawn_instance(st);
        }
        let mut excess = st.live().saturating_sub(st.target);
        if excess == 0 {
            return;
        }
        // Loading instances go first (newest first), then the ready ones with the least work.
        let mut victims: Vec<(u8, usize, std::cmp::Reverse<u64>)> = st
            .instances
            .iter()
            .filter(|(_, i)| i.phase != Phase::Draining)
            .map(|(id, i)| {
                let rank = if i.phase == Phase::Loading { 0 } else { 1 };
                (rank, i.work, std::cmp::Reverse(*id))
            })
            .collect();
        victims.sort();
        for (_, _, std::cmp::Reverse(id)) in victims {
            if excess == 0 {
                break;
            }
            excess -= 1;
            let Some(inst) = st.instances.get_mut(&id) else {
                continue;
            };
            if inst.phase == Phase::Loading || inst.outstanding.is_empty() {
                st.instances.remove(&id);
                tracing::info!(service = self.name(), instance = id, "instance stopped");
            } else {
                inst.phase = Phase::Draining;
                tracing::info!(
                    service = self.name(),
                    instance = id,
                    in_flight = inst.outstanding.len(),
                    "instance draining"
                );
            }
        }
    }

    fn spawn_instance(self: &Arc<Self>, st: &mut State) {
        let id = st.next_instance;
        st.next_instance += 1;
        let (tx, rx) = mpsc::channel();
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weir-serve-{}-{id}", self.name()))
            .spawn(move || instance::run(shared, id, rx));
        match spawned {
            Ok(_) => {
                tracing::info!(service = self.name(), instance = id, "instance starting");
                st.instances.insert(
                    id,
                    Inst {
                        phase: Phase::Loading,
                        jobs: tx,
                        outstanding: BTreeSet::new(),
                        work: 0,
                        running: None,
                        last_sent: 0,
                    },
                );
            }
            Err(e) => {
                st.broken = Some(format!("cannot start an instance thread: {e}"));
            }
        }
    }

    /// Sends queued requests to ready instances with room, least outstanding work first.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        let window = self.spec.window;
        while let Some(&req) = st.queue.front() {
            let best = st
                .instances
                .iter()
                .filter(|(_, i)| i.phase == Phase::Ready && i.outstanding.len() < window)
                .min_by_key(|(id, i)| (i.work, i.last_sent, **id))
                .map(|(id, _)| *id);
            let Some(inst_id) = best else {
                break;
            };
            st.queue.pop_front();
            let Some(p) = st.requests.get(&req) else {
                continue;
            };
            let mut parts = vec![Part {
                id: req,
                rows: p.rows,
                inputs: p.inputs.clone(),
            }];
            let mut rows = p.rows;
            if self.spec.batch.merge && !p.alone {
                // Requests waiting behind it join its batch while they fit.
                while let Some(&next) = st.queue.front() {
                    let Some(q) = st.requests.get(&next) else {
                        st.queue.pop_front();
                        continue;
                    };
                    if q.alone
                        || rows + q.rows > self.spec.batch.max_size
                        || !instance::mergeable(&p.inputs, &q.inputs)
                    {
                        break;
                    }
                    st.queue.pop_front();
                    rows += q.rows;
                    parts.push(Part {
                        id: next,
                        rows: q.rows,
                        inputs: q.inputs.clone(),
                    });
                }
            }
            let ids: Vec<u64> = parts.iter().map(|p| p.id).collect();
            let Some(inst) = st.instances.get_mut(&inst_id) else {
                continue;
            };
            if inst.jobs.send(Work { parts }).is_err() {
                // Its thread is gone: put the requests back and bury the instance.
                for r in ids.iter().rev() {
                    st.queue.push_front(*r);
                }
                self.bury(st, inst_id, format!("instance {inst_id}'s thread ended"));
                continue;
            }
            st.dispatches += 1;
            inst.last_sent = st.dispatches;
            inst.outstanding.extend(ids.iter().copied());
            inst.work += rows;
            for r in &ids {
                if let Some(p) = st.requests.get_mut(r) {
                    p.on = Some(inst_id);
                }
            }
        }
    }

    /// Removes a dead instance: each request it was running counts a death (and fails once it
    /// has killed `max_deaths` instances) and runs alone from now on; its other requests go back
    /// to the front of the queue.
    fn bury(self: &Arc<Self>, st: &mut State, id: u64, reason: String) {
        let Some(inst) = st.instances.remove(&id) else {
            return;
        };
        st.deaths += 1;
        tracing::warn!(service = self.name(), instance = id, reason = %reason, "instance died; re-dispatching its requests");
        let culprits = inst.running.map(|(r, _)| r).unwrap_or_default();
        for req in inst.outstanding.iter().rev() {
            let Some(p) = st.requests.get_mut(req) else {
                continue;
            };
            p.on = None;
            if culprits.contains(req) {
                p.deaths += 1;
                p.alone = true;
                if p.deaths >= self.spec.max_deaths {
                    let n = p.deaths;
                    self.fail(
                        st,
                        *req,
                        Error::input(format!(
                            "service '{}': this request was running on {n} instances that died (last: {reason}); given up after max_deaths = {}",
                            self.name(),
                            self.spec.max_deaths
                        )),
                    );
                    continue;
                }
            }
            st.queue.push_front(*req);
        }
        self.reconcile(st);
        self.dispatch(st);
        self.publish(st);
    }

    fn fail(&self, st: &mut State, req: u64, err: Error) {
        st.queue.retain(|r| *r != req);
        if let Some(p) = st.requests.remove(&req) {
            // Counted as failed by the caller, which gets the error.
            let _ = p.reply.send(Err(err));
        }
    }

    // ---- called by instance threads ----

    /// An instance loaded and warmed up; returns whether it should serve (false when it was
    /// stopped meanwhile).
    pub(crate) fn on_ready(self: &Arc<Self>, id: u64) -> bool {
        let mut st = self.lock();
        let Some(inst) = st.instances.get_mut(&id) else {
            return false;
        };
        inst.phase = Phase::Ready;
        st.load_failures = 0;
        tracing::info!(
            service = self.name(),
            instance = id,
            "instance ready (model loaded, warm-up batch run)"
        );
        self.dispatch(&mut st);
        self.publish(&st);
        true
    }

    pub(crate) fn on_load_failed(self: &Arc<Self>, id: u64, err: Error) {
        let mut st = self.lock();
        if st.instances.remove(&id).is_none() {
            return;
        }
        st.load_failures += 1;
        tracing::warn!(service = self.name(), instance = id, error = %err.report(), "instance failed to load");
        if st.load_failures >= self.spec.max_load_failures {
            let msg = format!(
                "service '{}': {} instances failed to load in a row; last: {}",
                self.name(),
                st.load_failures,
                err.report()
            );
            st.broken = Some(msg.clone());
            if st.count(Phase::Ready) == 0 {
                let queued: Vec<u64> = st.queue.drain(..).collect();
                for req in queued {
                    self.fail(&mut st, req, Error::config(msg.clone()));
                }
            }
        }
        self.reconcile(&mut st);
        self.publish(&st);
    }

    /// The instance takes `work` from its channel; false when none of its requests is still the
    /// instance's (all cancelled), then it skips it. A batch with some requests cancelled runs
    /// whole; their answers are dropped.
    pub(crate) fn take_work(self: &Arc<Self>, id: u64, work: &Work) -> bool {
        let mut st = self.lock();
        let mine = work
            .parts
            .iter()
            .any(|w| st.requests.get(&w.id).is_some_and(|p| p.on == Some(id)));
        let Some(inst) = st.instances.get_mut(&id) else {
            return false;
        };
        if mine {
            inst.running = Some((work.parts.iter().map(|w| w.id).collect(), Instant::now()));
            return true;
        }
        for w in &work.parts {
            inst.outstanding.remove(&w.id);
        }
        inst.work = inst.work.saturating_sub(work.rows());
        if inst.phase == Phase::Draining && inst.outstanding.is_empty() {
            st.instances.remove(&id);
        }
        self.dispatch(&mut st);
        self.publish(&st);
        false
    }

    /// The instance ran `work`: each request still its own gets its rows of the answer. A merged
    /// batch that failed is not failed: its requests go back to the queue to run alone.
    pub(crate) fn on_complete(
        self: &Arc<Self>,
        id: u64,
        work: &Work,
        result: Result<Tensors>,
        run: Duration,
    ) {
        let mut st = self.lock();
        st.busy += run;
        let Some(inst) = st.instances.get_mut(&id) else {
            // Declared hung or stopped meanwhile: the request was handed to someone else.
            return;
        };
        inst.running = None;
        for w in &work.parts {
            inst.outstanding.remove(&w.id);
        }
        inst.work = inst.work.saturating_sub(work.rows());
        if inst.phase == Phase::Draining && inst.outstanding.is_empty() {
            st.instances.remove(&id);
            tracing::info!(
                service = self.name(),
                instance = id,
                "instance drained and stopped"
            );
        }
        let mine: Vec<usize> = (0..work.parts.len())
            .filter(|&i| {
                st.requests
                    .get(&work.parts[i].id)
                    .is_some_and(|p| p.on == Some(id))
            })
            .collect();
        match result {
            Ok(out) if work.parts.len() == 1 => {
                if !mine.is_empty() {
                    self.answer(&mut st, id, work.parts[0].id, Ok(out));
                }
            }
            Ok(out) => {
                let rows: Vec<usize> = work.parts.iter().map(|w| w.rows).collect();
                match instance::split(&out, &rows) {
                    Ok(pieces) => {
                        for (i, piece) in pieces.into_iter().enumerate() {
                            if mine.contains(&i) {
                                self.answer(&mut st, id, work.parts[i].id, Ok(piece));
                            }
                        }
                    }
                    Err(e) => {
                        for &i in &mine {
                            let err = Error::new(e.kind(), e.report());
                            self.answer(&mut st, id, work.parts[i].id, Err(err));
                        }
                    }
                }
            }
            Err(e) if work.parts.len() == 1 => {
                if !mine.is_empty() {
                    self.answer(&mut st, id, work.parts[0].id, Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(service = self.name(), instance = id, requests = work.parts.len(), error = %e.report(), "a merged batch failed; running its requests one by one");
                for &i in mine.iter().rev() {
                    let req = work.parts[i].id;
                    if let Some(p) = st.requests.get_mut(&req) {
                        p.on = None;
                        p.alone = true;
                        st.queue.push_front(req);
                    }
                }
            }
        }
        self.dispatch(&mut st);
        self.publish(&st);
    }

    fn answer(&self, st: &mut State, instance: u64, req: u64, result: Result<Tensors>) {
        if let Some(p) = st.requests.remove(&req) {
            if result.is_ok() {
                st.answered += 1;
                *st.served.entry(instance).or_default() += 1;
            }
            let _ = p.reply.send(result);
        }
    }

    pub(crate) fn on_death(self: &Arc<Self>, id: u64, reason: String) {
        let mut st = self.lock();
        self.bury(&mut st, id, reason);
    }

    // ---- called by callers ----

    fn submit(
        self: &Arc<Self>,
        inputs: Arc<Tensors>,
    ) -> Result<(u64, oneshot::Receiver<Result<Tensors>>)> {
        let mut st = self.lock();
        if !st.running {
            return Err(Error::internal(format!(
                "service '{}' is not running (called before attach); this is a bug, please report it",
                self.name()
            )));
        }
        if let Some(b) = &st.broken
            && st.count(Phase::Ready) == 0
        {
            return Err(Error::config(b.clone()));
        }
        let rows = inputs
            .first()
            .and_then(|(_, t)| t.shape.first().copied())
            .unwrap_or(0);
        let id = st.next_request;
        st.next_request += 1;
        let (tx, rx) = oneshot::channel();
        st.requests.insert(
            id,
            Pending {
                inputs,
                rows,
                reply: tx,
                on: None,
                deaths: 0,
                alone: false,
            },
        );
        st.queue.push_back(id);
        self.dispatch(&mut st);
        Ok((id, rx))
    }

    /// The caller gave up on `req` (dropped, or its attempt timed out after `timeout`). A
    /// request running for at least half the timeout marks its instance hung: it is replaced.
    fn cancel(self: &Arc<Self>, req: u64, timeout: Option<Duration>) {
        let mut st = self.lock();
        st.queue.retain(|r| *r != req);
        let Some(p) = st.requests.remove(&req) else {
            return;
        };
        let Some(on) = p.on else {
            return;
        };
        let hung = match (timeout, st.instances.get(&on)) {
            (Some(t), Some(inst)) => inst
                .running
                .as_ref()
                .is_some_and(|(r, since)| r.contains(&req) && since.elapsed() >= t / 2),
            _ => false,
        };
        if hung {
            let t = timeout.unwrap_or_default();
            if let Some(inst) = st.instances.get_mut(&on) {
                inst.outstanding.remove(&req);
                inst.running = None;
            }
            self.bury(
                &mut st,
                on,
                format!("instance {on} hung: no answer within {t:?}"),
            );
        }
    }

    fn count_retry(&self) {
        self.lock().retries += 1;
    }

    fn count_failed(&self) {
        self.lock().failed += 1;
    }

    fn count_answer(&self, rows: usize, latency: Duration) {
        let mut st = self.lock();
        st.answered_rows += rows as u64;
        let b = weir_infer::service::latency_bucket(latency);
        if let Some(n) = st.latency.get_mut(b) {
            *n += 1;
        }
    }

    // ---- lifecycle ----

    fn start(self: &Arc<Self>, st: &mut State) {
        st.running = true;
        st.broken = None;
        st.load_failures = 0;
        if st.target == 0 {
            st.target = self.spec.instances.initial;
        }
        st.window_start = Instant::now();
        st.busy = Duration::ZERO;
        if let Some(a) = &self.spec.autoscale {
            match autoscale::spawn(Arc::downgrade(self), a.interval) {
                Ok(stop) => st.autoscaler = Some(stop),
                Err(e) => {
                    tracing::warn!(service = self.name(), error = %e.report(), "autoscaler not started")
                }
            }
        }
        tracing::info!(
            service = self.name(),
            instances = st.target,
            "service starting"
        );
        self.reconcile(st);
        self.publish(st);
    }

    fn stop(&self, st: &mut State) {
        if !st.running {
            return;
        }
        st.running = false;
        st.target = 0;
        st.autoscaler = None;
        st.instances.clear();
        st.queue.clear();
        for (_, p) in st.requests.drain() {
            let _ = p.reply.send(Err(Error::external(format!(
                "service '{}' stopped before answering",
                self.spec.name
            ))));
        }
        tracing::info!(service = self.name(), "service stopped");
        self.publish(st);
    }

    /// One autoscaler look: may change the target by one instance.
    pub(crate) fn autoscale_tick(self: &Arc<Self>) {
        let Some(policy) = &self.spec.autoscale else {
            return;
        };
        let mut st = self.lock();
        if !st.running {
            return;
        }
        let now = Instant::now();
        let obs = Observation {
            live: st.live(),
            loading: st.count(Phase::Loading),
            queued: st.queue.len(),
            utilisation: st.utilisation(now),
            since_change: now.saturating_duration_since(st.last_change),
        };
        let next = autoscale::decide(
            &obs,
            policy,
            self.spec.instances.min,
            self.spec.instances.max(),
        );
        if next != st.target {
            tracing::info!(
                service = self.name(),
                from = st.target,
                to = next,
                queued = obs.queued,
                utilisation = obs.utilisation,
                "autoscaler"
            );
            st.target = next;
            st.last_change = now;
            self.reconcile(&mut st);
            self.dispatch(&mut st);
            self.publish(&st);
        }
        st.busy = Duration::ZERO;
        st.window_start = now;
    }
}

/// A running (or ready to run) inference service. See the crate docs.
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
}

impl Service {
    /// A service running `spec.model` on ONNX Runtime, in threads of this process or (with
    /// `placement: process`) in one instance process each. Starts nothing until a caller
    /// attaches.
    pub fn new(spec: ServiceSpec) -> Result<Self> {
        if spec.placement == Placement::Process {
            let mut command = match &spec.command {
                Some(c) => c.clone(),
                None => default_instance_command(&spec.name)?,
            };
            command.push("--grace".into());
            command.push(humantime::format_duration(spec.grace).to_string());
            if spec.resources.gpus > 0 {
                command.push("--gpus".into());
                command.push(spec.resources.gpus.to_string());
            }
            let pids = Arc::new(Mutex::new(Vec::new()));
            let factory = crate::flight::process_factory(
                command,
                spec.model.clone(),
                spec.resources.cpus,
                pids.clone(),
            );
            return Self::build(spec, factory, Some(pids));
        }
        let factory = OrtBackend::factory(
            &spec.model,
            BackendOptions {
                cpus: spec.resources.cpus,
                gpus: spec.resources.gpus,
                // Instances in the job's process share its cores with the other steps.
                spin: false,
            },
        );
        Self::with_backend(spec, factory)
    }

    /// A service whose instances run backends from `factory` (another backend, or a
    /// fault-injection stand-in); the model file is still read for its metadata.
    pub fn with_backend(spec: ServiceSpec, factory: BackendFactory) -> Result<Self> {
        Self::build(spec, factory, None)
    }

    fn build(
        spec: ServiceSpec,
        factory: BackendFactory,
        processes: Option<Arc<Mutex<Vec<u32>>>>,
    ) -> Result<Self> {
        spec.validate()?;
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
            latency: vec![0; weir_infer::service::LATENCY_BUCKETS],
            busy: Duration::ZERO,
            window_start: now,
            last_change: now,
            autoscaler: None,
        };
        let (members, _) = watch::channel(Membership::default());
        Ok(Service {
            shared: Arc::new(Shared {
                spec,
                factory,
                info: OnceLock::new(),
                state: Mutex::new(state),
                members,
                processes,
            }),
        })
    }

    /// The service's declaration.
    pub fn spec(&self) -> &ServiceSpec {
        &self.shared.spec
    }

    /// Membership changes, pushed: a receiver that sees every change of the instance set.
    pub fn members(&self) -> watch::Receiver<Membership> {
        self.shared.members.subscribe()
    }

    /// Requests answered by each instance so far (instance id → count), including instances
    /// that have stopped or died since.
    pub fn served(&self) -> BTreeMap<u64, u64> {
        self.shared.lock().served.clone()
    }

    /// Stops every instance now (in-flight requests fail); a later attach starts it again.
    pub fn stop(&self) {
        let mut st = self.shared.lock();
        self.shared.stop(&mut st);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
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

async fn call(shared: Arc<Shared>, inputs: Arc<Tensors>, options: CallOptions) -> Result<Tensors> {
    let started = Instant::now();
    let rows = inputs
        .first()
        .and_then(|(_, t)| t.shape.first().copied())
        .unwrap_or(0);
    let mut backoff = options.backoff;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let (id, rx) = shared.submit(inputs.clone())?;
        let mut guard = CancelOnDrop {
            shared: shared.clone(),
            id,
            armed: true,
        };
        let outcome = tokio::time::timeout(options.timeout, rx).await;
        guard.armed = false;
        let err = match outcome {
            Ok(Ok(Ok(out))) => {
                shared.count_answer(rows, started.elapsed());
                return Ok(out);
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => Error::external(format!(
                "service '{}' dropped the request (stopped)",
                shared.name()
            )),
            Err(_) => {
                shared.cancel(id, Some(options.timeout));
                Error::external(format!(
                    "service '{}': no answer within the timeout of {:?}",
                    shared.name(),
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
        tracing::debug!(service = shared.name(), attempt, error = %err.report(), "retrying a call");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

impl ModelService for Service {
    fn name(&self) -> &str {
        &self.shared.spec.name
    }

    fn definition(&self) -> String {
        self.shared.spec.describe()
    }

    fn info(&self) -> Result<ModelInfo> {
        let r = self.shared.info.get_or_init(|| {
            ModelInfo::load(&self.shared.spec.model).map_err(|e| (e.kind(), e.report()))
        });
        match r {
            Ok(i) => Ok(i.clone()),
            Err((kind, msg)) => Err(Error::new(
                *kind,
                format!("service '{}': {msg}", self.shared.spec.name),
            )),
        }
    }

    fn max_batch(&self) -> Option<usize> {
        Some(self.shared.spec.batch.max_size)
    }

    fn attach(&self) -> Result<()> {
        let mut st = self.shared.lock();
        st.attached += 1;
        if !st.running {
            self.shared.start(&mut st);
        }
        Ok(())
    }

    fn detach(&self) {
        let mut st = self.shared.lock();
        st.attached = st.attached.saturating_sub(1);
        if st.attached == 0 && self.shared.spec.lifecycle == Lifecycle::PerJob {
            self.shared.stop(&mut st);
        }
    }

    fn in_use(&self) -> bool {
        self.shared.lock().attached > 0
    }

    fn call(&self, inputs: Tensors, options: &CallOptions) -> BoxFuture<'static, Result<Tensors>> {
        Box::pin(call(self.shared.clone(), Arc::new(inputs), options.clone()))
    }

    fn scale(&self, instances: usize) -> Result<()> {
        let (min, max) = (
            self.shared.spec.instances.min,
            self.shared.spec.instances.max(),
        );
        if instances < min || instances > max {
            return Err(Error::config(format!(
                "service '{}': cannot scale to {instances} instances: the spec allows {min} to {max} (instances.min / instances.max)",
                self.shared.spec.name
            )));
        }
        let mut st = self.shared.lock();
        tracing::info!(
            service = self.shared.name(),
            from = st.target,
            to = instances,
            "scaling"
        );
        st.target = instances;
        st.last_change = Instant::now();
        self.shared.reconcile(&mut st);
        self.shared.dispatch(&mut st);
        self.shared.publish(&st);
        Ok(())
    }

    fn status(&self) -> ServiceStatus {
        let st = self.shared.lock();
        ServiceStatus {
            name: self.shared.spec.name.clone(),
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
                .shared
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

/// `[this weir binary, "serve-model"]`: the default instance command of `placement: process`,
/// available only when the job runs in the `weir` binary itself.
fn default_instance_command(service: &str) -> Result<Vec<String>> {
    let exe = this_weir(
        &format!("service '{service}': placement: process starts `weir serve-model` by default"),
        "set the service's `command:` (e.g. [/path/to/weir, serve-model])",
    )?;
    Ok(vec![exe.display().to_string(), "serve-model".into()])
}

/// This program, when it is the `weir` binary (the one that can run `weir serve-model` and
/// `weir serve-service`); otherwise a config error saying `needs` and how to `fix` it.
pub(crate) fn this_weir(needs: &str, fix: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::config(format!(
            "{needs}, but this executable cannot be found; {fix}"
        ))
        .with_source(e)
    })?;
    if exe.file_stem().and_then(|s| s.to_str()) != Some("weir") {
        return Err(Error::config(format!(
            "{needs}, but this program is {}, not weir; {fix}",
            exe.display()
        )));
    }
    Ok(exe)
}
