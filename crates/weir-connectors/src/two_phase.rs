//! Two-phase commit of the file sinks' output when the job takes checkpoints.
//!
//! A sink writes into hidden in-progress files. At a checkpoint barrier (`snapshot(id)`) it closes
//! the current file and *stages* every file closed since the last barrier: each is renamed to a
//! hidden staged name carrying the subtask, the checkpoint id and the run id, and listed in the
//! sink's checkpointed state with the name it will be published under. When checkpoint `id`
//! completes (`notify_checkpoint_complete(id)`) every file staged for a checkpoint `<= id` is
//! published. After a crash, the restored state lists the files staged but maybe not published;
//! they are published again on `open`, which is idempotent.
//!
//! Two layouts:
//!
//! - [`Layout::Parts`]: a directory of part files. In progress
//!   `.part-{subtask:03}-{run}-{n:05}.{ext}.inprogress`, staged
//!   `.part-{subtask:03}-{ckpt:06}-{seq:03}-{run}.{ext}.staged`, published by an atomic rename to
//!   `part-{subtask:03}-{ckpt:06}-{seq:03}-{run}.{ext}`. Published names carry the run that wrote
//!   them, so one run never overwrites another's files (`weir run` also refuses to start a fresh
//!   run into a location holding an earlier run's output, see [`OutputAt`]), and a restored job
//!   only stages checkpoints after the one it restored from.
//! - [`Layout::Append`]: one file (JSON Lines at parallelism 1, such as the dead-letter output)
//!   that grows by each checkpoint's output. A staged file records the length the target had
//!   before it (`base`); publishing truncates the target to `base`, appends the staged bytes,
//!   syncs and removes the staged file, so replaying it after a crash at any point gives the same
//!   file. The target is never shorter than what completed checkpoints published, but a reader may
//!   see a checkpoint's rows appear while they are appended.
//!
//! # Object stores
//!
//! With a [`Remote`] (an `s3://` output of the parts layout), files are written in a local spool
//! directory as above; at the barrier each closed file is *uploaded* to the hidden staged key
//! `PREFIX/.part-...-{run}.{ext}.staged` before the snapshot is acknowledged, and publishing is a
//! server-side copy to `PREFIX/part-...-{run}.{ext}` followed by deleting the staged key (both
//! idempotent: a replay after a crash finds either the staged key or the published one). Clean-up
//! on restore lists the prefix with the same rules as a local directory.
//!
//! # State
//!
//! Union entries (every instance receives every entry on restore):
//!
//! - `staged:<staged path>` → JSON [`Staged`]: a file staged and not yet published when the
//!   snapshot was taken. On restore, the entries of old subtask `s` are published by new subtask
//!   `s % parallelism`.
//! - `epoch:<subtask>` → JSON [`Epoch`]: the checkpoint id (and, for the append layout, the
//!   target's length once everything staged is published).
//!
//! # Cleaning up after a crash
//!
//! On restore each instance deletes the hidden in-progress and staged files of its own subtask
//! index (subtask 0 also those of indices at or above the new parallelism) that the restored state
//! does not list: they belong to a crashed run and their rows are replayed by the sources. Only
//! files of its own index, so no instance deletes what another instance of the running job writes.
//! For the same reason it deletes published part files of its indices whose checkpoint id is
//! above the restored one (output of checkpoints that are not being restored, e.g. after a fall
//! back to an older checkpoint), and the append layout truncates the target to the restored
//! length.

use serde::{Deserialize, Serialize};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use weir_runtime::{OperatorContext, StateSnapshot, TaskInfo};
use weir_types::{Error, Result};

