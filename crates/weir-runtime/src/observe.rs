//! What a running job shows to whoever watches it (the REST API, the web UI, Prometheus) and the
//! few things such a watcher may ask of it:
//!
//! - [`CheckpointHistory`]: every checkpoint of the job with its trigger time, duration, size,
//!   each task's acknowledgement and the reason a failed one failed (kept for the newest
//!   [`HISTORY_LEN`]), plus totals and a duration histogram over the whole run;
//! - [`DeadLetterLog`]: dead letters counted by operator and reason, and the newest
//!   [`DEAD_LETTER_SAMPLES`] of them with their source location;
//! - [`JobControl`]: "checkpoint now" (answered when that checkpoint ends) and "stop" (drain the
//!   inputs, take the final checkpoint, end).
//!
//! Everything here is per job (held by its [`JobHandle`](crate::JobHandle) and its
//! [`MetricsRegistry`](crate::MetricsRegistry)), never process-wide. Recording is off the hot
//! path: a checkpoint event or a dead letter takes one short mutex.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weir_types::{CheckpointId, DeadLetter, Error, ErrorKind, Result};

/// Checkpoints kept in [`CheckpointHistory::records`].
pub const HISTORY_LEN: usize = 200;
/// Dead letters kept in [`DeadLetterLog::samples`].
pub const DEAD_LETTER_SAMPLES: usize = 100;
/// Distinct (operator, reason) pairs counted; further reasons count as `other`.
pub const DEAD_LETTER_REASONS: usize = 200;
/// Bytes of a dead letter's raw input kept in its sample.
pub const RAW_PREVIEW_BYTES: usize = 256;
/// Upper bounds (seconds) of the checkpoint duration histogram; a last bucket takes the rest.
pub const CHECKPOINT_BUCKETS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a checkpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// Triggered; waiting for acknowledgements or the manifest.
    InProgress,
    /// Its manifest is written: it restores.
    Completed,
    /// Declined, expired or subsumed: it never completes.
    Failed,
}

/// One task's acknowledgement of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskAck {
    /// The task: the head node of its chain.
    pub node: String,
    /// Its subtask index.
    pub subtask: u32,
    /// Milliseconds from the trigger to the acknowledgement (state written).
    pub after_ms: u64,
    /// Bytes of state the task wrote for this checkpoint.
    pub state_bytes: u64,
    /// Bytes of unchanged keyed state it referred to in earlier checkpoints instead of writing
    /// them (incremental checkpoints).
    pub referred_bytes: u64,
}

/// One checkpoint as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRecord {
    /// The checkpoint id.
    pub id: CheckpointId,
    /// Where it is.
    pub status: CheckpointStatus,
    /// `aligned` or `unaligned`.
    pub kind: String,
    /// Whether it was the job's final checkpoint (taken once every input ended).
    pub is_final: bool,
    /// Whether someone asked for it ([`JobControl::checkpoint_now`]) rather than the interval.
    pub requested: bool,
    /// Wall-clock trigger time, milliseconds since the Unix epoch.
    pub triggered_at_ms: u64,
    /// Milliseconds from the trigger to its end (complete or failed); `None` while in progress.
    pub duration_ms: Option<u64>,
    /// Bytes of state written for it so far (all of it once complete).
    pub size_bytes: u64,
    /// Bytes of unchanged keyed state it refers to in earlier checkpoints instead of writing
    /// them again (incremental checkpoints; 0 for a full one).
    pub referred_bytes: u64,
    /// Tasks expected to acknowledge it.
    pub expected_tasks: u32,
    /// The acknowledgements received, in order.
    pub acks: Vec<TaskAck>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// Totals over the whole run (not only the kept records).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckpointTotals {
    /// Checkpoints triggered.
    pub triggered: u64,
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints that failed.
    pub failed: u64,
    /// Checkpoints in progress now.
    pub in_progress: u64,
    /// Completed checkpoints per duration bucket ([`CHECKPOINT_BUCKETS_S`], then the rest);
    /// not cumulative.
    pub duration_buckets: Vec<u64>,
    /// Sum of the completed checkpoints' durations, seconds.
    pub duration_sum_s: f64,
    /// The newest completed checkpoint.
    pub last_completed: Option<CheckpointId>,
    /// Size of the newest completed checkpoint, bytes.
    pub last_completed_size_bytes: u64,
    /// Bytes the newest completed checkpoint refers to in earlier ones.
    pub last_completed_referred_bytes: u64,
    /// Bytes written by all completed checkpoints.
    pub written_bytes: u64,
    /// Bytes all completed checkpoints referred to in earlier ones instead of writing them.
    pub referred_bytes: u64,
}

