//! What a task hands over at a barrier, and how that state is handed back on restore, also at a
//! different parallelism.
//!
//! A [`StateSnapshot`] is a list of [`StateEntry`]s, each an opaque byte string under a
//! [`StateKey`]. The key says how the entry moves when the parallelism changes:
//!
//! - [`StateKey::KeyGroup`]: keyed state of one key group. On restore it goes to the one subtask
//!   that owns the key group at the new parallelism
//!   ([`weir_types::KeyGroupRange::for_subtask`]), so rows and their state stay together.
//! - [`StateKey::Union`]: list state that is not partitioned by key (a source's file positions, a
//!   sink's staged commits). On restore *every* subtask of the node receives *every* union entry of
//!   *every* old subtask and picks what it needs (for example the files it is now assigned). Its
//!   [`UnionKey`] is a typed value of the operator's choosing (any serde type, typically an enum:
//!   `File(path)`, `Staged(path)`), stored as its JSON text and read back as that type.
//!
//! [`redistribute`] is the pure function that does this; [`StateSnapshot::encode`] and
//! [`StateSnapshot::decode`] are the versioned binary form written into checkpoint files.
//!
//! # Binary format, version 2
//!
//! All integers little-endian.
//!
//! ```text
//! magic    8 bytes   "WEIRSTAT"
//! version  u16       2
//! count    u32       number of entries
//! count × entry:
//!   tag    u8        0 = key group, 1 = union
//!   tag 0: u32       key group
//!   tag 1: u32 len, then len bytes of UTF-8: the union key as JSON
//!   size   u64       payload length, then size bytes of payload
//! ```
//!
//! Version 1 (before union keys were typed) is read too: its union names become JSON strings.
//!
//! Nothing may follow the last entry. The file's integrity is checked by the checksum in the
//! [`Manifest`](crate::Manifest) before it is decoded; decoding still checks every length, so a
//! corrupt file gives an error, never a panic or a huge allocation.

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_types::key_group::subtask_of_key_group;
use weir_types::{Error, ErrorKind, Result};

/// The first bytes of every encoded state file.
pub const STATE_MAGIC: &[u8; 8] = b"WEIRSTAT";
/// The version of the binary format written by [`StateSnapshot::encode`].
pub const STATE_FORMAT_VERSION: u16 = 2;

/// The key of a union entry: a typed value of the operator's choosing, kept as its JSON text.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use weir_checkpoint::StateSnapshot;
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// enum Key { File(String), Epoch(u32) }
///
/// let mut s = StateSnapshot::new();
/// s.push_union(&Key::File("a.txt".into()), b"42".to_vec()).unwrap();
/// let (key, bytes) = s.unions::<Key>().next().unwrap().unwrap();
/// assert_eq!((key, bytes), (Key::File("a.txt".into()), &b"42"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnionKey(String);

impl UnionKey {
    /// The key `key`. Errors (kind `Internal`) only when `key`'s `Serialize` fails (a map with
    /// keys that are not strings, a failing custom impl).
    pub fn new<K: Serialize + ?Sized>(key: &K) -> Result<Self> {
        serde_json::to_string(key).map(UnionKey).map_err(|e| {
            Error::internal(format!(
                "cannot write a state key of type {}",
                std::any::type_name::<K>()
            ))
            .with_source(e)
        })
    }

    /// Reads the key as a `K`. Errors (kind `Io`: it comes from a checkpoint) when it is not one.
    pub fn parse<K: DeserializeOwned>(&self) -> Result<K> {
        serde_json::from_str(&self.0).map_err(|e| {
            corrupt(format!(
                "union key {} is not a {}",
                self.0,
                std::any::type_name::<K>()
            ))
            .with_source(e)
        })
    }

    /// The key's JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UnionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const TAG_KEY_GROUP: u8 = 0;
const TAG_UNION: u8 = 1;

/// How a state entry is routed on restore.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKey {
    /// Keyed state of one key group (`0..max_parallelism`); restored to the subtask owning it.
    KeyGroup(u32),
    /// Non-keyed list state under a typed key; restored to every subtask of the node.
    Union(UnionKey),
}

