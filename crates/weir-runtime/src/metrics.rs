//! Per-operator metrics: counters the runtime and operators update, and snapshots the progress
//! display and the end-of-job summary read.
//!
//! Every counter is a relaxed atomic: cheap to update on the hot path, read without locks.
//! Besides the counters: each instance's current watermark, the fill of its input queues, a
//! histogram of batch latency (batching operators), and the job's [`DeadLetterLog`].

use crate::channel::QueueGauge;
use crate::observe::DeadLetterLog;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the batch latency histogram; a last bucket takes the rest.
pub const BATCH_LATENCY_BUCKETS_S: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const N_LATENCY: usize = BATCH_LATENCY_BUCKETS_S.len() + 1;

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
    late_rows: AtomicU64,
    state_bytes: AtomicU64,
    state_bytes_peak: AtomicU64,
    state_entries: AtomicU64,
    watermark: AtomicI64,
    watermark_known: AtomicBool,
    watermark_idle: AtomicBool,
    batch_latency: [AtomicU64; N_LATENCY],
    batch_latency_sum_us: AtomicU64,
    inputs: OnceLock<Vec<QueueGauge>>,
    subtask: u32,
    dead_letter_log: Option<DeadLetterLog>,
    waiting: Mutex<Option<&'static str>>,
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
        let s = latency.as_secs_f64();
        let b = BATCH_LATENCY_BUCKETS_S
            .iter()
            .position(|&bound| s <= bound)
            .unwrap_or(N_LATENCY - 1);
        self.batch_latency[b].fetch_add(1, Relaxed);
        self.batch_latency_sum_us.fetch_add(us, Relaxed);
    }
    /// Records the watermark this instance has reached (event time, milliseconds).
    pub fn set_watermark(&self, ms: i64) {
        self.watermark.store(ms, Relaxed);
        self.watermark_known.store(true, Relaxed);
    }
    /// Records whether the instance's output is idle (its source, or every input, went idle:
    /// [`crate::WatermarkStatus::Idle`]), so its watermark holds nothing back downstream.
    pub fn set_watermark_idle(&self, idle: bool) {
        self.watermark_idle.store(idle, Relaxed);
    }
    /// The watermark this instance has reached, if any reached it.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark_known
            .load(Relaxed)
            .then(|| self.watermark.load(Relaxed))
    }
    /// Input tasks: the queues of the instance's inputs, whose fill the metrics report (set once,
    /// when the job is wired).
    pub(crate) fn set_input_queues(&self, queues: Vec<QueueGauge>) {
        let _ = self.inputs.set(queues);
    }
    /// Fill of each input queue: (bytes queued, capacity in bytes).
    pub fn input_queues(&self) -> Vec<(u64, u64)> {
        self.inputs
            .get()
            .map(|q| {
                q.iter()
                    .map(|g| (g.queued_bytes() as u64, g.capacity_bytes() as u64))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Records a dead letter in the job's [`DeadLetterLog`] (the count of
    /// [`add_dead_letter`](Self::add_dead_letter) is separate).
    pub fn record_dead_letter(&self, error: &weir_types::Error, dl: &weir_types::DeadLetter) {
        if let Some(log) = &self.dead_letter_log {
            log.record(error, dl, self.subtask);
        }
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
    /// Counts rows that arrived behind the watermark (see [`crate::event_time`]).
    pub fn add_late(&self, rows: u64) {
        self.late_rows.fetch_add(rows, Relaxed);
    }
    /// Stateful operators: the memory their state holds now (approximately) and how many entries
    /// it has (a key and window group of an aggregate, a buffered row of a join); the peak of the
    /// bytes is kept too, for the end-of-job summary.
    pub fn set_state(&self, bytes: u64, entries: u64) {
        self.state_bytes.store(bytes, Relaxed);
        self.state_bytes_peak.fetch_max(bytes, Relaxed);
        self.state_entries.store(entries, Relaxed);
    }
    /// Says what external system this instance is waiting for (`Some("waiting for Kafka")`) while
    /// it cannot reach it, and `None` once it can again; the progress display shows it.
    pub fn set_waiting(&self, what: Option<&'static str>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = what;
    }
    /// What the instance waits for, if anything (see [`set_waiting`](Self::set_waiting)).
    pub fn waiting(&self) -> Option<&'static str> {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Marks the instance as finished.
    pub fn set_finished(&self) {
        self.finished.store(1, Relaxed);
    }

    fn read(&self) -> MetricsSnapshot {
        let (queued_bytes, queue_capacity_bytes) = self
            .input_queues()
            .iter()
            .fold((0, 0), |(q, c), (a, b)| (q + a, c + b));
        MetricsSnapshot {
            watermark_ms: self.watermark(),
            watermark_idle_subtasks: u64::from(self.watermark_idle.load(Relaxed)),
            queued_bytes,
            queue_capacity_bytes,
            batch_latency_buckets: std::array::from_fn(|i| self.batch_latency[i].load(Relaxed)),
            batch_latency_sum_us: self.batch_latency_sum_us.load(Relaxed),
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
            late_rows: self.late_rows.load(Relaxed),
            state_bytes: self.state_bytes.load(Relaxed),
            state_bytes_peak: self.state_bytes_peak.load(Relaxed),
            state_entries: self.state_entries.load(Relaxed),
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
    /// Rows that arrived behind the watermark, summed.
    pub late_rows: u64,
    /// Stateful operators: bytes their state holds in memory now (approximately), summed.
    pub state_bytes: u64,
    /// Stateful operators: the most bytes their state held, summed over instances' peaks.
    pub state_bytes_peak: u64,
    /// Stateful operators: entries their state holds now (key and window groups of an
    /// aggregate, buffered rows of a join or top-n), summed.
    pub state_entries: u64,
    /// The watermark reached (event time, ms): the least over active instances that reached
    /// one (over all of them when every one is idle), as downstream merges it.
    pub watermark_ms: Option<i64>,
    /// Instances whose watermark status is idle.
    pub watermark_idle_subtasks: u64,
    /// Input tasks: bytes waiting in the input queues.
    pub queued_bytes: u64,
    /// Input tasks: capacity of the input queues, bytes.
    pub queue_capacity_bytes: u64,
    /// Batching operators: batches run per latency bucket ([`BATCH_LATENCY_BUCKETS_S`], then
    /// the rest); not cumulative.
    #[serde(skip)]
    pub batch_latency_buckets: [u64; N_LATENCY],
    /// Batching operators: sum of the batch latencies, microseconds.
    #[serde(skip)]
    pub batch_latency_sum_us: u64,
}

impl MetricsSnapshot {
    fn add(&mut self, o: &MetricsSnapshot) {
        // An idle side holds nothing back unless both are idle (what `WatermarkMerge` does).
        let (self_idle, o_idle) = (
            self.watermark_idle_subtasks == self.subtasks,
            o.watermark_idle_subtasks == o.subtasks,
        );
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
        self.late_rows += o.late_rows;
        self.state_bytes += o.state_bytes;
        self.state_bytes_peak += o.state_bytes_peak;
        self.state_entries += o.state_entries;
        self.watermark_ms = match (self.watermark_ms, o.watermark_ms) {
            (_, b) if self_idle && !o_idle => b,
            (a, _) if o_idle && !self_idle => a,
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.watermark_idle_subtasks += o.watermark_idle_subtasks;
        self.queued_bytes += o.queued_bytes;
        self.queue_capacity_bytes += o.queue_capacity_bytes;
        for (a, b) in self
            .batch_latency_buckets
            .iter_mut()
            .zip(o.batch_latency_buckets)
        {
            *a += b;
        }
        self.batch_latency_sum_us += o.batch_latency_sum_us;
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
    /// What an instance is waiting for (an external system it cannot reach), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Debug)]
struct NodeEntry {
    name: String,
    role: NodeRole,
    instances: Vec<Arc<OperatorMetrics>>,
}

/// A node's metrics per instance, named.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSubtasks {
    /// The node's counters summed over its instances.
    #[serde(flatten)]
    pub node: NodeMetrics,
    /// Each instance's counters, by subtask index.
    pub subtasks: Vec<MetricsSnapshot>,
    /// Each instance's input queues: (bytes queued, capacity), by subtask index.
    pub input_queues: Vec<Vec<(u64, u64)>>,
}

/// All metrics of a job, shared between the runtime and whoever displays them.
#[derive(Debug, Default, Clone)]
pub struct MetricsRegistry {
    nodes: Arc<Mutex<Vec<NodeEntry>>>,
    dead_letters: DeadLetterLog,
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
            .map(|subtask| {
                Arc::new(OperatorMetrics {
                    subtask,
                    dead_letter_log: Some(self.dead_letters.clone()),
                    ..OperatorMetrics::default()
                })
            })
            .collect();
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.push(NodeEntry {
            name: name.into(),
            role,
            instances: instances.clone(),
        });
        instances
    }

    /// Dead letters by node and reason, most frequent first: `(node, reason, count)` (from the
    /// job's [`DeadLetterLog`], which groups rows that failed alike by
    /// [`reason_of`](crate::observe::reason_of)).
    pub fn dead_letter_reasons(&self) -> Vec<(String, String, u64)> {
        self.dead_letters
            .counts()
            .into_iter()
            .map(|c| (c.operator, c.reason, c.count))
            .collect()
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
                    waiting: n
                        .instances
                        .iter()
                        .find_map(|i| i.waiting())
                        .map(str::to_string),
                }
            })
            .collect()
    }

    /// Current counters of every node and of each of its instances, in plan order.
    pub fn snapshot_subtasks(&self) -> Vec<NodeSubtasks> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .map(|n| {
                let subtasks: Vec<MetricsSnapshot> = n.instances.iter().map(|i| i.read()).collect();
                let mut totals = MetricsSnapshot::default();
                for s in &subtasks {
                    totals.add(s);
                }
                NodeSubtasks {
                    node: NodeMetrics {
                        name: n.name.clone(),
                        role: n.role,
                        parallelism: n.instances.len() as u32,
                        totals,
                        waiting: n
                            .instances
                            .iter()
                            .find_map(|i| i.waiting())
                            .map(str::to_string),
                    },
                    subtasks,
                    input_queues: n.instances.iter().map(|i| i.input_queues()).collect(),
                }
            })
            .collect()
    }

    /// The job's dead letters: counts by reason and the newest samples.
    pub fn dead_letters(&self) -> &DeadLetterLog {
        &self.dead_letters
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
    fn state_size_is_a_gauge_with_a_peak() {
        let reg = MetricsRegistry::default();
        let inst = reg.register("agg", NodeRole::Operator, 2);
        inst[0].set_state(1_000, 10);
        inst[0].set_state(400, 4);
        inst[1].set_state(50, 1);
        let t = &reg.snapshot()[0].totals;
        assert_eq!(
            (t.state_bytes, t.state_bytes_peak, t.state_entries),
            (450, 1_050, 5)
        );
    }

    #[test]
    fn an_idle_instance_holds_the_watermark_back_only_when_all_are_idle() {
        let reg = MetricsRegistry::default();
        let inst = reg.register("w", NodeRole::Source, 3);
        inst[0].set_watermark(9_000);
        inst[1].set_watermark(2_000);
        inst[1].set_watermark_idle(true);
        let t = &reg.snapshot()[0].totals;
        assert_eq!(
            (t.watermark_ms, t.watermark_idle_subtasks),
            (Some(9_000), 1)
        );
        inst[0].set_watermark_idle(true);
        inst[2].set_watermark_idle(true);
        let t = &reg.snapshot()[0].totals;
        assert_eq!(
            (t.watermark_ms, t.watermark_idle_subtasks),
            (Some(2_000), 3)
        );
        inst[1].set_watermark_idle(false);
        assert_eq!(reg.snapshot()[0].totals.watermark_ms, Some(2_000));
        assert_eq!(
            reg.snapshot_subtasks()[0].subtasks[0].watermark_idle_subtasks,
            1
        );
    }

    #[test]
    fn watermarks_queues_and_latency_per_subtask() {
        let reg = MetricsRegistry::default();
        let inst = reg.register("w", NodeRole::Operator, 2);
        assert_eq!(reg.snapshot()[0].totals.watermark_ms, None);
        inst[0].set_watermark(5_000);
        assert_eq!(reg.snapshot()[0].totals.watermark_ms, Some(5_000));
        inst[1].set_watermark(3_000);
        inst[1].record_batch(8, Duration::from_millis(20));
        let (tx, _rx) = crate::channel::channel(1000);
        inst[1].set_input_queues(vec![_rx.gauge()]);
        drop(tx);
        let d = reg.snapshot_subtasks();
        assert_eq!(d[0].node.totals.watermark_ms, Some(3_000));
        assert_eq!(d[0].subtasks[0].watermark_ms, Some(5_000));
        assert_eq!(
            d[0].subtasks[1].batch_latency_buckets[4], 1,
            "20 ms: the 25 ms bucket"
        );
        assert_eq!(d[0].input_queues[1], vec![(0, 1000)]);
        assert_eq!(d[0].node.totals.queue_capacity_bytes, 1000);
    }
}
