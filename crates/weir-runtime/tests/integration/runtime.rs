//! Runtime behaviour end to end: backpressure bounds memory, partitioners route correctly, errors
//! name their operator, stop requests end jobs cleanly.

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_runtime::*;
use weir_types::{Error, Result};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Emits `batches` batches of `rows` rows, counting rows produced.
struct Counter {
    batches: u64,
    rows: i64,
    next: u64,
    produced: Arc<AtomicU64>,
    endless: bool,
}

#[async_trait]
impl Source for Counter {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if self.next >= self.batches && !self.endless {
            return Ok(SourceEvent::Finished);
        }
        let start = self.next as i64 * self.rows;
        self.next += 1;
        self.produced.fetch_add(self.rows as u64, Ordering::SeqCst);
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(start..start + self.rows));
        Ok(SourceEvent::Batch(RecordBatch::try_new(
            schema(),
            vec![col],
        )?))
    }
}

fn counter(batches: u64, rows: i64, produced: Arc<AtomicU64>) -> Counter {
    Counter {
        batches,
        rows,
        next: 0,
        produced,
        endless: false,
    }
}

/// Keeps every value and the subtask that saw it; sleeps per batch if asked.
struct Collect {
    seen: Arc<Mutex<Vec<(u32, i64)>>>,
    subtask: u32,
    delay: Duration,
    consumed: Arc<AtomicU64>,
}

#[async_trait]
impl Operator for Collect {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let n = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::internal("i64"))?;
        let mut seen = self.seen.lock().map_err(|_| Error::internal("lock"))?;
        for i in 0..n.len() {
            seen.push((self.subtask, n.value(i)));
        }
        self.consumed.fetch_add(n.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

struct Sinks {
    seen: Arc<Mutex<Vec<(u32, i64)>>>,
    consumed: Arc<AtomicU64>,
}

impl Sinks {
    fn new() -> Self {
        Sinks {
            seen: Arc::default(),
            consumed: Arc::default(),
        }
    }
    fn factory(
        &self,
        delay: Duration,
    ) -> impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static {
        let seen = self.seen.clone();
        let consumed = self.consumed.clone();
        move |info: &TaskInfo| {
            Ok(Box::new(Collect {
                seen: seen.clone(),
                subtask: info.subtask,
                delay,
                consumed: consumed.clone(),
            }) as Box<dyn Operator>)
        }
    }
    fn values(&self) -> Vec<(u32, i64)> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Keeps `n % modulo` as the key column `k`.
struct ModKey(i64);
#[async_trait]
impl Operator for ModKey {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let n = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::internal("i64"))?;
        let k: ArrayRef = Arc::new(Int64Array::from_iter_values(
            n.values().iter().map(|v| v % self.0),
        ));
        out.emit(RecordBatch::try_new(schema(), vec![k])?);
        Ok(())
    }
}

#[test]
fn a_slow_sink_bounds_how_far_the_source_runs_ahead() {
    let produced = Arc::new(AtomicU64::new(0));
    let sinks = Sinks::new();
    // Each batch of 1000 i64 is ~8 KB: a 32 KB channel holds about 4 of them.
    let cfg = JobConfig {
        channel_capacity_bytes: 32 << 10,
        ..JobConfig::default()
    };
    let mut g = JobGraph::new(cfg);
    let p = produced.clone();
    let s = g.add_source("fast", 1, move |_| {
        Ok(Box::new(counter(200, 1000, p.clone())))
    });
    let k = g.add_sink("slow", 1, sinks.factory(Duration::from_millis(5)));
    g.connect(s, k, Partitioning::Rebalance); // not chained: a channel sits between them
    let rt = Runtime::new(2).expect("runtime");
    let handle = rt.start(g).expect("start");
    let mut max_ahead = 0;
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(3));
        let ahead = produced.load(Ordering::SeqCst)
            - sinks
                .consumed
                .load(Ordering::SeqCst)
                .min(produced.load(Ordering::SeqCst));
        max_ahead = max_ahead.max(ahead);
    }
    let report = rt.block_on(handle.wait()).expect("job");
    assert_eq!(sinks.values().len(), 200_000);
    // Channel (about 4 batches) + one batch being sent + one being processed, with slack for timing.
    assert!(
        max_ahead <= 8_000,
        "the source ran {max_ahead} rows ahead of a slow sink"
    );
    let src = &report.nodes[0].totals;
    assert!(
        src.backpressured_ms > 100,
        "the source should report backpressure: {src:?}"
    );
}

