//! The checkpoint store: writes state files and manifests, finds the newest checkpoint that
//! verifies, reads state back, lists and prunes checkpoints. The only module of this crate that
//! does IO; it works over any `object_store` backend (a local directory by default, S3 in
//! production).
//!
//! # Layout
//!
//! ```text
//! <root>/chk-0000000012/map-0.state     one file per subtask that has state, written first
//! <root>/chk-0000000012/map-1.state
//! <root>/chk-0000000012/_MANIFEST       written last: its presence makes checkpoint 12 complete
//! <root>/logs/<node>/…                   objects a node keeps across checkpoints (LogStore)
//! ```
//!
//! Each task writes its own state files ([`CheckpointStore::encode_state`], then
//! [`CheckpointStore::write_encoded`]) and acknowledges the checkpoint with their
//! [`FileEntry`]s; the coordinator writes only the manifest. On restore each task reads its own
//! share ([`CheckpointStore::read_subtask_state`]). A subtask whose state is empty writes no file.
//!
//! Folder names are `chk-` and the id in at least 10 digits, so they sort by id. A state file is
//! named after its node and subtask (`<node>-<subtask>.state`); node names are escaped so that any
//! name gives a safe, unique file name (letters, digits, `_`, `-` and non-leading `.` are kept;
//! every other byte is written `=XX` in hex). The file's content is a
//! [`StateSnapshot`] in the binary format of [`crate::state`].
//!
//! # Contract
//!
//! - **Atomic objects.** The backend writes each object whole or not at all (true of S3 and of
//!   `object_store`'s local file system, which writes a temporary file and renames it). A crash
//!   mid-checkpoint therefore leaves a folder without a manifest, or with one that does not verify.
//! - **Complete = verified.** A checkpoint is complete when its `_MANIFEST` parses, its own
//!   checksum matches, its id matches the folder, and every file it lists exists with the listed
//!   size and checksum. [`CheckpointStore::latest_complete`] checks all of it (reading every
//!   file); [`CheckpointStore::list`] checks everything but the file checksums (sizes come from
//!   the listing), so that it stays cheap for large checkpoints.
//! - **Errors.** Every failed read, write, list or delete is an error of kind `Io` naming the path
//!   and the store, with the backend's error as its cause, so the caller can decline that
//!   checkpoint (on write) or stop (on read) and go on. A damaged checkpoint found while looking
//!   for the newest complete one is *skipped with a reason*, not an error; but a failure to read
//!   (a network error) is an error: falling back to an older checkpoint because the store was
//!   briefly unreachable would throw away progress that sinks may already have published.
//! - **Retention.** See [`CheckpointStore::retain`]: the newest checkpoint that fully verifies
//!   (the one a restore would use) and every folder newer than it are never deleted.
//! - **One writer.** One job's coordinator writes under a root. Object sizes are limited by the
//!   backend's single PUT (5 GiB on S3) per state file.

use crate::manifest::{Checksum, FileEntry, Manifest, PartRef};
use crate::state::{StateKey, StateSnapshot, redistribute, state_for_subtask};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use weir_types::key_group::subtask_of_key_group;
use weir_types::{CheckpointId, Error, ErrorKind, Result};

/// The name of the manifest object inside a checkpoint folder.
pub const MANIFEST_NAME: &str = "_MANIFEST";

const FOLDER_PREFIX: &str = "chk-";
/// The folder, under the root, of the objects nodes keep across checkpoints.
const LOGS_FOLDER: &str = "logs";
/// How many files are read or verified at once.
const IO_CONCURRENCY: usize = 8;

/// A checkpoint passed over by [`CheckpointStore::latest_complete`], and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCheckpoint {
    /// The checkpoint's id.
    pub id: CheckpointId,
    /// Why it cannot be restored, e.g. `file map-0.state checksum mismatch (...)`.
    pub reason: String,
}

impl fmt::Display for SkippedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkpoint {} skipped: {}", self.id, self.reason)
    }
}

/// The answer of [`CheckpointStore::latest_complete`]: the newest checkpoint that verifies (if
/// any), and every newer one that was skipped, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestComplete {
    /// The manifest of the newest complete checkpoint; `None` when there is none.
    pub manifest: Option<Manifest>,
    /// The newer checkpoints that were skipped, newest first, each with its reason.
    pub skipped: Vec<SkippedCheckpoint>,
}

/// One checkpoint folder as shown by `weir checkpoints list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint's id.
    pub id: CheckpointId,
    /// Whether the manifest is present and verifies and every listed file is present with its
    /// size (file checksums are not read; see the module docs).
    pub complete: bool,
    /// Total bytes of all objects in the folder.
    pub size: u64,
    /// The manifest's `created_at_ms`; without a readable manifest, the newest object's
    /// modification time (ms since the Unix epoch); `None` for an empty folder.
    pub created_at_ms: Option<u64>,
    /// Why the checkpoint is not complete (`None` when complete).
    pub problem: Option<String>,
}

/// A state file encoded by [`CheckpointStore::encode_state`] (or an incremental
/// [`Tracker`](crate::incremental::Tracker)), not yet written.
#[derive(Debug, Clone)]
pub struct EncodedState {
    /// Its manifest entry.
    pub entry: FileEntry,
    bytes: Bytes,
}

impl EncodedState {
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Objects one node keeps beside its checkpoints, across them: `<root>/logs/<node>/<name>`. The
/// `infer` operator keeps its results log here, so that a restore on another machine finds it.
/// Checkpoint folders, [`CheckpointStore::retain`] and [`CheckpointStore::list`] never touch
/// these objects; the node deletes what it no longer needs.
///
/// Names are `/`-free object names chosen by the node. Each object is written whole
/// (`put`), never appended to, so a reader sees it whole or not at all.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl LogStore {
    /// A log store at `prefix` of `store` (tests; jobs get theirs from
    /// [`CheckpointStore::log_store`]).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        LogStore { store, prefix }
    }

    fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    fn io_error(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        Error::io(format!("{what} {path} in {}", self.store)).with_source(e)
    }

    /// Writes object `name` (replacing one of that name).
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.io_error("cannot write", &path, e))?;
        Ok(())
    }

    /// Reads object `name`; `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let path = self.path(name);
        let result = match self.store.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io_error("cannot read", &path, e)),
        }
    }

    /// The names of every object, sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.io_error("cannot list", &self.prefix, e))?;
        let mut names: Vec<String> = objects
            .into_iter()
            .filter_map(|m| {
                let mut rest = m.location.prefix_match(&self.prefix)?;
                let first = rest.next()?;
                rest.next().is_none().then(|| first.as_ref().to_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes object `name`; deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io_error("cannot delete", &path, e)),
        }
    }
}

