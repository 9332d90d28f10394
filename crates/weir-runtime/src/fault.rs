//! Crash injection at the phases of a checkpoint, for recovery tests: a fault-injection stand-in,
//! off unless the environment asks for it.
//!
//! `WEIR_CRASH_AT=<phase>:<checkpoint>` aborts the process (as `kill -9` would: no clean-up, no
//! flushing) when it reaches `<phase>` of checkpoint `<checkpoint>` (`*` matches any checkpoint):
//!
//! - `snapshot`: a task snapshotted its operators, wrote its state files and is about to
//!   acknowledge;
//! - `state-files`: every state file of the checkpoint is written, the manifest is not;
//! - `manifest`: the manifest is written (the checkpoint is complete), no sink has published yet;
//! - `restore`: a task read its share of the checkpoint being restored and has not opened its
//!   operators.

use std::sync::OnceLock;
use weir_types::CheckpointId;

/// The environment variable.
pub const CRASH_AT: &str = "WEIR_CRASH_AT";

fn target() -> Option<&'static (String, Option<CheckpointId>)> {
    static TARGET: OnceLock<Option<(String, Option<CheckpointId>)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var(CRASH_AT).ok()?;
            let (phase, id) = v.split_once(':')?;
            let id = if id == "*" {
                None
            } else {
                Some(id.parse().ok()?)
            };
            Some((phase.to_string(), id))
        })
        .as_ref()
}

/// Aborts the process when `WEIR_CRASH_AT` names this phase of checkpoint `id`.
pub fn crash_point(phase: &str, id: CheckpointId) {
    if let Some((p, want)) = target()
        && p == phase
        && want.is_none_or(|w| w == id)
    {
        eprintln!("{CRASH_AT}: crashing at phase '{phase}' of checkpoint {id}");
        std::process::abort();
    }
}
