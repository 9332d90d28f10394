//! The runtime interfaces the streaming core builds on, end to end: an operator with two inputs
//! knows which one each batch came from; sources emit watermarks, which are min-merged over the
//! inputs of every task, reach `Operator::on_watermark` and are forwarded; an idle source does not
//! hold event time back; tasks are told when a checkpoint is aborted.

use arrow::array::{Array, ArrayRef, Int64Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_checkpoint::{CheckpointConfig, CheckpointStore, FailingStore};
use weir_runtime::*;
use weir_types::{Barrier, CheckpointId, Error, Result};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn values(b: &RecordBatch, col: usize) -> Result<Vec<i64>> {
    let a = b
        .column(col)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| Error::internal("not i64"))?;
    Ok((0..a.len()).map(|i| a.value(i)).collect())
}

/// Emits the numbers `from + k * step` for `k < count`, one per batch, each followed by a
/// watermark equal to it (when `watermarks`). Subtask `i` of `p` takes the ks with `k % p == i`.
struct Numbers {
    from: i64,
    step: i64,
    count: i64,
    k: i64,
    stride: i64,
    watermarks: bool,
    delay: Duration,
}

#[async_trait]
impl Source for Numbers {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.k = i64::from(ctx.info().subtask);
        self.stride = i64::from(ctx.info().parallelism);
        Ok(())
    }
    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if self.k >= self.count {
            return Ok(SourceEvent::Finished);
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let n = self.from + self.k * self.step;
        self.k += self.stride;
        if self.watermarks {
            ctx.emit_watermark(Watermark(n));
        }
        let col: ArrayRef = Arc::new(Int64Array::from(vec![n]));
        Ok(SourceEvent::Batch(RecordBatch::try_new(
            schema(),
            vec![col],
        )?))
    }
}

fn numbers(from: i64, step: i64, count: i64, watermarks: bool) -> Numbers {
    Numbers {
        from,
        step,
        count,
        k: 0,
        stride: 1,
        watermarks,
        delay: Duration::from_millis(1),
    }
}

/// Adds the input each row came from as a second column, and checks the input count.
struct Tag {
    inputs: usize,
}

fn tagged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("input", DataType::UInt64, false),
    ]))
}

#[async_trait]
impl Operator for Tag {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if ctx.input_count() != self.inputs {
            return Err(Error::internal(format!(
                "expected {} inputs, the context says {}",
                self.inputs,
                ctx.input_count()
            )));
        }
        let input: ArrayRef = Arc::new(UInt64Array::from(vec![ctx.input() as u64; b.num_rows()]));
        out.emit(RecordBatch::try_new(
            tagged_schema(),
            vec![b.column(0).clone(), input],
        )?);
        Ok(())
    }
}

type Rows = Arc<Mutex<Vec<(i64, u64)>>>;

/// Keeps `(n, input)` rows.
struct KeepTagged(Rows);

#[async_trait]
impl Operator for KeepTagged {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        ctx: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        // Chained behind `tag`: one input, always input 0.
        if ctx.input() != 0 || ctx.input_count() != 1 {
            return Err(Error::internal("a chained operator has one input, input 0"));
        }
        let n = values(&b, 0)?;
        let i = b
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| Error::internal("not u64"))?;
        let mut rows = self.0.lock().map_err(|_| Error::internal("lock"))?;
        rows.extend(n.into_iter().zip(i.values().iter().copied()));
        Ok(())
    }
}

#[test]
fn a_two_input_operator_knows_which_input_each_batch_came_from() {
    let rows: Rows = Arc::default();
    let mut g = JobGraph::new(JobConfig::default());
    let left = g.add_source("left", 2, |_| Ok(Box::new(numbers(0, 1, 100, false))));
    let right = g.add_source("right", 1, |_| Ok(Box::new(numbers(1000, 1, 50, false))));
    let tag = g.add_operator("tag", 2, |_| Ok(Box::new(Tag { inputs: 2 })));
    let r = rows.clone();
    let keep = g.add_sink("keep", 2, move |_| Ok(Box::new(KeepTagged(r.clone()))));
    g.connect(
        left,
        tag,
        Partitioning::Hash {
            keys: vec!["n".into()],
        },
    );
    g.connect(right, tag, Partitioning::Rebalance);
    g.connect(tag, keep, Partitioning::Forward);
    Runtime::new(2).expect("runtime").run(g).expect("run");
    let mut got = rows.lock().expect("lock").clone();
    got.sort();
    let mut want: Vec<(i64, u64)> = (0..100).map(|n| (n, 0)).collect();
    want.extend((1000..1050).map(|n| (n, 1)));
    assert_eq!(got, want);
}

