//! The task loop: runs a chain of operators (optionally headed by a source) for one subtask, feeds
//! them the input gate's events, routes what they emit, forwards control messages and keeps metrics.

use crate::inflight::{self, InputKeys};
use crate::input::{InputEvent, InputGate};
use crate::metrics::OperatorMetrics;
use crate::operator::{Emitter, Operator, OperatorContext};
use crate::partition::EdgeRouter;
use crate::source::{Source, SourceEvent};
use arrow::record_batch::RecordBatch;
use futures::future::{BoxFuture, select_all};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_checkpoint::{StateSnapshot, TaskKey};
use weir_types::{
    Barrier, BarrierKind, CheckpointId, Error, ErrorKind, KeyGroupRange, Message, Result,
    dead_letter_batch,
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
}

/// States of the nodes of a task for one checkpoint: (node, subtask, state).
pub(crate) type NodeStates = Vec<(String, u32, StateSnapshot)>;

/// What a task tells the checkpoint driver.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// The task snapshotted checkpoint `id`: state per node of its chain.
    Ack {
        task: TaskKey,
        id: CheckpointId,
        states: Vec<(String, u32, StateSnapshot)>,
    },
    /// The task's input has ended and `finish` ran; it now waits for the final checkpoint.
    ReadyToFinish { task: TaskKey },
}

/// A task's link to the checkpoint driver.
pub(crate) struct CheckpointLink {
    pub(crate) key: TaskKey,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) events: mpsc::UnboundedSender<TaskEvent>,
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
    Input(InputGate),
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
}

/// Where an input task's in-flight data goes (see [`crate::inflight`]).
pub(crate) struct InFlightSetup {
    /// The pseudo node name.
    pub(crate) node: String,
    pub(crate) subtask: u32,
    pub(crate) inputs: Vec<InputKeys>,
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
            Head::Input(_) => self.run_input().await?,
        };
        self.await_final_checkpoint().await?;
        for m in &self.all_metrics {
            m.set_finished();
        }
        Ok(end)
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
        crate::fault::crash_point("snapshot", barrier.checkpoint_id);
        self.ack(barrier.checkpoint_id, states)
    }

    /// Sends the driver the states of checkpoint `id`.
    fn ack(&self, id: CheckpointId, states: NodeStates) -> Result<()> {
        if let Some(link) = &self.checkpoint {
            link.events
                .send(TaskEvent::Ack {
                    task: link.key.clone(),
                    id,
                    states,
                })
                .map_err(|_| coordinator_gone())?;
        }
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
        crate::fault::crash_point("snapshot", id);
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
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 0 {
            tracing::info!(node = %node, "replaying {rows} in-flight rows from the checkpoint");
        }
        for b in batches {
            self.push(0, b).await?;
        }
        Ok(())
    }

    /// Tells the source and every chained operator that checkpoint `id` is complete.
    async fn notify_complete(&mut self, id: CheckpointId) -> Result<()> {
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

    async fn on_control(&mut self, control: Control) -> Result<()> {
        match control {
            Control::InjectBarrier(b) => self.snapshot_all(&b, true).await,
            Control::SnapshotNow(b) => Err(Error::internal(format!(
                "asked to snapshot checkpoint {} directly while the input is still running",
                b.checkpoint_id
            ))),
            Control::Complete { id, .. } => self.notify_complete(id).await,
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
            self.send_dead_letters(dead).await?;
            self.emit_ready_pending().await?;
            match ev {
                SourceEvent::Batch(b) => {
                    let Head::Source { ctx, .. } = &self.head else {
                        unreachable!("source task")
                    };
                    ctx.metrics()
                        .add_out(b.num_rows(), b.get_array_memory_size());
                    self.push(0, b).await?;
                }
                SourceEvent::Idle(d) => {
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
                SourceEvent::Finished => break,
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
                    InputEvent::Data { batch, .. } => self.push(0, batch).await?,
                    InputEvent::Watermark(w) => {
                        for i in 0..self.chain.len() {
                            let c = &mut self.chain[i];
                            let mut out = Emitter::default();
                            let name = c.ctx.name().to_string();
                            c.ctx.metrics().set_watermark(w.0);
                            c.op.on_watermark(w, &mut c.ctx, &mut out)
                                .await
                                .map_err(|e| e.in_operator(name))?;
                            self.after_hook(i, &mut out).await?;
                        }
                        self.broadcast(&Message::Watermark(w), false).await?;
                    }
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
        let Head::Input(gate) = head else {
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

    /// Routes dead letters of operator `i` and passes its emitted batches to operator `i + 1`.
    async fn after_hook(&mut self, i: usize, out: &mut Emitter) -> Result<()> {
        let dead = self.chain[i].ctx.take_dead_letters();
        self.send_dead_letters(dead).await?;
        for b in out.take() {
            self.chain[i]
                .ctx
                .metrics()
                .add_out(b.num_rows(), b.get_array_memory_size());
            self.push(i + 1, b).await?;
        }
        Ok(())
    }

    /// Runs `batch` through the chain from operator `start` (depth first) and sends what comes out.
    async fn push(&mut self, start: usize, batch: RecordBatch) -> Result<()> {
        let mut stack = vec![(start, batch)];
        while let Some((i, b)) = stack.pop() {
            if i == self.chain.len() {
                self.send(b).await?;
                continue;
            }
            let c = &mut self.chain[i];
            c.ctx
                .metrics()
                .add_in(b.num_rows(), b.get_array_memory_size());
            let started = Instant::now();
            let mut out = Emitter::default();
            let name = c.ctx.name().to_string();
            c.op.process_batch(b, &mut c.ctx, &mut out)
                .await
                .map_err(|e| e.in_operator(name))?;
            c.ctx.metrics().add_busy(started.elapsed());
            let dead = c.ctx.take_dead_letters();
            let produced = out.take();
            for p in &produced {
                c.ctx
                    .metrics()
                    .add_out(p.num_rows(), p.get_array_memory_size());
            }
            self.send_dead_letters(dead).await?;
            for p in produced.into_iter().rev() {
                stack.push((i + 1, p));
            }
        }
        Ok(())
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

/// Whether an error only says a neighbouring task went away (not a root cause).
pub(crate) fn is_secondary(e: &Error) -> bool {
    e.kind() == ErrorKind::Cancelled
}
