//! The operator's work as data: rows admitted and queued ([`Queued`]), batches formed from them
//! ([`FormedBatch`]: size/time triggers, length buckets, batches aligned with input batches) and
//! requests in flight ([`Request`]), all held in [`InFlight`], so a checkpoint can store them and
//! a restore re-issue them; only the reply futures are not data.

use super::call::Reply;
use crate::batching::{batch_ready, bucket_by_length};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use weir_types::Result;

/// A row of an input batch: the batch's sequence number and the row's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowRef {
    /// Sequence number of the input batch (in arrival order).
    pub input: u64,
    /// Row index in that batch.
    pub row: u32,
}

/// A batch formed but not yet sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormedBatch {
    /// Its rows, in model batch order.
    pub rows: Vec<RowRef>,
    /// Whether this is a row-by-row retry after a failed batch (a failure makes a bad row).
    pub isolate: bool,
}

/// A request sent to the model (its service) and not yet answered.
pub struct Request {
    /// Request id (unique in this operator instance).
    pub id: u64,
    /// The batch's rows.
    pub batch: FormedBatch,
    /// When it was sent.
    pub sent: Instant,
    pub(super) reply: BoxFuture<'static, Result<Reply>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("batch", &self.batch)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// A row admitted and waiting for a batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    pub(super) row: RowRef,
    pub(super) len: usize,
    pub(super) at: Instant,
}

/// Everything between input and output, as data: queued rows, formed batches and requests in
/// flight (what a checkpoint stores and a restore re-issues).
#[derive(Debug, Default)]
pub struct InFlight {
    pub(super) next_request: u64,
    pub(super) queue: VecDeque<Queued>,
    pub(super) formed: VecDeque<FormedBatch>,
    pub(super) requests: BTreeMap<u64, Request>,
}

impl InFlight {
    /// Rows admitted and not yet answered nor failed.
    pub fn rows_pending(&self) -> usize {
        self.queue.len()
            + self.formed.iter().map(|b| b.rows.len()).sum::<usize>()
            + self
                .requests
                .values()
                .map(|r| r.batch.rows.len())
                .sum::<usize>()
    }

    /// The requests in flight: (request id, its rows).
    pub fn requests(&self) -> Vec<(u64, Vec<RowRef>)> {
        self.requests
            .values()
            .map(|r| (r.id, r.batch.rows.clone()))
            .collect()
    }

    /// A new request id.
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Forms batches from queued rows when a trigger says so (always when `flushing`): length
    /// buckets of a window of rows when `sort_by_length`, else one batch of up to `target` rows.
    /// Returns whether any was formed.
    pub(super) fn form(&mut self, t: &Triggers) -> bool {
        let q = &mut self.queue;
        if q.is_empty() {
            return false;
        }
        let oldest = q.front().map(|r| r.at);
        if t.sort_by_length {
            let window = 4 * t.max_size;
            let fire = t.flushing
                || q.len() >= window
                || batch_ready(q.len(), usize::MAX, oldest, t.now, t.max_wait);
            if !fire {
                return false;
            }
            let take = q.len().min(window);
            let rows: Vec<Queued> = q.drain(..take).collect();
            let lengths: Vec<usize> = rows.iter().map(|r| r.len).collect();
            for bucket in bucket_by_length(&lengths, t.target) {
                self.formed.push_back(FormedBatch {
                    rows: bucket.into_iter().map(|i| rows[i].row).collect(),
                    isolate: false,
                });
            }
            return true;
        }
        let fire = t.flushing || batch_ready(q.len(), t.target, oldest, t.now, t.max_wait);
        if !fire {
            return false;
        }
        let take = aligned_take(q, t.target);
        let rows = q.drain(..take).map(|r| r.row).collect();
        self.formed.push_back(FormedBatch {
            rows,
            isolate: false,
        });
        true
    }
}

/// What decides whether queued rows become a batch now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Triggers {
    /// The batch size the controller wants.
    pub(super) target: usize,
    /// The largest batch size.
    pub(super) max_size: usize,
    /// Longest wait of a queued row.
    pub(super) max_wait: Duration,
    /// Whether rows are grouped by length.
    pub(super) sort_by_length: bool,
    /// Whether the input ended (every queued row goes).
    pub(super) flushing: bool,
    /// Now.
    pub(super) now: Instant,
}

/// How many queued rows the next batch takes: `target` (or all there are), except that a batch
/// ends where the head row's input batch ends when that leaves it at least half the target. Once
/// model batches start at input-batch boundaries, a model batch of consecutive rows of one input
/// column is passed to the model as a slice of it, without a copy; without this, one batch cut
/// off-boundary (while the controller probes sizes) would make every later batch straddle two
/// input batches and be copied.
fn aligned_take(q: &VecDeque<Queued>, target: usize) -> usize {
    let take = q.len().min(target);
    let Some(head) = q.front() else {
        return take;
    };
    let run = q
        .iter()
        .take(take)
        .take_while(|r| r.row.input == head.row.input)
        .count();
    if run < take && run * 2 >= target {
        run
    } else {
        take
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(batches: &[(u64, u32)]) -> VecDeque<Queued> {
        let at = Instant::now();
        batches
            .iter()
            .flat_map(|&(input, rows)| {
                (0..rows).map(move |row| Queued {
                    row: RowRef { input, row },
                    len: 1,
                    at,
                })
            })
            .collect()
    }

    #[test]
    fn batches_realign_with_input_batches() {
        // 24 rows left of input 0, then input 1: cut at the boundary (24 >= 32 / 2).
        let mut q = queue(&[(0, 32), (1, 32), (2, 32)]);
        q.drain(..8);
        assert_eq!(aligned_take(&q, 32), 24);
        q.drain(..24);
        // Aligned: whole input batches from now on.
        assert_eq!(aligned_take(&q, 32), 32);
        // Only 8 rows left of the head's batch: too small a batch, take the target.
        let mut q = queue(&[(0, 32), (1, 32)]);
        q.drain(..24);
        assert_eq!(aligned_take(&q, 32), 32);
        // Input batches larger than the target: the target.
        assert_eq!(aligned_take(&queue(&[(0, 100)]), 32), 32);
        // Fewer rows queued than the target: all of them (or up to the boundary).
        assert_eq!(aligned_take(&queue(&[(0, 5)]), 32), 5);
        assert_eq!(aligned_take(&queue(&[(0, 20), (1, 5)]), 32), 20);
        assert_eq!(aligned_take(&VecDeque::new(), 32), 0);
    }
}
