//! weir's checkpoints: what a task hands over at a barrier, how that state moves to a different
//! parallelism on restore, the manifest that makes a checkpoint complete, the store that writes and
//! verifies checkpoints, and the coordinator protocol that decides when checkpoints start, complete
//! or fail.
//!
//! # The pieces
//!
//! - [`state`]: [`StateSnapshot`] (keyed entries per key group, union entries) and the pure
//!   [`redistribute`] that hands old subtasks' state to a new parallelism, plus its binary encoding.
//! - [`manifest`]: [`Manifest`], the JSON document written last into a checkpoint folder; it lists
//!   every state file with its size and checksum and carries a checksum of its own content.
//! - [`incremental`]: [`Tracker`], which finds the key groups that changed since a subtask's last
//!   checkpoint, so that a checkpoint writes only those and refers to earlier files for the rest.
//! - [`store`]: [`CheckpointStore`], the only module that does IO, over any `object_store` backend
//!   (local directory by default, S3 in production).
//! - [`coordinator`]: [`Coordinator`], the sans-IO protocol: it takes facts (time passed, a task
//!   acknowledged, a task declined, the manifest was written) and returns [`Action`]s for the
//!   runtime to carry out. No IO, no async, no clock of its own.
//! - `fault` (cargo feature `fault-injection`): `FailingStore`, an `ObjectStore` wrapper that
//!   fails on demand, for fault-injection tests (here and in the runtime).
//!
//! # How the runtime drives a checkpoint
//!
//! ```text
//! poll(now) ──► Trigger{id}      inject barriers at every running source
//! each task snapshots at the barrier and writes its own state:
//!     store.encode_state(node, subtask, &snapshot) ──► store.write_encoded(id, …) ──► FileEntry
//!     and acks with the FileEntries ──► on_ack(id, task, now)  (or on_decline on a write error)
//! on_ack ──► Finalize{id}        build the Manifest from the FileEntries, store.commit(&manifest)
//!                               ──► on_finalized(id, now)     (or on_decline if commit failed)
//! on_finalized ──► Notify{id}    tell every task: sinks publish what they staged up to id
//!              ──► Retain{keep}  store.retain(keep)
//! Expire{id} / Abort{id, ..}     store.abort(id); tell tasks to drop what they staged for id
//! ```
//!
//! On restart: [`CheckpointStore::latest_complete`] finds the newest checkpoint that verifies, then
//! each task reads its own share with [`CheckpointStore::read_subtask_state`] (its key groups at
//! the new parallelism and every union entry, [`state_for_subtask`]); the new coordinator starts
//! at the next id ([`Coordinator::new`]'s `next_id`). The coordinator's side never holds state
//! bytes.

#![warn(missing_docs)]

pub mod coordinator;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
pub mod incremental;
pub mod manifest;
pub mod state;
pub mod store;

pub use coordinator::{
    AbortReason, Action, CheckpointConfig, CheckpointMode, Coordinator, ExpectedTask, TaskKey,
};
#[cfg(any(test, feature = "fault-injection"))]
pub use fault::FailingStore;
pub use incremental::{IncrementalConfig, Tracker};
pub use manifest::{Checksum, FileEntry, MANIFEST_FORMAT_VERSION, Manifest, NodeState, PartRef};
pub use state::{StateEntry, StateKey, StateSnapshot, UnionKey, redistribute, state_for_subtask};
pub use store::{
    CheckpointInfo, CheckpointStore, EncodedState, LatestComplete, LogStore, SkippedCheckpoint,
};
pub use weir_types::CheckpointId;

/// Compile-time checks that the public handles can be shared across tasks and threads.
#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_handles_are_send_and_sync() {
        assert_send_sync::<crate::CheckpointStore>();
        assert_send_sync::<crate::Coordinator>();
        assert_send_sync::<crate::FailingStore>();
        assert_send_sync::<crate::Manifest>();
        assert_send_sync::<crate::StateSnapshot>();
    }
}
