//! The single message enum carried by every channel, and the control records inside it.

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// Identifies one checkpoint of a job; strictly increasing within a job.
pub type CheckpointId = u64;

/// Event-time progress: no row with an event time below this value will follow on this channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watermark(pub i64);

/// Whether a producer currently sends watermarks.
///
/// An *idle* producer (a source subtask whose splits have no data for a while) does not hold
/// event time back: a consumer leaves it out of the minimum over its inputs until it is *active*
/// again. A producer becomes active by sending `Active` (before its next batch or watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WatermarkStatus {
    /// Sends watermarks; counts in the minimum over inputs.
    Active,
    /// Sends nothing for now; left out of the minimum over inputs.
    Idle,
}

/// How a barrier is to be aligned by the tasks it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BarrierKind {
    /// Inputs that delivered the barrier are held until every input has delivered it.
    Aligned,
    /// The barrier overtakes queued data; the overtaken data is stored with the checkpoint.
    Unaligned,
}

/// A checkpoint barrier, injected at the sources and flowing with the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Barrier {
    /// The checkpoint this barrier delimits.
    pub checkpoint_id: CheckpointId,
    /// Alignment mode.
    pub kind: BarrierKind,
    /// Wall-clock time (ms since the Unix epoch) when the coordinator triggered the checkpoint.
    pub triggered_at_ms: u64,
}

/// What travels on a channel between two tasks. Defined once for the whole engine.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of rows.
    Data(RecordBatch),
    /// Event-time progress.
    Watermark(Watermark),
    /// The producer went idle or became active again (see [`WatermarkStatus`]).
    WatermarkStatus(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The producer will send nothing more on this channel.
    EndOfStream,
}

impl Message {
    /// Bytes this message is accounted as on a byte-bounded channel (control messages count 64 bytes).
    pub fn size_bytes(&self) -> usize {
        match self {
            Message::Data(batch) => batch.get_array_memory_size().max(64),
            _ => 64,
        }
    }

    /// Number of rows carried (0 for control messages).
    pub fn n_rows(&self) -> usize {
        match self {
            Message::Data(batch) => batch.num_rows(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn data_is_accounted_by_its_memory() {
        let arr = Int64Array::from_iter_values(0..10_000);
        let batch = RecordBatch::try_from_iter([("a", Arc::new(arr) as _)]).expect("batch");
        let msg = Message::Data(batch);
        assert!(msg.size_bytes() >= 80_000);
        assert_eq!(msg.n_rows(), 10_000);
        assert_eq!(Message::EndOfStream.size_bytes(), 64);
    }
}
