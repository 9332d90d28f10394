//! A generator source with a `watermark:` option, run by the runtime: its per-split watermarks go
//! out through the runtime's one watermark mechanism, only advance, never pass a row still to come
//! (no row is late when the stream is in order) nor hold back rows within the allowed disorder,
//! give the same events at any parallelism; a silent split goes idle and does not hold event time
//! back.

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_datagen::{DatagenSourceSpec, NexmarkSourceSpec};
use weir_runtime::event_time::event_times_ms;
use weir_runtime::*;
use weir_types::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A row's event time (ms).
    Row(i64),
    Watermark(i64),
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Records each row's event time (column `column`) and each watermark, in order.
struct Probe {
    log: Log,
    column: usize,
}

#[async_trait]
impl Operator for Probe {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        let times = event_times_ms(b.column(self.column))?;
        let mut log = self.log.lock().map_err(|_| Error::internal("lock"))?;
        log.extend((0..times.len()).map(|i| Seen::Row(times.value(i))));
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        w: Watermark,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        self.log
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push(Seen::Watermark(w.0));
        Ok(())
    }
}

/// Runs `source` (parsed from YAML) with `watermark` at `parallelism` into one probe.
fn run(source: Box<dyn kind::SourceSpec>, watermark: &str, parallelism: u32) -> Vec<Seen> {
    let res = kind::Resources::default();
    let schema = source
        .schema(&kind::PlanContext::new(&res))
        .expect("schema");
    let spec: WatermarkSpec = serde_norway::from_str(watermark).expect("watermark spec");
    let config = spec.check(&schema).expect("watermark config");
    let column = config.index;
    let log: Log = Arc::default();
    let mut g = JobGraph::new(JobConfig::default());
    let source: Arc<dyn kind::SourceSpec> = Arc::from(source);
    let s = g.add_source("gen", parallelism, move |info| {
        let res = kind::Resources::default();
        let inner = source.create(&kind::CreateContext::new(info, &[], Some(&schema), &res))?;
        Ok(Box::new(EventTimeSource::new(inner, config.clone())) as Box<dyn Source>)
    });
    let l = log.clone();
    let probe = g.add_sink("probe", 1, move |_| {
        Ok(Box::new(Probe {
            log: l.clone(),
            column,
        }))
    });
    g.connect(s, probe, Partitioning::Rebalance);
    Runtime::new(2).expect("runtime").run(g).expect("run");
    log.lock().expect("lock").clone()
}

fn watermarks(seen: &[Seen]) -> Vec<i64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Watermark(w) => Some(*w),
            Seen::Row(_) => None,
        })
        .collect()
}

/// Every row comes before any watermark that passes it.
fn assert_none_late(seen: &[Seen]) {
    let mut current = i64::MIN;
    for s in seen {
        match s {
            Seen::Watermark(w) => current = *w,
            Seen::Row(t) => assert!(*t >= current, "row at {t} after watermark {current}"),
        }
    }
}

fn nexmark(yaml: &str) -> Box<dyn kind::SourceSpec> {
    Box::new(serde_norway::from_str::<NexmarkSourceSpec>(yaml).expect("nexmark spec"))
}

#[test]
fn nexmark_watermarks_advance_per_split_and_no_row_is_late() {
    let yaml = "table: bid\nevents: 50000\nsplits: 4\nbatch_size: 500\n";
    let wm = "column: date_time\nmax_out_of_orderness: 0s\n";
    let mut answers = Vec::new();
    for p in [1, 2] {
        let seen = run(nexmark(yaml), wm, p);
        let marks = watermarks(&seen);
        assert!(marks.len() > 10, "too few watermarks at p={p}: {marks:?}");
        assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
        assert_none_late(&seen);
        let mut rows: Vec<i64> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Row(t) => Some(*t),
                Seen::Watermark(_) => None,
            })
            .collect();
        // The last watermark is at most the last event time, and near it (splits advance side by
        // side, so when the others have ended the last one is close to the end).
        let (last, max) = (
            *marks.last().expect("a watermark"),
            *rows.iter().max().expect("rows"),
        );
        assert!(
            last <= max && max - last < 1_000,
            "last watermark {last}, last event {max}"
        );
        rows.sort();
        answers.push(rows);
    }
    assert_eq!(answers[0], answers[1], "the same events at p=1 and p=2");
}

