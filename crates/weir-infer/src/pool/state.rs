//! The pool's state ([`Shared`]): its instances, the queue of requests waiting for one,
//! routing by least outstanding work, scaling, draining, and what happens when an instance dies.
//!
//! All of it is one state value behind one mutex ([`State`]), changed only by short functions
//! that never block and never await while holding it: callers submit and cancel requests,
//! instance threads report "loaded", "done" and "died", the autoscaler sets a target. Every
//! request is in exactly one place at a time (the queue, or one instance's outstanding set) and
//! has one reply sender, which is consumed when it is answered; that is what makes "none lost,
//! none answered twice" hold through scaling and deaths.

use super::autoscale::{self, Observation};
use super::instance::{self, Part, Work};
use super::{Membership, PoolConfig};
use crate::backend::BackendFactory;
use crate::model::ModelInfo;
use crate::service::Tensors;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use weir_types::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Loading,
    Ready,
    Draining,
}

/// One instance as the service sees it.
#[derive(Debug)]
pub(super) struct Inst {
    pub(super) phase: Phase,
    pub(super) jobs: mpsc::Sender<Work>,
    /// Requests sent to it and not answered.
    pub(super) outstanding: BTreeSet<u64>,
    /// Rows of those requests: the work the router balances.
    pub(super) work: usize,
    /// When it was last sent work (a dispatch count): among equally loaded instances the one
    /// that waited longest gets the next request, so light load still reaches every instance.
    pub(super) last_sent: u64,
    /// The requests it is running (one batch) and since when.
    pub(super) running: Option<(Vec<u64>, Instant)>,
}

/// What a request is answered with: the outputs and how long the model ran for them.
pub(super) type Answer = Result<(Tensors, Duration)>;

/// A request not answered yet.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) inputs: Arc<Tensors>,
    pub(super) rows: usize,
    pub(super) reply: oneshot::Sender<Answer>,
    /// The instance holding it; `None` while queued.
    pub(super) on: Option<u64>,
    /// Instances that died while running it.
    pub(super) deaths: u32,
    /// Never merged with other requests again: it was in a merged batch that failed or killed
    /// its instance, so it runs alone to find out whether it is the cause.
    pub(super) alone: bool,
}

/// Everything that changes, behind one mutex.
#[derive(Debug)]
pub(super) struct State {
    pub(super) running: bool,
    pub(super) attached: usize,
    pub(super) target: usize,
    pub(super) next_instance: u64,
    pub(super) next_request: u64,
    /// Dispatches so far (stamps `Inst::last_sent`).
    pub(super) dispatches: u64,
    pub(super) instances: BTreeMap<u64, Inst>,
    pub(super) queue: VecDeque<u64>,
    pub(super) requests: HashMap<u64, Pending>,
    pub(super) load_failures: u32,
    pub(super) broken: Option<String>,
    pub(super) answered: u64,
    /// Requests answered per instance (also instances gone since).
    pub(super) served: BTreeMap<u64, u64>,
    pub(super) retries: u64,
    pub(super) deaths: u64,
    pub(super) failed: u64,
    pub(super) answered_rows: u64,
    pub(super) latency: Vec<u64>,
    pub(super) busy: Duration,
    pub(super) window_start: Instant,
    pub(super) last_change: Instant,
    /// Dropping it stops the autoscaler thread.
    pub(super) autoscaler: Option<mpsc::Sender<()>>,
}

impl State {
    pub(super) fn count(&self, phase: Phase) -> usize {
        self.instances.values().filter(|i| i.phase == phase).count()
    }

    /// Instances that are not draining.
    fn live(&self) -> usize {
        self.instances
            .values()
            .filter(|i| i.phase != Phase::Draining)
            .count()
    }

