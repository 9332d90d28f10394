//! Writing operator state per key group: rows tagged with the key group of their key columns
//! (the hash `key_by` routes by), gathered into one Arrow part per key group (see
//! [`weir_state::codec`]), and read back.

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use std::collections::BTreeMap;
use weir_checkpoint::{StateKey, StateSnapshot};
use weir_state::codec::{decode_part, encode_part};
use weir_types::key_group::key_group_of;
use weir_types::{Error, KeyGroupRange, Result, hash_keys};

/// The key group of every row of `keys` (the columns rows are routed by); with no key columns
/// (a step that runs as one instance) every row is in the first key group of `range`.
pub(crate) fn key_groups(
    keys: &[ArrayRef],
    n_rows: usize,
    max_parallelism: u32,
    range: KeyGroupRange,
) -> Result<Vec<u32>> {
    if keys.is_empty() {
        return Ok(vec![range.start; n_rows]);
    }
    Ok(hash_keys(keys)
        .map_err(|e| Error::internal("cannot hash state keys").with_source(e))?
        .into_iter()
        .map(|h| key_group_of(h, max_parallelism))
        .collect())
}

/// Rows of one named state, collected per key group.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    per_group: BTreeMap<u32, Vec<RecordBatch>>,
}

impl Parts {
    /// Adds the rows of `batch`, row `i` in key group `groups[i]`.
    pub(crate) fn add(&mut self, batch: &RecordBatch, groups: &[u32]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if groups.iter().all(|g| *g == groups[0]) {
            self.per_group
                .entry(groups[0])
                .or_default()
                .push(batch.clone());
            return Ok(());
        }
        let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (row, &kg) in groups.iter().enumerate() {
            rows.entry(kg).or_default().push(row as u32);
        }
        for (kg, rows) in rows {
            let b = take_record_batch(batch, &UInt32Array::from(rows))
                .map_err(|e| Error::internal("cannot split state by key group").with_source(e))?;
            self.per_group.entry(kg).or_default().push(b);
        }
        Ok(())
    }

    /// Writes one part named `name` per key group into `snap`.
    pub(crate) fn write(self, name: &str, snap: &mut StateSnapshot) -> Result<()> {
        for (kg, batches) in self.per_group {
            let b = concat_batches(&batches[0].schema(), &batches)
                .map_err(|e| Error::internal("cannot gather state").with_source(e))?;
            snap.push_keyed(kg, encode_part(name, &b)?);
        }
        Ok(())
    }
}

/// The batches of the keyed parts named `name` in `snap`.
pub(crate) fn read(snap: &StateSnapshot, name: &str) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for entry in &snap.entries {
        if let StateKey::KeyGroup(_) = entry.key {
            let (n, batch) = decode_part(&entry.bytes)?;
            if n == name {
                out.push(batch);
            }
        }
    }
    Ok(out)
}
