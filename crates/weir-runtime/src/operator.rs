//! The operator contract: the hooks the runtime calls on a running operator, and what each may do.
//!
//! An operator is what a plan node *does* at run time. The runtime owns the loop; the operator only
//! reacts to the hooks below. Operators never align barriers, never forward control messages
//! themselves, never spawn threads or detached tasks, and never block the thread they are called on
//! for long (IO goes through async calls; heavy CPU work goes through [`OperatorContext::spawn_cpu`]).

use crate::metrics::OperatorMetrics;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::sync::Arc;
use weir_checkpoint::{AbortReason, LogStore, StateSnapshot};
use weir_types::{Barrier, CheckpointId, DeadLetter, Error, Result, Watermark};

/// What to do with a row an operator cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Fail the job with an error naming the operator, input and row (the default).
    #[default]
    Fail,
    /// Write the row to the dead-letter output and go on.
    DeadLetter,
}

/// Where an operator or source instance sits in the physical graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The plan node's name (unique in the job).
    pub node: String,
    /// Index of this parallel instance, `0..parallelism`.
    pub subtask: u32,
    /// Number of parallel instances of the node.
    pub parallelism: u32,
    /// Number of key groups (the upper bound on parallelism for keyed state).
    pub max_parallelism: u32,
}

/// One thing an operator emitted, in order.
#[derive(Debug, Clone)]
pub enum Emitted {
    /// A batch of rows.
    Batch(RecordBatch),
    /// Event-time progress: no row emitted after it has an event time below it.
    Watermark(Watermark),
}

/// Collects what a hook emits: batches and watermarks, in order. The runtime passes them on after
/// the hook returns, in the same order.
#[derive(Debug, Default)]
pub struct Emitter {
    items: Vec<Emitted>,
}

impl Emitter {
    /// Emits a batch downstream. Empty batches are dropped.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.items.push(Emitted::Batch(batch));
        }
    }

    /// Emits a watermark downstream, after the batches emitted before it. The runtime drops a
    /// watermark that does not advance past the last one this operator emitted.
    pub fn emit_watermark(&mut self, watermark: Watermark) {
        self.items.push(Emitted::Watermark(watermark));
    }

    /// Takes the batches emitted so far (and drops the watermarks): for tests of one operator.
    pub fn take(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.items)
            .into_iter()
            .filter_map(|i| match i {
                Emitted::Batch(b) => Some(b),
                Emitted::Watermark(_) => None,
            })
            .collect()
    }

    /// Takes everything emitted so far, in order.
    pub fn take_all(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.items)
    }

    /// Whether no batch was emitted (watermarks do not count).
    pub fn is_empty(&self) -> bool {
        !self.items.iter().any(|i| matches!(i, Emitted::Batch(_)))
    }
}

/// What a running operator (or source) can ask of the runtime.
#[derive(Debug)]
pub struct OperatorContext {
    info: TaskInfo,
    policy: ErrorPolicy,
    metrics: Arc<OperatorMetrics>,
    dead_letters: Vec<DeadLetter>,
    io: tokio::runtime::Handle,
    restored: Option<StateSnapshot>,
    restored_from: Option<CheckpointId>,
    checkpointing: bool,
    log_store: Option<LogStore>,
    /// The input the batch being processed came from, and the number of inputs.
    input: usize,
    inputs: usize,
    /// (Sources) the watermark emitted during the current call, and whether it went idle.
    source_watermark: Option<Watermark>,
    source_idle: bool,
}

impl OperatorContext {
    /// A context for `info`; the runtime makes these, tests may too.
    pub fn new(
        info: TaskInfo,
        policy: ErrorPolicy,
        metrics: Arc<OperatorMetrics>,
        io: tokio::runtime::Handle,
    ) -> Self {
        OperatorContext {
            info,
            policy,
            metrics,
            dead_letters: Vec::new(),
            io,
            restored: None,
            restored_from: None,
            checkpointing: false,
            log_store: None,
            input: 0,
            inputs: 1,
            source_watermark: None,
            source_idle: false,
        }
    }

    /// Sets the number of logical inputs of this instance's node (set by the runtime; 1 for a
    /// chained operator and by default).
    pub fn with_inputs(mut self, inputs: usize) -> Self {
        self.inputs = inputs.max(1);
        self
    }

    /// Which input the batch now in [`Operator::process_batch`] came from: the index of the edge,
    /// in the order the node's input edges were added to the [`JobGraph`](crate::JobGraph)
    /// (`connect(a, op)` then `connect(b, op)`: rows of `a` are input 0, rows of `b` input 1).
    /// Always 0 for an operator chained behind another one (it has one input) and outside
    /// `process_batch`. Rows replayed from an unaligned checkpoint keep the input they came on.
    pub fn input(&self) -> usize {
        self.input
    }

