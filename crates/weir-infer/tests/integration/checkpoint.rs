//! Inference in the checkpoint: a job with a slow model is killed mid-stream (its tasks aborted),
//! restored from the newest complete checkpoint and finished. Requests in flight at the
//! checkpoint are re-issued; results computed after it come from the results log, not the model.
//! The log lives in the checkpoint store: on a local directory, and on S3 (SeaweedFS) with
//! nothing of the job on the local disk.
#![allow(clippy::unwrap_used)]

use crate::common;
#[path = "../../../weir-checkpoint/tests/common/s3_server.rs"]
mod s3_server;

use arrow::array::{Array, AsArray, Float32Array, UInt64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use common::{image_batch, orientation};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_checkpoint::{CheckpointConfig, CheckpointStore};
use weir_infer::{
    Backend, BackendFactory, BackendOptions, HostTensor, InferCounters, InferSpec, ModelInfo,
    OrtBackend,
};
use weir_runtime::*;
use weir_types::{Barrier, CheckpointId, Error, Result};

const ROWS: u64 = 64;
const PER_BATCH: u64 = 2;

/// Fault-injection stand-in for a slow model: the real ONNX Runtime backend, plus a sleep per
/// batch; counts the rows and batches it runs.
struct SlowBackend {
    inner: OrtBackend,
    delay: Duration,
    calls: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
}

impl Backend for SlowBackend {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn run(&mut self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>> {
        std::thread::sleep(self.delay);
        let n = inputs.first().map_or(0, |(_, t)| t.shape[0]) as u64;
        let out = self.inner.run(inputs)?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(n, Ordering::SeqCst);
        Ok(out)
    }
}

/// Emits rows `0..ROWS` of CHW images, `PER_BATCH` per batch; its position is its state.
struct Images {
    pos: u64,
    delay: Duration,
    schema: SchemaRef,
}

#[async_trait]
impl Source for Images {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            for entry in state.unions::<String>() {
                let (name, bytes) = entry?;
                if name == "pos" {
                    let b: [u8; 8] = bytes.try_into().map_err(|_| Error::internal("pos"))?;
                    self.pos = u64::from_le_bytes(b);
                }
            }
        }
        Ok(())
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if self.pos >= ROWS {
            return Ok(SourceEvent::Finished);
        }
        tokio::time::sleep(self.delay).await;
        let b = image_batch(&[3, 224, 224], self.pos as usize, PER_BATCH as usize);
        self.pos += PER_BATCH;
        Ok(SourceEvent::Batch(b))
    }
    async fn snapshot(&mut self, _: &Barrier, _: &mut OperatorContext) -> Result<StateSnapshot> {
        let mut s = StateSnapshot::new();
        s.push_union("pos", self.pos.to_le_bytes().to_vec())?;
        Ok(s)
    }
}

/// A committed row: its id and the model's 4 orientation scores.
type Row = (u64, Vec<f32>);
/// The "external system": transactions by name, committed at most once each.
type Committed = Arc<Mutex<BTreeMap<String, Vec<Row>>>>;

fn encode(rows: &[Row]) -> Vec<u8> {
    let mut v = Vec::new();
    for (id, scores) in rows {
        v.extend(id.to_le_bytes());
        for s in scores {
            v.extend(s.to_le_bytes());
        }
    }
    v
}

fn decode(bytes: &[u8]) -> Vec<Row> {
    bytes
        .chunks_exact(24)
        .map(|c| {
            let id = u64::from_le_bytes(c[..8].try_into().unwrap());
            let s = c[8..]
                .chunks_exact(4)
                .map(|f| f32::from_le_bytes(f.try_into().unwrap()))
                .collect();
            (id, s)
        })
        .collect()
}

/// Two-phase sink: stages rows per checkpoint, commits them when it completes; pending
/// transactions are union state, committed again (idempotently) after a restore.
struct TxnSink {
    committed: Committed,
    buffer: Vec<Row>,
    staged: BTreeMap<CheckpointId, (String, Vec<Row>)>,
    run: u64,
}

#[async_trait]
impl Operator for TxnSink {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            let mut c = self.committed.lock().unwrap();
            for entry in state.unions::<String>() {
                let (name, bytes) = entry?;
                c.entry(name).or_insert_with(|| decode(bytes));
            }
        }
        Ok(())
    }
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        let ids = b
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| Error::internal("id"))?;
        let scores = b
            .column_by_name("fetch_name_0")
            .ok_or_else(|| Error::internal("scores"))?
            .as_fixed_size_list();
        for r in 0..b.num_rows() {
            let v = scores.value(r);
            let v = v
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| Error::internal("f32"))?;
            self.buffer.push((ids.value(r), v.values().to_vec()));
        }
        Ok(())
    }
    async fn snapshot(
        &mut self,
        b: &Barrier,
        ctx: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<StateSnapshot> {
        let name = format!(
            "txn-{}-{}-{}",
            self.run,
            ctx.info().subtask,
            b.checkpoint_id
        );
        // The runtime may snapshot the final checkpoint twice with one id (a regular barrier and
        // the final one racing); stage into the same transaction rather than overwrite it.
        self.staged
            .entry(b.checkpoint_id)
            .or_insert_with(|| (name, Vec::new()))
            .1
            .append(&mut self.buffer);
        let mut s = StateSnapshot::new();
        for (name, rows) in self.staged.values() {
            s.push_union(name, encode(rows))?;
        }
        Ok(s)
    }
    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        _: &mut OperatorContext,
    ) -> Result<()> {
        let done: Vec<CheckpointId> = self.staged.range(..=id).map(|(k, _)| *k).collect();
        let mut c = self.committed.lock().unwrap();
        for k in done {
            if let Some((name, rows)) = self.staged.remove(&k) {
                c.entry(name).or_insert(rows);
            }
        }
        Ok(())
    }
}

