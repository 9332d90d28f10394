//! Map state: per key, a map from a *map key* (a row of other columns) to a row of values.
//!
//! Map keys are interned like state keys (Arrow's row format) into their own ids; each `(key, map
//! key)` pair points at its value row, stored as written (zero-copy) and gathered with
//! `interleave`.

use crate::chunks::{Chunks, Pos, pos};
use crate::keys::{KeyId, KeyTable};
use crate::value::nullable;
use arrow::array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use std::collections::HashMap;
use weir_types::{Error, Result};

/// Per key, a map from map keys to value rows.
#[derive(Debug)]
pub struct MapState {
    map_keys: KeyTable,
    chunks: Chunks,
    entries: HashMap<(KeyId, KeyId), Pos>,
    /// Per key: its map keys, in insertion order.
    per_key: Vec<Vec<KeyId>>,
    scratch: Vec<KeyId>,
}

impl MapState {
    /// A map state with map keys of the columns of `map_key_schema` and values of `value_schema`.
    pub fn new(map_key_schema: &SchemaRef, value_schema: SchemaRef) -> Result<Self> {
        let types = map_key_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let value_schema = nullable(&value_schema);
        let mut chunks = Chunks::new(value_schema.clone());
        let nulls = value_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        chunks.push(
            RecordBatch::try_new(value_schema, nulls)
                .map_err(|e| Error::internal("cannot build a null state row").with_source(e))?,
        )?;
        Ok(MapState {
            map_keys: KeyTable::new(types, 1)?,
            chunks,
            entries: HashMap::new(),
            per_key: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The value columns.
    pub fn schema(&self) -> &SchemaRef {
        self.chunks.schema()
    }

    /// Sets, for every row `i`, the value of map key `map_keys[..][i]` of key `ids[i]` to row `i`
    /// of `values`.
    pub fn put(&mut self, ids: &[KeyId], map_keys: &[ArrayRef], values: RecordBatch) -> Result<()> {
        if ids.len() != values.num_rows() {
            return Err(Error::internal(format!(
                "{} keys but {} values written to a map state",
                ids.len(),
                values.num_rows()
            )));
        }
        let mut mk = std::mem::take(&mut self.scratch);
        self.map_keys.intern(map_keys, &mut mk)?;
        let chunk = self.chunks.push(values)?;
        for (row, (&id, &m)) in ids.iter().zip(&mk).enumerate() {
            if self.entries.insert((id, m), pos(chunk, row)).is_none() {
                let i = id as usize;
                if i >= self.per_key.len() {
                    self.per_key.resize_with(i + 1, Vec::new);
                }
                self.per_key[i].push(m);
            }
        }
        self.scratch = mk;
        self.maybe_compact()
    }

    /// For every row `i`, the value of map key `map_keys[..][i]` of key `ids[i]` (nulls where
    /// absent), and which were present.
    pub fn get(
        &mut self,
        ids: &[KeyId],
        map_keys: &[ArrayRef],
    ) -> Result<(RecordBatch, BooleanArray)> {
        let mut mk = std::mem::take(&mut self.scratch);
        self.map_keys.intern(map_keys, &mut mk)?;
        let mut positions = Vec::with_capacity(ids.len());
        let mut present = Vec::with_capacity(ids.len());
        for (&id, &m) in ids.iter().zip(&mk) {
            let p = self.entries.get(&(id, m)).copied();
            present.push(p.is_some());
            positions.push(p.unwrap_or(pos(0, 0)));
        }
        self.scratch = mk;
        Ok((self.chunks.gather(&positions)?, BooleanArray::from(present)))
    }

    /// Every entry of key `id`: its map keys (one array per map-key column) and values, in
    /// insertion order.
    pub fn entries(&self, id: KeyId) -> Result<(Vec<ArrayRef>, RecordBatch)> {
        let mks = self.per_key.get(id as usize).map_or(&[][..], Vec::as_slice);
        let positions: Vec<Pos> = mks.iter().map(|&m| self.entries[&(id, m)]).collect();
        Ok((
            self.map_keys.key_arrays(mks)?,
            self.chunks.gather(&positions)?,
        ))
    }

    /// Removes map key `map_keys[..][i]` of key `ids[i]` for every row `i`.
    pub fn remove(&mut self, ids: &[KeyId], map_keys: &[ArrayRef]) -> Result<()> {
        let mut mk = std::mem::take(&mut self.scratch);
        self.map_keys.intern(map_keys, &mut mk)?;
        for (&id, &m) in ids.iter().zip(&mk) {
            if self.entries.remove(&(id, m)).is_some()
                && let Some(l) = self.per_key.get_mut(id as usize)
            {
                l.retain(|&x| x != m);
            }
        }
        self.scratch = mk;
        Ok(())
    }

    /// Removes every entry of key `id`.
    pub fn clear(&mut self, id: KeyId) {
        if let Some(l) = self.per_key.get_mut(id as usize) {
            for m in l.drain(..) {
                self.entries.remove(&(id, m));
            }
        }
    }

    /// The keys with at least one entry, ascending.
    pub fn keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.per_key
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, _)| i as KeyId)
    }

