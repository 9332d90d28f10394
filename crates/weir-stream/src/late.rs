//! Late rows, and the watermark a stateful operator has seen (which decides what is late).
//!
//! A row is late for a windowed step when every window it belongs to is complete and past its
//! allowed lateness; for a join, when the watermark has passed the time from which its state for
//! that row would already be gone. With `on_late: dead_letter` (the default) and the job's
//! `on_error: dead_letter`, a late row becomes a dead letter whose error starts with `late:`;
//! otherwise (`on_late: drop`, or a job without a dead-letter output) it is dropped, counted, and
//! the count is logged when the operator finishes.
//!
//! The watermark an operator has seen is part of its checkpoint (a union entry saying which key
//! groups it held), so that a restored operator judges lateness as the one before the crash did:
//! at another parallelism each new instance takes the lowest watermark of the old instances whose
//! key groups it takes over.

use arrow::array::{Array, Int64Array, RecordBatch};
use serde::{Deserialize, Serialize};
use weir_checkpoint::{StateSnapshot, UnionKey};
use weir_runtime::{ErrorPolicy, OperatorContext};
use weir_types::{Error, KeyGroupRange, Result, row_as_json};

/// What to do with late rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// Write them to the dead-letter output (when the job has one; else drop them).
    #[default]
    DeadLetter,
    /// Drop them (counted).
    Drop,
}

/// Reports late rows and remembers the watermark.
#[derive(Debug)]
pub(crate) struct Clock {
    on_late: OnLate,
    /// The highest watermark seen (or restored).
    watermark: Option<i64>,
    dropped: u64,
}

const WATERMARK_ENTRY: &str = "weir.watermark";

impl Clock {
    pub(crate) fn new(on_late: OnLate) -> Self {
        Clock {
            on_late,
            watermark: None,
            dropped: 0,
        }
    }

    /// The current watermark (`i64::MIN` before the first).
    pub(crate) fn watermark(&self) -> i64 {
        self.watermark.unwrap_or(i64::MIN)
    }

    /// Advances to `w`; returns whether it moved.
    pub(crate) fn advance(&mut self, w: i64) -> bool {
        if self.watermark.is_some_and(|c| c >= w) {
            return false;
        }
        self.watermark = Some(w);
        true
    }

    /// Reports row `row` of `batch`, whose event time is `time`, as late; `why` completes "late:
    /// event time T ms ...".
    pub(crate) fn late_row(
        &mut self,
        ctx: &mut OperatorContext,
        batch: &RecordBatch,
        row: usize,
        time: i64,
        why: &str,
    ) -> Result<()> {
        if self.on_late == OnLate::DeadLetter && ctx.error_policy() == ErrorPolicy::DeadLetter {
            let error = Error::input(format!(
                "late: event time {time} ms {why} (watermark {} ms)",
                self.watermark()
            ));
            return ctx.bad_row(
                error,
                None,
                Some(format!("row {row}")),
                row_as_json(batch, row),
            );
        }
        self.dropped += 1;
        Ok(())
    }

    /// Reports rows whose event-time value is null (under the job's error policy).
    pub(crate) fn null_times(
        ctx: &mut OperatorContext,
        batch: &RecordBatch,
        times: &Int64Array,
        column: &str,
    ) -> Result<()> {
        for row in 0..times.len() {
            if times.is_null(row) {
                ctx.bad_row(
                    Error::input(format!("event-time column '{column}' is null")),
                    None,
                    Some(format!("row {row}")),
                    row_as_json(batch, row),
                )?;
            }
        }
        Ok(())
    }

    /// Logs how many late rows were dropped.
    pub(crate) fn finish(&self, operator: &str) {
        if self.dropped > 0 {
            tracing::warn!(
                operator,
                "dropped {} late rows (behind the watermark by more than the allowed lateness)",
                self.dropped
            );
        }
    }

    /// Adds this instance's watermark to `snap` as a union entry.
    pub(crate) fn snapshot(&self, range: KeyGroupRange, snap: &mut StateSnapshot) -> Result<()> {
        if let Some(w) = self.watermark {
            let mut bytes = Vec::with_capacity(16);
            bytes.extend_from_slice(&range.start.to_le_bytes());
            bytes.extend_from_slice(&range.end.to_le_bytes());
            bytes.extend_from_slice(&w.to_le_bytes());
            snap.push_union(WATERMARK_ENTRY, bytes)?;
        }
        Ok(())
    }

    /// Takes the lowest watermark of the old instances whose key groups overlap `range`.
    pub(crate) fn restore(&mut self, range: KeyGroupRange, snap: &StateSnapshot) -> Result<()> {
        let key = UnionKey::new(WATERMARK_ENTRY)?;
        for (name, bytes) in snap.union_entries() {
            if *name != key {
                continue;
            }
            let b: [u8; 16] = bytes.try_into().map_err(|_| {
                Error::io("checkpoint state is corrupt: a watermark entry is not 16 bytes")
            })?;
            let start = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let end = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let w = i64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
            if start < range.end && range.start < end {
                self.watermark = Some(self.watermark.map_or(w, |c| c.min(w)));
            }
        }
        Ok(())
    }
}
