//! Reports a stateful operator's state size (bytes in memory, entries) to its metrics, which the
//! progress display, the web API, `/metrics` (`weir_operator_state_bytes`) and the end-of-job
//! summary read.
//!
//! Measuring may walk the state, so after a batch it is measured at most every
//! [`EVERY`]; after a watermark, a snapshot, a restore and at the end always.

use std::time::{Duration, Instant};
use weir_runtime::OperatorContext;

/// The least time between two measurements after batches.
pub(crate) const EVERY: Duration = Duration::from_millis(200);

/// When the state was last measured.
#[derive(Debug, Default)]
pub(crate) struct StateGauge {
    last: Option<Instant>,
}

impl StateGauge {
    /// After a batch: whether to measure (it did not in the last [`EVERY`]).
    pub(crate) fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= EVERY)
    }

    /// Records the state's size: `(bytes, entries)`.
    pub(crate) fn report(&mut self, ctx: &OperatorContext, (bytes, entries): (usize, usize)) {
        ctx.metrics().set_state(bytes as u64, entries as u64);
        self.last = Some(Instant::now());
    }
}
