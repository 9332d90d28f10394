//! Per-operator metrics: counters the runtime and operators update, and snapshots the progress
//! display and the end-of-job summary read.
//!
//! Every counter is a relaxed atomic: cheap to update on the hot path, read without locks.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters of one parallel instance of a node.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    batches_out: AtomicU64,
    errors: AtomicU64,
    dead_letters: AtomicU64,
    busy_ns: AtomicU64,
    backpressured_ns: AtomicU64,
    idle_ns: AtomicU64,
    progress: AtomicU64,
    total: AtomicU64,
    finished: AtomicU64,
    batch_rows_last: AtomicU64,
    batch_latency_us_ewma: AtomicU64,
    model_busy_ns: AtomicU64,
    model_instances: AtomicU64,
    /// Dead letters by reason (see [`OperatorMetrics::add_dead_letter_reason`]).
    reasons: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Distinct dead-letter reasons kept per instance; the rest count as one.
const MAX_REASONS: usize = 32;
/// The reason the others are counted under.
const OTHER_REASONS: &str = "(other reasons)";

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

impl OperatorMetrics {
    /// Counts an input batch.
    pub fn add_in(&self, rows: usize, bytes: usize) {
        self.rows_in.fetch_add(rows as u64, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }
    /// Counts an output batch.
    pub fn add_out(&self, rows: usize, bytes: usize) {
        self.rows_out.fetch_add(rows as u64, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
        self.batches_out.fetch_add(1, Relaxed);
    }
    /// Counts a bad row (failed or dead-lettered).
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
    /// Counts a row written to the dead-letter output.
    pub fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Relaxed);
    }
    /// Counts a dead letter under its reason ([`reason_of`] its message); at most 32 distinct
    /// reasons per instance are kept, the others count as `(other reasons)`.
    pub fn add_dead_letter_reason(&self, message: &str) {
        let reason = reason_of(message);
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let key = if reasons.contains_key(&reason) || reasons.len() < MAX_REASONS {
            reason
        } else {
            OTHER_REASONS.to_string()
        };
        *reasons.entry(key).or_default() += 1;
    }
    /// Adds time spent working.
    pub fn add_busy(&self, d: Duration) {
        self.busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Adds time spent waiting for room downstream.
    pub fn add_backpressured(&self, d: Duration) {
        self.backpressured_ns
            .fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Adds time spent waiting for input.
    pub fn add_idle(&self, d: Duration) {
        self.idle_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Sources: sets the known total amount of work (for example, input bytes), for the ETA.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Relaxed);
    }
    /// Sources: adds to the amount of work done, in the unit of [`set_total`](Self::set_total).
    pub fn add_progress(&self, n: u64) {
        self.progress.fetch_add(n, Relaxed);
    }
    /// Operators that batch (inference): records the size and latency of a batch just run; keeps
    /// the last size and an exponentially weighted average latency (weight 1/8).
    pub fn record_batch(&self, rows: usize, latency: Duration) {
        self.batch_rows_last.store(rows as u64, Relaxed);
        let us = latency.as_micros() as u64;
        let old = self.batch_latency_us_ewma.load(Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.batch_latency_us_ewma.store(new, Relaxed);
    }
    /// Operators that run models: adds time a model instance spent running a batch (so the
    /// summary can say how busy the models were, apart from the operator's task).
    pub fn add_model_busy(&self, d: Duration) {
        self.model_busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Operators that run models: the number of model instances this operator instance keeps.
    pub fn set_model_instances(&self, n: usize) {
        self.model_instances.store(n as u64, Relaxed);
    }
    /// Marks the instance as finished.
    pub fn set_finished(&self) {
        self.finished.store(1, Relaxed);
    }

    fn read(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            rows_in: self.rows_in.load(Relaxed),
            rows_out: self.rows_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            batches_out: self.batches_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            busy_ms: self.busy_ns.load(Relaxed) / 1_000_000,
            backpressured_ms: self.backpressured_ns.load(Relaxed) / 1_000_000,
            idle_ms: self.idle_ns.load(Relaxed) / 1_000_000,
            progress: self.progress.load(Relaxed),
            total: self.total.load(Relaxed),
            finished_subtasks: self.finished.load(Relaxed),
            subtasks: 1,
            batch_rows_last: self.batch_rows_last.load(Relaxed),
            batch_latency_us_ewma: self.batch_latency_us_ewma.load(Relaxed),
            model_busy_ms: self.model_busy_ns.load(Relaxed) / 1_000_000,
            model_instances: self.model_instances.load(Relaxed),
        }
    }
}

/// The role of a node, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Produces data.
    Source,
    /// Transforms data.
    Operator,
    /// Writes data out.
    Sink,
}

/// Counters of a node summed over its instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Bytes received (Arrow memory size).
    pub bytes_in: u64,
    /// Bytes emitted (Arrow memory size).
    pub bytes_out: u64,
    /// Batches emitted.
    pub batches_out: u64,
    /// Bad rows seen.
    pub errors: u64,
    /// Rows written to the dead-letter output.
    pub dead_letters: u64,
    /// Milliseconds spent working, summed over instances.
    pub busy_ms: u64,
    /// Milliseconds spent waiting for room downstream.
    pub backpressured_ms: u64,
    /// Milliseconds spent waiting for input.
    pub idle_ms: u64,
    /// Sources: work done (bytes of input read, usually).
    pub progress: u64,
    /// Sources: total work known (0 when unknown or unbounded).
    pub total: u64,
    /// Instances that have finished.
    pub finished_subtasks: u64,
    /// Instances.
    pub subtasks: u64,
    /// Batching operators: rows of the last batch run (summed over instances).
    pub batch_rows_last: u64,
    /// Batching operators: average batch latency in microseconds (maximum over instances).
    pub batch_latency_us_ewma: u64,
    /// Model operators: milliseconds model instances spent running batches, summed.
    pub model_busy_ms: u64,
    /// Model operators: model instances, summed.
    pub model_instances: u64,
}