    pub(super) fn utilisation(&self, now: Instant) -> f64 {
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
pub(super) struct Shared {
    pub(crate) config: PoolConfig,
    pub(crate) factory: BackendFactory,
    pub(super) info: OnceLock<std::result::Result<ModelInfo, (ErrorKind, String)>>,
    pub(super) state: Mutex<State>,
    pub(super) members: watch::Sender<Membership>,
    /// Process ids of the instance processes started so far (out-of-process instances).
    pub(super) processes: Option<Arc<Mutex<Vec<u32>>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pool", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the state is half-changed (no user code runs under the
        // lock), so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// Logs a lifecycle event of the pool or one of its instances (see
    /// [`PoolConfig::log_lifecycle`]).
    fn lifecycle(&self, instance: Option<u64>, what: &str) {
        if self.config.log_lifecycle {
            tracing::info!(pool = self.name(), instance, "{what}");
        } else {
            tracing::debug!(pool = self.name(), instance, "{what}");
        }
    }

    /// How messages name the pool: `service 'clf'`, or `model resnet.onnx` for an `infer` step's
    /// own instances.
    pub(super) fn label(&self) -> &str {
        &self.config.label
    }

    pub(super) fn publish(&self, st: &State) {
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
    pub(super) fn reconcile(self: &Arc<Self>, st: &mut State) {
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
                self.lifecycle(Some(id), "instance stopped");
            } else {
                inst.phase = Phase::Draining;
                self.lifecycle(Some(id), "instance draining");
            }
        }
    }

    fn spawn_instance(self: &Arc<Self>, st: &mut State) {
        let id = st.next_instance;
        st.next_instance += 1;
        let (tx, rx) = mpsc::channel();
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{id}", self.config.thread_prefix))
            .spawn(move || instance::run(shared, id, rx));
        match spawned {
            Ok(_) => {
                self.lifecycle(Some(id), "instance starting");
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
    pub(super) fn dispatch(self: &Arc<Self>, st: &mut State) {
        let window = self.config.window;
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
            if self.config.merge && !p.alone {
                // Requests waiting behind it join its batch while they fit.
                while let Some(&next) = st.queue.front() {
                    let Some(q) = st.requests.get(&next) else {
                        st.queue.pop_front();
                        continue;
                    };
                    if q.alone
                        || rows + q.rows > self.config.max_batch
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
        tracing::warn!(pool = self.name(), instance = id, reason = %reason, "instance died; re-dispatching its requests");
        let culprits = inst.running.map(|(r, _)| r).unwrap_or_default();
        for req in inst.outstanding.iter().rev() {
            let Some(p) = st.requests.get_mut(req) else {
                continue;
            };
            p.on = None;
            if culprits.contains(req) {
                p.deaths += 1;
                p.alone = true;
                if p.deaths >= self.config.max_deaths {
                    let n = p.deaths;
                    self.fail(
                        st,
                        *req,
                        Error::input(format!(
                            "{}: this request was running on {n} instances that died (last: {reason}); given up after max_deaths = {}",
                            self.label(),
                            self.config.max_deaths
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
        self.lifecycle(
            Some(id),
            if self.config.warm_up {
                "instance ready (model loaded, warm-up batch run)"
            } else {
                "instance ready (model loaded)"
            },
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
        tracing::warn!(pool = self.name(), instance = id, error = %err.report(), "instance failed to load");
        if st.load_failures >= self.config.max_load_failures {
            let msg = format!(
                "{}: {} instances failed to load in a row; last: {}",
                self.label(),
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
            self.lifecycle(Some(id), "instance drained and stopped");
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
                    self.answer(&mut st, id, work.parts[0].id, Ok(out), run);
                }
            }
            Ok(out) => {
                let rows: Vec<usize> = work.parts.iter().map(|w| w.rows).collect();
                match instance::split(&out, &rows) {
                    Ok(pieces) => {
                        for (i, piece) in pieces.into_iter().enumerate() {
                            if mine.contains(&i) {
                                self.answer(&mut st, id, work.parts[i].id, Ok(piece), run);
                            }
                        }
                    }
                    Err(e) => {
                        for &i in &mine {
                            let err = Error::new(e.kind(), e.report());
                            self.answer(&mut st, id, work.parts[i].id, Err(err), run);
                        }
                    }
                }
            }
            Err(e) if work.parts.len() == 1 => {
                if !mine.is_empty() {
                    self.answer(&mut st, id, work.parts[0].id, Err(e), run);
                }
            }
            Err(e) => {
                tracing::debug!(pool = self.name(), instance = id, requests = work.parts.len(), error = %e.report(), "a merged batch failed; running its requests one by one");
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

    fn answer(
        &self,
        st: &mut State,
        instance: u64,
        req: u64,
        result: Result<Tensors>,
        run: Duration,
    ) {
        if let Some(p) = st.requests.remove(&req) {
            if result.is_ok() {
                st.answered += 1;
                *st.served.entry(instance).or_default() += 1;
            }
            let _ = p.reply.send(result.map(|out| (out, run)));
        }
    }

    pub(crate) fn on_death(self: &Arc<Self>, id: u64, reason: String) {
        let mut st = self.lock();
        self.bury(&mut st, id, reason);
    }

    // ---- called by callers ----

    pub(super) fn submit(
        self: &Arc<Self>,
        inputs: Arc<Tensors>,
    ) -> Result<(u64, oneshot::Receiver<Answer>)> {
        let mut st = self.lock();
        if !st.running {
            return Err(Error::internal(format!(
                "{} is not running (called before attach); this is a bug, please report it",
                self.label()
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
    pub(super) fn cancel(self: &Arc<Self>, req: u64, timeout: Option<Duration>) {
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

    pub(super) fn count_retry(&self) {
        self.lock().retries += 1;
    }

    pub(super) fn count_failed(&self) {
        self.lock().failed += 1;
    }

    pub(super) fn count_answer(&self, rows: usize, latency: Duration) {
        let mut st = self.lock();
        st.answered_rows += rows as u64;
        let b = crate::service::latency_bucket(latency);
        if let Some(n) = st.latency.get_mut(b) {
            *n += 1;
        }
    }

    // ---- lifecycle ----

    pub(super) fn start(self: &Arc<Self>, st: &mut State) {
        st.running = true;
        st.broken = None;
        st.load_failures = 0;
        if st.target == 0 {
            st.target = self.config.initial;
        }
        st.window_start = Instant::now();
        st.busy = Duration::ZERO;
        if let Some(a) = &self.config.autoscale {
            match autoscale::spawn(Arc::downgrade(self), a.interval) {
                Ok(stop) => st.autoscaler = Some(stop),
                Err(e) => {
                    tracing::warn!(pool = self.name(), error = %e.report(), "autoscaler not started")
                }
            }
        }
        self.lifecycle(None, "pool starting");
        self.reconcile(st);
        self.publish(st);
    }

    pub(super) fn stop(&self, st: &mut State) {
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
                "{} stopped before answering",
                self.label()
            ))));
        }
        self.lifecycle(None, "pool stopped");
        self.publish(st);
    }

    /// One autoscaler look: may change the target by one instance.
    pub(crate) fn autoscale_tick(self: &Arc<Self>) {
        let Some(policy) = &self.config.autoscale else {
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
        let next = autoscale::decide(&obs, policy, self.config.min, self.config.max);
        if next != st.target {
            tracing::info!(
                pool = self.name(),
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
