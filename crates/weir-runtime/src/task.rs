//! The task loop: runs a chain of operators (optionally headed by a source) for one subtask, feeds
//! them the input gate's events, routes what they emit, forwards control messages and keeps metrics.

use crate::inflight::{self, InputKeys};
use crate::input::{InputEvent, InputGate};
use crate::metrics::OperatorMetrics;
use crate::operator::{Emitted, Emitter, Operator, OperatorContext};
use crate::partition::EdgeRouter;
use crate::source::{Source, SourceEvent};
use arrow::record_batch::RecordBatch;
use futures::future::{BoxFuture, select_all};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_checkpoint::{
    AbortReason, CheckpointStore, FileEntry, IncrementalConfig, Manifest, StateSnapshot, TaskKey,
    Tracker,
};
use weir_types::{
    Barrier, BarrierKind, CheckpointId, Error, ErrorKind, KeyGroupRange, Message, Result,
    Watermark, WatermarkStatus, dead_letter_batch,
};

/// What the checkpoint driver tells a task.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// (Sources) inject this barrier: snapshot, then send it downstream.
    InjectBarrier(Barrier),
    /// (Tasks whose input has ended) snapshot now for this checkpoint; no barrier is forwarded.
    SnapshotNow(Barrier),
    /// Checkpoint `id` is complete; `last` says it was the final one and the task may end.
    Complete { id: CheckpointId, last: bool },
    /// Checkpoint `id` will not complete.
    Aborted {
        id: CheckpointId,
        reason: AbortReason,
    },
}

/// States of the nodes of a task for one checkpoint: (node, subtask, state).
pub(crate) type NodeStates = Vec<(String, u32, StateSnapshot)>;

/// What a task tells the checkpoint driver.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// The task snapshotted checkpoint `id` and wrote its state: the file of each node of its
    /// chain that had state, to list in the manifest. No state bytes travel here.
    Ack {
        task: TaskKey,
        id: CheckpointId,
        files: Vec<(String, FileEntry)>,
    },
    /// The task could not write its state of checkpoint `id`.
    Decline {
        task: TaskKey,
        id: CheckpointId,
        error: Error,
    },
    /// The task's input has ended and `finish` ran; it now waits for the final checkpoint.
    ReadyToFinish { task: TaskKey },
}

/// A task's link to the checkpoint driver and the checkpoint store.
pub(crate) struct CheckpointLink {
    pub(crate) key: TaskKey,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) events: mpsc::UnboundedSender<TaskEvent>,
    /// Where the task writes its state.
    pub(crate) store: CheckpointStore,
    /// The io executor, where state writes run.
    pub(crate) io: tokio::runtime::Handle,
    /// State writes in flight (each acks or declines when done); aborted when the task is dropped.
    pub(crate) writes: JoinSet<()>,
    /// The checkpoint to restore from.
    pub(crate) restore: Option<Arc<Manifest>>,
    /// How this task's snapshots are written (incremental or full).
    pub(crate) incremental: IncrementalConfig,
    /// The change tracker of each node of the chain (by node name), shared with the writes.
    pub(crate) trackers: Trackers,
    /// Done when the previous checkpoint's state has been encoded: encodings run in checkpoint
    /// order, since each one's references depend on the previous one.
    pub(crate) encoded: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// The incremental change trackers of a task's nodes, by node name.
pub(crate) type Trackers = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Tracker>>>;