/// Writes, verifies, reads, lists and prunes checkpoints under one root of an object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl CheckpointStore {
    /// A store under `root` of `store` (an empty `root` means the store's top level).
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        CheckpointStore { store, root }
    }

    /// A store in the local directory `dir`, created if missing.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(format!(
                "cannot create checkpoint directory {}",
                dir.display()
            ))
            .with_source(e)
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| {
                Error::io(format!(
                    "cannot open checkpoint directory {}",
                    dir.display()
                ))
                .with_source(e)
            })?
            // Remove folders left empty by `abort` and `retain`.
            .with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs), Path::default()))
    }

    /// A store at `location`: a plain local path (relative or absolute), `file:///abs/dir` or
    /// `s3://bucket/prefix`, resolved by `weir_store::resolve` under its one credential policy:
    /// the `AWS_*` environment variables, then `options` (object_store keys such as
    /// `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`), which win.
    ///
    /// Errors (kind `Config`) on a URL that cannot be parsed or whose scheme is not supported.
    pub fn open<I, K, V>(location: &str, options: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let options = weir_store::StorageOptions::from_pairs(
            options.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v)),
        );
        match weir_store::resolve(location, &options)? {
            weir_store::Location::Local(dir) => Self::local(dir),
            weir_store::Location::Store(s) => Ok(Self::new(s.store, s.prefix)),
        }
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The folder of checkpoint `id`, relative to the store's top level.
    pub fn folder(&self, id: CheckpointId) -> Path {
        self.root.clone().join(folder_name(id))
    }

    /// The name (relative to the checkpoint folder) of the state file of `subtask` of `node`.
    pub fn state_file_name(node: &str, subtask: u32) -> String {
        format!("{}-{subtask}.state", escape_node(node))
    }

    /// Encodes `state` as the file of `subtask` of `node`, with its manifest entry (the checksum
    /// is over the encoded bytes). Pure CPU work, proportional to the state's size: run it where
    /// blocking is allowed.
    pub fn encode_state(node: &str, subtask: u32, state: &StateSnapshot) -> EncodedState {
        let bytes = Bytes::from(state.encode());
        EncodedState {
            entry: FileEntry::new(
                subtask,
                Self::state_file_name(node, subtask),
                bytes.len() as u64,
                Checksum::of(&bytes),
            ),
            bytes,
        }
    }

    /// Writes an encoded state file into checkpoint `id`; returns its manifest entry.
    ///
    /// Errors (kind `Io`, naming the path) when the write fails: decline checkpoint `id`.
    pub async fn write_encoded(&self, id: CheckpointId, state: EncodedState) -> Result<FileEntry> {
        let path = object_path(&self.folder(id), &state.entry.path);
        self.store
            .put(&path, PutPayload::from(state.bytes))
            .await
            .map_err(|e| self.io_error("cannot write checkpoint file", &path, e))?;
        Ok(state.entry)
    }

    /// Encodes `state` and writes it as the file of `subtask` of `node` in checkpoint `id`
    /// ([`encode_state`](Self::encode_state) then [`write_encoded`](Self::write_encoded)).
    ///
    /// Errors (kind `Io`, naming the path) when the write fails: decline checkpoint `id`.
    pub async fn write_state(
        &self,
        id: CheckpointId,
        node: &str,
        subtask: u32,
        state: &StateSnapshot,
    ) -> Result<FileEntry> {
        self.write_encoded(id, Self::encode_state(node, subtask, state))
            .await
    }

    /// The store of the objects `node` keeps across checkpoints (see [`LogStore`]).
    pub fn log_store(&self, node: &str) -> LogStore {
        LogStore {
            store: self.store.clone(),
            prefix: self.root.clone().join(LOGS_FOLDER).join(escape_node(node)),
        }
    }

    /// Writes the manifest of `manifest.checkpoint_id`, which makes that checkpoint complete. Call
    /// it only after every state file it lists was written.
    ///
    /// Errors (kind `Internal`) when the manifest breaks [`Manifest::check`], or (kind `Io`,
    /// naming the path) when the write fails: decline the checkpoint.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let json = manifest.to_json()?;
        let path = self.folder(manifest.checkpoint_id).join(MANIFEST_NAME);
        self.store
            .put(&path, PutPayload::from(json))
            .await
            .map_err(|e| self.io_error("cannot write checkpoint manifest", &path, e))?;
        Ok(())
    }

    /// The ids of all checkpoint folders that hold at least one object, ascending.
    pub async fn ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self.list_folders().await?.into_keys().collect())
    }

    /// The newest checkpoint that fully verifies (manifest checksum, id, and every file's size and
    /// checksum, reading every file), with the newer ones that were skipped and why.
    ///
    /// Errors (kind `Io`) only when the store cannot be listed or read; a missing, torn or corrupt
    /// manifest or file is a reason to skip, not an error.
    pub async fn latest_complete(&self) -> Result<LatestComplete> {
        let mut skipped = Vec::new();
        for id in self.ids().await?.into_iter().rev() {
            match self.verify(id).await? {
                Ok(manifest) => {
                    return Ok(LatestComplete {
                        manifest: Some(manifest),
                        skipped,
                    });
                }
                Err(reason) => skipped.push(SkippedCheckpoint { id, reason }),
            }
        }
        Ok(LatestComplete {
            manifest: None,
            skipped,
        })
    }

    /// Fully verifies checkpoint `id`: `Ok(Ok(manifest))` when complete, `Ok(Err(reason))` when
    /// incomplete or damaged, `Err` when the store could not be read.
    pub async fn verify(&self, id: CheckpointId) -> Result<std::result::Result<Manifest, String>> {
        let manifest = match self.read_manifest(id).await? {
            Ok(m) => m,
            Err(reason) => return Ok(Err(reason)),
        };
        let checks = futures::stream::iter(all_files(&manifest))
            .map(|(at, f)| {
                let path = object_path(&self.folder(at), &f.path);
                async move {
                    let got = self.get_optional(&path).await?;
                    Ok::<_, Error>(file_problem(&f, got.as_deref()).map(|p| {
                        if at == id {
                            p
                        } else {
                            format!("{p} (in checkpoint {at}, which this one refers to)")
                        }
                    }))
                }
            })
            .buffered(IO_CONCURRENCY);
        futures::pin_mut!(checks);
        while let Some(problem) = checks.next().await {
            if let Some(reason) = problem? {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(manifest))
    }

    /// Reads the state of `subtask` of `node` from a checkpoint, verifying its size and checksum.
    /// A subtask (or node) without a file in the manifest had no state: an empty snapshot.
    ///
    /// Errors (kind `Io`) when the file cannot be read, or is missing or damaged.
    pub async fn read_state(
        &self,
        manifest: &Manifest,
        node: &str,
        subtask: u32,
    ) -> Result<StateSnapshot> {
        match manifest.file(node, subtask) {
            None => Ok(StateSnapshot::new()),
            Some(f) => {
                self.read_entry(manifest.checkpoint_id, f, Wanted::All)
                    .await
            }
        }
    }

    /// The state new subtask `subtask` of `node` restores from at `new_parallelism`: its key
    /// groups and every union entry, from every file of the node (see [`state_for_subtask`]).
    /// Empty when the node wrote no state.
    ///
    /// Errors (kind `Io`) when a file cannot be read, or is missing or damaged.
    pub async fn read_subtask_state(
        &self,
        manifest: &Manifest,
        node: &str,
        new_parallelism: u32,
        subtask: u32,
    ) -> Result<StateSnapshot> {
        let wanted = Wanted::Subtask {
            max: manifest.max_parallelism,
            parallelism: new_parallelism,
            subtask,
        };
        let old = self.read_node(manifest, node, wanted).await?;
        state_for_subtask(old, new_parallelism, manifest.max_parallelism, subtask)
            .map_err(|e| e.in_operator(node))
    }

    /// Every file of `node` as `(old subtask, state)`, references resolved; referenced files none
    /// of whose key groups `wanted` are not read.
    async fn read_node(
        &self,
        manifest: &Manifest,
        node: &str,
        wanted: Wanted,
    ) -> Result<Vec<(u32, StateSnapshot)>> {
        let files: Vec<FileEntry> = manifest
            .node(node)
            .map(|n| n.files.clone())
            .unwrap_or_default();
        let id = manifest.checkpoint_id;
        futures::stream::iter(files)
            .map(|f| async move {
                Ok::<_, Error>((f.subtask, self.read_entry(id, &f, wanted).await?))
            })
            .buffered(IO_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The state of one file entry of checkpoint `id`: its own file, then the keyed entries of
    /// every file it refers to (each verified by its size and checksum) for the key groups it
    /// takes from there. A referenced file none of whose key groups are `wanted` is not read.
    async fn read_entry(
        &self,
        id: CheckpointId,
        f: &FileEntry,
        wanted: Wanted,
    ) -> Result<StateSnapshot> {
        let mut state = self.read_file(id, f).await?;
        if f.refs.is_empty() {
            return Ok(state);
        }
        let refs: Vec<&PartRef> = f
            .refs
            .iter()
            .filter(|r| r.key_groups.iter().any(|&kg| wanted.wants(kg)))
            .collect();
        // Sequentially: a file has few references (at most `full_every - 1` checkpoints back),
        // and the node's files are read concurrently.
        let mut taken = Vec::with_capacity(refs.len());
        for r in &refs {
            let entry = FileEntry::new(f.subtask, r.path.clone(), r.size, r.checksum);
            let old = self.read_file(r.checkpoint, &entry).await.map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "checkpoint {id}: file {} refers to file {} of checkpoint {}",
                        f.path, r.path, r.checkpoint
                    ),
                )
                .with_source(e)
            })?;
            taken.push(old);
        }
        let own: BTreeSet<u32> = state
            .entries
            .iter()
            .filter_map(|e| match e.key {
                StateKey::KeyGroup(kg) => Some(kg),
                StateKey::Union(_) => None,
            })
            .collect();
        for (r, old) in refs.into_iter().zip(taken) {
            let groups: BTreeSet<u32> = r.key_groups.iter().copied().collect();
            if let Some(kg) = groups.intersection(&own).next() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "checkpoint {id}: file {} holds key group {kg} and also refers to it in                          checkpoint {}",
                        f.path, r.checkpoint
                    ),
                ));
            }
            state.entries.extend(
                old.entries
                    .into_iter()
                    .filter(|e| matches!(e.key, StateKey::KeyGroup(kg) if groups.contains(&kg))),
            );
        }
        Ok(state)
    }

    /// Reads every state file of `node` and [`redistribute`]s it to `new_parallelism` subtasks
    /// (index = new subtask), under the manifest's `max_parallelism`.
    pub async fn restore_node(
        &self,
        manifest: &Manifest,
        node: &str,
        new_parallelism: u32,
    ) -> Result<Vec<StateSnapshot>> {
        let old = self.read_node(manifest, node, Wanted::All).await?;
        redistribute(old, new_parallelism, manifest.max_parallelism)
            .map_err(|e| e.in_operator(node))
    }

    /// Every checkpoint folder, newest first, with its state (see [`CheckpointInfo`]).
    pub async fn list(&self) -> Result<Vec<CheckpointInfo>> {
        let folders = self.list_folders().await?;
        let mut infos = Vec::with_capacity(folders.len());
        let mut referenced: BTreeSet<(CheckpointId, String)> = BTreeSet::new();
        for (id, objects) in folders.iter().rev() {
            let (id, objects) = (*id, objects.clone());
            let size = objects.values().map(|o| o.size).sum();
            let newest = objects
                .values()
                .map(|o| o.last_modified.timestamp_millis())
                .max()
                .and_then(|ms| u64::try_from(ms).ok());
            let (manifest, mut problem) = match self.quick_check(id, &folders).await? {
                Ok(m) => {
                    add_refs(&mut referenced, &m);
                    (Some(m), None)
                }
                Err((m, why)) => (m, Some(why)),
            };
            if manifest.is_none()
                && objects
                    .keys()
                    .all(|name| referenced.contains(&(id, name.clone())))
            {
                problem = Some(format!(
                    "retired: keeps only the {} state file(s) that newer checkpoints refer to",
                    objects.len()
                ));
            }
            infos.push(CheckpointInfo {
                id,
                complete: problem.is_none(),
                size,
                created_at_ms: manifest.map(|m| m.created_at_ms).or(newest),
                problem,
            });
        }
        Ok(infos)
    }

    /// Deletes old checkpoints, keeping the newest `keep` complete ones. Returns the deleted ids,
    /// newest first.
    ///
    /// The rule:
    ///
    /// 1. Let *N* be the newest checkpoint that fully verifies, as in
    ///    [`latest_complete`](Self::latest_complete) (file checksums included), i.e. the one a
    ///    restore would use now. If there is none, nothing is deleted.
    /// 2. Every folder newer than *N* is kept: it may be a checkpoint still being written (or a
    ///    damaged one, which is deleted once a newer checkpoint completes).
    /// 3. *N* is kept, even when `keep` is 0.
    /// 4. Of the folders older than *N*, the newest `keep - 1` complete ones (checked as in
    ///    [`list`](Self::list): manifest verifies, files present with their sizes) are kept; every
    ///    other one (older complete checkpoints, incomplete or damaged leftovers) is deleted.
    /// 5. Except the files that a kept checkpoint (or a newer folder's manifest) refers to
    ///    (incremental checkpoints, [`PartRef`]): of a deleted folder that holds such files,
    ///    every other object, its manifest included, is deleted and those files stay (the folder
    ///    is *retired*: [`list`](Self::list) shows it as such) until no kept checkpoint refers to
    ///    them.
    ///
    /// Since the coordinator aborts older in-flight checkpoints when a newer one completes, nothing
    /// older than *N* is still being written when the runtime calls this after `Notify`.
    ///
    /// Cost: one listing, the manifests of all folders, and the files of *N* (and of any newer
    /// folder that has a manifest), read in full to check their checksums.
    pub async fn retain(&self, keep: usize) -> Result<Vec<CheckpointId>> {
        let folders = self.list_folders().await?;
        let mut older_complete_kept = 0usize;
        let mut newest_complete: Option<CheckpointId> = None;
        let mut doomed = Vec::new();
        let mut referenced: BTreeSet<(CheckpointId, String)> = BTreeSet::new();
        for id in folders.keys().rev() {
            if newest_complete.is_none() {
                // Full check (file checksums too): the one checkpoint that is never deleted must
                // be one that restores. Anything newer than it is kept, and so is what it refers
                // to.
                match self.verify(*id).await? {
                    Ok(m) => {
                        newest_complete = Some(*id);
                        add_refs(&mut referenced, &m);
                    }
                    Err(_) => {
                        if let Ok(m) = self.read_manifest(*id).await? {
                            add_refs(&mut referenced, &m);
                        }
                    }
                }
                continue;
            }
            match self.quick_check(*id, &folders).await? {
                Ok(m) if older_complete_kept + 1 < keep => {
                    older_complete_kept += 1;
                    add_refs(&mut referenced, &m);
                }
                _ => doomed.push(*id),
            }
        }
        for id in &doomed {
            let held: Vec<&String> = folders[id]
                .keys()
                .filter(|name| referenced.contains(&(*id, (*name).clone())))
                .collect();
            if held.is_empty() {
                self.delete_folder(*id).await?;
                continue;
            }
            let folder = self.folder(*id);
            for name in folders[id].keys().filter(|n| !held.contains(n)) {
                let path = object_path(&folder, name);
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.io_error("cannot delete checkpoint file", &path, e)),
                }
            }
        }
        Ok(doomed)
    }

    /// Deletes every file of checkpoint `id` (declined, expired or subsumed). Deleting a folder that
    /// does not exist is not an error.
    pub async fn abort(&self, id: CheckpointId) -> Result<()> {
        self.delete_folder(id).await
    }

    // ---- helpers ----

    fn prefix(&self) -> Option<&Path> {
        (!self.root.as_ref().is_empty()).then_some(&self.root)
    }

    fn io_error(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        Error::io(format!("{what} {path} in {}", self.store)).with_source(e)
    }

    /// The object at `path`, or `None` when it does not exist.
    async fn get_optional(&self, path: &Path) -> Result<Option<Bytes>> {
        let result = match self.store.get(path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io_error("cannot read checkpoint file", path, e)),
        }
    }

    /// `Ok(Ok(manifest))`, `Ok(Err(reason))` when missing or damaged, `Err` when unreadable.
    async fn read_manifest(
        &self,
        id: CheckpointId,
    ) -> Result<std::result::Result<Manifest, String>> {
        let path = self.folder(id).join(MANIFEST_NAME);
        let Some(bytes) = self.get_optional(&path).await? else {
            return Ok(Err(
                "no manifest (incomplete: still being written, or torn by a crash)".into(),
            ));
        };
        let manifest = match Manifest::from_json(&bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.message().to_owned())),
        };
        if manifest.checkpoint_id != id {
            return Ok(Err(format!(
                "manifest says checkpoint {} but lies in {}",
                manifest.checkpoint_id,
                folder_name(id)
            )));
        }
        Ok(Ok(manifest))
    }

    async fn read_file(&self, id: CheckpointId, f: &FileEntry) -> Result<StateSnapshot> {
        let path = object_path(&self.folder(id), &f.path);
        let bytes = self.get_optional(&path).await?;
        if let Some(problem) = file_problem(f, bytes.as_deref()) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("checkpoint {id}: {problem} in {}", self.store),
            ));
        }
        let bytes = bytes.unwrap_or_default();
        StateSnapshot::decode(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("checkpoint {id}: file {} cannot be decoded", f.path),
            )
            .with_source(e)
        })
    }

    /// All objects under the root, grouped by checkpoint folder (key: path relative to the folder).
    async fn list_folders(&self) -> Result<Folders> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(self.prefix())
            .try_collect()
            .await
            .map_err(|e| self.io_error("cannot list checkpoints", &self.root, e))?;
        let mut folders: BTreeMap<CheckpointId, BTreeMap<String, ObjectMeta>> = BTreeMap::new();
        for meta in objects {
            let Some(rest) = meta.location.prefix_match(&self.root) else {
                continue;
            };
            let parts: Vec<String> = rest.map(|p| p.as_ref().to_owned()).collect();
            let Some((first, inner)) = parts.split_first() else {
                continue;
            };
            let Some(id) = parse_folder_name(first) else {
                continue;
            };
            if inner.is_empty() {
                continue;
            }
            folders.entry(id).or_default().insert(inner.join("/"), meta);
        }
        Ok(folders)
    }

    /// The cheap completeness check used by `list` and `retain`: manifest verifies and matches the
    /// folder, and every listed file (and every file it refers to) is present with its size.
    async fn quick_check(
        &self,
        id: CheckpointId,
        folders: &Folders,
    ) -> Result<std::result::Result<Manifest, (Option<Manifest>, String)>> {
        let empty = BTreeMap::new();
        let objects = folders.get(&id).unwrap_or(&empty);
        if !objects.contains_key(MANIFEST_NAME) {
            return Ok(Err((
                None,
                "no manifest (incomplete: still being written, or torn by a crash)".into(),
            )));
        }
        let manifest = match self.read_manifest(id).await? {
            Ok(m) => m,
            Err(why) => return Ok(Err((None, why))),
        };
        let problem = all_files(&manifest).into_iter().find_map(|(at, f)| {
            let found = folders.get(&at).and_then(|o| o.get(&f.path));
            let whose = if at == id {
                String::new()
            } else {
                format!(" (in checkpoint {at}, which this one refers to)")
            };
            match found {
                None => Some(format!("file {} is missing{whose}", f.path)),
                Some(o) if o.size != f.size => Some(format!(
                    "file {} has {} bytes, the manifest says {}{whose}",
                    f.path, o.size, f.size
                )),
                Some(_) => None,
            }
        });
        match problem {
            Some(why) => Ok(Err((Some(manifest), why))),
            None => Ok(Ok(manifest)),
        }
    }

    async fn delete_folder(&self, id: CheckpointId) -> Result<()> {
        let folder = self.folder(id);
        let locations = self
            .store
            .list(Some(&folder))
            .map_ok(|m| m.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.io_error("cannot delete checkpoint", &folder, e)),
            }
        }
        Ok(())
    }
}