    /// The map-key columns' bytes of map key `m` (for snapshots).
    pub(crate) fn map_key_bytes(&self, m: KeyId) -> &[u8] {
        self.map_keys.bytes(m)
    }

    /// Map keys and positions of key `id` (for snapshots).
    pub(crate) fn raw_entries(&self, id: KeyId) -> impl Iterator<Item = (KeyId, Pos)> + '_ {
        self.per_key
            .get(id as usize)
            .into_iter()
            .flatten()
            .map(move |&m| (m, self.entries[&(id, m)]))
    }

    /// Gathers value rows (for snapshots).
    pub(crate) fn gather(&self, positions: &[Pos]) -> Result<RecordBatch> {
        self.chunks.gather(positions)
    }

    /// Restores entries whose map keys are given as row-format bytes.
    pub(crate) fn put_raw(
        &mut self,
        ids: &[KeyId],
        map_key_bytes: &[&[u8]],
        values: RecordBatch,
    ) -> Result<()> {
        let chunk = self.chunks.push(values)?;
        for (row, (&id, bytes)) in ids.iter().zip(map_key_bytes).enumerate() {
            let m = self.map_keys.intern_bytes(bytes);
            if self.entries.insert((id, m), pos(chunk, row)).is_none() {
                let i = id as usize;
                if i >= self.per_key.len() {
                    self.per_key.resize_with(i + 1, Vec::new);
                }
                self.per_key[i].push(m);
            }
        }
        Ok(())
    }

    /// Memory held (approximately).
    pub fn size_bytes(&self) -> usize {
        self.chunks.size_bytes() + self.map_keys.size_bytes() + self.entries.capacity() * 24
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if !self.chunks.should_compact(self.entries.len()) {
            return Ok(());
        }
        let order: Vec<(KeyId, KeyId)> = self
            .per_key
            .iter()
            .enumerate()
            .flat_map(|(id, l)| l.iter().map(move |&m| (id as KeyId, m)))
            .collect();
        let mut live = Vec::with_capacity(order.len() + 1);
        live.push(pos(0, 0));
        live.extend(order.iter().map(|k| self.entries[k]));
        let moved = self.chunks.compact(&live)?;
        for (i, k) in order.iter().enumerate() {
            self.entries.insert(*k, moved[i + 1]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    #[test]
    fn map_entries_per_key() {
        let mk_schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let v_schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut s = MapState::new(&mk_schema, v_schema).expect("map");
        let mk: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
        let v = RecordBatch::try_from_iter([(
            "v",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .expect("batch");
        s.put(&[0, 0, 1], std::slice::from_ref(&mk), v)
            .expect("put");
        let (got, present) = s.get(&[0, 1, 1], std::slice::from_ref(&mk)).expect("get");
        assert_eq!(present, BooleanArray::from(vec![true, false, true]));
        let got = got.column(0).as_primitive::<Int64Type>();
        assert_eq!((got.value(0), got.value(2)), (1, 3));
        let (keys, values) = s.entries(0).expect("entries");
        assert_eq!(keys[0].as_string::<i32>().value(1), "b");
        assert_eq!(
            values.column(0).as_primitive::<Int64Type>().values(),
            &[1, 2]
        );
        s.remove(&[0], &[Arc::new(StringArray::from(vec!["a"])) as ArrayRef])
            .expect("remove");
        assert_eq!(s.entries(0).expect("entries").1.num_rows(), 1);
        s.clear(1);
        assert_eq!(s.keys().collect::<Vec<_>>(), [0]);
    }
}
