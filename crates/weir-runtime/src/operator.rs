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
use weir_checkpoint::StateSnapshot;
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

/// Collects the batches a hook emits. The runtime passes them on after the hook returns.
#[derive(Debug, Default)]
pub struct Emitter {
    batches: Vec<RecordBatch>,
}

impl Emitter {
    /// Emits a batch downstream. Empty batches are dropped.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Takes what was emitted so far.
    pub fn take(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.batches)
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
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
    checkpointing: bool,
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
            checkpointing: false,
        }
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
/// `notify_checkpoint_complete` / `poll_pending` interleaved as messages arrive, then `finish` once
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

    /// Called for every data batch from any input, in arrival order per input. May emit any number
    /// of batches through `out` (which the runtime sends on after the hook returns), keep rows in
    /// state, or report bad rows through `ctx.bad_row`.
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()>;

    /// Called when the combined watermark of all inputs advances, before the runtime forwards it.
    /// May emit batches (for example, closed windows).
    async fn on_watermark(
        &mut self,
        _watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
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
