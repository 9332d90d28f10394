//! Raw files: a source listing a local directory or an object-store prefix (resolved by
//! `weir_store`) and emitting one row per file: its URI, size, modification time and either its
//! bytes or a `weir.object_ref` to be fetched later. For pipelines over images, documents and
//! other unstructured inputs.
//!
//! Listing, hidden names and the bounded state are described in [`crate::listing`].

use crate::config::{de_size, default_poll_interval};
use crate::file_source::thousands;
use crate::listing::{
    At, Listed, Listing, Progress, Restored, Split, Tracker, list_local, list_store, owner,
};
use arrow::array::{
    ArrayRef, BinaryBuilder, StringBuilder, StructArray, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_runtime::kind;
use weir_runtime::{OperatorContext, Source, SourceEvent, TaskInfo};
use weir_store::{Location, StorageOptions};
use weir_types::multimodal::object_ref_field;
use weir_types::{Barrier, Error, Result};

fn default_true() -> bool {
    true
}

fn default_max_file_size() -> u64 {
    64 << 20
}

fn default_batch_size() -> usize {
    64
}

fn default_max_batch_bytes() -> u64 {
    64 << 20
}

fn default_lookback() -> usize {
    1000
}

/// Files fetched at once from an object store.
const FETCH_CONCURRENCY: usize = 8;

/// Lists files and emits one row per file.
///
/// ```yaml
/// source: { type: files, url: "s3://photos/2024/", glob: "*.jpg", max_file_size: 16MiB }
/// ```
///
/// The output schema is `uri: Utf8 (not null), size: UInt64, modified: Timestamp(ms, UTC)` and
/// then `bytes: Binary` with `include_bytes` (the default), or `ref: weir.object_ref` (uri,
/// offset 0, length = size, version) without it. URIs are `file:///abs/path` for local files and
/// `s3://bucket/key` for objects, percent-encoded so that `fetch` decodes them back to the same
/// file whatever its name. Hidden names (starting with `.`) are skipped. S3 is configured by
/// weir-store's credential policy (the `AWS_*` environment, then `storage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceSpec {
    /// Where to list: a local path (file or directory), `file:///abs/dir`, or `s3://bucket/prefix`.
    /// Required.
    pub url: String,
    /// Only files whose name matches this glob (`*.jpg`); a pattern with `/` is matched against the
    /// path below `url` (default none: all files).
    #[serde(default)]
    pub glob: Option<String>,
    /// Emit each file's contents in `bytes` (default `true`); `false` emits a `ref` column of
    /// `weir.object_ref` values instead, which `fetch` materialises later.
    #[serde(default = "default_true")]
    pub include_bytes: bool,
    /// With `include_bytes`, files larger than this become bad rows (default `"64MiB"`).
    #[serde(default = "default_max_file_size", deserialize_with = "de_size")]
    pub max_file_size: u64,
    /// Keep polling for files that appear later (default `false`).
    #[serde(default)]
    pub continuous: bool,
    /// How often to list again in continuous mode (default `"1s"`).
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "crate::config::de_duration",
        serialize_with = "crate::config::ser_duration"
    )]
    pub poll_interval: Duration,
    /// Rows (files) per batch (default 64).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most bytes in one batch (default `"64MiB"`): a batch ends before the file that would take
    /// it over (a single larger file gets a batch of its own). With `include_bytes` a file counts
    /// as its size, or, when it is a JPEG, PNG or WebP image, as its decoded RGB size predicted
    /// from its header (width × height × 3) if that is larger, so the batch stays within the
    /// budget after `decode_image` too; without, it counts as its listed size (and `fetch` cuts
    /// its output by the predicted decoded size). Together with `batch_size` this bounds what one
    /// batch holds in memory, whatever the file sizes.
    #[serde(default = "default_max_batch_bytes", deserialize_with = "de_size")]
    pub max_batch_bytes: u64,
    /// How many of the newest emitted keys each subtask remembers (default 1000): the state stays
    /// this small however many files arrive, and a file that appears later with a key below that
    /// many newer ones is not read (see `docs/pipeline-spec.md`).
    #[serde(default = "default_lookback")]
    pub lookback: usize,
    /// Object-store options (`aws_endpoint`, `aws_access_key_id`, ...), which win over the
    /// environment (default none).
    #[serde(default)]
    pub storage: StorageOptions,
}

/// The bytes a file counts for in a batch: its size, or its decoded RGB size predicted from its
/// header when it is a JPEG, PNG or WebP image and that is larger.
pub fn admission_size(bytes: &[u8]) -> u64 {
    let own = bytes.len() as u64;
    let format = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        image::ImageFormat::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        image::ImageFormat::Png
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        image::ImageFormat::WebP
    } else {
        return own;
    };
    image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map(|(w, h)| own.max(u64::from(w) * u64::from(h) * 3))
        .unwrap_or(own)
}

