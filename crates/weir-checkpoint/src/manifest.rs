//! The manifest: the JSON document that, written last into a checkpoint folder, makes the
//! checkpoint complete.
//!
//! A [`Manifest`] names the job, the checkpoint id, the key-group count, and for every node its
//! parallelism and its state files ([`FileEntry`]: subtask, path relative to the checkpoint folder,
//! size in bytes, [`Checksum`] of the bytes). A checkpoint whose manifest is missing is incomplete;
//! one whose manifest or files do not verify is corrupt. Both are skipped on restore.
//!
//! # Self-checksum
//!
//! The manifest carries a checksum of its own content in a last field, `manifest_checksum`, so a
//! torn write or a flipped bit is detected even when the JSON still parses. The checksum is xxh3-64
//! over the *canonical* serialisation: the [`Manifest`] struct written by `serde_json::to_vec`
//! (compact, fields in declaration order, `extra` sorted by key) without `manifest_checksum`. A
//! reader parses the file, removes `manifest_checksum`, re-serialises canonically and compares, so
//! the file itself may be pretty-printed (it is, for people reading it) without affecting the check.
//!
//! ```text
//! {
//!   "format_version": 1,
//!   "job": "classify",
//!   "checkpoint_id": 12,
//!   "created_at_ms": 1767225600000,
//!   "max_parallelism": 128,
//!   "nodes": [
//!     { "node": "map", "parallelism": 2, "files": [
//!       { "subtask": 0, "path": "map-0.state", "size": 1234, "checksum": "xxh3-64:00c0ffee00c0ffee" } ] }
//!   ],
//!   "extra": {},
//!   "manifest_checksum": "xxh3-64:0123456789abcdef"
//! }
//! ```
//!
//! A subtask without a file had no state to write (or finished earlier, see the coordinator docs);
//! it restores from an empty [`StateSnapshot`](crate::StateSnapshot).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use weir_types::{CheckpointId, Error, ErrorKind, Result};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

const CHECKSUM_FIELD: &str = "manifest_checksum";

/// A checksum of some bytes, written as `"<algorithm>:<hex>"`.
///
/// Only xxh3-64 (`"xxh3-64:"` and 16 lowercase hex digits) is produced and understood today; the
/// algorithm prefix lets a later version add others (for example sha256) without a format change.
/// A manifest naming an unknown algorithm is rejected as unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Checksum {
    /// XXH3 64-bit (seed 0) of the bytes.
    Xxh3_64(u64),
}

impl Checksum {
    /// The xxh3-64 checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Checksum::Xxh3_64(xxhash_rust::xxh3::xxh3_64(bytes))
    }

    /// Whether `bytes` have this checksum.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        match self {
            Checksum::Xxh3_64(_) => Self::of(bytes) == *self,
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Xxh3_64(v) => write!(f, "xxh3-64:{v:016x}"),
        }
    }
}

impl std::str::FromStr for Checksum {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("xxh3-64", hex))
                if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                u64::from_str_radix(hex, 16)
                    .map(Checksum::Xxh3_64)
                    .map_err(|e| format!("bad checksum '{s}': {e}"))
            }
            Some(("xxh3-64", _)) => Err(format!("bad checksum '{s}': expected 16 hex digits")),
            Some((algo, _)) => Err(format!("unsupported checksum algorithm '{algo}' in '{s}'")),
            None => Err(format!("bad checksum '{s}': expected '<algorithm>:<hex>'")),
        }
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One state file of one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The subtask (`0..parallelism`) whose state this is.
    pub subtask: u32,
    /// Path relative to the checkpoint folder, `/`-separated (for example `map-0.state`).
    pub path: String,
    /// Size in bytes of the file as written.
    pub size: u64,
    /// Checksum of the file's bytes as written.
    pub checksum: Checksum,
    /// Key groups of this subtask's state that did not change since an earlier checkpoint and
    /// are not in this file: each reference names the earlier file that holds them (an
    /// incremental checkpoint, see [`PartRef`]). Empty for a full snapshot; absent from the JSON
    /// then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<PartRef>,
}

impl FileEntry {
    /// An entry for a file that holds all of the subtask's state (no references).
    pub fn new(subtask: u32, path: impl Into<String>, size: u64, checksum: Checksum) -> Self {
        FileEntry {
            subtask,
            path: path.into(),
            size,
            checksum,
            refs: Vec::new(),
        }
    }

    /// The payload bytes of the key groups taken from earlier checkpoints.
    pub fn referred_bytes(&self) -> u64 {
        self.refs.iter().map(|r| r.bytes).sum()
    }
}

