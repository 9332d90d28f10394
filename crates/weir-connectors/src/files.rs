//! Raw files: a source listing a local directory or an object-store prefix (through the
//! `object_store` crate) and emitting one row per file: its URI, size, modification time and,
//! optionally, its bytes. For pipelines over images, documents and other unstructured inputs.

use crate::config::{de_size, default_poll_interval};
use crate::file_source::{is_mine, stable_hash, thousands};
use arrow::array::{
    ArrayRef, BinaryBuilder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_runtime::kind;
use weir_runtime::{OperatorContext, Source, SourceEvent, TaskInfo};
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

/// Files fetched at once.
const FETCH_CONCURRENCY: usize = 8;

/// Lists files and emits one row per file.
///
/// ```yaml
/// source: { type: files, url: "s3://photos/2024/", glob: "*.jpg", max_file_size: 16MiB }
/// ```
///
/// The output schema is `uri: Utf8 (not null), size: UInt64, modified: Timestamp(ms, UTC),
/// bytes: Binary (nullable)`. URIs are `file:///abs/path` for local files and
/// `s3://bucket/key` for S3 objects. Hidden files (names starting with `.`) are skipped. S3 is
/// configured from the usual `AWS_*` environment variables.
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
    /// Emit each file's contents in `bytes` (default `true`); `false` emits only the reference and
    /// `bytes` is null.
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
    /// With `include_bytes`, most bytes in one batch (default `"64MiB"`): a batch ends before the
    /// file that would take it over (a single larger file gets a batch of its own). A file counts
    /// as its size, or, when it is a JPEG, PNG or WebP image, as its decoded RGB size predicted
    /// from its header (width × height × 3) if that is larger, so the batch stays within the
    /// budget after `decode_image` too. Together with `batch_size` this bounds what one batch
    /// holds in memory, whatever the file sizes.
    #[serde(default = "default_max_batch_bytes", deserialize_with = "de_size")]
    pub max_batch_bytes: u64,
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

/// The output schema of the files source.
pub fn files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("bytes", DataType::Binary, true),
    ]))
}

/// Where a files source lists.
struct Location {
    store: Arc<dyn ObjectStore>,
    /// The prefix (or single object) to list.
    prefix: StorePath,
    /// Prepended to an object's location to make its URI.
    base_uri: String,
    /// Whether `prefix` names one object rather than a directory.
    single: bool,
    /// The same store when it is the local file system: its files are then read with plain
    /// blocking reads, a batch at a time (see [`read_local`]).
    local: Option<Arc<LocalFileSystem>>,
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
        Ok(files_schema())
    }

    /// One running instance for subtask `info.subtask` of `info.parallelism`.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        if schema.fields() != files_schema().fields() {
            return Err(Error::schema(
                "the files source can only produce its own schema (uri, size, modified, bytes)",
            ));
        }
        let loc = self.location()?;
        Ok(Box::new(FilesSource {
            spec: self.clone(),
            pattern: self.pattern()?,
            loc,
            schema,
            subtask: info.subtask,
            parallelism: info.parallelism.max(1),
            queue: VecDeque::new(),
            seen: HashSet::new(),
            total: 0,
            last_poll: None,
            done: 0,
            taken: BTreeSet::new(),
            fetched: VecDeque::new(),
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
            "references only".to_string()
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

    fn location(&self) -> Result<Location> {
        let url = self.url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::config(format!("url '{url}' names no bucket")));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(format!("s3://{bucket}"))
                .build()
                .map_err(|e| {
                    Error::config(format!("cannot configure s3 access for '{url}'")).with_source(e)
                })?;
            let prefix = StorePath::parse(prefix.trim_end_matches('/')).map_err(|e| {
                Error::config(format!("invalid object path in '{url}'")).with_source(e)
            })?;
            return Ok(Location {
                store: Arc::new(store),
                prefix,
                base_uri: format!("s3://{bucket}/"),
                single: false,
                local: None,
            });
        }
        let local = match url.strip_prefix("file://") {
            Some(p) => p,
            None if url.contains("://") => {
                return Err(Error::config(format!(
                    "unsupported url '{url}': use a local path, file:// or s3://"
                )));
            }
            None => url,
        };
        let abs = std::fs::canonicalize(local).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::config(format!("input path '{url}' does not exist")).with_source(e)
            } else {
                Error::io(format!("cannot read input path '{url}'")).with_source(e)
            }
        })?;
        let single = abs.is_file();
        let prefix = StorePath::from_filesystem_path(&abs)
            .map_err(|e| Error::config(format!("invalid local path '{url}'")).with_source(e))?;
        let local = Arc::new(LocalFileSystem::new());
        Ok(Location {
            store: local.clone(),
            prefix,
            base_uri: "file:///".to_string(),
            single,
            local: Some(local),
        })
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

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        FilesSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

