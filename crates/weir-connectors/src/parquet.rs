//! Parquet: a source reading Parquet files (schema from the first file's footer) and a sink writing
//! rolling Parquet files with `ArrowWriter`.

use crate::config::{de_opt_duration, de_size, default_poll_interval};
use crate::file_source::{
    Chunk, FileFormat, FilePosition, FileReader, FileSource, FileSourceOptions, ListedFile,
    ReadPosition, conform, first_file, match_columns,
};
use crate::sink_util::{create_file, ensure_dir, inprogress_path, publish, with_schema};
use crate::two_phase::{Layout, RemoteOut, TwoPhase, blocking};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext, Source, TaskInfo};
use weir_types::{Barrier, CheckpointId, Error, Result};

const EXTENSIONS: &[&str] = &["parquet", "parq", "pq"];

fn default_batch_size() -> usize {
    8192
}

/// Reads Parquet files.
///
/// ```yaml
/// source: { type: parquet, path: data/events/, continuous: true, poll_interval: 5s }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceSpec {
    /// One file, a glob (`data/*.parquet`) or a directory (all its `.parquet` files, sorted by
    /// name). Required.
    pub path: String,
    /// Keep polling the directory or glob for files that appear later (default `false`: read what is
    /// there and finish).
    #[serde(default)]
    pub continuous: bool,
    /// How often to list the input again in continuous mode (default `"1s"`).
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "crate::config::de_duration",
        serialize_with = "crate::config::ser_duration"
    )]
    pub poll_interval: Duration,
    /// Rows per batch (default 8192).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

impl ParquetSourceSpec {
    /// A spec reading `path` with every other option at its default.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSourceSpec {
            path: path.into(),
            continuous: false,
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
        }
    }

    /// Plan time: lists the input and reads the schema from the first file's footer. A missing path
    /// or one without Parquet files is an error naming it.
    pub fn schema(&self) -> Result<SchemaRef> {
        let first = first_file(&self.path, EXTENSIONS)?;
        let builder = open_builder(&first)?;
        Ok(builder.schema().clone())
    }

    /// One running instance for subtask `info.subtask` of `info.parallelism`.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let opts = FileSourceOptions {
            path: self.path.clone(),
            extensions: EXTENSIONS,
            continuous: self.continuous,
            poll_interval: self.poll_interval,
            batch_size: self.batch_size,
        };
        Ok(Box::new(FileSource::new(
            opts,
            Arc::new(ParquetFormat),
            schema,
            info,
        )?))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let mode = crate::file_source::describe_mode(self.continuous, self.poll_interval);
        format!(
            "parquet source {} ({mode}, batches of {} rows)",
            self.path, self.batch_size
        )
    }
}

impl kind::Spec for ParquetSourceSpec {
    fn describe(&self) -> String {
        ParquetSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for ParquetSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        ParquetSourceSpec::schema(self)
    }

    /// Its running source reads only the columns it is created with.
    fn projects(&self) -> bool {
        true
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        ParquetSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

fn open_builder(file: &ListedFile) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let f = std::fs::File::open(&file.path).map_err(|e| {
        Error::io(format!("cannot open parquet file {}", file.name())).with_source(e)
    })?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| {
        Error::input(format!("cannot read parquet file {}", file.name())).with_source(e)
    })
}

struct ParquetFormat;

impl FileFormat for ParquetFormat {
    fn name(&self) -> &'static str {
        "parquet"
    }

    fn open(
        &self,
        file: &ListedFile,
        schema: &SchemaRef,
        batch_size: usize,
        start: Option<&FilePosition>,
    ) -> Result<Box<dyn FileReader>> {
        let name = file.name();
        let mut builder = open_builder(file)?;
        let indices = match_columns(&name, builder.schema(), schema)?;
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        // The projected batch keeps the file's column order; map each planned column to its place.
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let positions: Vec<usize> = indices
            .iter()
            .map(|i| sorted.binary_search(i).unwrap_or_default())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
        // Resuming: skip whole row groups already emitted from the footer's row counts, then the
        // rows of the first group left.
        let skip = start.map_or(0, |s| s.rows);
        if skip > 0 {
            let mut before = 0u64;
            let mut groups = Vec::new();
            let mut offset = 0u64;
            for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
                let rows = u64::try_from(rg.num_rows()).unwrap_or(0);
                if groups.is_empty() && before + rows <= skip {
                    before += rows;
                    continue;
                }
                if groups.is_empty() {
                    offset = skip - before;
                }
                groups.push(i);
            }
            builder = builder.with_row_groups(groups);
            if offset > 0 {
                let offset = usize::try_from(offset).map_err(|e| {
                    Error::input(format!("cannot resume parquet file {name}")).with_source(e)
                })?;
                builder = builder.with_offset(offset);
            }
        }
        let reader = builder
            .with_batch_size(batch_size)
            .with_projection(mask)
            .build()
            .map_err(|e| Error::input(format!("cannot read parquet file {name}")).with_source(e))?;
        Ok(Box::new(ParquetReader {
            name,
            reader,
            positions,
            schema: schema.clone(),
            size: file.size,
            total_rows,
            rows: skip,
        }))
    }
}