/// One piece of state: opaque bytes under a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// Where the entry goes on restore.
    pub key: StateKey,
    /// The operator's serialised state; weir never looks inside.
    pub bytes: Vec<u8>,
}

/// Everything one subtask hands over at a barrier (and receives back on restore).
///
/// Several entries may share a key (for example one entry per named state per key group); they are
/// kept in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// The entries, in the order the task produced them.
    pub entries: Vec<StateEntry>,
}

impl StateSnapshot {
    /// An empty snapshot (the state of a stateless task).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds keyed state for `key_group`.
    pub fn push_keyed(&mut self, key_group: u32, bytes: impl Into<Vec<u8>>) {
        self.entries.push(StateEntry {
            key: StateKey::KeyGroup(key_group),
            bytes: bytes.into(),
        });
    }

    /// Adds a union entry under `key` (any serde value; see [`UnionKey`]). Errors only when the
    /// key cannot be serialised.
    pub fn push_union<K: Serialize + ?Sized>(
        &mut self,
        key: &K,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<()> {
        self.entries.push(StateEntry {
            key: StateKey::Union(UnionKey::new(key)?),
            bytes: bytes.into(),
        });
        Ok(())
    }

    /// The payloads of the keyed entries of `key_group`, in order.
    pub fn keyed(&self, key_group: u32) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().filter_map(move |e| match e.key {
            StateKey::KeyGroup(kg) if kg == key_group => Some(e.bytes.as_slice()),
            _ => None,
        })
    }

    /// The union entries as `(key, payload)`, in order, each key read as a `K`; a key that is
    /// not a `K` is an error (kind `Io`) naming it.
    pub fn unions<K: DeserializeOwned>(&self) -> impl Iterator<Item = Result<(K, &[u8])>> {
        self.union_entries()
            .map(|(k, b)| k.parse::<K>().map(|k| (k, b)))
    }

    /// The union entries as `(key, payload)`, in order, with their keys as written.
    pub fn union_entries(&self) -> impl Iterator<Item = (&UnionKey, &[u8])> {
        self.entries.iter().filter_map(|e| match &e.key {
            StateKey::Union(key) => Some((key, e.bytes.as_slice())),
            StateKey::KeyGroup(_) => None,
        })
    }