/// Keyed state that an incremental checkpoint takes from a file of an earlier checkpoint instead
/// of writing it again: the keyed entries of `key_groups` in the file `path` of checkpoint
/// `checkpoint` (written by the same subtask). The file is identified by its size and checksum,
/// so a restore verifies it like one of its own; a reference always names the file that holds
/// the bytes (never another reference), so reading one takes one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRef {
    /// The earlier checkpoint whose folder holds the file.
    pub checkpoint: CheckpointId,
    /// Path relative to that checkpoint's folder.
    pub path: String,
    /// Size in bytes of that file.
    pub size: u64,
    /// Checksum of that file's bytes.
    pub checksum: Checksum,
    /// The key groups taken from it, ascending, each once.
    pub key_groups: Vec<u32>,
    /// The payload bytes of those key groups' entries (what this checkpoint did not write).
    pub bytes: u64,
}

/// The state files of one node of the job graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// The node's name, unique in the job (the runtime's node name).
    pub node: String,
    /// The node's parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// At most one file per subtask, in any order.
    pub files: Vec<FileEntry>,
}

/// The table of contents of one complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The job's name.
    pub job: String,
    /// The checkpoint's id; equals the id in the folder name.
    pub checkpoint_id: CheckpointId,
    /// When the checkpoint was completed (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// The number of key groups of the job; keyed state is only valid under this value.
    pub max_parallelism: u32,
    /// The nodes that wrote state, each at most once.
    pub nodes: Vec<NodeState>,
    /// Free-form facts the runtime wants to keep with the checkpoint (for example the plan's
    /// fingerprint or the ids of finished tasks); weir-checkpoint does not interpret them.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ManifestFile<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    manifest_checksum: Checksum,
}

impl Manifest {
    /// An empty manifest of the current format version.
    pub fn new(
        job: impl Into<String>,
        checkpoint_id: CheckpointId,
        created_at_ms: u64,
        max_parallelism: u32,
    ) -> Self {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            job: job.into(),
            checkpoint_id,
            created_at_ms,
            max_parallelism,
            nodes: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Declares `node` with `parallelism` (so that it appears even when no subtask wrote a file).
    /// Returns the node's entry; if it exists, its parallelism is left unchanged.
    pub fn add_node(&mut self, node: &str, parallelism: u32) -> &mut NodeState {
        let idx = match self.nodes.iter().position(|n| n.node == node) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeState {
                    node: node.to_owned(),
                    parallelism,
                    files: Vec::new(),
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[idx]
    }

    /// Records the file that subtask `file.subtask` of `node` (of `parallelism`) wrote.
    pub fn add_file(&mut self, node: &str, parallelism: u32, file: FileEntry) {
        self.add_node(node, parallelism).files.push(file);
    }

    /// The entry of `node`, if it wrote state.
    pub fn node(&self, node: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.node == node)
    }

    /// The file of `subtask` of `node`, if it wrote one.
    pub fn file(&self, node: &str, subtask: u32) -> Option<&FileEntry> {
        self.node(node)?.files.iter().find(|f| f.subtask == subtask)
    }

    /// Every file with its node, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = (&NodeState, &FileEntry)> {
        self.nodes
            .iter()
            .flat_map(|n| n.files.iter().map(move |f| (n, f)))
    }

