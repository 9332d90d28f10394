//! Checkpoints end to end inside one process: a replayable source and a two-phase sink run with
//! checkpoints, the job is killed (its tasks aborted) mid-stream, restored from the newest complete
//! checkpoint — at the same and at another parallelism — and every row is committed exactly once.

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_checkpoint::{CheckpointConfig, CheckpointStore};
use weir_runtime::*;
use weir_types::{Barrier, CheckpointId, Error, Result};

const PER_SOURCE: i64 = 3000;
const BATCH: i64 = 10;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Emits `PER_SOURCE` numbers per split; split s holds `s*PER_SOURCE..(s+1)*PER_SOURCE`. There are
/// always `splits` splits, dealt to subtasks by index, so any parallelism covers them all.
struct Seq {
    splits: u32,
    mine: Vec<u32>,
    pos: BTreeMap<u32, i64>,
    delay: Duration,
}

#[async_trait]
impl Source for Seq {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let (sub, par) = (ctx.info().subtask, ctx.info().parallelism);
        self.mine = (0..self.splits).filter(|s| s % par == sub).collect();
        for s in &self.mine {
            self.pos.insert(*s, 0);
        }
        if let Some(state) = ctx.restored_state() {
            for entry in state.unions::<u32>() {
                let (split, bytes) = entry?;
                if self.mine.contains(&split) {
                    let b: [u8; 8] = bytes.try_into().map_err(|_| Error::internal("pos"))?;
                    self.pos.insert(split, i64::from_le_bytes(b));
                }
            }
        }
        Ok(())
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> Result<SourceEvent> {
        let Some((&split, &pos)) = self.pos.iter().find(|(_, p)| **p < PER_SOURCE) else {
            return Ok(SourceEvent::Finished);
        };
        tokio::time::sleep(self.delay).await;
        let start = split as i64 * PER_SOURCE + pos;
        self.pos.insert(split, pos + BATCH);
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(start..start + BATCH));
        Ok(SourceEvent::Batch(RecordBatch::try_new(
            schema(),
            vec![col],
        )?))
    }
    async fn snapshot(
        &mut self,
        _b: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut s = StateSnapshot::new();
        for (split, pos) in &self.pos {
            s.push_union(split, pos.to_le_bytes().to_vec())?;
        }
        Ok(s)
    }
}

/// The "external system": transactions by name, committed at most once each.
type Committed = Arc<Mutex<BTreeMap<String, Vec<i64>>>>;

/// Stages rows per checkpoint and commits them when the checkpoint completes; pending
/// transactions are part of its (union) state and are committed again after a restore.
struct TxnSink {
    committed: Committed,
    buffer: Vec<i64>,
    staged: BTreeMap<CheckpointId, (String, Vec<i64>)>,
    run: u64,
    /// Time spent on every batch (a slow sink backs the channel up).
    slow: Duration,
}

fn encode(rows: &[i64]) -> Vec<u8> {
    rows.iter().flat_map(|r| r.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

#[async_trait]
impl Operator for TxnSink {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            // Transactions staged before the crash and part of the restored checkpoint: commit them
            // (idempotently; every instance sees all of them, the first one wins).
            let mut c = self.committed.lock().map_err(|_| Error::internal("lock"))?;
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
        let n = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::internal("i64"))?;
        if !self.slow.is_zero() {
            tokio::time::sleep(self.slow).await;
        }
        self.buffer.extend((0..n.len()).map(|i| n.value(i)));
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
        self.staged
            .insert(b.checkpoint_id, (name, std::mem::take(&mut self.buffer)));
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
        let mut c = self.committed.lock().map_err(|_| Error::internal("lock"))?;
        for k in done {
            if let Some((name, rows)) = self.staged.remove(&k) {
                c.entry(name).or_insert(rows);
            }
        }
        Ok(())
    }
    async fn finish(&mut self, ctx: &mut OperatorContext, _: &mut Emitter) -> Result<()> {
        assert!(
            ctx.checkpointing(),
            "this test sink only runs with checkpoints"
        );
        Ok(())
    }
}