#[derive(Debug, Default)]
struct HistoryInner {
    records: VecDeque<CheckpointRecord>,
    totals: CheckpointTotals,
}

/// The checkpoints of a job, recorded by its checkpoint driver. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct CheckpointHistory {
    inner: Arc<Mutex<HistoryInner>>,
}

impl CheckpointHistory {
    /// Every kept record, oldest first.
    pub fn records(&self) -> Vec<CheckpointRecord> {
        lock(&self.inner).records.iter().cloned().collect()
    }

    /// Totals over the run.
    pub fn totals(&self) -> CheckpointTotals {
        let g = lock(&self.inner);
        let mut t = g.totals.clone();
        t.in_progress = g
            .records
            .iter()
            .filter(|r| r.status == CheckpointStatus::InProgress)
            .count() as u64;
        if t.duration_buckets.is_empty() {
            t.duration_buckets = vec![0; CHECKPOINT_BUCKETS_S.len() + 1];
        }
        t
    }

    pub(crate) fn triggered(
        &self,
        id: CheckpointId,
        kind: &str,
        expected_tasks: usize,
        is_final: bool,
        requested: bool,
    ) {
        let mut g = lock(&self.inner);
        g.totals.triggered += 1;
        g.records.push_back(CheckpointRecord {
            id,
            status: CheckpointStatus::InProgress,
            kind: kind.to_string(),
            is_final,
            requested,
            triggered_at_ms: now_ms(),
            duration_ms: None,
            size_bytes: 0,
            referred_bytes: 0,
            expected_tasks: expected_tasks as u32,
            acks: Vec::new(),
            failure: None,
        });
        while g.records.len() > HISTORY_LEN {
            g.records.pop_front();
        }
    }

    fn with<R>(&self, id: CheckpointId, f: impl FnOnce(&mut CheckpointRecord) -> R) -> Option<R> {
        let mut g = lock(&self.inner);
        g.records.iter_mut().rev().find(|r| r.id == id).map(f)
    }

    pub(crate) fn acked(
        &self,
        id: CheckpointId,
        node: &str,
        subtask: u32,
        state_bytes: u64,
        referred_bytes: u64,
    ) {
        let now = now_ms();
        self.with(id, |r| {
            r.size_bytes += state_bytes;
            r.referred_bytes += referred_bytes;
            r.acks.push(TaskAck {
                node: node.to_string(),
                subtask,
                after_ms: now.saturating_sub(r.triggered_at_ms),
                state_bytes,
                referred_bytes,
            });
        });
    }

    pub(crate) fn completed(&self, id: CheckpointId, duration: Duration) {
        let ms = duration.as_millis() as u64;
        let size = self.with(id, |r| {
            r.status = CheckpointStatus::Completed;
            r.duration_ms = Some(ms);
            (r.size_bytes, r.referred_bytes)
        });
        let (size, referred) = size.unwrap_or((0, 0));
        let mut g = lock(&self.inner);
        let t = &mut g.totals;
        t.completed += 1;
        t.last_completed = Some(id);
        t.last_completed_size_bytes = size;
        t.last_completed_referred_bytes = referred;
        t.written_bytes += size;
        t.referred_bytes += referred;
        if t.duration_buckets.is_empty() {
            t.duration_buckets = vec![0; CHECKPOINT_BUCKETS_S.len() + 1];
        }
        let s = duration.as_secs_f64();
        let b = CHECKPOINT_BUCKETS_S
            .iter()
            .position(|&bound| s <= bound)
            .unwrap_or(CHECKPOINT_BUCKETS_S.len());
        t.duration_buckets[b] += 1;
        t.duration_sum_s += s;
    }

    pub(crate) fn failed(&self, id: CheckpointId, reason: &str) {
        let now = now_ms();
        let changed = self.with(id, |r| {
            if r.status != CheckpointStatus::InProgress {
                return false;
            }
            r.status = CheckpointStatus::Failed;
            r.duration_ms = Some(now.saturating_sub(r.triggered_at_ms));
            r.failure = Some(reason.to_string());
            true
        });
        if changed.unwrap_or(false) {
            lock(&self.inner).totals.failed += 1;
        }
    }

    /// The record of checkpoint `id`, if kept.
    pub fn record(&self, id: CheckpointId) -> Option<CheckpointRecord> {
        self.with(id, |r| r.clone())
    }
}

