//! Generator splits: how the rows (or events) of a generator are shared between subtasks, where
//! each split stands in a checkpoint, and the optional rate limit.
//!
//! A generator has `S` splits, fixed when the job first starts (the `splits` option, else the
//! source's parallelism). Split `s` produces the row numbers `s, s + S, s + 2S, …`, so the splits
//! advance through event time side by side. Split `s` runs on subtask `s mod p`. A checkpoint keeps,
//! per split, the next row number it would produce (one union entry each), so a job restored at
//! another parallelism hands the same splits out again and every row is produced exactly once.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_runtime::{SplitId, StateSnapshot, TaskInfo};
use weir_types::{Error, ErrorKind, Result};

/// The key of the union-state entry under which a split's position is kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SplitKey {
    /// The position of generator split `n`.
    GeneratorSplit(u32),
}

/// A split's position, as checkpointed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SplitPosition {
    /// Which split.
    split: u32,
    /// How many splits the generator has.
    splits: u32,
    /// The next row number it produces.
    next: u64,
}

/// One split this subtask runs.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// Its id, for per-split event time (`split-<s>`).
    pub(crate) id: SplitId,
    /// The next row number it produces.
    pub(crate) next: u64,
    /// Whether its start was reported.
    pub(crate) started: bool,
    /// Whether its end was reported.
    pub(crate) ended: bool,
}

/// What a generator does next with its splits (see [`Splits::next_split`]); each names a split
/// by its index in [`Splits::owned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Report the split's start.
    Start(usize),
    /// Make rows of the split.
    Rows(usize),
    /// Report the split's end.
    End(usize),
}

/// The splits one subtask runs, taken round robin.
#[derive(Debug, Clone)]
pub(crate) struct Splits {
    /// Total splits of the generator (the stride between a split's row numbers).
    pub(crate) total: u32,
    pub(crate) owned: Vec<Split>,
    cursor: usize,
    /// One past the last row number (`None`: unbounded).
    pub(crate) end: Option<u64>,
}

impl Splits {
    /// The splits subtask `info.subtask` runs: those named in `restored` (if the job resumed from a
    /// checkpoint that has any), else `default_total` fresh splits; `end` bounds the row numbers.
    pub(crate) fn assign(
        info: &TaskInfo,
        restored: Option<&StateSnapshot>,
        default_total: u32,
        end: Option<u64>,
    ) -> Result<Splits> {
        let mut positions = Vec::new();
        if let Some(state) = restored {
            for entry in state.unions::<SplitKey>() {
                let (SplitKey::GeneratorSplit(_), bytes) = entry?;
                let p: SplitPosition = serde_json::from_slice(bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        "unreadable generator split in the checkpoint",
                    )
                    .with_source(e)
                })?;
                positions.push(p);
            }
        }
        let total = match positions.first() {
            Some(p) => p.splits,
            None => default_total.max(1),
        };
        if positions
            .iter()
            .any(|p| p.splits != total || p.split >= total)
        {
            return Err(Error::new(
                ErrorKind::Io,
                "the checkpoint's generator splits disagree on how many splits there are",
            ));
        }
        if positions.is_empty() {
            positions = (0..total)
                .map(|s| SplitPosition {
                    split: s,
                    splits: total,
                    next: s as u64,
                })
                .collect();
        }
        positions.sort_by_key(|p| p.split);
        positions.dedup_by_key(|p| p.split);
        if positions.len() != total as usize {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the checkpoint holds {} of the generator's {total} splits",
                    positions.len()
                ),
            ));
        }
        let p = info.parallelism.max(1);
        let owned = positions
            .into_iter()
            .filter(|pos| pos.split % p == info.subtask)
            .map(|pos| Split {
                id: Arc::from(format!("split-{}", pos.split)),
                next: pos.next,
                started: false,
                ended: false,
            })
            .collect();
        Ok(Splits {
            total,
            owned,
            cursor: 0,
            end,
        })
    }

    /// Whether split `i` has rows left.
    fn live(&self, i: usize) -> bool {
        self.end.is_none_or(|e| self.owned[i].next < e)
    }

    /// What to do next: report a split's start (each once, before any rows, so that it holds the
    /// watermark back from the first batch on), make rows of the next split with rows left (round
    /// robin), report the end of a split that ran out (once), or `None` when every split is done
    /// and reported.
    pub(crate) fn next_split(&mut self) -> Option<Next> {
        if let Some(i) = self.owned.iter().position(|s| !s.started) {
            self.owned[i].started = true;
            return Some(Next::Start(i));
        }
        let n = self.owned.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if self.live(i) {
                self.cursor = (i + 1) % n;
                return Some(Next::Rows(i));
            }
            if !self.owned[i].ended {
                self.owned[i].ended = true;
                return Some(Next::End(i));
            }
        }
        None
    }

    /// How many row numbers split `i` has left (`None`: unbounded).
    pub(crate) fn remaining(&self, i: usize) -> Option<u64> {
        let e = self.end?;
        let next = self.owned[i].next;
        Some(if next >= e {
            0
        } else {
            (e - next).div_ceil(self.total as u64)
        })
    }

    /// Row numbers this subtask has left in all (`None`: unbounded).
    pub(crate) fn remaining_all(&self) -> Option<u64> {
        (0..self.owned.len()).map(|i| self.remaining(i)).sum()
    }

    /// Adds one union entry per split to `snap`.
    pub(crate) fn snapshot(&self, snap: &mut StateSnapshot) -> Result<()> {
        for s in &self.owned {
            let split: u32 =
                s.id.strip_prefix("split-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| Error::internal("generator split id without its number"))?;
            let pos = SplitPosition {
                split,
                splits: self.total,
                next: s.next,
            };
            let bytes = serde_json::to_vec(&pos)
                .map_err(|e| Error::internal("cannot encode a split position").with_source(e))?;
            snap.push_union(&SplitKey::GeneratorSplit(split), bytes)?;
        }
        Ok(())
    }
}

