//! JSON Lines: a source reading one JSON object per line (schema declared, or inferred from the
//! first lines of the first file) and a sink writing one JSON object per row.
//!
//! The source decodes a whole batch of lines at once; when that fails it decodes the batch line by
//! line, so that only the bad lines are reported (with their line numbers) and the others still
//! come out.

use crate::config::{ColumnSpec, default_poll_interval};
use crate::file_source::{
    BadRow, Chunk, FileFormat, FilePosition, FileReader, FileSource, FileSourceOptions, LineReader,
    ListedFile, MAX_CHUNK_BYTES, ReadPosition,
};
use crate::sink_util::{
    binary_as_text, create_file, ensure_dir, inprogress_path, publish, text_schema, with_schema,
};
use crate::two_phase::{Layout, TwoPhase, blocking};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext, Source, TaskInfo};
use weir_types::{Barrier, CheckpointId, Error, Result};

const EXTENSIONS: &[&str] = &["jsonl", "ndjson", "json"];

/// Lines read from the first file to infer a schema.
const INFER_LINES: usize = 1000;

fn default_batch_size() -> usize {
    8192
}

/// Reads JSON Lines files: one JSON object per line; blank lines are skipped.
///
/// ```yaml
/// source: { type: jsonl, path: "logs/*.jsonl", schema: [{name: id, type: int64}, {name: msg, type: utf8}] }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceSpec {
    /// One file, a glob (`logs/*.jsonl`) or a directory (all its `.jsonl`, `.ndjson` and `.json`
    /// files, sorted by name). Required.
    pub path: String,
    /// Keep polling for files that appear later (default `false`).
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
    /// The declared schema (default none: inferred from the first 1000 lines of the first file).
    /// Fields of a line not in the schema are ignored; missing ones are null.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
}

impl JsonlSourceSpec {
    /// A spec reading `path` with every other option at its default.
    pub fn new(path: impl Into<String>) -> Self {
        JsonlSourceSpec {
            path: path.into(),
            continuous: false,
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            schema: None,
        }
    }

    /// Plan time: the declared schema, or the one inferred from the first lines of the first file.
    /// A missing path is an error naming it (also with a declared schema, unless continuous).
    pub fn schema(&self) -> Result<SchemaRef> {
        crate::file_source::declared_or_inferred(
            &self.path,
            EXTENSIONS,
            self.continuous,
            self.schema.as_deref(),
            infer_schema,
        )
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
            Arc::new(JsonlFormat),
            schema,
            info,
        )?))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let mode = crate::file_source::describe_mode(self.continuous, self.poll_interval);
        let schema = crate::file_source::describe_schema(self.schema.is_some());
        format!(
            "jsonl source {} ({mode}, {schema}, batches of {} rows)",
            self.path, self.batch_size
        )
    }
}

