//! The JSON documents of the REST API, built from a [`Watch`]. Field names and meanings are
//! the contract described by `openapi.yaml` (served at `/api/v1/openapi.yaml`); the client side
//! ([`crate::client`]) reads the same types.

use crate::watch::{JobState, Rates, Watch};
use crate::why::{Held, Reason};
use serde::{Deserialize, Serialize};
use weir_runtime::observe::{
    CheckpointRecord, CheckpointTotals, DeadLetterCount, DeadLetterSample, Topology,
};
use weir_runtime::{MetricsSnapshot, NodeRole};
use weir_serve::control::StatusReply;

/// `GET /api/v1/job`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// The job's name.
    pub name: String,
    /// `starting`, `running`, `stopping`, `restarting`, `finished` or `failed`.
    pub state: String,
    /// Run attempts so far (more than 1 after restarts from a checkpoint).
    pub attempts: u32,
    /// Why the last attempt failed.
    pub failure: Option<String>,
    /// The process id of `weir run`.
    pub pid: u32,
    /// The spec file.
    pub spec: Option<String>,
    /// When the job started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// Seconds since then.
    pub uptime_s: f64,
    /// Whether the job takes checkpoints.
    pub checkpointing: bool,
    /// Rows the sources emitted.
    pub rows_read: u64,
    /// Rows the sinks received.
    pub rows_written: u64,
    /// Rows written to the dead-letter output.
    pub dead_letters: u64,
}

/// One step: counters (since the attempt started), rates (last window), watermark, queues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorView {
    /// The step's name.
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub role: String,
    /// Its kind and main options.
    pub description: String,
    /// Parallel instances.
    pub parallelism: u32,
    /// Index of its chain in the graph's `chains`.
    pub chain: usize,
    /// Counters summed over subtasks.
    pub counters: Counters,
    /// Rates over the last sampling window.
    pub rates: RatesView,
    /// The watermark (event time, ms since the epoch) reached by every active subtask (every
    /// subtask when all are idle), if any: what the next step merges.
    pub watermark_ms: Option<i64>,
    /// Subtasks whose watermark status is idle (their source, or every input, went idle), so
    /// they hold no watermark back downstream.
    pub watermark_idle_subtasks: u64,
    /// Fill of its input queues (0..1), for steps that head a task with inputs.
    pub queue_fill: Option<f64>,
    /// What an external system the step cannot reach it waits for (`waiting for Kafka`), if any.
    pub waiting: Option<String>,
}

/// Counters of a step or subtask.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Bytes received (Arrow memory size).
    pub bytes_in: u64,
    /// Bytes emitted.
    pub bytes_out: u64,
    /// Batches emitted.
    pub batches_out: u64,
    /// Bad rows.
    pub errors: u64,
    /// Rows sent to the dead-letter output.
    pub dead_letters: u64,
    /// Rows that arrived behind the watermark (dead-lettered or dropped as late).
    pub late_rows: u64,
    /// Milliseconds working.
    pub busy_ms: u64,
    /// Milliseconds waiting for room downstream.
    pub backpressured_ms: u64,
    /// Milliseconds waiting for input.
    pub idle_ms: u64,
    /// Bytes waiting in the input queues now.
    pub queued_bytes: u64,
    /// Capacity of the input queues.
    pub queue_capacity_bytes: u64,
    /// Subtasks that finished.
    pub finished_subtasks: u64,
    /// Batching operators: average batch latency, ms.
    pub batch_latency_ms: f64,
}

impl From<&MetricsSnapshot> for Counters {
    fn from(m: &MetricsSnapshot) -> Self {
        Counters {
            rows_in: m.rows_in,
            rows_out: m.rows_out,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            batches_out: m.batches_out,
            errors: m.errors,
            dead_letters: m.dead_letters,
            late_rows: m.late_rows,
            busy_ms: m.busy_ms,
            backpressured_ms: m.backpressured_ms,
            idle_ms: m.idle_ms,
            queued_bytes: m.queued_bytes,
            queue_capacity_bytes: m.queue_capacity_bytes,
            finished_subtasks: m.finished_subtasks,
            batch_latency_ms: m.batch_latency_us_ewma as f64 / 1000.0,
        }
    }
}

