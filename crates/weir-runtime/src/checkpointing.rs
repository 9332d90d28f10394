//! The checkpoint driver: runs the sans-IO [`Coordinator`] of `weir-checkpoint` against the live
//! job. It injects barriers at the sources, collects the files each task wrote into the
//! [`CheckpointStore`] and acked (it never holds state bytes), writes the manifest last, tells every task when a checkpoint is complete
//! (sinks publish then) or that it was aborted, and takes the final checkpoint once every task's
//! input has ended.
//!
//! A checkpoint whose state or manifest cannot be written (a full disk, a failing object store) is
//! declined with a warning naming the cause, and the job goes on; only the final checkpoint is
//! retried and, if it still fails, fails the job (its output would otherwise never be published).

use crate::observe::{CheckpointHistory, CheckpointRecord, DriverCommand, DriverWatch};
use crate::task::{Control, TaskEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use weir_checkpoint::{
    AbortReason, Action, CheckpointConfig, CheckpointStore, Coordinator, ExpectedTask, FileEntry,
    Manifest, TaskKey,
};
use weir_types::{Barrier, BarrierKind, CheckpointId, Error, Result};

/// How a job checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointSetup {
    /// Where checkpoints are written.
    pub store: CheckpointStore,
    /// Interval, timeout, mode, retention.
    pub config: CheckpointConfig,
    /// The checkpoint to restore from, if resuming.
    pub restore: Option<Manifest>,
}

/// What happened to checkpoints during a job, for the summary.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    /// Checkpoints completed (the final one included).
    pub completed: u64,
    /// Checkpoints declined, expired or aborted.
    pub failed: u64,
    /// The last completed checkpoint.
    pub last_completed: Option<CheckpointId>,
    /// Durations of completed checkpoints in milliseconds, trigger to manifest.
    pub durations_ms: Vec<u64>,
    /// The checkpoint the job was restored from.
    pub restored_from: Option<CheckpointId>,
    /// Milliseconds from the job's start to its first completed checkpoint (after a restore:
    /// the time to recover, state loaded, models up and data flowing again).
    pub first_completed_ms: Option<u64>,
    /// Bytes of state written by the completed checkpoints.
    pub written_bytes: u64,
    /// Bytes of unchanged keyed state the completed checkpoints referred to in earlier ones
    /// instead of writing them again (incremental checkpoints).
    pub referred_bytes: u64,
}

pub(crate) struct TaskHandle {
    pub(crate) is_source: bool,
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

pub(crate) struct Driver {
    pub(crate) job: String,
    pub(crate) max_parallelism: u32,
    pub(crate) parallelism: HashMap<String, u32>,
    pub(crate) store: CheckpointStore,
    pub(crate) coordinator: Coordinator,
    pub(crate) tasks: BTreeMap<TaskKey, TaskHandle>,
    pub(crate) events: mpsc::UnboundedReceiver<TaskEvent>,
    pub(crate) stats: CheckpointStats,
    ready: BTreeSet<TaskKey>,
    acked: BTreeMap<CheckpointId, BTreeSet<TaskKey>>,
    kinds: BTreeMap<CheckpointId, (BarrierKind, u64, Instant)>,
    files: BTreeMap<CheckpointId, Vec<(String, FileEntry)>>,
    final_id: Option<CheckpointId>,
    final_attempts: u32,
    started: Instant,
    /// The checkpoints completed by this run: the only ones an incremental checkpoint may refer
    /// to (a restored job's first checkpoints are full).
    completed: BTreeSet<CheckpointId>,
    /// What watchers see of the checkpoints.
    pub(crate) history: CheckpointHistory,
    /// Requests from watchers ("checkpoint now").
    pub(crate) commands: mpsc::UnboundedReceiver<DriverCommand>,
    /// Requests waiting for the next trigger.
    requested: Vec<tokio::sync::oneshot::Sender<Result<CheckpointRecord>>>,
    /// Requests waiting for the end of a triggered checkpoint.
    answering: BTreeMap<CheckpointId, Vec<tokio::sync::oneshot::Sender<Result<CheckpointRecord>>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Driver {
    pub(crate) fn new(
        job: String,
        max_parallelism: u32,
        parallelism: HashMap<String, u32>,
        setup: &CheckpointSetup,
        tasks: BTreeMap<TaskKey, TaskHandle>,
        events: mpsc::UnboundedReceiver<TaskEvent>,
        watch: DriverWatch,
    ) -> Result<Self> {
        let next_id = setup.restore.as_ref().map_or(1, |m| m.checkpoint_id + 1);
        let expected = tasks.iter().map(|(k, t)| {
            if t.is_source {
                ExpectedTask::source(k.clone())
            } else {
                ExpectedTask::other(k.clone())
            }
        });
        let coordinator =
            Coordinator::new(setup.config.clone(), expected, next_id, Instant::now())?;
        Ok(Driver {
            job,
            max_parallelism,
            parallelism,
            store: setup.store.clone(),
            coordinator,
            tasks,
            events,
            stats: CheckpointStats {
                restored_from: setup.restore.as_ref().map(|m| m.checkpoint_id),
                ..Default::default()
            },
            ready: BTreeSet::new(),
            acked: BTreeMap::new(),
            kinds: BTreeMap::new(),
            files: BTreeMap::new(),
            final_id: None,
            started: Instant::now(),
            completed: BTreeSet::new(),
            final_attempts: 0,
            history: watch.history,
            commands: watch.commands,
            requested: Vec::new(),
            answering: BTreeMap::new(),
        })
    }

    /// Runs until every task has gone (the job ended or failed). Errors only when the final
    /// checkpoint cannot be written.
    pub(crate) async fn run(mut self) -> Result<CheckpointStats> {
        loop {
            let wake = if self.final_id.is_some() {
                None
            } else {
                self.coordinator.next_wakeup()
            };
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.events.recv() => match ev {
                    None => return Ok(self.stats),
                    Some(ev) => self.on_event(ev).await?,
                },
                Some(cmd) = self.commands.recv() => match cmd {
                    DriverCommand::CheckpointNow(reply) => {
                        self.requested.push(reply);
                        self.coordinator.request_checkpoint();
                        let actions = self.coordinator.poll(Instant::now());
                        self.apply(actions).await?;
                    }
                },
                _ = sleep => {
                    let actions = self.coordinator.poll(Instant::now());
                    self.apply(actions).await?;
                }
            }
        }
    }

