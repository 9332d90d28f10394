//! weir's stateful streaming operators over event time.
//!
//! - [`aggregate`]: aggregates written as SQL, run with DataFusion's (grouped) accumulators.
//! - [`window`]: tumbling, hopping, session and column windows (`window:` in a spec).
//! - `op: aggregate` ([`AggregateSpec`]): keyed aggregations per window, results emitted when the
//!   watermark passes the window end, with allowed lateness.
//! - `op: interval_join` and `op: join` ([`IntervalJoinSpec`], [`JoinSpec`]): two inputs joined
//!   on equal keys, state dropped by watermark.
//! - `op: window_join` ([`WindowJoinSpec`]): two inputs joined per window when it completes.
//! - `op: lookup_join` ([`LookupJoinSpec`]): rows enriched from a Parquet table reloaded when it
//!   changes.
//! - `op: top_n` ([`TopNSpec`]): the first `n` rows per window and key in an order.
//!
//! Every spec is a step kind under weir-runtime's contract (`weir_runtime::kind::OperatorSpec`),
//! registered in `weir_plan::kinds::builtin`; `input_keys` names the columns each input is
//! hash-routed by (a keyed step without keys runs as one instance). State goes into checkpoints per key group (see `weir-state`), so a job restores at
//! another parallelism. Late rows (behind the watermark by more than the allowed lateness) go to
//! the dead-letter output with an error starting `late:`, or are dropped and counted.

#![warn(missing_docs)]

pub mod aggregate;
mod buffer;
mod gauge;
pub mod join;
mod kinds;
pub mod late;
pub mod lookup;
mod parts;
mod session;
mod spill;
pub mod top_n;
pub mod window;
pub mod window_join;
pub mod windowed;

pub use aggregate::{CompiledAggregate, compile_aggregate};
pub use join::{IntervalJoinSpec, JoinOn, JoinSpec, StreamJoin};
pub use late::OnLate;
pub use lookup::{LookupHow, LookupJoin, LookupJoinSpec};
pub use top_n::{TopN, TopNSpec};
pub use window::{Span, WindowSpec};
pub use window_join::{WindowJoin, WindowJoinSpec};
pub use windowed::{AggregateSpec, WindowAggregate};