/// The output schema of the files source: with the file's `bytes`, or with a `ref`.
pub fn files_schema(include_bytes: bool) -> SchemaRef {
    let last = if include_bytes {
        Field::new("bytes", DataType::Binary, true)
    } else {
        object_ref_field("ref")
    };
    Arc::new(Schema::new(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        last,
    ]))
}

/// The indices of `wanted`'s columns in `full` (each by name and type, in `full`'s order).
fn projection_of(full: &SchemaRef, wanted: &SchemaRef) -> Result<Vec<usize>> {
    let own = || {
        Error::schema(format!(
            "the files source can produce only its own columns ({}) in that order, not {}",
            weir_types::column_names(full),
            weir_types::column_names(wanted)
        ))
    };
    let mut indices = Vec::with_capacity(wanted.fields().len());
    for f in wanted.fields() {
        let (i, g) = full.column_with_name(f.name()).ok_or_else(own)?;
        if g.data_type() != f.data_type() || indices.last().is_some_and(|&l| l >= i) {
            return Err(own());
        }
        indices.push(i);
    }
    if indices.is_empty() {
        return Err(own());
    }
    Ok(indices)
}

/// Where a files source lists.
#[derive(Clone)]
enum Where {
    /// A local directory (or one file).
    Local { root: PathBuf, single: bool },
    /// A prefix (or one object) of an object store.
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: object_store::path::Path,
        base: String,
        single: bool,
    },
}

impl FilesSourceSpec {
    /// A spec listing `url` with every other option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        FilesSourceSpec {
            url: url.into(),
            glob: None,
            include_bytes: true,
            max_file_size: default_max_file_size(),
            continuous: false,
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            max_batch_bytes: default_max_batch_bytes(),
            lookback: default_lookback(),
            storage: StorageOptions::default(),
        }
    }

    /// Plan time: checks the options (a local path must exist) and returns the fixed schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        self.pattern()?;
        self.location()?;
        if self.batch_size == 0 {
            return Err(Error::config("batch_size must be at least 1"));
        }
        if self.max_batch_bytes == 0 {
            return Err(Error::config("max_batch_bytes must be at least 1 byte"));
        }
        if self.lookback == 0 {
            return Err(Error::config("lookback must be at least 1"));
        }
        Ok(files_schema(self.include_bytes))
    }

    /// One running instance for subtask `info.subtask` of `info.parallelism`.
    /// `schema` is its own schema or, when the planner pushed a projection down, some of its
    /// columns in the same order; without `bytes` among them no file is read.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let full = files_schema(self.include_bytes);
        let projection = projection_of(&full, &schema)?;
        let read_bytes = self.include_bytes && schema.column_with_name("bytes").is_some();
        Ok(Box::new(FilesSource {
            spec: self.clone(),
            full,
            projection,
            read_bytes,
            pattern: self.pattern()?,
            at: self.location()?,
            schema,
            subtask: info.subtask,
            parallelism: info.parallelism.max(1),
            queue: BTreeMap::new(),
            fetched: VecDeque::new(),
            tracker: Tracker {
                lookback: self.lookback,
                ..Default::default()
            },
            restored: Restored::default(),
            total: 0,
            last_poll: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let mode = crate::file_source::describe_mode(self.continuous, self.poll_interval);
        let filter = self
            .glob
            .as_ref()
            .map(|g| format!(" matching {g}"))
            .unwrap_or_default();
        let what = if self.include_bytes {
            format!(
                "with bytes up to {} per file, {} per batch",
                bytesize::ByteSize::b(self.max_file_size).display().iec(),
                bytesize::ByteSize::b(self.max_batch_bytes).display().iec()
            )
        } else {
            "object references".to_string()
        };
        format!(
            "files source {}{filter} ({mode}, {what}, batches of {} files)",
            self.url, self.batch_size
        )
    }

    fn pattern(&self) -> Result<Option<glob::Pattern>> {
        self.glob
            .as_deref()
            .map(|g| {
                glob::Pattern::new(g).map_err(|e| {
                    Error::config(format!("invalid glob pattern '{g}'")).with_source(e)
                })
            })
            .transpose()
    }

    fn location(&self) -> Result<Where> {
        match weir_store::resolve(&self.url, &self.storage)? {
            Location::Store(s) => Ok(Where::Store {
                store: s.store,
                prefix: s.prefix,
                base: s.base,
                single: false,
            }),
            Location::Local(p) => {
                let abs = std::fs::canonicalize(&p).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::config(format!("input path '{}' does not exist", self.url))
                            .with_source(e)
                    } else {
                        Error::io(format!("cannot read input path '{}'", self.url)).with_source(e)
                    }
                })?;
                Ok(Where::Local {
                    single: abs.is_file(),
                    root: abs,
                })
            }
        }
    }
}