/// A run id unique to this sink instance: a token of the process start plus a counter.
pub(crate) fn run_id() -> String {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let token = *TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    format!(
        "r{token:016x}{:04x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An object-store destination for the parts layout (see the module docs).
#[derive(Clone)]
pub(crate) struct Remote {
    /// The store.
    pub store: std::sync::Arc<dyn object_store::ObjectStore>,
    /// The output prefix inside it.
    pub prefix: object_store::path::Path,
    /// The output URL, for messages.
    pub url: String,
    /// The runtime that drives the store's requests (the blocking bookkeeping waits on it).
    pub handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

impl Remote {
    fn key(&self, name: &str) -> object_store::path::Path {
        self.prefix.clone().join(name)
    }

    fn err(&self, what: String, e: object_store::Error) -> Error {
        Error::io(format!("{what} in {}", self.url)).with_source(e)
    }

    /// Uploads the local file `from` as `key` (blocking).
    fn upload(&self, from: &Path, key: &object_store::path::Path) -> Result<()> {
        use object_store::ObjectStoreExt;
        let bytes = std::fs::read(from)
            .map_err(|e| io_err(format!("cannot read {}", from.display()), e))?;
        self.handle
            .block_on(self.store.put(key, bytes.into()))
            .map_err(|e| self.err(format!("cannot upload {key}"), e))?;
        Ok(())
    }

    /// Publishes `staged` as `target` by a copy and a delete (blocking); idempotent.
    fn publish(&self, staged: &str, target: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        let (staged, target) = (
            object_store::path::Path::from(staged),
            object_store::path::Path::from(target),
        );
        self.handle.block_on(async {
            match self.store.copy(&staged, &target).await {
                Ok(()) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    // Published and removed before (a replay), or lost.
                    return match self.store.head(&target).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(self.err(
                            format!("cannot publish {staged}: neither it nor {target} exists"),
                            e,
                        )),
                    };
                }
                Err(e) => return Err(self.err(format!("cannot publish {staged} as {target}"), e)),
            }
            match self.store.delete(&staged).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(format!("cannot remove {staged}"), e)),
            }
        })
    }

    /// The names (last path segment) of the objects directly under the prefix (blocking).
    fn names(&self) -> Result<Vec<String>> {
        let listed = self
            .handle
            .block_on(self.store.list_with_delimiter(Some(&self.prefix)))
            .map_err(|e| self.err(format!("cannot list {}", self.prefix), e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        let key = self.key(name);
        match self.handle.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("cannot remove {key}"), e)),
        }
    }
}

/// An object-store output: the store, the prefix and the URL.
pub(crate) type RemoteOut = (
    std::sync::Arc<dyn object_store::ObjectStore>,
    object_store::path::Path,
    String,
);

/// Where a sink of `path` writes: a local directory, or, for an object-store URL, a local spool
/// directory (under the system temp directory, named by the URL, node and subtask) and the store.
pub(crate) fn output_location(
    path: &str,
    storage: &weir_store::StorageOptions,
    info: &TaskInfo,
) -> Result<(PathBuf, Option<RemoteOut>)> {
    Ok(match weir_store::resolve(path, storage)? {
        weir_store::Location::Local(p) => (p, None),
        weir_store::Location::Store(s) => {
            let hash = format!("{path}\u{0}{}", info.node)
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            let spool = std::env::temp_dir()
                .join("weir-spool")
                .join(format!("{hash:016x}-{}", info.subtask));
            (spool, Some((s.store, s.prefix, path.to_string())))
        }
    })
}

/// Where a two-phase sink puts its files.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// Part files in a directory.
    Parts {
        /// The output directory.
        dir: PathBuf,
        /// The file extension (`parquet`).
        ext: &'static str,
    },
    /// One file, appended to at each completed checkpoint.
    Append {
        /// The output file.
        file: PathBuf,
    },
}

/// The key of a two-phase sink's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum SinkKey {
    /// A file staged and not yet published (payload: [`Staged`]).
    Staged(PathBuf),
    /// The epoch of this subtask (payload: `Epoch`).
    Epoch(u32),
}

/// A file staged for a checkpoint and not yet published: the payload of a `Staged` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Staged {
    /// The checkpoint it belongs to.
    pub checkpoint: u64,
    /// The subtask that wrote it.
    pub subtask: u32,
    /// The hidden staged file.
    pub staged: PathBuf,
    /// The published name.
    pub target: PathBuf,
    /// Append layout: the target's length before this file is appended.
    #[serde(default)]
    pub base: Option<u64>,
    /// `staged` and `target` are keys of the sink's object store ([`Remote`]).
    #[serde(default)]
    pub remote: bool,
}

