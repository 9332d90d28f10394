//! weir's keyed state: what a stateful operator keeps per key, and how it gets into checkpoints.
//!
//! - [`KeyTable`] interns the key columns of a batch (Arrow's row format) into dense ids, with the
//!   hash and key group `key_by` routes them by.
//! - [`ValueState`], [`ListState`] and [`MapState`] hold per-key data columnar: the batches written
//!   into them are kept as Arrow arrays and read back with `interleave`, a batch of keys at a time.
//! - [`Timers`] are per-key event-time and processing-time timers.
//! - [`StateBackend`] owns all of these for one operator instance and turns them into a
//!   [`weir_checkpoint::StateSnapshot`]: one Arrow IPC part per state and key group
//!   ([`codec`]), so the runtime's `redistribute` hands each key group to the subtask that owns it
//!   at the new parallelism, and [`StateBackend::restore`] takes it back.
//! - [`time`] reads event-time columns as milliseconds, the unit of watermarks.
//!
//! Nothing here does IO or runs async code; operators call it from their hooks.

#![warn(missing_docs)]

pub mod backend;
mod chunks;
pub mod codec;
pub mod keys;
pub mod list;
pub mod map;
pub mod time;
pub mod timers;
pub mod value;

pub use backend::{KEY_COLUMN, ListHandle, MapHandle, StateBackend, ValueHandle};
pub use keys::{KeyId, KeyTable};
pub use list::ListState;
pub use map::MapState;
pub use timers::{Fired, TimeDomain, Timers};
pub use value::ValueState;