impl kind::Spec for JsonlSourceSpec {
    fn describe(&self) -> String {
        JsonlSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for JsonlSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        JsonlSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        JsonlSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

/// Infers a schema from the first lines of `file`. Lines that are not UTF-8 or not a JSON object
/// are skipped (the source reports them as bad rows when it reads them). A column whose values
/// have conflicting types in the sample (a number in some lines, a string in others) is an error
/// naming the column, the types and their lines, asking for a declared schema: widening it to
/// text would make every other row a bad row.
fn infer_schema(file: &ListedFile) -> Result<SchemaRef> {
    let name = file.name();
    let f = std::fs::File::open(&file.path)
        .map_err(|e| Error::io(format!("cannot open json file {name}")).with_source(e))?;
    let mut values = Vec::new();
    let mut types = TypesSeen::default();
    for (i, line) in BufReader::new(f).split(b'\n').take(INFER_LINES).enumerate() {
        let line =
            line.map_err(|e| Error::io(format!("cannot read json file {name}")).with_source(e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(v @ serde_json::Value::Object(_)) =
            serde_json::from_slice::<serde_json::Value>(&line)
        {
            types.record("", &v, i as u64 + 1);
            values.push(v);
        }
    }
    if values.is_empty() {
        return Err(Error::config(format!(
            "cannot infer the schema of file {name}: none of its first {INFER_LINES} lines is a json object; declare a schema"
        )));
    }
    if let Some(conflict) = types.conflict() {
        return Err(Error::config(format!(
            "cannot infer the schema of file {name}: {conflict} in its first {INFER_LINES} lines; \
             declare the column's type with `schema:` (e.g. `schema: [{{name: ..., type: utf8}}]`), \
             and rows that do not fit it become bad rows"
        )));
    }
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.into_iter().map(Ok))
        .map_err(|e| {
        Error::config(format!("cannot infer the schema of file {name}")).with_source(e)
    })?;
    Ok(Arc::new(schema))
}

/// The JSON types each column (`a`, `a.b` for nested objects, `a[]` for list elements) had in an
/// inference sample, with the first lines of each.
#[derive(Default)]
struct TypesSeen {
    columns: std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, Vec<u64>>>,
}

impl TypesSeen {
    fn record(&mut self, path: &str, v: &serde_json::Value, line: u64) {
        use serde_json::Value;
        let kind = match v {
            Value::Null => return,
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(items) => {
                for item in items {
                    self.record(&format!("{path}[]"), item, line);
                }
                "list"
            }
            Value::Object(m) => {
                for (k, item) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.record(&p, item, line);
                }
                "object"
            }
        };
        if path.is_empty() {
            return;
        }
        let lines = self
            .columns
            .entry(path.to_string())
            .or_default()
            .entry(kind)
            .or_default();
        if lines.len() < 3 {
            lines.push(line);
        }
    }

    /// The first column with conflicting types, described; integers and numbers together widen
    /// to floats, which is no conflict.
    fn conflict(&self) -> Option<String> {
        for (col, kinds) in &self.columns {
            let real: Vec<(&&str, &Vec<u64>)> = kinds
                .iter()
                .filter(|(k, _)| !(**k == "integer" && kinds.contains_key("number")))
                .collect();
            if real.len() > 1 {
                let seen: Vec<String> = real
                    .iter()
                    .map(|(k, lines)| {
                        let l: Vec<String> = lines.iter().map(u64::to_string).collect();
                        let word = if lines.len() > 1 { "lines" } else { "line" };
                        format!("{k} ({word} {})", l.join(", "))
                    })
                    .collect();
                return Some(format!(
                    "column '{col}' has conflicting types: {}",
                    seen.join(", ")
                ));
            }
        }
        None
    }
}

struct JsonlFormat;

impl FileFormat for JsonlFormat {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn open(
        &self,
        file: &ListedFile,
        schema: &SchemaRef,
        batch_size: usize,
        start: Option<&FilePosition>,
    ) -> Result<Box<dyn FileReader>> {
        let f = std::fs::File::open(&file.path).map_err(|e| {
            Error::io(format!("cannot open json file {}", file.name())).with_source(e)
        })?;
        let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, f));
        if let Some(start) = start {
            lines.resume(start.at, &file.name())?;
        }
        Ok(Box::new(JsonlReader {
            name: file.name(),
            lines,
            schema: schema.clone(),
            batch_size,
        }))
    }
}

struct JsonlReader {
    name: String,
    lines: LineReader<BufReader<std::fs::File>>,
    schema: SchemaRef,
    batch_size: usize,
}

/// Decodes `buf` (whole lines) into one batch.
fn decode(
    schema: &SchemaRef,
    batch_size: usize,
    buf: &[u8],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_size.max(1))
        .build_decoder()?;
    let mut batches = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let n = decoder.decode(&buf[off..])?;
        off += n;
        if n == 0 || (off < buf.len() && decoder.len() >= batch_size) {
            if let Some(b) = decoder.flush()? {
                batches.push(b);
            } else if n == 0 {
                break;
            }
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema.clone())),
        1 => Ok(batches.remove(0)),
        _ => arrow::compute::concat_batches(schema, &batches),
    }
}

impl FileReader for JsonlReader {
    fn position(&self) -> ReadPosition {
        self.lines.position()
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.lines.eof {
            return Ok(None);
        }
        let mut buf = Vec::new();
        // (line number, start, end) of each non-blank line in `buf`.
        let mut spans: Vec<(u64, usize, usize)> = Vec::new();
        let mut bytes = 0u64;
        while spans.len() < self.batch_size && buf.len() < MAX_CHUNK_BYTES {
            let start = buf.len();
            let n = self.lines.read_line(&mut buf).map_err(|e| {
                Error::io(format!("cannot read json file {}", self.name)).with_source(e)
            })?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            if buf[start..].iter().all(u8::is_ascii_whitespace) {
                buf.truncate(start);
                continue;
            }
            if buf.last() != Some(&b'\n') {
                buf.push(b'\n');
            }
            spans.push((self.lines.line, start, buf.len()));
        }
        if spans.is_empty() {
            return Ok(Some(Chunk {
                batch: None,
                bad_rows: Vec::new(),
                bytes,
            }));
        }
        if let Ok(batch) = decode(&self.schema, self.batch_size, &buf) {
            return Ok(Some(Chunk {
                batch: Some(batch),
                bad_rows: Vec::new(),
                bytes,
            }));
        }
        // Find the bad lines: decode one line at a time.
        let mut good = Vec::new();
        let mut bad_rows = Vec::new();
        for (line, start, end) in spans {
            let text = &buf[start..end];
            match decode(&self.schema, 1, text) {
                Ok(b) => good.push(b),
                Err(e) => {
                    let raw = text.strip_suffix(b"\n").unwrap_or(text);
                    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                    let error = if let Err(u) = std::str::from_utf8(raw) {
                        Error::input(format!(
                            "line is not valid UTF-8 (invalid byte at offset {})",
                            u.valid_up_to()
                        ))
                    } else {
                        match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
                            Err(je) => Error::input(format!("invalid json: {je}")).with_source(je),
                            Ok(_) => {
                                Error::input(format!("json line does not fit the schema: {e}"))
                                    .with_source(e)
                            }
                        }
                    };
                    bad_rows.push(BadRow {
                        error,
                        position: format!("line {line}"),
                        raw: Some(raw.to_vec()),
                    });
                }
            }
        }
        let batch = if good.is_empty() {
            None
        } else {
            Some(arrow::compute::concat_batches(&self.schema, &good)?)
        };
        Ok(Some(Chunk {
            batch,
            bad_rows,
            bytes,
        }))
    }
}

