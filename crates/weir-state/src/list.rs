//! List state: any number of rows per key, in the order they were added.
//!
//! Added batches are stored as they are (zero-copy); each key keeps the positions of its rows.
//! Reading a key's list, or the lists of many keys at once, gathers its rows into one batch.

use crate::chunks::{Chunks, Pos, pos};
use crate::keys::KeyId;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use weir_types::{Error, Result};

/// Rows per key, in insertion order.
#[derive(Debug)]
pub struct ListState {
    chunks: Chunks,
    lists: Vec<Vec<Pos>>,
    live: usize,
}

impl ListState {
    /// A list state whose rows have the columns of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        ListState {
            chunks: Chunks::new(schema),
            lists: Vec::new(),
            live: 0,
        }
    }

    /// The row columns.
    pub fn schema(&self) -> &SchemaRef {
        self.chunks.schema()
    }

    /// Appends row `i` of `rows` to the list of key `ids[i]`.
    pub fn add(&mut self, ids: &[KeyId], rows: RecordBatch) -> Result<()> {
        if ids.len() != rows.num_rows() {
            return Err(Error::internal(format!(
                "{} keys but {} rows added to a list state",
                ids.len(),
                rows.num_rows()
            )));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let chunk = self.chunks.push(rows)?;
        for (row, &id) in ids.iter().enumerate() {
            let i = id as usize;
            if i >= self.lists.len() {
                self.lists.resize_with(i + 1, Vec::new);
            }
            self.lists[i].push(pos(chunk, row));
        }
        self.live += ids.len();
        Ok(())
    }

    /// The number of rows in the list of `id`.
    pub fn len_of(&self, id: KeyId) -> usize {
        self.lists.get(id as usize).map_or(0, Vec::len)
    }

    /// The rows of key `id`, in insertion order.
    pub fn get(&self, id: KeyId) -> Result<RecordBatch> {
        match self.lists.get(id as usize) {
            Some(l) => self.chunks.gather(l),
            None => self.chunks.gather(&[]),
        }
    }

    /// The rows of every key of `ids` (each key's list in order, keys in the order given) and,
    /// for each key, where its rows end in that batch.
    pub fn get_many(&self, ids: &[KeyId]) -> Result<(RecordBatch, Vec<usize>)> {
        let mut positions = Vec::new();
        let mut ends = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(l) = self.lists.get(id as usize) {
                positions.extend_from_slice(l);
            }
            ends.push(positions.len());
        }
        Ok((self.chunks.gather(&positions)?, ends))
    }

    /// Keeps only the rows of key `id` for which `keep(index in the list)` is true.
    pub fn retain(&mut self, id: KeyId, mut keep: impl FnMut(usize) -> bool) -> Result<()> {
        let Some(list) = self.lists.get_mut(id as usize) else {
            return Ok(());
        };
        let before = list.len();
        let mut i = 0;
        list.retain(|_| {
            let k = keep(i);
            i += 1;
            k
        });
        self.live -= before - list.len();
        self.maybe_compact()
    }

    /// Empties the list of key `id`.
    pub fn clear(&mut self, id: KeyId) -> Result<()> {
        self.retain(id, |_| false)
    }

    /// The keys with a non-empty list, ascending.
    pub fn keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.lists
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, _)| i as KeyId)
    }

    /// Rows held over all keys.
    pub fn n_rows(&self) -> usize {
        self.live
    }

    /// Memory held (approximately).
    pub fn size_bytes(&self) -> usize {
        self.chunks.size_bytes()
            + self
                .lists
                .iter()
                .map(|l| l.capacity() * 8 + 24)
                .sum::<usize>()
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if !self.chunks.should_compact(self.live) {
            return Ok(());
        }
        let live: Vec<Pos> = self.lists.iter().flatten().copied().collect();
        let moved = self.chunks.compact(&live)?;
        let mut next = moved.into_iter();
        for l in &mut self.lists {
            for p in l.iter_mut() {
                *p = next
                    .next()
                    .ok_or_else(|| Error::internal("list state compaction lost rows"))?;
            }
            l.shrink_to_fit();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use std::sync::Arc;

    fn batch(v: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(v.to_vec())) as ArrayRef)])
            .expect("batch")
    }

    fn values(b: &RecordBatch) -> Vec<i64> {
        b.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn lists_keep_order_survive_retain_and_compaction() {
        let mut s = ListState::new(batch(&[]).schema());
        s.add(&[0, 1, 0], batch(&[1, 2, 3])).expect("add");
        s.add(&[1], batch(&[4])).expect("add");
        assert_eq!(values(&s.get(0).expect("get")), [1, 3]);
        let (many, ends) = s.get_many(&[1, 0, 7]).expect("many");
        assert_eq!(values(&many), [2, 4, 1, 3]);
        assert_eq!(ends, [2, 4, 4]);
        s.retain(0, |i| i == 1).expect("retain");
        assert_eq!(values(&s.get(0).expect("get")), [3]);
        for i in 0..5000 {
            s.add(&[2], batch(&[i])).expect("add");
            s.clear(2).expect("clear");
        }
        assert!(s.chunks.stored_rows() <= 4097 + 3);
        assert_eq!(values(&s.get(1).expect("get")), [2, 4]);
        assert_eq!(s.keys().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(s.n_rows(), 3);
    }
}
