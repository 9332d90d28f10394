//! The rows one side of a join keeps: Arrow batches in arrival order with a hash index on their
//! key, dropped from the front as the watermark makes them useless.
//!
//! Every buffered row has a global row id (its position in arrival order). The index maps a key to
//! its newest row; each row points to the previous row of the same key, so the rows of a key are a
//! chain walked newest first, and adding a batch allocates nothing per row. Dropping a batch only
//! moves the first live row id: chains stop there, and index entries whose newest row is gone
//! are reused or swept.
//!
//! Under a memory budget ([`Buffer::spill_oldest`]) the oldest batches' rows are written to a
//! local Arrow IPC file and read back only when a probe matches them (or a checkpoint is taken);
//! their keys, times and chains stay in memory, so probing never reads the disk.

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use weir_types::{Error, Result};

const NONE: u64 = u64::MAX;

/// A file of spilled batches, deleted when the last batch in it is dropped (no descriptor is
/// kept open between reads).
#[derive(Debug)]
struct SpillFile(tempfile::TempPath);

impl SpillFile {
    fn write(dir: &Path, batches: &[&RecordBatch]) -> Result<Arc<SpillFile>> {
        let Some(first) = batches.first() else {
            return Err(Error::internal("a join spill file of no batches"));
        };
        let (path, _) = crate::spill::write_ipc(dir, "weir-join-spill-", &first.schema(), |w| {
            batches.iter().try_for_each(|b| w.write(b))
        })?;
        Ok(Arc::new(SpillFile(path)))
    }

    /// A reader of the file (its footer read once).
    fn reader(&self) -> Result<FileReader<File>> {
        crate::spill::open_ipc(&self.0)
    }

    /// Batch `i` of the file, with the buffer's `schema`.
    fn read(&self, i: usize, schema: &SchemaRef) -> Result<RecordBatch> {
        self.read_with(&mut self.reader()?, i, schema)
    }

    /// Batch `i` of the file through `reader`, with the buffer's `schema`.
    fn read_with(
        &self,
        reader: &mut FileReader<File>,
        i: usize,
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let path: &Path = &self.0;
        let err = |e: arrow::error::ArrowError| {
            Error::io(format!(
                "cannot read the join spill file {}",
                path.display()
            ))
            .with_source(e)
        };
        reader.set_index(i).map_err(err)?;
        let batch = reader.next().transpose().map_err(err)?.ok_or_else(|| {
            Error::io(format!(
                "the join spill file {} ends before its batch {i}",
                path.display()
            ))
        })?;
        RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| {
            Error::internal("spilled join rows do not fit their input's schema").with_source(e)
        })
    }
}

/// Where a buffered batch's rows are.
enum Data {
    Memory(RecordBatch),
    /// Batch `index` of a spill file.
    Disk {
        file: Arc<SpillFile>,
        index: usize,
    },
}

struct Stored {
    first: u64,
    rows: usize,
    data: Data,
    keys: Rows,
    /// Event times (ms) of the rows, when the side has a time column.
    times: Option<Int64Array>,
    max_time: i64,
}

/// One side's buffered rows.
pub(crate) struct Buffer {
    schema: SchemaRef,
    key_idx: Vec<usize>,
    time_idx: Option<usize>,
    converter: RowConverter,
    batches: VecDeque<Stored>,
    /// `(hash, newest row id)` per key.
    index: HashTable<(u64, u64)>,
    /// Per row (from `first_live`): the previous row of its key, or `NONE`.
    prev: VecDeque<u64>,
    first_live: u64,
    next_id: u64,
}

impl Buffer {
    pub(crate) fn new(
        schema: SchemaRef,
        key_idx: Vec<usize>,
        time_idx: Option<usize>,
    ) -> Result<Self> {
        let fields = key_idx
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        Ok(Buffer {
            converter: RowConverter::new(fields)
                .map_err(|e| Error::schema("join keys cannot be compared").with_source(e))?,
            schema,
            key_idx,
            time_idx,
            batches: VecDeque::new(),
            index: HashTable::new(),
            prev: VecDeque::new(),
            first_live: 0,
            next_id: 0,
        })
    }