    fn send(&self, task: &TaskKey, c: Control) {
        if let Some(t) = self.tasks.get(task) {
            // A task that already ended cannot be told anything; its end is reported elsewhere.
            let _ = t.control.send(c);
        }
    }

    async fn on_event(&mut self, ev: TaskEvent) -> Result<()> {
        match ev {
            TaskEvent::Decline { task, id, error } => {
                let live =
                    self.coordinator.in_flight().any(|i| i == id) || self.final_id == Some(id);
                if !live {
                    return Ok(());
                }
                let e =
                    Error::io(format!("task {task} could not write its state")).with_source(error);
                self.decline(id, e).await
            }
            TaskEvent::Ack { task, id, files } => {
                let live =
                    self.coordinator.in_flight().any(|i| i == id) || self.final_id == Some(id);
                // A task that ended while a barrier was queued for it may answer both the barrier
                // and the direct request: the first answer counts.
                let duplicate = self.acked.get(&id).is_some_and(|a| a.contains(&task));
                if !live || duplicate {
                    return Ok(());
                }
                let bytes = files.iter().map(|(_, entry)| entry.size).sum();
                let referred = files.iter().map(|(_, e)| e.referred_bytes()).sum();
                self.files.entry(id).or_default().extend(files);
                self.history
                    .acked(id, &task.node, task.subtask, bytes, referred);
                self.acked.entry(id).or_default().insert(task.clone());
                if self.final_id == Some(id) {
                    if self.acked[&id].len() == self.tasks.len() {
                        self.finalize(id).await?;
                    }
                    return Ok(());
                }
                let actions = self.coordinator.on_ack(id, &task, Instant::now());
                self.apply(actions).await
            }
            TaskEvent::ReadyToFinish { task } => {
                self.ready.insert(task.clone());
                let pending: Vec<(CheckpointId, Barrier)> = self
                    .coordinator
                    .in_flight()
                    .filter(|id| !self.acked.get(id).is_some_and(|a| a.contains(&task)))
                    .filter_map(|id| self.barrier(id))
                    .map(|b| (b.checkpoint_id, b))
                    .collect();
                for (_, b) in pending {
                    self.send(&task, Control::SnapshotNow(b));
                }
                self.maybe_final().await
            }
        }
    }

    fn barrier(&self, id: CheckpointId) -> Option<Barrier> {
        self.kinds.get(&id).map(|(kind, at, _)| Barrier {
            checkpoint_id: id,
            kind: *kind,
            triggered_at_ms: *at,
        })
    }

