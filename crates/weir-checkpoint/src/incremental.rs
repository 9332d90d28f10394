//! Incremental snapshots: which key groups of a subtask's state changed since its last
//! checkpoint, so that a checkpoint writes only those and refers to earlier files for the rest.
//!
//! A [`Tracker`] belongs to one node of one subtask (one state file per checkpoint). At every
//! checkpoint [`Tracker::encode`] takes the subtask's [`StateSnapshot`], digests each key group's
//! keyed entries (xxh3-128 over their lengths and bytes, in order) and compares the digest with
//! the one the key group had at the tracker's previous snapshot:
//!
//! - a changed (or new) key group's entries are written into this checkpoint's file;
//! - an unchanged one is not written: the file's [`FileEntry`] gets a [`PartRef`] to the earlier
//!   file that holds those bytes (always the file that holds them, never another reference);
//! - union entries (not keyed) are always written;
//! - a key group that is gone is simply not mentioned.
//!
//! Detecting changes by content keeps the contract of operators unchanged: any operator that
//! writes its keyed state per key group (every stateful step does, through `weir-state`'s parts)
//! gets incremental checkpoints, and a key group whose state is rebuilt byte for byte the same is
//! not written again. The operators still serialise every key group at a barrier; what is saved is
//! the bytes written to (and kept in) the checkpoint store.
//!
//! # Bounded chains, aborted checkpoints
//!
//! Every `full_every`-th snapshot (and the first one, and every one after a restore, since a new
//! tracker knows nothing) writes everything, so a restore never reads more than `full_every`
//! checkpoints' files, and retention can let old files go. When a checkpoint is aborted
//! ([`Tracker::aborted`]), its files are deleted: every key group whose bytes were written there is
//! forgotten and written again at the next checkpoint. A checkpoint that refers to one that then
//! did not complete must itself not complete; the runtime checks that when it writes the manifest.
//!
//! # Why references stay valid under retention
//!
//! A key group's location only moves forward, and every snapshot between the one that wrote its
//! bytes and the newest one refers to those same bytes. So any completed checkpoint taken since
//! then refers to (or is) the file, and [`CheckpointStore::retain`](crate::CheckpointStore::retain)
//! keeps every file a kept checkpoint refers to.

use crate::manifest::{Checksum, FileEntry, PartRef};
use crate::state::{StateKey, StateSnapshot};
use crate::store::{CheckpointStore, EncodedState};
use std::collections::{BTreeMap, BTreeSet};
use weir_types::CheckpointId;

/// Whether and how checkpoints are incremental (the `checkpoint:` section's `incremental` and
/// `full_every`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrementalConfig {
    /// Write only changed key groups. Off: every checkpoint is full.
    pub enabled: bool,
    /// Every this many snapshots one is full (1: all of them). At least 1.
    pub full_every: u32,
}

impl Default for IncrementalConfig {
    fn default() -> Self {
        IncrementalConfig {
            enabled: true,
            full_every: 10,
        }
    }
}

/// Where a key group's bytes were last written, and what they were.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    digest: u128,
    bytes: u64,
    file: FileAt,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileAt {
    checkpoint: CheckpointId,
    path: String,
    size: u64,
    checksum: Checksum,
}

/// The change tracker of one node's state on one subtask (see the [module docs](self)).
#[derive(Debug)]
pub struct Tracker {
    node: String,
    subtask: u32,
    config: IncrementalConfig,
    /// Snapshots since the last full one (0 right after it).
    since_full: u32,
    /// Every key group of the previous snapshot with where its bytes are.
    groups: BTreeMap<u32, Located>,
    /// Checkpoints known to be aborted whose snapshot may not have been encoded yet.
    aborted: BTreeSet<CheckpointId>,
}

impl Tracker {
    /// A tracker for `subtask` of `node` that knows nothing yet (its first snapshot is full).
    pub fn new(node: impl Into<String>, subtask: u32, config: IncrementalConfig) -> Self {
        Tracker {
            node: node.into(),
            subtask,
            config: IncrementalConfig {
                full_every: config.full_every.max(1),
                ..config
            },
            since_full: 0,
            groups: BTreeMap::new(),
            aborted: BTreeSet::new(),
        }
    }