/// What a probe saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Row(i64),
    Watermark(i64),
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Records rows and watermarks, passes both on.
struct Probe {
    log: Log,
    /// Set when the watermark was seen while this flag was still false (see the idle test).
    before: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>,
}

#[async_trait]
impl Operator for Probe {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let mut log = self.log.lock().map_err(|_| Error::internal("lock"))?;
        log.extend(values(&b, 0)?.into_iter().map(Seen::Row));
        out.emit(b);
        Ok(())
    }
    async fn on_watermark(
        &mut self,
        w: Watermark,
        _: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        self.log
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push(Seen::Watermark(w.0));
        if let Some((flag, seen_before)) = &self.before
            && !flag.load(Ordering::SeqCst)
        {
            seen_before.store(true, Ordering::SeqCst);
        }
        out.emit_watermark(w);
        Ok(())
    }
}

fn watermarks(log: &Log) -> Vec<i64> {
    log.lock()
        .expect("lock")
        .iter()
        .filter_map(|s| match s {
            Seen::Watermark(w) => Some(*w),
            Seen::Row(_) => None,
        })
        .collect()
}

#[test]
fn source_watermarks_are_min_merged_and_forwarded_and_no_row_is_late() {
    let mid: Log = Arc::default();
    let end: Log = Arc::default();
    let mut g = JobGraph::new(JobConfig::default());
    // Two subtasks of one source and a second source: three inputs of different pace.
    let a = g.add_source("a", 2, |_| Ok(Box::new(numbers(0, 10, 40, true))));
    let b = g.add_source("b", 1, |_| Ok(Box::new(numbers(5, 30, 10, true))));
    let union = g.add_operator("merge", 1, |_| Ok(Box::new(Relabel::new(schema()))));
    let m = mid.clone();
    let probe = g.add_operator("probe", 1, move |_| {
        Ok(Box::new(Probe {
            log: m.clone(),
            before: None,
        }))
    });
    let e = end.clone();
    let sink = g.add_sink("end", 1, move |_| {
        Ok(Box::new(Probe {
            log: e.clone(),
            before: None,
        }))
    });
    g.connect(a, union, Partitioning::Rebalance);
    g.connect(b, union, Partitioning::Rebalance);
    g.connect(union, probe, Partitioning::Forward);
    g.connect(probe, sink, Partitioning::Rebalance);
    Runtime::new(2).expect("runtime").run(g).expect("run");

    for log in [&mid, &end] {
        let seen = log.lock().expect("lock").clone();
        let marks = watermarks(log);
        assert!(marks.len() > 3, "too few watermarks: {seen:?}");
        assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
        // Once the other inputs end, the last one alone decides: its last row.
        assert!(
            marks.last().is_some_and(|l| [380, 390].contains(l)),
            "{marks:?}"
        );
        // Every row comes before any watermark that passes it: no row is late.
        let mut current = i64::MIN;
        for s in &seen {
            match s {
                Seen::Watermark(w) => current = *w,
                Seen::Row(n) => assert!(*n >= current, "row {n} after watermark {current}"),
            }
        }
        let rows = seen.iter().filter(|s| matches!(s, Seen::Row(_))).count();
        assert_eq!(rows, 50);
    }
    // The sink (behind a channel) saw exactly what the probe forwarded.
    assert_eq!(watermarks(&mid), watermarks(&end));
}

/// Subtask 0 emits numbers with watermarks; subtask 1 has nothing to read until subtask 0 is done,
/// and marks itself idle when `idle`.
struct HalfIdle {
    inner: Numbers,
    idle: bool,
    done: Arc<AtomicBool>,
}

#[async_trait]
impl Source for HalfIdle {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if ctx.info().subtask == 0 {
            // `inner` was not opened: it emits every number, with stride 1.
            let ev = self.inner.next(ctx).await?;
            if matches!(ev, SourceEvent::Finished) {
                self.done.store(true, Ordering::SeqCst);
            }
            return Ok(ev);
        }
        if self.done.load(Ordering::SeqCst) {
            return Ok(SourceEvent::Finished);
        }
        if self.idle {
            ctx.mark_idle();
        }
        Ok(SourceEvent::Idle(Duration::from_millis(5)))
    }
}

