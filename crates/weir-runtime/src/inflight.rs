//! The in-flight data of an unaligned checkpoint, as state: the batches a task's input gate
//! recorded (sent before the barrier, not yet processed at the snapshot) are stored under the
//! pseudo node `<head node>.in-flight`, as Arrow IPC, keyed by key group so that a restore at
//! another parallelism hands each row to the subtask that will own it:
//!
//! - on a hash edge, a row's key group is the one of its key (exactly where the router would send
//!   it at the new parallelism);
//! - on other edges any subtask may take a row; batches are spread round robin over the key groups
//!   of the recording subtask, which spreads them over the new subtasks.
//!
//! On restore the task replays them through its chain before it reads its input, each batch as
//! coming from the logical input it was recorded on.
//!
//! An entry is the logical input (`u32`, little-endian) followed by one Arrow IPC stream. Entries
//! written before the input was recorded start with the IPC stream's continuation marker
//! (`0xFFFFFFFF`) and are read as input 0.

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use weir_checkpoint::StateSnapshot;
use weir_types::key_group::key_group_of;
use weir_types::{Error, KeyGroupRange, Result, hash_keys};

/// The pseudo node holding the in-flight data of the chain headed by `head`.
pub(crate) fn node_name(head: &str) -> String {
    format!("{head}.in-flight")
}

/// How the rows of one input map to key groups.
#[derive(Debug, Clone)]
pub(crate) enum InputKeys {
    /// A hash edge on these key columns.
    Hash(Vec<String>),
    /// Any other edge.
    Any,
}

/// Encodes the recorded `batches` (with the index of their input channel) of a subtask owning
/// `range` of `max_parallelism` key groups; `inputs` says per channel how rows map to key groups
/// and which logical input the channel belongs to.
pub(crate) fn encode(
    batches: &[(usize, RecordBatch)],
    inputs: &[(InputKeys, usize)],
    range: KeyGroupRange,
    max_parallelism: u32,
) -> Result<StateSnapshot> {
    let mut snapshot = StateSnapshot::new();
    let groups: Vec<u32> = range.range().collect();
    let mut spread = 0usize;
    for (input, batch) in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let (keys, logical) = inputs
            .get(*input)
            .map_or((&InputKeys::Any, 0), |(k, l)| (k, *l));
        match keys {
            InputKeys::Hash(keys) => {
                let cols = keys
                    .iter()
                    .map(|k| {
                        batch.column_by_name(k).cloned().ok_or_else(|| {
                            Error::internal(format!("in-flight batch without key column '{k}'"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for (row, h) in hash_keys(&cols)?.iter().enumerate() {
                    rows.entry(key_group_of(*h, max_parallelism))
                        .or_default()
                        .push(row as u32);
                }
                for (kg, idx) in rows {
                    let part = take_record_batch(batch, &UInt32Array::from(idx))?;
                    snapshot.push_keyed(kg, entry(logical, &part)?);
                }
            }
            InputKeys::Any => {
                let kg = groups
                    .get(spread % groups.len().max(1))
                    .copied()
                    .unwrap_or(0);
                spread += 1;
                snapshot.push_keyed(kg, entry(logical, batch)?);
            }
        }
    }
    Ok(snapshot)
}

/// The batches of a restored in-flight snapshot with their logical input, in stored order.
pub(crate) fn decode(snapshot: &StateSnapshot) -> Result<Vec<(usize, RecordBatch)>> {
    let mut out = Vec::new();
    for entry in &snapshot.entries {
        let (input, stream) = match entry.bytes.split_first_chunk::<4>() {
            Some((marker, _)) if *marker == [0xFF; 4] => (0, entry.bytes.as_slice()),
            Some((input, rest)) => (u32::from_le_bytes(*input) as usize, rest),
            None => {
                return Err(Error::io(
                    "the in-flight data of the checkpoint is cut short",
                ));
            }
        };
        let reader = StreamReader::try_new(stream, None).map_err(|e| {
            Error::io("cannot read the in-flight data of the checkpoint").with_source(e)
        })?;
        for b in reader {
            out.push((
                input,
                b.map_err(|e| {
                    Error::io("cannot read the in-flight data of the checkpoint").with_source(e)
                })?,
            ));
        }
    }
    Ok(out)
}

/// One entry: the logical input, then the batch as an Arrow IPC stream.
fn entry(input: usize, batch: &RecordBatch) -> Result<Vec<u8>> {
    let input = u32::try_from(input)
        .map_err(|_| Error::internal(format!("input {input} does not fit the in-flight format")))?;
    let mut buf = input.to_le_bytes().to_vec();
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;
    use weir_checkpoint::redistribute;

    fn batch(n: i64) -> RecordBatch {
        let k = Int64Array::from_iter_values(0..n);
        let v = StringArray::from_iter_values((0..n).map(|i| format!("v{i}")));
        RecordBatch::try_from_iter([("k", Arc::new(k) as _), ("v", Arc::new(v) as _)])
            .expect("batch")
    }

    #[test]
    fn rows_of_a_hash_edge_move_with_their_key_when_the_parallelism_changes() {
        let max = 16;
        let range = KeyGroupRange::for_subtask(max, 1, 0);
        let snap = encode(
            &[(0, batch(100))],
            &[(InputKeys::Hash(vec!["k".into()]), 0)],
            range,
            max,
        )
        .expect("encode");
        let parts = redistribute(vec![(0, snap)], 3, max).expect("redistribute");
        let mut total = 0;
        for (t, part) in parts.iter().enumerate() {
            for (_, b) in decode(part).expect("decode") {
                total += b.num_rows();
                let parts =
                    crate::partition::split_by_key(&b, &["k".into()], max, 3).expect("split");
                for (owner, p) in parts.iter().enumerate() {
                    assert!(p.is_none() || owner == t, "a row went to the wrong subtask");
                }
            }
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn entries_without_an_input_are_read_as_input_0() {
        let b = batch(4);
        let mut old = Vec::new();
        let mut w = StreamWriter::try_new(&mut old, &b.schema()).expect("writer");
        w.write(&b).expect("write");
        w.finish().expect("finish");
        drop(w);
        let mut snap = StateSnapshot::new();
        snap.push_keyed(0, old);
        let got = decode(&snap).expect("decode");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.num_rows()), (0, 4));
    }

    #[test]
    fn other_edges_keep_every_batch_whole_and_in_order() {
        let max = 8;
        let snap = encode(
            &[(0, batch(3)), (1, batch(5)), (0, batch(7))],
            &[(InputKeys::Any, 0), (InputKeys::Any, 1)],
            KeyGroupRange::for_subtask(max, 1, 0),
            max,
        )
        .expect("encode");
        let rows: Vec<(usize, usize)> = decode(&snap)
            .expect("decode")
            .iter()
            .map(|(i, b)| (*i, b.num_rows()))
            .collect();
        assert_eq!(rows, vec![(0, 3), (1, 5), (0, 7)]);
    }
}
