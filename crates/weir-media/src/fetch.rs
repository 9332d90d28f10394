//! `fetch`: materialises the bytes behind a column of URIs (or `weir.object_ref` handles) through
//! object_store: local paths and `file://` by default, `s3://` (configured from the `AWS_*`
//! environment), `http(s)://` when allowed. Requests run concurrently on the IO runtime, at most
//! `max_concurrency` at a time, and the output keeps the row order. Missing, refused and too-large
//! objects are bad rows naming the URI.

use crate::common::{column_index, parse_size, schema_with};
use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use url::Url;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
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
    vec!["file".into(), "s3".into()]
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
    /// URI schemes that may be fetched (`file` covers plain paths; also `s3`, `http`, `https`).
    /// Default `["file", "s3"]`.
    #[serde(default = "default_schemes")]
    pub allow_schemes: Vec<String>,
    /// Allow http(s) hosts given as link-local (169.254.0.0/16, cloud metadata), loopback or private
    /// addresses. Default false.
    #[serde(default)]
    pub allow_private: bool,
}

impl Default for FetchSpec {
    fn default() -> Self {
        FetchSpec {
            column: default_uri(),
            output: default_bytes(),
            max_concurrency: default_concurrency(),
            max_size: default_max_size(),
            allow_schemes: default_schemes(),
            allow_private: false,
        }
    }
}

const KNOWN_SCHEMES: &[&str] = &["file", "s3", "http", "https"];

impl FetchSpec {
    fn check(&self) -> Result<u64> {
        if self.max_concurrency == 0 {
            return Err(Error::config("fetch: max_concurrency must be at least 1"));
        }
        for s in &self.allow_schemes {
            if !KNOWN_SCHEMES.contains(&s.to_ascii_lowercase().as_str()) {
                return Err(Error::config(format!(
                    "fetch: scheme '{s}' in allow_schemes is not supported ({})",
                    KNOWN_SCHEMES.join(", ")
                )));
            }
        }
        parse_size(&self.max_size, "fetch: max_size")
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
        let max_size = self.check()?;
        Ok(Box::new(Fetch {
            schema: self.output_schema(input)?,
            spec: self.clone(),
            max_size,
            stores: HashMap::new(),
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "fetch {} -> {} ({} at a time, max {}, schemes {})",
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
    stores: HashMap<String, Arc<dyn ObjectStore>>,
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

/// Where a URI points.
enum Location {
    Local(std::path::PathBuf),
    Store(String, Url),
}

/// Whether `ip` is link-local, loopback, private or otherwise not a public internet address.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64 // 100.64/10 (CGNAT, Alibaba metadata)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private_address(IpAddr::V4(v4)))
        }
    }
}

fn parse_location(uri: &str, spec: &FetchSpec) -> Result<Location> {
    let allowed = |scheme: &str| {
        spec.allow_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
    };
    if !uri.contains("://") {
        if !allowed("file") {
            return Err(Error::input(format!(
                "local path '{uri}' refused: 'file' is not in allow_schemes"
            )));
        }
        return Ok(Location::Local(uri.into()));
    }
    let url = Url::parse(uri).map_err(|e| Error::input(format!("invalid uri '{uri}': {e}")))?;
    let scheme = url.scheme().to_ascii_lowercase();
    if !allowed(&scheme) {
        return Err(Error::input(format!(
            "uri '{uri}' refused: scheme '{scheme}' is not in allow_schemes ({})",
            spec.allow_schemes.join(", ")
        )));
    }
    match scheme.as_str() {
        "file" => {
            let p = url
                .to_file_path()
                .map_err(|_| Error::input(format!("invalid file uri '{uri}'")))?;
            Ok(Location::Local(p))
        }
        "s3" | "http" | "https" => {
            if scheme != "s3" && !spec.allow_private {
                let blocked = match url.host() {
                    Some(url::Host::Ipv4(ip)) => is_private_address(IpAddr::V4(ip)),
                    Some(url::Host::Ipv6(ip)) => is_private_address(IpAddr::V6(ip)),
                    Some(url::Host::Domain(d)) => {
                        let d = d.to_ascii_lowercase();
                        d == "localhost" || d == "metadata.google.internal" || d == "metadata"
                    }
                    None => true,
                };
                if blocked {
                    return Err(Error::input(format!(
                        "uri '{uri}' refused: its host is a link-local, metadata, loopback or private address (set allow_private: true to allow)"
                    )));
                }
            }
            let key = format!("{}://{}", scheme, url.authority());
            Ok(Location::Store(key, url))
        }
        other => Err(Error::input(format!(
            "uri '{uri}': scheme '{other}' is not supported"
        ))),
    }
}

fn build_store(scheme: &str, url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let base = &url[..url::Position::BeforePath];
    let err = |e: object_store::Error| {
        Error::config(format!("fetch: cannot set up an object store for '{base}'")).with_source(e)
    };
    Ok(match scheme {
        "s3" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(base)
                .build()
                .map_err(err)?,
        ),
        _ => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(base)
                .build()
                .map_err(err)?,
        ),
    })
}