fn lock_trackers(
    t: &Trackers,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Tracker>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// One operator of a chain with its context.
pub(crate) struct ChainedOperator {
    pub(crate) op: Box<dyn Operator>,
    pub(crate) ctx: OperatorContext,
}

/// Where a task's data comes from.
pub(crate) enum Head {
    Source {
        source: Box<dyn Source>,
        ctx: OperatorContext,
    },
    Input {
        gate: InputGate,
        /// Per input channel of the gate: which logical input of the head node it belongs to.
        input_of: Vec<usize>,
    },
}

/// The task's outputs: routers for data edges and the dead-letter channel.
pub(crate) struct Outputs {
    pub(crate) routers: Vec<EdgeRouter>,
    pub(crate) dead_letter: Option<EdgeRouter>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskEnd {
    /// All input consumed.
    Finished,
    /// A stop was requested and the source ended early.
    Stopped,
}

pub(crate) struct Task {
    pub(crate) head: Head,
    pub(crate) chain: Vec<ChainedOperator>,
    pub(crate) outputs: Outputs,
    pub(crate) stop: CancellationToken,
    /// Metrics of every node in the task (source first), for task-wide idle/backpressure time.
    pub(crate) all_metrics: Vec<Arc<OperatorMetrics>>,
    /// Present when the job checkpoints.
    pub(crate) checkpoint: Option<CheckpointLink>,
    /// The last checkpoint this task snapshotted.
    pub(crate) last_snapshot: Option<CheckpointId>,
    /// How this task records the in-flight data of unaligned checkpoints (input tasks only).
    pub(crate) in_flight: Option<InFlightSetup>,
    /// An unaligned checkpoint snapshotted but not yet acked: its in-flight data is recording.
    pub(crate) pending_ack: Option<(CheckpointId, NodeStates)>,
    /// Event time: the last watermark handed to each chained operator, the last one sent out,
    /// and the status sent out.
    pub(crate) watermarks: Watermarks,
}

/// The watermarks a task has passed on so far (each only advances).
#[derive(Debug)]
pub(crate) struct Watermarks {
    into: Vec<Option<Watermark>>,
    out: Option<Watermark>,
    status: WatermarkStatus,
}

impl Watermarks {
    pub(crate) fn new(chain: usize) -> Self {
        Watermarks {
            into: vec![None; chain],
            out: None,
            status: WatermarkStatus::Active,
        }
    }
}

/// Where an input task's in-flight data goes (see [`crate::inflight`]).
pub(crate) struct InFlightSetup {
    /// The pseudo node name.
    pub(crate) node: String,
    pub(crate) subtask: u32,
    /// The chain's parallelism.
    pub(crate) parallelism: u32,
    /// Per input channel: how its rows map to key groups, and its logical input.
    pub(crate) inputs: Vec<(InputKeys, usize)>,
    pub(crate) range: KeyGroupRange,
    pub(crate) max_parallelism: u32,
    /// Restored in-flight data, replayed before the input is read.
    pub(crate) replay: Option<StateSnapshot>,
}

enum Woken {
    Input(Result<InputEvent>),
    Pending(usize, Result<()>, Emitter),
    Control(Option<Control>),
}

/// The next control message; never resolves when the job does not checkpoint.
async fn recv_control(link: &mut Option<CheckpointLink>) -> Option<Control> {
    match link {
        Some(l) => l.control.recv().await,
        None => std::future::pending().await,
    }
}

fn coordinator_gone() -> Error {
    Error::new(ErrorKind::Cancelled, "the checkpoint coordinator has ended")
}

impl Task {
    pub(crate) async fn run(mut self) -> Result<TaskEnd> {
        self.restore().await?;
        if let Head::Source { source, ctx } = &mut self.head {
            let name = ctx.name().to_string();
            source.open(ctx).await.map_err(|e| e.in_operator(name))?;
        }
        for c in &mut self.chain {
            let name = c.ctx.name().to_string();
            c.op.open(&mut c.ctx)
                .await
                .map_err(|e| e.in_operator(name))?;
        }
        let end = match &self.head {
            Head::Source { .. } => self.run_source().await?,
            Head::Input { .. } => self.run_input().await?,
        };
        self.await_final_checkpoint().await?;
        if let Some(link) = &mut self.checkpoint {
            // Writes of checkpoints that were aborted may still run: let them end.
            while link.writes.join_next().await.is_some() {}
        }
        for m in &self.all_metrics {
            m.set_finished();
        }
        Ok(end)
    }

    /// On a restore, reads this subtask's share of the restored checkpoint for the source and
    /// every chained operator (and the in-flight data to replay), before anything is opened.
    async fn restore(&mut self) -> Result<()> {
        let Some((store, manifest)) = self
            .checkpoint
            .as_ref()
            .and_then(|l| Some((l.store.clone(), l.restore.clone()?)))
        else {
            return Ok(());
        };
        let read = |node: String, parallelism: u32, subtask: u32| {
            let (store, manifest) = (store.clone(), manifest.clone());
            async move {
                if manifest.node(&node).is_none() {
                    return Ok(None);
                }
                store
                    .read_subtask_state(&manifest, &node, parallelism, subtask)
                    .await
                    .map(Some)
            }
        };
        let mut contexts: Vec<&mut OperatorContext> = Vec::new();
        if let Head::Source { ctx, .. } = &mut self.head {
            contexts.push(ctx);
        }
        contexts.extend(self.chain.iter_mut().map(|c| &mut c.ctx));
        for ctx in contexts {
            let info = ctx.info().clone();
            let state = read(info.node.clone(), info.parallelism, info.subtask).await?;
            ctx.set_restored_state(state.unwrap_or_default(), manifest.checkpoint_id);
        }
        if let Some(setup) = &mut self.in_flight {
            let parallelism = setup.parallelism;
            setup.replay = read(setup.node.clone(), parallelism, setup.subtask).await?;
        }
        crate::fault::crash_point("restore", manifest.checkpoint_id);
        Ok(())
    }

    /// With checkpoints, a task whose input has ended stays until the final checkpoint completes:
    /// it answers snapshot requests with its final state and publishes on completion.
    async fn await_final_checkpoint(&mut self) -> Result<()> {
        let Some(link) = &mut self.checkpoint else {
            return Ok(());
        };
        link.events
            .send(TaskEvent::ReadyToFinish {
                task: link.key.clone(),
            })
            .map_err(|_| coordinator_gone())?;
        loop {
            let Some(link) = &mut self.checkpoint else {
                return Ok(());
            };
            let control = link.control.recv().await.ok_or_else(coordinator_gone)?;
            match control {
                Control::InjectBarrier(b) | Control::SnapshotNow(b) => {
                    self.snapshot_all(&b, false).await?
                }
                Control::Complete { id, last } => {
                    self.notify_complete(id).await?;
                    if last {
                        return Ok(());
                    }
                }
                Control::Aborted { id, reason } => self.notify_aborted(id, &reason).await?,
            }
        }
    }

    /// Snapshots the source (if any) and every chained operator for `barrier`, forwards the
    /// barrier downstream when `forward`, and acks the driver.
    async fn snapshot_all(&mut self, barrier: &Barrier, forward: bool) -> Result<()> {
        // A task whose input ended while a barrier was queued for it may be asked twice for the
        // same checkpoint (the queued barrier and a direct request): snapshot once.
        if self
            .last_snapshot
            .is_some_and(|l| barrier.checkpoint_id <= l)
        {
            return Ok(());
        }
        self.last_snapshot = Some(barrier.checkpoint_id);
        let mut states = Vec::new();
        if let Head::Source { source, ctx } = &mut self.head {
            let st = source
                .snapshot(barrier, ctx)
                .await
                .map_err(|e| e.in_operator(ctx.name().to_string()))?;
            states.push((ctx.name().to_string(), ctx.info().subtask, st));
        }
        for i in 0..self.chain.len() {
            let c = &mut self.chain[i];
            let mut out = Emitter::default();
            let name = c.ctx.name().to_string();
            let st =
                c.op.snapshot(barrier, &mut c.ctx, &mut out)
                    .await
                    .map_err(|e| e.in_operator(name.clone()))?;
            states.push((name.clone(), c.ctx.info().subtask, st));
            if !forward && !out.is_empty() {
                return Err(Error::internal(
                    "an operator emitted rows while snapshotting after its input ended",
                )
                .in_operator(name));
            }
            self.after_hook(i, &mut out).await?;
        }
        if forward {
            self.broadcast(&Message::Barrier(*barrier), true).await?;
        }
        // Unaligned, on an input task: the ack waits for the in-flight data the gate records.
        if forward && barrier.kind == BarrierKind::Unaligned && self.in_flight.is_some() {
            self.pending_ack = Some((barrier.checkpoint_id, states));
            return Ok(());
        }
        self.ack(barrier.checkpoint_id, states)
    }

    /// Writes the states of checkpoint `id` into the store, on the io executor while the task
    /// goes on, and then acks the driver with the files written (or declines).
    fn ack(&mut self, id: CheckpointId, states: NodeStates) -> Result<()> {
        let Some(link) = &mut self.checkpoint else {
            return Ok(());
        };
        // Reap the writes that ended (each already told the driver).
        while link.writes.try_join_next().is_some() {}
        let (store, events, task) = (link.store.clone(), link.events.clone(), link.key.clone());
        let (trackers, config) = (link.trackers.clone(), link.incremental);
        let previous = link.encoded.take();
        let (encoded_tx, encoded_rx) = tokio::sync::oneshot::channel();
        link.encoded = Some(encoded_rx);
        link.writes.spawn_on(
            async move {
                if let Some(previous) = previous {
                    // An error only says the previous write was dropped: its encoding is over.
                    let _ = previous.await;
                }
                let written = write_states(&store, id, states, &trackers, config, encoded_tx).await;
                let event = match written {
                    Ok(files) => {
                        crate::fault::crash_point("snapshot", id);
                        TaskEvent::Ack { task, id, files }
                    }
                    Err(error) => {
                        for t in lock_trackers(&trackers).values_mut() {
                            t.aborted(id);
                        }
                        TaskEvent::Decline { task, id, error }
                    }
                };
                // A driver that is gone has ended the job; the task hears of it itself.
                let _ = events.send(event);
            },
            &link.io,
        );
        Ok(())
    }

    /// The gate recorded checkpoint `id`'s in-flight data: store it with the snapshot and ack.
    fn on_in_flight(&mut self, id: CheckpointId, batches: &[(usize, RecordBatch)]) -> Result<()> {
        let Some((pending, mut states)) = self.pending_ack.take() else {
            return Err(Error::internal(format!(
                "in-flight data of checkpoint {id} without its snapshot"
            )));
        };
        if pending != id {
            return Err(Error::internal(format!(
                "in-flight data of checkpoint {id} while checkpoint {pending} waits"
            )));
        }
        let Some(setup) = &self.in_flight else {
            return Err(Error::internal(
                "in-flight data on a task that does not record it",
            ));
        };
        let snapshot = inflight::encode(batches, &setup.inputs, setup.range, setup.max_parallelism)
            .map_err(|e| e.in_operator(setup.node.clone()))?;
        states.push((setup.node.clone(), setup.subtask, snapshot));
        self.ack(id, states)
    }

    /// Replays the in-flight data restored from an unaligned checkpoint through the chain.
    async fn replay_in_flight(&mut self) -> Result<()> {
        let Some(snapshot) = self.in_flight.as_mut().and_then(|s| s.replay.take()) else {
            return Ok(());
        };
        let node = self
            .in_flight
            .as_ref()
            .map(|s| s.node.clone())
            .unwrap_or_default();
        let batches = inflight::decode(&snapshot).map_err(|e| e.in_operator(node.clone()))?;
        let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        if rows > 0 {
            tracing::info!(node = %node, "replaying {rows} in-flight rows from the checkpoint");
        }
        for (input, b) in batches {
            self.push_input(input, b).await?;
        }
        Ok(())
    }

    /// Runs a batch that came on logical input `input` of the head operator through the chain.
    async fn push_input(&mut self, input: usize, batch: RecordBatch) -> Result<()> {
        if let Some(head) = self.chain.first_mut() {
            head.ctx.set_input(input);
        }
        let r = self.push(0, Emitted::Batch(batch)).await;
        if let Some(head) = self.chain.first_mut() {
            head.ctx.set_input(0);
        }
        r
    }

    /// Tells the source and every chained operator that checkpoint `id` is complete.
    async fn notify_complete(&mut self, id: CheckpointId) -> Result<()> {
        if let Some(link) = &self.checkpoint {
            for t in lock_trackers(&link.trackers).values_mut() {
                t.completed(id);
            }
        }
        if let Head::Source { source, ctx } = &mut self.head {
            source
                .notify_checkpoint_complete(id, ctx)
                .await
                .map_err(|e| e.in_operator(ctx.name().to_string()))?;
        }
        for c in &mut self.chain {
            let name = c.ctx.name().to_string();
            c.op.notify_checkpoint_complete(id, &mut c.ctx)
                .await
                .map_err(|e| e.in_operator(name))?;
        }
        Ok(())
    }

    /// Tells the source and every chained operator that checkpoint `id` will not complete.
    async fn notify_aborted(&mut self, id: CheckpointId, reason: &AbortReason) -> Result<()> {
        if let Some(link) = &self.checkpoint {
            for t in lock_trackers(&link.trackers).values_mut() {
                t.aborted(id);
            }
        }
        if let Head::Source { source, ctx } = &mut self.head {
            source
                .notify_checkpoint_aborted(id, reason, ctx)
                .await
                .map_err(|e| e.in_operator(ctx.name().to_string()))?;
        }
        for c in &mut self.chain {
            let name = c.ctx.name().to_string();
            c.op.notify_checkpoint_aborted(id, reason, &mut c.ctx)
                .await
                .map_err(|e| e.in_operator(name))?;
        }
        Ok(())
    }

    async fn on_control(&mut self, control: Control) -> Result<()> {
        match control {
            Control::InjectBarrier(b) => self.snapshot_all(&b, true).await,
            Control::SnapshotNow(b) => Err(Error::internal(format!(
                "asked to snapshot checkpoint {} directly while the input is still running",
                b.checkpoint_id
            ))),
            Control::Complete { id, .. } => self.notify_complete(id).await,
            Control::Aborted { id, reason } => self.notify_aborted(id, &reason).await,
        }
    }

    async fn run_source(&mut self) -> Result<TaskEnd> {
        let mut end = TaskEnd::Finished;
        loop {
            if self.stop.is_cancelled() {
                end = TaskEnd::Stopped;
                break;
            }
            while let Some(c) = self
                .checkpoint
                .as_mut()
                .and_then(|l| l.control.try_recv().ok())
            {
                self.on_control(c).await?;
            }
            let Head::Source { source, ctx } = &mut self.head else {
                unreachable!("source task")
            };
            let started = Instant::now();
            let ev = source
                .next(ctx)
                .await
                .map_err(|e| e.in_operator(ctx.name().to_string()))?;
            ctx.metrics().add_busy(started.elapsed());
            let dead = ctx.take_dead_letters();
            let (watermark, idle) = ctx.take_source_progress();
            let finished = matches!(ev, SourceEvent::Finished);
            let (batch, pause) = match ev {
                SourceEvent::Batch(b) | SourceEvent::SplitBatch { batch: b, .. } => {
                    ctx.metrics()
                        .add_out(b.num_rows(), b.get_array_memory_size());
                    (Some(b), None)
                }
                SourceEvent::Idle(d) => (None, Some(d)),
                SourceEvent::SplitStart(_) | SourceEvent::SplitEnd(_) | SourceEvent::Finished => {
                    (None, None)
                }
            };
            self.send_dead_letters(dead).await?;
            self.emit_ready_pending().await?;
            self.source_progress(batch, watermark, idle).await?;
            if finished {
                break;
            }
            if let Some(d) = pause {
                let t = Instant::now();
                let stop = self.stop.clone();
                let woken = tokio::select! {
                    _ = tokio::time::sleep(d) => None,
                    _ = stop.cancelled() => None,
                    c = recv_control(&mut self.checkpoint) => Some(c),
                };
                self.add_idle(t.elapsed());
                if let Some(c) = woken {
                    self.on_control(c.ok_or_else(coordinator_gone)?).await?;
                }
            }
        }
        if let Head::Source { source, ctx } = &mut self.head {
            source
                .close(ctx)
                .await
                .map_err(|e| e.in_operator(ctx.name().to_string()))?;
        }
        self.finish_chain().await?;
        Ok(end)
    }

    async fn run_input(&mut self) -> Result<TaskEnd> {
        self.replay_in_flight().await?;
        loop {
            let waited = Instant::now();
            let woken = self.wait().await;
            self.add_idle(waited.elapsed());
            match woken {
                Woken::Pending(i, res, mut out) => {
                    let name = self.chain[i].ctx.name().to_string();
                    res.map_err(|e| e.in_operator(name))?;
                    self.after_hook(i, &mut out).await?;
                }
                Woken::Control(c) => self.on_control(c.ok_or_else(coordinator_gone)?).await?,
                Woken::Input(ev) => match ev? {
                    InputEvent::Data { input, batch } => {
                        let Head::Input { input_of, .. } = &self.head else {
                            unreachable!("input task")
                        };
                        let input = input_of.get(input).copied().unwrap_or(0);
                        self.push_input(input, batch).await?
                    }
                    InputEvent::Watermark(w) => self.push(0, Emitted::Watermark(w)).await?,
                    InputEvent::WatermarkStatus(s) => self.send_status(s).await?,
                    InputEvent::Barrier(b) => self.snapshot_all(&b, true).await?,
                    InputEvent::InFlight {
                        checkpoint,
                        batches,
                    } => self.on_in_flight(checkpoint, &batches)?,
                    InputEvent::End => break,
                },
            }
        }
        if let Some((id, _)) = &self.pending_ack {
            return Err(Error::internal(format!(
                "the input ended while the in-flight data of checkpoint {id} was still recording"
            )));
        }
        self.finish_chain().await?;
        Ok(TaskEnd::Finished)
    }

    /// Waits for input or for pending work of any chained operator, whichever comes first.
    async fn wait(&mut self) -> Woken {
        let Task {
            head,
            chain,
            checkpoint,
            ..
        } = self;
        let Head::Input { gate, .. } = head else {
            unreachable!("input task")
        };
        let control = recv_control(checkpoint);
        let mut pending: Vec<BoxFuture<'_, (usize, Result<()>, Emitter)>> = Vec::new();
        for (i, c) in chain.iter_mut().enumerate() {
            if c.op.has_pending() {
                pending.push(Box::pin(async move {
                    let mut out = Emitter::default();
                    let r = c.op.poll_pending(&mut c.ctx, &mut out).await;
                    (i, r, out)
                }));
            }
        }
        if pending.is_empty() {
            return tokio::select! {
                c = control => Woken::Control(c),
                ev = gate.next() => Woken::Input(ev),
            };
        }
        tokio::select! {
            c = control => Woken::Control(c),
            ev = gate.next() => Woken::Input(ev),
            ((i, r, out), _, _) = select_all(pending) => Woken::Pending(i, r, out),
        }
    }

    /// Emits what chained operators with pending work have ready now, without waiting (a source
    /// task cannot wait on them and on its source at once).
    async fn emit_ready_pending(&mut self) -> Result<()> {
        use futures::FutureExt;
        for i in 0..self.chain.len() {
            if !self.chain[i].op.has_pending() {
                continue;
            }
            let c = &mut self.chain[i];
            let mut out = Emitter::default();
            let ready = c.op.poll_pending(&mut c.ctx, &mut out).now_or_never();
            if let Some(res) = ready {
                let name = c.ctx.name().to_string();
                res.map_err(|e| e.in_operator(name))?;
                self.after_hook(i, &mut out).await?;
            }
        }
        Ok(())
    }

    /// Calls `finish` on each chained operator in order, passing what it emits down the chain, then
    /// sends end-of-stream on every output.
    async fn finish_chain(&mut self) -> Result<()> {
        for i in 0..self.chain.len() {
            let c = &mut self.chain[i];
            let mut out = Emitter::default();
            let name = c.ctx.name().to_string();
            c.op.finish(&mut c.ctx, &mut out)
                .await
                .map_err(|e| e.in_operator(name))?;
            self.after_hook(i, &mut out).await?;
        }
        self.broadcast(&Message::EndOfStream, true).await
    }

    /// Routes dead letters of operator `i` and passes what it emitted to operator `i + 1`.
    async fn after_hook(&mut self, i: usize, out: &mut Emitter) -> Result<()> {
        let dead = self.chain[i].ctx.take_dead_letters();
        self.send_dead_letters(dead).await?;
        for item in out.take_all() {
            if let Emitted::Batch(b) = &item {
                self.chain[i]
                    .ctx
                    .metrics()
                    .add_out(b.num_rows(), b.get_array_memory_size());
            }
            self.push(i + 1, item).await?;
        }
        Ok(())
    }

    /// Runs a batch or watermark through the chain from operator `start` (depth first) and sends
    /// what comes out. A watermark that does not advance past the last one an operator was handed
    /// (or the last one sent out) goes no further.
    async fn push(&mut self, start: usize, item: Emitted) -> Result<()> {
        let mut stack = vec![(start, item)];
        while let Some((i, item)) = stack.pop() {
            if i == self.chain.len() {
                match item {
                    Emitted::Batch(b) => self.send(b).await?,
                    Emitted::Watermark(w) => self.send_watermark(w).await?,
                }
                continue;
            }
            let c = &mut self.chain[i];
            let mut out = Emitter::default();
            let name = c.ctx.name().to_string();
            match item {
                Emitted::Batch(b) => {
                    c.ctx
                        .metrics()
                        .add_in(b.num_rows(), b.get_array_memory_size());
                    let started = Instant::now();
                    c.op.process_batch(b, &mut c.ctx, &mut out)
                        .await
                        .map_err(|e| e.in_operator(name))?;
                    c.ctx.metrics().add_busy(started.elapsed());
                }
                Emitted::Watermark(w) => {
                    let last = &mut self.watermarks.into[i];
                    if last.is_some_and(|l| w <= l) {
                        continue;
                    }
                    *last = Some(w);
                    c.ctx.metrics().set_watermark(w.0);
                    c.op.on_watermark(w, &mut c.ctx, &mut out)
                        .await
                        .map_err(|e| e.in_operator(name))?;
                }
            }
            let dead = c.ctx.take_dead_letters();
            let produced = out.take_all();
            for p in &produced {
                if let Emitted::Batch(p) = p {
                    c.ctx
                        .metrics()
                        .add_out(p.num_rows(), p.get_array_memory_size());
                }
            }
            self.send_dead_letters(dead).await?;
            for p in produced.into_iter().rev() {
                stack.push((i + 1, p));
            }
        }
        Ok(())
    }

    /// Passes on what a source call produced, in order: its batch, its watermark, then its going
    /// idle. A batch or watermark from an idle source makes it active again first.
    async fn source_progress(
        &mut self,
        batch: Option<RecordBatch>,
        watermark: Option<Watermark>,
        idle: bool,
    ) -> Result<()> {
        if (batch.is_some() || watermark.is_some())
            && self.watermarks.status == WatermarkStatus::Idle
        {
            self.send_status(WatermarkStatus::Active).await?;
        }
        if let Some(b) = batch {
            self.push(0, Emitted::Batch(b)).await?;
        }
        if let Some(w) = watermark {
            self.push(0, Emitted::Watermark(w)).await?;
        }
        if idle {
            self.send_status(WatermarkStatus::Idle).await?;
        }
        Ok(())
    }

    /// Sends a watermark on every data output, if it advances.
    async fn send_watermark(&mut self, w: Watermark) -> Result<()> {
        if self.watermarks.out.is_some_and(|l| w <= l) {
            return Ok(());
        }
        self.watermarks.out = Some(w);
        self.broadcast(&Message::Watermark(w), false).await
    }

    /// Sends a change of watermark status on every data output.
    async fn send_status(&mut self, status: WatermarkStatus) -> Result<()> {
        if self.watermarks.status == status {
            return Ok(());
        }
        self.watermarks.status = status;
        let idle = status == WatermarkStatus::Idle;
        if let Head::Source { ctx, .. } = &self.head {
            ctx.metrics().set_watermark_idle(idle);
        }
        for c in &self.chain {
            c.ctx.metrics().set_watermark_idle(idle);
        }
        self.broadcast(&Message::WatermarkStatus(status), false)
            .await
    }

    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        let mut waited = Duration::ZERO;
        if let Some((last, rest)) = self.outputs.routers.split_last_mut() {
            for r in rest {
                waited += r.send_batch(batch.clone()).await?;
            }
            waited += last.send_batch(batch).await?;
        }
        self.add_backpressured(waited);
        Ok(())
    }

    async fn send_dead_letters(&mut self, dead: Vec<weir_types::DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let Some(dl) = &mut self.outputs.dead_letter else {
            return Err(Error::internal(
                "dead letters were produced but no dead-letter output is wired",
            ));
        };
        let waited = dl.send_batch(dead_letter_batch(&dead)).await?;
        self.add_backpressured(waited);
        Ok(())
    }

    async fn broadcast(&mut self, msg: &Message, to_dead_letter: bool) -> Result<()> {
        // A source's watermark is the one it sends (operators record theirs as they get one).
        if let (Message::Watermark(w), Head::Source { ctx, .. }) = (msg, &self.head) {
            ctx.metrics().set_watermark(w.0);
        }
        let mut waited = Duration::ZERO;
        for r in &mut self.outputs.routers {
            waited += r.broadcast(msg).await?;
        }
        if to_dead_letter && let Some(dl) = &mut self.outputs.dead_letter {
            waited += dl.broadcast(msg).await?;
        }
        self.add_backpressured(waited);
        Ok(())
    }

    fn add_idle(&self, d: Duration) {
        for m in &self.all_metrics {
            m.add_idle(d);
        }
    }

    fn add_backpressured(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        for m in &self.all_metrics {
            m.add_backpressured(d);
        }
    }
}

/// Encodes (on a blocking thread, through each node's incremental [`Tracker`]) and writes the
/// non-empty states of checkpoint `id`; returns the files written, by node. `encoded` is told
/// when the encoding is done (the next checkpoint's may start).
async fn write_states(
    store: &CheckpointStore,
    id: CheckpointId,
    states: NodeStates,
    trackers: &Trackers,
    config: IncrementalConfig,
    encoded: tokio::sync::oneshot::Sender<()>,
) -> Result<Vec<(String, FileEntry)>> {
    let trackers = trackers.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let mut trackers = lock_trackers(&trackers);
        let files = states
            .into_iter()
            .filter_map(|(node, subtask, s)| {
                let tracker = trackers
                    .entry(node.clone())
                    .or_insert_with(|| Tracker::new(node.clone(), subtask, config));
                tracker.encode(id, &s).map(|e| (node, e))
            })
            .collect::<Vec<_>>();
        drop(trackers);
        let _ = encoded.send(());
        files
    })
    .await
    .map_err(|e| Error::internal("encoding checkpoint state panicked").with_source(e))?;
    futures::future::try_join_all(
        encoded.into_iter().map(|(node, e)| async move {
            Ok::<_, Error>((node, store.write_encoded(id, e).await?))
        }),
    )
    .await
}

/// Whether an error only says a neighbouring task went away (not a root cause).
pub(crate) fn is_secondary(e: &Error) -> bool {
    e.kind() == ErrorKind::Cancelled
}