/// A dead-letter message with what varies from row to row taken out, so that rows that failed
/// for the same reason count together: URIs and paths become `…`, numbers `N`.
pub fn reason_of(message: &str) -> String {
    let mut out = Vec::new();
    for token in message.split_whitespace() {
        let bare = token.trim_matches(|c: char| "'\"(),;".contains(c));
        let t = if bare.contains("://") || bare.starts_with('/') || bare.starts_with("./") {
            "…".to_string()
        } else {
            let mut t = String::with_capacity(token.len());
            let mut in_digits = false;
            for c in token.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        t.push('N');
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    t.push(c);
                }
            }
            t
        };
        out.push(t);
    }
    let mut r = out.join(" ");
    if r.len() > 160 {
        let mut cut = 160;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
        r.push('…');
    }
    r
}

/// One dead letter as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterSample {
    /// When it was refused, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The operator that refused the row.
    pub operator: String,
    /// Its subtask.
    pub subtask: u32,
    /// The error's kind (`invalid_input`, `io`, ...).
    pub kind: String,
    /// The error's own message, without location or causes: what the counts group by.
    pub reason: String,
    /// The whole error with its cause chain.
    pub error: String,
    /// The input it came from (a file path or URI), if known.
    pub input: Option<String>,
    /// Where in that input (`line 17`, `row 3`), if known.
    pub position: Option<String>,
    /// The start of the raw input (at most [`RAW_PREVIEW_BYTES`] bytes, invalid UTF-8 replaced).
    pub raw_preview: Option<String>,
}

/// Dead letters counted by operator and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterCount {
    /// The operator.
    pub operator: String,
    /// The reason (the error's message with what varies row to row taken out: [`reason_of`]), or `other` past [`DEAD_LETTER_REASONS`] distinct ones.
    pub reason: String,
    /// Rows refused for it.
    pub count: u64,
}

#[derive(Debug, Default)]
struct LogInner {
    samples: VecDeque<DeadLetterSample>,
    counts: BTreeMap<(String, String), u64>,
}

/// The dead letters of a job: counts by reason and the newest samples. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterLog {
    inner: Arc<Mutex<LogInner>>,
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::Config => "config",
        ErrorKind::Schema => "schema",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::External => "external",
        ErrorKind::Io => "io",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Internal => "internal",
        _ => "other",
    }
}

impl DeadLetterLog {
    /// Records a row refused by subtask `subtask` for `error`.
    pub fn record(&self, error: &Error, dl: &DeadLetter, subtask: u32) {
        let raw_preview = dl.raw.as_ref().map(|r| {
            let mut end = r.len().min(RAW_PREVIEW_BYTES);
            // Cut at a character boundary when the bytes are UTF-8.
            while end > 0 && end < r.len() && (r[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            String::from_utf8_lossy(&r[..end]).into_owned()
        });
        let sample = DeadLetterSample {
            at_ms: now_ms(),
            operator: dl.operator.clone(),
            subtask,
            kind: kind_name(error.kind()).to_string(),
            reason: error.message().to_string(),
            error: dl.error.clone(),
            input: dl.input.clone(),
            position: dl.position.clone(),
            raw_preview,
        };
        let mut g = lock(&self.inner);
        let mut key = (sample.operator.clone(), reason_of(&sample.reason));
        if !g.counts.contains_key(&key) && g.counts.len() >= DEAD_LETTER_REASONS {
            key.1 = "other".into();
        }
        *g.counts.entry(key).or_insert(0) += 1;
        g.samples.push_back(sample);
        while g.samples.len() > DEAD_LETTER_SAMPLES {
            g.samples.pop_front();
        }
    }

    /// The newest samples, newest first, at most `limit`.
    pub fn samples(&self, limit: usize) -> Vec<DeadLetterSample> {
        lock(&self.inner)
            .samples
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Counts by operator and reason, most frequent first.
    pub fn counts(&self) -> Vec<DeadLetterCount> {
        let mut v: Vec<DeadLetterCount> = lock(&self.inner)
            .counts
            .iter()
            .map(|((operator, reason), count)| DeadLetterCount {
                operator: operator.clone(),
                reason: reason.clone(),
                count: *count,
            })
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.count));
        v
    }
}

/// What a watcher asks the checkpoint driver.
#[derive(Debug)]
pub(crate) enum DriverCommand {
    /// Trigger a checkpoint as soon as the protocol allows; answer when it ends.
    CheckpointNow(oneshot::Sender<Result<CheckpointRecord>>),
}

/// What the checkpoint driver shares with watchers: the history it records and the requests
/// it answers.
#[derive(Debug)]
pub(crate) struct DriverWatch {
    pub(crate) history: CheckpointHistory,
    pub(crate) commands: mpsc::UnboundedReceiver<DriverCommand>,
}

/// The requests a watcher may make of a running job. Cloning shares it.
#[derive(Debug, Clone)]
pub struct JobControl {
    pub(crate) stop: CancellationToken,
    pub(crate) driver: Option<mpsc::UnboundedSender<DriverCommand>>,
}

impl JobControl {
    /// Stops the job the way a first Ctrl-C does: the sources stop reading, everything read is
    /// processed and written, the final checkpoint is taken (when the job checkpoints), then the
    /// job ends.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether the job takes checkpoints (otherwise [`checkpoint_now`](Self::checkpoint_now)
    /// fails at once).
    pub fn checkpoints(&self) -> bool {
        self.driver.is_some()
    }

