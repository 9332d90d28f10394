//! `fetch`: materialises the bytes behind a column of URIs (or `weir.object_ref` handles). URIs
//! come from data, so they are treated as hostile (see `weir_store::data` and `weir_store::http`):
//!
//! - `s3://` objects (configured by weir-store's credential policy), and `http(s)://` URLs whose
//!   addresses are checked after DNS resolution and on every redirect (loopback, private,
//!   link-local and metadata ranges are refused unless allow-listed), with timeouts and bounded
//!   retries;
//! - local files (`file://` URIs, plain paths) only under the declared `roots`, with `..` and
//!   percent-encoded escapes resolved (and symbolic links followed) before the check.
//!
//! Requests run concurrently on the IO runtime, at most `max_concurrency` at a time, and the output
//! keeps the row order. Every row that cannot be fetched (refused, missing, too large, DNS failure,
//! refused connection, TLS error, error status, timeout) is a bad row naming the URI and the
//! cause; it never fails the job by itself. The output is cut into batches whose bytes, counting
//! an image at its decoded size predicted from its header, stay within `max_batch_bytes`, as the
//! `files` source does with `include_bytes`.

use crate::common::{column_index, parse_size, schema_with};
use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_store::{AddressPolicy, DataPolicy, DataTarget, HttpFetcher, HttpOptions, StorageOptions};
use weir_types::multimodal::{ExtensionType, MediaType, ObjectRefType};
use weir_types::{Error, Result};

