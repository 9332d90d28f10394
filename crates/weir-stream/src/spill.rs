//! Spilling a windowed aggregation's state to local disk under a memory budget.
//!
//! A slot's groups are intermediate aggregate state (DataFusion's `state` arrays), which merge.
//! When the step's state in memory passes its budget, the largest slots are frozen and written as
//! *runs*: Arrow IPC files of rows `(key group, keys, states)` sorted by key group, with a small
//! in-memory index of the key groups each IPC batch holds. Aggregation goes on in fresh
//! accumulators, so no row ever reads the disk. When a window fires, its runs are merged one
//! key-group range at a time, with ranges chosen so that each merge fits in half the budget.
//!
//! Run files live in the step's `spill_dir` (default: the system's temporary directory) as
//! `weir-spill-*.arrow`, and are deleted when their slot is dropped. A process killed with
//! `kill -9` leaves its files behind: they are never read again (a restore reads the checkpoint)
//! and may be deleted.

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_types::{Error, Result};

/// Rows per IPC batch of a run: the unit a merge reads (and skips by key group).
const RUN_BATCH_ROWS: usize = 4096;

/// Where a step spills and when.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    /// Bytes of state in memory, per subtask, beyond which slots are spilled.
    pub(crate) bytes: usize,
    /// The directory run files are written to.
    pub(crate) dir: PathBuf,
}

impl Budget {
    /// The bytes one merge of spilled state may hold: half the budget (the other half is for the
    /// state that keeps aggregating meanwhile).
    pub(crate) fn merge_bytes(&self) -> usize {
        (self.bytes / 2).max(1)
    }
}

/// One sorted run on disk.
#[derive(Debug)]
pub(crate) struct Run {
    file: tempfile::NamedTempFile,
    /// Per IPC batch: the first and last key group it holds.
    index: Vec<(u32, u32)>,
    rows: usize,
    bytes: u64,
}

impl Run {
    /// Writes `parts` (column 0: the key group as `UInt32`, then keys and states; one schema)
    /// into a new file in `dir`, each part sorted by key group. The sorted rows are taken and
    /// written [`RUN_BATCH_ROWS`] at a time, so writing holds no second copy of a part.
    pub(crate) fn write(dir: &Path, parts: &[RecordBatch]) -> Result<Run> {
        let io = |what: &str, e: std::io::Error| {
            Error::io(format!(
                "cannot {what} a state spill file in {}",
                dir.display()
            ))
            .with_source(e)
        };
        let arrow_err = |e: arrow::error::ArrowError| {
            Error::io(format!(
                "cannot write a state spill file in {}",
                dir.display()
            ))
            .with_source(e)
        };
        let Some(first) = parts.first() else {
            return Err(Error::internal("a state spill run of no parts"));
        };
        let file = tempfile::Builder::new()
            .prefix("weir-spill-")
            .suffix(".arrow")
            .tempfile_in(dir)
            .map_err(|e| io("create", e))?;
        let mut writer = FileWriter::try_new(
            BufWriter::with_capacity(
                1 << 20,
                file.as_file().try_clone().map_err(|e| io("open", e))?,
            ),
            &first.schema(),
        )
        .map_err(arrow_err)?;
        let mut index = Vec::new();
        let mut rows = 0;
        for part in parts {
            let order = sort_to_indices(part.column(0), None, None)
                .map_err(|e| Error::internal("cannot sort spilled state").with_source(e))?;
            let mut at = 0;
            while at < part.num_rows() {
                let len = RUN_BATCH_ROWS.min(part.num_rows() - at);
                let chunk = take_record_batch(part, &order.slice(at, len))
                    .map_err(|e| Error::internal("cannot sort spilled state").with_source(e))?;
                let groups = chunk.column(0).as_primitive::<UInt32Type>();
                index.push((groups.value(0), groups.value(len - 1)));
                writer.write(&chunk).map_err(arrow_err)?;
                at += len;
            }
            rows += part.num_rows();
        }
        writer.finish().map_err(arrow_err)?;
        let inner = writer.into_inner().map_err(arrow_err)?;
        inner
            .into_inner()
            .map_err(|e| io("write", e.into_error()))?;
        let bytes = file.as_file().metadata().map_err(|e| io("stat", e))?.len();
        Ok(Run {
            file,
            index,
            rows,
            bytes,
        })
    }