    /// Once every task waits at its end and nothing is in flight, takes the final checkpoint.
    async fn maybe_final(&mut self) -> Result<()> {
        if self.final_id.is_some()
            || self.ready.len() < self.tasks.len()
            || self.coordinator.in_flight().next().is_some()
        {
            return Ok(());
        }
        self.start_final();
        Ok(())
    }

    fn start_final(&mut self) {
        let id = self.coordinator.next_id() + self.final_attempts as u64;
        self.final_id = Some(id);
        self.kinds
            .insert(id, (BarrierKind::Aligned, now_ms(), Instant::now()));
        let b = Barrier {
            checkpoint_id: id,
            kind: BarrierKind::Aligned,
            triggered_at_ms: now_ms(),
        };
        tracing::debug!("final checkpoint {id}");
        let requested = !self.requested.is_empty();
        self.history
            .triggered(id, "aligned", self.tasks.len(), true, requested);
        let waiting = std::mem::take(&mut self.requested);
        self.answering.entry(id).or_default().extend(waiting);
        let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
        for k in keys {
            self.send(&k, Control::SnapshotNow(b));
        }
    }

    fn apply(&mut self, actions: Vec<Action>) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(self.apply_inner(actions))
    }

    async fn apply_inner(&mut self, actions: Vec<Action>) -> Result<()> {
        for a in actions {
            match a {
                Action::Trigger { id, kind } => {
                    let at = now_ms();
                    self.kinds.insert(id, (kind, at, Instant::now()));
                    let b = Barrier {
                        checkpoint_id: id,
                        kind,
                        triggered_at_ms: at,
                    };
                    tracing::debug!("checkpoint {id} triggered");
                    let requested = !self.requested.is_empty();
                    let expected = self.tasks.len();
                    let kind_name = match kind {
                        BarrierKind::Aligned => "aligned",
                        BarrierKind::Unaligned => "unaligned",
                    };
                    self.history
                        .triggered(id, kind_name, expected, false, requested);
                    let waiting = std::mem::take(&mut self.requested);
                    self.answering.entry(id).or_default().extend(waiting);
                    let targets: Vec<(TaskKey, Control)> = self
                        .tasks
                        .iter()
                        .filter_map(|(k, t)| {
                            if self.ready.contains(k) {
                                Some((k.clone(), Control::SnapshotNow(b)))
                            } else if t.is_source {
                                Some((k.clone(), Control::InjectBarrier(b)))
                            } else {
                                None
                            }
                        })
                        .collect();
                    for (k, c) in targets {
                        self.send(&k, c);
                    }
                }
                Action::Finalize { id } => self.finalize(id).await?,
                Action::Notify { id } => {
                    let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
                    for k in keys {
                        self.send(&k, Control::Complete { id, last: false });
                    }
                }
                Action::Retain { keep } => {
                    if let Err(e) = self.store.retain(keep).await {
                        tracing::warn!("cannot prune old checkpoints: {}", e.report());
                    }
                }
                Action::Expire { id } => {
                    tracing::warn!("checkpoint {id} expired before every task acknowledged it");
                    self.stats.failed += 1;
                    self.ended(id, Err("expired before every task acknowledged it".into()));
                    self.forget(id).await;
                    self.tell_aborted(id, AbortReason::Expired);
                }
                Action::Abort { id, reason } => {
                    tracing::debug!("checkpoint {id} aborted: {reason}");
                    self.stats.failed += 1;
                    self.ended(id, Err(reason.to_string()));
                    self.forget(id).await;
                    self.tell_aborted(id, reason);
                }
            }
        }
        if self.final_id.is_none() {
            self.maybe_final().await?;
        }
        Ok(())
    }

    /// Tells every task that checkpoint `id` will not complete.
    fn tell_aborted(&self, id: CheckpointId, reason: AbortReason) {
        for k in self.tasks.keys() {
            self.send(
                k,
                Control::Aborted {
                    id,
                    reason: reason.clone(),
                },
            );
        }
    }

    async fn forget(&mut self, id: CheckpointId) {
        self.acked.remove(&id);
        self.files.remove(&id);
        self.kinds.remove(&id);
        if let Err(e) = self.store.abort(id).await {
            tracing::warn!("cannot delete the files of checkpoint {id}: {}", e.report());
        }
    }