    /// The number of logical inputs of this node (1 for a chained operator).
    pub fn input_count(&self) -> usize {
        self.inputs
    }

    /// Sets the input of the next batch (the runtime calls this before `process_batch`).
    pub fn set_input(&mut self, input: usize) {
        self.input = input;
    }

    /// (Sources only) Emits event-time progress: no row this source subtask emits later has an
    /// event time below `watermark`. Called during [`Source::next`](crate::Source::next); the
    /// runtime sends the watermark after the batch that call returns, through the chained
    /// operators' [`Operator::on_watermark`] and on to every consumer. The largest of several calls
    /// counts; a watermark that does not advance past the last one sent is dropped. Sending one
    /// makes an idle source active again. Operators emit watermarks through
    /// [`Emitter::emit_watermark`] instead.
    pub fn emit_watermark(&mut self, watermark: Watermark) {
        self.source_watermark = Some(
            self.source_watermark
                .map_or(watermark, |w| w.max(watermark)),
        );
        self.source_idle = false;
    }

    /// (Sources only) Marks this source subtask idle: it expects no rows for a while (all its
    /// splits are idle, or it has none), so consumers stop waiting for its watermark (see
    /// [`WatermarkMerge`](crate::WatermarkMerge)). The runtime sends the status after the batch
    /// the current call of `next` returns. The next batch or watermark makes it active again.
    pub fn mark_idle(&mut self) {
        self.source_idle = true;
    }

    /// Takes the watermark and idleness requested during the last source call (the runtime).
    pub(crate) fn take_source_progress(&mut self) -> (Option<Watermark>, bool) {
        (
            self.source_watermark.take(),
            std::mem::take(&mut self.source_idle),
        )
    }

    /// Hands this instance the state it restores from (set by the runtime before `open`).
    pub fn with_restored_state(
        mut self,
        state: Option<StateSnapshot>,
        checkpointing: bool,
    ) -> Self {
        self.restored = state;
        self.checkpointing = checkpointing;
        self
    }

    /// Hands this instance the state it restores from checkpoint `from` (the runtime calls this
    /// before `open`, after the task read its share from the checkpoint store).
    pub fn set_restored_state(&mut self, state: StateSnapshot, from: CheckpointId) {
        self.restored = Some(state);
        self.restored_from = Some(from);
    }

    /// Gives this instance a store for objects it keeps across checkpoints (the runtime does,
    /// when the job checkpoints).
    pub fn with_log_store(mut self, store: Option<LogStore>) -> Self {
        self.log_store = store;
        self
    }

    /// The checkpoint this instance was restored from, if any.
    pub fn restored_from(&self) -> Option<CheckpointId> {
        self.restored_from
    }

    /// When the job checkpoints: a store in the job's checkpoint store (local or S3) for objects
    /// this node keeps across checkpoints, such as a log of results it can reuse after a restore
    /// on any machine (see [`LogStore`]). Shared by the node's subtasks; use names that say
    /// which subtask wrote them. Write through [`OperatorContext::start_io`] so the task goes on
    /// meanwhile.
    pub fn log_store(&self) -> Option<&LogStore> {
        self.log_store.as_ref()
    }

    /// The state this instance restores from, if the job was resumed from a checkpoint: its own
    /// keyed state (the key groups it owns now) and every union entry of every old instance of the
    /// node. Read it in `open`.
    pub fn restored_state(&self) -> Option<&StateSnapshot> {
        self.restored.as_ref()
    }

