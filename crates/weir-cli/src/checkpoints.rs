//! `weir checkpoints list|inspect`, and finding the checkpoint to resume from.

use crate::{CheckpointsCommand, plan_options};
use std::process::ExitCode;
use weir_checkpoint::{CheckpointStore, Manifest};
use weir_plan::plan_file;
use weir_runtime::Runtime;
use weir_types::{Error, Result};

/// Opens the checkpoint store of a plan: a directory, or an object-store URL configured by
/// weir-store's credential policy (the `AWS_*` environment, then `checkpoint.storage`).
pub fn open_store(c: &weir_plan::CheckpointPlan) -> Result<CheckpointStore> {
    CheckpointStore::open(&c.store, c.storage.0.clone())
}

/// The newest complete checkpoint, saying which newer ones were skipped and why.
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
            let referred = m.referred_bytes();
            let earlier = if referred > 0 {
                format!(" ({referred} of them in earlier checkpoints it refers to)")
            } else {
                String::new()
            };
            tracing::info!(
                "resuming from checkpoint {} taken {} ago, {} bytes of state{earlier}{fin}",
                m.checkpoint_id,
                crate::progress::fmt_secs(age_secs(m.created_at_ms)),
                m.state_bytes() + referred
            );
        }
        None => tracing::warn!("no complete checkpoint found: starting from the beginning"),
    }
    Ok(latest.manifest)
}

fn age_secs(ms: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(ms);
    now.saturating_sub(ms) as f64 / 1000.0
}

/// Runs a `weir checkpoints` subcommand.
pub fn command(cmd: CheckpointsCommand) -> Result<ExitCode> {
    let spec = match &cmd {
        CheckpointsCommand::List(s) => s,
        CheckpointsCommand::Inspect { spec, .. } => spec,
    };
    let plan = plan_file(&spec.file, &plan_options(spec)?)?;
    let Some(c) = &plan.checkpoint else {
        return Err(Error::config(format!(
            "{} has no 'checkpoint:' section",
            spec.file.display()
        )));
    };
    let store = open_store(c)?;
    let runtime = Runtime::new(1)?;
    match cmd {
        CheckpointsCommand::List(_) => {
            let infos = runtime.io_handle().block_on(store.list())?;
            println!("checkpoints in {}:", c.store);
            if infos.is_empty() {
                println!("  none");
            }
            for i in infos {
                // Verified as `--resume` verifies (the checksums of every file), not only the
                // manifest and the sizes.
                let problem = match &i.problem {
                    None => runtime.io_handle().block_on(store.verify(i.id))?.err(),
                    Some(p) => Some(p.clone()),
                };
                let state = match problem {
                    None => "complete".to_string(),
                    Some(p) => format!("incomplete: {p}"),
                };
                let age = i
                    .created_at_ms
                    .map(|t| format!("{} ago", crate::progress::fmt_secs(age_secs(t))))
                    .unwrap_or_default();
                println!(
                    "  {:>6}  {:>10}  {:>10}  {state}",
                    i.id,
                    bytesize::ByteSize::b(i.size).display().iec().to_string(),
                    age
                );
            }
        }
        CheckpointsCommand::Inspect { id, .. } => {
            let manifest = match id {
                Some(id) => runtime
                    .io_handle()
                    .block_on(store.verify(id))?
                    .map_err(|reason| {
                        Error::input(format!("checkpoint {id} cannot be restored: {reason}"))
                    })?,
                None => runtime
                    .io_handle()
                    .block_on(store.latest_complete())?
                    .manifest
                    .ok_or_else(|| {
                        Error::input(format!("no complete checkpoint in {}", c.store))
                    })?,
            };
            println!(
                "checkpoint {} of job '{}'",
                manifest.checkpoint_id, manifest.job
            );
            println!(
                "  taken {} ago, max_parallelism {}",
                crate::progress::fmt_secs(age_secs(manifest.created_at_ms)),
                manifest.max_parallelism
            );
            for (k, v) in &manifest.extra {
                println!("  {k}: {v}");
            }
            for n in &manifest.nodes {
                let bytes: u64 = n.files.iter().map(|f| f.size).sum();
                println!(
                    "  node {} x{}: {} file(s), {} bytes",
                    n.node,
                    n.parallelism,
                    n.files.len(),
                    bytes
                );
                for f in &n.files {
                    println!("    subtask {}: {} ({} bytes)", f.subtask, f.path, f.size);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