/// What one run observes: model batches and rows, and each infer instance's counters.
#[derive(Default, Clone)]
struct Probe {
    calls: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
    counters: Arc<Mutex<Vec<Arc<InferCounters>>>>,
}

impl Probe {
    fn sum(&self, f: impl Fn(&InferCounters) -> u64) -> u64 {
        self.counters.lock().unwrap().iter().map(|c| f(c)).sum()
    }
}

fn graph(committed: &Committed, run: u64, probe: &Probe) -> JobGraph {
    let model = orientation();
    let schema = image_batch(&[3, 224, 224], 0, 1).schema();
    let mut spec = InferSpec::new(&model);
    spec.batch.max_size = 4;
    spec.batch.adaptive = false;
    spec.batch.max_wait = Duration::from_millis(5);
    spec.max_in_flight = 1;
    let mut g = JobGraph::new(JobConfig {
        name: "infer-ckpt".into(),
        ..JobConfig::default()
    });
    let src_schema = schema.clone();
    let src = g.add_source("images", 1, move |_| {
        Ok(Box::new(Images {
            pos: 0,
            delay: Duration::from_millis(10),
            schema: src_schema.clone(),
        }))
    });
    let p = probe.clone();
    let inf = g.add_operator("infer", 1, move |_| {
        let (calls, rows, path) = (p.calls.clone(), p.rows.clone(), model.clone());
        let factory: BackendFactory = Arc::new(move |_| {
            let inner = OrtBackend::load(
                &path,
                &BackendOptions {
                    cpus: 1,
                    gpus: 0,
                    spin: false,
                },
            )?;
            Ok(Box::new(SlowBackend {
                inner,
                delay: Duration::from_millis(40),
                calls: calls.clone(),
                rows: rows.clone(),
            }) as Box<dyn Backend>)
        });
        let op = spec.create_with_backend(&schema, factory)?;
        p.counters.lock().unwrap().push(op.counters());
        Ok(Box::new(op))
    });
    let c = committed.clone();
    let sink = g.add_sink("sink", 1, move |_| {
        Ok(Box::new(TxnSink {
            committed: c.clone(),
            buffer: vec![],
            staged: BTreeMap::new(),
            run,
        }))
    });
    // Separate tasks (no chaining), so results also arrive through `poll_pending`.
    g.connect(src, inf, Partitioning::Rebalance);
    g.connect(inf, sink, Partitioning::Rebalance);
    g
}

fn setup(store: &CheckpointStore, restore: bool, rt: &Runtime) -> CheckpointSetup {
    let store = store.clone();
    let config = CheckpointConfig {
        interval: Duration::from_millis(50),
        ..CheckpointConfig::default()
    };
    let restore = if restore {
        rt.io_handle()
            .block_on(store.latest_complete())
            .unwrap()
            .manifest
    } else {
        None
    };
    CheckpointSetup {
        store,
        config,
        restore,
    }
}

/// Every committed row, by id; panics on a duplicate.
fn by_id(c: &Committed) -> BTreeMap<u64, Vec<f32>> {
    let mut out = BTreeMap::new();
    for rows in c.lock().unwrap().values() {
        for (id, s) in rows {
            assert!(
                out.insert(*id, s.clone()).is_none(),
                "row {id} committed twice"
            );
        }
    }
    out
}

fn rows_of_run(c: &Committed, run: u64) -> u64 {
    let prefix = format!("txn-{run}-");
    c.lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v.len() as u64)
        .sum()
}

/// The segments of the `infer` step's results log in `store`.
fn log_files(store: &CheckpointStore, rt: &Runtime) -> Vec<String> {
    rt.io_handle()
        .block_on(store.log_store("infer").list())
        .unwrap()
}

#[test]
fn a_killed_inference_job_resumes_exactly_once_without_reinferring() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    kill_and_resume(move |attempt| {
        CheckpointStore::local(dir.join(format!("ckpt{attempt}"))).unwrap()
    });
}