    /// Whether the job takes checkpoints. Sinks then publish output only in
    /// `notify_checkpoint_complete` (also at the end: after `finish`, a final checkpoint is taken
    /// and completed), never in `finish` itself.
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// A context for unit tests of a single operator, on the current tokio runtime.
    pub fn for_test(node: &str, policy: ErrorPolicy) -> Self {
        let info = TaskInfo {
            node: node.into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        Self::new(
            info,
            policy,
            Arc::new(OperatorMetrics::default()),
            tokio::runtime::Handle::current(),
        )
    }

    /// Where this instance sits.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// The node's name, for error messages.
    pub fn name(&self) -> &str {
        &self.info.node
    }

    /// The error policy in force.
    pub fn error_policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// This instance's metrics (for sources: progress and totals).
    pub fn metrics(&self) -> &Arc<OperatorMetrics> {
        &self.metrics
    }

    /// Reports a row that cannot be processed. Under [`ErrorPolicy::Fail`] this returns the error
    /// (tagged with this operator), which the hook must return; under [`ErrorPolicy::DeadLetter`] the
    /// row goes to the dead-letter output and `Ok(())` says the hook may go on with the other rows.
    pub fn bad_row(
        &mut self,
        error: Error,
        input: Option<String>,
        position: Option<String>,
        raw: Option<Vec<u8>>,
    ) -> Result<()> {
        let mut error = error.in_operator(self.info.node.clone());
        if let Some(p) = &position {
            let at = match &input {
                Some(i) => format!("{i}, {p}"),
                None => p.clone(),
            };
            error = error.at(at);
        } else if let Some(i) = &input {
            error = error.at(i.clone());
        }
        self.metrics.add_error();
        match self.policy {
            ErrorPolicy::Fail => Err(error),
            ErrorPolicy::DeadLetter => {
                self.metrics.add_dead_letter();
                self.metrics.add_dead_letter_reason(error.message());
                self.dead_letters.push(DeadLetter {
                    operator: self.info.node.clone(),
                    input,
                    position,
                    error: error.report(),
                    raw,
                });
                Ok(())
            }
        }
    }

    /// Takes the dead letters recorded since the last call (the runtime routes them).
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Handle of the runtime for IO (object stores, network). Futures doing IO may be spawned on it.
    pub fn io(&self) -> &tokio::runtime::Handle {
        &self.io
    }

    /// Starts `io` (object-store calls, network) on the io executor without waiting for it, so
    /// the task goes on meanwhile; await the returned [`IoTask`] for its result. The IO is owned
    /// by the handle: dropping it cancels the IO.
    pub fn start_io<T, F>(&self, io: F) -> IoTask<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        IoTask {
            handle: self.io.spawn(io),
            node: self.info.node.clone(),
        }
    }

    /// Starts CPU-heavy `work` on a blocking thread without waiting for it, so that it overlaps
    /// with what the task does next (read-ahead while the task processes the previous chunks).
    /// [`CpuTask::join`] awaits the result; dropping the handle lets `work` run to its end and
    /// discards the result.
    pub fn start_cpu<T, F>(&self, work: F) -> CpuTask<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        CpuTask {
            handle: tokio::task::spawn_blocking(work),
            node: self.info.node.clone(),
        }
    }

    /// Runs CPU-heavy `work` on a blocking thread, so the task's executor thread stays free, and
    /// awaits its result. Panics inside `work` become an internal error naming this operator.
    pub async fn spawn_cpu<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(work).await.map_err(|e| {
            Error::internal("cpu work panicked")
                .with_source(e)
                .in_operator(self.info.node.clone())
        })
    }
}

/// IO started by [`OperatorContext::start_io`]: a future that resolves to the IO's result.
/// Dropping it cancels the IO (nothing runs on unowned).
#[derive(Debug)]
pub struct IoTask<T> {
    handle: tokio::task::JoinHandle<T>,
    node: String,
}

impl<T> IoTask<T> {
    /// Whether the IO has ended (awaiting it then does not wait).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl<T> std::future::Future for IoTask<T> {
    type Output = Result<T>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T>> {
        std::pin::Pin::new(&mut self.handle).poll(cx).map(|r| {
            r.map_err(|e| {
                Error::internal("io work panicked or was cancelled")
                    .with_source(e)
                    .in_operator(self.node.clone())
            })
        })
    }
}

impl<T> Drop for IoTask<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// CPU work started by [`OperatorContext::start_cpu`] and not yet awaited.
#[derive(Debug)]
pub struct CpuTask<T> {
    handle: tokio::task::JoinHandle<T>,
    node: String,
}

impl<T> CpuTask<T> {
    /// Waits for the work's result; a panic inside it becomes an internal error naming the
    /// operator that started it.
    pub async fn join(self) -> Result<T> {
        self.handle.await.map_err(|e| {
            Error::internal("cpu work panicked")
                .with_source(e)
                .in_operator(self.node)
        })
    }
}