#[test]
fn hash_partitioning_sends_each_key_to_one_subtask() {
    let sinks = Sinks::new();
    let mut g = JobGraph::new(JobConfig::default());
    let s = g.add_source("src", 2, |info| {
        // Each source subtask emits a different range.
        let mut c = counter(10, 100, Arc::default());
        c.next = info.subtask as u64 * 10;
        c.batches = c.next + 10;
        Ok(Box::new(c))
    });
    let m = g.add_operator("mod", 2, |_| Ok(Box::new(ModKey(17))));
    let k = g.add_sink("sink", 4, sinks.factory(Duration::ZERO));
    g.connect(s, m, Partitioning::Forward);
    g.connect(
        m,
        k,
        Partitioning::Hash {
            keys: vec!["n".into()],
        },
    );
    Runtime::new(2).expect("runtime").run(g).expect("job");
    let vals = sinks.values();
    assert_eq!(vals.len(), 2000);
    let mut owner: HashMap<i64, u32> = HashMap::new();
    for (sub, key) in vals {
        assert_eq!(
            *owner.entry(key).or_insert(sub),
            sub,
            "key {key} went to two subtasks"
        );
    }
    assert_eq!(owner.len(), 17);
    assert!(
        owner.values().collect::<HashSet<_>>().len() > 1,
        "all keys on one subtask"
    );
}

#[test]
fn broadcast_and_rebalance_deliver_as_promised() {
    for (part, want) in [
        (Partitioning::Broadcast, 3 * 500),
        (Partitioning::Rebalance, 500),
    ] {
        let sinks = Sinks::new();
        let mut g = JobGraph::new(JobConfig::default());
        let s = g.add_source("src", 1, |_| Ok(Box::new(counter(5, 100, Arc::default()))));
        let k = g.add_sink("sink", 3, sinks.factory(Duration::ZERO));
        g.connect(s, k, part.clone());
        Runtime::new(2).expect("runtime").run(g).expect("job");
        let vals = sinks.values();
        assert_eq!(vals.len(), want, "{part}");
        let subtasks: HashSet<u32> = vals.iter().map(|(s, _)| *s).collect();
        assert_eq!(subtasks.len(), 3, "{part}: every subtask gets data");
    }
}

struct Fails;
#[async_trait]
impl Operator for Fails {
    async fn process_batch(
        &mut self,
        _: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        let io = std::io::Error::other("disk on fire");
        Err(Error::io("cannot write part file").with_source(io))
    }
}

#[test]
fn a_failing_operator_fails_the_job_with_its_name_and_cause() {
    let mut g = JobGraph::new(JobConfig::default());
    let s = g.add_source("src", 2, |_| {
        Ok(Box::new(counter(1000, 10, Arc::default())))
    });
    let f = g.add_operator("writer", 2, |_| Ok(Box::new(Fails)));
    let k = g.add_sink("sink", 1, |_| Ok(Box::new(Fails)));
    g.connect(s, f, Partitioning::Forward);
    g.connect(f, k, Partitioning::Rebalance);
    let err = Runtime::new(2)
        .expect("runtime")
        .run(g)
        .expect_err("must fail");
    assert_eq!(err.operator(), Some("writer"), "{}", err.report());
    assert!(
        err.report().contains("caused by: disk on fire"),
        "{}",
        err.report()
    );
}

#[test]
fn stop_ends_an_endless_source_cleanly_and_everything_read_is_delivered() {
    let produced = Arc::new(AtomicU64::new(0));
    let sinks = Sinks::new();
    let mut g = JobGraph::new(JobConfig::default());
    let p = produced.clone();
    let s = g.add_source("endless", 1, move |_| {
        let mut c = counter(0, 10, p.clone());
        c.endless = true;
        Ok(Box::new(c))
    });
    let k = g.add_sink("sink", 2, sinks.factory(Duration::ZERO));
    g.connect(s, k, Partitioning::Rebalance);
    let rt = Runtime::new(2).expect("runtime");
    let handle = rt.start(g).expect("start");
    std::thread::sleep(Duration::from_millis(100));
    handle.stop();
    let report = rt.block_on(handle.wait()).expect("job");
    assert!(report.stopped_early);
    assert!(produced.load(Ordering::SeqCst) > 0);
    assert_eq!(
        sinks.values().len() as u64,
        produced.load(Ordering::SeqCst),
        "rows read but not delivered"
    );
}

#[test]
fn chained_operators_count_rows_per_operator() {
    let sinks = Sinks::new();
    let mut g = JobGraph::new(JobConfig::default());
    let s = g.add_source("src", 1, |_| Ok(Box::new(counter(3, 10, Arc::default()))));
    let m = g.add_operator("mod", 1, |_| Ok(Box::new(ModKey(3))));
    let k = g.add_sink("sink", 1, sinks.factory(Duration::ZERO));
    g.connect(s, m, Partitioning::Forward);
    g.connect(m, k, Partitioning::Forward);
    assert_eq!(physical::plan(&g).expect("plan").chains.len(), 1);
    let report = Runtime::new(1).expect("runtime").run(g).expect("job");
    let by_name: HashMap<_, _> = report
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.totals))
        .collect();
    assert_eq!(by_name["src"].rows_out, 30);
    assert_eq!(by_name["mod"].rows_in, 30);
    assert_eq!(by_name["mod"].rows_out, 30);
    assert_eq!(by_name["sink"].rows_in, 30);
}