    /// Encodes `snapshot` as this subtask's file of checkpoint `id`: the changed key groups and
    /// the union entries, with references for the unchanged key groups in its entry. `None` when
    /// the snapshot is empty (no file, as for a stateless node). Call it once per checkpoint, in
    /// checkpoint order; pure CPU work proportional to the state's size.
    pub fn encode(&mut self, id: CheckpointId, snapshot: &StateSnapshot) -> Option<EncodedState> {
        if snapshot.is_empty() {
            self.groups.clear();
            return None;
        }
        let full = !self.config.enabled
            || self.groups.is_empty()
            || self.since_full + 1 >= self.config.full_every;
        if full {
            self.since_full = 0;
        } else {
            self.since_full += 1;
        }
        let digests = digest_key_groups(snapshot);
        let unchanged: BTreeSet<u32> = if full {
            BTreeSet::new()
        } else {
            digests
                .iter()
                .filter(|(kg, (digest, bytes))| {
                    self.groups
                        .get(kg)
                        .is_some_and(|l| l.digest == *digest && l.bytes == *bytes)
                })
                .map(|(kg, _)| *kg)
                .collect()
        };
        let mut own = StateSnapshot::new();
        own.entries = snapshot
            .entries
            .iter()
            .filter(|e| !matches!(e.key, StateKey::KeyGroup(kg) if unchanged.contains(&kg)))
            .cloned()
            .collect();
        let mut encoded = CheckpointStore::encode_state(&self.node, self.subtask, &own);
        let mut refs: BTreeMap<FileAt, PartRef> = BTreeMap::new();
        for kg in &unchanged {
            let l = &self.groups[kg];
            let r = refs.entry(l.file.clone()).or_insert_with(|| PartRef {
                checkpoint: l.file.checkpoint,
                path: l.file.path.clone(),
                size: l.file.size,
                checksum: l.file.checksum,
                key_groups: Vec::new(),
                bytes: 0,
            });
            r.key_groups.push(*kg);
            r.bytes += l.bytes;
        }
        encoded.entry.refs = refs.into_values().collect();
        let here = FileAt {
            checkpoint: id,
            path: encoded.entry.path.clone(),
            size: encoded.entry.size,
            checksum: encoded.entry.checksum,
        };
        let recorded = !self.aborted.contains(&id);
        let mut groups = BTreeMap::new();
        for (kg, (digest, bytes)) in digests {
            if unchanged.contains(&kg) {
                groups.insert(kg, self.groups[&kg].clone());
            } else if recorded {
                groups.insert(
                    kg,
                    Located {
                        digest,
                        bytes,
                        file: here.clone(),
                    },
                );
            }
        }
        self.groups = groups;
        Some(encoded)
    }

    /// Checkpoint `id` will not complete (its files are deleted): the key groups whose bytes were
    /// written there are written again at the next checkpoint.
    pub fn aborted(&mut self, id: CheckpointId) {
        self.aborted.insert(id);
        self.groups.retain(|_, l| l.file.checkpoint != id);
    }

    /// Checkpoint `id` completed: forgets the aborted ids up to it (their snapshots were encoded
    /// before `id`'s).
    pub fn completed(&mut self, id: CheckpointId) {
        self.aborted = self.aborted.split_off(&(id + 1));
    }
}

/// Per key group of `snapshot`: the digest of its keyed entries (in order) and their payload
/// bytes.
fn digest_key_groups(snapshot: &StateSnapshot) -> BTreeMap<u32, (u128, u64)> {
    let mut hashers: BTreeMap<u32, (xxhash_rust::xxh3::Xxh3, u64)> = BTreeMap::new();
    for e in &snapshot.entries {
        if let StateKey::KeyGroup(kg) = e.key {
            let (h, n) = hashers
                .entry(kg)
                .or_insert_with(|| (xxhash_rust::xxh3::Xxh3::new(), 0));
            h.update(&(e.bytes.len() as u64).to_le_bytes());
            h.update(&e.bytes);
            *n += e.bytes.len() as u64;
        }
    }
    hashers
        .into_iter()
        .map(|(kg, (h, n))| (kg, (h.digest128(), n)))
        .collect()
}