/// A running operator: the hooks the runtime calls, in this order per instance:
/// `open`, then any number of `process_batch` / `on_watermark` / `snapshot` /
/// `notify_checkpoint_complete` / `notify_checkpoint_aborted` / `poll_pending` interleaved as messages arrive, then `finish` once
/// when every input has ended (not on failure or cancellation).
///
/// All hooks run on the task's executor thread: they may `.await` IO but must not block it for long;
/// CPU-heavy work goes through [`OperatorContext::spawn_cpu`]. A hook that returns an error fails the
/// job; the error is tagged with the operator's name. Row-level problems go through
/// [`OperatorContext::bad_row`] instead, which honours the job's `on_error` policy.
///
/// # Example
///
/// ```
/// use arrow::record_batch::RecordBatch;
/// use async_trait::async_trait;
/// use weir_runtime::{Emitter, Operator, OperatorContext};
///
/// /// Passes every batch on and counts rows.
/// struct CountRows { rows: usize }
///
/// #[async_trait]
/// impl Operator for CountRows {
///     async fn process_batch(
///         &mut self,
///         batch: RecordBatch,
///         _ctx: &mut OperatorContext,
///         out: &mut Emitter,
///     ) -> weir_types::Result<()> {
///         self.rows += batch.num_rows();
///         out.emit(batch);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Operator: Send {
    /// Called once before any other hook. May load resources (files, models) and restore state.
    /// Emits nothing.
    async fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Called for every data batch from any input, in arrival order per input;
    /// [`OperatorContext::input`] says which input (for operators with several, such as joins).
    /// May emit any number of batches through `out` (which the runtime sends on after the hook
    /// returns), keep rows in state, or report bad rows through `ctx.bad_row`.
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()>;

    /// Called when the combined watermark of the operator's inputs advances (the minimum over its
    /// live, active inputs; for a chained operator, what the operator before it emitted). May emit
    /// batches (for example, closed windows) and must emit the watermark it lets through with
    /// [`Emitter::emit_watermark`], after the rows it holds that must precede it. The default
    /// forwards `watermark` at once, which is right for every operator that emits each row while
    /// processing it. An operator that holds rows back (asynchronous calls, buffers) forwards
    /// `watermark` only once the rows that arrived before it are emitted, from a later hook.
    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        out.emit_watermark(watermark);
        Ok(())
    }

    /// Called when a checkpoint barrier has been aligned across all inputs, before the runtime
    /// forwards it. Returns the operator's state (empty when stateless): keyed entries per key group
    /// and union entries (see [`StateSnapshot`]). May emit batches that must precede the barrier (for
    /// example, a flushed partial batch). A sink stages (pre-commits) its output here.
    ///
    /// Also called once after `finish` for the job's final checkpoint (when the job checkpoints);
    /// it must not emit then.
    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<StateSnapshot> {
        Ok(StateSnapshot::new())
    }

    /// Called when checkpoint `id` is complete everywhere (which implies every earlier checkpoint
    /// is). A sink publishes the output it staged up to `id` here; this must be idempotent (it is
    /// replayed after a crash, from the restored state). Emits nothing. Called after `finish` too,
    /// for the final checkpoint.
    async fn notify_checkpoint_complete(
        &mut self,
        _id: CheckpointId,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when checkpoint `id` will not complete: it expired, a task or the store declined it
    /// (a snapshot or a state write failed), or a newer checkpoint completed first and subsumes it
    /// (`reason` says which). May come before this task snapshotted `id` (its barrier may still
    /// be on the way; the task then still snapshots it), and for a checkpoint the task never
    /// snapshots. Emits nothing.
    ///
    /// The job goes on, and nothing staged for `id` may be lost: the rows a sink staged for `id`
    /// are still part of the output and are published when a later checkpoint completes
    /// (`notify_checkpoint_complete(n)` publishes everything staged up to `n`; a subsumed
    /// checkpoint's rows by the one that subsumed it, notified right after). A transactional sink
    /// may abort here what it opened for `id` only when it writes those rows again before the
    /// next checkpoint.
    async fn notify_checkpoint_aborted(
        &mut self,
        _id: CheckpointId,
        _reason: &AbortReason,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether the operator has asynchronous work in flight whose completion should wake the task
    /// even when no input arrives (for example, inference requests). Checked before each wait.
    fn has_pending(&self) -> bool {
        false
    }

    /// Called (when `has_pending` is true) concurrently with waiting for input; resolves when some
    /// pending work has completed and emits its results. Must be cancel-safe: the runtime drops the
    /// future when input arrives first, and nothing may be lost then.
    async fn poll_pending(&mut self, _ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        std::future::pending().await
    }

    /// Called once when every input has ended. Must emit everything still held (partial batches,
    /// pending requests, open windows) and close resources; a sink flushes and publishes its files.
    async fn finish(&mut self, _ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        Ok(())
    }
}

/// An operator that passes every batch on unchanged but for its schema: the same columns,
/// relabelled with `schema` (other names, nullability or metadata). A batch whose schema already
/// equals it is passed on as it is. Used by `rename`, `union` and steps fused into the one before
/// them.
#[derive(Debug)]
pub struct Relabel {
    schema: arrow::datatypes::SchemaRef,
}

impl Relabel {
    /// Relabels batches with `schema`, which must have the batches' column count and types.
    pub fn new(schema: arrow::datatypes::SchemaRef) -> Self {
        Relabel { schema }
    }
}

#[async_trait]
impl Operator for Relabel {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if Arc::ptr_eq(&batch.schema(), &self.schema) || batch.schema() == self.schema {
            out.emit(batch);
            return Ok(());
        }
        let options =
            arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        out.emit(RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &options,
        )?);
        Ok(())
    }
}