    /// The sum of the sizes of the listed files: the bytes this checkpoint wrote.
    pub fn state_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.size).sum()
    }

    /// The payload bytes of the key groups this checkpoint takes from earlier ones (see
    /// [`PartRef`]): what an incremental checkpoint did not write again.
    pub fn referred_bytes(&self) -> u64 {
        self.files().map(|(_, f)| f.referred_bytes()).sum()
    }

    /// Every file of an earlier checkpoint that this one refers to, as `(checkpoint, path)`, each
    /// once.
    pub fn referenced_files(&self) -> BTreeSet<(CheckpointId, &str)> {
        self.files()
            .flat_map(|(_, f)| f.refs.iter().map(|r| (r.checkpoint, r.path.as_str())))
            .collect()
    }

    /// The checksum of the canonical serialisation (see the [module docs](self)).
    pub fn content_checksum(&self) -> Result<Checksum> {
        let canonical = serde_json::to_vec(self).map_err(|e| {
            Error::internal("cannot serialise a checkpoint manifest").with_source(e)
        })?;
        Ok(Checksum::of(&canonical))
    }

    /// Checks the structural rules a reader relies on; returns the first broken one.
    ///
    /// The format version is the current one; `max_parallelism` ≥ 1; node names are non-empty and
    /// unique; every parallelism ≥ 1; every file's subtask is below its node's parallelism and
    /// appears once per node; every path is relative, `/`-separated, without empty, `.` or `..`
    /// segments and without backslashes, and unique in the checkpoint.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "format version {} (this build reads version {MANIFEST_FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.max_parallelism == 0 {
            return Err("max parallelism is 0".into());
        }
        let mut names = BTreeSet::new();
        let mut paths = BTreeSet::new();
        for n in &self.nodes {
            if n.node.is_empty() {
                return Err("a node has an empty name".into());
            }
            if !names.insert(n.node.as_str()) {
                return Err(format!("node '{}' appears twice", n.node));
            }
            if n.parallelism == 0 {
                return Err(format!("node '{}' has parallelism 0", n.node));
            }
            let mut subtasks = BTreeSet::new();
            for f in &n.files {
                if f.subtask >= n.parallelism {
                    return Err(format!(
                        "node '{}' lists subtask {} but has parallelism {}",
                        n.node, f.subtask, n.parallelism
                    ));
                }
                if !subtasks.insert(f.subtask) {
                    return Err(format!(
                        "node '{}' lists subtask {} twice",
                        n.node, f.subtask
                    ));
                }
                check_relative_path(&f.path)?;
                if !paths.insert(f.path.as_str()) {
                    return Err(format!("file '{}' is listed twice", f.path));
                }
                self.check_refs(&n.node, f)?;
            }
        }
        Ok(())
    }

    /// The rules of one file's references: each names an earlier checkpoint and a plain
    /// relative path, at most once per file; its key groups are ascending, below
    /// `max_parallelism`, and taken from one reference only.
    fn check_refs(&self, node: &str, f: &FileEntry) -> std::result::Result<(), String> {
        let mut groups = BTreeSet::new();
        let mut files = BTreeSet::new();
        for r in &f.refs {
            let at = format!(
                "node '{node}' subtask {} refers to checkpoint {} file '{}'",
                f.subtask, r.checkpoint, r.path
            );
            if r.checkpoint >= self.checkpoint_id {
                return Err(format!("{at}, which is not an earlier checkpoint"));
            }
            check_relative_path(&r.path)?;
            if !files.insert((r.checkpoint, r.path.as_str())) {
                return Err(format!("{at} twice"));
            }
            if r.key_groups.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("{at} with key groups that are not ascending"));
            }
            for &kg in &r.key_groups {
                if kg >= self.max_parallelism {
                    return Err(format!(
                        "{at} for key group {kg}, but the max parallelism is {}",
                        self.max_parallelism
                    ));
                }
                if !groups.insert(kg) {
                    return Err(format!("{at} for key group {kg}, taken from two files"));
                }
            }
        }
        Ok(())
    }

    /// The manifest as written to storage: pretty JSON whose last field is `manifest_checksum`.
    ///
    /// Errors ([`ErrorKind::Internal`]) when [`check`](Self::check) fails: the runtime built a
    /// manifest that no reader would accept.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.check().map_err(|why| {
            Error::internal(format!(
                "refusing to write an invalid manifest for checkpoint {}: {why}",
                self.checkpoint_id
            ))
        })?;
        let file = ManifestFile {
            manifest: self,
            manifest_checksum: self.content_checksum()?,
        };
        let mut out = serde_json::to_vec_pretty(&file).map_err(|e| {
            Error::internal("cannot serialise a checkpoint manifest").with_source(e)
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses and verifies a manifest written by [`to_json`](Self::to_json).
    ///
    /// Errors (kind [`ErrorKind::Io`]: the stored bytes are damaged or foreign) when the bytes are
    /// not a JSON object, the `manifest_checksum` is missing or does not match the content, the
    /// format version is not this build's, a field is missing or unknown, or [`check`](Self::check)
    /// fails. The message says which.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| Error::new(ErrorKind::Io, format!("manifest is unreadable: {why}"));
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "not valid JSON ({e}); it may be truncated ({} bytes)",
                bytes.len()
            ))
        })?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let stored: Checksum = match map.remove(CHECKSUM_FIELD) {
            Some(serde_json::Value::String(s)) => s.parse().map_err(bad)?,
            Some(_) => return Err(bad(format!("{CHECKSUM_FIELD} is not a string"))),
            None => return Err(bad(format!("{CHECKSUM_FIELD} is missing"))),
        };
        match map.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == MANIFEST_FORMAT_VERSION as u64 => {}
            Some(v) => {
                return Err(bad(format!(
                    "format version {v} (this build reads version {MANIFEST_FORMAT_VERSION})"
                )));
            }
            None => return Err(bad("format_version is missing".into())),
        }
        let manifest: Manifest = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| bad(e.to_string()))?;
        let actual = manifest.content_checksum()?;
        if actual != stored {
            return Err(bad(format!(
                "manifest checksum mismatch (stored {stored}, content has {actual})"
            )));
        }
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }
}