    /// Asks for a checkpoint now (at once, or when the one in flight ends): resolves when it
    /// completes (its record) or fails (the reason). Errors with kind `Config` when the job does
    /// not checkpoint, `Cancelled` when the job ends first.
    pub async fn checkpoint_now(&self) -> Result<CheckpointRecord> {
        let Some(tx) = &self.driver else {
            return Err(Error::config(
                "the job takes no checkpoints (its spec has no 'checkpoint:' section)",
            ));
        };
        let (reply, rx) = oneshot::channel();
        let gone = || Error::new(ErrorKind::Cancelled, "the job ended before the checkpoint");
        tx.send(DriverCommand::CheckpointNow(reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The job's graph as planned: steps, edges and the chains they run in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Steps, in the order they were added.
    pub nodes: Vec<TopologyNode>,
    /// Edges between steps.
    pub edges: Vec<TopologyEdge>,
    /// Chains (one task per subtask each), in topological order.
    pub chains: Vec<TopologyChain>,
}

/// A step of the [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyNode {
    /// The step's name.
    pub name: String,
    /// Source, operator or sink.
    pub role: crate::NodeRole,
    /// Its kind and main options, one line.
    pub description: String,
    /// Parallel instances.
    pub parallelism: u32,
    /// Index of its chain in [`Topology::chains`].
    pub chain: usize,
    /// Whether it is the job's dead-letter sink.
    pub dead_letter: bool,
}

/// An edge of the [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyEdge {
    /// The producing step.
    pub from: String,
    /// The consuming step.
    pub to: String,
    /// `forward`, `rebalance`, `hash(k)` or `broadcast`, as routed.
    pub partitioning: String,
    /// Whether both ends run in one task (batches pass by function call).
    pub chained: bool,
}

/// A chain of the [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyChain {
    /// Its steps, head first.
    pub nodes: Vec<String>,
    /// Its parallelism.
    pub parallelism: u32,
}

impl Topology {
    /// The topology of `graph` as `plan` runs it.
    pub(crate) fn of(graph: &crate::JobGraph, plan: &crate::physical::PhysicalPlan) -> Self {
        let mut chain_of = vec![0; graph.nodes.len()];
        for (i, c) in plan.chains.iter().enumerate() {
            for &n in &c.nodes {
                chain_of[n] = i;
            }
        }
        let nodes = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| TopologyNode {
                name: n.name.clone(),
                role: match n.kind {
                    crate::NodeKind::Source(_) => crate::NodeRole::Source,
                    crate::NodeKind::Operator(_) => crate::NodeRole::Operator,
                    crate::NodeKind::Sink(_) => crate::NodeRole::Sink,
                },
                description: n.description.clone(),
                parallelism: n.parallelism,
                chain: chain_of[i],
                dead_letter: graph.dead_letter == Some(i),
            })
            .collect();
        let mut edges: Vec<TopologyEdge> = graph
            .edges
            .iter()
            .map(|e| {
                let chained = chain_of[e.from] == chain_of[e.to];
                let routed = if !chained
                    && e.partitioning == crate::Partitioning::Forward
                    && graph.nodes[e.from].parallelism != graph.nodes[e.to].parallelism
                {
                    crate::Partitioning::Rebalance
                } else {
                    e.partitioning.clone()
                };
                TopologyEdge {
                    from: graph.nodes[e.from].name.clone(),
                    to: graph.nodes[e.to].name.clone(),
                    partitioning: routed.to_string(),
                    chained,
                }
            })
            .collect();
        if let Some(dl) = graph.dead_letter {
            for (i, n) in graph.nodes.iter().enumerate() {
                if i != dl {
                    edges.push(TopologyEdge {
                        from: n.name.clone(),
                        to: graph.nodes[dl].name.clone(),
                        partitioning: "dead letters".into(),
                        chained: false,
                    });
                }
            }
        }
        let chains = plan
            .chains
            .iter()
            .map(|c| TopologyChain {
                nodes: c
                    .nodes
                    .iter()
                    .map(|&n| graph.nodes[n].name.clone())
                    .collect(),
                parallelism: c.parallelism,
            })
            .collect();
        Topology {
            nodes,
            edges,
            chains,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_reasons_group_rows_that_failed_alike() {
        assert_eq!(
            reason_of("object not found: file:///tmp/x/a.jpg"),
            "object not found: …"
        );
        assert_eq!(
            reason_of("invalid json: expected value at line 1 column 17"),
            "invalid json: expected value at line N column N"
        );
        let log = DeadLetterLog::default();
        let dl = |op: &str| DeadLetter {
            operator: op.into(),
            input: None,
            position: None,
            error: String::new(),
            raw: None,
        };
        for uri in ["s3://b/1.jpg", "s3://b/2.jpg"] {
            log.record(
                &Error::input(format!("object not found: {uri}")),
                &dl("fetch"),
                0,
            );
        }
        log.record(&Error::external("http status 500"), &dl("fetch"), 1);
        let counts = log.counts();
        assert_eq!(counts[0].reason, "object not found: …");
        assert_eq!(counts[0].count, 2);
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn history_keeps_acks_sizes_and_failures() {
        let h = CheckpointHistory::default();
        h.triggered(1, "aligned", 2, false, false);
        h.acked(1, "src", 0, 10, 4);
        h.acked(1, "sink", 0, 5, 0);
        h.completed(1, Duration::from_millis(30));
        h.triggered(2, "aligned", 2, false, true);
        h.failed(2, "declined: disk full");
        h.failed(2, "again");
        let r = h.records();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].status, CheckpointStatus::Completed);
        assert_eq!(r[0].size_bytes, 15);
        assert_eq!(r[0].acks.len(), 2);
        assert_eq!(r[0].duration_ms, Some(30));
        assert_eq!(r[1].status, CheckpointStatus::Failed);
        assert_eq!(r[1].failure.as_deref(), Some("declined: disk full"));
        assert!(r[1].requested);
        let t = h.totals();
        assert_eq!((t.triggered, t.completed, t.failed), (2, 1, 1));
        assert_eq!(t.duration_buckets[2], 1, "30 ms is in the 50 ms bucket");
        assert_eq!(t.last_completed_size_bytes, 15);
        assert_eq!(r[0].referred_bytes, 4);
        assert_eq!(
            (
                t.last_completed_referred_bytes,
                t.written_bytes,
                t.referred_bytes
            ),
            (4, 15, 4)
        );
    }

