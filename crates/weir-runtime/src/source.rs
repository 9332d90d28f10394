//! The source contract: how the runtime pulls batches from an external system.

use crate::operator::OperatorContext;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::time::Duration;
use weir_checkpoint::{AbortReason, StateSnapshot};
use weir_types::{Barrier, CheckpointId, Result};

/// What one call of [`Source::next`] produced.
#[derive(Debug)]
pub enum SourceEvent {
    /// A batch of rows, in the source's output schema.
    Batch(RecordBatch),
    /// Nothing is available now (a continuous source waiting for new files); the runtime calls
    /// `next` again after at most this long, or sooner when it has control work to do.
    Idle(Duration),
    /// The source is exhausted (bounded input fully read). `next` is not called again.
    Finished,
}

/// One parallel instance of a source. Hooks are called in this order: `open`, then `next`
/// repeatedly, with `snapshot` / `notify_checkpoint_complete` between calls of `next` (never
/// concurrently), until `next` returns [`SourceEvent::Finished`] or the job is stopped, then `close`.
///
/// Each subtask reads its own share of the input (for example, the files whose index modulo the
/// parallelism equals the subtask index).
///
/// Event time: during `next` a source may call [`OperatorContext::emit_watermark`] (sent after
/// the batch that call returns) and [`OperatorContext::mark_idle`] (it expects no rows for a
/// while, so consumers stop waiting for its watermark; its next batch or watermark makes it
/// active again). A source reading several splits keeps one watermark per split and emits their
/// minimum over the splits that are not idle, for example with a [`WatermarkMerge`].
///
/// [`WatermarkMerge`]: crate::WatermarkMerge `next` must return within about 100 ms (return a smaller
/// batch or `Idle` rather than wait longer), so that barriers and stop requests are not delayed.
/// Bad rows go through [`OperatorContext::bad_row`]; a hook that returns an error fails the job.
#[async_trait]
pub trait Source: Send {
    /// The schema of every batch this source emits; fixed before the job starts.
    fn schema(&self) -> SchemaRef;

    /// Called once before `next`. Lists inputs, opens connections, sets progress totals through
    /// `ctx.metrics()`.
    async fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Produces the next batch, reports idleness, or says the input is exhausted.
    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent>;

    /// Called when the coordinator injects a barrier at this source, between two calls of `next`,
    /// and once more after the input ended, for the final checkpoint. Returns the source's position
    /// (what has been emitted so far), usually as union entries (one per file or split) so that
    /// any parallelism can resume from it; [`OperatorContext::restored_state`] hands it back in
    /// `open` after a restore, and the source must then resume exactly there.
    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        Ok(StateSnapshot::new())
    }

    /// Called when checkpoint `id` is complete everywhere (for example, to acknowledge messages).
    async fn notify_checkpoint_complete(
        &mut self,
        _id: CheckpointId,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when checkpoint `id` will not complete (see
    /// [`Operator::notify_checkpoint_aborted`](crate::Operator::notify_checkpoint_aborted)), between
    /// two calls of `next`.
    async fn notify_checkpoint_aborted(
        &mut self,
        _id: CheckpointId,
        _reason: &AbortReason,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        Ok(())
    }

    /// Called once at the end, also when the job was stopped early. Releases resources.
    async fn close(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
}