fn check_relative_path(path: &str) -> std::result::Result<(), String> {
    let ok = !path.is_empty()
        && !path.contains('\\')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file path '{path}' is not a plain relative path inside the checkpoint folder"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new("job", 12, 1_767_225_600_000, 128);
        m.add_file(
            "map",
            2,
            FileEntry::new(0, "map-0.state", 10, Checksum::of(b"0123456789")),
        );
        m.add_node("sink", 1);
        m.extra.insert("plan".into(), "abc".into());
        m
    }

    #[test]
    fn round_trip_and_checksum_is_last() {
        let m = sample();
        let json = m.to_json().expect("to_json");
        let text = String::from_utf8(json.clone()).expect("utf8");
        let last_field = text.trim_end().trim_end_matches('}').trim_end();
        assert!(
            last_field
                .rsplit('\n')
                .next()
                .is_some_and(|l| l.contains("\"manifest_checksum\": \"xxh3-64:")),
            "{text}"
        );
        assert_eq!(Manifest::from_json(&json).expect("from_json"), m);
        assert_eq!(m.file("map", 0).map(|f| f.size), Some(10));
        assert!(m.file("map", 1).is_none());
        assert_eq!(m.node("sink").map(|n| n.files.len()), Some(0));
        assert_eq!(m.state_bytes(), 10);
    }

    #[test]
    fn whitespace_does_not_matter_but_content_does() {
        let m = sample();
        let json = m.to_json().expect("to_json");
        let compact: serde_json::Value = serde_json::from_slice(&json).expect("parse");
        let compact = serde_json::to_vec(&compact).expect("compact");
        assert_eq!(Manifest::from_json(&compact).expect("compact parses"), m);

        let edited = String::from_utf8(json)
            .expect("utf8")
            .replace("\"size\": 10", "\"size\": 11");
        let e = Manifest::from_json(edited.as_bytes()).expect_err("edited");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.message().contains("manifest checksum mismatch"), "{e}");
    }

    #[test]
    fn damage_is_reported_with_its_reason() {
        let json = sample().to_json().expect("to_json");
        let text = String::from_utf8(json.clone()).expect("utf8");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (json[..json.len() / 2].to_vec(), "truncated"),
            (b"[]".to_vec(), "not a JSON object"),
            (
                text.replace("\"manifest_checksum\"", "\"other\"")
                    .into_bytes(),
                "missing",
            ),
            (
                text.replace("\"format_version\": 1", "\"format_version\": 2")
                    .into_bytes(),
                "format version 2",
            ),
            (
                text.replace("xxh3-64:", "md5:").into_bytes(),
                "unsupported checksum algorithm",
            ),
            (
                text.replace("\"extra\"", "\"extras\"").into_bytes(),
                "unknown field",
            ),
        ];
        for (bytes, why) in cases {
            let e = Manifest::from_json(&bytes).expect_err(why);
            assert!(e.message().contains(why), "{e} should say {why}");
        }
    }

    #[test]
    fn structural_rules() {
        let entry = |subtask: u32, path: &str| FileEntry::new(subtask, path, 0, Checksum::of(b""));
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|m| m.max_parallelism = 0), "max parallelism is 0"),
            (Box::new(|m| m.nodes[0].parallelism = 0), "parallelism 0"),
            (
                Box::new(move |m| m.nodes[0].files.push(entry(5, "x"))),
                "subtask 5",
            ),
            (
                Box::new(move |m| m.nodes[0].files.push(entry(0, "y"))),
                "subtask 0 twice",
            ),
            (
                Box::new(move |m| m.nodes[0].files.push(entry(1, "map-0.state"))),
                "listed twice",
            ),
            (
                Box::new(move |m| m.nodes[0].files[0].path = "../x".into()),
                "relative",
            ),
            (
                Box::new(move |m| m.nodes[0].files[0].path = "/x".into()),
                "relative",
            ),
            (
                Box::new(|m| m.nodes[1].node = "map".into()),
                "appears twice",
            ),
            (Box::new(|m| m.nodes[1].node = String::new()), "empty name"),
        ];
        for (edit, why) in cases {
            let mut m = sample();
            edit(&mut m);
            let msg = m.check().expect_err(why);
            assert!(msg.contains(why), "{msg} should say {why}");
            let e = m.to_json().expect_err(why);
            assert_eq!(e.kind(), ErrorKind::Internal);
        }
        let mut nested = sample();
        nested.nodes[0].files[0].path = "channels/map-0.state".into();
        assert!(nested.check().is_ok());
    }

    fn with_refs() -> Manifest {
        let mut m = sample();
        m.nodes[0].files[0].refs = vec![
            PartRef {
                checkpoint: 9,
                path: "map-0.state".into(),
                size: 40,
                checksum: Checksum::of(b"nine"),
                key_groups: vec![1, 5, 6],
                bytes: 30,
            },
            PartRef {
                checkpoint: 11,
                path: "map-0.state".into(),
                size: 20,
                checksum: Checksum::of(b"eleven"),
                key_groups: vec![2],
                bytes: 12,
            },
        ];
        m
    }

    #[test]
    fn references_round_trip_and_are_counted() {
        let m = with_refs();
        let json = m.to_json().expect("to_json");
        assert_eq!(Manifest::from_json(&json).expect("from_json"), m);
        assert_eq!(m.state_bytes(), 10);
        assert_eq!(m.referred_bytes(), 42);
        let files: Vec<(CheckpointId, &str)> = m.referenced_files().into_iter().collect();
        assert_eq!(files, [(9, "map-0.state"), (11, "map-0.state")]);
        // A full snapshot's entry has no `refs` field at all (older readers parse it).
        let text = String::from_utf8(sample().to_json().expect("json")).expect("utf8");
        assert!(!text.contains("refs"), "{text}");
    }

    #[test]
    fn reference_rules() {
        type Edit = Box<dyn Fn(&mut PartRef)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|r| r.checkpoint = 12), "not an earlier checkpoint"),
            (Box::new(|r| r.checkpoint = 13), "not an earlier checkpoint"),
            (Box::new(|r| r.key_groups = vec![5, 1]), "not ascending"),
            (Box::new(|r| r.key_groups = vec![1, 1]), "not ascending"),
            (
                Box::new(|r| r.key_groups = vec![128]),
                "max parallelism is 128",
            ),
            (Box::new(|r| r.key_groups = vec![2]), "taken from two files"),
            (Box::new(|r| r.path = "../x".into()), "relative"),
            (
                Box::new(|r| {
                    r.checkpoint = 11;
                    r.key_groups = vec![3];
                }),
                "twice",
            ),
        ];
        for (edit, why) in cases {
            let mut m = with_refs();
            edit(&mut m.nodes[0].files[0].refs[0]);
            let msg = m.check().expect_err(why);
            assert!(msg.contains(why), "{msg} should say {why}");
        }
    }

    #[test]
    fn checksum_text_form() {
        let c = Checksum::Xxh3_64(0xabc);
        assert_eq!(c.to_string(), "xxh3-64:0000000000000abc");
        assert_eq!("xxh3-64:0000000000000abc".parse::<Checksum>(), Ok(c));
        assert!("xxh3-64:abc".parse::<Checksum>().is_err());
        assert!("sha256:00".parse::<Checksum>().is_err());
        assert!(Checksum::of(b"x").matches(b"x"));
        assert!(!Checksum::of(b"x").matches(b"y"));
    }

    proptest! {
        /// Any single flipped bit in a written manifest is detected (or, when it lands in
        /// whitespace, changes nothing).
        #[test]
        fn every_bit_flip_is_detected(byte in any::<prop::sample::Index>(), bit in 0u8..8) {
            let m = sample();
            let mut json = m.to_json().expect("to_json");
            let i = byte.index(json.len());
            json[i] ^= 1 << bit;
            if let Ok(parsed) = Manifest::from_json(&json) {
                prop_assert_eq!(parsed, m);
            }
        }

        #[test]
        fn extra_and_names_round_trip(
            job in ".{0,12}",
            extra in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            nodes in proptest::collection::btree_set("[a-z\u{e9} ]{1,6}", 0..4),
        ) {
            let mut m = Manifest::new(job, 3, 4, 8);
            m.extra = extra;
            for (i, n) in nodes.iter().enumerate() {
                m.add_file(n, 2, FileEntry::new(1, format!("f{i}"), 1, Checksum::of(n.as_bytes())));
            }
            let json = m.to_json().expect("to_json");
            prop_assert_eq!(Manifest::from_json(&json).expect("from_json"), m);
        }
    }
}