/// The same with the checkpoints, and so the results log, on S3: run 2 is another runtime that
/// opens the store afresh and finds everything there (nothing of the job is on the local disk),
/// and runs no finished inference again.
#[test]
fn a_job_checkpointed_to_s3_resumes_anywhere_without_reinferring() {
    let s3 = s3_server::s3_client();
    let ready = Runtime::new(1).unwrap();
    ready.block_on(s3_server::wait_ready(&s3));
    let root = s3_server::unique_prefix("infer-results-log");
    kill_and_resume(move |attempt| {
        let env = s3_server::s3_env();
        CheckpointStore::open(
            &format!("s3://{}/{root}/{attempt}", env.bucket),
            [
                ("aws_endpoint", env.endpoint.clone()),
                ("aws_allow_http", "true".to_string()),
                ("aws_region", "us-east-1".to_string()),
                ("aws_access_key_id", env.key.clone()),
                ("aws_secret_access_key", env.secret.clone()),
            ],
        )
        .unwrap()
    });
}

/// A straight run for reference, then up to four tries of: run 1 killed mid-stream, run 2
/// restored from a store opened afresh (`store(attempt)`) on a new runtime; output exactly once
/// and equal, no inference run twice, and (in one try at least) results answered from the log.
fn kill_and_resume(store: impl Fn(u64) -> CheckpointStore) {
    let rt = Runtime::new(2).unwrap();

    // The straight run (with checkpoints, never killed): the reference output.
    let straight: Committed = Arc::default();
    let probe0 = Probe::default();
    rt.run_with(
        graph(&straight, 0, &probe0),
        Some(setup(&store(0), false, &rt)),
    )
    .unwrap();
    let want = by_id(&straight);
    eprintln!(
        "straight run: {} model calls, {} rows, txns {:?}",
        probe0.calls.load(Ordering::SeqCst),
        probe0.rows.load(Ordering::SeqCst),
        straight
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        want.keys().copied().collect::<Vec<_>>(),
        (0..ROWS).collect::<Vec<_>>()
    );
    assert_eq!(probe0.rows.load(Ordering::SeqCst), ROWS);
    assert_eq!(probe0.sum(InferCounters::rows_from_log), 0);

    let mut landed = false;
    for attempt in 0..4 {
        let committed: Committed = Arc::default();
        // Run 1: killed mid-stream, after some checkpoints completed.
        let probe1 = Probe::default();
        let first = store(attempt + 1);
        let h = rt
            .start_with(
                graph(&committed, 1, &probe1),
                Some(setup(&first, false, &rt)),
            )
            .unwrap();
        // Killed once a checkpoint completed (start-up, the model load included, can take over a
        // second on a loaded machine), a little later at each try.
        let waited = std::time::Instant::now();
        while !rt
            .io_handle()
            .block_on(first.list())
            .unwrap()
            .iter()
            .any(|c| c.complete)
        {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "no checkpoint completed in a minute"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100 + 150 * attempt));
        drop(h); // aborts every task: a crash, as far as the job is concerned
        let before = by_id(&committed).len() as u64;
        assert!(before < ROWS, "the kill should land mid-stream");

        // Run 2: on another runtime, with the store opened afresh, restored from the newest
        // complete checkpoint, to the end.
        let rt2 = Runtime::new(2).unwrap();
        let second = store(attempt + 1);
        let s = setup(&second, true, &rt2);
        let Some(restored_from) = s.restore.as_ref().map(|m| m.checkpoint_id) else {
            continue; // no checkpoint completed before the kill: try a later kill
        };
        let probe2 = Probe::default();
        let report = rt2
            .run_with(graph(&committed, 2, &probe2), Some(s))
            .unwrap();
        assert_eq!(
            report.checkpoints.unwrap().restored_from,
            Some(restored_from)
        );

        // Exactly once, and the same output as the straight run.
        let got = by_id(&committed);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            (0..ROWS).collect::<Vec<_>>()
        );
        for (id, s) in &got {
            let w = &want[id];
            assert!(
                s.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-4),
                "row {id}: {s:?} != {w:?}"
            );
        }

        // No re-inference: rows after the restored checkpoint came from the model or the log,
        // each exactly once.
        let from_log = probe2.sum(InferCounters::rows_from_log);
        let reinferred = probe2.sum(InferCounters::reinferred_rows);
        let model2 = probe2.rows.load(Ordering::SeqCst);
        let after = rows_of_run(&committed, 2);
        eprintln!(
            "attempt {attempt}: restored from checkpoint {restored_from}; run 1: {} model calls, {} rows; \
             run 2: {} model calls, {model2} rows, {from_log} rows from the log, {reinferred} re-inferred; \
             {after} rows committed after the restore; {} log files left",
            probe1.calls.load(Ordering::SeqCst),
            probe1.rows.load(Ordering::SeqCst),
            probe2.calls.load(Ordering::SeqCst),
            log_files(&second, &rt2).len()
        );
        assert_eq!(reinferred, 0);
        assert_eq!(probe2.sum(InferCounters::model_rows), model2);
        assert_eq!(
            model2 + from_log,
            after,
            "every row after the restore ran once"
        );
        if from_log > 0 {
            landed = true;
            break;
        }
    }
    assert!(
        landed,
        "no kill landed after results were computed but before their checkpoint completed"
    );
}