impl kind::Spec for FilesSourceSpec {
    fn describe(&self) -> String {
        FilesSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for FilesSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        FilesSourceSpec::schema(self)
    }

    /// Yes: it emits any of its columns, and reads no file when `bytes` is not among them.
    fn projects(&self) -> bool {
        true
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        FilesSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

/// A running files source.
struct FilesSource {
    spec: FilesSourceSpec,
    pattern: Option<glob::Pattern>,
    at: Where,
    /// What it emits: `full`'s columns at `projection`.
    schema: SchemaRef,
    /// Its own schema, as the spec says.
    full: SchemaRef,
    projection: Vec<usize>,
    /// Whether file contents are read (`include_bytes` and `bytes` emitted).
    read_bytes: bool,
    subtask: u32,
    parallelism: u32,
    /// Listed, owned by this subtask and not yet read, by key.
    queue: BTreeMap<String, Listed>,
    /// Files read but not yet emitted (the rest of a read whose decoded sizes exceeded the budget).
    fetched: VecDeque<Fetched>,
    /// What this subtask emitted (its checkpointed state).
    tracker: Tracker,
    /// What the run it was restored from emitted.
    restored: Restored,
    total: u64,
    last_poll: Option<Instant>,
}

/// A file read from the store, or why it could not be.
type Fetched = (Listed, std::result::Result<Option<bytes::Bytes>, Error>);

fn read_local(files: Vec<Listed>) -> Vec<Fetched> {
    files
        .into_iter()
        .map(|f| {
            let r = match &f.at {
                At::Local(p) => std::fs::read(p)
                    .map(|v| Some(bytes::Bytes::from(v)))
                    .map_err(|e| Error::io(format!("cannot read file {}", f.uri)).with_source(e)),
                At::Object(_) => Err(Error::internal("a local read of an object")),
            };
            (f, r)
        })
        .collect()
}

impl FilesSource {
    fn split(&self) -> Split {
        if self.spec.continuous {
            Split::Hash
        } else {
            Split::Index
        }
    }

    fn wanted(&self, f: &Listed) -> bool {
        let Some(p) = &self.pattern else {
            return true;
        };
        // The path below the listed root, as text.
        let rel = match &self.at {
            Where::Local { .. } => decode(&f.key),
            Where::Store { prefix, .. } => f
                .key
                .strip_prefix(prefix.as_ref())
                .unwrap_or(&f.key)
                .trim_start_matches('/')
                .to_string(),
        };
        if p.as_str().contains('/') {
            p.matches(&rel)
        } else {
            p.matches(rel.rsplit('/').next().unwrap_or(&rel))
        }
    }

    /// The smallest key listed and not yet emitted.
    fn pending(&self) -> Option<String> {
        let a = self.fetched.front().map(|(f, _)| f.key.clone());
        let b = self.queue.first_key_value().map(|(k, _)| k.clone());
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn mark(&mut self, key: &str) {
        let pending = self.pending();
        self.tracker.mark(key, pending.as_deref());
    }

    /// Lists again and queues this subtask's objects not emitted before. Entries that cannot be
    /// listed are reported as bad rows.
    async fn poll(&mut self, ctx: &mut OperatorContext) -> Result<usize> {
        let after = if self.spec.continuous {
            self.tracker.position.clone()
        } else {
            None
        };
        let listing: Listing = match self.at.clone() {
            Where::Local { root, single } => ctx
                .io()
                .spawn_blocking(move || list_local(&root, single, after.as_deref()))
                .await
                .map_err(|e| Error::internal("listing files panicked").with_source(e))??,
            Where::Store {
                store,
                prefix,
                base,
                single,
            } => {
                let url = self.spec.url.clone();
                ctx.io()
                    .spawn(list_store(store, base, prefix, single, after))
                    .await
                    .map_err(|e| Error::internal("listing objects panicked").with_source(e))?
                    .map_err(|e| Error::io(format!("cannot list '{url}'")).with_source(e))?
            }
        };
        self.last_poll = Some(Instant::now());
        for (uri, e) in listing.unreadable {
            ctx.bad_row(e, Some(uri), None, None)?;
        }
        let split = self.split();
        let wanted: Vec<Listed> = listing
            .objects
            .into_iter()
            .filter(|f| self.wanted(f))
            .collect();
        let mut added = 0;
        for (i, f) in wanted.into_iter().enumerate() {
            if owner(split, &f.key, i, self.parallelism) != self.subtask
                || self.tracker.is_done(&f.key)
                || self.queue.contains_key(&f.key)
                || self.fetched.iter().any(|(g, _)| g.key == f.key)
            {
                continue;
            }
            if !self.restored.is_empty() && self.restored.was_done(&f.key, i) {
                ctx.metrics().add_progress(f.size);
                self.total += f.size;
                self.tracker.done.insert(f.key.clone());
                continue;
            }
            self.total += f.size;
            self.queue.insert(f.key.clone(), f);
            added += 1;
        }
        // Fold what the restore marked into the position.
        let pending = self.pending();
        self.tracker.compact(pending.as_deref());
        ctx.metrics().set_total(self.total);
        Ok(added)
    }

    /// Lists or reads the next files into `self.fetched`; returns an event when there is nothing
    /// to emit now.
    async fn fetch_next(&mut self, ctx: &mut OperatorContext) -> Result<Option<SourceEvent>> {
        if self.queue.is_empty() {
            if !self.spec.continuous {
                return Ok(Some(SourceEvent::Finished));
            }
            let due = self.last_poll.map_or(Duration::ZERO, |t| {
                self.spec.poll_interval.saturating_sub(t.elapsed())
            });
            if due > Duration::ZERO {
                return Ok(Some(SourceEvent::Idle(due.min(Duration::from_millis(100)))));
            }
            if self.poll(ctx).await? == 0 {
                return Ok(Some(SourceEvent::Idle(
                    self.spec.poll_interval.min(Duration::from_millis(100)),
                )));
            }
        }
        let files = self.take_batch(ctx)?;
        if files.is_empty() {
            return Ok(Some(SourceEvent::Idle(Duration::ZERO)));
        }
        let contents: Vec<Fetched> = if !self.read_bytes {
            files.into_iter().map(|f| (f, Ok(None))).collect()
        } else {
            match &self.at {
                Where::Local { .. } => ctx
                    .io()
                    .spawn_blocking(move || read_local(files))
                    .await
                    .map_err(|e| Error::internal("reading files panicked").with_source(e))?,
                Where::Store { store, .. } => {
                    let store = store.clone();
                    ctx.io()
                        .spawn(async move {
                            futures::stream::iter(files)
                                .map(|f| {
                                    let store = store.clone();
                                    async move {
                                        let r = match &f.at {
                                            At::Object(p) => match store.get(p).await {
                                                Ok(g) => g.bytes().await.map(Some),
                                                Err(e) => Err(e),
                                            }
                                            .map_err(|e| {
                                                Error::io(format!("cannot read {}", f.uri))
                                                    .with_source(e)
                                            }),
                                            At::Local(_) => {
                                                Err(Error::internal("a store read of a local file"))
                                            }
                                        };
                                        (f, r)
                                    }
                                })
                                .buffered(FETCH_CONCURRENCY)
                                .collect::<Vec<_>>()
                                .await
                        })
                        .await
                        .map_err(|e| Error::internal("reading objects panicked").with_source(e))?
                }
            }
        };
        self.fetched.extend(contents);
        Ok(None)
    }

    /// Takes the next objects for one batch, reporting files too large to read as bad rows.
    fn take_batch(&mut self, ctx: &mut OperatorContext) -> Result<Vec<Listed>> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while batch.len() < self.spec.batch_size {
            let Some((_, f)) = self.queue.first_key_value() else {
                break;
            };
            if self.spec.include_bytes && f.size > self.spec.max_file_size {
                let Some((_, f)) = self.queue.pop_first() else {
                    break;
                };
                ctx.metrics().add_progress(f.size);
                self.mark(&f.key);
                ctx.bad_row(
                    Error::input(format!(
                        "file {} is {} bytes, above max_file_size ({} bytes)",
                        f.uri, f.size, self.spec.max_file_size
                    )),
                    Some(f.uri.clone()),
                    None,
                    None,
                )?;
                continue;
            }
            // By listed size here; with bytes, the decoded size is counted once read (`next`).
            if !batch.is_empty() && bytes + f.size > self.spec.max_batch_bytes {
                break;
            }
            bytes += f.size;
            if let Some((_, f)) = self.queue.pop_first() {
                batch.push(f);
            }
        }
        Ok(batch)
    }
}

/// Percent-decoded text of a key, for glob matching (lossy for bytes that are not UTF-8).
fn decode(key: &str) -> String {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned()
}

/// The key of the files source's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum FilesKey {
    /// The listing progress of one instance (by its subtask index).
    Progress(u32),
}

#[async_trait]
impl Source for FilesSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            let mut entries = Vec::new();
            for entry in state.unions::<FilesKey>() {
                let (FilesKey::Progress(subtask), bytes) = entry?;
                let p: Progress = serde_json::from_slice(bytes).map_err(|e| {
                    Error::io(format!(
                        "checkpoint state of files instance {subtask} is corrupt"
                    ))
                    .with_source(e)
                })?;
                entries.push(p);
            }
            self.restored = Restored::new(entries);
            // Every key at or below the lowest old position was emitted by its owner.
            self.tracker.position = self.restored.floor();
            if self.subtask == 0 {
                tracing::info!(
                    node = %ctx.name(),
                    "resumed: skipping files emitted before the checkpoint (listing after {})",
                    self.tracker.position.as_deref().unwrap_or("the start")
                );
            }
        }
        let added = self.poll(ctx).await?;
        if ctx.restored_state().is_some() {
            tracing::debug!(
                node = %ctx.name(),
                subtask = self.subtask,
                "{} files to read after the restore",
                thousands(added as u64)
            );
        }
        Ok(())
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if self.fetched.is_empty()
            && let Some(ev) = self.fetch_next(ctx).await?
        {
            return Ok(ev);
        }
        // Emit the longest prefix of what was read that fits the byte budget (at least one file).
        let mut contents: Vec<Fetched> = Vec::new();
        let mut used = 0u64;
        while let Some((_, r)) = self.fetched.front() {
            let weight = match r {
                Ok(Some(b)) => admission_size(b),
                _ => 0,
            };
            if !contents.is_empty() && used.saturating_add(weight) > self.spec.max_batch_bytes {
                break;
            }
            used = used.saturating_add(weight);
            if let Some(f) = self.fetched.pop_front() {
                contents.push(f);
            }
        }
        let mut uri = StringBuilder::new();
        let mut size = UInt64Builder::new();
        let mut modified = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut data = BinaryBuilder::new();
        let mut refs = RefBuilder::default();
        for (f, r) in contents {
            ctx.metrics().add_progress(f.size);
            self.mark(&f.key);
            match r {
                Ok(b) => {
                    uri.append_value(&f.uri);
                    size.append_value(b.as_ref().map_or(f.size, |b| b.len() as u64));
                    modified.append_value(f.modified_ms);
                    if self.spec.include_bytes {
                        data.append_option(b.as_deref());
                    } else {
                        refs.push(&f);
                    }
                }
                Err(e) => ctx.bad_row(e, Some(f.uri.clone()), None, None)?,
            }
        }
        let last: ArrayRef = if self.spec.include_bytes {
            Arc::new(data.finish())
        } else {
            refs.finish(&self.full)?
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(uri.finish()),
            Arc::new(size.finish()),
            Arc::new(modified.finish()),
            last,
        ];
        let batch = RecordBatch::try_new(self.full.clone(), cols)?.project(&self.projection)?;
        if batch.num_rows() == 0 {
            return Ok(SourceEvent::Idle(Duration::ZERO));
        }
        Ok(SourceEvent::Batch(batch))
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<weir_runtime::StateSnapshot> {
        let progress = Progress {
            split: Some(self.split()),
            parallelism: self.parallelism,
            subtask: self.subtask,
            position: self.tracker.position.clone(),
            done: self.tracker.done.clone(),
        };
        let bytes = serde_json::to_vec(&progress)
            .map_err(|e| Error::internal("cannot encode source state").with_source(e))?;
        let mut snap = weir_runtime::StateSnapshot::new();
        snap.push_union(&FilesKey::Progress(self.subtask), bytes)?;
        Ok(snap)
    }
}

/// Builds the `ref` column: `weir.object_ref` values (uri, offset 0, length, version).
#[derive(Default)]
struct RefBuilder {
    uri: StringBuilder,
    offset: UInt64Builder,
    length: UInt64Builder,
    version: StringBuilder,
}

impl RefBuilder {
    fn push(&mut self, f: &Listed) {
        self.uri.append_value(&f.uri);
        self.offset.append_value(0);
        self.length.append_value(f.size);
        self.version.append_option(f.version.as_deref());
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<ArrayRef> {
        let DataType::Struct(fields) = schema.field(3).data_type().clone() else {
            return Err(Error::internal("the ref column is not a struct"));
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.uri.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.length.finish()),
            Arc::new(self.version.finish()),
        ];
        Ok(Arc::new(StructArray::try_new(fields, cols, None)?))
    }
}