/// The payload of an `epoch:` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Epoch {
    /// The checkpoint the state belongs to.
    pub checkpoint: u64,
    /// Append layout: the target's length once everything staged is published.
    #[serde(default)]
    pub length: u64,
}

/// The two-phase bookkeeping of one sink instance.
#[derive(Debug)]
pub(crate) struct TwoPhase {
    layout: Layout,
    subtask: u32,
    parallelism: u32,
    run: String,
    next_tmp: u64,
    /// Closed in-progress files, not yet staged.
    closed: Vec<PathBuf>,
    /// Staged files, not yet published, in checkpoint order.
    staged: Vec<Staged>,
    /// Append layout: the target's length once everything staged is published.
    length: u64,
    /// Parts layout on an object store: `Layout::Parts::dir` is the local spool directory.
    remote: Option<Remote>,
}

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::io(what).with_source(e)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl TwoPhase {
    pub(crate) fn new(layout: Layout, info: &TaskInfo) -> Self {
        TwoPhase {
            layout,
            subtask: info.subtask,
            parallelism: info.parallelism.max(1),
            run: run_id(),
            next_tmp: 0,
            closed: Vec::new(),
            staged: Vec::new(),
            length: 0,
            remote: None,
        }
    }

    /// The bookkeeping of a sink opening (call from `open`, inside the runtime): with `remote`,
    /// publishing to that object store (parts layout only; `dir` is the local spool), and on a
    /// fresh start (nothing restored) the staged and in-progress objects of crashed runs that this
    /// instance owns are removed.
    pub(crate) async fn open_remote(
        layout: Layout,
        info: &TaskInfo,
        remote: Option<&RemoteOut>,
        ctx: &OperatorContext,
    ) -> Result<Self> {
        let mut tp = TwoPhase::new(layout, info);
        let Some((store, prefix, url)) = remote else {
            return Ok(tp);
        };
        tp.remote = Some(Remote {
            store: store.clone(),
            prefix: prefix.clone(),
            url: url.clone(),
            handle: tokio::runtime::Handle::current(),
        });
        if ctx.restored_state().is_some() {
            return Ok(tp);
        }
        let (tp, res) = ctx
            .spawn_cpu(move || {
                let r = tp.clean(&std::collections::HashSet::new(), None);
                (tp, r)
            })
            .await?;
        res.map(|()| tp)
    }

    /// The directory the files live in.
    pub(crate) fn dir(&self) -> PathBuf {
        match &self.layout {
            Layout::Parts { dir, .. } => dir.clone(),
            Layout::Append { file } => file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }

    /// A fresh in-progress path (the caller creates the file).
    pub(crate) fn new_tmp(&mut self) -> PathBuf {
        let n = self.next_tmp;
        self.next_tmp += 1;
        match &self.layout {
            Layout::Parts { dir, ext } => dir.join(format!(
                ".part-{:03}-{}-{n:05}.{ext}.inprogress",
                self.subtask, self.run
            )),
            Layout::Append { file } => self.dir().join(format!(
                ".{}.{}-{n:05}.inprogress",
                file_name(file),
                self.run
            )),
        }
    }

    /// Takes a closed in-progress file; it is staged at the next barrier.
    pub(crate) fn closed(&mut self, tmp: PathBuf) {
        self.closed.push(tmp);
    }

    /// Stages every closed file for checkpoint `id` (blocking: renames).
    pub(crate) fn stage(&mut self, id: u64) -> Result<()> {
        for (seq, tmp) in std::mem::take(&mut self.closed).into_iter().enumerate() {
            let (staged, target, base) = match &self.layout {
                Layout::Parts { dir, ext } => {
                    let name = format!(
                        "part-{:03}-{id:06}-{seq:03}-{}.{ext}",
                        self.subtask, self.run
                    );
                    if let Some(r) = &self.remote {
                        // Uploaded now, before the snapshot is acknowledged; the local copy goes.
                        let key = r.key(&format!(".{name}.staged"));
                        r.upload(&tmp, &key)?;
                        std::fs::remove_file(&tmp)
                            .map_err(|e| io_err(format!("cannot remove {}", tmp.display()), e))?;
                        let target = PathBuf::from(r.key(&name).as_ref());
                        self.staged.push(Staged {
                            checkpoint: id,
                            subtask: self.subtask,
                            staged: PathBuf::from(key.as_ref()),
                            target,
                            base: None,
                            remote: true,
                        });
                        continue;
                    }
                    (dir.join(format!(".{name}.staged")), dir.join(name), None)
                }
                Layout::Append { file } => {
                    let size = std::fs::metadata(&tmp)
                        .map_err(|e| io_err(format!("cannot read {}", tmp.display()), e))?
                        .len();
                    let base = self.length;
                    self.length += size;
                    (
                        self.dir().join(format!(
                            ".{}.{id:06}-{seq:03}.{}.staged",
                            file_name(file),
                            self.run
                        )),
                        file.clone(),
                        Some(base),
                    )
                }
            };
            std::fs::rename(&tmp, &staged).map_err(|e| {
                io_err(
                    format!("cannot stage {} as {}", tmp.display(), staged.display()),
                    e,
                )
            })?;
            self.staged.push(Staged {
                checkpoint: id,
                subtask: self.subtask,
                staged,
                target,
                base,
                remote: false,
            });
        }
        Ok(())
    }

    /// The state at checkpoint `id`: every staged file not yet published, and the epoch.
    pub(crate) fn snapshot(&self, id: u64) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        for s in &self.staged {
            snap.push_union(&SinkKey::Staged(s.staged.clone()), enc(s)?)?;
        }
        let epoch = Epoch {
            checkpoint: id,
            length: self.length,
        };
        snap.push_union(&SinkKey::Epoch(self.subtask), enc(&epoch)?)?;
        Ok(snap)
    }

    /// Publishes every file staged for a checkpoint `<= id`, in order (blocking).
    pub(crate) fn publish_upto(&mut self, id: u64) -> Result<usize> {
        let (now, later): (Vec<Staged>, Vec<Staged>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|s| s.checkpoint <= id);
        self.staged = later;
        let n = now.len();
        for (i, s) in now.iter().enumerate() {
            if let Err(e) = self.publish_one(s) {
                // Keep what is not published yet, so a retry (or the restored state) has it.
                self.staged.splice(0..0, now[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Takes over a restored state (blocking): publishes the staged files this instance is
    /// responsible for, restores the append length and cleans up after crashed runs. Returns the
    /// number of files published.
    pub(crate) fn restore(&mut self, state: &StateSnapshot) -> Result<usize> {
        let mut staged: Vec<Staged> = Vec::new();
        let mut epoch: Option<Epoch> = None;
        for entry in state.unions::<SinkKey>() {
            let (key, bytes) = entry?;
            let corrupt =
                |e| Error::io(format!("checkpoint state entry {key:?} is corrupt")).with_source(e);
            if let SinkKey::Staged(_) = key {
                let s: Staged = serde_json::from_slice(bytes).map_err(corrupt)?;
                staged.push(s);
            } else {
                let e: Epoch = serde_json::from_slice(bytes).map_err(corrupt)?;
                if epoch.is_none_or(|old| e.checkpoint > old.checkpoint) {
                    epoch = Some(e);
                }
            }
        }
        staged.sort_by(|a, b| {
            (a.checkpoint, &a.staged, a.base).cmp(&(b.checkpoint, &b.staged, b.base))
        });
        staged.dedup();
        let listed: std::collections::HashSet<PathBuf> =
            staged.iter().map(|s| s.staged.clone()).collect();
        let mut published = 0;
        for s in staged
            .iter()
            .filter(|s| s.subtask % self.parallelism == self.subtask)
        {
            self.publish_one(s)?;
            published += 1;
        }
        if let (Layout::Append { file }, Some(e)) = (&self.layout, epoch)
            && self.subtask == 0
        {
            self.length = e.length;
            if let Ok(meta) = std::fs::metadata(file)
                && meta.len() > e.length
            {
                tracing::warn!(
                    file = %file.display(),
                    "truncating to {} bytes: the rest was published by checkpoints after {}",
                    e.length,
                    e.checkpoint
                );
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)
                    .map_err(|err| io_err(format!("cannot open {}", file.display()), err))?;
                f.set_len(e.length)
                    .map_err(|err| io_err(format!("cannot truncate {}", file.display()), err))?;
            }
        }
        self.clean(&listed, epoch.map(|e| e.checkpoint))?;
        Ok(published)
    }

    /// Publishes one staged file, locally or on the object store; idempotent.
    fn publish_one(&self, s: &Staged) -> Result<()> {
        if !s.remote {
            return publish_one(s);
        }
        let Some(r) = &self.remote else {
            return Err(Error::config(format!(
                "the restored state lists {} on an object store, but this sink writes locally",
                s.staged.display()
            )));
        };
        r.publish(&s.staged.to_string_lossy(), &s.target.to_string_lossy())
    }

    /// Whether this instance cleans up the files of `subtask`.
    fn owns(&self, subtask: u32) -> bool {
        subtask == self.subtask || (self.subtask == 0 && subtask >= self.parallelism)
    }

    fn clean(
        &self,
        listed: &std::collections::HashSet<PathBuf>,
        restored: Option<u64>,
    ) -> Result<()> {
        if let (Some(r), Layout::Parts { ext, .. }) = (&self.remote, &self.layout) {
            for name in r.names()? {
                let key = PathBuf::from(r.key(&name).as_ref());
                let leftover = (name.ends_with(".inprogress") || name.ends_with(".staged"))
                    && !listed.contains(&key)
                    && !name.contains(&self.run);
                let delete = if leftover && let Some(rest) = name.strip_prefix(".part-") {
                    leading_number(rest).is_some_and(|s| self.owns(s))
                } else if let (Some((sub, ckpt)), Some(restored)) =
                    (published_part(&name, ext), restored)
                {
                    ckpt > restored && self.owns(sub)
                } else {
                    false
                };
                if delete {
                    tracing::info!(object = %key.display(), "removing output of a crashed run");
                    r.delete(&name)?;
                }
            }
        }
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("cannot list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let leftover = (name.ends_with(".inprogress") || name.ends_with(".staged"))
                && !listed.contains(&path)
                && !name.contains(&self.run);
            let delete = match &self.layout {
                Layout::Parts { ext, .. } => {
                    if leftover && let Some(rest) = name.strip_prefix(".part-") {
                        leading_number(rest).is_some_and(|s| self.owns(s))
                    } else if let (Some((sub, ckpt)), Some(restored)) =
                        (published_part(&name, ext), restored)
                    {
                        ckpt > restored && self.owns(sub)
                    } else {
                        false
                    }
                }
                Layout::Append { file } => {
                    leftover
                        && self.subtask == 0
                        && name.starts_with(&format!(".{}.", file_name(file)))
                }
            };
            if delete {
                tracing::info!(file = %path.display(), "removing output of a crashed run");
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("cannot remove {}", path.display()), e)),
                }
            }
        }
        Ok(())
    }
}

/// The number at the start of `s` (up to the first non-digit).
fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// `(subtask, checkpoint)` of a published part file name `part-{sub}-{ckpt}-{seq}-{run}.{ext}`
/// (or `part-{sub}-{ckpt}-{seq}.{ext}`, as earlier versions named them).
fn published_part(name: &str, ext: &str) -> Option<(u32, u64)> {
    let stem = name
        .strip_prefix("part-")?
        .strip_suffix(ext)?
        .strip_suffix('.')?;
    let parts: Vec<&str> = stem.split('-').collect();
    match parts.as_slice() {
        [sub, ckpt, seq] | [sub, ckpt, seq, _] if seq.chars().all(|c| c.is_ascii_digit()) => {
            Some((sub.parse().ok()?, ckpt.parse().ok()?))
        }
        _ => None,
    }
}

/// Where a file sink publishes (a directory of part files, or one file), seen before a run
/// starts: `weir run` refuses to start a fresh run into a location that holds an earlier run's
/// published output (unless `--overwrite`, which [`clear`](OutputAt::clear)s it), and removes the
/// hidden in-progress and staged files a crashed run left there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputAt {
    /// The sink's `path`.
    pub path: PathBuf,
    /// Whether it may be one file (a `.jsonl` output); otherwise it is a directory, and a file in
    /// its place is not the sink's (the sink reports it when it cannot create its directory).
    pub one_file: bool,
    /// Object-store options, for an `s3://` path (its objects are then listed and deleted).
    pub storage: weir_store::StorageOptions,
}

