//! Output routing of a task: one router per outgoing edge sends batches to the consumer subtasks as
//! the edge's partitioning says; control messages go to every consumer subtask.

use crate::channel::Sender;
use crate::graph::Partitioning;
use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use std::time::Duration;
use weir_types::key_group::{key_group_of, subtask_of_key_group};
use weir_types::{Error, ErrorKind, Message, Result, hash_keys};

/// Routes along one edge.
#[derive(Debug)]
pub struct EdgeRouter {
    partitioning: Partitioning,
    targets: Vec<Sender>,
    /// For forward edges: the single target; for rebalance: the next target.
    cursor: usize,
    max_parallelism: u32,
}

fn downstream_gone() -> Error {
    Error::new(ErrorKind::Cancelled, "a downstream task has ended")
}

impl EdgeRouter {
    /// A router sending to `targets` (one per consumer subtask, in subtask order; a forward edge gets
    /// exactly one) and starting at `first` for rebalancing.
    pub fn new(
        partitioning: Partitioning,
        targets: Vec<Sender>,
        first: usize,
        max_parallelism: u32,
    ) -> Self {
        let cursor = if targets.is_empty() {
            0
        } else {
            first % targets.len()
        };
        EdgeRouter {
            partitioning,
            targets,
            cursor,
            max_parallelism,
        }
    }

    /// Sends a batch; returns the time spent waiting for room.
    pub async fn send_batch(&mut self, batch: RecordBatch) -> Result<Duration> {
        let mut waited = Duration::ZERO;
        match &self.partitioning {
            Partitioning::Forward => {
                waited += self.targets[0]
                    .send(Message::Data(batch))
                    .await
                    .map_err(|_| downstream_gone())?;
            }
            Partitioning::Rebalance => {
                let t = self.cursor;
                self.cursor = (self.cursor + 1) % self.targets.len();
                waited += self.targets[t]
                    .send(Message::Data(batch))
                    .await
                    .map_err(|_| downstream_gone())?;
            }
            Partitioning::Broadcast => {
                for t in &self.targets {
                    waited += t
                        .send(Message::Data(batch.clone()))
                        .await
                        .map_err(|_| downstream_gone())?;
                }
            }
            Partitioning::Hash { keys } => {
                let parts = split_by_key(
                    &batch,
                    keys,
                    self.max_parallelism,
                    self.targets.len() as u32,
                )?;
                for (t, part) in parts.into_iter().enumerate() {
                    if let Some(part) = part {
                        waited += self.targets[t]
                            .send(Message::Data(part))
                            .await
                            .map_err(|_| downstream_gone())?;
                    }
                }
            }
        }
        Ok(waited)
    }

    /// Sends a control message to every consumer subtask.
    pub async fn broadcast(&mut self, msg: &Message) -> Result<Duration> {
        let mut waited = Duration::ZERO;
        for t in &self.targets {
            waited += t.send(msg.clone()).await.map_err(|_| downstream_gone())?;
        }
        Ok(waited)
    }
}

/// Splits `batch` by the key groups of `keys`, one part per subtask of `parallelism` (None if empty).
pub fn split_by_key(
    batch: &RecordBatch,
    keys: &[String],
    max_parallelism: u32,
    parallelism: u32,
) -> Result<Vec<Option<RecordBatch>>> {
    let cols: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            batch.column_by_name(k).cloned().ok_or_else(|| {
                Error::schema(format!(
                    "key column '{k}' is not in the batch schema {}",
                    batch.schema()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let hashes = hash_keys(&cols)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); parallelism as usize];
    for (row, h) in hashes.iter().enumerate() {
        let kg = key_group_of(*h, max_parallelism);
        indices[subtask_of_key_group(kg, max_parallelism, parallelism) as usize].push(row as u32);
    }
    indices
        .into_iter()
        .map(|idx| {
            if idx.is_empty() {
                Ok(None)
            } else if idx.len() == batch.num_rows() {
                Ok(Some(batch.clone()))
            } else {
                Ok(Some(take_record_batch(batch, &UInt32Array::from(idx))?))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn every_key_lands_on_exactly_one_subtask() {
        let keys = Int64Array::from_iter_values((0..1000).map(|i| i % 37));
        let b = RecordBatch::try_from_iter([("k", Arc::new(keys) as _)]).expect("batch");
        let parts = split_by_key(&b, &["k".into()], 128, 4).expect("split");
        let mut owner: HashMap<i64, usize> = HashMap::new();
        let mut total = 0;
        for (t, p) in parts.iter().enumerate() {
            let Some(p) = p else { continue };
            total += p.num_rows();
            let k = p
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64");
            for i in 0..k.len() {
                assert_eq!(
                    *owner.entry(k.value(i)).or_insert(t),
                    t,
                    "key {} split",
                    k.value(i)
                );
            }
        }
        assert_eq!(total, 1000);
        assert!(parts.iter().filter(|p| p.is_some()).count() > 1);
    }

    #[test]
    fn a_missing_key_column_is_a_schema_error() {
        let b = RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1])) as _)])
            .expect("b");
        let err = split_by_key(&b, &["nope".into()], 128, 2).expect_err("missing");
        assert!(err.to_string().contains("'nope'"));
    }
}