    /// The rows of key groups in `groups`, in batches of the run's layout (key group column
    /// first).
    pub(crate) fn read(&self, groups: Range<u32>) -> Result<Vec<RecordBatch>> {
        let path = self.file.path();
        let err = |e: arrow::error::ArrowError| {
            Error::io(format!(
                "cannot read the state spill file {}",
                path.display()
            ))
            .with_source(e)
        };
        let wanted: Vec<usize> = self
            .index
            .iter()
            .enumerate()
            .filter(|(_, (lo, hi))| *hi >= groups.start && *lo < groups.end)
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let file = File::open(path).map_err(|e| {
            Error::io(format!(
                "cannot open the state spill file {}",
                path.display()
            ))
            .with_source(e)
        })?;
        let mut reader = FileReader::try_new(file, None).map_err(err)?;
        let mut out = Vec::with_capacity(wanted.len());
        for i in wanted {
            reader.set_index(i).map_err(err)?;
            let Some(batch) = reader.next().transpose().map_err(err)? else {
                return Err(Error::io(format!(
                    "the state spill file {} ends before its batch {i}",
                    path.display()
                )));
            };
            let (lo, hi) = self.index[i];
            if lo >= groups.start && hi < groups.end {
                out.push(batch);
                continue;
            }
            let kg = batch.column(0).as_primitive::<UInt32Type>();
            let mask: BooleanArray = kg
                .values()
                .iter()
                .map(|g| Some(groups.contains(g)))
                .collect();
            let kept = filter_record_batch(&batch, &mask)
                .map_err(|e| Error::internal("cannot filter spilled state").with_source(e))?;
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }
        Ok(out)
    }

    /// Rows in the run.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of the file.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The smallest and one past the largest key group in the run.
    pub(crate) fn groups(&self) -> Range<u32> {
        let lo = self.index.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = self.index.iter().map(|r| r.1 + 1).max().unwrap_or(0);
        lo..hi
    }
}

/// A run's batch: the key group column `__kg` followed by `columns` named `fields`.
pub(crate) fn run_batch(
    groups: Vec<u32>,
    mut fields: Vec<Field>,
    mut columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    fields.insert(0, Field::new("__kg", DataType::UInt32, false));
    columns.insert(0, Arc::new(UInt32Array::from(groups)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::internal("cannot build spilled state").with_source(e))
}

/// Splits `range` into `n` contiguous, non-empty (where possible) ranges covering it.
pub(crate) fn split_range(range: Range<u32>, n: usize) -> Vec<Range<u32>> {
    let len = (range.end - range.start) as usize;
    let n = n.clamp(1, len.max(1));
    (0..n)
        .map(|i| {
            let a = range.start + (len * i / n) as u32;
            let b = range.start + (len * (i + 1) / n) as u32;
            a..b
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch_bytes(b: &RecordBatch) -> usize {
        b.columns().iter().map(|c| c.get_array_memory_size()).sum()
    }

    fn batch(groups: &[u32]) -> RecordBatch {
        let vals: Vec<i64> = groups.iter().map(|g| i64::from(*g) * 10).collect();
        run_batch(
            groups.to_vec(),
            vec![Field::new("v", DataType::Int64, true)],
            vec![Arc::new(Int64Array::from(vals))],
        )
        .expect("batch")
    }

    #[test]
    fn a_run_reads_back_exactly_the_rows_of_a_key_group_range() {
        let dir = tempfile::tempdir().expect("dir");
        let groups: Vec<u32> = (0..10_000u32).map(|i| (i * 7919) % 128).collect();
        // Two parts, each sorted on its own.
        let run = Run::write(
            dir.path(),
            &[batch(&groups[..6000]), batch(&groups[6000..])],
        )
        .expect("write");
        assert_eq!(run.rows(), 10_000);
        assert!(run.bytes() > 0);
        assert_eq!(run.groups(), 0..128);
        let mut total = 0;
        for r in split_range(0..128, 5) {
            for b in run.read(r.clone()).expect("read") {
                assert!(batch_bytes(&b) > 0);
                let kg = b.column(0).as_primitive::<UInt32Type>();
                let v = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                for i in 0..b.num_rows() {
                    assert!(r.contains(&kg.value(i)), "{} not in {r:?}", kg.value(i));
                    assert_eq!(v.value(i), i64::from(kg.value(i)) * 10);
                }
                total += b.num_rows();
            }
        }
        assert_eq!(total, 10_000);
        let path = run.file.path().to_path_buf();
        assert!(path.exists());
        drop(run);
        assert!(!path.exists(), "a dropped run deletes its file");
    }

    #[test]
    fn ranges_split_evenly_and_cover_everything() {
        assert_eq!(split_range(0..128, 4), vec![0..32, 32..64, 64..96, 96..128]);
        assert_eq!(split_range(5..6, 8), vec![5..6]);
        assert_eq!(split_range(0..10, 0), vec![0..10]);
        let parts = split_range(3..100, 7);
        assert_eq!(parts.first().map(|r| r.start), Some(3));
        assert_eq!(parts.last().map(|r| r.end), Some(100));
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
    }
}