/// An object-store output prefix, with a runtime of its own to wait on (for `weir run`'s checks,
/// made before the job's runtime runs anything).
struct Listing {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    rt: tokio::runtime::Runtime,
}

/// What an [`OutputAt`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Published output: the part files (`part-*`) of a directory, or a one-file output that is
    /// not empty. Other files in the directory are not the sink's and are left alone.
    pub published: Vec<PathBuf>,
    /// Hidden in-progress and staged files (`.NAME.inprogress`, `.NAME.staged`) of earlier runs.
    pub stale: Vec<PathBuf>,
}

impl OutputAt {
    fn listing(&self) -> Result<Option<Listing>> {
        let url = self.path.to_string_lossy();
        match weir_store::resolve(&url, &self.storage)? {
            weir_store::Location::Local(_) => Ok(None),
            weir_store::Location::Store(s) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| io_err("cannot start a runtime".into(), e))?;
                Ok(Some(Listing {
                    store: s.store,
                    prefix: s.prefix,
                    rt,
                }))
            }
        }
    }

    /// Lists what the location holds (blocking). A missing location holds nothing. Objects of an
    /// object store are given as their keys.
    pub fn survey(&self) -> Result<Survey> {
        let path = &self.path;
        let mut out = Survey::default();
        let is_stale =
            |n: &str| n.starts_with('.') && (n.ends_with(".inprogress") || n.ends_with(".staged"));
        if let Some(l) = self.listing()? {
            let listed = l
                .rt
                .block_on(l.store.list_with_delimiter(Some(&l.prefix)))
                .map_err(|e| Error::io(format!("cannot list {}", path.display())).with_source(e))?;
            for m in listed.objects {
                let name = m.location.filename().unwrap_or_default().to_string();
                if name.starts_with(".part-") && is_stale(&name) {
                    out.stale.push(PathBuf::from(m.location.as_ref()));
                } else if name.starts_with("part-") {
                    out.published.push(PathBuf::from(m.location.as_ref()));
                }
            }
        } else if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| io_err(format!("cannot list {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| io_err(format!("cannot list {}", path.display()), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".part-") && is_stale(&name) {
                    out.stale.push(entry.path());
                } else if name.starts_with("part-") {
                    out.published.push(entry.path());
                }
            }
        } else if self.one_file {
            if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                out.published.push(path.clone());
            }
            let own = format!(".{}.", file_name(path));
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if let Ok(entries) = std::fs::read_dir(parent) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&own) && is_stale(&name) {
                        out.stale.push(entry.path());
                    }
                }
            }
        }
        out.published.sort();
        out.stale.sort();
        Ok(out)
    }

    /// Removes the stale in-progress and staged files (blocking); returns how many.
    pub fn clean_stale(&self) -> Result<usize> {
        let stale = self.survey()?.stale;
        self.remove_all(&stale)?;
        Ok(stale.len())
    }

    fn remove_all(&self, paths: &[PathBuf]) -> Result<()> {
        if let Some(l) = self.listing()? {
            use object_store::ObjectStoreExt;
            for p in paths {
                let key = object_store::path::Path::from(p.to_string_lossy().as_ref());
                match l.rt.block_on(l.store.delete(&key)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(Error::io(format!("cannot remove {key}")).with_source(e));
                    }
                }
            }
            return Ok(());
        }
        for p in paths {
            if !p.is_dir() {
                remove(p)?;
            }
        }
        Ok(())
    }

    /// Removes everything published and stale (blocking): `--overwrite`. The directory itself and
    /// files that are not the sink's are kept.
    pub fn clear(&self) -> Result<usize> {
        let s = self.survey()?;
        let all: Vec<PathBuf> = s.published.into_iter().chain(s.stale).collect();
        self.remove_all(&all)?;
        Ok(all.len())
    }
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("cannot remove {}", p.display()), e)),
    }
}