/// Writes JSON Lines: one JSON object per row, nulls written explicitly, binary columns as UTF-8
/// text (invalid bytes replaced) so that dead-letter rows stay readable.
///
/// If `path` ends with `.jsonl` or `.json` and the sink runs with parallelism 1, that file is
/// written; otherwise `path` is a directory (created if missing) and each subtask writes
/// `part-{subtask:03}.jsonl` in it. Output goes to a hidden `.{name}.inprogress` file first and is
/// renamed at the end of the input. A subtask that receives no rows writes an empty file.
///
/// When the job takes checkpoints the output is exactly-once (two-phase commit). In directory
/// mode each checkpoint's rows of a subtask become `part-{subtask:03}-{checkpoint:06}-000.jsonl`,
/// published when the checkpoint completes (a subtask writes no file for a checkpoint without
/// rows). In single-file mode (the dead-letter output) the file grows: each completed
/// checkpoint's rows are appended to it, idempotently (a replay truncates to the length before
/// the checkpoint first), and it exists (maybe empty) once the job has ended.
///
/// ```yaml
/// sink: { type: jsonl, path: out/errors.jsonl }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkSpec {
    /// The output file (`.jsonl`/`.json`, parallelism 1) or directory, or an object-store prefix
    /// (`s3://bucket/out/`, part files). Required.
    pub path: String,
    /// Object-store options for an `s3://` path (`aws_endpoint`, `aws_access_key_id`, ...), which
    /// win over the environment (default none).
    #[serde(default)]
    pub storage: weir_store::StorageOptions,
}

impl JsonlSinkSpec {
    /// A spec writing to `path`.
    pub fn new(path: impl Into<String>) -> Self {
        JsonlSinkSpec {
            path: path.into(),
            storage: weir_store::StorageOptions::default(),
        }
    }

    fn is_file(&self) -> bool {
        let lower = self.path.to_ascii_lowercase();
        lower.ends_with(".jsonl") || lower.ends_with(".json")
    }

    /// Where it publishes, for the checks `weir run` makes before a run.
    pub fn output_at(&self) -> crate::OutputAt {
        crate::OutputAt {
            path: PathBuf::from(&self.path),
            one_file: self.is_file(),
            storage: self.storage.clone(),
        }
    }

    /// The file subtask `subtask` of `parallelism` writes.
    pub fn output_path(&self, subtask: u32, parallelism: u32) -> PathBuf {
        if self.is_file() && parallelism <= 1 {
            PathBuf::from(&self.path)
        } else {
            PathBuf::from(&self.path).join(format!("part-{subtask:03}.jsonl"))
        }
    }