/// A running files source.
struct FilesSource {
    spec: FilesSourceSpec,
    pattern: Option<glob::Pattern>,
    loc: Location,
    schema: SchemaRef,
    subtask: u32,
    parallelism: u32,
    queue: VecDeque<ObjectMeta>,
    seen: HashSet<StorePath>,
    total: u64,
    last_poll: Option<Instant>,
    done: u64,
    /// Checkpointed state: the locations of the files emitted (or reported bad) by this instance,
    /// and the restored ones it carries on (by name hash). One union entry `file:<location>` each.
    taken: BTreeSet<String>,
    /// Files read but not yet emitted (the rest of a read whose decoded sizes exceeded the budget).
    fetched: VecDeque<Fetched>,
}

/// A file read from the store, or why it could not be.
type Fetched = (ObjectMeta, object_store::Result<Option<bytes::Bytes>>);

/// Reads local files one after the other on the calling (blocking) thread. Going through
/// `ObjectStore::get` instead costs a blocking-pool hand-over per file, which on a small machine
/// left dozens of IO threads waking and preempting the decoders (three times the loop's context
/// switches on the image benchmark), while reading from the page cache gains nothing from
/// concurrency.
fn read_local(fs: &LocalFileSystem, metas: Vec<ObjectMeta>) -> Vec<Fetched> {
    metas
        .into_iter()
        .map(|m| {
            let read = fs.path_to_filesystem(&m.location).and_then(|path| {
                std::fs::read(&path)
                    .map(|v| Some(bytes::Bytes::from(v)))
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
                            path: path.display().to_string(),
                            source: Box::new(e),
                        },
                        _ => object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        },
                    })
            });
            (m, read)
        })
        .collect()
}

impl FilesSource {
    fn uri(&self, m: &ObjectMeta) -> String {
        format!("{}{}", self.loc.base_uri, m.location)
    }

    fn wanted(&self, m: &ObjectMeta) -> bool {
        let name = m.location.filename().unwrap_or_default();
        if name.starts_with('.') || name.ends_with(".inprogress") {
            return false;
        }
        match &self.pattern {
            None => true,
            Some(p) if p.as_str().contains('/') => {
                let full = m.location.as_ref();
                let rel = full
                    .strip_prefix(self.loc.prefix.as_ref())
                    .map(|r| r.trim_start_matches('/'))
                    .unwrap_or(full);
                p.matches(rel)
            }
            Some(p) => p.matches(name),
        }
    }

    /// Lists again and queues this subtask's objects not seen before.
    async fn poll(&mut self, ctx: &OperatorContext) -> Result<usize> {
        let store = self.loc.store.clone();
        let prefix = self.loc.prefix.clone();
        let single = self.loc.single;
        let url = self.spec.url.clone();
        let listed = ctx
            .io()
            .spawn(async move {
                if single {
                    store.head(&prefix).await.map(|m| vec![m])
                } else {
                    store.list(Some(&prefix)).try_collect::<Vec<_>>().await
                }
            })
            .await
            .map_err(|e| Error::internal("listing objects panicked").with_source(e))?
            .map_err(|e| Error::io(format!("cannot list '{url}'")).with_source(e))?;
        self.last_poll = Some(Instant::now());
        let mut listed: Vec<ObjectMeta> = listed.into_iter().filter(|m| self.wanted(m)).collect();
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        let mut added = 0;
        for (i, m) in listed.into_iter().enumerate() {
            if self.seen.contains(&m.location)
                || !is_mine(
                    i,
                    m.location.as_ref(),
                    self.spec.continuous,
                    self.subtask,
                    self.parallelism,
                )
            {
                continue;
            }
            self.seen.insert(m.location.clone());
            self.total += m.size;
            self.queue.push_back(m);
            added += 1;
        }
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
        let metas = self.take_batch(ctx)?;
        if metas.is_empty() {
            return Ok(Some(SourceEvent::Idle(Duration::ZERO)));
        }
        let contents: Vec<Fetched> = if !self.spec.include_bytes {
            metas.into_iter().map(|m| (m, Ok(None))).collect()
        } else if let Some(fs) = self.loc.local.clone() {
            ctx.io()
                .spawn_blocking(move || read_local(&fs, metas))
                .await
                .map_err(|e| Error::internal("reading files panicked").with_source(e))?
        } else {
            let store = self.loc.store.clone();
            ctx.io()
                .spawn(async move {
                    futures::stream::iter(metas)
                        .map(|m| {
                            let store = store.clone();
                            async move {
                                let r = match store.get(&m.location).await {
                                    Ok(g) => g.bytes().await.map(Some),
                                    Err(e) => Err(e),
                                };
                                (m, r)
                            }
                        })
                        .buffered(FETCH_CONCURRENCY)
                        .collect::<Vec<_>>()
                        .await
                })
                .await
                .map_err(|e| Error::internal("reading objects panicked").with_source(e))?
        };
        self.fetched.extend(contents);
        Ok(None)
    }