struct ParquetReader {
    name: String,
    reader: ParquetRecordBatchReader,
    positions: Vec<usize>,
    schema: SchemaRef,
    size: u64,
    total_rows: u64,
    /// Rows read so far (including those skipped when resuming).
    rows: u64,
}

impl FileReader for ParquetReader {
    fn position(&self) -> ReadPosition {
        let offset = if self.total_rows == 0 {
            0
        } else {
            (u128::from(self.size) * u128::from(self.rows.min(self.total_rows))
                / u128::from(self.total_rows)) as u64
        };
        ReadPosition { offset, line: 0 }
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        match self.reader.next() {
            None => Ok(None),
            Some(Err(e)) => {
                Err(Error::input(format!("cannot read parquet file {}", self.name)).with_source(e))
            }
            Some(Ok(batch)) => {
                let rows = batch.num_rows() as u64;
                self.rows += rows;
                let bytes = if self.total_rows == 0 {
                    0
                } else {
                    (u128::from(self.size) * u128::from(rows) / u128::from(self.total_rows)) as u64
                };
                let batch = conform(&self.name, &batch, &self.positions, &self.schema)?;
                Ok(Some(Chunk {
                    batch: Some(batch),
                    bad_rows: Vec::new(),
                    bytes,
                }))
            }
        }
    }
}

/// Parquet compression codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard at its default level (the default).
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// LZ4 (raw).
    Lz4,
    /// Gzip at its default level.
    Gzip,
    /// No compression.
    None,
}

impl Compression {
    fn codec(self) -> parquet::basic::Compression {
        use parquet::basic::Compression as C;
        match self {
            Compression::Zstd => C::ZSTD(Default::default()),
            Compression::Snappy => C::SNAPPY,
            Compression::Lz4 => C::LZ4_RAW,
            Compression::Gzip => C::GZIP(Default::default()),
            Compression::None => C::UNCOMPRESSED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

fn default_max_file_size() -> u64 {
    128 << 20
}

/// Writes Parquet files into a directory: each subtask writes `part-{subtask:03}-{seq:05}.parquet`,
/// first as a hidden `.part-....parquet.inprogress` file that is renamed when it is closed (rolled
/// over, or at the end of the input). Files with the same names from an earlier run are replaced.
/// A subtask that receives no rows writes no file.
///
/// When the job takes checkpoints the output is exactly-once (two-phase commit): files are closed
/// at every checkpoint barrier (and when rolled over) into hidden staged files, and published as
/// `part-{subtask:03}-{checkpoint:06}-{seq:03}-{run}.parquet` only when that checkpoint completes; a
/// restored job publishes what the crashed one had staged and removes its leftovers. See
/// `two_phase` for the names and the state.
///
/// ```yaml
/// sink: { type: parquet, path: out/, max_file_size: 256MiB, rollover_interval: 60s }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// The output directory (created if missing), or an object-store prefix (`s3://bucket/out/`).
    /// Required.
    pub path: String,
    /// Roll over to a new file once the current one reaches this size (default `"128MiB"`).
    #[serde(default = "default_max_file_size", deserialize_with = "de_size")]
    pub max_file_size: u64,
    /// Also roll over once a file has been open this long, even when no rows arrive (default none:
    /// only size and the end of input close a file).
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "crate::config::ser_opt_duration"
    )]
    pub rollover_interval: Option<Duration>,
    /// The compression codec: `zstd` (default), `snappy`, `lz4`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Object-store options for an `s3://` path (`aws_endpoint`, `aws_access_key_id`, ...), which
    /// win over the environment (default none).
    #[serde(default)]
    pub storage: weir_store::StorageOptions,
}

