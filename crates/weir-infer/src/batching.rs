//! Batching policy, pure (no IO, no threads): when a batch is ready (size- and time-triggered),
//! how big the next one should be ([`AdaptiveController`]), and how ragged rows are grouped by
//! length ([`bucket_by_length`]). Time comes from an injected [`Clock`] so tests control it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (for tests and simulations).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset_ns: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            start: Instant::now(),
            offset_ns: AtomicU64::new(0),
        }
    }
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.offset_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.offset_ns.load(Ordering::Relaxed))
    }
}

/// Whether a batch should be formed now from `queued` rows: when there are at least `target` rows,
/// or when the oldest queued row (queued at `oldest`) has waited `max_wait`.
pub fn batch_ready(
    queued: usize,
    target: usize,
    oldest: Option<Instant>,
    now: Instant,
    max_wait: Duration,
) -> bool {
    if queued == 0 {
        return false;
    }
    queued >= target.max(1) || oldest.is_some_and(|t| now.saturating_duration_since(t) >= max_wait)
}

/// When the time trigger fires for rows queued since `oldest`.
pub fn batch_deadline(oldest: Option<Instant>, max_wait: Duration) -> Option<Instant> {
    oldest.map(|t| t + max_wait)
}

/// Groups row indices into batches of at most `batch_size` rows of similar length: indices are
/// sorted by `lengths` (stably, so equal lengths keep their order) and cut into consecutive
/// chunks. Every index appears exactly once.
pub fn bucket_by_length(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// What the controller last saw and chose, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerState {
    /// The batch size the next batch should have.
    pub target: usize,
    /// p95 of recent request latencies.
    pub p95_latency: Duration,
    /// Throughput (rows/s of model time) measured at the last evaluated size, 0 before any.
    pub throughput: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Growing the batch size while throughput improves.
    Probing,
    /// Holding the size; re-probe after `reprobe_after`.
    Stable { since: Instant },
}

/// Chooses the next batch size from observed (rows, run time, latency) per batch: maximise rows/s
/// while the p95 model run time of one batch stays within the budget.
///
/// The budget is held against the run time, not against the time from dispatch to result: the
/// latter also counts the wait behind other batches at a busy instance, which grows with the load
/// whatever the batch size, and shrinking batches then only lowers throughput and makes the wait
/// longer (a saturated model would be driven down to batches of one).
///
/// Policy: start at a quarter of `max_size`; after `samples_per_step` batches at a size, compute
/// its throughput (rows / model time) and p95 run time. Over budget → halve and remember the size
/// as a ceiling. Otherwise, while throughput has not dropped by more than 3% below the best size
/// so far, double (bounded by `max_size` and the ceiling); when it dropped, settle on the best
/// size seen. A flat throughput keeps growing: a bigger batch costs no model time then, and saves
/// the per-batch work around the model (dispatch, gathering rows, scattering results), which the
/// model's run time does not show (measured: the image benchmark settled at 8 rows under the old
/// rule of "grow only on a 5% gain" and ran 3-6% slower than at 32).
/// While settled, latency is still watched (over budget halves again) and after `reprobe_after`
/// the controller forgets its ceiling and probes upwards again (load or inputs may have changed).
/// The size always stays in `[1, max_size]`. Not adaptive: always `max_size`.
#[derive(Debug)]
pub struct AdaptiveController {
    max_size: usize,
    budget: Duration,
    adaptive: bool,
    clock: Arc<dyn Clock>,
    current: usize,
    ceiling: usize,
    phase: Phase,
    best: Option<(usize, f64)>,
    step_rows: usize,
    step_run: Duration,
    step_latencies: Vec<Duration>,
    recent: VecDeque<Duration>,
    last_throughput: f64,
    /// Batches observed per evaluated size.
    pub samples_per_step: usize,
    /// How long to hold a settled size before probing again.
    pub reprobe_after: Duration,
}

/// Throughput (relative to the best so far) below which growing stops: measurement noise of a
/// few batches is about this size.
const GROWTH_FLOOR: f64 = 0.97;
/// Latencies kept for the p95.
const RECENT: usize = 64;

impl AdaptiveController {
    /// A controller for sizes in `[1, max_size]` under `budget` (p95 latency).
    pub fn new(max_size: usize, budget: Duration, adaptive: bool, clock: Arc<dyn Clock>) -> Self {
        let max_size = max_size.max(1);
        let current = if adaptive {
            (max_size / 4).max(1)
        } else {
            max_size
        };
        AdaptiveController {
            max_size,
            budget,
            adaptive,
            clock,
            current,
            ceiling: max_size,
            phase: Phase::Probing,
            best: None,
            step_rows: 0,
            step_run: Duration::ZERO,
            step_latencies: Vec::new(),
            recent: VecDeque::new(),
            last_throughput: 0.0,
            samples_per_step: 3,
            reprobe_after: Duration::from_secs(10),
        }
    }

