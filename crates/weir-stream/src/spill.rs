//! Spilling a stateful step's state to local disk under a memory budget (`memory_budget`,
//! `spill_dir` on `op: aggregate`, `op: window_join`, `op: top_n`, `op: interval_join` and
//! `op: join`).
//!
//! Windowed aggregation: a slot's groups are intermediate aggregate state (DataFusion's `state` arrays), which merge.
//! When the step's state in memory passes its budget, the largest slots are frozen and written as
//! *runs*: Arrow IPC files of rows `(key group, keys, states)` sorted by key group, with a small
//! in-memory index of the key groups each IPC batch holds. Aggregation goes on in fresh
//! accumulators, so no row ever reads the disk. When a window fires, its runs are merged one
//! key-group range at a time, with ranges chosen so that each merge fits in half the budget.
//!
//! Window joins and top-N keep rows, not accumulators: a window's rows are written the same way
//! (rows tagged with the key group of the columns they are routed by, sorted by it), and a firing
//! window reads one key-group range of both sides at a time ([`spill_rows`], [`merge_ranges`],
//! [`read_rows`]); equal keys are in the same key group, so joining or ranking per range gives
//! the whole answer.
//!
//! Run files live in the step's `spill_dir` (default: the system's temporary directory) as
//! `weir-spill-*.arrow`, and are deleted when their slot is dropped. A process killed with
//! `kill -9` leaves its files behind: they are never read again (a restore reads the checkpoint)
//! and may be deleted.

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_types::{Error, KeyGroupRange, Result};

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

/// The budget of a step from its `memory_budget` and `spill_dir` keys: none when no budget is
/// set; a plan-time error naming the key when the size does not parse, is zero, or `spill_dir`
/// comes without a budget.
pub(crate) fn parse_budget(
    memory_budget: Option<&str>,
    spill_dir: Option<&Path>,
) -> Result<Option<Budget>> {
    if memory_budget.is_none() && spill_dir.is_some() {
        return Err(Error::config(
            "key 'spill_dir': only used with 'memory_budget'; set a budget (e.g. \
             memory_budget: 256MiB) or remove spill_dir",
        ));
    }
    let Some(text) = memory_budget else {
        return Ok(None);
    };
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| {
            Error::config(format!(
                "key 'memory_budget': '{text}' is not a size like 256MiB or 2GB: {e}"
            ))
        })?
        .as_u64();
    if bytes == 0 {
        return Err(Error::config(
            "key 'memory_budget': must be more than 0 bytes (leave it out for no limit)",
        ));
    }
    Ok(Some(Budget {
        bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        dir: spill_dir.map_or_else(std::env::temp_dir, Path::to_path_buf),
    }))
}

/// The entries to spill, largest first, so that `sizes` (bytes in memory per entry) totalling
/// more than `limit` come down to half of it (so spilling is not repeated for every batch).
/// Empty while the total is within the limit.
pub(crate) fn victims<K: Copy>(mut sizes: Vec<(K, usize)>, limit: usize) -> Vec<K> {
    let mut total: usize = sizes.iter().map(|s| s.1).sum();
    if total <= limit {
        return Vec::new();
    }
    sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut out = Vec::new();
    for (k, size) in sizes {
        if total <= limit / 2 {
            break;
        }
        out.push(k);
        total = total.saturating_sub(size);
    }
    out
}

/// The windows a step spills now (see [`victims`]), given each one's bytes in memory; the
/// first time there are any, says at info level that `what` passed the step's budget.
pub(crate) fn over_budget<K: Copy>(
    budget: &Budget,
    sizes: Vec<(K, usize)>,
    noted: &mut bool,
    step: &str,
    what: &str,
) -> Vec<K> {
    let ids = victims(sizes, budget.bytes);
    if !ids.is_empty() && !*noted {
        *noted = true;
        tracing::info!(
            step,
            "{what} passed their memory_budget of {} bytes; spilling them to {}",
            budget.bytes,
            budget.dir.display()
        );
    }
    ids
}