impl MetricsSnapshot {
    fn add(&mut self, o: &MetricsSnapshot) {
        self.rows_in += o.rows_in;
        self.rows_out += o.rows_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.batches_out += o.batches_out;
        self.errors += o.errors;
        self.dead_letters += o.dead_letters;
        self.busy_ms += o.busy_ms;
        self.backpressured_ms += o.backpressured_ms;
        self.idle_ms += o.idle_ms;
        self.progress += o.progress;
        self.total += o.total;
        self.finished_subtasks += o.finished_subtasks;
        self.subtasks += o.subtasks;
        self.batch_rows_last += o.batch_rows_last;
        self.batch_latency_us_ewma = self.batch_latency_us_ewma.max(o.batch_latency_us_ewma);
        self.model_busy_ms += o.model_busy_ms;
        self.model_instances += o.model_instances;
    }
}

/// A node's metrics, named.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    /// The node's name.
    pub name: String,
    /// Its role.
    pub role: NodeRole,
    /// Its parallelism.
    pub parallelism: u32,
    /// Counters summed over instances.
    #[serde(flatten)]
    pub totals: MetricsSnapshot,
}

#[derive(Debug)]
struct NodeEntry {
    name: String,
    role: NodeRole,
    instances: Vec<Arc<OperatorMetrics>>,
}

/// All metrics of a job, shared between the runtime and whoever displays them.
#[derive(Debug, Default, Clone)]
pub struct MetricsRegistry {
    nodes: Arc<Mutex<Vec<NodeEntry>>>,
}

impl MetricsRegistry {
    /// Registers the instances of a node (in plan order) and returns their counters.
    pub fn register(
        &self,
        name: &str,
        role: NodeRole,
        parallelism: u32,
    ) -> Vec<Arc<OperatorMetrics>> {
        let instances: Vec<_> = (0..parallelism)
            .map(|_| Arc::new(OperatorMetrics::default()))
            .collect();
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.push(NodeEntry {
            name: name.into(),
            role,
            instances: instances.clone(),
        });
        instances
    }

    /// Dead letters by node and reason, most frequent first: `(node, reason, count)`.
    pub fn dead_letter_reasons(&self) -> Vec<(String, String, u64)> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for n in nodes.iter() {
            for i in &n.instances {
                let reasons = i.reasons.lock().unwrap_or_else(|p| p.into_inner());
                for (r, c) in reasons.iter() {
                    *out.entry((n.name.clone(), r.clone())).or_default() += c;
                }
            }
        }
        let mut v: Vec<(String, String, u64)> =
            out.into_iter().map(|((n, r), c)| (n, r, c)).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.cmp(b)));
        v
    }

    /// Current counters of every node, in plan order.
    pub fn snapshot(&self) -> Vec<NodeMetrics> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .map(|n| {
                let mut totals = MetricsSnapshot::default();
                for i in &n.instances {
                    totals.add(&i.read());
                }
                NodeMetrics {
                    name: n.name.clone(),
                    role: n.role,
                    parallelism: n.instances.len() as u32,
                    totals,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_instances() {
        let reg = MetricsRegistry::default();
        let inst = reg.register("f", NodeRole::Operator, 2);
        inst[0].add_in(10, 100);
        inst[1].add_in(5, 50);
        inst[1].add_busy(Duration::from_millis(3));
        let s = reg.snapshot();
        assert_eq!(s[0].totals.rows_in, 15);
        assert_eq!(s[0].totals.bytes_in, 150);
        assert_eq!(s[0].totals.busy_ms, 3);
        assert_eq!(s[0].totals.subtasks, 2);
    }

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
        let reg = MetricsRegistry::default();
        let inst = reg.register("fetch", NodeRole::Operator, 2);
        inst[0].add_dead_letter_reason("object not found: s3://b/1.jpg");
        inst[1].add_dead_letter_reason("object not found: s3://b/2.jpg");
        inst[1].add_dead_letter_reason("http status 500");
        for i in 0..40 {
            inst[0].add_dead_letter_reason(&format!("odd case {i}x{}", "y".repeat(i)));
        }
        let r = reg.dead_letter_reasons();
        assert_eq!(r[0], ("fetch".into(), OTHER_REASONS.into(), 9));
        assert!(
            r.iter()
                .any(|(_, reason, c)| reason == "object not found: …" && *c == 2)
        );
        let distinct = r.len();
        assert!(distinct <= 2 * MAX_REASONS + 1, "{distinct}");
        assert!(r.iter().any(|(_, reason, _)| reason == OTHER_REASONS));
    }
}