    /// The batch size the next batch should have.
    pub fn target(&self) -> usize {
        self.current
    }

    /// The largest size the controller may choose.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Current target, recent p95 latency and last throughput.
    pub fn state(&self) -> ControllerState {
        ControllerState {
            target: self.current,
            p95_latency: p95(self.recent.iter().copied()),
            throughput: self.last_throughput,
        }
    }

    /// Records a finished batch of `rows`: `run` is the model time (what the budget is held
    /// against), `latency` the time from dispatch to result (including queueing at the instance;
    /// kept for the reported p95 latency only).
    pub fn observe(&mut self, rows: usize, run: Duration, latency: Duration) {
        self.recent.push_back(latency);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if !self.adaptive || rows == 0 {
            return;
        }
        self.step_rows += rows;
        self.step_run += run;
        self.step_latencies.push(run);
        if self.step_latencies.len() < self.samples_per_step.max(1) {
            return;
        }
        let tput = self.step_rows as f64 / self.step_run.as_secs_f64().max(1e-9);
        let step_p95 = p95(self.step_latencies.iter().copied());
        self.step_rows = 0;
        self.step_run = Duration::ZERO;
        self.step_latencies.clear();
        self.last_throughput = tput;
        let now = self.clock.now();
        if step_p95 > self.budget {
            self.ceiling = self.current.saturating_sub(1).max(1);
            self.set((self.current / 2).max(1));
            self.best = None;
            self.phase = Phase::Stable { since: now };
            return;
        }
        match self.phase {
            Phase::Probing => match self.best {
                Some((size, best)) if tput < best * GROWTH_FLOOR => {
                    // Bigger got slower: go back to the best size.
                    self.set(size);
                    self.phase = Phase::Stable { since: now };
                }
                _ => {
                    if self.best.is_none_or(|(_, best)| tput > best) {
                        self.best = Some((self.current, tput));
                    }
                    let next = (self.current * 2).min(self.ceiling).min(self.max_size);
                    if next <= self.current {
                        self.phase = Phase::Stable { since: now };
                    } else {
                        self.set(next);
                    }
                }
            },
            Phase::Stable { since } => {
                if now.saturating_duration_since(since) >= self.reprobe_after {
                    self.ceiling = self.max_size;
                    self.best = Some((self.current, tput));
                    let next = (self.current * 2).min(self.max_size);
                    if next > self.current {
                        self.set(next);
                        self.phase = Phase::Probing;
                    } else {
                        self.phase = Phase::Stable { since: now };
                    }
                }
            }
        }
    }

    fn set(&mut self, size: usize) {
        self.current = size.clamp(1, self.max_size);
    }
}