impl ParquetSinkSpec {
    /// A spec writing into `path` with every other option at its default.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSinkSpec {
            path: path.into(),
            max_file_size: default_max_file_size(),
            rollover_interval: None,
            compression: Compression::default(),
            storage: weir_store::StorageOptions::default(),
        }
    }

    /// Where it publishes, for the checks `weir run` makes before a run.
    pub fn output_at(&self) -> crate::OutputAt {
        crate::OutputAt {
            path: PathBuf::from(&self.path),
            one_file: false,
            storage: self.storage.clone(),
        }
    }

    /// One running instance for subtask `info.subtask`, writing batches of schema `input`.
    pub fn create(&self, info: &TaskInfo, input: SchemaRef) -> Result<Box<dyn Operator>> {
        if self.max_file_size == 0 {
            return Err(Error::config(
                "max_file_size of the parquet sink must be above 0",
            ));
        }
        let props = WriterProperties::builder()
            .set_compression(self.compression.codec())
            .build();
        let (dir, remote) = crate::two_phase::output_location(&self.path, &self.storage, info)?;
        Ok(Box::new(ParquetSink {
            info: info.clone(),
            tp: None,
            remote,
            name: info.node.clone(),
            dir,
            subtask: info.subtask,
            seq: 0,
            schema: input,
            props,
            max_file_size: self.max_file_size,
            rollover: self.rollover_interval,
            open: None,
            closing: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let roll = match self.rollover_interval {
            Some(d) => format!(" or every {}", humantime::format_duration(d)),
            None => String::new(),
        };
        format!(
            "parquet sink {} ({}, files rolled at {}{roll})",
            self.path,
            self.compression.name(),
            bytesize::ByteSize::b(self.max_file_size).display().iec()
        )
    }
}

impl kind::Spec for ParquetSinkSpec {
    fn describe(&self) -> String {
        ParquetSinkSpec::describe(self)
    }
}

impl kind::SinkSpec for ParquetSinkSpec {
    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        ParquetSinkSpec::create(self, ctx.info(), ctx.input()?.clone())
    }
}

struct OpenFile {
    writer: ArrowWriter<std::fs::File>,
    tmp: PathBuf,
    /// Where it is published when closed; `None` under checkpoints (it is staged instead).
    path: Option<PathBuf>,
    opened: Instant,
}

impl OpenFile {
    fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Flushes and writes the footer; publishes the file under its final name, or, under
    /// checkpoints, returns the closed in-progress file to be staged.
    fn close(self) -> Result<Option<PathBuf>> {
        let OpenFile {
            writer, tmp, path, ..
        } = self;
        writer.close().map_err(|e| {
            Error::io(format!("cannot finish parquet file {}", tmp.display())).with_source(e)
        })?;
        match path {
            Some(path) => publish(&tmp, &path).map(|()| None),
            None => Ok(Some(tmp)),
        }
    }
}

/// Most bytes buffered in memory for one row group before it is written out.
const MAX_ROW_GROUP_BYTES: usize = 64 << 20;

struct ParquetSink {
    info: TaskInfo,
    /// An `s3://` output (then `dir` is the local spool directory).
    remote: Option<RemoteOut>,
    /// The two-phase bookkeeping, when the job takes checkpoints (set in `open`).
    tp: Option<TwoPhase>,
    name: String,
    dir: PathBuf,
    subtask: u32,
    seq: u32,
    schema: SchemaRef,
    props: WriterProperties,
    max_file_size: u64,
    rollover: Option<Duration>,
    open: Option<OpenFile>,
    /// A file being closed on a blocking thread (kept here so that a dropped `poll_pending` loses
    /// nothing).
    closing: Option<tokio::task::JoinHandle<Result<Option<PathBuf>>>>,
}

impl ParquetSink {
    fn new_file(&mut self) -> Result<OpenFile> {
        ensure_dir(&self.dir)?;
        let (tmp, path) = match &mut self.tp {
            Some(tp) => (tp.new_tmp(), None),
            None => {
                let path = self
                    .dir
                    .join(format!("part-{:03}-{:05}.parquet", self.subtask, self.seq));
                self.seq += 1;
                (inprogress_path(&path), Some(path))
            }
        };
        let file = create_file(&tmp)?;
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))
            .map_err(|e| {
                Error::io(format!("cannot write parquet file {}", tmp.display())).with_source(e)
            })?;
        Ok(OpenFile {
            writer,
            tmp,
            path,
            opened: Instant::now(),
        })
    }

    /// Waits for a file being closed in the background.
    async fn await_closing(&mut self) -> Result<()> {
        if let Some(h) = &mut self.closing {
            let res = h.await;
            self.closing = None;
            let closed = res.map_err(|e| {
                Error::internal("closing a parquet file panicked")
                    .with_source(e)
                    .in_operator(self.name.clone())
            })??;
            if let (Some(tmp), Some(tp)) = (closed, &mut self.tp) {
                tp.closed(tmp);
            }
        }
        Ok(())
    }

    /// Closes the open file on a blocking thread and waits for it.
    async fn roll(&mut self) -> Result<()> {
        self.await_closing().await?;
        if let Some(f) = self.open.take() {
            self.closing = Some(tokio::task::spawn_blocking(move || f.close()));
        }
        self.await_closing().await
    }

    fn rollover_due(&self) -> bool {
        match (&self.open, self.rollover) {
            (Some(f), Some(iv)) => f.opened.elapsed() >= iv,
            _ => false,
        }
    }
}