/// [`Rates`] as the API writes them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RatesView {
    /// Rows received per second.
    pub rows_in_per_s: f64,
    /// Rows emitted per second.
    pub rows_out_per_s: f64,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes emitted per second.
    pub bytes_out_per_s: f64,
    /// Share of time working (0..1).
    pub busy: f64,
    /// Share of time backpressured (0..1).
    pub backpressured: f64,
    /// Share of time idle (0..1).
    pub idle: f64,
}

impl From<Rates> for RatesView {
    fn from(r: Rates) -> Self {
        RatesView {
            rows_in_per_s: r.rows_in_per_s,
            rows_out_per_s: r.rows_out_per_s,
            bytes_in_per_s: r.bytes_in_per_s,
            bytes_out_per_s: r.bytes_out_per_s,
            busy: r.busy,
            backpressured: r.backpressured,
            idle: r.idle,
        }
    }
}

/// One subtask of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubtaskView {
    /// Its index.
    pub subtask: u32,
    /// Its counters.
    pub counters: Counters,
    /// Its rates over the last window.
    pub rates: RatesView,
    /// Its watermark.
    pub watermark_ms: Option<i64>,
    /// Whether its watermark status is idle.
    pub watermark_idle: bool,
    /// Fill of its input queues (0..1).
    pub queue_fill: Option<f64>,
    /// Each input queue.
    pub input_queues: Vec<QueueView>,
}

/// One input queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueView {
    /// Bytes waiting.
    pub queued_bytes: u64,
    /// Capacity.
    pub capacity_bytes: u64,
}

/// `GET /api/v1/operators/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorDetail {
    /// The step.
    #[serde(flatten)]
    pub operator: OperatorView,
    /// Its subtasks.
    pub subtasks: Vec<SubtaskView>,
}

/// `GET /api/v1/checkpoints`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointsView {
    /// Whether the job takes checkpoints.
    pub enabled: bool,
    /// Totals over the run.
    pub totals: Option<CheckpointTotals>,
    /// Kept checkpoints, newest first.
    pub history: Vec<CheckpointRecord>,
}

/// `GET /api/v1/dead-letters`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLettersView {
    /// Rows refused so far.
    pub total: u64,
    /// Counts by step and reason.
    pub counts: Vec<DeadLetterCount>,
    /// The newest refused rows, newest first.
    pub samples: Vec<DeadLetterSample>,
}

/// `GET /api/v1/why`.
#[derive(Debug, Clone, Serialize)]
pub struct WhyView {
    /// What holds the pipeline up now.
    pub current: Vec<Reason>,
    /// Every reason seen, with how long it held, longest first.
    pub held: Vec<Held>,
}

/// `GET /api/v1/overview`: what the UI and `weir status` show, in one request.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The job.
    pub job: JobView,
    /// Every step.
    pub operators: Vec<OperatorView>,
    /// Checkpoints (the newest [`OVERVIEW_CHECKPOINTS`]).
    pub checkpoints: CheckpointsView,
    /// Dead letters (the newest [`OVERVIEW_DEAD_LETTERS`] samples).
    pub dead_letters: DeadLettersView,
    /// Services.
    pub services: Vec<StatusReply>,
    /// Why slow.
    pub why: WhyView,
}

/// Checkpoints in the overview.
pub const OVERVIEW_CHECKPOINTS: usize = 50;
/// Dead-letter samples in the overview.
pub const OVERVIEW_DEAD_LETTERS: usize = 20;

fn role(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Source => "source",
        NodeRole::Operator => "operator",
        NodeRole::Sink => "sink",
    }
}

fn fill(m: &MetricsSnapshot) -> Option<f64> {
    (m.queue_capacity_bytes > 0).then(|| m.queued_bytes as f64 / m.queue_capacity_bytes as f64)
}

