//! The results log of the `infer` operator: model outputs are logged, keyed by the identity of
//! the input row and of the model, so that a restore answers the requests it re-issues (and the
//! rows its sources replay) from the log instead of running the model again.
//!
//! The log lives in the job's checkpoint store (a local directory or S3), beside the checkpoints
//! ([`weir_runtime::LogStore`], `<checkpoints>/logs/<node>/`), so a job restored in another
//! working directory or on another machine finds it. It is a set of *segments*: immutable Arrow
//! IPC stream objects named `<epoch, 20 digits>-<subtask>-<run>-<seq>.arrow`, whose rows are
//! `(__input: u64, __model: u64, <output columns>)`. A segment's *epoch* is the checkpoint the
//! instance snapshotted (or restored from) last before computing its results (0 before any).
//!
//! - Results are buffered and written one segment at a time, asynchronously on the io executor:
//!   while one segment is being written, new results collect for the next. On a local disk that
//!   is about one segment per model batch; on S3 one per round trip. A crash loses at most the
//!   results of the segment being written and those buffered behind it.
//! - At checkpoint `c` the buffer is closed as a segment of the old epoch and the epoch becomes
//!   `c`. The results computed for rows still held at the barrier (answered, waiting for an
//!   earlier row) are not logged again: they go into the checkpoint's state with the held rows.
//! - When checkpoint `c` completes, subtask 0 deletes every segment of an epoch below `c` (any
//!   instance, any run): a restore is from `c` or newer, and what it needs from before `c` is in
//!   `c`'s state. Entries are content-addressed (input bytes + model identity), so a stale entry
//!   is never wrong, only unused.
//! - A restore from `c` loads the segments of epoch `c` or later, and the results in `c`'s state.

use crate::tensor::InputBinding;
use arrow::array::{Array, ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use weir_runtime::{IoTask, LogStore, OperatorContext};
use weir_types::{CheckpointId, Error, Result};
use xxhash_rust::xxh3::Xxh3;

/// Bytes of the model file hashed for its identity (with its size).
const MODEL_PREFIX: u64 = 4 << 20;

/// The identity of the model: xxh3 over its file size, its first 4 MiB, and the bound output names
/// (a model file with other contents, or another output mapping, never matches).
pub(crate) fn model_identity(path: &Path, outputs: &[(String, String)]) -> Result<u64> {
    let io = |e: std::io::Error| {
        Error::external(format!(
            "cannot read model {} for its identity",
            path.display()
        ))
        .with_source(e)
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::new();
    file.take(MODEL_PREFIX)
        .read_to_end(&mut prefix)
        .map_err(io)?;
    let mut h = Xxh3::new();
    h.update(&size.to_le_bytes());
    h.update(&prefix);
    for (o, c) in outputs {
        h.update(o.as_bytes());
        h.update(&[0]);
        h.update(c.as_bytes());
        h.update(&[0]);
    }
    Ok(h.digest())
}

/// Hashes the raw value bytes of a primitive array (its slice only).
fn hash_values(h: &mut Xxh3, a: &ArrayRef) -> Result<()> {
    let width = a.data_type().primitive_width().ok_or_else(|| {
        Error::input(format!(
            "tensor values of type {} are not primitive",
            a.data_type()
        ))
    })?;
    let d = a.to_data();
    let buf = d
        .buffers()
        .first()
        .ok_or_else(|| Error::internal("a primitive array without a value buffer"))?;
    let start = d.offset() * width;
    let bytes = buf
        .as_slice()
        .get(start..start + d.len() * width)
        .ok_or_else(|| Error::internal("tensor values outside their buffer"))?;
    h.update(bytes);
    Ok(())
}

/// The identity of one input row: xxh3 over every bound input's name, per-row shape and value bytes.
pub(crate) fn row_identity(
    bindings: &[InputBinding],
    columns: &[ArrayRef],
    row: usize,
) -> Result<u64> {
    let mut h = Xxh3::new();
    for (b, col) in bindings.iter().zip(columns) {
        let (values, shape) = crate::tensor::row_values(col, row)?;
        h.update(b.input.as_bytes());
        h.update(&[0]);
        h.update(&(values.len() as u64).to_le_bytes());
        for d in shape.unwrap_or_default() {
            h.update(&(d as u64).to_le_bytes());
        }
        hash_values(&mut h, &values)?;
    }
    Ok(h.digest())
}

/// Results loaded on restore: row identity → (batch, row).
#[derive(Debug, Default)]
pub(crate) struct LoadedLog {
    batches: Vec<RecordBatch>,
    index: HashMap<u64, (usize, u32)>,
}

impl LoadedLog {
    /// Whether `key` has a logged result.
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.index.contains_key(&key)
    }

    /// Number of logged results.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The output columns for `keys` (all of which must be present), in that order.
    pub(crate) fn outputs(&self, keys: &[u64], n_outputs: usize) -> Result<Vec<ArrayRef>> {
        let mut indices = Vec::with_capacity(keys.len());
        for k in keys {
            let at = self
                .index
                .get(k)
                .ok_or_else(|| Error::internal("a logged result is gone"))?;
            indices.push((at.0, at.1 as usize));
        }
        let mut out = Vec::with_capacity(n_outputs);
        for j in 0..n_outputs {
            // Column j + 2: after `__input` and `__model`.
            let arrays: Vec<&dyn Array> = self
                .batches
                .iter()
                .map(|b| b.column(j + 2).as_ref())
                .collect();
            out.push(arrow::compute::interleave(&arrays, &indices)?);
        }
        Ok(out)
    }

    /// Adds the rows of `model` from one Arrow IPC stream of `schema` (a segment, or results
    /// from the checkpoint's state). A stream of another schema is skipped, and so is what
    /// follows a damaged batch, each with a warning naming `what`.
    pub(crate) fn add_stream(&mut self, bytes: &[u8], schema: &SchemaRef, model: u64, what: &str) {
        let reader = match StreamReader::try_new(bytes, None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(segment = what, error = %e, "skipping an unreadable inference log segment");
                return;
            }
        };
        if reader.schema().fields() != schema.fields() {
            tracing::warn!(
                segment = what,
                "skipping an inference log segment of another schema"
            );
            return;
        }
        for batch in reader {
            let Ok(batch) = batch else {
                tracing::warn!(
                    segment = what,
                    "an inference log segment ends in a damaged batch"
                );
                break;
            };
            let (Some(keys), Some(models)) = (
                batch.column(0).as_any().downcast_ref::<UInt64Array>(),
                batch.column(1).as_any().downcast_ref::<UInt64Array>(),
            ) else {
                break;
            };
            let b = self.batches.len();
            for r in 0..batch.num_rows() {
                if models.value(r) == model {
                    self.index.insert(keys.value(r), (b, r as u32));
                }
            }
            self.batches.push(batch);
        }
    }
}

