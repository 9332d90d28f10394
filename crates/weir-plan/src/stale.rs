//! Stale state never duplicates output: the checks `weir run` (and a run started from Python)
//! makes before a job starts, and finding the checkpoint to resume from.
//!
//! - A run without `--resume` into a sink location or checkpoint store that holds an earlier
//!   run's published output or checkpoints refuses to start, unless `--overwrite` (which deletes
//!   both) is given: the new run would write the same rows again beside the old ones.
//! - `--resume` with no usable checkpoint refuses the same way when a sink location holds
//!   published output (starting from the beginning would duplicate it).
//! - Hidden in-progress and staged files of crashed runs are removed on a fresh start (a restored
//!   run's sinks clean up after the run they restore themselves), and checkpoint folders newer
//!   than the one restored (unusable, or abandoned by a crash) are deleted before the retention
//!   rule (`checkpoint.retain`) is applied, so a crash never leaves more than `retain` behind.

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use weir_checkpoint::{CheckpointStore, Manifest};
use weir_runtime::Runtime;
use weir_types::{Error, Result};

/// What `weir run` was asked to do about earlier state.
#[derive(Debug, Clone, Copy)]
pub struct Intent {
    /// `--resume`.
    pub resume: bool,
    /// `--overwrite`.
    pub overwrite: bool,
}

/// What a run starts from, checked: the plan's checkpoint store (if it has one) and, when asked
/// to resume, the newest complete checkpoint in it; then [`preflight`]. Every front end (`weir
/// run`, Python) calls this before starting a job. `no_store`: the error message when resuming a
/// plan without a `checkpoint:` section (worded for the front end's option).
pub fn prepare(
    runtime: &Runtime,
    plan: &crate::Plan,
    intent: Intent,
    no_store: &str,
) -> Result<(Option<CheckpointStore>, Option<Manifest>)> {
    let store = plan.checkpoint.as_ref().map(open_store).transpose()?;
    let mut restore = None;
    if intent.resume {
        let Some(store) = &store else {
            return Err(Error::config(no_store));
        };
        restore = newest_complete(runtime, store)?;
    }
    preflight(runtime, plan, store.as_ref(), restore.as_ref(), intent)?;
    Ok((store, restore))
}

/// Opens the checkpoint store of a plan: a directory, or an object-store URL configured by
/// weir-store's credential policy (the `AWS_*` environment, then `checkpoint.storage`).
pub fn open_store(c: &crate::CheckpointPlan) -> Result<CheckpointStore> {
    CheckpointStore::open(&c.store, c.storage.0.clone())
}