/// The job document.
pub fn job(w: &Watch) -> JobView {
    let (state, attempts, failure) = w.state();
    let counters = w.counters();
    let sum = |r: NodeRole, f: fn(&MetricsSnapshot) -> u64| -> u64 {
        counters
            .iter()
            .filter(|n| n.node.role == r)
            .map(|n| f(&n.node.totals))
            .sum()
    };
    let state = serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}"));
    JobView {
        name: w.info().name.clone(),
        state,
        attempts,
        failure,
        pid: w.info().pid,
        spec: w.info().spec.clone(),
        started_at_ms: w.started_at_ms(),
        uptime_s: w.uptime().as_secs_f64(),
        checkpointing: w.control().is_some_and(|c| c.checkpoints()),
        rows_read: sum(NodeRole::Source, |m| m.rows_out),
        rows_written: sum(NodeRole::Sink, |m| m.rows_in),
        dead_letters: counters.iter().map(|n| n.node.totals.dead_letters).sum(),
    }
}

/// Every step with its subtasks.
pub fn operators(w: &Watch) -> Vec<OperatorDetail> {
    let topology: Topology = w.topology();
    let rates = w.rates();
    w.counters()
        .into_iter()
        .map(|n| {
            let t = topology.nodes.iter().find(|t| t.name == n.node.name);
            let r = rates.iter().find(|r| r.name == n.node.name);
            let subtasks = n
                .subtasks
                .iter()
                .enumerate()
                .map(|(i, s)| SubtaskView {
                    subtask: i as u32,
                    counters: s.into(),
                    rates: r
                        .and_then(|r| r.subtasks.get(i))
                        .copied()
                        .unwrap_or_default()
                        .into(),
                    watermark_ms: s.watermark_ms,
                    watermark_idle: s.watermark_idle_subtasks > 0,
                    queue_fill: fill(s),
                    input_queues: n
                        .input_queues
                        .get(i)
                        .map(|q| {
                            q.iter()
                                .map(|(queued, cap)| QueueView {
                                    queued_bytes: *queued,
                                    capacity_bytes: *cap,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect();
            OperatorDetail {
                operator: OperatorView {
                    name: n.node.name.clone(),
                    role: role(n.node.role).into(),
                    description: t.map(|t| t.description.clone()).unwrap_or_default(),
                    parallelism: n.node.parallelism,
                    chain: t.map_or(0, |t| t.chain),
                    counters: (&n.node.totals).into(),
                    rates: r.map(|r| r.total).unwrap_or_default().into(),
                    watermark_ms: n.node.totals.watermark_ms,
                    watermark_idle_subtasks: n.node.totals.watermark_idle_subtasks,
                    queue_fill: fill(&n.node.totals),
                    waiting: n.node.waiting.clone(),
                },
                subtasks,
            }
        })
        .collect()
}

/// The checkpoints, newest first, at most `limit`.
pub fn checkpoints(w: &Watch, limit: usize) -> CheckpointsView {
    match w.checkpoints() {
        None => CheckpointsView {
            enabled: false,
            totals: None,
            history: Vec::new(),
        },
        Some((totals, mut history)) => {
            history.reverse();
            history.truncate(limit);
            CheckpointsView {
                enabled: true,
                totals: Some(totals),
                history,
            }
        }
    }
}

/// The dead letters, at most `limit` samples.
pub fn dead_letters(w: &Watch, limit: usize) -> DeadLettersView {
    let total = w
        .counters()
        .iter()
        .map(|n| n.node.totals.dead_letters)
        .sum();
    let log = w.dead_letters();
    DeadLettersView {
        total,
        counts: log.as_ref().map(|l| l.counts()).unwrap_or_default(),
        samples: log.map(|l| l.samples(limit)).unwrap_or_default(),
    }
}

/// The services.
pub fn services(w: &Watch) -> Vec<StatusReply> {
    w.services().iter().map(StatusReply::from).collect()
}

/// Why slow.
pub fn why(w: &Watch) -> WhyView {
    WhyView {
        current: w.reasons(),
        held: w.held(),
    }
}

/// Everything the UI shows.
pub fn overview(w: &Watch) -> Overview {
    Overview {
        job: job(w),
        operators: operators(w).into_iter().map(|o| o.operator).collect(),
        checkpoints: checkpoints(w, OVERVIEW_CHECKPOINTS),
        dead_letters: dead_letters(w, OVERVIEW_DEAD_LETTERS),
        services: services(w),
        why: why(w),
    }
}

/// The state's name as the API writes it.
pub fn state_name(s: JobState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