    /// The number of payload bytes (without keys and framing).
    pub fn payload_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes.len() as u64).sum()
    }

    /// Encodes the snapshot in the binary format described in the [module docs](self).
    pub fn encode(&self) -> Vec<u8> {
        let framing: usize = self
            .entries
            .iter()
            .map(|e| match &e.key {
                StateKey::KeyGroup(_) => 1 + 4 + 8,
                StateKey::Union(key) => 1 + 4 + key.0.len() + 8,
            })
            .sum();
        let mut out = Vec::with_capacity(14 + framing + self.payload_bytes() as usize);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            match &entry.key {
                StateKey::KeyGroup(kg) => {
                    out.push(TAG_KEY_GROUP);
                    out.extend_from_slice(&kg.to_le_bytes());
                }
                StateKey::Union(key) => {
                    out.push(TAG_UNION);
                    out.extend_from_slice(&(key.0.len() as u32).to_le_bytes());
                    out.extend_from_slice(key.0.as_bytes());
                }
            }
            out.extend_from_slice(&(entry.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&entry.bytes);
        }
        out
    }

    /// Decodes bytes written by [`encode`](Self::encode).
    ///
    /// Errors (kind [`ErrorKind::Io`], since the bytes come from storage) on a wrong magic, an
    /// unknown version, a truncated or over-long input, an unknown tag or a name that is not UTF-8.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(8)? != STATE_MAGIC {
            return Err(corrupt("it does not start with the state magic bytes"));
        }
        let version = r.u16()?;
        if version != STATE_FORMAT_VERSION && version != 1 {
            return Err(corrupt(format!(
                "unsupported state format version {version} (this build reads version {STATE_FORMAT_VERSION})"
            )));
        }
        let count = r.u32()?;
        // Every entry takes at least 13 bytes, so a count larger than that is corrupt; checking
        // first avoids allocating for a bogus count.
        if count as usize > r.remaining() / 13 {
            return Err(corrupt(format!(
                "it claims {count} entries in {} bytes",
                r.remaining()
            )));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count {
            let key = match r.u8()? {
                TAG_KEY_GROUP => StateKey::KeyGroup(r.u32()?),
                TAG_UNION => {
                    let len = r.u32()? as usize;
                    let name = std::str::from_utf8(r.take(len)?)
                        .map_err(|_| corrupt(format!("entry {i} has a name that is not UTF-8")))?;
                    if version == 1 {
                        StateKey::Union(UnionKey::new(name)?)
                    } else {
                        StateKey::Union(UnionKey(name.to_owned()))
                    }
                }
                tag => return Err(corrupt(format!("entry {i} has unknown tag {tag}"))),
            };
            let size = r.u64()?;
            let size = usize::try_from(size)
                .map_err(|_| corrupt(format!("entry {i} claims {size} bytes")))?;
            entries.push(StateEntry {
                key,
                bytes: r.take(size)?.to_vec(),
            });
        }
        if r.remaining() != 0 {
            return Err(corrupt(format!(
                "{} unexpected bytes follow the last entry",
                r.remaining()
            )));
        }
        Ok(StateSnapshot { entries })
    }
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("checkpoint state is corrupt: {why}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(corrupt(format!(
                "it ends after {} bytes, {} more were expected at offset {}",
                self.bytes.len(),
                n - self.remaining(),
                self.pos
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Hands the state of a node's old subtasks to `new_parallelism` new subtasks.
///
/// `old` holds `(old subtask index, snapshot)` for every old subtask that left state (subtasks with
/// no file may be missing). The result has exactly `new_parallelism` snapshots, index = new subtask:
///
/// - a keyed entry of key group `kg` goes to the one new subtask whose
///   [`KeyGroupRange::for_subtask`](weir_types::KeyGroupRange::for_subtask)`(max_parallelism,
///   new_parallelism, i)` contains `kg`;
/// - every union entry of every old subtask goes to every new subtask.
///
/// Order is deterministic: old subtasks in ascending index, and within one old subtask the entries
/// in their original order. At the same parallelism keyed entries stay where they were. The input
/// is taken by value so that keyed payloads are moved, not copied (union payloads are cloned, once
/// per new subtask).
///
/// Errors ([`ErrorKind::Config`]) when `new_parallelism` is 0, or exceeds `max_parallelism` while
/// there is keyed state (a node with only union state may run wider than the key-group count);
/// ([`ErrorKind::Io`]) when an entry's key group is not below `max_parallelism` or an old subtask
/// index appears twice, which means the checkpoint was written with different settings or is
/// corrupt.
pub fn redistribute(
    mut old: Vec<(u32, StateSnapshot)>,
    new_parallelism: u32,
    max_parallelism: u32,
) -> Result<Vec<StateSnapshot>> {
    if new_parallelism == 0 {
        return Err(Error::config("cannot restore state at parallelism 0"));
    }
    old.sort_by_key(|(subtask, _)| *subtask);
    if let Some(w) = old.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(corrupt(format!("old subtask {} appears twice", w[0].0)));
    }
    let mut new: Vec<StateSnapshot> = vec![StateSnapshot::new(); new_parallelism as usize];
    for (subtask, snapshot) in old {
        for entry in snapshot.entries {
            match entry.key {
                StateKey::KeyGroup(kg) => {
                    check_key_group(kg, subtask, new_parallelism, max_parallelism)?;
                    let owner = subtask_of_key_group(kg, max_parallelism, new_parallelism);
                    new[owner as usize].entries.push(StateEntry {
                        key: StateKey::KeyGroup(kg),
                        bytes: entry.bytes,
                    });
                }
                StateKey::Union(_) => {
                    for target in &mut new {
                        target.entries.push(entry.clone());
                    }
                }
            }
        }
    }
    Ok(new)
}