/// Publishes one staged file; idempotent.
fn publish_one(s: &Staged) -> Result<()> {
    match s.base {
        None => match std::fs::rename(&s.staged, &s.target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && s.target.exists() => Ok(()),
            Err(e) => Err(io_err(
                format!(
                    "cannot publish {} as {}",
                    s.staged.display(),
                    s.target.display()
                ),
                e,
            )),
        },
        Some(base) => {
            let mut src = match std::fs::File::open(&s.staged) {
                Ok(f) => f,
                // Appended and removed before: nothing left to do.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(format!("cannot open {}", s.staged.display()), e)),
            };
            let target = &s.target;
            let mut dst = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map_err(|e| io_err(format!("cannot open {}", target.display()), e))?;
            dst.set_len(base)
                .map_err(|e| io_err(format!("cannot truncate {}", target.display()), e))?;
            dst.seek(std::io::SeekFrom::Start(base))
                .map_err(|e| io_err(format!("cannot seek in {}", target.display()), e))?;
            std::io::copy(&mut src, &mut dst)
                .map_err(|e| io_err(format!("cannot append to {}", target.display()), e))?;
            dst.flush()
                .and_then(|()| dst.sync_data())
                .map_err(|e| io_err(format!("cannot sync {}", target.display()), e))?;
            std::fs::remove_file(&s.staged)
                .map_err(|e| io_err(format!("cannot remove {}", s.staged.display()), e))
        }
    }
}

