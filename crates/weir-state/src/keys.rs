//! Keys of keyed state: rows of the key columns in Arrow's row format, interned into dense ids.
//!
//! A [`KeyTable`] turns the key columns of a batch into one `u32` id per row (equal keys, equal
//! ids), remembering each key's bytes, hash and key group. Every state of an operator instance
//! indexes its per-key data by these ids, so a batch is hashed once however many states it
//! touches. The hash is the one `key_by` routes with ([`weir_types::hash_keys`]: xxh3 over the
//! row format of the key columns), so the key group a row is routed by is the key group its state
//! is snapshotted under.

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use weir_types::key_group::key_group_of;
use weir_types::{Error, Result};

/// A dense id of one key in a [`KeyTable`].
pub type KeyId = u32;

/// Interns keys (rows of the key columns) into dense ids.
#[derive(Debug)]
pub struct KeyTable {
    converter: RowConverter,
    types: Vec<DataType>,
    max_parallelism: u32,
    index: HashTable<KeyId>,
    hashes: Vec<u64>,
    key_groups: Vec<u32>,
    /// The bytes of key `i` are `arena[offsets[i]..offsets[i + 1]]`.
    arena: Vec<u8>,
    offsets: Vec<usize>,
    /// Reused between calls so that interning a batch allocates nothing once warm.
    scratch: Option<Rows>,
}

impl KeyTable {
    /// A table for keys of `types` (the key columns, in order) under `max_parallelism` key groups.
    pub fn new(types: Vec<DataType>, max_parallelism: u32) -> Result<Self> {
        let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())
            .map_err(|e| Error::schema("key columns cannot be keys of state").with_source(e))?;
        Ok(KeyTable {
            converter,
            types,
            max_parallelism: max_parallelism.max(1),
            index: HashTable::new(),
            hashes: Vec::new(),
            key_groups: Vec::new(),
            arena: Vec::new(),
            offsets: vec![0],
            scratch: None,
        })
    }

    /// A table for the columns `keys` of `schema`; errors naming a column that is missing.
    pub fn for_columns(schema: &SchemaRef, keys: &[String], max_parallelism: u32) -> Result<Self> {
        let types = keys
            .iter()
            .map(|k| {
                schema
                    .field_with_name(k)
                    .map(|f| f.data_type().clone())
                    .map_err(|_| Error::schema(format!("key column '{k}' is not in the input")))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(types, max_parallelism)
    }

    /// The key columns' types.
    pub fn types(&self) -> &[DataType] {
        &self.types
    }

    /// The number of key groups keys are spread over.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// The number of keys interned so far.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no key was interned.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Interns every row of `keys` (one array per key column), writing one id per row into `ids`
    /// (cleared first).
    pub fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<KeyId>) -> Result<()> {
        ids.clear();
        let mut rows = match self.scratch.take() {
            Some(mut r) => {
                r.clear();
                r
            }
            None => self.converter.empty_rows(0, 0),
        };
        self.converter
            .append(&mut rows, keys)
            .map_err(|e| Error::input("cannot convert key columns to rows").with_source(e))?;
        ids.reserve(rows.num_rows());
        for row in rows.iter() {
            ids.push(self.intern_bytes(row.as_ref()));
        }
        self.scratch = Some(rows);
        Ok(())
    }

    /// Interns one key given as its row-format bytes (as [`Self::bytes`] returns them).
    pub fn intern_bytes(&mut self, bytes: &[u8]) -> KeyId {
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        let (arena, offsets, hashes) = (&self.arena, &self.offsets, &self.hashes);
        let found = self.index.find(hash, |&id| {
            let i = id as usize;
            hashes[i] == hash && &arena[offsets[i]..offsets[i + 1]] == bytes
        });
        if let Some(&id) = found {
            return id;
        }
        let id = self.hashes.len() as KeyId;
        self.hashes.push(hash);
        self.key_groups
            .push(key_group_of(hash, self.max_parallelism));
        self.arena.extend_from_slice(bytes);
        self.offsets.push(self.arena.len());
        let hashes = &self.hashes;
        self.index.insert_unique(hash, id, |&k| hashes[k as usize]);
        id
    }

    /// The id of a key given as row-format bytes, if interned.
    pub fn find_bytes(&self, bytes: &[u8]) -> Option<KeyId> {
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        self.index
            .find(hash, |&id| self.bytes(id) == bytes)
            .copied()
    }

    /// The row-format bytes of key `id`.
    pub fn bytes(&self, id: KeyId) -> &[u8] {
        let i = id as usize;
        &self.arena[self.offsets[i]..self.offsets[i + 1]]
    }

    /// The hash of key `id` (equal to what `key_by` routes it by).
    pub fn hash(&self, id: KeyId) -> u64 {
        self.hashes[id as usize]
    }

    /// The key group of key `id`.
    pub fn key_group(&self, id: KeyId) -> u32 {
        self.key_groups[id as usize]
    }

    /// The key columns of the keys `ids`, in order (the inverse of [`Self::intern`]).
    pub fn key_arrays(&self, ids: &[KeyId]) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows = ids.iter().map(|&id| parser.parse(self.bytes(id)));
        self.converter.convert_rows(rows).map_err(|e| {
            Error::internal("cannot convert state keys back to columns").with_source(e)
        })
    }

    /// Bytes held (approximately).
    pub fn size_bytes(&self) -> usize {
        self.arena.capacity()
            + self.offsets.capacity() * 8
            + self.hashes.capacity() * 8
            + self.key_groups.capacity() * 4
            + self.index.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;
    use weir_types::hash_keys;

    #[test]
    fn equal_keys_get_equal_ids_and_the_routing_hash() {
        let mut t = KeyTable::new(vec![DataType::Utf8, DataType::Int64], 128).expect("table");
        let a: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "x", "x"]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1, 2]));
        let mut ids = Vec::new();
        t.intern(&[a.clone(), b.clone()], &mut ids).expect("intern");
        assert_eq!(ids, [0, 1, 0, 2]);
        let routed = hash_keys(&[a, b]).expect("hash");
        for (row, &id) in ids.iter().enumerate() {
            assert_eq!(t.hash(id), routed[row]);
            assert_eq!(t.key_group(id), key_group_of(routed[row], 128));
        }
        let back = t.key_arrays(&[2, 0]).expect("back");
        assert_eq!(
            back[0].as_ref(),
            &StringArray::from(vec!["x", "x"]) as &dyn arrow::array::Array
        );
        assert_eq!(
            back[1].as_ref(),
            &Int64Array::from(vec![2, 1]) as &dyn arrow::array::Array
        );
        let bytes = t.bytes(1).to_vec();
        assert_eq!(t.find_bytes(&bytes), Some(1));
        assert_eq!(t.intern_bytes(&bytes), 1);
        assert_eq!(t.len(), 3);
    }
}