    async fn decline(&mut self, id: CheckpointId, e: Error) -> Result<()> {
        tracing::warn!("checkpoint {id} declined, the job goes on: {}", e.report());
        self.stats.failed += 1;
        self.ended(id, Err(format!("declined: {}", e.report())));
        if self.final_id == Some(id) {
            self.forget(id).await;
            self.tell_aborted(id, AbortReason::Declined(e.report()));
            return self.retry_final(e).await;
        }
        let actions = self.coordinator.on_decline(id, e.report(), Instant::now());
        self.forget(id).await;
        self.apply(actions).await
    }

    async fn retry_final(&mut self, cause: Error) -> Result<()> {
        self.final_attempts += 1;
        if self.final_attempts >= 3 {
            return Err(Error::io("the final checkpoint could not be written three times; output staged since the last complete checkpoint is not published")
                .with_source(cause));
        }
        tokio::time::sleep(std::time::Duration::from_millis(
            200 * self.final_attempts as u64,
        ))
        .await;
        self.final_id = None;
        self.start_final();
        Ok(())
    }

    /// Checkpoint `id` ended: records a failure and answers the requests waiting for it.
    fn ended(&mut self, id: CheckpointId, outcome: std::result::Result<(), String>) {
        if let Err(reason) = &outcome {
            self.history.failed(id, reason);
        }
        for reply in self.answering.remove(&id).unwrap_or_default() {
            let answer = match (&outcome, self.history.record(id)) {
                (Ok(()), Some(r)) => Ok(r),
                (Ok(()), None) => Err(Error::internal(format!("checkpoint {id} was not recorded"))),
                (Err(why), _) => Err(Error::io(format!("checkpoint {id} failed: {why}"))),
            };
            let _ = reply.send(answer);
        }
    }

    async fn finalize(&mut self, id: CheckpointId) -> Result<()> {
        crate::fault::crash_point("state-files", id);
        if let Some((node, at, path)) = self.files.get(&id).and_then(|files| {
            files.iter().find_map(|(node, f)| {
                weir_checkpoint::incremental::dangling_refs(f, &self.completed)
                    .next()
                    .map(|(at, path)| (node.clone(), at, path.to_owned()))
            })
        }) {
            let e = Error::io(format!(
                "node '{node}' refers to file {path} of checkpoint {at}, which did not complete"
            ));
            return self.decline(id, e).await;
        }
        let mut m = Manifest::new(self.job.clone(), id, now_ms(), self.max_parallelism);
        for (node, p) in &self.parallelism {
            m.add_node(node, *p);
        }
        for (node, entry) in self.files.remove(&id).unwrap_or_default() {
            let p = self.parallelism.get(&node).copied().unwrap_or(1);
            m.add_file(&node, p, entry);
        }
        let is_final = self.final_id == Some(id);
        if is_final {
            m.extra.insert("final".into(), "true".into());
        }
        if let Err(e) = self.store.commit(&m).await {
            return self.decline(id, e).await;
        }
        crate::fault::crash_point("manifest", id);
        self.completed.insert(id);
        tracing::debug!(
            "checkpoint {id}: {} bytes written, {} bytes of unchanged key groups referred to in earlier checkpoints",
            m.state_bytes(),
            m.referred_bytes()
        );
        self.stats.completed += 1;
        self.stats.written_bytes += m.state_bytes();
        self.stats.referred_bytes += m.referred_bytes();
        self.stats.last_completed = Some(id);
        if self.stats.first_completed_ms.is_none() {
            let after = self.started.elapsed();
            self.stats.first_completed_ms = Some(after.as_millis() as u64);
            if let Some(from) = self.stats.restored_from {
                tracing::info!(
                    "recovered: checkpoint {id}, the first since the restore from checkpoint {from}, completed {} ms after the start",
                    after.as_millis()
                );
            }
        }
        if let Some((_, _, started)) = self.kinds.remove(&id) {
            self.stats
                .durations_ms
                .push(started.elapsed().as_millis() as u64);
            self.history.completed(id, started.elapsed());
        }
        self.ended(id, Ok(()));
        self.acked.remove(&id);
        tracing::debug!("checkpoint {id} complete");
        if is_final {
            let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
            for k in keys {
                self.send(&k, Control::Complete { id, last: true });
            }
            if let Err(e) = self.store.retain(self.coordinator.config().retain).await {
                tracing::warn!("cannot prune old checkpoints: {}", e.report());
            }
            return Ok(());
        }
        let actions = self.coordinator.on_finalized(id, Instant::now());
        self.apply(actions).await
    }
}
