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
//!
//! # The contract for operators
//!
//! - **Who touches state, when.** One [`StateBackend`] belongs to one operator instance (one
//!   subtask) and is used only from that instance's hooks (`open`, `process_batch`,
//!   `on_watermark`, `snapshot`, `finish`), which the runtime calls one at a time: no locking,
//!   no sharing between subtasks. Declare every state (`value_state`, `list_state`,
//!   `map_state`) in `open` before restoring, under the same names and columns in every run.
//! - **Which keys.** An instance may only hold keys of its key groups
//!   ([`StateBackend::range`], `KeyGroupRange::for_subtask`), the ones `key_by` (or the step's
//!   own hash routing on the same columns) sends it; the key group of a key is fixed by its
//!   hash and the job's max parallelism, so max parallelism must not change across restores.
//! - **Snapshot.** [`StateBackend::snapshot`], called from the operator's `snapshot` hook at a
//!   barrier, captures every declared state, every timer and every key's TTL time as they are
//!   at that moment: the rows processed before the barrier and none after. It copies nothing
//!   that later writes can change (the parts are encoded bytes), so the operator may go on
//!   changing state at once. A key group without entries writes no part.
//! - **Restore.** [`StateBackend::restore`], called in `open` with the redistributed snapshot
//!   (`OperatorContext::restored_state`), gives back exactly the snapshotted entries of this
//!   instance's key groups: values, lists in their order, map entries, timers (which then fire
//!   on this instance as if never stopped) and TTL times. Key ids are *not* stable across a
//!   restore; look keys up again by their columns.
//! - **How key groups move.** Each part is tagged with its key group; on restore at another
//!   parallelism the runtime's `redistribute` hands each key group's parts, unchanged, to the
//!   one subtask owning that key group now. A part of a key group outside the instance's range,
//!   or one naming an undeclared state, is an error naming the state and key group, never a
//!   silent loss.
//! - **Size and TTL.** [`StateBackend::size_bytes`] estimates the memory held (what operators
//!   report as `state_bytes`); [`StateBackend::set_ttl`] with [`StateBackend::touch`] and
//!   [`StateBackend::expire`] drops keys not updated for a time, in the operator's choice of
//!   event or processing time.

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