/// The state that new subtask `subtask` of `new_parallelism` restores from: exactly
/// [`redistribute`]`(old, new_parallelism, max_parallelism)[subtask]`, without building the
/// other subtasks' shares (each task reads its own state on restore).
///
/// Errors as [`redistribute`] does, and (kind `Internal`) when `subtask >= new_parallelism`.
pub fn state_for_subtask(
    mut old: Vec<(u32, StateSnapshot)>,
    new_parallelism: u32,
    max_parallelism: u32,
    subtask: u32,
) -> Result<StateSnapshot> {
    if new_parallelism == 0 {
        return Err(Error::config("cannot restore state at parallelism 0"));
    }
    if subtask >= new_parallelism {
        return Err(Error::internal(format!(
            "subtask {subtask} does not exist at parallelism {new_parallelism}"
        )));
    }
    old.sort_by_key(|(subtask, _)| *subtask);
    if let Some(w) = old.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(corrupt(format!("old subtask {} appears twice", w[0].0)));
    }
    let mut mine = StateSnapshot::new();
    for (old_subtask, snapshot) in old {
        for entry in snapshot.entries {
            match entry.key {
                StateKey::KeyGroup(kg) => {
                    check_key_group(kg, old_subtask, new_parallelism, max_parallelism)?;
                    if subtask_of_key_group(kg, max_parallelism, new_parallelism) == subtask {
                        mine.entries.push(entry);
                    }
                }
                StateKey::Union(_) => mine.entries.push(entry),
            }
        }
    }
    Ok(mine)
}