/// Writes rows (`batches`, one schema) as one run, each row tagged with the key group of the
/// columns `route_idx` it is routed by. `None` when there are no rows.
pub(crate) fn spill_rows(
    budget: &Budget,
    batches: &[RecordBatch],
    route_idx: &[usize],
    max_parallelism: u32,
    range: KeyGroupRange,
) -> Result<Option<Run>> {
    let mut tagged = Vec::with_capacity(batches.len());
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let keys: Vec<ArrayRef> = route_idx.iter().map(|&i| b.column(i).clone()).collect();
        let groups = crate::parts::key_groups(&keys, b.num_rows(), max_parallelism, range)?;
        let fields = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        tagged.push(run_batch(groups, fields, b.columns().to_vec())?);
    }
    if tagged.is_empty() {
        return Ok(None);
    }
    Run::write(&budget.dir, &tagged).map(Some)
}

/// Key-group ranges that cover `runs`, each holding about [`Budget::merge_bytes`] of run bytes,
/// so reading one range at a time stays within the budget.
pub(crate) fn merge_ranges(runs: &[&Run], budget: &Budget) -> Vec<Range<u32>> {
    let (Some(lo), Some(hi)) = (
        runs.iter().map(|r| r.groups().start).min(),
        runs.iter().map(|r| r.groups().end).max(),
    ) else {
        return Vec::new();
    };
    let bytes: u64 = runs.iter().map(|r| r.bytes()).sum();
    let per_merge = budget.merge_bytes() as u64;
    split_range(lo..hi, bytes.div_ceil(per_merge.max(1)) as usize)
}

/// The rows of key groups `groups` in `runs` written by [`spill_rows`], as batches of `schema`
/// (the key group column dropped).
pub(crate) fn read_rows(
    runs: &[&Run],
    groups: Range<u32>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for run in runs {
        for b in run.read(groups.clone())? {
            out.push(
                RecordBatch::try_new(schema.clone(), b.columns()[1..].to_vec()).map_err(|e| {
                    Error::internal("spilled rows do not fit their step's schema").with_source(e)
                })?,
            );
        }
    }
    Ok(out)
}

/// Writes a spill file in `dir` (`{prefix}*.arrow`, an Arrow IPC file of `schema`) with the
/// batches `fill` hands to its writer; returns the file's path, deleted when dropped (no
/// descriptor is kept open), and its size in bytes.
pub(crate) fn write_ipc(
    dir: &Path,
    prefix: &str,
    schema: &Schema,
    fill: impl FnOnce(&mut IpcWriter<'_>) -> Result<()>,
) -> Result<(tempfile::TempPath, u64)> {
    let io = |what: &str, e: std::io::Error| {
        Error::io(format!("cannot {what} a spill file in {}", dir.display())).with_source(e)
    };
    let file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".arrow")
        .tempfile_in(dir)
        .map_err(|e| io("create", e))?;
    let out = BufWriter::with_capacity(
        1 << 20,
        file.as_file().try_clone().map_err(|e| io("open", e))?,
    );
    let mut writer = IpcWriter {
        inner: FileWriter::try_new(out, schema).map_err(|e| {
            Error::io(format!("cannot write a spill file in {}", dir.display())).with_source(e)
        })?,
        dir,
    };
    fill(&mut writer)?;
    let IpcWriter { mut inner, .. } = writer;
    let arrow_err = |e: arrow::error::ArrowError| {
        Error::io(format!("cannot write a spill file in {}", dir.display())).with_source(e)
    };
    inner.finish().map_err(arrow_err)?;
    inner
        .into_inner()
        .map_err(arrow_err)?
        .into_inner()
        .map_err(|e| io("write", e.into_error()))?;
    let bytes = file.as_file().metadata().map_err(|e| io("stat", e))?.len();
    Ok((file.into_temp_path(), bytes))
}