fn run_half_idle(idle: bool) -> (Vec<i64>, bool) {
    let log: Log = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let seen_before = Arc::new(AtomicBool::new(false));
    let mut g = JobGraph::new(JobConfig::default());
    let d = done.clone();
    let src = g.add_source("src", 2, move |_| {
        Ok(Box::new(HalfIdle {
            inner: numbers(0, 1, 60, true),
            idle,
            done: d.clone(),
        }))
    });
    let (l, flag, before) = (log.clone(), done.clone(), seen_before.clone());
    let probe = g.add_sink("probe", 1, move |_| {
        Ok(Box::new(Probe {
            log: l.clone(),
            before: Some((flag.clone(), before.clone())),
        }))
    });
    g.connect(src, probe, Partitioning::Rebalance);
    Runtime::new(2).expect("runtime").run(g).expect("run");
    (watermarks(&log), seen_before.load(Ordering::SeqCst))
}

#[test]
fn an_idle_source_subtask_does_not_hold_event_time_back() {
    let (marks, while_other_ran) = run_half_idle(true);
    assert!(
        while_other_ran,
        "watermarks must advance while the idle subtask still runs: {marks:?}"
    );
    assert_eq!(marks.last(), Some(&59), "{marks:?}");
    // Without idleness, the silent subtask holds event time back until it ends, which is after
    // the other one ended (and took its watermarks with it).
    let (marks, while_other_ran) = run_half_idle(false);
    assert!(!while_other_ran, "{marks:?}");
    assert!(marks.is_empty(), "{marks:?}");
}

/// Records what the checkpoint hooks were told.
#[derive(Default)]
struct Told {
    aborted: Mutex<Vec<(CheckpointId, AbortReason)>>,
    completed: Mutex<Vec<CheckpointId>>,
    snapshotted: Mutex<Vec<CheckpointId>>,
}

struct Listener(Arc<Told>);

#[async_trait]
impl Operator for Listener {
    async fn process_batch(
        &mut self,
        _: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        Ok(())
    }
    async fn snapshot(
        &mut self,
        b: &Barrier,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<StateSnapshot> {
        self.0
            .snapshotted
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push(b.checkpoint_id);
        Ok(StateSnapshot::new())
    }
    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        _: &mut OperatorContext,
    ) -> Result<()> {
        self.0
            .completed
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push(id);
        Ok(())
    }
    async fn notify_checkpoint_aborted(
        &mut self,
        id: CheckpointId,
        reason: &AbortReason,
        _: &mut OperatorContext,
    ) -> Result<()> {
        self.0
            .aborted
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push((id, reason.clone()));
        Ok(())
    }
}

#[test]
fn tasks_are_told_when_a_checkpoint_is_aborted() {
    use object_store::path::Path as StorePath;
    let dir = tempfile::tempdir().expect("tmp");
    let local = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local store"),
    );
    let failing = Arc::new(FailingStore::new(local));
    // Checkpoints 1-9 cannot be written, as on a full disk: each is declined.
    failing.fail_writes_to("chk-000000000");
    let told = Arc::new(Told::default());
    let mut g = JobGraph::new(JobConfig::default());
    let src = g.add_source("src", 1, |_| {
        let mut n = numbers(0, 1, 400, false);
        n.delay = Duration::from_millis(2);
        Ok(Box::new(n))
    });
    let t = told.clone();
    let sink = g.add_sink("listen", 2, move |_| Ok(Box::new(Listener(t.clone()))));
    g.connect(src, sink, Partitioning::Rebalance);
    let setup = CheckpointSetup {
        store: CheckpointStore::new(failing.clone(), StorePath::from("ckpt")),
        config: CheckpointConfig {
            interval: Duration::from_millis(20),
            ..CheckpointConfig::default()
        },
        restore: None,
    };
    let rt = Runtime::new(2).expect("runtime");
    let h = rt.start_with(g, Some(setup)).expect("start");
    std::thread::sleep(Duration::from_millis(250));
    failing.heal();
    let report = rt.block_on(h.wait()).expect("run");
    let stats = report.checkpoints.expect("stats");
    let aborted = told.aborted.lock().expect("lock").clone();
    let completed = told.completed.lock().expect("lock").clone();
    assert!(stats.failed >= 1, "{stats:?}");
    assert!(!aborted.is_empty(), "no task was told of an abort");
    for (id, reason) in &aborted {
        assert!(
            matches!(reason, AbortReason::Declined(why) if why.contains("chk-")),
            "checkpoint {id}: {reason}"
        );
        assert!(
            !completed.contains(id),
            "checkpoint {id} was aborted and completed"
        );
    }
    // Both sink subtasks were told about each aborted checkpoint.
    let first = aborted[0].0;
    assert_eq!(aborted.iter().filter(|(id, _)| *id == first).count(), 2);
    assert!(!completed.is_empty(), "{stats:?}");
}