/// The 95th percentile (nearest rank) of `values`; zero when empty.
pub fn p95(values: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = values.collect();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let rank = ((v.len() as f64) * 0.95).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `n` batches through `c` with a simulated model whose run time for `size` rows is
    /// `cost(size)`, advancing the clock; returns the sizes chosen.
    fn simulate(
        c: &mut AdaptiveController,
        clock: &ManualClock,
        n: usize,
        cost: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            let size = c.target();
            sizes.push(size);
            let start = clock.now();
            clock.advance(cost(size));
            let took = clock.now() - start;
            c.observe(size, took, took);
        }
        sizes
    }

    #[test]
    fn grows_while_batching_pays() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(64, Duration::from_secs(1), true, clock.clone());
        assert_eq!(c.target(), 16);
        // Fixed overhead of 20 ms per batch plus 1 ms per row: bigger is always better.
        let sizes = simulate(&mut c, &clock, 30, |n| Duration::from_millis(20 + n as u64));
        assert_eq!(*sizes.last().unwrap(), 64, "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
    }

    #[test]
    fn flat_throughput_grows_to_the_largest_size_within_budget() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(256, Duration::from_secs(10), true, clock.clone());
        // Pure per-row cost: batching neither gains nor loses model time, so the bigger batch
        // (less work around the model per row) wins.
        let sizes = simulate(&mut c, &clock, 30, |n| Duration::from_millis(2 * n as u64));
        assert_eq!(*sizes.last().unwrap(), 256, "{sizes:?}");
        // ... but not past the latency budget: 2 ms per row under 300 ms allows 150 rows.
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(256, Duration::from_millis(300), true, clock.clone());
        c.reprobe_after = Duration::from_secs(3600);
        let sizes = simulate(&mut c, &clock, 60, |n| Duration::from_millis(2 * n as u64));
        // 256 rows (512 ms) is tried once and halved back to 128 (256 ms), where it stays.
        assert_eq!(*sizes.last().unwrap(), 128, "{sizes:?}");
        assert!(sizes[12..].iter().all(|s| *s * 2 <= 300), "{sizes:?}");
    }

    #[test]
    fn stops_growing_when_throughput_drops() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(256, Duration::from_secs(10), true, clock.clone());
        // 2 ms per row up to 64 rows, 3 ms per row beyond (a batch that no longer fits a cache):
        // it settles at 64.
        let sizes = simulate(&mut c, &clock, 30, |n| {
            Duration::from_millis(if n <= 64 { 2 * n } else { 3 * n } as u64)
        });
        assert_eq!(*sizes.last().unwrap(), 64, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 128), "{sizes:?}");
    }

    #[test]
    fn backs_off_under_tight_budget() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(64, Duration::from_millis(50), true, clock.clone());
        // 10 ms per row: 16 rows take 160 ms, over the 50 ms budget.
        let sizes = simulate(&mut c, &clock, 40, |n| Duration::from_millis(10 * n as u64));
        let last = *sizes.last().unwrap();
        assert!(last <= 5, "{sizes:?}");
        assert!(last >= 1);
        // It stays within budget once settled.
        assert!(sizes[30..].iter().all(|s| s * 10 <= 50), "{sizes:?}");
    }

    #[test]
    fn reprobes_after_interval() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(64, Duration::from_millis(100), true, clock.clone());
        c.reprobe_after = Duration::from_secs(1);
        // Slow phase: 10 ms/row -> settles small.
        simulate(&mut c, &clock, 30, |n| Duration::from_millis(10 * n as u64));
        let small = c.target();
        assert!(small <= 10);
        // Load goes away: 20 ms overhead + 0.1 ms/row; after the reprobe interval it grows again.
        clock.advance(Duration::from_secs(2));
        let sizes = simulate(&mut c, &clock, 40, |n| {
            Duration::from_micros(20_000 + 100 * n as u64)
        });
        assert!(*sizes.last().unwrap() > small, "{sizes:?}");
    }

    #[test]
    fn not_adaptive_uses_max() {
        let clock = Arc::new(ManualClock::default());
        let mut c = AdaptiveController::new(32, Duration::from_millis(1), false, clock.clone());
        let sizes = simulate(&mut c, &clock, 10, |n| Duration::from_millis(n as u64));
        assert!(sizes.iter().all(|s| *s == 32));
    }

    #[test]
    fn time_trigger() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let wait = Duration::from_millis(10);
        assert!(!batch_ready(0, 4, None, t0, wait));
        assert!(!batch_ready(3, 4, Some(t0), t0, wait));
        assert!(batch_ready(4, 4, Some(t0), t0, wait));
        clock.advance(Duration::from_millis(10));
        assert!(batch_ready(1, 4, Some(t0), clock.now(), wait));
        assert_eq!(batch_deadline(Some(t0), wait), Some(t0 + wait));
    }

    #[test]
    fn p95_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(p95(v.into_iter()), Duration::from_millis(95));
        assert_eq!(p95(std::iter::empty()), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn controller_stays_in_bounds(
            max in 1usize..300,
            budget_ms in 1u64..500,
            costs in proptest::collection::vec((0u64..50, 0u64..20), 1..80),
        ) {
            let clock = Arc::new(ManualClock::default());
            let mut c = AdaptiveController::new(max, Duration::from_millis(budget_ms), true, clock.clone());
            for (fixed, per_row) in costs {
                let n = c.target();
                prop_assert!(n >= 1 && n <= max);
                let d = Duration::from_millis(fixed + per_row * n as u64);
                clock.advance(d);
                c.observe(n, d, d);
            }
            prop_assert!(c.target() >= 1 && c.target() <= max);
        }

        #[test]
        fn buckets_are_a_partition(lengths in proptest::collection::vec(0usize..100, 0..200), size in 1usize..40) {
            let buckets = bucket_by_length(&lengths, size);
            let mut seen: Vec<usize> = buckets.iter().flatten().copied().collect();
            prop_assert!(buckets.iter().all(|b| !b.is_empty() && b.len() <= size));
            // Lengths never decrease across the concatenation of buckets.
            prop_assert!(seen.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]));
            seen.sort();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        }
    }
}