fn store_error(uri: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::input(format!("object not found: {uri}")).with_source(e)
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::InvalidPath { .. } => {
            Error::input(format!("cannot read {uri}")).with_source(e)
        }
        other => Error::io(format!("fetching {uri} failed")).with_source(other),
    }
}

/// Whether a fetch error is about this row only (a bad row) rather than the store (a job error).
fn is_row_error(e: &Error) -> bool {
    e.kind() == weir_types::ErrorKind::InvalidInput
}

async fn fetch_one(
    store: Arc<dyn ObjectStore>,
    path: Option<StorePath>,
    local: Option<std::path::PathBuf>,
    req: Request,
    max: u64,
) -> Result<Bytes> {
    let uri = &req.uri;
    let path = match (path, local) {
        (Some(p), _) => p,
        (None, Some(l)) => {
            let abs = std::path::absolute(&l)
                .map_err(|e| Error::input(format!("invalid path {uri}")).with_source(e))?;
            StorePath::from_absolute_path(&abs)
                .map_err(|e| Error::input(format!("invalid path {uri}")).with_source(e))?
        }
        (None, None) => return Err(Error::internal("fetch: request without a location")),
    };
    let too_large = |size: u64| {
        Error::input(format!(
            "object {uri} is {size} bytes, more than max_size {max} bytes"
        ))
    };
    match (req.offset, req.length) {
        (0, None) => {
            let r = store.get(&path).await.map_err(|e| store_error(uri, e))?;
            if r.meta.size > max {
                return Err(too_large(r.meta.size));
            }
            r.bytes().await.map_err(|e| store_error(uri, e))
        }
        (off, Some(len)) => {
            if len > max {
                return Err(too_large(len));
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
                range: Some(GetRange::Offset(off)),
                ..Default::default()
            };
            let r = store
                .get_opts(&path, opts)
                .await
                .map_err(|e| store_error(uri, e))?;
            let len = r.range.end.saturating_sub(r.range.start);
            if len > max {
                return Err(too_large(len));
            }
            r.bytes().await.map_err(|e| store_error(uri, e))
        }
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
        let local: Arc<dyn ObjectStore> = self
            .stores
            .entry("file://".into())
            .or_insert_with(|| Arc::new(LocalFileSystem::new()))
            .clone();
        // Resolve every row first (cheap, no IO), so refused URIs never reach a store.
        let mut jobs = Vec::with_capacity(reqs.len());
        for req in reqs {
            let job = match req {
                None => Err(Error::input("uri is null")),
                Some(req) => match parse_location(&req.uri, &self.spec) {
                    Err(e) => Err(e),
                    Ok(Location::Local(p)) => Ok((local.clone(), None, Some(p), req)),
                    Ok(Location::Store(key, url)) => {
                        let store = match self.stores.get(&key) {
                            Some(s) => s.clone(),
                            None => {
                                let s = build_store(url.scheme(), &url)?;
                                self.stores.insert(key, s.clone());
                                s
                            }
                        };
                        let path = StorePath::from_url_path(url.path()).map_err(|e| {
                            Error::input(format!("invalid uri '{}'", req.uri)).with_source(e)
                        });
                        path.map(|p| (store, Some(p), None, req))
                    }
                },
            };
            jobs.push(job);
        }
        let io = ctx.io().clone();
        let max = self.max_size;
        let futures: Vec<FetchFuture> = jobs
            .into_iter()
            .map(|job| Box::pin(run_job(io.clone(), job, max)) as FetchFuture)
            .collect();
        let results: Vec<Result<Bytes>> = futures::stream::iter(futures)
            .buffered(self.spec.max_concurrency)
            .collect()
            .await;
        let inputs = crate::common::RowInputs::new(&batch);
        let mut builder = BinaryBuilder::with_capacity(
            results.len(),
            results
                .iter()
                .map(|r| r.as_ref().map_or(0, |b| b.len()))
                .sum(),
        );
        let mut mask = Vec::with_capacity(results.len());
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(b) => {
                    builder.append_value(&b);
                    mask.push(true);
                }
                Err(e) if is_row_error(&e) => {
                    let uri = inputs.get(row).or_else(|| uri_at(&column, row));
                    ctx.bad_row(e, uri, Some(format!("row {row}")), None)?;
                    mask.push(false);
                }
                Err(e) => return Err(e),
            }
        }
        let keep = mask.iter().any(|k| !k).then(|| BooleanArray::from(mask));
        let col: ArrayRef = Arc::new(builder.finish());
        out.emit(crate::common::assemble(
            &batch,
            keep.as_ref(),
            &self.schema,
            &self.spec.output,
            col,
        )?);
        Ok(())
    }
}

/// What one row needs: the store, its path (or a local path to resolve) and the request.
type Job = (
    Arc<dyn ObjectStore>,
    Option<StorePath>,
    Option<std::path::PathBuf>,
    Request,
);

type FetchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes>> + Send>>;

/// Runs one row's fetch as a task on the IO runtime (aborted if this future is dropped).
async fn run_job(io: tokio::runtime::Handle, job: Result<Job>, max: u64) -> Result<Bytes> {
    let (store, path, local, req) = job?;
    let mut task = AbortOnDrop(io.spawn(fetch_one(store, path, local, req, max)));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => Err(Error::internal("fetch: request task failed").with_source(e)),
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
