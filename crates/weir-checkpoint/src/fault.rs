//! Fault injection: [`FailingStore`], an `ObjectStore` wrapper that makes chosen operations fail,
//! so tests can check that a full disk or a broken network turns into a clear error and a declined
//! checkpoint rather than a crash or a corrupt restore.
//!
//! It is a test tool (named so on purpose) but public, so that the runtime's tests can inject the
//! same faults into a running job.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Which operations fail.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Writes (put, multipart, copy, rename, delete) to a path containing this text fail.
    writes: Option<String>,
    /// Reads (get, head) of a path containing this text fail.
    reads: Option<String>,
}

/// An `ObjectStore` that forwards to an inner store, except for the operations told to fail,
/// which return an error as a full disk would ("no space left on device") or, for reads, an
/// unreachable store.
///
/// ```
/// use std::sync::Arc;
/// use object_store::memory::InMemory;
/// use weir_checkpoint::FailingStore;
///
/// let store = Arc::new(FailingStore::new(Arc::new(InMemory::new())));
/// store.fail_writes_to("_MANIFEST"); // every manifest write fails from now on
/// store.heal();                      // and works again
/// ```
#[derive(Debug)]
pub struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
}

impl FailingStore {
    /// A wrapper that, until told otherwise, fails nothing.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FailingStore {
            inner,
            faults: Mutex::new(Faults::default()),
        }
    }

    /// From now on, every write to a path containing `pattern` fails (`""`: every write).
    pub fn fail_writes_to(&self, pattern: impl Into<String>) {
        self.faults().writes = Some(pattern.into());
    }

    /// From now on, every read of a path containing `pattern` fails (`""`: every read).
    pub fn fail_reads_of(&self, pattern: impl Into<String>) {
        self.faults().reads = Some(pattern.into());
    }

    /// Stops failing.
    pub fn heal(&self) {
        *self.faults() = Faults::default();
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A panic while holding this lock cannot leave `Faults` half-updated.
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_write(&self, location: &Path) -> object_store::Result<()> {
        let hit = self
            .faults()
            .writes
            .as_ref()
            .is_some_and(|p| location.as_ref().contains(p.as_str()));
        if hit {
            return Err(injected(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("no space left on device writing {location} (injected by FailingStore)"),
            )));
        }
        Ok(())
    }

    fn check_read(&self, location: &Path) -> object_store::Result<()> {
        let hit = self
            .faults()
            .reads
            .as_ref()
            .is_some_and(|p| location.as_ref().contains(p.as_str()));
        if hit {
            return Err(injected(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("connection reset reading {location} (injected by FailingStore)"),
            )));
        }
        Ok(())
    }
}

fn injected(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "FailingStore",
        source: Box::new(e),
    }
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check_write(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_write(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check_read(location)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let pattern = self.faults().writes.clone();
        match pattern {
            None => self.inner.delete_stream(locations),
            Some(p) => {
                // Fail the matching deletes, forward the rest.
                let inner = Arc::clone(&self.inner);
                locations
                    .then(move |loc| {
                        let inner = Arc::clone(&inner);
                        let p = p.clone();
                        async move {
                            let loc = loc?;
                            if loc.as_ref().contains(p.as_str()) {
                                return Err(injected(std::io::Error::other(format!(
                                    "cannot delete {loc} (injected by FailingStore)"
                                ))));
                            }
                            let mut one = inner.delete_stream(
                                futures::stream::once(async move { Ok(loc) }).boxed(),
                            );
                            match one.next().await {
                                Some(r) => r,
                                None => Err(injected(std::io::Error::other(
                                    "inner store yielded nothing for a delete",
                                ))),
                            }
                        }
                    })
                    .boxed()
            }
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check_write(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check_write(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}
