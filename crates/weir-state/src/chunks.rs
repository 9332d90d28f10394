//! Append-only columnar storage of state rows: the batches written into a state, kept as they
//! came (zero-copy), addressed by `(chunk, row)` positions and gathered with Arrow's `interleave`.
//!
//! Rows that are overwritten or removed stay in their chunk until [`Chunks::compact`] copies the
//! live ones into one new chunk; the states call it when dead rows outnumber live ones.

use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use weir_types::{Error, Result};

/// A position of a row: `chunk << 32 | row`.
pub type Pos = u64;

/// The position of row `row` of chunk `chunk`.
pub fn pos(chunk: usize, row: usize) -> Pos {
    ((chunk as u64) << 32) | row as u64
}

fn split(p: Pos) -> (usize, usize) {
    ((p >> 32) as usize, (p & 0xffff_ffff) as usize)
}

/// The stored batches of one state.
#[derive(Debug)]
pub(crate) struct Chunks {
    schema: SchemaRef,
    chunks: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl Chunks {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        Chunks {
            schema,
            chunks: Vec::new(),
            rows: 0,
            bytes: 0,
        }
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Stores `batch` (which must have the state's columns) and returns its chunk index.
    pub(crate) fn push(&mut self, batch: RecordBatch) -> Result<usize> {
        let batch = if batch.schema_ref() == &self.schema {
            batch
        } else {
            RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()).map_err(|e| {
                Error::schema(format!(
                    "rows written to state do not have its columns {}",
                    self.schema
                ))
                .with_source(e)
            })?
        };
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        self.chunks.push(batch);
        Ok(self.chunks.len() - 1)
    }

    /// The rows at `positions`, in order, as one batch.
    pub(crate) fn gather(&self, positions: &[Pos]) -> Result<RecordBatch> {
        if positions.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let refs: Vec<&RecordBatch> = self.chunks.iter().collect();
        let idx: Vec<(usize, usize)> = positions.iter().map(|&p| split(p)).collect();
        interleave_record_batch(&refs, &idx)
            .map_err(|e| Error::internal("cannot gather state rows").with_source(e))
    }

    /// Rows stored, live or dead.
    #[cfg(test)]
    pub(crate) fn stored_rows(&self) -> usize {
        self.rows
    }

    /// Memory held by the stored batches (their buffers may be shared with batches elsewhere).
    pub(crate) fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether compacting would pay: dead rows outnumber live ones (and are more than a few).
    pub(crate) fn should_compact(&self, live: usize) -> bool {
        self.rows > 4096 && self.rows > 2 * live
    }

    /// Replaces every chunk by one holding the rows at `live` (in order); returns their new
    /// positions, index for index.
    pub(crate) fn compact(&mut self, live: &[Pos]) -> Result<Vec<Pos>> {
        let batch = self.gather(live)?;
        self.chunks.clear();
        self.rows = 0;
        self.bytes = 0;
        if batch.num_rows() > 0 {
            self.push(batch)?;
        }
        Ok((0..live.len()).map(|i| pos(0, i)).collect())
    }
}