fn default_uri() -> String {
    "uri".into()
}
fn default_bytes() -> String {
    "bytes".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_max_size() -> String {
    "64MiB".into()
}
fn default_schemes() -> Vec<String> {
    weir_store::DEFAULT_SCHEMES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_retries() -> u32 {
    2
}

/// Options of a `fetch` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    /// The input column: Utf8 URIs/paths, or a `weir.object_ref` struct (uri, offset, length).
    /// Default `uri`.
    #[serde(default = "default_uri")]
    pub column: String,
    /// The output Binary column (replaces a column of that name, else is appended). Default
    /// `bytes`.
    #[serde(default = "default_bytes")]
    pub output: String,
    /// Most requests in flight at once. Default 16.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Largest object (or range) fetched, e.g. `64MiB`; larger ones are bad rows. Default `64MiB`.
    #[serde(default = "default_max_size")]
    pub max_size: String,
    /// Most bytes in one output batch, an image counting as its decoded size predicted from its
    /// header when larger (a single larger row gets a batch of its own). Default `64MiB`.
    #[serde(default = "default_max_size")]
    pub max_batch_bytes: String,
    /// URI schemes that may be fetched, among `s3`, `http`, `https`. Default all three. Local
    /// files are enabled by `roots`, not here.
    #[serde(default = "default_schemes")]
    pub allow_schemes: Vec<String>,
    /// Where URIs may point: local directories (which enables `file://` URIs and plain paths under
    /// them) and `s3://bucket/prefix` prefixes (which confine `s3://` URIs to them). Default none:
    /// no local file can be read, and `s3://` URIs may name any object the credentials reach.
    #[serde(default)]
    pub roots: Vec<String>,
    /// Address ranges http(s) URIs may reach although they are not public (`10.0.0.0/8`,
    /// `127.0.0.1`, `fd00::/8`). Default none.
    #[serde(default)]
    pub allow_addresses: Vec<String>,
    /// Allow every non-public address (loopback, private, link-local, metadata): the same as
    /// listing every range in `allow_addresses`. Default false.
    #[serde(default)]
    pub allow_private: bool,
    /// Longest time for one http(s) attempt. Default `30s`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Further attempts for errors a retry may cure (connection failures, timeouts, 5xx, 429),
    /// with doubling backoff from 200 ms. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Object-store options for `s3://` URIs (`aws_endpoint`, ...), which win over the
    /// environment. Default none.
    #[serde(default)]
    pub storage: StorageOptions,
}

impl Default for FetchSpec {
    fn default() -> Self {
        FetchSpec {
            column: default_uri(),
            output: default_bytes(),
            max_concurrency: default_concurrency(),
            max_size: default_max_size(),
            max_batch_bytes: default_max_size(),
            allow_schemes: default_schemes(),
            roots: Vec::new(),
            allow_addresses: Vec::new(),
            allow_private: false,
            timeout: default_timeout(),
            retries: default_retries(),
            storage: StorageOptions::default(),
        }
    }
}

/// What the checked options come to.
struct Checked {
    max_size: u64,
    max_batch_bytes: u64,
    policy: DataPolicy,
    http: HttpOptions,
}

impl FetchSpec {
    fn check(&self) -> Result<Checked> {
        let err = |e: Error| Error::config(format!("fetch: {}", e.report()));
        if self.max_concurrency == 0 {
            return Err(Error::config("fetch: max_concurrency must be at least 1"));
        }
        let policy = DataPolicy::new(&self.allow_schemes, &self.roots).map_err(err)?;
        let mut addresses = AddressPolicy::new(&self.allow_addresses).map_err(err)?;
        if self.allow_private {
            addresses = AddressPolicy::new(&["0.0.0.0/0", "::/0"]).map_err(err)?;
        }
        let timeout = humantime::parse_duration(&self.timeout).map_err(|e| {
            Error::config(format!(
                "fetch: timeout '{}' is not a duration such as 30s: {e}",
                self.timeout
            ))
        })?;
        let http = HttpOptions {
            addresses,
            allow_http: policy.allows_scheme("http"),
            allow_https: policy.allows_scheme("https"),
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(10)),
            retries: self.retries,
            ..HttpOptions::default()
        };
        Ok(Checked {
            max_size: parse_size(&self.max_size, "fetch: max_size")?,
            max_batch_bytes: parse_size(&self.max_batch_bytes, "fetch: max_batch_bytes")?.max(1),
            policy,
            http,
        })
    }

    /// Plan time: checks the input column (Utf8 or `weir.object_ref`) and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.check()?;
        let i = column_index(input, &self.column, "fetch")?;
        let f = input.field(i);
        match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {}
            DataType::Struct(_) => {
                weir_types::multimodal::check_field(f, &MediaType::ObjectRef)
                    .map_err(|e| Error::schema(format!("fetch: {}", e.message())))?;
            }
            other => {
                return Err(Error::schema(format!(
                    "fetch: column '{}' must be Utf8 URIs or a weir.object_ref, but it is {other}",
                    self.column
                )));
            }
        }
        Ok(schema_with(
            input,
            Field::new(&self.output, DataType::Binary, false),
        ))
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let checked = self.check()?;
        let http = if checked.policy.allows_http() {
            Some(HttpFetcher::new(checked.http)?)
        } else {
            None
        };
        Ok(Box::new(Fetch {
            schema: self.output_schema(input)?,
            spec: self.clone(),
            max_size: checked.max_size,
            max_batch_bytes: checked.max_batch_bytes,
            policy: checked.policy,
            http,
            buckets: HashMap::new(),
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let roots = if self.roots.is_empty() {
            "no local files".to_string()
        } else {
            format!("roots {}", self.roots.join(","))
        };
        format!(
            "fetch {} -> {} ({} at a time, max {}, schemes {}, {roots})",
            self.column,
            self.output,
            self.max_concurrency,
            self.max_size,
            self.allow_schemes.join(",")
        )
    }
}

impl kind::Spec for FetchSpec {
    fn describe(&self) -> String {
        FetchSpec::describe(self)
    }
}

impl kind::OperatorSpec for FetchSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        FetchSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        FetchSpec::create(self, ctx.input()?)
    }
}

/// A running `fetch`.
pub struct Fetch {
    schema: SchemaRef,
    spec: FetchSpec,
    max_size: u64,
    max_batch_bytes: u64,
    policy: DataPolicy,
    http: Option<HttpFetcher>,
    /// S3 clients by bucket.
    buckets: HashMap<String, Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetch").field("spec", &self.spec).finish()
    }
}

/// One row's request.
#[derive(Debug, Clone)]
struct Request {
    uri: String,
    offset: u64,
    length: Option<u64>,
}

/// What one row reads, once its URI is allowed.
enum Job {
    Local(std::path::PathBuf),
    Object(Arc<dyn ObjectStore>, StorePath),
    Http(HttpFetcher, url::Url),
}

fn too_large(uri: &str, size: u64, max: u64) -> Error {
    Error::input(format!(
        "object {uri} is {size} bytes, more than max_size {max} bytes"
    ))
}

fn store_error(uri: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::input(format!("object not found: {uri}")).with_source(e)
        }
        other => Error::input(format!("cannot fetch {uri}")).with_source(other),
    }
}

