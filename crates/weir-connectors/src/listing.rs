//! Listing objects for the `files` source, and remembering which were emitted in bounded state.
//!
//! # Listing
//!
//! A local directory is walked with plain `std::fs` calls, so a name with a tab, a newline or
//! bytes that are not UTF-8 is listed like any other (its URI is percent-encoded, losslessly; see
//! `weir_store::uri`), and an entry that cannot be read is reported alone instead of failing the
//! listing. Hidden names (starting with `.`, files or directories at any depth) and weir's
//! in-progress files are skipped; directories reached through symbolic links are not descended
//! (no loops), files behind links are read. An object-store prefix is listed through
//! object_store, from a start key when one is known (S3's `start-after`).
//!
//! Each object has a *key* that orders it: the path below the listed root, percent-encoded, for
//! local files; the object key for object stores.
//!
//! # Bounded state
//!
//! A [`Tracker`] remembers what a subtask has emitted as a *position* (every key at or below it
//! that the subtask owns was emitted) plus the set of emitted keys above it. After each emission
//! the oldest keys of that set fold into the position, keeping at most `lookback` of them, but
//! never past a key that is listed and not yet emitted. So the state of a source that runs for
//! ever stays at most `lookback` keys per subtask, and listings start after the position.
//!
//! The price: an object that appears *after* `lookback` newer keys of its subtask were emitted,
//! with a key below them, is never read. Objects that arrive in key order (time-stamped or
//! sequenced names) or out of order by less than `lookback` are all read.

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_types::{Error, Result};

/// Where an object is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// A local file.
    Local(PathBuf),
    /// An object of the source's store.
    Object(ObjectPath),
}

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Orders the object and identifies it in the state.
    pub key: String,
    /// Its URI (`file:///...` or `s3://bucket/...`, percent-encoded).
    pub uri: String,
    pub size: u64,
    /// Last modification, ms since the Unix epoch.
    pub modified_ms: i64,
    /// An identity of this version of the object (ETag, version id, or mtime and size).
    pub version: Option<String>,
    pub at: At,
}

/// What a listing found: the objects, sorted by key, and entries that could not be read.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub objects: Vec<Listed>,
    /// (URI or path, why) of entries that could not be listed.
    pub unreadable: Vec<(String, Error)>,
}

/// Whether a name is hidden from the `files` source: it starts with `.`, or is an in-progress
/// file of weir's sinks.
pub(crate) fn is_hidden_name(name: &[u8]) -> bool {
    name.first() == Some(&b'.') || name.ends_with(b".inprogress")
}