    /// One running instance for subtask `info.subtask`, writing batches of schema `input`.
    pub fn create(&self, info: &TaskInfo, input: SchemaRef) -> Result<Box<dyn Operator>> {
        let path = self.output_path(info.subtask, info.parallelism);
        let (dir, remote) = crate::two_phase::output_location(&self.path, &self.storage, info)?;
        let layout = if remote.is_some() {
            if self.is_file() {
                return Err(Error::config(format!(
                    "jsonl sink {}: an object-store output is a prefix of part files; end it with '/' (not .jsonl/.json)",
                    self.path
                )));
            }
            Layout::Parts { dir, ext: "jsonl" }
        } else if self.is_file() && info.parallelism <= 1 {
            Layout::Append { file: path.clone() }
        } else {
            Layout::Parts {
                dir: PathBuf::from(&self.path),
                ext: "jsonl",
            }
        };
        Ok(Box::new(JsonlSink {
            info: info.clone(),
            remote,
            layout,
            tp: None,
            writing: PathBuf::new(),
            name: info.node.clone(),
            tmp: inprogress_path(&path),
            path,
            text: text_schema(&input),
            schema: input,
            writer: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        if self.is_file() {
            format!(
                "jsonl sink {} (one file at parallelism 1, else part files)",
                self.path
            )
        } else {
            format!("jsonl sink {} (part-NNN.jsonl per subtask)", self.path)
        }
    }
}

impl kind::Spec for JsonlSinkSpec {
    fn describe(&self) -> String {
        JsonlSinkSpec::describe(self)
    }
}

impl kind::SinkSpec for JsonlSinkSpec {
    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        JsonlSinkSpec::create(self, ctx.info(), ctx.input()?.clone())
    }
}

type JsonWriter =
    arrow::json::Writer<std::io::BufWriter<std::fs::File>, arrow::json::writer::LineDelimited>;

struct JsonlSink {
    info: TaskInfo,
    /// An `s3://` output (then the layout's directory is the local spool directory).
    remote: Option<crate::two_phase::RemoteOut>,
    /// Where the output goes under checkpoints.
    layout: Layout,
    /// The two-phase bookkeeping, when the job takes checkpoints (set in `open`).
    tp: Option<TwoPhase>,
    /// The file the open writer writes.
    writing: PathBuf,
    name: String,
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    text: SchemaRef,
    writer: Option<JsonWriter>,
}

impl JsonlSink {
    fn open_writer(&mut self) -> Result<JsonWriter> {
        self.writing = match &mut self.tp {
            Some(tp) => tp.new_tmp(),
            None => self.tmp.clone(),
        };
        if let Some(dir) = self.writing.parent()
            && !dir.as_os_str().is_empty()
        {
            ensure_dir(dir)?;
        }
        let f = create_file(&self.writing)?;
        Ok(arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build(std::io::BufWriter::with_capacity(1 << 20, f)))
    }

    /// Finishes the open writer (opening an empty one first when `always`): publishes the file,
    /// or, under checkpoints, hands it over to be staged at the next barrier.
    async fn close_writer(&mut self, ctx: &OperatorContext, always: bool) -> Result<()> {
        let writer = match self.writer.take() {
            Some(w) => w,
            None if always => self.open_writer()?,
            None => return Ok(()),
        };
        let tmp = self.writing.clone();
        let publish_as = if self.tp.is_some() {
            None
        } else {
            Some(self.path.clone())
        };
        let t = tmp.clone();
        ctx.spawn_cpu(move || {
            let mut writer = writer;
            writer.finish().map_err(|e| {
                Error::io(format!("cannot write json file {}", t.display())).with_source(e)
            })?;
            writer.into_inner().flush().map_err(|e| {
                Error::io(format!("cannot write json file {}", t.display())).with_source(e)
            })?;
            match publish_as {
                Some(path) => publish(&t, &path),
                None => Ok(()),
            }
        })
        .await??;
        if let Some(tp) = &mut self.tp {
            tp.closed(tmp);
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for JsonlSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = with_schema(batch, &self.schema, &self.name)?;
        let mut writer = match self.writer.take() {
            Some(w) => w,
            None => self.open_writer()?,
        };
        let text = self.text.clone();
        let (writer, res) = ctx
            .spawn_cpu(move || {
                let res = binary_as_text(batch, &text)
                    .and_then(|b| writer.write(&b).map_err(Error::from));
                (writer, res)
            })
            .await?;
        self.writer = Some(writer);
        res.map_err(|e| {
            Error::io(format!("cannot write json file {}", self.writing.display())).with_source(e)
        })
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if !ctx.checkpointing() && self.remote.is_none() {
            return Ok(());
        }
        // An object store is always written through staging: without checkpoints, everything is
        // staged and published when the input ends.
        self.tp = Some(
            TwoPhase::open_remote(self.layout.clone(), &self.info, self.remote.as_ref(), ctx)
                .await?,
        );
        if let Some(state) = ctx.restored_state().cloned() {
            let published = blocking(&mut self.tp, ctx, move |tp| tp.restore(&state)).await?;
            tracing::info!(
                node = %self.name,
                subtask = self.info.subtask,
                "restored: published {} json files staged before the crash",
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
        if self.tp.is_none() {
            return Ok(weir_runtime::StateSnapshot::new());
        }
        // Pre-commit: close the open file and stage it for this checkpoint.
        self.close_writer(ctx, false).await?;
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
        // Without checkpoints every subtask publishes a file, maybe empty. Under checkpoints the
        // file is only closed here (the final checkpoint stages and publishes it); the single
        // output file always gets one, so it exists at the end even without rows.
        let always = match self.layout {
            Layout::Append { .. } => true,
            Layout::Parts { .. } => self.tp.is_none(),
        };
        self.close_writer(ctx, always).await?;
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