/// A rate limit for one subtask: at most `rate` row numbers per second since it started.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    rate: f64,
    started: Option<Instant>,
    taken: u64,
}

impl RateLimit {
    /// A limit of `rate` per second (the subtask's share of the source's limit).
    pub(crate) fn new(rate: f64) -> Self {
        RateLimit {
            rate,
            started: None,
            taken: 0,
        }
    }

    /// How many row numbers may be taken now (at most `want`, and at most a tenth of a second's
    /// worth so batches stay smooth), or how long to wait for the next one.
    pub(crate) fn allow(&mut self, want: u64, now: Instant) -> std::result::Result<u64, Duration> {
        let started = *self.started.get_or_insert(now);
        let due = (now.saturating_duration_since(started).as_secs_f64() * self.rate) as u64;
        let budget = due.saturating_sub(self.taken);
        let cap = ((self.rate / 10.0) as u64).max(1);
        let n = budget.min(want).min(cap);
        if n == 0 {
            let next_at = (self.taken + 1) as f64 / self.rate;
            let wait = Duration::from_secs_f64(
                (next_at - now.saturating_duration_since(started).as_secs_f64()).max(0.001),
            );
            return Err(wait.min(Duration::from_millis(100)));
        }
        Ok(n)
    }

    /// Records that `n` row numbers were taken.
    pub(crate) fn take(&mut self, n: u64) {
        self.taken += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subtask: u32, parallelism: u32) -> TaskInfo {
        TaskInfo {
            node: "gen".into(),
            subtask,
            parallelism,
            max_parallelism: 128,
        }
    }

    #[test]
    fn fresh_splits_go_round_robin_to_subtasks() -> Result<()> {
        let s = Splits::assign(&info(1, 2), None, 5, Some(100))?;
        let ids: Vec<_> = s.owned.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, vec!["split-1", "split-3"]);
        assert_eq!(s.owned[0].next, 1);
        assert_eq!(s.remaining(0), Some(20));
        assert_eq!(s.remaining_all(), Some(40));
        Ok(())
    }

    #[test]
    fn restored_positions_survive_a_new_parallelism() -> Result<()> {
        let mut a = Splits::assign(&info(0, 2), None, 2, Some(10))?;
        let mut b = Splits::assign(&info(1, 2), None, 2, Some(10))?;
        a.owned[0].next = 6;
        b.owned[0].next = 9;
        let mut snap = StateSnapshot::new();
        a.snapshot(&mut snap)?;
        b.snapshot(&mut snap)?;
        // Resumed at parallelism 3: split 0 on subtask 0, split 1 on subtask 1, none on 2.
        let r0 = Splits::assign(&info(0, 3), Some(&snap), 7, Some(10))?;
        let r1 = Splits::assign(&info(1, 3), Some(&snap), 7, Some(10))?;
        let r2 = Splits::assign(&info(2, 3), Some(&snap), 7, Some(10))?;
        assert_eq!(r0.total, 2);
        assert_eq!(r0.owned[0].next, 6);
        assert_eq!(r1.owned[0].next, 9);
        assert!(r2.owned.is_empty());
        assert_eq!(r0.remaining_all(), Some(2));
        assert_eq!(r1.remaining_all(), Some(1));
        Ok(())
    }

    #[test]
    fn starts_and_ends_of_splits_are_reported_once() -> Result<()> {
        let mut s = Splits::assign(&info(0, 1), None, 2, Some(1))?;
        assert_eq!(s.next_split(), Some(Next::Start(0)));
        assert_eq!(s.next_split(), Some(Next::Start(1)));
        assert_eq!(s.next_split(), Some(Next::Rows(0)));
        s.owned[0].next = 2;
        assert_eq!(s.next_split(), Some(Next::End(1)));
        assert_eq!(s.next_split(), Some(Next::End(0)));
        assert_eq!(s.next_split(), None);
        Ok(())
    }

    #[test]
    fn the_rate_limit_paces_row_numbers() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1000.0);
        assert!(r.allow(500, t0).is_err());
        let n = r
            .allow(500, t0 + Duration::from_millis(50))
            .expect("50 due");
        assert_eq!(n, 50);
        r.take(n);
        assert!(r.allow(500, t0 + Duration::from_millis(50)).is_err());
        // Never more than a tenth of a second's worth at once.
        assert_eq!(r.allow(500, t0 + Duration::from_secs(10)), Ok(100));
    }
}