/// The writer [`write_ipc`] hands out.
pub(crate) struct IpcWriter<'a> {
    inner: FileWriter<BufWriter<File>>,
    dir: &'a Path,
}

impl IpcWriter<'_> {
    /// Appends one batch.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.inner.write(batch).map_err(|e| {
            Error::io(format!(
                "cannot write a spill file in {}",
                self.dir.display()
            ))
            .with_source(e)
        })
    }
}

/// A reader of the spill file at `path` (its footer read once).
pub(crate) fn open_ipc(path: &Path) -> Result<FileReader<File>> {
    let file = File::open(path).map_err(|e| {
        Error::io(format!("cannot open the spill file {}", path.display())).with_source(e)
    })?;
    FileReader::try_new(file, None).map_err(|e| {
        Error::io(format!("cannot read the spill file {}", path.display())).with_source(e)
    })
}

/// One sorted run on disk.
#[derive(Debug)]
pub(crate) struct Run {
    /// Deleted when the run is dropped; no descriptor is kept open between reads.
    file: tempfile::TempPath,
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
        let Some(first) = parts.first() else {
            return Err(Error::internal("a state spill run of no parts"));
        };
        let mut index = Vec::new();
        let mut rows = 0;
        let (file, bytes) = write_ipc(dir, "weir-spill-", &first.schema(), |writer| {
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
                    writer.write(&chunk)?;
                    at += len;
                }
                rows += part.num_rows();
            }
            Ok(())
        })?;
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
        let path: &Path = &self.file;
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
        let mut reader = open_ipc(path)?;
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
        let path = run.file.to_path_buf();
        assert!(path.exists());
        drop(run);
        assert!(!path.exists(), "a dropped run deletes its file");
    }

    #[test]
    fn spilled_rows_read_back_per_key_group_range_with_their_schema() {
        let dir = tempfile::tempdir().expect("dir");
        let budget = Budget {
            bytes: 1,
            dir: dir.path().to_path_buf(),
        };
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let keys: Vec<i64> = (0..5000).collect();
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys))])
            .expect("batch");
        let range = KeyGroupRange { start: 0, end: 128 };
        let run = spill_rows(&budget, std::slice::from_ref(&b), &[0], 128, range)
            .expect("spill")
            .expect("a run");
        let ranges = merge_ranges(&[&run], &budget);
        assert!(ranges.len() > 1, "a 1-byte budget reads many ranges");
        let mut seen: Vec<i64> = Vec::new();
        for r in ranges {
            for b in read_rows(&[&run], r, &schema).expect("read") {
                assert_eq!(b.schema(), schema);
                seen.extend(
                    b.column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values(),
                );
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..5000).collect::<Vec<_>>());
        assert!(
            spill_rows(&budget, &[b.slice(0, 0)], &[0], 128, range)
                .expect("spill")
                .is_none()
        );
    }

    #[test]
    fn victims_are_the_largest_down_to_half_the_limit() {
        assert!(victims(vec![(1, 10), (2, 20)], 30).is_empty());
        assert_eq!(victims(vec![(1, 10), (2, 20), (3, 5)], 30), vec![2]);
        assert_eq!(victims(vec![(1, 10), (2, 20), (3, 15)], 20), vec![2, 3]);
    }

    #[test]
    fn budgets_parse_sizes_and_name_the_key_when_wrong() {
        let b = parse_budget(Some("1KiB"), None).expect("ok").expect("some");
        assert_eq!(b.bytes, 1024);
        assert!(parse_budget(None, None).expect("ok").is_none());
        for (size, says) in [("lots", "is not a size"), ("0B", "more than 0")] {
            let e = parse_budget(Some(size), None).expect_err(size).to_string();
            assert!(e.contains("memory_budget") && e.contains(says), "{e}");
        }
        let e = parse_budget(None, Some(Path::new("/tmp")))
            .expect_err("dir alone")
            .to_string();
        assert!(e.contains("spill_dir"), "{e}");
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