    /// Takes the next objects for one batch, reporting files too large to read as bad rows.
    fn take_batch(&mut self, ctx: &mut OperatorContext) -> Result<Vec<ObjectMeta>> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while batch.len() < self.spec.batch_size {
            let Some(m) = self.queue.front() else { break };
            if self.spec.include_bytes {
                if m.size > self.spec.max_file_size {
                    let m = self
                        .queue
                        .pop_front()
                        .ok_or_else(|| Error::internal("queue emptied"))?;
                    let uri = self.uri(&m);
                    ctx.metrics().add_progress(m.size);
                    self.done += 1;
                    self.taken.insert(m.location.to_string());
                    ctx.bad_row(
                        Error::input(format!(
                            "file {uri} is {} bytes, above max_file_size ({} bytes)",
                            m.size, self.spec.max_file_size
                        )),
                        Some(uri),
                        None,
                        None,
                    )?;
                    continue;
                }
                if !batch.is_empty() && bytes + m.size > self.spec.max_batch_bytes {
                    break;
                }
                bytes += m.size;
            }
            if let Some(m) = self.queue.pop_front() {
                batch.push(m);
            }
        }
        Ok(batch)
    }
}

/// The key of the files source's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TakenKey {
    /// This object was emitted.
    Done(String),
}

#[async_trait]
impl Source for FilesSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            // Files emitted before the checkpoint are never taken again, by any instance.
            let p = u64::from(self.parallelism);
            let mut restored = 0u64;
            for entry in state.unions::<TakenKey>() {
                let (TakenKey::Done(loc), _) = entry?;
                let loc = loc.as_str();
                let path = StorePath::parse(loc).map_err(|e| {
                    Error::io(format!(
                        "checkpoint state names an invalid object path '{loc}'"
                    ))
                    .with_source(e)
                })?;
                if self.seen.insert(path) {
                    restored += 1;
                }
                if stable_hash(loc) % p == u64::from(self.subtask) {
                    self.taken.insert(loc.to_string());
                }
            }
            if self.subtask == 0 {
                tracing::info!(
                    node = %ctx.name(),
                    "resumed: skipping {} files already emitted before the checkpoint",
                    thousands(restored)
                );
            }
        }
        self.poll(ctx).await.map(|_| ())
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
        for (m, r) in contents {
            let u = self.uri(&m);
            ctx.metrics().add_progress(m.size);
            self.done += 1;
            self.taken.insert(m.location.to_string());
            match r {
                Ok(b) => {
                    uri.append_value(&u);
                    size.append_value(b.as_ref().map_or(m.size, |b| b.len() as u64));
                    modified.append_value(m.last_modified.timestamp_millis());
                    data.append_option(b.as_deref());
                }
                Err(e) => {
                    ctx.bad_row(
                        Error::io(format!("cannot read file {u}")).with_source(e),
                        Some(u),
                        None,
                        None,
                    )?;
                }
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(uri.finish()),
            Arc::new(size.finish()),
            Arc::new(modified.finish()),
            Arc::new(data.finish()),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), cols)?;
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
        let mut snap = weir_runtime::StateSnapshot::new();
        for loc in &self.taken {
            snap.push_union(&TakenKey::Done(loc.clone()), b"done".to_vec())?;
        }
        Ok(snap)
    }
}