/// The newest complete checkpoint, saying (in the log) which newer ones were skipped and why.
pub fn newest_complete(runtime: &Runtime, store: &CheckpointStore) -> Result<Option<Manifest>> {
    let latest = runtime.io_handle().block_on(store.latest_complete())?;
    for s in &latest.skipped {
        tracing::warn!("{s}; falling back to an older checkpoint");
    }
    match &latest.manifest {
        Some(m) => {
            let fin = if m.extra.get("final").is_some_and(|v| v == "true") {
                " (the final checkpoint of a run that ended: sources resume at their end)"
            } else {
                ""
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(m.created_at_ms);
            let age = std::time::Duration::from_millis(now.saturating_sub(m.created_at_ms));
            let referred = m.referred_bytes();
            let earlier = if referred > 0 {
                format!(" ({referred} of them in earlier checkpoints it refers to)")
            } else {
                String::new()
            };
            tracing::info!(
                "resuming from checkpoint {} taken {:.1}s ago, {} bytes of state{earlier}{fin}",
                m.checkpoint_id,
                age.as_secs_f64(),
                m.state_bytes() + referred
            );
        }
        None => tracing::warn!("no complete checkpoint found: starting from the beginning"),
    }
    Ok(latest.manifest)
}

/// The checks before a run; `restore` is the checkpoint `--resume` found (if any). Errors (kind
/// `Config`) with a message saying what holds which earlier output, and what to do.
pub fn preflight(
    runtime: &Runtime,
    plan: &crate::Plan,
    store: Option<&CheckpointStore>,
    restore: Option<&Manifest>,
    intent: Intent,
) -> Result<()> {
    if intent.resume && intent.overwrite {
        return Err(Error::config(
            "--resume continues an earlier run and --overwrite deletes it: give one of them",
        ));
    }
    let outputs = plan.outputs();
    let mut published = Vec::new();
    for (name, at) in &outputs {
        let survey = at.survey()?;
        if !survey.published.is_empty() {
            published.push((name.clone(), at.path.clone(), survey.published));
        }
    }
    let ids = match store {
        Some(s) => runtime.io_handle().block_on(s.ids())?,
        None => Vec::new(),
    };
    let location = plan.checkpoint.as_ref().map(|c| c.store.clone());

    if intent.overwrite {
        for (name, at) in &outputs {
            let n = at.clear()?;
            if n > 0 {
                tracing::warn!(
                    "--overwrite: removed {n} file(s) of an earlier run from {} (sink '{name}')",
                    at.path.display()
                );
            }
        }
        if let (Some(s), Some(loc)) = (store, &location) {
            let n = runtime.io_handle().block_on(clear_store(s))?;
            if n > 0 {
                tracing::warn!("--overwrite: removed {n} checkpoint file(s) from {loc}");
            }
        }
        return Ok(());
    }

    let held = describe(&published);
    if !intent.resume && (!published.is_empty() || !ids.is_empty()) {
        let mut what = held;
        if !ids.is_empty() {
            let first = ids.first().copied().unwrap_or_default();
            let last = ids.last().copied().unwrap_or_default();
            what.push(format!(
                "the checkpoint store {} holds checkpoint(s) {first}..={last}",
                location.as_deref().unwrap_or("?")
            ));
        }
        return Err(Error::config(format!(
            "refusing to start a fresh run over an earlier one: {}. A fresh run would write the \
             same rows again beside them. `weir run --resume` continues the earlier run; \
             `--overwrite` deletes its output and checkpoints and starts over",
            what.join("; ")
        )));
    }
    if intent.resume && restore.is_none() && !published.is_empty() {
        return Err(Error::config(format!(
            "--resume found no usable checkpoint in {}, but {}: starting from the beginning \
             would write those rows again. `--overwrite` deletes the output and checkpoints and \
             starts over",
            location.as_deref().unwrap_or("the checkpoint store"),
            held.join("; ")
        )));
    }

    match restore {
        // The restored sinks publish what the checkpoint staged and remove the rest themselves.
        Some(m) => {
            if let Some(s) = store {
                runtime
                    .io_handle()
                    .block_on(prune_after(s, m.checkpoint_id, &ids))?;
                if let Some(c) = &plan.checkpoint {
                    let gone = runtime.io_handle().block_on(s.retain(c.config.retain))?;
                    if !gone.is_empty() {
                        tracing::info!(
                            "removed checkpoint(s) {gone:?} beyond checkpoint.retain = {}",
                            c.config.retain
                        );
                    }
                }
            }
        }
        None => {
            for (name, at) in &outputs {
                let n = at.clean_stale()?;
                if n > 0 {
                    tracing::info!(
                        "removed {n} in-progress file(s) of a crashed run from {} (sink '{name}')",
                        at.path.display()
                    );
                }
            }
            // Only unusable checkpoints can be here (none restores): remove them, so the new
            // run's checkpoints do not sit beside them.
            if let Some(s) = store
                && !ids.is_empty()
            {
                runtime.io_handle().block_on(prune_after(s, 0, &ids))?;
            }
        }
    }
    Ok(())
}

/// "sink 'x' (out/) holds 3 published file(s): part-000..., ..."
fn describe(published: &[(String, std::path::PathBuf, Vec<std::path::PathBuf>)]) -> Vec<String> {
    published
        .iter()
        .map(|(name, at, files)| {
            let shown: Vec<String> = files
                .iter()
                .take(3)
                .map(|f| {
                    f.file_name()
                        .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into())
                })
                .collect();
            let more = if files.len() > 3 { ", ..." } else { "" };
            format!(
                "sink '{name}' ({}) holds {} published file(s) of an earlier run ({}{more})",
                at.display(),
                files.len(),
                shown.join(", ")
            )
        })
        .collect()
}

/// Deletes the checkpoint folders with an id above `restored`: a crashed run's unfinished or
/// damaged ones (the restored one is the newest usable).
async fn prune_after(store: &CheckpointStore, restored: u64, ids: &[u64]) -> Result<()> {
    for id in ids.iter().copied().filter(|id| *id > restored) {
        tracing::info!("removing checkpoint {id}: newer than the one restored, and unusable");
        store.abort(id).await?;
    }
    Ok(())
}

/// Deletes every object under the checkpoint store's root (checkpoints and logs); returns how
/// many.
async fn clear_store(store: &CheckpointStore) -> Result<usize> {
    let folder = store.folder(0);
    let parts: Vec<_> = folder.parts().collect();
    let root: object_store::path::Path = parts[..parts.len().saturating_sub(1)]
        .iter()
        .cloned()
        .collect();
    let os = store.object_store();
    let prefix = (!root.as_ref().is_empty()).then_some(&root);
    let objects: Vec<_> = os
        .list(prefix)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| Error::io(format!("cannot list the checkpoint store {os}")).with_source(e))?;
    for path in &objects {
        match os.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::io(format!("cannot delete {path} in {os}")).with_source(e));
            }
        }
    }
    Ok(objects.len())
}
