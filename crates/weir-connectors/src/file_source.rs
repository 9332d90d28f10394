//! What the file sources (Parquet, JSON Lines, CSV) share: resolving a path, glob or directory into
//! a sorted list of files, splitting that list across subtasks, polling for new files in continuous
//! mode, reporting progress in bytes, and turning per-file and per-row problems into errors or dead
//! letters.
//!
//! A format only supplies a [`FileReader`] per file; this module drives it from
//! [`Source::next`], one chunk (at most one batch) per call, on a blocking thread.
//!
//! # Checkpoints
//!
//! The source's position is one union entry per file it has started, `file:<path>`, whose payload
//! is a [`FilePosition`] as JSON: rows emitted and rows reported bad so far, the byte offset and
//! line number just after the last record read (text formats), and whether the file is done. On
//! restore every instance receives every entry; the instance that owns a file by the split rule
//! (index modulo parallelism, or the name hash in continuous mode) opens it at its position (text
//! formats seek to the byte offset; Parquet skips whole row groups, then rows), and files that are
//! done are skipped. Entries of done files are carried on by the instance the name hash assigns
//! them to, so the set of files taken survives any number of restores (continuous mode needs it).
//! Input files must not change once listed: a file shorter than its recorded offset is an error.

use crate::config::{ColumnSpec, declared_schema};
use arrow::array::ArrayRef;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_runtime::{CpuTask, OperatorContext, Source, SourceEvent, TaskInfo};
use weir_types::{Barrier, Error, Result};

/// One input file found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes when listed.
    pub size: u64,
}

impl ListedFile {
    /// The path as text, for messages and dead letters.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Whether `path` is a glob pattern rather than a plain path.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.starts_with('_') || n.ends_with(".inprogress"))
}