/// Whether keyed state of `kg` (from old subtask `subtask`) can be restored at `new_parallelism`.
fn check_key_group(
    kg: u32,
    subtask: u32,
    new_parallelism: u32,
    max_parallelism: u32,
) -> Result<()> {
    if kg >= max_parallelism {
        return Err(corrupt(format!(
            "old subtask {subtask} holds key group {kg}, but the max parallelism is \
             {max_parallelism}"
        )));
    }
    if new_parallelism > max_parallelism {
        return Err(Error::config(format!(
            "cannot restore keyed state at parallelism {new_parallelism}: it must not exceed the \
             max parallelism {max_parallelism}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_types::KeyGroupRange;

    fn keyed(kg: u32, b: &[u8]) -> StateEntry {
        StateEntry {
            key: StateKey::KeyGroup(kg),
            bytes: b.to_vec(),
        }
    }

    fn union(n: &str, b: &[u8]) -> StateEntry {
        StateEntry {
            key: StateKey::Union(UnionKey::new(n).expect("key")),
            bytes: b.to_vec(),
        }
    }

    #[test]
    fn scale_up_moves_key_groups_and_copies_unions() {
        let old = vec![
            (
                0,
                StateSnapshot {
                    entries: vec![keyed(0, b"a"), keyed(3, b"b"), union("file:x", b"10")],
                },
            ),
            (
                1,
                StateSnapshot {
                    entries: vec![keyed(5, b"c"), union("file:y", b"20")],
                },
            ),
        ];
        // max 8, 2 → 4 subtasks: ranges [0,2) [2,4) [4,6) [6,8).
        let new = redistribute(old, 4, 8).expect("redistribute");
        assert_eq!(new.len(), 4);
        let unions = [union("file:x", b"10"), union("file:y", b"20")];
        assert_eq!(
            new[0].entries,
            [keyed(0, b"a"), unions[0].clone(), unions[1].clone()]
        );
        assert_eq!(
            new[1].entries,
            [keyed(3, b"b"), unions[0].clone(), unions[1].clone()]
        );
        // Old subtask order first: old 0's union entry precedes old 1's keyed entry.
        assert_eq!(
            new[2].entries,
            [unions[0].clone(), keyed(5, b"c"), unions[1].clone()]
        );
        assert_eq!(new[3].entries, unions);
    }

    #[test]
    fn scale_down_to_one_gathers_everything_in_old_subtask_order() {
        let old = vec![
            (
                1,
                StateSnapshot {
                    entries: vec![keyed(7, b"late")],
                },
            ),
            (
                0,
                StateSnapshot {
                    entries: vec![keyed(1, b"early")],
                },
            ),
        ];
        let new = redistribute(old, 1, 8).expect("redistribute");
        assert_eq!(new[0].entries, [keyed(1, b"early"), keyed(7, b"late")]);
    }

    #[test]
    fn bad_parallelism_and_key_groups_are_errors() {
        let e = redistribute(vec![], 0, 8).expect_err("p=0");
        assert_eq!(e.kind(), ErrorKind::Config);
        let unions_only = vec![(
            0,
            StateSnapshot {
                entries: vec![union("u", b"1")],
            },
        )];
        assert_eq!(
            redistribute(unions_only, 9, 8)
                .expect("wider than max")
                .len(),
            9
        );
        let keyed_too_wide = vec![(
            0,
            StateSnapshot {
                entries: vec![keyed(1, b"x")],
            },
        )];
        let e = redistribute(keyed_too_wide, 9, 8).expect_err("keyed wider than max");
        assert_eq!(e.kind(), ErrorKind::Config);
        let old = vec![(
            0,
            StateSnapshot {
                entries: vec![keyed(8, b"x")],
            },
        )];
        let e = redistribute(old, 2, 8).expect_err("kg out of range");
        assert!(e.message().contains("key group 8"), "{e}");
        let twice = vec![(0, StateSnapshot::new()), (0, StateSnapshot::new())];
        assert!(redistribute(twice, 1, 8).is_err());
    }

    #[test]
    fn encoding_is_pinned() {
        let mut s = StateSnapshot::new();
        s.push_keyed(2, *b"ab");
        s.push_union("u", *b"").expect("key");
        let bytes = s.encode();
        let mut expected = b"WEIRSTAT".to_vec();
        expected.extend_from_slice(&[2, 0, 2, 0, 0, 0]);
        expected.extend_from_slice(&[0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']);
        expected.extend_from_slice(&[1, 3, 0, 0, 0, b'"', b'u', b'"', 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes, expected);
        assert_eq!(StateSnapshot::decode(&bytes).expect("decode"), s);
        // Version 1 wrote plain names: they read as JSON strings.
        let mut v1 = b"WEIRSTAT".to_vec();
        v1.extend_from_slice(&[1, 0, 1, 0, 0, 0]);
        v1.extend_from_slice(&[1, 1, 0, 0, 0, b'u', 0, 0, 0, 0, 0, 0, 0, 0]);
        let old = StateSnapshot::decode(&v1).expect("decode v1");
        let keys: Vec<String> = old.unions::<String>().map(|r| r.expect("key").0).collect();
        assert_eq!(keys, ["u"]);
    }

    #[test]
    fn decode_rejects_damage_with_a_reason() {
        let mut s = StateSnapshot::new();
        s.push_keyed(2, *b"abc");
        let bytes = s.encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 1].to_vec(), "more were expected"),
            ([bytes.clone(), vec![0]].concat(), "unexpected bytes"),
            (b"NOTSTATE".to_vec(), "magic"),
            (
                [&bytes[..8], &[9, 0][..], &bytes[10..]].concat(),
                "version 9",
            ),
            (
                [&bytes[..10], &[255, 255, 255, 255][..], &bytes[14..]].concat(),
                "claims",
            ),
            (
                [&bytes[..14], &[7][..], &bytes[15..]].concat(),
                "unknown tag 7",
            ),
        ];
        for (input, why) in cases {
            let e = StateSnapshot::decode(&input).expect_err(why);
            assert_eq!(e.kind(), ErrorKind::Io);
            assert!(e.message().contains(why), "{e} should say {why}");
        }
    }

    fn arb_entry(max: u32) -> impl Strategy<Value = StateEntry> {
        prop_oneof![
            (0..max, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(kg, b)| StateEntry {
                key: StateKey::KeyGroup(kg),
                bytes: b
            }),
            ("[a-z]{0,4}", proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(n, b)| {
                StateEntry {
                    key: StateKey::Union(UnionKey::new(&n).expect("key")),
                    bytes: b,
                }
            }),
        ]
    }

    fn arb_old() -> impl Strategy<Value = (u32, u32, u32, Vec<(u32, StateSnapshot)>)> {
        (1u32..=32).prop_flat_map(|max| {
            (Just(max), 1..=max, 1..=max).prop_flat_map(move |(max, old_p, new_p)| {
                let snaps = proptest::collection::vec(
                    proptest::collection::vec(arb_entry(max), 0..6),
                    old_p as usize,
                );
                (Just(max), Just(old_p), Just(new_p), snaps).prop_map(|(m, o, n, snaps)| {
                    let old = snaps
                        .into_iter()
                        .enumerate()
                        .map(|(i, entries)| (i as u32, StateSnapshot { entries }))
                        .collect();
                    (m, o, n, old)
                })
            })
        })
    }

    proptest! {
        #[test]
        fn redistribute_loses_nothing(input in arb_old()) {
            let (max, _old_p, new_p, old) = input;
            let new = redistribute(old.clone(), new_p, max).expect("redistribute");
            prop_assert_eq!(new.len(), new_p as usize);
            // Keyed entries: each lands exactly once, on its owner.
            let mut old_keyed: Vec<StateEntry> = old.iter()
                .flat_map(|(_, s)| s.entries.iter())
                .filter(|e| matches!(e.key, StateKey::KeyGroup(_)))
                .cloned().collect();
            let mut new_keyed = Vec::new();
            for (i, s) in new.iter().enumerate() {
                let range = KeyGroupRange::for_subtask(max, new_p, i as u32);
                for e in &s.entries {
                    if let StateKey::KeyGroup(kg) = e.key {
                        prop_assert!(range.contains(kg), "kg {} on subtask {}", kg, i);
                        new_keyed.push(e.clone());
                    }
                }
            }
            old_keyed.sort_by(|a, b| (&a.key, &a.bytes).cmp(&(&b.key, &b.bytes)));
            new_keyed.sort_by(|a, b| (&a.key, &a.bytes).cmp(&(&b.key, &b.bytes)));
            prop_assert_eq!(old_keyed, new_keyed);
            // Union entries: every new subtask has all of them, in the old order.
            let old_unions: Vec<StateEntry> = old.iter()
                .flat_map(|(_, s)| s.entries.iter())
                .filter(|e| matches!(e.key, StateKey::Union(_)))
                .cloned().collect();
            for s in &new {
                let unions: Vec<StateEntry> = s.entries.iter()
                    .filter(|e| matches!(e.key, StateKey::Union(_))).cloned().collect();
                prop_assert_eq!(&unions, &old_unions);
            }
        }

        #[test]
        fn redistribute_at_same_parallelism_is_identity_for_keyed_state(input in arb_old()) {
            let (max, old_p, _new_p, old) = input;
            // Only keyed entries that the old subtask owns (what a correct runtime writes).
            let old: Vec<(u32, StateSnapshot)> = old.into_iter().map(|(i, s)| {
                let range = KeyGroupRange::for_subtask(max, old_p, i);
                let entries = s.entries.into_iter()
                    .filter(|e| matches!(e.key, StateKey::KeyGroup(kg) if range.contains(kg)))
                    .collect();
                (i, StateSnapshot { entries })
            }).collect();
            let new = redistribute(old.clone(), old_p, max).expect("redistribute");
            let old: Vec<StateSnapshot> = old.into_iter().map(|(_, s)| s).collect();
            prop_assert_eq!(new, old);
        }

        #[test]
        fn one_subtask_gets_what_redistribute_gives_it(input in arb_old()) {
            let (max, _old_p, new_p, old) = input;
            let all = redistribute(old.clone(), new_p, max).expect("redistribute");
            for (i, want) in all.into_iter().enumerate() {
                let got = state_for_subtask(old.clone(), new_p, max, i as u32).expect("one");
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn encode_decode_round_trip(entries in proptest::collection::vec(arb_entry(u32::MAX), 0..10)) {
            let s = StateSnapshot { entries };
            prop_assert_eq!(StateSnapshot::decode(&s.encode()).expect("decode"), s);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut with_header = b"WEIRSTAT\x01\x00".to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = StateSnapshot::decode(&bytes);
            let _ = StateSnapshot::decode(&with_header);
        }
    }
}