/// The schema of a log segment for output fields `outputs`.
pub(crate) fn log_schema(outputs: &[Field]) -> SchemaRef {
    let mut fields = vec![
        Field::new("__input", DataType::UInt64, false),
        Field::new("__model", DataType::UInt64, false),
    ];
    fields.extend(outputs.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// The epoch of a segment, from its name.
fn epoch_of(name: &str) -> Option<u64> {
    name.strip_suffix(".arrow")?.split('-').next()?.parse().ok()
}

/// Encodes batches of `schema` as one Arrow IPC stream.
pub(crate) fn ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut w = StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    Ok(w.into_inner()?)
}

/// Loads the segments of epoch `from` or later from `store`, keeping the rows of `model`.
pub(crate) async fn load(
    store: &LogStore,
    schema: &SchemaRef,
    model: u64,
    from: CheckpointId,
    ctx: &OperatorContext,
) -> Result<LoadedLog> {
    let names: Vec<String> = store
        .list()
        .await?
        .into_iter()
        .filter(|n| epoch_of(n).is_some_and(|e| e >= from))
        .collect();
    let segments: Vec<(String, bytes::Bytes)> = futures::stream::iter(names)
        .map(|n| async move { Ok::<_, Error>(store.get(&n).await?.map(|b| (n, b))) })
        .buffered(8)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;
    let schema = schema.clone();
    ctx.spawn_cpu(move || {
        let mut log = LoadedLog::default();
        for (name, bytes) in &segments {
            log.add_stream(bytes, &schema, model, name);
        }
        log
    })
    .await
}

/// This instance's side of the log: the buffered results and the segment being written.
pub(crate) struct LogWriter {
    store: LogStore,
    schema: SchemaRef,
    model: u64,
    subtask: u32,
    /// Unique to this instance and run.
    run: u64,
    epoch: CheckpointId,
    seq: u64,
    /// Results of the current epoch not yet being written.
    open: Vec<RecordBatch>,
    /// Closed buffers of earlier epochs, waiting to be written.
    sealed: VecDeque<(CheckpointId, Vec<RecordBatch>)>,
    upload: Option<IoTask<Result<()>>>,
    cleanup: Option<IoTask<Result<usize>>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("subtask", &self.subtask)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// A writer for instance `subtask`, starting at `epoch` (the restored checkpoint, or 0).
    pub(crate) fn new(
        store: LogStore,
        schema: SchemaRef,
        model: u64,
        subtask: u32,
        epoch: CheckpointId,
    ) -> Self {
        let mut h = Xxh3::new();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(&nanos.to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&subtask.to_le_bytes());
        LogWriter {
            store,
            schema,
            model,
            subtask,
            run: h.digest(),
            epoch,
            seq: 0,
            open: Vec::new(),
            sealed: VecDeque::new(),
            upload: None,
            cleanup: None,
        }
    }

    /// Buffers results (row identities and their output columns) and starts writing them if no
    /// segment is being written.
    pub(crate) fn append(
        &mut self,
        keys: Vec<u64>,
        outputs: &[ArrayRef],
        ctx: &OperatorContext,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let n = keys.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(keys)),
            Arc::new(UInt64Array::from(vec![self.model; n])),
        ];
        columns.extend(outputs.iter().cloned());
        self.open
            .push(RecordBatch::try_new(self.schema.clone(), columns)?);
        self.reap(ctx)
    }

    /// The model identity the results are logged under.
    pub(crate) fn model(&self) -> u64 {
        self.model
    }

    /// Whether a segment is being written (the operator then has work pending: its end).
    pub(crate) fn busy(&self) -> bool {
        self.upload.is_some()
    }

    /// At checkpoint `id`: closes the buffer as a segment of the old epoch and starts epoch `id`.
    pub(crate) fn seal(&mut self, id: CheckpointId, ctx: &OperatorContext) -> Result<()> {
        if !self.open.is_empty() {
            self.sealed
                .push_back((self.epoch, std::mem::take(&mut self.open)));
        }
        self.epoch = id;
        self.reap(ctx)
    }

    /// Handles a segment write that has ended (without waiting) and starts the next one.
    pub(crate) fn reap(&mut self, ctx: &OperatorContext) -> Result<()> {
        if self.upload.as_ref().is_some_and(IoTask::is_finished) {
            let waker = futures::task::noop_waker();
            let _ = self.poll(&mut Context::from_waker(&waker), ctx)?;
        }
        self.start_next(ctx)
    }

    /// Resolves when the segment being written is written (or failed: a warning, the job goes
    /// on, those results are computed again if needed), then starts the next one. Pending
    /// forever when nothing is being written. Cancel-safe.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, ctx: &OperatorContext) -> Poll<Result<()>> {
        let Some(upload) = self.upload.as_mut() else {
            return Poll::Pending;
        };
        let res = match std::pin::Pin::new(upload).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.upload = None;
        if let Err(e) = res.and_then(|r| r) {
            tracing::warn!(node = ctx.name(), error = %e.report(), "cannot write an inference results log segment; its results would be computed again after a restore");
        }
        Poll::Ready(self.start_next(ctx))
    }

    fn start_next(&mut self, ctx: &OperatorContext) -> Result<()> {
        if self.upload.is_some() {
            return Ok(());
        }
        let (epoch, batches) = match self.sealed.pop_front() {
            Some(s) => s,
            None if !self.open.is_empty() => (self.epoch, std::mem::take(&mut self.open)),
            None => return Ok(()),
        };
        let bytes = ipc(&self.schema, &batches)?;
        let name = format!(
            "{epoch:020}-{}-{:016x}-{:08}.arrow",
            self.subtask, self.run, self.seq
        );
        self.seq += 1;
        let store = self.store.clone();
        self.upload = Some(ctx.start_io(async move { store.put(&name, bytes.into()).await }));
        Ok(())
    }

    /// Checkpoint `id` completed: subtask 0 deletes the segments of epochs before `id` (unless
    /// a deletion is still running; the next completion catches up). With `wait`, awaits it
    /// (after the operator finished, so the deletion is not cancelled with the task).
    pub(crate) async fn delete_before(
        &mut self,
        id: CheckpointId,
        wait: bool,
        ctx: &OperatorContext,
    ) -> Result<()> {
        if self.subtask != 0 {
            return Ok(());
        }
        if self.cleanup.as_ref().is_some_and(|c| !c.is_finished()) && !wait {
            return Ok(());
        }
        let store = self.store.clone();
        self.cleanup = Some(ctx.start_io(async move {
            let mut deleted = 0;
            for name in store.list().await? {
                if epoch_of(&name).is_some_and(|e| e < id) {
                    store.delete(&name).await?;
                    deleted += 1;
                }
            }
            Ok(deleted)
        }));
        if wait && let Some(c) = self.cleanup.take() {
            let deleted = c.await??;
            tracing::debug!(
                checkpoint = id,
                deleted,
                "inference results log segments deleted"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_carry_their_epoch() {
        assert_eq!(
            epoch_of("00000000000000000012-0-00ff-00000003.arrow"),
            Some(12)
        );
        assert_eq!(epoch_of("junk.arrow"), None);
        assert_eq!(epoch_of("00000000000000000012-0-00ff-00000003.tmp"), None);
    }
}