fn has_extension(p: &Path, extensions: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Lists the input files of `path`, sorted by path: one file; every file matching a glob pattern;
/// or every file of a directory whose extension is one of `extensions`. Hidden files (names starting
/// with `.` or `_`) and in-progress files of weir's sinks are skipped. A plain path that does not
/// exist is an error naming it; a glob that matches nothing gives an empty list.
pub fn list_files(path: &str, extensions: &[&str]) -> Result<Vec<ListedFile>> {
    let mut out = Vec::new();
    if is_glob(path) {
        let entries = glob::glob(path)
            .map_err(|e| Error::config(format!("invalid glob pattern '{path}'")).with_source(e))?;
        for entry in entries {
            let p = entry.map_err(|e| {
                Error::io(format!("cannot list input files of '{path}'")).with_source(e)
            })?;
            if is_hidden(&p) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&p)
                && meta.is_file()
            {
                out.push(ListedFile {
                    path: p,
                    size: meta.len(),
                });
            }
        }
    } else {
        let p = Path::new(path);
        let meta = std::fs::metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::config(format!("input path '{path}' does not exist")).with_source(e)
            } else {
                Error::io(format!("cannot read input path '{path}'")).with_source(e)
            }
        })?;
        if meta.is_file() {
            out.push(ListedFile {
                path: p.to_path_buf(),
                size: meta.len(),
            });
        } else {
            let dir = std::fs::read_dir(p)
                .map_err(|e| Error::io(format!("cannot list directory '{path}'")).with_source(e))?;
            for entry in dir {
                let entry = entry.map_err(|e| {
                    Error::io(format!("cannot list directory '{path}'")).with_source(e)
                })?;
                let ep = entry.path();
                if is_hidden(&ep) || !has_extension(&ep, extensions) {
                    continue;
                }
                if let Ok(m) = std::fs::metadata(&ep)
                    && m.is_file()
                {
                    out.push(ListedFile {
                        path: ep,
                        size: m.len(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The first input file of `path`, for reading a schema at plan time. An error names the path when
/// nothing matches.
pub fn first_file(path: &str, extensions: &[&str]) -> Result<ListedFile> {
    list_files(path, extensions)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::config(format!(
                "no input files match '{path}' (looked for {})",
                extensions
                    .iter()
                    .map(|e| format!("*.{e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Plan time, for a source that takes a declared schema or infers one from its first file: the
/// declared schema (after checking that a bounded source's path has files), or what `infer` reads
/// from the first file. In continuous mode with nothing there yet, the error asks for a declared
/// schema.
pub(crate) fn declared_or_inferred(
    path: &str,
    extensions: &[&str],
    continuous: bool,
    declared: Option<&[ColumnSpec]>,
    infer: impl FnOnce(&ListedFile) -> Result<SchemaRef>,
) -> Result<SchemaRef> {
    if let Some(cols) = declared {
        let schema = declared_schema(cols)?;
        if !continuous {
            list_files(path, extensions)?;
        }
        return Ok(schema);
    }
    let first = first_file(path, extensions).map_err(|e| {
        if continuous {
            Error::config(format!(
                "cannot infer the schema of '{path}': no file there yet; declare a schema"
            ))
            .with_source(e)
        } else {
            e
        }
    })?;
    infer(&first)
}

/// The mode part of a file source's `weir validate` line: `bounded`, or `continuous, polling every
/// 1s`.
pub(crate) fn describe_mode(continuous: bool, poll_interval: Duration) -> String {
    if continuous {
        format!(
            "continuous, polling every {}",
            humantime::format_duration(poll_interval)
        )
    } else {
        "bounded".to_string()
    }
}

/// `declared schema` or `inferred schema`, for a `weir validate` line.
pub(crate) fn describe_schema(declared: bool) -> &'static str {
    if declared {
        "declared schema"
    } else {
        "inferred schema"
    }
}

/// A stable hash of a file name (FNV-1a), to assign files found later in continuous mode.
pub(crate) fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether the file at `index` of a sorted listing (or, in continuous mode, with this `name`)
/// belongs to `subtask` of `parallelism`.
pub fn is_mine(index: usize, name: &str, continuous: bool, subtask: u32, parallelism: u32) -> bool {
    let p = u64::from(parallelism.max(1));
    if continuous {
        stable_hash(name) % p == u64::from(subtask)
    } else {
        index as u64 % p == u64::from(subtask)
    }
}

/// Finds, for each column of `planned`, its index in `file_schema`. A missing column or one of
/// another type is an error naming the file, the column and both types.
pub fn match_columns(file: &str, file_schema: &Schema, planned: &Schema) -> Result<Vec<usize>> {
    planned
        .fields()
        .iter()
        .map(|f| match file_schema.index_of(f.name()) {
            Err(_) => Err(Error::input(format!(
                "file {file} has no column '{}' (the planned schema has it as {})",
                f.name(),
                f.data_type()
            ))),
            Ok(i) => {
                let ft = file_schema.field(i).data_type();
                if ft == f.data_type() {
                    Ok(i)
                } else {
                    Err(Error::input(format!(
                        "column '{}' of file {file} has type {ft}, but the planned schema has {}",
                        f.name(),
                        f.data_type()
                    )))
                }
            }
        })
        .collect()
}

/// Builds a batch of `planned` from the columns of `batch` at `indices`. An error (a null in a
/// column the plan says is not nullable) names the file.
pub fn conform(
    file: &str,
    batch: &RecordBatch,
    indices: &[usize],
    planned: &SchemaRef,
) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = indices.iter().map(|i| batch.column(*i).clone()).collect();
    RecordBatch::try_new(planned.clone(), cols).map_err(|e| {
        Error::input(format!(
            "data of file {file} does not fit the planned schema"
        ))
        .with_source(e)
    })
}

/// A row a reader could not decode.
#[derive(Debug)]
pub struct BadRow {
    /// What is wrong with it.
    pub error: Error,
    /// Where it is in the file (`line 17`).
    pub position: String,
    /// The raw row (a line of text).
    pub raw: Option<Vec<u8>>,
}

/// What one [`FileReader::next_chunk`] produced.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Rows decoded (at most the batch size), if any.
    pub batch: Option<RecordBatch>,
    /// Rows that could not be decoded.
    pub bad_rows: Vec<BadRow>,
    /// Bytes of the file consumed by this chunk (for progress).
    pub bytes: u64,
}

/// Reads one open file in chunks. Runs on a blocking thread.
pub trait FileReader: Send {
    /// Reads the next chunk, or `None` at the end of the file. An error is a problem with the whole
    /// file (unreadable, truncated, schema mismatch); the rest of the file is skipped.
    fn next_chunk(&mut self) -> Result<Option<Chunk>>;

    /// Where the reader stands between two chunks: everything before it has been returned. Text
    /// formats give the byte offset and line number of the start of the first record not yet
    /// returned; Parquet gives an estimate of the bytes consumed (it resumes by row count).
    fn position(&self) -> ReadPosition;
}

/// A reader's place in its file, between two chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPosition {
    /// Byte offset (text formats) or estimated bytes consumed (Parquet).
    pub offset: u64,
    /// Lines consumed (text formats; 0 for Parquet).
    pub line: u64,
}

/// How far a source got in one file: the payload of its `file:<path>` union entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Rows emitted from the file so far.
    pub rows: u64,
    /// Rows reported bad (dead letters) so far.
    #[serde(default)]
    pub bad: u64,
    /// Where to resume reading.
    #[serde(flatten)]
    pub at: ReadPosition,
    /// Whether the file has been read to its end (or failed as a whole).
    #[serde(default)]
    pub done: bool,
}

impl FilePosition {
    /// Whether `self` is at least as far as `other` (positions only grow).
    fn ahead_of(&self, other: &FilePosition) -> bool {
        (self.done, self.rows + self.bad, self.at.offset)
            >= (other.done, other.rows + other.bad, other.at.offset)
    }
}

/// The key of a file source's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PositionKey {
    /// The position in this file.
    File(String),
}

/// Reads the positions of a restored state, keeping the furthest position per file.
pub(crate) fn restored_positions(
    state: &weir_runtime::StateSnapshot,
) -> Result<HashMap<String, FilePosition>> {
    let mut out: HashMap<String, FilePosition> = HashMap::new();
    for entry in state.unions::<PositionKey>() {
        let (PositionKey::File(file), bytes) = entry?;
        let file = file.as_str();
        let pos: FilePosition = serde_json::from_slice(bytes).map_err(|e| {
            Error::io(format!("checkpoint state of file {file} is corrupt")).with_source(e)
        })?;
        match out.get(file) {
            Some(old) if old.ahead_of(&pos) => {}
            _ => {
                out.insert(file.to_string(), pos);
            }
        }
    }
    Ok(out)
}

/// `n` with thousands separators (`12,345`), for log lines.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A file format: opens a [`FileReader`] for a file, producing batches of the planned schema.
pub trait FileFormat: Send + Sync + 'static {
    /// The format's name, for messages (`parquet`).
    fn name(&self) -> &'static str;
    /// Opens `file` (may read a footer or header), at `start` when resuming from a checkpoint
    /// (the reader then continues with the first row not yet emitted). An error is a problem with
    /// the whole file.
    fn open(
        &self,
        file: &ListedFile,
        schema: &SchemaRef,
        batch_size: usize,
        start: Option<&FilePosition>,
    ) -> Result<Box<dyn FileReader>>;
}

/// The options every file source has.
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// The path, glob or directory.
    pub path: String,
    /// The extensions of the format, for directory listings.
    pub extensions: &'static [&'static str],
    /// Whether to keep polling for new files.
    pub continuous: bool,
    /// How often to poll in continuous mode.
    pub poll_interval: Duration,
    /// Rows per batch.
    pub batch_size: usize,
}

struct Current {
    file: ListedFile,
    reader: ReaderSlot,
    reported: u64,
    pos: FilePosition,
    /// Chunks read ahead (with the reader's position after each), not yet emitted.
    ahead: VecDeque<(Result<Option<Chunk>>, ReadPosition)>,
}

/// Chunks read ahead, each with the reader's position after it.
type ReadAhead = VecDeque<(Result<Option<Chunk>>, ReadPosition)>;

/// Where the open file's reader is: idle on the task, or reading the next chunks on the CPU pool
/// while the task emits the ones read before (so decoding overlaps with the operators downstream).
enum ReaderSlot {
    Idle(Box<dyn FileReader>),
    Reading(CpuTask<(Box<dyn FileReader>, ReadAhead)>),
}

/// Most chunks one trip to the CPU pool reads ahead: fewer hand-overs between threads per row.
const READ_AHEAD_CHUNKS: usize = 16;
/// ... and at most this many bytes of batches (a chunk of large values counts alone).
const READ_AHEAD_BYTES: usize = 8 << 20;

/// Reads up to [`READ_AHEAD_CHUNKS`] chunks (stopping after the end, an error, or
/// [`READ_AHEAD_BYTES`]), each with the reader's position after it.
fn read_ahead(reader: &mut dyn FileReader) -> ReadAhead {
    let mut out = VecDeque::new();
    let mut bytes = 0;
    while out.len() < READ_AHEAD_CHUNKS && bytes < READ_AHEAD_BYTES {
        let r = reader.next_chunk();
        let stop = !matches!(r, Ok(Some(_)));
        if let Ok(Some(c)) = &r {
            bytes += c.batch.as_ref().map_or(0, |b| b.get_array_memory_size());
        }
        out.push_back((r, reader.position()));
        if stop {
            break;
        }
    }
    out
}

/// [`read_ahead`] on an owned reader, for the CPU pool.
fn read_more(mut reader: Box<dyn FileReader>) -> (Box<dyn FileReader>, ReadAhead) {
    let ahead = read_ahead(reader.as_mut());
    (reader, ahead)
}

/// A running file source: one subtask's share of the files, read one chunk per `next`.
pub struct FileSource {
    opts: FileSourceOptions,
    format: Arc<dyn FileFormat>,
    schema: SchemaRef,
    subtask: u32,
    parallelism: u32,
    queue: VecDeque<ListedFile>,
    seen: HashSet<PathBuf>,
    total: u64,
    current: Option<Current>,
    last_poll: Option<Instant>,
    /// Positions to snapshot: every file this instance started, and restored entries of done files
    /// that it carries on.
    positions: BTreeMap<String, FilePosition>,
    /// Every position of the restored state (empty when not restored).
    restored: HashMap<String, FilePosition>,
    /// What resuming skipped: (files resumed mid-way, files already done, rows skipped).
    resumed: (u64, u64, u64),
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("format", &self.format.name())
            .field("path", &self.opts.path)
            .field("subtask", &self.subtask)
            .finish()
    }
}

/// Longest a `next` call keeps working through chunks that yield no rows before returning.
const MAX_BUSY: Duration = Duration::from_millis(50);

impl FileSource {
    /// A source for subtask `info.subtask`, reading `format` files of `opts`.
    pub fn new(
        opts: FileSourceOptions,
        format: Arc<dyn FileFormat>,
        schema: SchemaRef,
        info: &TaskInfo,
    ) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::config("batch_size must be at least 1"));
        }
        Ok(FileSource {
            opts,
            format,
            schema,
            subtask: info.subtask,
            parallelism: info.parallelism.max(1),
            queue: VecDeque::new(),
            seen: HashSet::new(),
            total: 0,
            current: None,
            last_poll: None,
            positions: BTreeMap::new(),
            restored: HashMap::new(),
            resumed: (0, 0, 0),
        })
    }

    /// Lists the input again and queues this subtask's files not seen before.
    async fn poll(&mut self, ctx: &OperatorContext) -> Result<usize> {
        let path = self.opts.path.clone();
        let ext = self.opts.extensions;
        let files = ctx.spawn_cpu(move || list_files(&path, ext)).await??;
        self.last_poll = Some(Instant::now());
        let mut added = 0;
        for (i, f) in files.into_iter().enumerate() {
            if self.seen.contains(&f.path) {
                continue;
            }
            if !is_mine(
                i,
                &f.name(),
                self.opts.continuous,
                self.subtask,
                self.parallelism,
            ) {
                continue;
            }
            self.seen.insert(f.path.clone());
            self.total += f.size;
            let name = f.name();
            if let Some(pos) = self.restored.get(&name).copied() {
                self.resumed.2 += pos.rows + pos.bad;
                if pos.done {
                    self.resumed.1 += 1;
                    ctx.metrics().add_progress(f.size);
                    continue;
                }
                self.resumed.0 += 1;
                // Carried on by this instance from now on, also before it reaches the file.
                self.positions.insert(name, pos);
            }
            self.queue.push_back(f);
            added += 1;
        }
        ctx.metrics().set_total(self.total);
        Ok(added)
    }

    /// Reports a problem with a whole file: fails the job, or under the dead-letter policy records
    /// one dead letter naming the file and goes on with the next file.
    fn file_failed(
        &mut self,
        ctx: &mut OperatorContext,
        file: &ListedFile,
        reported: u64,
        error: Error,
    ) -> Result<()> {
        ctx.metrics()
            .add_progress(file.size.saturating_sub(reported));
        let pos = self.positions.entry(file.name()).or_default();
        pos.done = true;
        pos.bad += 1;
        ctx.bad_row(error, Some(file.name()), None, None)
    }

    /// Takes over the restored state: the positions of every file, and the done files this
    /// instance carries on (those whose name hash falls to it).
    fn restore(&mut self, state: &weir_runtime::StateSnapshot) -> Result<()> {
        self.restored = restored_positions(state)?;
        let p = u64::from(self.parallelism);
        for (name, pos) in &self.restored {
            if pos.done && stable_hash(name) % p == u64::from(self.subtask) {
                self.positions.insert(name.clone(), *pos);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            let state = state.clone();
            self.restore(&state)?;
        }
        self.poll(ctx).await?;
        if ctx.restored_state().is_some() {
            let (resumed, done, rows) = self.resumed;
            tracing::info!(
                node = %ctx.name(),
                subtask = self.subtask,
                "resumed {resumed} files, skipped {} rows already emitted ({done} files already done)",
                thousands(rows)
            );
        }
        Ok(())
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        let started = Instant::now();
        loop {
            if started.elapsed() > MAX_BUSY {
                return Ok(SourceEvent::Idle(Duration::ZERO));
            }
            let Some(cur) = self.current.take() else {
                if let Some(file) = self.queue.pop_front() {
                    let format = self.format.clone();
                    let schema = self.schema.clone();
                    let bs = self.opts.batch_size;
                    let f = file.clone();
                    let start = self.positions.get(&file.name()).copied();
                    let opened = ctx
                        .spawn_cpu(move || format.open(&f, &schema, bs, start.as_ref()))
                        .await?;
                    match opened {
                        Ok(reader) => {
                            let pos = start.unwrap_or_default();
                            let reported = pos.at.offset.min(file.size);
                            ctx.metrics().add_progress(reported);
                            self.current = Some(Current {
                                file,
                                reader: ReaderSlot::Idle(reader),
                                reported,
                                pos,
                                ahead: VecDeque::new(),
                            })
                        }
                        Err(e) => self.file_failed(ctx, &file, 0, e)?,
                    }
                    continue;
                }
                if !self.opts.continuous {
                    return Ok(SourceEvent::Finished);
                }
                let due = self.last_poll.map_or(Duration::ZERO, |t| {
                    self.opts.poll_interval.saturating_sub(t.elapsed())
                });
                if due > Duration::ZERO {
                    return Ok(SourceEvent::Idle(due.min(Duration::from_millis(100))));
                }
                if self.poll(ctx).await? == 0 {
                    return Ok(SourceEvent::Idle(
                        self.opts.poll_interval.min(Duration::from_millis(100)),
                    ));
                }
                continue;
            };
            let Current {
                file,
                mut reader,
                mut reported,
                mut pos,
                mut ahead,
            } = cur;
            if ahead.is_empty() {
                let task = match reader {
                    ReaderSlot::Idle(r) => ctx.start_cpu(|| read_more(r)),
                    ReaderSlot::Reading(task) => task,
                };
                let (r, a) = task.join().await?;
                ahead = a;
                // More to read: start on the next chunks now, while these are emitted. Positions
                // still advance only as chunks are emitted, so a checkpoint never covers them early.
                reader = if matches!(ahead.back(), Some((Ok(Some(_)), _))) {
                    ReaderSlot::Reading(ctx.start_cpu(|| read_more(r)))
                } else {
                    ReaderSlot::Idle(r)
                };
            }
            let Some((res, at)) = ahead.pop_front() else {
                return Err(Error::internal("a file reader returned nothing"));
            };
            match res {
                Ok(Some(chunk)) => {
                    let bytes = chunk.bytes.min(file.size.saturating_sub(reported));
                    ctx.metrics().add_progress(bytes);
                    reported += bytes;
                    let name = file.name();
                    pos.rows += chunk.batch.as_ref().map_or(0, |b| b.num_rows() as u64);
                    pos.bad += chunk.bad_rows.len() as u64;
                    pos.at = at;
                    self.positions.insert(name.clone(), pos);
                    self.current = Some(Current {
                        file,
                        reader,
                        reported,
                        pos,
                        ahead,
                    });
                    for bad in chunk.bad_rows {
                        ctx.bad_row(bad.error, Some(name.clone()), Some(bad.position), bad.raw)?;
                    }
                    if let Some(b) = chunk.batch
                        && b.num_rows() > 0
                    {
                        return Ok(SourceEvent::Batch(b));
                    }
                }
                Ok(None) => {
                    ctx.metrics()
                        .add_progress(file.size.saturating_sub(reported));
                    pos.at = at;
                    pos.done = true;
                    self.positions.insert(file.name(), pos);
                }
                Err(e) => self.file_failed(ctx, &file, reported, e)?,
            }
        }
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<weir_runtime::StateSnapshot> {
        let mut snap = weir_runtime::StateSnapshot::new();
        for (name, pos) in &self.positions {
            let bytes = serde_json::to_vec(pos)
                .map_err(|e| Error::internal("cannot encode source state").with_source(e))?;
            snap.push_union(&PositionKey::File(name.clone()), bytes)?;
        }
        Ok(snap)
    }

    async fn close(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        self.current = None;
        self.queue.clear();
        Ok(())
    }
}

/// Reads lines of text from a buffered reader and keeps count, for the line-oriented formats.
pub(crate) struct LineReader<R> {
    inner: R,
    /// Lines read so far (the number of the last line read).
    pub(crate) line: u64,
    /// Bytes read so far (the offset of the next line).
    pub(crate) offset: u64,
    pub(crate) eof: bool,
}

impl LineReader<std::io::BufReader<std::fs::File>> {
    /// Continues at `at` (a position this reader's file had between two chunks), if it is ahead:
    /// seeks to the byte offset and takes the line count over. `file` names the file in errors;
    /// a file shorter than the offset has changed since the checkpoint, which is an error.
    pub(crate) fn resume(&mut self, at: ReadPosition, file: &str) -> Result<()> {
        use std::io::Seek;
        if at.offset <= self.offset {
            return Ok(());
        }
        let len = self
            .inner
            .get_ref()
            .metadata()
            .map_err(|e| Error::io(format!("cannot read file {file}")).with_source(e))?
            .len();
        if len < at.offset {
            return Err(Error::input(format!(
                "file {file} is {len} bytes, shorter than the {} bytes already read before the \
                 checkpoint: input files must not change once read",
                at.offset
            )));
        }
        self.inner
            .seek(std::io::SeekFrom::Start(at.offset))
            .map_err(|e| Error::io(format!("cannot seek in file {file}")).with_source(e))?;
        self.offset = at.offset;
        self.line = at.line;
        Ok(())
    }
}

impl<R: std::io::BufRead> LineReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        LineReader {
            inner,
            line: 0,
            offset: 0,
            eof: false,
        }
    }

    /// The position after the last line read.
    pub(crate) fn position(&self) -> ReadPosition {
        ReadPosition {
            offset: self.offset,
            line: self.line,
        }
    }

    /// Appends the next line (with its newline, if any) to `buf`; returns the bytes read, 0 at end.
    pub(crate) fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let n = self.inner.read_until(b'\n', buf)?;
        if n == 0 {
            self.eof = true;
        } else {
            self.line += 1;
            self.offset += n as u64;
        }
        Ok(n)
    }
}