    pub(crate) fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.key_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect()
    }

    /// The key rows of `batch` and, per row, whether every key column is non-null (null keys
    /// match nothing, as in SQL).
    pub(crate) fn keys_of(&self, batch: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        let cols = self.key_columns(batch);
        let rows = self
            .converter
            .convert_columns(&cols)
            .map_err(|e| Error::input("cannot read join keys").with_source(e))?;
        let mut valid = vec![true; batch.num_rows()];
        for c in &cols {
            if c.null_count() > 0 {
                for (i, v) in valid.iter_mut().enumerate() {
                    *v &= c.is_valid(i);
                }
            }
        }
        Ok((rows, valid))
    }

    /// Rows buffered.
    pub(crate) fn len(&self) -> usize {
        (self.next_id - self.first_live) as usize
    }

    pub(crate) fn size_bytes(&self) -> usize {
        self.rows_bytes() + self.index_bytes()
    }

    /// Memory held by buffered rows that are not spilled.
    pub(crate) fn rows_bytes(&self) -> usize {
        self.batches
            .iter()
            .map(|s| match &s.data {
                Data::Memory(b) => b.get_array_memory_size(),
                Data::Disk { .. } => 0,
            })
            .sum()
    }

    /// Memory held by the keys, times, chains and hash index (never spilled).
    pub(crate) fn index_bytes(&self) -> usize {
        self.batches
            .iter()
            .map(|s| s.keys.size() + s.times.as_ref().map_or(0, |t| t.len() * 8))
            .sum::<usize>()
            + self.prev.len() * 8
            + self.index.capacity() * 16
    }

    /// Rows written to disk.
    pub(crate) fn spilled_rows(&self) -> usize {
        self.batches
            .iter()
            .filter(|s| matches!(s.data, Data::Disk { .. }))
            .map(|s| s.rows)
            .sum()
    }

    /// Writes the oldest batches still in memory to one spill file in `dir` until at least
    /// `bytes` of rows are out of memory (or none are left); returns the bytes freed.
    pub(crate) fn spill_oldest(&mut self, dir: &Path, bytes: usize) -> Result<usize> {
        let mut chosen = Vec::new();
        let mut freed = 0;
        for (i, s) in self.batches.iter().enumerate() {
            if freed >= bytes {
                break;
            }
            if let Data::Memory(b) = &s.data {
                freed += b.get_array_memory_size();
                chosen.push(i);
            }
        }
        if chosen.is_empty() {
            return Ok(0);
        }
        let batches: Vec<&RecordBatch> = chosen
            .iter()
            .filter_map(|&i| match &self.batches[i].data {
                Data::Memory(b) => Some(b),
                Data::Disk { .. } => None,
            })
            .collect();
        let file = SpillFile::write(dir, &batches)?;
        for (index, i) in chosen.into_iter().enumerate() {
            self.batches[i].data = Data::Disk {
                file: file.clone(),
                index,
            };
        }
        Ok(freed)
    }

    /// The rows of stored batch `i`, read back from disk if spilled.
    fn load(&self, i: usize) -> Result<RecordBatch> {
        match &self.batches[i].data {
            Data::Memory(b) => Ok(b.clone()),
            Data::Disk { file, index } => file.read(*index, &self.schema),
        }
    }

    fn stored(&self, id: u64) -> (usize, usize) {
        // Batches are few; the last ones are probed most.
        let i = self
            .batches
            .partition_point(|s| s.first + s.rows as u64 <= id);
        (i, (id - self.batches[i].first) as usize)
    }

    fn key_bytes(&self, id: u64) -> &[u8] {
        let (b, r) = self.stored(id);
        self.batches[b].keys.row(r).data()
    }

    /// The event time of row `id` (its side must have a time column).
    pub(crate) fn time(&self, id: u64) -> i64 {
        let (b, r) = self.stored(id);
        self.batches[b].times.as_ref().map_or(0, |t| t.value(r))
    }

    /// Adds `batch` (rows with a null key are not kept: they can match nothing). `times` are the
    /// rows' event times when the side has a time column.
    pub(crate) fn push(&mut self, batch: RecordBatch, times: Option<Int64Array>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (keys, valid) = self.keys_of(&batch)?;
        let first = self.next_id;
        for (r, ok) in valid.iter().enumerate() {
            let id = first + r as u64;
            if !ok {
                self.prev.push_back(NONE);
                continue;
            }
            let bytes = keys.row(r).data();
            let hash = xxhash_rust::xxh3::xxh3_64(bytes);
            let first_live = self.first_live;
            let batches = &self.batches;
            let stored = |id: u64| -> Option<&[u8]> {
                if id >= first {
                    return Some(keys.row((id - first) as usize).data());
                }
                let i = batches.partition_point(|s| s.first + s.rows as u64 <= id);
                batches
                    .get(i)
                    .map(|s| s.keys.row((id - s.first) as usize).data())
            };
            let entry = self.index.find_mut(hash, |e| {
                e.0 == hash && e.1 >= first_live && stored(e.1) == Some(bytes)
            });
            match entry {
                Some(e) => {
                    let p = e.1;
                    e.1 = id;
                    self.prev.push_back(p);
                }
                None => {
                    self.index.insert_unique(hash, (hash, id), |e| e.0);
                    self.prev.push_back(NONE);
                }
            }
        }
        let max_time = times
            .as_ref()
            .and_then(arrow::compute::max)
            .unwrap_or(i64::MIN);
        self.next_id = first + batch.num_rows() as u64;
        self.batches.push_back(Stored {
            first,
            rows: batch.num_rows(),
            data: Data::Memory(batch),
            keys,
            times,
            max_time,
        });
        Ok(())
    }

    /// For each row `r` of `keys` (with `valid[r]`), calls `hit(r, id)` for every buffered row `id`
    /// of the same key, newest first.
    pub(crate) fn probe(&self, keys: &Rows, valid: &[bool], mut hit: impl FnMut(usize, u64)) {
        for (r, ok) in valid.iter().enumerate() {
            if !ok {
                continue;
            }
            let bytes = keys.row(r).data();
            let hash = xxhash_rust::xxh3::xxh3_64(bytes);
            let Some(&(_, newest)) = self.index.find(hash, |e| {
                e.0 == hash && e.1 >= self.first_live && self.key_bytes(e.1) == bytes
            }) else {
                continue;
            };
            let mut id = newest;
            while id != NONE && id >= self.first_live {
                hit(r, id);
                id = self.prev[(id - self.first_live) as usize];
            }
        }
    }

    /// The rows `ids`, in order, as one batch.
    pub(crate) fn gather(&self, ids: &[u64]) -> Result<RecordBatch> {
        if ids.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let idx: Vec<(usize, usize)> = ids.iter().map(|&id| self.stored(id)).collect();
        // Batches in memory are used as they are. Of a spilled batch only the rows asked for
        // are kept: it is read back, its rows taken, and dropped before the next one is read, so
        // gathering holds one spilled batch at a time (each file opened once).
        let mut rows_of: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        for &(b, r) in &idx {
            if matches!(self.batches[b].data, Data::Disk { .. }) {
                rows_of.entry(b).or_default().push(r as u32);
            }
        }
        let mut sources: Vec<RecordBatch> = Vec::new();
        // Per stored batch: its position in `sources`, and for a spilled one the sorted rows
        // taken from it (a row's position in the piece is its rank there).
        let mut at: std::collections::HashMap<usize, usize> = Default::default();
        let mut by_file: Vec<(&Arc<SpillFile>, usize, usize)> = Vec::new();
        for (&b, rows) in rows_of.iter_mut() {
            rows.sort_unstable();
            rows.dedup();
            if let Data::Disk { file, index } = &self.batches[b].data {
                by_file.push((file, *index, b));
            }
        }
        by_file.sort_by_key(|(f, i, _)| (Arc::as_ptr(f) as usize, *i));
        let mut k = 0;
        while k < by_file.len() {
            let file = by_file[k].0;
            let mut reader = file.reader()?;
            while k < by_file.len() && Arc::ptr_eq(by_file[k].0, file) {
                let (_, index, b) = by_file[k];
                let batch = file.read_with(&mut reader, index, &self.schema)?;
                let take = UInt32Array::from(rows_of[&b].clone());
                let piece = arrow::compute::take_record_batch(&batch, &take)
                    .map_err(|e| Error::internal("cannot take spilled join rows").with_source(e))?;
                at.insert(b, sources.len());
                sources.push(piece);
                k += 1;
            }
        }
        let mut mapped = Vec::with_capacity(idx.len());
        for (b, r) in idx {
            let pos = match at.get(&b) {
                Some(&p) => p,
                None => {
                    let Data::Memory(batch) = &self.batches[b].data else {
                        return Err(Error::internal("a spilled join batch was not read back"));
                    };
                    at.insert(b, sources.len());
                    sources.push(batch.clone());
                    sources.len() - 1
                }
            };
            let r = match rows_of.get(&b) {
                Some(rows) => rows.partition_point(|&x| x < r as u32),
                None => r,
            };
            mapped.push((pos, r));
        }
        let refs: Vec<&RecordBatch> = sources.iter().collect();
        interleave_record_batch(&refs, &mapped)
            .map_err(|e| Error::internal("cannot gather joined rows").with_source(e))
    }

    /// Drops batches from the front while every row of theirs has a time below `min_time`.
    pub(crate) fn expire(&mut self, min_time: i64) {
        while let Some(front) = self.batches.front() {
            if front.max_time >= min_time || self.time_idx.is_none() {
                break;
            }
            let n = front.rows as u64;
            self.batches.pop_front();
            for _ in 0..n {
                self.prev.pop_front();
            }
            self.first_live += n;
        }
        if self.index.len() > 64 && self.index.len() > 2 * self.len() {
            let first_live = self.first_live;
            self.index.retain(|e| e.1 >= first_live);
        }
    }

    /// Every buffered batch, spilled ones read back (for snapshots).
    pub(crate) fn batches(&self) -> impl Iterator<Item = Result<RecordBatch>> + '_ {
        (0..self.batches.len()).map(|i| self.load(i))
    }
}