    #[test]
    fn history_is_bounded() {
        let h = CheckpointHistory::default();
        for id in 1..=(HISTORY_LEN as u64 + 5) {
            h.triggered(id, "aligned", 1, false, false);
            h.completed(id, Duration::from_millis(1));
        }
        let r = h.records();
        assert_eq!(r.len(), HISTORY_LEN);
        assert_eq!(r[0].id, 6);
        assert_eq!(h.totals().completed, HISTORY_LEN as u64 + 5);
    }

    #[test]
    fn dead_letters_count_by_reason_and_keep_the_newest() {
        let log = DeadLetterLog::default();
        for i in 0..(DEAD_LETTER_SAMPLES + 3) {
            let e = Error::input(if i % 2 == 0 { "bad json" } else { "bad image" })
                .in_operator("parse")
                .at(format!("line {i}"));
            let dl = DeadLetter {
                operator: "parse".into(),
                input: Some("in.jsonl".into()),
                position: Some(format!("line {i}")),
                error: e.report(),
                raw: Some("é".repeat(200).into_bytes()),
            };
            log.record(&e, &dl, 1);
        }
        let c = log.counts();
        assert_eq!(c[0].reason, "bad json");
        assert_eq!(c[0].count, 52);
        assert_eq!(c[1].count, 51);
        let s = log.samples(3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].position.as_deref(), Some("line 102"));
        assert_eq!(s[0].kind, "invalid_input");
        let raw = s[0].raw_preview.as_deref().unwrap_or_default();
        assert!(raw.len() <= RAW_PREVIEW_BYTES && raw.chars().all(|c| c == 'é'));
        assert_eq!(log.samples(1000).len(), DEAD_LETTER_SAMPLES);
    }
}