fn graph(par: u32, committed: &Committed, run: u64, delay: Duration) -> JobGraph {
    graph_with(par, committed, run, delay, Duration::ZERO, None)
}

fn graph_with(
    par: u32,
    committed: &Committed,
    run: u64,
    delay: Duration,
    slow: Duration,
    channel_bytes: Option<usize>,
) -> JobGraph {
    let mut config = JobConfig {
        name: "ckpt".into(),
        ..JobConfig::default()
    };
    if let Some(b) = channel_bytes {
        config.channel_capacity_bytes = b;
    }
    let mut g = JobGraph::new(config);
    let s = g.add_source("seq", par, move |_| {
        Ok(Box::new(Seq {
            splits: 4,
            mine: vec![],
            pos: BTreeMap::new(),
            delay,
        }))
    });
    let c = committed.clone();
    let k = g.add_sink("sink", par, move |_| {
        Ok(Box::new(TxnSink {
            committed: c.clone(),
            buffer: vec![],
            staged: BTreeMap::new(),
            run,
            slow,
        }))
    });
    g.connect(s, k, Partitioning::Rebalance);
    g
}

fn setup(dir: &std::path::Path, restore: bool, rt: &Runtime) -> CheckpointSetup {
    let store = CheckpointStore::local(dir).expect("store");
    let config = CheckpointConfig {
        interval: Duration::from_millis(30),
        ..CheckpointConfig::default()
    };
    let restore = if restore {
        rt.io_handle()
            .block_on(store.latest_complete())
            .expect("latest")
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

fn all_committed(c: &Committed) -> Vec<i64> {
    let mut v: Vec<i64> = c
        .lock()
        .expect("lock")
        .values()
        .flatten()
        .copied()
        .collect();
    v.sort();
    v
}

#[test]
fn killed_and_restored_jobs_commit_every_row_exactly_once() {
    for (first_par, second_par) in [(2, 2), (2, 3)] {
        let dir = tempfile::tempdir().expect("tmp");
        let committed: Committed = Arc::default();
        let rt = Runtime::new(2).expect("runtime");
        // Run 1: killed after some checkpoints completed.
        let h = rt
            .start_with(
                graph(first_par, &committed, 1, Duration::from_millis(2)),
                Some(setup(dir.path(), false, &rt)),
            )
            .expect("start");
        std::thread::sleep(Duration::from_millis(600));
        drop(h); // aborts every task: a crash, as far as the job is concerned
        let before = all_committed(&committed).len();
        assert!(
            before > 0,
            "some checkpoints should have completed and committed before the kill"
        );
        assert!(
            before < 4 * PER_SOURCE as usize,
            "the kill should land mid-stream"
        );
        // Run 2: restored from the newest complete checkpoint, to the end.
        let s = setup(dir.path(), true, &rt);
        let restored_from = s
            .restore
            .as_ref()
            .map(|m| m.checkpoint_id)
            .expect("a complete checkpoint");
        let report = rt
            .run_with(graph(second_par, &committed, 2, Duration::ZERO), Some(s))
            .expect("restored run");
        let stats = report.checkpoints.expect("stats");
        assert_eq!(stats.restored_from, Some(restored_from));
        assert!(stats.completed >= 1, "the final checkpoint completes");
        let got = all_committed(&committed);
        let want: Vec<i64> = (0..4 * PER_SOURCE).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "p={first_par}->{second_par}: rows lost or duplicated"
        );
        assert_eq!(got, want);
    }
}

#[test]
fn a_checkpointed_job_publishes_everything_at_its_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let committed: Committed = Arc::default();
    let rt = Runtime::new(2).expect("runtime");
    let report = rt
        .run_with(
            graph(2, &committed, 1, Duration::ZERO),
            Some(setup(dir.path(), false, &rt)),
        )
        .expect("run");
    assert_eq!(
        all_committed(&committed),
        (0..4 * PER_SOURCE).collect::<Vec<_>>()
    );
    let stats = report.checkpoints.expect("stats");
    let store = CheckpointStore::local(dir.path()).expect("store");
    let latest = rt
        .io_handle()
        .block_on(store.latest_complete())
        .expect("latest")
        .manifest
        .expect("final");
    assert_eq!(Some(latest.checkpoint_id), stats.last_completed);
    assert_eq!(latest.extra.get("final").map(String::as_str), Some("true"));
}