#[async_trait]
impl Operator for ParquetSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        self.await_closing().await?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.rollover_due() {
            self.roll().await?;
        }
        let batch = with_schema(batch, &self.schema, &self.name)?;
        let mut file = match self.open.take() {
            Some(f) => f,
            None => self.new_file()?,
        };
        let flush_at = (self.max_file_size as usize).min(MAX_ROW_GROUP_BYTES);
        let (file, res) = ctx
            .spawn_cpu(move || {
                let res = file.writer.write(&batch).and_then(|_| {
                    if file.writer.in_progress_size() >= flush_at {
                        file.writer.flush()
                    } else {
                        Ok(())
                    }
                });
                (file, res)
            })
            .await?;
        if let Err(e) = res {
            return Err(
                Error::io(format!("cannot write parquet file {}", file.tmp.display()))
                    .with_source(e),
            );
        }
        let full = file.size() >= self.max_file_size;
        self.open = Some(file);
        if full {
            self.roll().await?;
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.closing.is_some() || (self.rollover.is_some() && self.open.is_some())
    }

    async fn poll_pending(&mut self, _ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        if self.closing.is_none()
            && let (Some(f), Some(iv)) = (&self.open, self.rollover)
        {
            tokio::time::sleep_until((f.opened + iv).into()).await;
            // From here on nothing is lost if this future is dropped: the close runs on its own
            // and its handle stays in `self.closing`.
            if let Some(f) = self.open.take() {
                self.closing = Some(tokio::task::spawn_blocking(move || f.close()));
            }
        }
        self.await_closing().await
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if !ctx.checkpointing() && self.remote.is_none() {
            return Ok(());
        }
        let layout = Layout::Parts {
            dir: self.dir.clone(),
            ext: "parquet",
        };
        // An object store is always written through staging: without checkpoints, everything is
        // staged and published when the input ends.
        self.tp = Some(TwoPhase::open_remote(layout, &self.info, self.remote.as_ref(), ctx).await?);
        if let Some(state) = ctx.restored_state().cloned() {
            let published = blocking(&mut self.tp, ctx, move |tp| tp.restore(&state)).await?;
            tracing::info!(
                node = %self.name,
                subtask = self.subtask,
                "restored: published {} parquet files staged before the crash",
                published.unwrap_or(0)
            );
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        barrier: &Barrier,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<weir_runtime::StateSnapshot> {
        self.await_closing().await?;
        if self.tp.is_none() {
            return Ok(weir_runtime::StateSnapshot::new());
        }
        // Pre-commit: close the open file and stage everything closed since the last barrier.
        self.roll().await?;
        let id = barrier.checkpoint_id;
        let snap = blocking(&mut self.tp, ctx, move |tp| {
            tp.stage(id)?;
            tp.snapshot(id)
        })
        .await?;
        Ok(snap.unwrap_or_default())
    }

    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        blocking(&mut self.tp, ctx, move |tp| tp.publish_upto(id)).await?;
        Ok(())
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        // Under checkpoints this only closes the file; the final checkpoint stages and publishes.
        self.roll().await?;
        if self.remote.is_some() && !ctx.checkpointing() {
            blocking(&mut self.tp, ctx, |tp| {
                tp.stage(0)?;
                tp.publish_upto(0)
            })
            .await?;
        }
        Ok(())
    }
}

/// Reads every row of the Parquet files of `path` (a file, glob or directory) into memory; for tests
/// and small outputs.
pub fn read_all(path: &str) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for f in crate::file_source::list_files(path, EXTENSIONS)? {
        let reader = open_builder(&f)?.build().map_err(|e| {
            Error::input(format!("cannot read parquet file {}", f.name())).with_source(e)
        })?;
        for b in reader {
            out.push(b.map_err(|e| {
                Error::input(format!("cannot read parquet file {}", f.name())).with_source(e)
            })?);
        }
    }
    Ok(out)
}