/// Reads `req` of a local file on a blocking thread: size checked before reading.
fn read_local(path: &std::path::Path, req: &Request, max: u64) -> Result<Bytes> {
    let uri = &req.uri;
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(format!("object not found: {uri}")).with_source(e)
        } else {
            Error::input(format!("cannot read {uri}")).with_source(e)
        }
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    if !f.metadata().map_err(io)?.is_file() {
        return Err(Error::input(format!("{uri} is not a file")));
    }
    let end = match req.length {
        Some(l) => req
            .offset
            .checked_add(l)
            .ok_or_else(|| Error::input(format!("range of {uri} overflows")))?,
        None => size,
    };
    if end > size {
        return Err(Error::input(format!(
            "range {}..{end} of {uri} is past its end ({size} bytes)",
            req.offset
        )));
    }
    let len = end.saturating_sub(req.offset);
    if len > max {
        return Err(too_large(uri, len, max));
    }
    f.seek(std::io::SeekFrom::Start(req.offset)).map_err(io)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(Bytes::from(buf))
}

async fn read_object(
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    req: &Request,
    max: u64,
) -> Result<Bytes> {
    let uri = &req.uri;
    match (req.offset, req.length) {
        (off, Some(len)) => {
            if len > max {
                return Err(too_large(uri, len, max));
            }
            let end = off
                .checked_add(len)
                .ok_or_else(|| Error::input(format!("range of {uri} overflows")))?;
            store
                .get_range(&path, off..end)
                .await
                .map_err(|e| store_error(uri, e))
        }
        (off, None) => {
            let opts = GetOptions {
                range: (off > 0).then_some(GetRange::Offset(off)),
                ..Default::default()
            };
            let r = store
                .get_opts(&path, opts)
                .await
                .map_err(|e| store_error(uri, e))?;
            let len = r.range.end.saturating_sub(r.range.start);
            if len > max {
                return Err(too_large(uri, len, max));
            }
            r.bytes().await.map_err(|e| store_error(uri, e))
        }
    }
}

/// Runs one row's fetch on the IO runtime (aborted if this future is dropped).
async fn run_job(
    io: tokio::runtime::Handle,
    job: Result<(Job, Request)>,
    max: u64,
) -> Result<Bytes> {
    let (job, req) = job?;
    let task = match job {
        Job::Local(path) => AbortOnDrop(io.spawn_blocking(move || read_local(&path, &req, max))),
        Job::Object(store, path) => {
            AbortOnDrop(io.spawn(async move { read_object(store, path, &req, max).await }))
        }
        Job::Http(client, url) => AbortOnDrop(
            io.spawn(async move { client.get(&url, req.offset, req.length, max).await }),
        ),
    };
    let mut task = task;
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => Err(Error::internal("fetch: request task failed").with_source(e)),
    }
}

/// Aborts a spawned task when dropped, so a cancelled hook leaves nothing running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn requests(column: &ArrayRef) -> Result<Vec<Option<Request>>> {
    let n = column.len();
    let plain = |uri: &str| Request {
        uri: uri.to_owned(),
        offset: 0,
        length: None,
    };
    Ok(match column.data_type() {
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            (0..n)
                .map(|i| a.is_valid(i).then(|| plain(a.value(i))))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = column.as_string::<i64>();
            (0..n)
                .map(|i| a.is_valid(i).then(|| plain(a.value(i))))
                .collect()
        }
        DataType::Utf8View => {
            let a = column.as_string_view();
            (0..n)
                .map(|i| a.is_valid(i).then(|| plain(a.value(i))))
                .collect()
        }
        DataType::Struct(_) => {
            let s = column.as_struct();
            let get = |name: &str| {
                s.column_by_name(name).cloned().ok_or_else(|| {
                    Error::internal(format!(
                        "fetch: {} has no child '{name}'",
                        ObjectRefType::NAME
                    ))
                })
            };
            let (uri, offset, length) = (get("uri")?, get("offset")?, get("length")?);
            let uri = uri
                .as_string_opt::<i32>()
                .ok_or_else(|| Error::internal("fetch: uri is not Utf8"))?;
            let offset = offset
                .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                .ok_or_else(|| Error::internal("fetch: offset is not UInt64"))?;
            let length = length
                .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                .ok_or_else(|| Error::internal("fetch: length is not UInt64"))?;
            (0..n)
                .map(|i| {
                    (s.is_valid(i) && uri.is_valid(i)).then(|| Request {
                        uri: uri.value(i).to_owned(),
                        offset: if offset.is_valid(i) {
                            offset.value(i)
                        } else {
                            0
                        },
                        length: length.is_valid(i).then(|| length.value(i)),
                    })
                })
                .collect()
        }
        other => {
            return Err(Error::internal(format!(
                "fetch: unexpected column type {other}"
            )));
        }
    })
}