/// Most bytes of text gathered into one chunk, whatever the batch size.
pub(crate) const MAX_CHUNK_BYTES: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn lists_files_globs_and_directories() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir").with_source(e))?;
        for name in [
            "b.csv",
            "a.csv",
            "c.txt",
            ".hidden.csv",
            ".x.csv.inprogress",
        ] {
            std::fs::write(dir.path().join(name), "x\n")
                .map_err(|e| Error::io("write").with_source(e))?;
        }
        let d = dir.path().display().to_string();
        let names = |v: Vec<ListedFile>| {
            v.iter()
                .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(list_files(&d, &["csv"])?), ["a.csv", "b.csv"]);
        assert_eq!(
            names(list_files(&format!("{d}/*.txt"), &["csv"])?),
            ["c.txt"]
        );
        assert_eq!(
            names(list_files(&format!("{d}/b.csv"), &["csv"])?),
            ["b.csv"]
        );
        let missing = format!("{d}/nope");
        let e = list_files(&missing, &["csv"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&missing), "{e}");
        assert!(first_file(&format!("{d}/*.parquet"), &["parquet"]).is_err());
        Ok(())
    }

    #[test]
    fn splits_by_index_or_hash() {
        let mine: Vec<usize> = (0..10).filter(|i| is_mine(*i, "x", false, 1, 4)).collect();
        assert_eq!(mine, [1, 5, 9]);
        let owners: Vec<u32> = (0..4)
            .filter(|s| is_mine(0, "data/file-7.csv", true, *s, 4))
            .collect();
        assert_eq!(owners.len(), 1);
    }

    #[test]
    fn schema_mismatch_names_file_column_and_types() {
        let planned = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]);
        let other = Schema::new(vec![
            Field::new("b", DataType::Utf8, true),
            Field::new("a", DataType::Float64, true),
        ]);
        let e = match_columns("x.parquet", &other, &planned)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("x.parquet")
                && e.contains("'a'")
                && e.contains("Float64")
                && e.contains("Int64"),
            "{e}"
        );
        let missing = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        let e = match_columns("y.parquet", &missing, &planned)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("y.parquet") && e.contains("'b'"), "{e}");
        let reordered = Schema::new(vec![
            Field::new("b", DataType::Utf8, true),
            Field::new("a", DataType::Int64, true),
        ]);
        assert_eq!(
            match_columns("z", &reordered, &planned).ok(),
            Some(vec![1, 0])
        );
    }
}