#[test]
fn a_full_disk_declines_checkpoints_and_the_job_goes_on() {
    use object_store::path::Path as StorePath;
    use weir_checkpoint::FailingStore;
    let dir = tempfile::tempdir().expect("tmp");
    let local = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local store"),
    );
    let failing = Arc::new(FailingStore::new(local));
    // Every state file and manifest of checkpoints 1-3 fails to write, as on a full disk.
    failing.fail_writes_to("chk-000000000");
    let store = CheckpointStore::new(failing.clone(), StorePath::from("ckpt"));
    let committed: Committed = Arc::default();
    let rt = Runtime::new(2).expect("runtime");
    let config = CheckpointConfig {
        interval: Duration::from_millis(20),
        ..CheckpointConfig::default()
    };
    let setup = CheckpointSetup {
        store: store.clone(),
        config,
        restore: None,
    };
    let h = rt
        .start_with(
            graph(2, &committed, 1, Duration::from_millis(1)),
            Some(setup),
        )
        .expect("start");
    std::thread::sleep(Duration::from_millis(300));
    // The disk has room again: later checkpoints (ids of 10 and more) complete, and so does the job.
    failing.heal();
    let report = rt
        .block_on(h.wait())
        .expect("the job goes on after declined checkpoints");
    let stats = report.checkpoints.expect("stats");
    assert!(
        stats.failed >= 1,
        "some checkpoints were declined: {stats:?}"
    );
    assert!(stats.completed >= 1, "{stats:?}");
    assert_eq!(
        all_committed(&committed),
        (0..4 * PER_SOURCE).collect::<Vec<_>>()
    );
}

#[test]
fn unaligned_checkpoints_store_the_overtaken_data_and_restore_it_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let committed: Committed = Arc::default();
    let rt = Runtime::new(2).expect("runtime");
    let unaligned = |restore: bool| {
        let mut s = setup(dir.path(), restore, &rt);
        s.config.mode = weir_checkpoint::CheckpointMode::Unaligned;
        s
    };
    // A fast source, a slow sink and small channels: the channels stay full, and every barrier
    // overtakes the batches queued in them.
    let h = rt
        .start_with(
            graph_with(
                2,
                &committed,
                1,
                Duration::ZERO,
                Duration::from_millis(3),
                Some(8 << 10),
            ),
            Some(unaligned(false)),
        )
        .expect("start");
    std::thread::sleep(Duration::from_millis(800));
    drop(h);
    let before = all_committed(&committed).len();
    assert!(before > 0, "checkpoints completed under backpressure");
    assert!(
        before < 4 * PER_SOURCE as usize,
        "the kill lands mid-stream"
    );

    // The newest complete checkpoint carries the data its barriers overtook.
    let s = unaligned(true);
    let manifest = s.restore.clone().expect("a complete checkpoint");
    let in_flight = rt
        .io_handle()
        .block_on(s.store.restore_node(&manifest, "sink.in-flight", 1))
        .expect("in-flight state");
    let stored: usize = in_flight.iter().map(|s| s.entries.len()).sum();
    assert!(
        stored > 0,
        "checkpoint {} stored no in-flight data",
        manifest.checkpoint_id
    );

    // Restored at another parallelism, to the end: every row exactly once.
    let report = rt
        .run_with(graph(3, &committed, 2, Duration::ZERO), Some(s))
        .expect("restored run");
    assert_eq!(
        report.checkpoints.expect("stats").restored_from,
        Some(manifest.checkpoint_id)
    );
    assert_eq!(
        all_committed(&committed),
        (0..4 * PER_SOURCE).collect::<Vec<_>>(),
        "rows lost or duplicated"
    );
}