/// Which key groups a reader needs (the files referred to for others are not read).
#[derive(Debug, Clone, Copy)]
enum Wanted {
    All,
    Subtask {
        max: u32,
        parallelism: u32,
        subtask: u32,
    },
}

impl Wanted {
    fn wants(self, kg: u32) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Subtask {
                max,
                parallelism,
                subtask,
            } => {
                // A parallelism above the maximum is refused later with a clear error.
                parallelism > max || subtask_of_key_group(kg, max, parallelism) == subtask
            }
        }
    }
}

/// The objects of every checkpoint folder, by path relative to the folder.
type Folders = BTreeMap<CheckpointId, BTreeMap<String, ObjectMeta>>;

/// Every file a manifest needs, as `(checkpoint, entry)`: its own files and, once each, the
/// files of earlier checkpoints it refers to.
fn all_files(manifest: &Manifest) -> Vec<(CheckpointId, FileEntry)> {
    let mut out: Vec<(CheckpointId, FileEntry)> = manifest
        .files()
        .map(|(_, f)| (manifest.checkpoint_id, f.clone()))
        .collect();
    let mut seen = BTreeSet::new();
    for (_, f) in manifest.files() {
        for r in &f.refs {
            if seen.insert((r.checkpoint, r.path.clone())) {
                out.push((
                    r.checkpoint,
                    FileEntry::new(f.subtask, r.path.clone(), r.size, r.checksum),
                ));
            }
        }
    }
    out
}

