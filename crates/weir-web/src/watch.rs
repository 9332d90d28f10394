//! [`Watch`]: one running job as its watchers see it. `weir run` makes one per job, attaches
//! each run attempt to it ([`Watch::attach`]; a job restarted from a checkpoint is a new
//! attempt), and calls [`Watch::sample`] every [`why::INTERVAL`]. Each sample reads every
//! operator's counters once and keeps the window's rates (rows and bytes per second, busy,
//! backpressured and idle shares, per step and per subtask) and the "why is it slow" reasons.
//! The REST API, the UI, Prometheus, the progress display and `--metrics-json` all read from it.

use crate::why::{self, Held, Reason, Sampler};
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_infer::{ModelService, ServiceStatus};
use weir_runtime::{
    CheckpointHistory, CheckpointRecord, DeadLetterLog, JobControl, JobHandle, MetricsRegistry,
    MetricsSnapshot, NodeSubtasks, Topology,
};

/// Where the job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Planned; no attempt attached yet.
    Starting,
    /// An attempt runs.
    Running,
    /// A stop was asked for: the inputs stopped, what was read is being written.
    Stopping,
    /// The attempt failed; the job restarts from its newest complete checkpoint.
    Restarting,
    /// The job ended.
    Finished,
    /// The job failed.
    Failed,
}

/// What one run attempt exposes; taken from its [`JobHandle`].
#[derive(Debug, Clone)]
pub struct Attempt {
    metrics: MetricsRegistry,
    topology: Topology,
    history: Option<CheckpointHistory>,
    control: JobControl,
}

impl Attempt {
    /// The parts of `handle` a watcher reads.
    pub fn of(handle: &JobHandle) -> Self {
        Attempt {
            metrics: handle.metrics().clone(),
            topology: handle.topology().clone(),
            history: handle.checkpoint_history().cloned(),
            control: handle.control(),
        }
    }
}

/// Rates of one step or subtask over the last sampling window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Rows received per second.
    pub rows_in_per_s: f64,
    /// Rows emitted per second.
    pub rows_out_per_s: f64,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes emitted per second.
    pub bytes_out_per_s: f64,
    /// Share of the window spent working (0..1).
    pub busy: f64,
    /// Share of the window spent waiting for room downstream (0..1).
    pub backpressured: f64,
    /// Share of the window spent waiting for input (0..1).
    pub idle: f64,
}

impl Rates {
    fn between(now: &MetricsSnapshot, before: &MetricsSnapshot, window: Duration) -> Self {
        let s = window.as_secs_f64().max(1e-3);
        let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / s;
        let ms = s * 1000.0 * now.subtasks.max(1) as f64;
        let share = |a: u64, b: u64| (a.saturating_sub(b) as f64 / ms).min(1.0);
        Rates {
            rows_in_per_s: per_s(now.rows_in, before.rows_in),
            rows_out_per_s: per_s(now.rows_out, before.rows_out),
            bytes_in_per_s: per_s(now.bytes_in, before.bytes_in),
            bytes_out_per_s: per_s(now.bytes_out, before.bytes_out),
            busy: share(now.busy_ms, before.busy_ms),
            backpressured: share(now.backpressured_ms, before.backpressured_ms),
            idle: share(now.idle_ms, before.idle_ms),
        }
    }
}

/// A step's rates, and each subtask's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepRates {
    /// The step.
    pub name: String,
    /// Over all subtasks.
    pub total: Rates,
    /// Per subtask.
    pub subtasks: Vec<Rates>,
}

/// Static facts about the job.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    /// The job's name (`name:` in the spec).
    pub name: String,
    /// The spec file it runs, as given on the command line.
    pub spec: Option<String>,
    /// The process id of `weir run`.
    pub pid: u32,
}

#[derive(Debug)]
struct Inner {
    attempt: Option<Attempt>,
    attempts: u32,
    state: JobState,
    failure: Option<String>,
    /// Checkpoints of earlier attempts.
    past_checkpoints: Vec<CheckpointRecord>,
    sampler: Sampler,
    last: Option<(Instant, Vec<NodeSubtasks>)>,
    rates: Vec<StepRates>,
    services: Vec<ServiceStatus>,
}

/// The job's running services (made when the job starts: `weir_plan::Plan::start`).
pub type ServiceSource = Vec<Arc<dyn ModelService>>;