/// The refs of `entry` that name a checkpoint not in `completed`, as `(checkpoint, path)`: a
/// checkpoint with such a reference must not complete.
pub fn dangling_refs<'a>(
    entry: &'a FileEntry,
    completed: &'a BTreeSet<CheckpointId>,
) -> impl Iterator<Item = (CheckpointId, &'a str)> {
    entry
        .refs
        .iter()
        .filter(|r| !completed.contains(&r.checkpoint))
        .map(|r| (r.checkpoint, r.path.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(groups: &[(u32, &str)]) -> StateSnapshot {
        let mut s = StateSnapshot::new();
        for (kg, v) in groups {
            s.push_keyed(*kg, v.as_bytes().to_vec());
        }
        s.push_union("w", b"1".to_vec()).expect("key");
        s
    }

    fn written(e: &EncodedState) -> Vec<u32> {
        let s = StateSnapshot::decode(e.bytes()).expect("decode");
        let mut kgs: Vec<u32> = s
            .entries
            .iter()
            .filter_map(|e| match e.key {
                StateKey::KeyGroup(kg) => Some(kg),
                StateKey::Union(_) => None,
            })
            .collect();
        kgs.dedup();
        kgs
    }

    #[test]
    fn only_changed_key_groups_are_written_and_the_rest_referred_to() {
        let mut t = Tracker::new("agg", 0, IncrementalConfig::default());
        let e1 = t
            .encode(1, &snap(&[(1, "a"), (2, "b"), (3, "c")]))
            .expect("file");
        assert_eq!(written(&e1), [1, 2, 3]);
        assert!(e1.entry.refs.is_empty());
        let e2 = t
            .encode(2, &snap(&[(1, "a"), (2, "B"), (3, "c")]))
            .expect("file");
        assert_eq!(written(&e2), [2]);
        assert_eq!(e2.entry.refs.len(), 1);
        let r = &e2.entry.refs[0];
        assert_eq!(
            (r.checkpoint, r.key_groups.clone(), r.bytes),
            (1, vec![1, 3], 2)
        );
        assert_eq!((r.size, r.checksum), (e1.entry.size, e1.entry.checksum));
        // Key group 3 gone, 2 unchanged since 2, 1 unchanged since 1: two references, each to
        // the file that holds the bytes.
        let e3 = t.encode(3, &snap(&[(1, "a"), (2, "B")])).expect("file");
        assert_eq!(written(&e3), Vec::<u32>::new());
        let refs: Vec<(CheckpointId, Vec<u32>)> = e3
            .entry
            .refs
            .iter()
            .map(|r| (r.checkpoint, r.key_groups.clone()))
            .collect();
        assert_eq!(refs, [(1, vec![1]), (2, vec![2])]);
        assert_eq!(e3.entry.referred_bytes(), 2);
    }

    #[test]
    fn every_nth_snapshot_is_full_and_disabled_is_always_full() {
        let s = snap(&[(1, "a"), (2, "b")]);
        let mut t = Tracker::new(
            "agg",
            0,
            IncrementalConfig {
                enabled: true,
                full_every: 3,
            },
        );
        let full: Vec<bool> = (1..=7)
            .map(|id| t.encode(id, &s).expect("file").entry.refs.is_empty())
            .collect();
        assert_eq!(full, [true, false, false, true, false, false, true]);
        let mut off = Tracker::new(
            "agg",
            0,
            IncrementalConfig {
                enabled: false,
                full_every: 10,
            },
        );
        for id in 1..4 {
            assert!(off.encode(id, &s).expect("file").entry.refs.is_empty());
        }
    }

    #[test]
    fn an_aborted_checkpoint_is_never_referred_to() {
        let s = snap(&[(1, "a"), (2, "b")]);
        let mut t = Tracker::new("agg", 0, IncrementalConfig::default());
        t.encode(1, &s).expect("file");
        t.encode(2, &snap(&[(1, "a"), (2, "c")])).expect("file");
        t.aborted(2);
        // Key group 2's bytes were in 2: written again; key group 1 still from 1.
        let e3 = t.encode(3, &snap(&[(1, "a"), (2, "c")])).expect("file");
        assert_eq!(written(&e3), [2]);
        assert_eq!(e3.entry.refs[0].checkpoint, 1);
        // Aborted before it was encoded: its bytes are not recorded either.
        t.aborted(4);
        t.encode(4, &snap(&[(1, "z"), (2, "c")])).expect("file");
        let e5 = t.encode(5, &snap(&[(1, "z"), (2, "c")])).expect("file");
        assert_eq!(written(&e5), [1]);
        t.completed(5);
        assert!(t.aborted.is_empty());
        // An empty snapshot writes no file and forgets everything.
        assert!(t.encode(6, &StateSnapshot::new()).is_none());
        assert!(t.encode(7, &s).expect("file").entry.refs.is_empty());
    }

    #[test]
    fn dangling_references_are_found() {
        let mut t = Tracker::new("agg", 0, IncrementalConfig::default());
        t.encode(1, &snap(&[(1, "a")])).expect("file");
        let e = t.encode(2, &snap(&[(1, "a")])).expect("file");
        let none = BTreeSet::new();
        assert_eq!(dangling_refs(&e.entry, &none).count(), 1);
        assert_eq!(dangling_refs(&e.entry, &BTreeSet::from([1])).count(), 0);
    }
}
