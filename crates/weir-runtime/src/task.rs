//! The task loop: runs a chain of operators (optionally headed by a source) for one subtask, feeds
//! them the input gate's events, routes what they emit, forwards control messages and keeps metrics.

use crate::input::{InputEvent, InputGate};
use crate::metrics::OperatorMetrics;
use crate::operator::{Emitter, Operator, OperatorContext};
use crate::partition::EdgeRouter;
use crate::source::{Source, SourceEvent};
use arrow::record_batch::RecordBatch;
use futures::future::{BoxFuture, select_all};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use weir_types::{Error, ErrorKind, Message, Result, dead_letter_batch};

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
}

enum Woken {
    Input(Result<InputEvent>),
    Pending(usize, Result<()>, Emitter),
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
        for m in &self.all_metrics {
            m.set_finished();
        }
        Ok(end)
    }

    async fn run_source(&mut self) -> Result<TaskEnd> {
        let mut end = TaskEnd::Finished;
        loop {
            if self.stop.is_cancelled() {
                end = TaskEnd::Stopped;
                break;
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
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.stop.cancelled() => {}
                    }
                    self.add_idle(t.elapsed());
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
                Woken::Input(ev) => match ev? {
                    InputEvent::Data { batch, .. } => self.push(0, batch).await?,
                    InputEvent::Watermark(w) => {
                        for i in 0..self.chain.len() {
                            let c = &mut self.chain[i];
                            let mut out = Emitter::default();
                            let name = c.ctx.name().to_string();
                            c.op.on_watermark(w, &mut c.ctx, &mut out)
                                .await
                                .map_err(|e| e.in_operator(name))?;
                            self.after_hook(i, &mut out).await?;
                        }
                        self.broadcast(&Message::Watermark(w), false).await?;
                    }
                    InputEvent::Barrier(b) => {
                        for i in 0..self.chain.len() {
                            let c = &mut self.chain[i];
                            let mut out = Emitter::default();
                            let name = c.ctx.name().to_string();
                            c.op.snapshot(&b, &mut c.ctx, &mut out)
                                .await
                                .map_err(|e| e.in_operator(name))?;
                            self.after_hook(i, &mut out).await?;
                        }
                        self.broadcast(&Message::Barrier(b), true).await?;
                    }
                    InputEvent::End => break,
                },
            }
        }
        self.finish_chain().await?;
        Ok(TaskEnd::Finished)
    }

    /// Waits for input or for pending work of any chained operator, whichever comes first.
    async fn wait(&mut self) -> Woken {
        let Head::Input(gate) = &mut self.head else {
            unreachable!("input task")
        };
        let mut pending: Vec<BoxFuture<'_, (usize, Result<()>, Emitter)>> = Vec::new();
        for (i, c) in self.chain.iter_mut().enumerate() {
            if c.op.has_pending() {
                pending.push(Box::pin(async move {
                    let mut out = Emitter::default();
                    let r = c.op.poll_pending(&mut c.ctx, &mut out).await;
                    (i, r, out)
                }));
            }
        }
        if pending.is_empty() {
            return Woken::Input(gate.next().await);
        }
        tokio::select! {
            ev = gate.next() => Woken::Input(ev),
            ((i, r, out), _, _) = select_all(pending) => Woken::Pending(i, r, out),
        }
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