/// One job as its watchers see it. Shared (`Arc`) between `weir run`, the web server and
/// Prometheus.
pub struct Watch {
    info: JobInfo,
    started: Instant,
    started_at_ms: u64,
    services: ServiceSource,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("info", &self.info).finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Watch {
    /// A watch over a job that has not started yet; its services come from `services`.
    pub fn new(info: JobInfo, services: ServiceSource) -> Arc<Self> {
        Arc::new(Watch {
            info,
            started: Instant::now(),
            started_at_ms: now_ms(),
            services,
            inner: Mutex::new(Inner {
                attempt: None,
                attempts: 0,
                state: JobState::Starting,
                failure: None,
                past_checkpoints: Vec::new(),
                sampler: Sampler::default(),
                last: None,
                rates: Vec::new(),
                services: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Static facts.
    pub fn info(&self) -> &JobInfo {
        &self.info
    }

    /// When the watch was made, ms since the Unix epoch.
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// Time since the watch was made.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A new run attempt started: from now on everything is read from it. The previous
    /// attempt's checkpoints stay in the history.
    pub fn attach(&self, attempt: Attempt) {
        let mut g = self.lock();
        if let Some(h) = g.attempt.as_ref().and_then(|a| a.history.clone()) {
            let mut old = h.records();
            g.past_checkpoints.append(&mut old);
            let n = g.past_checkpoints.len();
            if n > weir_runtime::observe::HISTORY_LEN {
                g.past_checkpoints
                    .drain(..n - weir_runtime::observe::HISTORY_LEN);
            }
        }
        g.attempt = Some(attempt);
        g.attempts += 1;
        g.state = JobState::Running;
        g.failure = None;
        g.last = None;
        g.rates.clear();
        g.sampler.restart();
    }

    /// The attempt failed and the job restarts.
    pub fn restarting(&self, why: String) {
        let mut g = self.lock();
        g.state = JobState::Restarting;
        g.failure = Some(why);
    }

    /// The job ended: `Ok` finished (or stopped), `Err` failed with that message.
    pub fn ended(&self, outcome: std::result::Result<(), String>) {
        let mut g = self.lock();
        match outcome {
            Ok(()) => g.state = JobState::Finished,
            Err(e) => {
                g.state = JobState::Failed;
                g.failure = Some(e);
            }
        }
    }

    /// Reads every counter and the services' status once; keeps the window's rates and reasons.
    pub fn sample(&self) {
        let services = why::service_statuses(&self.services);
        let now = Instant::now();
        let Some(metrics) = self.lock().attempt.as_ref().map(|a| a.metrics.clone()) else {
            self.lock().services = services;
            return;
        };
        let snap = metrics.snapshot_subtasks();
        let mut g = self.lock();
        if let Some((then, prev)) = &g.last {
            let window = now.duration_since(*then);
            g.rates = snap
                .iter()
                .map(|n| {
                    let before = prev.iter().find(|p| p.node.name == n.node.name);
                    let zero = MetricsSnapshot::default();
                    StepRates {
                        name: n.node.name.clone(),
                        total: Rates::between(
                            &n.node.totals,
                            before.map_or(&zero, |b| &b.node.totals),
                            window,
                        ),
                        subtasks: n
                            .subtasks
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let b = before.and_then(|b| b.subtasks.get(i)).unwrap_or(&zero);
                                Rates::between(s, b, window)
                            })
                            .collect(),
                    }
                })
                .collect();
        }
        let nodes = snap.iter().map(|n| n.node.clone()).collect();
        g.sampler.sample(now, nodes, services.clone());
        g.services = services;
        g.last = Some((now, snap));
    }

    /// The state, the number of attempts so far and the last failure.
    pub fn state(&self) -> (JobState, u32, Option<String>) {
        let g = self.lock();
        let stopping = g.attempt.as_ref().is_some_and(|a| a.control.is_stopping());
        let state = if g.state == JobState::Running && stopping {
            JobState::Stopping
        } else {
            g.state
        };
        (state, g.attempts, g.failure.clone())
    }

    /// The current counters of every step and subtask (read now, not at the last sample).
    pub fn counters(&self) -> Vec<NodeSubtasks> {
        let metrics = self.lock().attempt.as_ref().map(|a| a.metrics.clone());
        metrics.map(|m| m.snapshot_subtasks()).unwrap_or_default()
    }

    /// The rates of the last sampling window.
    pub fn rates(&self) -> Vec<StepRates> {
        self.lock().rates.clone()
    }

    /// The graph as planned (empty before the first attempt).
    pub fn topology(&self) -> Topology {
        self.lock()
            .attempt
            .as_ref()
            .map(|a| a.topology.clone())
            .unwrap_or_default()
    }

    /// The checkpoint history of every attempt, oldest first; `None` when the job takes none.
    pub fn checkpoints(
        &self,
    ) -> Option<(
        weir_runtime::observe::CheckpointTotals,
        Vec<CheckpointRecord>,
    )> {
        let g = self.lock();
        let h = g.attempt.as_ref()?.history.as_ref()?;
        let mut all = g.past_checkpoints.clone();
        all.extend(h.records());
        Some((h.totals(), all))
    }

    /// The dead letters of the current attempt.
    pub fn dead_letters(&self) -> Option<DeadLetterLog> {
        self.lock()
            .attempt
            .as_ref()
            .map(|a| a.metrics.dead_letters().clone())
    }

    /// The job's running service `name`.
    pub fn service(&self, name: &str) -> Option<Arc<dyn ModelService>> {
        self.services.iter().find(|s| s.name() == name).cloned()
    }

    /// The services' status at the last sample.
    pub fn services(&self) -> Vec<ServiceStatus> {
        self.lock().services.clone()
    }

    /// The reasons of the last window.
    pub fn reasons(&self) -> Vec<Reason> {
        self.lock().sampler.current().to_vec()
    }

    /// Every reason seen, longest first.
    pub fn held(&self) -> Vec<Held> {
        self.lock().sampler.held()
    }

    /// Stop and "checkpoint now" of the current attempt.
    pub fn control(&self) -> Option<JobControl> {
        self.lock().attempt.as_ref().map(|a| a.control.clone())
    }
}

/// How often [`Watch::sample`] should be called.
pub const INTERVAL: Duration = why::INTERVAL;
