//! The results log of the `infer` operator: model outputs are appended to a log before they are
//! emitted, keyed by the identity of the input row and of the model, so that a restore answers the
//! requests it re-issues from the log instead of running the model again.
//!
//! Layout: a directory of Arrow IPC stream files, one per operator instance and *segment*. A
//! segment is opened when the instance opens (named after the checkpoint it restored from, 0 on a
//! fresh start) and at every checkpoint `c` (named `c`); the new segment starts with the results
//! already computed but not yet emitted, so the segments opened at `c` or later hold every result
//! a restore from `c` can use. When checkpoint `c` completes, the files opened before `c` (by any
//! instance, of any run) are deleted: a later restore is from `c` or newer. Entries are
//! content-addressed (input bytes + model identity), so a stale entry is never wrong, only unused.
//!
//! Each file is `<opened checkpoint, 20 digits>-<subtask>-<nonce>.arrow`; its rows are
//! `(__input: u64, __model: u64, <output columns>)`. A record batch is written (`write(2)`, so it
//! survives a killed process) before its rows are emitted; the file is `fsync`ed at every
//! checkpoint. A torn tail (a crash mid-write) is ignored on load.

use crate::tensor::InputBinding;
use arrow::array::{Array, ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_types::{Error, Result};
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

/// Results loaded from a log directory on restore: row identity → (batch, row).
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

    /// Loads every `*.arrow` file of `dir` whose schema is `schema`, keeping the rows of `model`.
    /// Unreadable files and torn tails are skipped with a warning.
    pub(crate) fn load(dir: &Path, schema: &SchemaRef, model: u64) -> Result<LoadedLog> {
        let mut log = LoadedLog::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(log),
            Err(e) => {
                return Err(Error::external(format!(
                    "cannot list the inference results log {}",
                    dir.display()
                ))
                .with_source(e));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
            .collect();
        files.sort();
        for path in files {
            let reader = match File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| StreamReader::try_new(f, None).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable inference log file");
                    continue;
                }
            };
            if reader.schema().fields() != schema.fields() {
                tracing::warn!(file = %path.display(), "skipping an inference log file of another schema");
                continue;
            }
            for batch in reader {
                let Ok(batch) = batch else {
                    // A torn tail: what came before it is good.
                    break;
                };
                let (Some(keys), Some(models)) = (
                    batch.column(0).as_any().downcast_ref::<UInt64Array>(),
                    batch.column(1).as_any().downcast_ref::<UInt64Array>(),
                ) else {
                    break;
                };
                let b = log.batches.len();
                for r in 0..batch.num_rows() {
                    if models.value(r) == model {
                        log.index.insert(keys.value(r), (b, r as u32));
                    }
                }
                log.batches.push(batch);
            }
        }
        Ok(log)
    }
}

/// The schema of a log file for output fields `outputs`.
pub(crate) fn log_schema(outputs: &[Field]) -> SchemaRef {
    let mut fields = vec![
        Field::new("__input", DataType::UInt64, false),
        Field::new("__model", DataType::UInt64, false),
    ];
    fields.extend(outputs.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// This instance's open segment.
pub(crate) struct LogWriter {
    dir: PathBuf,
    subtask: u32,
    schema: SchemaRef,
    model: u64,
    writer: Option<StreamWriter<File>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").field("dir", &self.dir).finish()
    }
}

fn io_err(what: &str, path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::external(format!(
        "cannot {what} the inference results log {}",
        path.display()
    ))
    .with_source(e)
}

impl LogWriter {
    pub(crate) fn new(dir: PathBuf, subtask: u32, schema: SchemaRef, model: u64) -> Self {
        LogWriter {
            dir,
            subtask,
            schema,
            model,
            writer: None,
        }
    }

    /// The log directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs and closes the current segment and opens one named after checkpoint `opened`.
    pub(crate) fn rotate(&mut self, opened: u64) -> Result<()> {
        self.close()?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{opened:020}-{}-{}-{nanos}.arrow",
            self.subtask,
            std::process::id()
        );
        let path = self.dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err("create", &path, e))?;
        let w = StreamWriter::try_new(file, &self.schema).map_err(|e| io_err("write", &path, e))?;
        self.writer = Some(w);
        Ok(())
    }

    /// Appends results: row identities and their output columns.
    pub(crate) fn append(&mut self, keys: Vec<u64>, outputs: &[ArrayRef]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let n = keys.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(keys)),
            Arc::new(UInt64Array::from(vec![self.model; n])),
        ];
        columns.extend(outputs.iter().cloned());
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let dir = self.dir.clone();
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::internal("the inference results log is not open"))?;
        w.write(&batch).map_err(|e| io_err("write", &dir, e))?;
        w.flush().map_err(|e| io_err("write", &dir, e))?;
        Ok(())
    }

    /// Syncs the current segment to disk.
    pub(crate) fn sync(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            let dir = self.dir.clone();
            w.flush().map_err(|e| io_err("write", &dir, e))?;
            w.get_ref()
                .sync_data()
                .map_err(|e| io_err("sync", &dir, e))?;
        }
        Ok(())
    }

    /// Syncs and closes the current segment.
    pub(crate) fn close(&mut self) -> Result<()> {
        self.sync()?;
        if let Some(mut w) = self.writer.take() {
            let dir = self.dir.clone();
            w.finish().map_err(|e| io_err("write", &dir, e))?;
        }
        Ok(())
    }
}

/// Deletes the segments of `dir` opened before checkpoint `before` (any instance, any run).
/// Returns how many were deleted.
pub(crate) fn delete_before(dir: &Path, before: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".arrow") {
            continue;
        }
        let Some(opened) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if opened < before && std::fs::remove_file(e.path()).is_ok() {
            deleted += 1;
        }
    }
    deleted
}