/// Runs `f` on the [`TwoPhase`] in `slot` on a blocking thread (IO), putting it back afterwards.
/// Does nothing (returns `None`) when `slot` is empty, i.e. the job does not checkpoint.
pub(crate) async fn blocking<R: Send + 'static>(
    slot: &mut Option<TwoPhase>,
    ctx: &OperatorContext,
    f: impl FnOnce(&mut TwoPhase) -> Result<R> + Send + 'static,
) -> Result<Option<R>> {
    let Some(mut tp) = slot.take() else {
        return Ok(None);
    };
    let (tp, res) = ctx
        .spawn_cpu(move || {
            let r = f(&mut tp);
            (tp, r)
        })
        .await?;
    *slot = Some(tp);
    res.map(Some)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::internal("cannot encode sink state").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subtask: u32, parallelism: u32) -> TaskInfo {
        TaskInfo {
            node: "sink".into(),
            subtask,
            parallelism,
            max_parallelism: 128,
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            published_part("part-002-000017-001.parquet", "parquet"),
            Some((2, 17))
        );
        assert_eq!(
            published_part("part-002-000017-001-r0123abcd.parquet", "parquet"),
            Some((2, 17))
        );
        assert_eq!(published_part("part-002-00017.parquet", "parquet"), None);
        assert_eq!(leading_number("012-abc"), Some(12));
    }

    #[test]
    fn append_publishing_is_idempotent() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir").with_source(e))?;
        let file = dir.path().join("dead.jsonl");
        let mut tp = TwoPhase::new(Layout::Append { file: file.clone() }, &info(0, 1));
        for (id, text) in [(1, "a\n"), (2, "b\nc\n")] {
            let tmp = tp.new_tmp();
            std::fs::write(&tmp, text).map_err(|e| Error::io("write").with_source(e))?;
            tp.closed(tmp);
            tp.stage(id)?;
        }
        let state = tp.snapshot(2)?;
        tp.publish_upto(1)?;
        // A crash now: checkpoint 1 published, 2 staged. Replaying everything listed in the
        // state of checkpoint 2 (including 1, staged when it was taken) gives the same file.
        let mut again = TwoPhase::new(Layout::Append { file: file.clone() }, &info(0, 1));
        assert_eq!(again.restore(&state)?, 2);
        let mut third = TwoPhase::new(Layout::Append { file: file.clone() }, &info(0, 1));
        third.restore(&state)?;
        let got = std::fs::read_to_string(&file).map_err(|e| Error::io("read").with_source(e))?;
        assert_eq!(got, "a\nb\nc\n");
        let hidden = std::fs::read_dir(dir.path())
            .map_err(|e| Error::io("list").with_source(e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(hidden, 0);
        Ok(())
    }
}