/// Adds the files `m` refers to.
fn add_refs(referenced: &mut BTreeSet<(CheckpointId, String)>, m: &Manifest) {
    referenced.extend(
        m.referenced_files()
            .into_iter()
            .map(|(id, p)| (id, p.to_owned())),
    );
}

/// `chk-` and the id in at least 10 digits.
fn folder_name(id: CheckpointId) -> String {
    format!("{FOLDER_PREFIX}{id:010}")
}

fn parse_folder_name(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_prefix(FOLDER_PREFIX)?;
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Letters, digits, `_`, `-` and non-leading `.` stay; every other byte becomes `=XX`.
fn escape_node(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    for (i, b) in node.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The object path of `relative` (a manifest file path, `/`-separated) inside `folder`.
fn object_path(folder: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .fold(folder.clone(), |p, segment| p.join(segment))
}

/// Why the bytes read for `f` are not the bytes written, if they are not.
fn file_problem(f: &FileEntry, bytes: Option<&[u8]>) -> Option<String> {
    match bytes {
        None => Some(format!("file {} is missing", f.path)),
        Some(b) if b.len() as u64 != f.size => Some(format!(
            "file {} has {} bytes, the manifest says {}",
            f.path,
            b.len(),
            f.size
        )),
        Some(b) if !f.checksum.matches(b) => Some(format!(
            "file {} checksum mismatch (manifest {}, file {})",
            f.path,
            f.checksum,
            Checksum::of(b)
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailingStore;
    use crate::state::StateEntry;

    fn snapshot(tag: &str) -> StateSnapshot {
        let mut s = StateSnapshot::new();
        s.push_keyed(3, format!("{tag}-keyed").into_bytes());
        s.push_union("pos", format!("{tag}-union").into_bytes())
            .expect("key");
        s
    }

    /// Writes checkpoint `id` with nodes map (p=2) and sink (p=1); returns the manifest.
    async fn write_checkpoint(store: &CheckpointStore, id: CheckpointId) -> Manifest {
        let mut m = Manifest::new("job", id, 1_000 + id, 8);
        for (node, p) in [("map", 2u32), ("sink", 1)] {
            m.add_node(node, p);
            for subtask in 0..p {
                let entry = store
                    .write_state(
                        id,
                        node,
                        subtask,
                        &snapshot(&format!("{id}-{node}-{subtask}")),
                    )
                    .await
                    .expect("write_state");
                m.add_file(node, p, entry);
            }
        }
        store.commit(&m).await.expect("commit");
        m
    }

    fn file_path(dir: &tempfile::TempDir, id: CheckpointId, name: &str) -> std::path::PathBuf {
        dir.path().join(folder_name(id)).join(name)
    }

    #[tokio::test]
    async fn local_round_trip_and_restore_at_another_parallelism() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        assert_eq!(
            store.latest_complete().await.expect("latest"),
            LatestComplete {
                manifest: None,
                skipped: vec![]
            }
        );
        let m = write_checkpoint(&store, 1).await;
        assert!(file_path(&dir, 1, "map-0.state").exists());
        assert!(file_path(&dir, 1, MANIFEST_NAME).exists());

        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest.as_ref(), Some(&m));
        assert!(latest.skipped.is_empty());
        let s = store.read_state(&m, "map", 1).await.expect("read_state");
        assert_eq!(s, snapshot("1-map-1"));
        assert!(
            store
                .read_state(&m, "absent", 0)
                .await
                .expect("absent")
                .is_empty()
        );

        // Restore map (p=2) at p=3: key group 3 of max 8 belongs to subtask 1 of 3 ([3,6)).
        let restored = store.restore_node(&m, "map", 3).await.expect("restore");
        assert_eq!(restored.len(), 3);
        assert_eq!(restored[1].keyed(3).count(), 2);
        for s in &restored {
            assert_eq!(
                s.union_entries().count(),
                2,
                "every subtask sees both union entries"
            );
        }
    }

    #[tokio::test]
    async fn open_accepts_paths_and_file_urls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = CheckpointStore::open(
            dir.path().join("a").to_str().expect("utf8 path"),
            Vec::<(String, String)>::new(),
        )
        .expect("plain path");
        write_checkpoint(&plain, 4).await;
        let url = url::Url::from_directory_path(dir.path().join("a")).expect("url");
        let via_url =
            CheckpointStore::open(url.as_str(), Vec::<(String, String)>::new()).expect("file url");
        assert_eq!(via_url.ids().await.expect("ids"), vec![4]);
        let e = CheckpointStore::open("nope://x", Vec::<(String, String)>::new())
            .expect_err("unknown scheme");
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn bit_flip_and_truncated_manifest_fall_back_with_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        let m10 = write_checkpoint(&store, 10).await;
        write_checkpoint(&store, 11).await;
        write_checkpoint(&store, 12).await;
        // 12: flip one bit of a data file (size unchanged).
        let p = file_path(&dir, 12, "map-0.state");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[20] ^= 0x04;
        std::fs::write(&p, bytes).expect("write");
        // 11: truncate the manifest.
        let p = file_path(&dir, 11, MANIFEST_NAME);
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
        // 13: in progress (no manifest yet).
        store
            .write_state(13, "map", 0, &snapshot("x"))
            .await
            .expect("write");

        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest, Some(m10));
        let reasons: Vec<String> = latest.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].starts_with("checkpoint 13 skipped: no manifest"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("checkpoint 12 skipped: file map-0.state checksum mismatch"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].starts_with("checkpoint 11 skipped: manifest is unreadable"),
            "{reasons:?}"
        );
        assert!(reasons[2].contains("truncated"), "{reasons:?}");

        // Reading the damaged file directly is an Io error naming it.
        let m12 =
            Manifest::from_json(&std::fs::read(file_path(&dir, 12, MANIFEST_NAME)).expect("read"))
                .expect("manifest 12 is fine");
        let e = store.read_state(&m12, "map", 0).await.expect_err("corrupt");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(
            e.message().contains("file map-0.state checksum mismatch"),
            "{e}"
        );

        // list() sees 11 (bad manifest) and 13 (no manifest) as incomplete; 12's size is intact,
        // so only the full check of latest_complete catches its bit flip.
        let list = store.list().await.expect("list");
        let summary: Vec<(CheckpointId, bool)> = list.iter().map(|i| (i.id, i.complete)).collect();
        assert_eq!(
            summary,
            vec![(13, false), (12, true), (11, false), (10, true)]
        );
        assert_eq!(list[3].created_at_ms, Some(1_010));
        assert!(list[0].created_at_ms.is_some());
        assert!(list.iter().all(|i| i.size > 0));
        assert!(
            list[2]
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("unreadable"))
        );
    }

    #[tokio::test]
    async fn missing_and_resized_files_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        write_checkpoint(&store, 1).await;
        write_checkpoint(&store, 2).await;
        write_checkpoint(&store, 3).await;
        std::fs::remove_file(file_path(&dir, 3, "sink-0.state")).expect("rm");
        let p = file_path(&dir, 2, "map-1.state");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes.push(0);
        std::fs::write(&p, bytes).expect("write");
        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest.map(|m| m.checkpoint_id), Some(1));
        assert_eq!(latest.skipped[0].reason, "file sink-0.state is missing");
        assert!(
            latest.skipped[1].reason.contains("the manifest says"),
            "{:?}",
            latest.skipped
        );
        let list = store.list().await.expect("list");
        assert_eq!(
            list[0].problem.as_deref(),
            Some("file sink-0.state is missing")
        );
    }

    #[tokio::test]
    async fn retain_keeps_the_newest_complete_and_anything_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        store
            .write_state(1, "map", 0, &snapshot("leftover"))
            .await
            .expect("write");
        for id in 2..=5 {
            write_checkpoint(&store, id).await;
        }
        store
            .write_state(6, "map", 0, &snapshot("torn"))
            .await
            .expect("write");
        write_checkpoint(&store, 7).await;
        store
            .write_state(8, "map", 0, &snapshot("in progress"))
            .await
            .expect("write");
        // Damage 7's manifest: the newest complete is 5, and 6..=8 are newer than it.
        let p = file_path(&dir, 7, MANIFEST_NAME);
        std::fs::write(&p, b"{").expect("write");

        assert_eq!(store.retain(2).await.expect("retain"), vec![3, 2, 1]);
        assert_eq!(store.ids().await.expect("ids"), vec![4, 5, 6, 7, 8]);
        assert_eq!(store.retain(0).await.expect("retain 0"), vec![4]);
        assert_eq!(store.ids().await.expect("ids"), vec![5, 6, 7, 8]);
        assert!(store.retain(0).await.expect("again").is_empty());
        // Empty folders are removed from disk too.
        assert!(!dir.path().join(folder_name(1)).exists());

        // Once 9 completes, the older leftovers go.
        write_checkpoint(&store, 9).await;
        assert_eq!(store.retain(1).await.expect("retain"), vec![8, 7, 6, 5]);
        assert_eq!(
            store
                .latest_complete()
                .await
                .expect("latest")
                .manifest
                .map(|m| m.checkpoint_id),
            Some(9)
        );
    }

    /// The full state of subtask `subtask` (of 2, max 8) at step `step`: key groups of the
    /// subtask's range, of which only key group `subtask * 4` changes from step to step, and a
    /// union entry.
    fn full_state(subtask: u32, step: u64) -> StateSnapshot {
        let mut s = StateSnapshot::new();
        for kg in subtask * 4..subtask * 4 + 4 {
            let v = if kg == subtask * 4 { step } else { 0 };
            s.push_keyed(kg, format!("kg{kg}-a-{v}").into_bytes());
            s.push_keyed(kg, vec![kg as u8; 100]);
        }
        s.push_union("pos", format!("{subtask}-{step}").into_bytes())
            .expect("key");
        s
    }

    /// Writes checkpoint `id` of node agg (p=2) through incremental trackers.
    async fn write_incremental(
        store: &CheckpointStore,
        trackers: &mut [crate::Tracker],
        id: CheckpointId,
    ) -> Manifest {
        let mut m = Manifest::new("job", id, id, 8);
        for (subtask, t) in trackers.iter_mut().enumerate() {
            let e = t
                .encode(id, &full_state(subtask as u32, id))
                .expect("a file");
            m.add_file("agg", 2, store.write_encoded(id, e).await.expect("write"));
        }
        store.commit(&m).await.expect("commit");
        m
    }

    fn sorted(mut s: StateSnapshot) -> Vec<StateEntry> {
        s.entries
            .sort_by(|a, b| (&a.key, &a.bytes).cmp(&(&b.key, &b.bytes)));
        s.entries
    }

    fn trackers(full_every: u32) -> Vec<crate::Tracker> {
        let config = crate::IncrementalConfig {
            enabled: true,
            full_every,
        };
        (0..2)
            .map(|i| crate::Tracker::new("agg", i, config))
            .collect()
    }

    /// What subtask `i` of `p` must restore after step `step`.
    fn expected(p: u32, i: u32, step: u64) -> Vec<StateEntry> {
        let old = (0..2).map(|s| (s, full_state(s, step))).collect();
        sorted(state_for_subtask(old, p, 8, i).expect("expected"))
    }

    #[tokio::test]
    async fn incremental_checkpoints_restore_through_references_also_from_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        let mut t = trackers(10);
        let m1 = write_incremental(&store, &mut t, 1).await;
        let mut last = m1.clone();
        for id in 2..=4 {
            last = write_incremental(&store, &mut t, id).await;
        }
        // Checkpoint 4 writes one changed key group per subtask and refers to the other three.
        assert_eq!(m1.referred_bytes(), 0);
        assert!(
            last.state_bytes() * 3 < m1.state_bytes(),
            "{} vs {}",
            last.state_bytes(),
            m1.state_bytes()
        );
        assert_eq!(last.referred_bytes(), 2 * 3 * (100 + 7));
        let refs: Vec<CheckpointId> = last.referenced_files().iter().map(|r| r.0).collect();
        assert_eq!(refs, [1, 1]);
        // Restore at parallelism 1, 2 and 3: the same state as the full snapshots.
        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest.as_ref(), Some(&last));
        for p in 1..=3 {
            for i in 0..p {
                let got = store
                    .read_subtask_state(&last, "agg", p, i)
                    .await
                    .expect("read");
                assert_eq!(sorted(got), expected(p, i, 4), "p={p} subtask {i}");
            }
        }
        let whole = store.restore_node(&last, "agg", 2).await.expect("restore");
        assert_eq!(sorted(whole[1].clone()), expected(2, 1, 4));
        // A copy of the store in another directory restores the same (references are
        // relative to the store's root).
        let copy = tempfile::tempdir().expect("tempdir");
        for entry in walk(dir.path()) {
            let to = copy
                .path()
                .join(entry.strip_prefix(dir.path()).expect("prefix"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&entry, &to).expect("copy");
        }
        let moved = CheckpointStore::local(copy.path()).expect("store");
        let m = moved
            .latest_complete()
            .await
            .expect("latest")
            .manifest
            .expect("complete");
        let got = moved
            .read_subtask_state(&m, "agg", 1, 0)
            .await
            .expect("read");
        assert_eq!(sorted(got), expected(1, 0, 4));
        // A damaged referenced file makes the referring checkpoint incomplete.
        std::fs::write(file_path(&copy, 1, "agg-1.state"), b"rot").expect("write");
        let after = moved.latest_complete().await.expect("latest");
        assert_eq!(after.manifest.map(|m| m.checkpoint_id), None);
        assert!(
            after.skipped[0].reason.contains("which this one refers to"),
            "{:?}",
            after.skipped
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn retention_keeps_the_files_that_kept_checkpoints_refer_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        let mut t = trackers(3);
        for id in 1..=3 {
            write_incremental(&store, &mut t, id).await;
        }
        // 3 refers to 1's files: 1 and 2 are dropped, but 1's state files stay.
        assert_eq!(store.retain(1).await.expect("retain"), vec![2, 1]);
        assert!(file_path(&dir, 1, "agg-0.state").exists());
        assert!(!file_path(&dir, 1, MANIFEST_NAME).exists());
        assert!(!dir.path().join(folder_name(2)).exists());
        let list = store.list().await.expect("list");
        let retired = list.iter().find(|c| c.id == 1).expect("1 listed");
        assert!(!retired.complete);
        assert!(
            retired
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("retired")),
            "{retired:?}"
        );
        assert!(list.iter().find(|c| c.id == 3).expect("3").complete);
        let m = store
            .latest_complete()
            .await
            .expect("latest")
            .manifest
            .expect("3");
        let got = store
            .read_subtask_state(&m, "agg", 1, 0)
            .await
            .expect("read");
        assert_eq!(sorted(got), expected(1, 0, 3));
        // Retaining again changes nothing that 3 needs.
        store.retain(1).await.expect("retain");
        assert!(file_path(&dir, 1, "agg-1.state").exists());
        // 4 is full (every third): once it completes, nothing refers to 1 any more.
        let m4 = write_incremental(&store, &mut t, 4).await;
        assert_eq!(m4.referred_bytes(), 0);
        assert_eq!(store.retain(1).await.expect("retain"), vec![3, 1]);
        assert_eq!(store.ids().await.expect("ids"), vec![4]);
        // With two kept, 5 (referring to 4) keeps 4 complete.
        write_incremental(&store, &mut t, 5).await;
        assert!(store.retain(2).await.expect("retain").is_empty());
        assert!(store.list().await.expect("list").iter().all(|c| c.complete));
    }

    #[tokio::test]
    async fn retain_protects_the_checkpoint_that_restores_not_one_with_bit_rot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        write_checkpoint(&store, 1).await;
        write_checkpoint(&store, 2).await;
        write_checkpoint(&store, 3).await;
        // 3 looks complete to a listing (sizes intact) but a bit flipped at rest.
        let p = file_path(&dir, 3, "map-1.state");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[16] ^= 0x01;
        std::fs::write(&p, bytes).expect("write");
        assert_eq!(store.retain(0).await.expect("retain"), vec![1]);
        assert_eq!(store.ids().await.expect("ids"), vec![2, 3]);
        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest.map(|m| m.checkpoint_id), Some(2));
    }

    #[tokio::test]
    async fn retain_without_any_complete_checkpoint_deletes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        store
            .write_state(1, "map", 0, &snapshot("a"))
            .await
            .expect("write");
        store
            .write_state(2, "map", 0, &snapshot("b"))
            .await
            .expect("write");
        assert!(store.retain(0).await.expect("retain").is_empty());
        assert_eq!(store.ids().await.expect("ids"), vec![1, 2]);
    }

    #[tokio::test]
    async fn abort_removes_a_declined_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        write_checkpoint(&store, 1).await;
        store
            .write_state(2, "map", 0, &snapshot("x"))
            .await
            .expect("write");
        store.abort(2).await.expect("abort");
        store.abort(99).await.expect("abort of nothing");
        assert_eq!(store.ids().await.expect("ids"), vec![1]);
    }

    #[tokio::test]
    async fn write_failures_are_io_errors_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        let failing = Arc::new(FailingStore::new(fs));
        let store = CheckpointStore::new(failing.clone(), Path::from("ckpt"));
        write_checkpoint(&store, 1).await;

        failing.fail_writes_to("");
        let e = store
            .write_state(2, "map", 0, &snapshot("x"))
            .await
            .expect_err("disk full");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.kind().is_retryable());
        assert!(
            e.message().starts_with(
                "cannot write checkpoint file ckpt/chk-0000000002/map-0.state in FailingStore("
            ),
            "{e}"
        );
        assert!(
            e.report().contains("no space left on device"),
            "{}",
            e.report()
        );

        // A failed manifest write leaves checkpoint 2 incomplete; 1 stays the latest.
        failing.heal();
        failing.fail_writes_to(MANIFEST_NAME);
        let mut m = Manifest::new("job", 2, 0, 8);
        m.add_file(
            "map",
            1,
            store
                .write_state(2, "map", 0, &snapshot("x"))
                .await
                .expect("data ok"),
        );
        let e = store.commit(&m).await.expect_err("manifest write fails");
        assert!(e.message().contains("chk-0000000002/_MANIFEST"), "{e}");
        let latest = store.latest_complete().await.expect("latest");
        assert_eq!(latest.manifest.map(|m| m.checkpoint_id), Some(1));

        // A failing delete is an error too, not silently ignored.
        failing.fail_writes_to("chk-0000000002");
        let e = store.abort(2).await.expect_err("delete fails");
        assert!(
            e.message()
                .contains("cannot delete checkpoint ckpt/chk-0000000002"),
            "{e}"
        );
        failing.heal();
        store.abort(2).await.expect("abort");
        assert_eq!(store.ids().await.expect("ids"), vec![1]);
    }

    #[tokio::test]
    async fn read_failures_are_errors_not_fallbacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        let failing = Arc::new(FailingStore::new(fs));
        let store = CheckpointStore::new(failing.clone(), Path::default());
        write_checkpoint(&store, 1).await;
        write_checkpoint(&store, 2).await;
        failing.fail_reads_of("chk-0000000002/map-1");
        let e = store
            .latest_complete()
            .await
            .expect_err("unreadable, not skipped");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.message().contains("chk-0000000002/map-1.state"), "{e}");
    }

    #[tokio::test]
    async fn odd_node_names_get_unique_safe_file_names() {
        let names = ["map", "map.v2", ".hidden", "a b/c", "x=y", "über", "map-1"];
        let files: Vec<String> = names
            .iter()
            .map(|n| CheckpointStore::state_file_name(n, 0))
            .collect();
        assert_eq!(files[0], "map-0.state");
        assert_eq!(files[1], "map.v2-0.state");
        assert_eq!(files[2], "=2Ehidden-0.state");
        assert_eq!(files[3], "a=20b=2Fc-0.state");
        assert_eq!(files[4], "x=3Dy-0.state");
        let unique: std::collections::BTreeSet<&String> = files.iter().collect();
        assert_eq!(unique.len(), files.len());
        // And they round-trip through a real store.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        let mut m = Manifest::new("job", 1, 0, 8);
        for n in names {
            m.add_file(
                n,
                1,
                store
                    .write_state(1, n, 0, &snapshot(n))
                    .await
                    .expect("write"),
            );
        }
        store.commit(&m).await.expect("commit");
        let latest = store
            .latest_complete()
            .await
            .expect("latest")
            .manifest
            .expect("complete");
        for n in names {
            assert_eq!(
                store.read_state(&latest, n, 0).await.expect("read"),
                snapshot(n)
            );
        }
    }

    #[tokio::test]
    async fn each_subtask_reads_its_own_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        let m = write_checkpoint(&store, 1).await;
        let all = store.restore_node(&m, "map", 3).await.expect("restore");
        for (i, want) in all.iter().enumerate() {
            let got = store
                .read_subtask_state(&m, "map", 3, i as u32)
                .await
                .expect("read");
            assert_eq!(&got, want, "subtask {i}");
        }
        assert!(
            store
                .read_subtask_state(&m, "absent", 2, 0)
                .await
                .expect("absent")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_log_store_keeps_objects_beside_the_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::local(dir.path()).expect("store");
        write_checkpoint(&store, 1).await;
        let log = store.log_store("infer a/b");
        log.put("b.arrow", Bytes::from_static(b"two"))
            .await
            .expect("put");
        log.put("a.arrow", Bytes::from_static(b"one"))
            .await
            .expect("put");
        store
            .log_store("other")
            .put("x", Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(log.list().await.expect("list"), ["a.arrow", "b.arrow"]);
        assert_eq!(
            log.get("a.arrow").await.expect("get").as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(log.get("c.arrow").await.expect("get"), None);
        // Checkpoints do not see it, and pruning leaves it alone.
        assert_eq!(store.ids().await.expect("ids"), vec![1]);
        assert_eq!(store.list().await.expect("list").len(), 1);
        store.retain(0).await.expect("retain");
        log.delete("a.arrow").await.expect("delete");
        log.delete("a.arrow").await.expect("deleting twice is fine");
        assert_eq!(log.list().await.expect("list"), ["b.arrow"]);
    }

    #[test]
    fn folder_names_sort_and_parse() {
        assert_eq!(folder_name(12), "chk-0000000012");
        assert_eq!(parse_folder_name("chk-0000000012"), Some(12));
        assert_eq!(parse_folder_name(&folder_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_folder_name("chk-12"), None);
        assert_eq!(parse_folder_name("chk-00000000x2"), None);
        assert_eq!(parse_folder_name("tmp"), None);
    }
}