#[test]
fn out_of_order_rows_are_within_the_allowed_disorder() {
    // Event time moved back by up to 500 ms: with max_out_of_orderness 500ms no row is late;
    // with 0s some are.
    let yaml = "rows: 20000\nsplits: 2\nbatch_size: 100\nseed: 3\ncolumns:\n  \
                - {name: ts, kind: timestamp, interval: 1ms, max_delay: 500ms}\n";
    let spec = || -> Box<dyn kind::SourceSpec> {
        Box::new(serde_norway::from_str::<DatagenSourceSpec>(yaml).expect("datagen spec"))
    };
    let seen = run(spec(), "column: ts\nmax_out_of_orderness: 500ms\n", 2);
    assert_none_late(&seen);
    assert!(watermarks(&seen).len() > 10);
    let seen = run(spec(), "column: ts\n", 2);
    let mut current = i64::MIN;
    let late = seen
        .iter()
        .filter(|s| match s {
            Seen::Watermark(w) => {
                current = *w;
                false
            }
            Seen::Row(t) => *t < current,
        })
        .count();
    assert!(
        late > 0,
        "with no allowed disorder some rows must be behind the watermark"
    );
}

/// Subtask 0 emits event times 1, 2, … one batch every few milliseconds, then sets `done`;
/// subtask 1 emits one row at time 0, then has nothing (`Idle`) until `done`.
struct HalfIdle {
    subtask: u32,
    next: i64,
    done: Arc<AtomicBool>,
}

#[async_trait]
impl Source for HalfIdle {
    fn schema(&self) -> SchemaRef {
        ms_schema()
    }

    async fn next(&mut self, _: &mut OperatorContext) -> Result<SourceEvent> {
        let batch = |t: i64| {
            RecordBatch::try_new(ms_schema(), vec![Arc::new(Int64Array::from(vec![t]))])
                .map_err(Error::from)
        };
        if self.subtask == 1 {
            if self.next == 0 {
                self.next = 1;
                return Ok(SourceEvent::Batch(batch(0)?));
            }
            if self.done.load(Ordering::SeqCst) {
                return Ok(SourceEvent::Finished);
            }
            return Ok(SourceEvent::Idle(Duration::from_millis(10)));
        }
        if self.next >= 300 {
            self.done.store(true, Ordering::SeqCst);
            return Ok(SourceEvent::Finished);
        }
        self.next += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok(SourceEvent::Batch(batch(self.next)?))
    }
}

fn ms_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]))
}

/// Watermarks above 0 the probe saw before subtask 0 was done.
fn early_watermarks(idle_timeout: Option<&str>) -> usize {
    let done = Arc::new(AtomicBool::new(false));
    let mut spec = "column: t\n".to_string();
    if let Some(t) = idle_timeout {
        spec.push_str(&format!("idle_timeout: {t}\n"));
    }
    let spec: WatermarkSpec = serde_norway::from_str(&spec).expect("watermark spec");
    let config = spec.check(&ms_schema()).expect("config");
    let mut g = JobGraph::new(JobConfig::default());
    let d = done.clone();
    let s = g.add_source("half", 2, move |info| {
        let inner = HalfIdle {
            subtask: info.subtask,
            next: 0,
            done: d.clone(),
        };
        Ok(Box::new(EventTimeSource::new(Box::new(inner), config.clone())) as Box<dyn Source>)
    });
    let early = Arc::new(AtomicUsize::new(0));
    let (d, e) = (done.clone(), early.clone());
    let probe = g.add_sink("probe", 1, move |_| {
        Ok(Box::new(EarlyMarks {
            done: d.clone(),
            early: e.clone(),
        }))
    });
    g.connect(s, probe, Partitioning::Rebalance);
    Runtime::new(2).expect("runtime").run(g).expect("run");
    early.load(Ordering::SeqCst)
}

/// Counts the watermarks above 0 that arrive before `done`.
struct EarlyMarks {
    done: Arc<AtomicBool>,
    early: Arc<AtomicUsize>,
}

#[async_trait]
impl Operator for EarlyMarks {
    async fn process_batch(
        &mut self,
        _: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        w: Watermark,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        if w.0 > 0 && !self.done.load(Ordering::SeqCst) {
            self.early.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[test]
fn an_idle_split_does_not_hold_event_time_back() {
    // Without idle_timeout the silent subtask holds the watermark at 0 until it ends.
    assert_eq!(early_watermarks(None), 0);
    // With it, the busy subtask alone moves event time while the other is silent.
    let early = early_watermarks(Some("50ms"));
    assert!(
        early > 10,
        "only {early} watermarks while the idle subtask ran"
    );
}