impl Fetch {
    /// Decides what a row reads, without any IO; a refused URI is an error of that row.
    fn job(&mut self, req: Request) -> Result<(Job, Request)> {
        let job = match self.policy.locate(&req.uri)? {
            DataTarget::Local(p) => Job::Local(p),
            DataTarget::Object { bucket, path } => {
                let store = match self.buckets.get(&bucket) {
                    Some(s) => s.clone(),
                    None => {
                        let s: Arc<dyn ObjectStore> = weir_store::s3(&bucket, &self.spec.storage)
                            .map_err(|e| {
                            Error::input(format!("cannot fetch {}", req.uri)).with_source(e)
                        })?;
                        self.buckets.insert(bucket, s.clone());
                        s
                    }
                };
                Job::Object(store, path)
            }
            DataTarget::Http(url) => match &self.http {
                Some(c) => Job::Http(c.clone(), url),
                None => {
                    return Err(Error::input(format!(
                        "refused: http(s) is not in allow_schemes ({})",
                        req.uri
                    )));
                }
            },
        };
        Ok((job, req))
    }
}

/// The bytes a fetched row counts for in an output batch: its size, or an image's decoded RGB
/// size predicted from its header when larger.
fn admission(bytes: &[u8]) -> u64 {
    let own = bytes.len() as u64;
    crate::decode_image::header_dims(bytes)
        .map(|(w, h)| own.max(u64::from(w) * u64::from(h) * 3))
        .unwrap_or(own)
}

/// Rows of one output batch being gathered.
struct Group {
    start: usize,
    builder: BinaryBuilder,
    mask: Vec<bool>,
    bytes: u64,
}

impl Group {
    fn new(start: usize) -> Self {
        Group {
            start,
            builder: BinaryBuilder::new(),
            mask: Vec::new(),
            bytes: 0,
        }
    }
}

#[async_trait]
impl Operator for Fetch {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.spec.column, "fetch")?;
        let reqs = requests(&column)?;
        // Resolve every row first (cheap, no IO), so refused URIs never reach a store.
        let jobs: Vec<Result<(Job, Request)>> = reqs
            .into_iter()
            .map(|r| match r {
                None => Err(Error::input("uri is null")),
                Some(r) => self.job(r),
            })
            .collect();
        let io = ctx.io().clone();
        let max = self.max_size;
        let mut results = futures::stream::iter(jobs)
            .map(|job| run_job(io.clone(), job, max))
            .buffered(self.spec.max_concurrency);
        let inputs = crate::common::RowInputs::new(&batch);
        let mut group = Group::new(0);
        let mut row = 0;
        while let Some(r) = results.next().await {
            match r {
                Ok(b) => {
                    let weight = admission(&b);
                    if !group.mask.iter().all(|k| !k)
                        && group.bytes.saturating_add(weight) > self.max_batch_bytes
                    {
                        let next = Group::new(row);
                        self.emit(&batch, std::mem::replace(&mut group, next), out)?;
                    }
                    group.bytes = group.bytes.saturating_add(weight);
                    group.builder.append_value(&b);
                    group.mask.push(true);
                }
                Err(e) if e.kind() == weir_types::ErrorKind::Internal => return Err(e),
                Err(e) => {
                    let uri = inputs.get(row).or_else(|| uri_at(&column, row));
                    ctx.bad_row(e, uri, Some(format!("row {row}")), None)?;
                    group.mask.push(false);
                }
            }
            row += 1;
        }
        self.emit(&batch, group, out)
    }
}

impl Fetch {
    /// Emits the rows of `group` that were fetched, with their other columns.
    fn emit(&self, batch: &RecordBatch, mut group: Group, out: &mut Emitter) -> Result<()> {
        let n = group.mask.len();
        if n == 0 || group.mask.iter().all(|k| !k) {
            return Ok(());
        }
        let rows = batch.slice(group.start, n);
        let keep = group
            .mask
            .iter()
            .any(|k| !k)
            .then(|| BooleanArray::from(std::mem::take(&mut group.mask)));
        let col: ArrayRef = Arc::new(group.builder.finish());
        out.emit(crate::common::assemble(
            &rows,
            keep.as_ref(),
            &self.schema,
            &self.spec.output,
            col,
        )?);
        Ok(())
    }
}

fn uri_at(column: &ArrayRef, row: usize) -> Option<String> {
    let a = match column.data_type() {
        DataType::Struct(_) => column.as_struct().column_by_name("uri")?.clone(),
        _ => column.clone(),
    };
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Some(a.as_string_view().value(row).to_owned()),
        _ => None,
    }
}
