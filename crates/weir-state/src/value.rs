//! Value state: one row of values per key.
//!
//! Writes store the written batch as it is (zero-copy) and point each key at its row; reads gather
//! the rows of many keys at once with Arrow's `interleave`, so a batch of keys is read or written
//! in one vectorised call. A key without a value reads as a row of nulls.

use crate::chunks::{Chunks, Pos, pos};
use crate::keys::KeyId;
use arrow::array::{BooleanArray, RecordBatch, new_null_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use std::sync::Arc;
use weir_types::{Error, Result};

const ABSENT: Pos = u64::MAX;

/// One row of values per key.
#[derive(Debug)]
pub struct ValueState {
    chunks: Chunks,
    /// Per key id: where its value is, or `ABSENT`.
    slots: Vec<Pos>,
    live: usize,
}

/// The schema with every field nullable (a key without a value reads as nulls).
pub(crate) fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

impl ValueState {
    /// A value state whose values have the columns of `schema`.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let schema = nullable(&schema);
        let mut chunks = Chunks::new(schema.clone());
        chunks.push(null_row(&schema)?)?;
        Ok(ValueState {
            chunks,
            slots: Vec::new(),
            live: 0,
        })
    }

    /// The value columns.
    pub fn schema(&self) -> &SchemaRef {
        self.chunks.schema()
    }

    fn slot(&self, id: KeyId) -> Pos {
        self.slots.get(id as usize).copied().unwrap_or(ABSENT)
    }

    /// Whether key `id` has a value.
    pub fn contains(&self, id: KeyId) -> bool {
        self.slot(id) != ABSENT
    }

    /// The values of the keys `ids`, one row per id (nulls for keys without a value), and which
    /// ids have one.
    pub fn get(&self, ids: &[KeyId]) -> Result<(RecordBatch, BooleanArray)> {
        let mut positions = Vec::with_capacity(ids.len());
        let mut present = Vec::with_capacity(ids.len());
        for &id in ids {
            let p = self.slot(id);
            present.push(p != ABSENT);
            positions.push(if p == ABSENT { pos(0, 0) } else { p });
        }
        Ok((self.chunks.gather(&positions)?, BooleanArray::from(present)))
    }

    /// Sets the value of key `ids[i]` to row `i` of `values` (when an id occurs twice, the later
    /// row wins).
    pub fn put(&mut self, ids: &[KeyId], values: RecordBatch) -> Result<()> {
        if ids.len() != values.num_rows() {
            return Err(Error::internal(format!(
                "{} keys but {} values written to a value state",
                ids.len(),
                values.num_rows()
            )));
        }
        let chunk = self.chunks.push(values)?;
        for (row, &id) in ids.iter().enumerate() {
            let i = id as usize;
            if i >= self.slots.len() {
                self.slots.resize(i + 1, ABSENT);
            }
            if self.slots[i] == ABSENT {
                self.live += 1;
            }
            self.slots[i] = pos(chunk, row);
        }
        self.maybe_compact()
    }

    /// Removes the values of `ids`.
    pub fn remove(&mut self, ids: &[KeyId]) {
        for &id in ids {
            if let Some(s) = self.slots.get_mut(id as usize)
                && *s != ABSENT
            {
                *s = ABSENT;
                self.live -= 1;
            }
        }
    }

    /// The keys that have a value, ascending.
    pub fn keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, p)| **p != ABSENT)
            .map(|(i, _)| i as KeyId)
    }

    /// The number of keys with a value.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Memory held (approximately).
    pub fn size_bytes(&self) -> usize {
        self.chunks.size_bytes() + self.slots.capacity() * 8
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if !self.chunks.should_compact(self.live) {
            return Ok(());
        }
        let ids: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i] != ABSENT)
            .collect();
        let mut live = Vec::with_capacity(ids.len() + 1);
        live.push(pos(0, 0));
        live.extend(ids.iter().map(|&i| self.slots[i]));
        let moved = self.chunks.compact(&live)?;
        for (k, &i) in ids.iter().enumerate() {
            self.slots[i] = moved[k + 1];
        }
        Ok(())
    }
}

fn null_row(schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| Error::internal("cannot build a null state row").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::DataType;

    fn batch(v: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "v",
            Arc::new(Int64Array::from(v.to_vec())) as arrow::array::ArrayRef,
        )])
        .expect("batch")
    }

    #[test]
    fn put_get_remove_and_compaction_keep_the_latest_value() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut s = ValueState::new(schema).expect("state");
        s.put(&[0, 1, 0], batch(&[1, 2, 3])).expect("put");
        let (got, present) = s.get(&[0, 1, 2]).expect("get");
        let v = got
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!((v.value(0), v.value(1)), (3, 2));
        assert!(v.is_null(2));
        assert_eq!(present, BooleanArray::from(vec![true, true, false]));
        // Many overwrites trigger compaction; values survive it.
        for round in 0..3000 {
            s.put(&[0, 1], batch(&[round, -round])).expect("put");
        }
        assert!(s.chunks.stored_rows() < 8192 + 4);
        let (got, _) = s.get(&[0, 1]).expect("get");
        let v = got
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!((v.value(0), v.value(1)), (2999, -2999));
        s.remove(&[0]);
        assert_eq!(s.keys().collect::<Vec<_>>(), [1]);
        assert_eq!(s.len(), 1);
    }
}