/// Walks `root` (a directory, or one file) and returns every visible file below it. `after`
/// skips keys at or below it.
pub(crate) fn list_local(root: &Path, single: bool, after: Option<&str>) -> Result<Listing> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Listing::default();
    let base = weir_store::file_uri(root)?;
    if single {
        let meta = std::fs::metadata(root).map_err(|e| {
            Error::io(format!("cannot read input path '{}'", root.display())).with_source(e)
        })?;
        out.objects.push(local_entry(root, &base, "", &meta)?);
        return Ok(out);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == root => {
                return Err(Error::io(format!("cannot list '{}'", root.display())).with_source(e));
            }
            Err(e) => {
                let uri = weir_store::file_uri(&dir).unwrap_or_else(|_| dir.display().to_string());
                out.unreadable.push((
                    uri.clone(),
                    Error::io(format!("cannot list directory {uri}")).with_source(e),
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let uri = weir_store::file_uri(&dir).unwrap_or_default();
                    out.unreadable.push((
                        uri.clone(),
                        Error::io(format!("cannot list an entry of {uri}")).with_source(e),
                    ));
                    continue;
                }
            };
            let name = entry.file_name();
            if is_hidden_name(name.as_bytes()) {
                continue;
            }
            let path = entry.path();
            let is_link_dir = entry.file_type().is_ok_and(|t| t.is_symlink())
                && std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    let uri = weir_store::file_uri(&path).unwrap_or_default();
                    out.unreadable.push((
                        uri.clone(),
                        Error::io(format!("cannot read {uri}")).with_source(e),
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                if !is_link_dir {
                    stack.push(path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let uri = weir_store::file_uri(&path)?;
            let key = uri
                .strip_prefix(base.as_str())
                .map(|k| k.trim_start_matches('/').to_string())
                .unwrap_or_else(|| uri.clone());
            if after.is_some_and(|a| key.as_str() <= a) {
                continue;
            }
            out.objects.push(local_entry(&path, &uri, &key, &meta)?);
        }
    }
    out.objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn local_entry(path: &Path, uri: &str, key: &str, meta: &std::fs::Metadata) -> Result<Listed> {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok(Listed {
        key: key.to_string(),
        uri: uri.to_string(),
        size: meta.len(),
        modified_ms: modified.as_millis() as i64,
        version: Some(format!("{:x}-{:x}", modified.as_nanos(), meta.len())),
        at: At::Local(path.to_path_buf()),
    })
}

/// Lists `prefix` of `store` (or heads it, when `single`), after the key `after` when given.
/// Objects in hidden folders or with hidden names (below the prefix) are left out.
pub(crate) async fn list_store(
    store: Arc<dyn ObjectStore>,
    base: String,
    prefix: ObjectPath,
    single: bool,
    after: Option<String>,
) -> object_store::Result<Listing> {
    let metas: Vec<ObjectMeta> = if single {
        vec![store.head(&prefix).await?]
    } else {
        match after {
            Some(a) => {
                let offset = ObjectPath::parse(&a).unwrap_or_else(|_| ObjectPath::from(a.as_str()));
                store
                    .list_with_offset(Some(&prefix), &offset)
                    .try_collect()
                    .await?
            }
            None => store.list(Some(&prefix)).try_collect().await?,
        }
    };
    let mut out = Listing::default();
    for m in metas {
        let key = m.location.as_ref().to_string();
        let below = m
            .location
            .prefix_match(&prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            .unwrap_or_default();
        if below.iter().any(|p| is_hidden_name(p.as_bytes())) {
            continue;
        }
        out.objects.push(Listed {
            uri: weir_store::object_uri(&base, &key),
            key,
            size: m.size,
            modified_ms: m.last_modified.timestamp_millis(),
            version: m.version.clone().or(m.e_tag.clone()),
            at: At::Object(m.location),
        });
    }
    out.objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// How a source splits objects between its subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Split {
    /// By index in the sorted listing, modulo the parallelism (bounded listings).
    Index,
    /// By a hash of the key (continuous listings, where indices move).
    Hash,
}

/// What a subtask emitted, as its state entry `files:<subtask>` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// How objects were split when it was taken.
    pub split: Option<Split>,
    /// The parallelism then.
    pub parallelism: u32,
    /// The subtask.
    pub subtask: u32,
    /// Every key of this subtask at or below it was emitted.
    pub position: Option<String>,
    /// Emitted keys above the position.
    pub done: BTreeSet<String>,
}

/// The owner of `key` (at `index` of the full sorted listing) under `split` at `parallelism`.
pub(crate) fn owner(split: Split, key: &str, index: usize, parallelism: u32) -> u32 {
    let p = u64::from(parallelism.max(1));
    (match split {
        Split::Index => index as u64 % p,
        Split::Hash => crate::file_source::stable_hash(key) % p,
    }) as u32
}

/// What one subtask has emitted: a position and the emitted keys above it (module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    pub position: Option<String>,
    pub done: BTreeSet<String>,
    pub lookback: usize,
}

impl Tracker {
    /// Whether `key` was emitted.
    pub fn is_done(&self, key: &str) -> bool {
        self.position.as_deref().is_some_and(|p| key <= p) || self.done.contains(key)
    }

    /// Records `key` as emitted, then folds the oldest keys into the position while more than
    /// `lookback` are kept, never past `pending` (the smallest key listed and not yet emitted).
    pub fn mark(&mut self, key: &str, pending: Option<&str>) {
        if !self.is_done(key) {
            self.done.insert(key.to_string());
        }
        self.compact(pending);
    }

    /// Folds the oldest emitted keys into the position while more than `lookback` are kept,
    /// never past `pending`.
    pub fn compact(&mut self, pending: Option<&str>) {
        while self.done.len() > self.lookback {
            let Some(first) = self.done.first() else {
                break;
            };
            if pending.is_some_and(|p| p < first.as_str()) {
                break;
            }
            self.position = self.done.pop_first();
        }
    }
}

/// The progress of every subtask of the run a job was restored from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Restored {
    by_subtask: BTreeMap<u32, Progress>,
    split: Option<Split>,
    parallelism: u32,
}

impl Restored {
    pub fn new(entries: Vec<Progress>) -> Self {
        let split = entries.first().and_then(|e| e.split);
        let parallelism = entries.first().map_or(1, |e| e.parallelism.max(1));
        Restored {
            by_subtask: entries.into_iter().map(|e| (e.subtask, e)).collect(),
            split,
            parallelism,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_subtask.is_empty()
    }

    /// The lowest position of all old subtasks: every key at or below it was emitted, by
    /// whichever subtask owned it. `None` when some subtask had emitted nothing.
    pub fn floor(&self) -> Option<String> {
        if self.by_subtask.len() < self.parallelism as usize {
            return None;
        }
        let mut floor: Option<&String> = None;
        for e in self.by_subtask.values() {
            let pos = e.position.as_ref()?;
            if floor.is_none_or(|f| pos < f) {
                floor = Some(pos);
            }
        }
        floor.cloned()
    }

    /// Whether the old run emitted `key` (at `index` of the full sorted listing).
    pub fn was_done(&self, key: &str, index: usize) -> bool {
        let Some(split) = self.split else {
            return false;
        };
        let o = owner(split, key, index, self.parallelism);
        self.by_subtask.get(&o).is_some_and(|e| {
            e.position.as_deref().is_some_and(|p| key <= p) || e.done.contains(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_stays_bounded_and_never_passes_a_pending_key() {
        let mut t = Tracker {
            lookback: 3,
            ..Default::default()
        };
        for i in 0..100 {
            t.mark(&format!("k{i:03}"), None);
        }
        assert_eq!(t.done.len(), 3);
        assert_eq!(t.position.as_deref(), Some("k096"));
        assert!(t.is_done("k050") && t.is_done("k099") && !t.is_done("k100"));
        // k100 is listed and not emitted: later keys pile up, the position waits.
        for i in 101..110 {
            t.mark(&format!("k{i:03}"), Some("k100"));
        }
        assert_eq!(t.position.as_deref(), Some("k099"));
        assert!(!t.is_done("k100"));
        t.mark("k100", None);
        assert_eq!(t.done.len(), 3);
    }

    #[test]
    fn restored_progress_answers_by_old_owner() {
        let a = Progress {
            split: Some(Split::Index),
            parallelism: 2,
            subtask: 0,
            position: Some("b".into()),
            done: ["d".to_string()].into(),
        };
        let b = Progress {
            subtask: 1,
            position: Some("a".into()),
            done: BTreeSet::new(),
            ..a.clone()
        };
        let r = Restored::new(vec![a, b]);
        assert_eq!(r.floor().as_deref(), Some("a"));
        // listing a(0) b(1) c(2) d(3): subtask 0 owns a, c; subtask 1 owns b, d.
        assert!(r.was_done("a", 0));
        assert!(
            !r.was_done("b", 1),
            "b belongs to subtask 1, whose position is a"
        );
        assert!(!r.was_done("c", 2), "c is above subtask 0's position b");
        assert!(
            !r.was_done("d", 3),
            "d was done by subtask 0 but belongs to 1"
        );
    }
}
