//! The `infer` operator: admits rows, forms batches (size/time triggers, adaptive size, length
//! buckets), sends each batch as one asynchronous call to a [`ModelService`], and emits results
//! in input order.
//!
//! Every call goes to a service: a step with `service:` calls the job's service of that name; a
//! step with `model:` makes a pool of its own ([`Pool`] with [`PoolConfig::inline`]: `instances`
//! threads, each holding up to `max_in_flight` batches), the same pool a declared service runs.
//! At most `max_in_flight` calls per instance of its own (or `max_in_flight` calls to a
//! declared service) are in flight; their futures are polled by the operator.
//!
//! The parts: `rows.rs` (queued rows, formed batches, requests: the work as data), `call.rs`
//! (gathering a batch's rows into model inputs, the call, scattering the answer into columns),
//! `answers.rs` (handling answers and failures, emitting finished input batches) and
//! `checkpoint.rs` (the state at a barrier, the results log, restore).

mod answers;
mod call;
mod checkpoint;
mod rows;

pub use rows::{FormedBatch, InFlight, Request, RowRef};

use crate::backend::BackendFactory;
use crate::batching::{AdaptiveController, Clock, SystemClock};
use crate::pool::{Pool, PoolConfig};
use crate::results_log::{LoadedLog, LogWriter, row_identity};
use crate::service::ModelService;
use crate::spec::{InferPlan, InferSpec};
use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use call::Bindings;
use rows::{Queued, Triggers};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use weir_runtime::{Emitter, Operator, OperatorContext, StateSnapshot};
use weir_types::{Barrier, CheckpointId, Error, Result};

/// Counters of the model and the results log (shared, so a test or a report can read them while
/// the operator runs inside the runtime).
#[derive(Debug, Default)]
pub struct InferCounters {
    rows_from_log: AtomicU64,
    reinferred_rows: AtomicU64,
    model_rows: AtomicU64,
    largest_batch: AtomicU64,
}

impl InferCounters {
    /// Rows answered from the results log instead of the model (after a restore).
    pub fn rows_from_log(&self) -> u64 {
        self.rows_from_log.load(Ordering::Relaxed)
    }

    /// Rows run through the model although the results log loaded at restore already held their
    /// result (0 when the log works).
    pub fn reinferred_rows(&self) -> u64 {
        self.reinferred_rows.load(Ordering::Relaxed)
    }

    /// Rows the model answered.
    pub fn model_rows(&self) -> u64 {
        self.model_rows.load(Ordering::Relaxed)
    }

    /// Rows of the largest batch the model ran.
    pub fn largest_batch(&self) -> u64 {
        self.largest_batch.load(Ordering::Relaxed)
    }
}

/// An input batch waiting for its rows' results.
#[derive(Debug)]
struct Entry {
    batch: RecordBatch,
    bad: Vec<bool>,
    results: Vec<Option<(u64, u32)>>,
    waiting: usize,
    /// Row identities (for the results log; empty when it is off).
    keys: Vec<u64>,
}

/// Outputs of an answered request, kept until the rows using them are emitted.
#[derive(Debug)]
struct Done {
    outputs: Vec<ArrayRef>,
    uses: usize,
}

/// The running `infer` operator. Made by [`InferSpec::create`].
pub struct InferOperator {
    spec: InferSpec,
    plan: InferPlan,
    /// What every batch is sent to: the step's own pool, or the job's service.
    service: Arc<dyn ModelService>,
    /// Whether `service` is the step's own pool (made by the operator, stopped with it).
    own_pool: bool,
    /// Requests in flight at most.
    lane: usize,
    /// Whether [`ModelService::attach`] succeeded and is not yet matched by a detach.
    attached: bool,
    bindings: Arc<Bindings>,
    controller: AdaptiveController,
    clock: Arc<dyn Clock>,
    state: InFlight,
    entries: VecDeque<(u64, Entry)>,
    next_input: u64,
    done: HashMap<u64, Done>,
    flushing: bool,
    model: String,
    /// The results log (when on).
    log: Option<LogWriter>,
    /// The results log's schema (when on).
    log_schema: Option<arrow::datatypes::SchemaRef>,
    /// Whether `finish` ran.
    finished: bool,
    /// Results loaded from the log on restore.
    loaded: LoadedLog,
    counters: Arc<InferCounters>,
}

impl std::fmt::Debug for InferOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferOperator")
            .field("model", &self.model)
            .field("state", &self.state)
            .finish()
    }
}

impl InferOperator {
    /// The operator running `spec.instances` instances of its own, with backends from `factory`,
    /// in a pool that starts when the operator opens and stops when it finishes.
    pub(crate) fn new(spec: InferSpec, plan: InferPlan, factory: BackendFactory) -> Result<Self> {
        let config = PoolConfig::inline(&spec.model, spec.instances, spec.max_in_flight);
        let pool: Arc<dyn ModelService> = Arc::new(Pool::new(config, factory)?);
        let lane = spec.instances.max(1) * spec.max_in_flight.max(1);
        Ok(Self::build(spec, plan, pool, true, lane))
    }

    /// The operator calling `service` instead of running instances of its own; batches are no
    /// larger than the service accepts.
    pub fn with_service(
        mut spec: InferSpec,
        plan: InferPlan,
        service: Arc<dyn ModelService>,
    ) -> Self {
        if let Some(max) = service.max_batch() {
            spec.batch.max_size = spec.batch.max_size.min(max.max(1));
        }
        let lane = spec.max_in_flight.max(1);
        Self::build(spec, plan, service, false, lane)
    }

    fn build(
        spec: InferSpec,
        plan: InferPlan,
        service: Arc<dyn ModelService>,
        own_pool: bool,
        lane: usize,
    ) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let controller = AdaptiveController::new(
            spec.batch.max_size,
            spec.batch.latency_budget,
            spec.batch.adaptive,
            clock.clone(),
        );
        let model = plan.info.file_name();
        let bindings = Arc::new(Bindings {
            inputs: plan.inputs.clone(),
            outputs: plan.outputs.clone(),
            model: model.clone(),
        });
        InferOperator {
            spec,
            plan,
            service,
            own_pool,
            lane,
            attached: false,
            bindings,
            controller,
            clock,
            state: InFlight::default(),
            entries: VecDeque::new(),
            next_input: 0,
            done: HashMap::new(),
            flushing: false,
            model,
            log: None,
            log_schema: None,
            finished: false,
            loaded: LoadedLog::default(),
            counters: Arc::default(),
        }
    }

    /// The model and results-log counters (shared; they keep counting while the operator runs).
    pub fn counters(&self) -> Arc<InferCounters> {
        self.counters.clone()
    }

    /// The output schema.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.plan.schema.clone()
    }

    /// Queued rows, formed batches and requests in flight.
    pub fn in_flight(&self) -> &InFlight {
        &self.state
    }

    /// Attaches to the service (its instances start loading; calls wait in its queue until one
    /// is ready, so the loads overlap with the upstream work on the first batch).
    fn attach(&mut self) -> Result<()> {
        if !self.attached {
            self.service.attach()?;
            self.attached = true;
        }
        Ok(())
    }

    fn detach(&mut self) {
        if self.attached {
            self.service.detach();
            self.attached = false;
        }
    }

    /// Checks and queues the rows of a new input batch.
    fn admit(&mut self, batch: RecordBatch, ctx: &mut OperatorContext) -> Result<()> {
        let seq = self.next_input;
        self.next_input += 1;
        let n = batch.num_rows();
        let mut entry = Entry {
            bad: vec![false; n],
            results: vec![None; n],
            waiting: 0,
            keys: Vec::new(),
            batch,
        };
        let now = self.clock.now();
        let columns: Vec<ArrayRef> = self
            .plan
            .inputs
            .iter()
            .map(|b| entry.batch.column(b.index).clone())
            .collect();
        let logging = self.log.is_some();
        let mut hits: Vec<(usize, u64)> = Vec::new();
        for row in 0..n {
            let mut len = 0;
            let mut problem = None;
            for (b, col) in self.plan.inputs.iter().zip(&columns) {
                match b.check_row(col, row, &self.model) {
                    Ok(l) => len = len.max(l),
                    Err(m) => {
                        problem = Some((b.column.clone(), m));
                        break;
                    }
                }
            }
            if let Some((column, m)) = problem {
                entry.bad[row] = true;
                ctx.bad_row(
                    Error::input(m),
                    Some(column),
                    Some(format!("row {row}")),
                    None,
                )?;
                continue;
            }
            if logging {
                let key = row_identity(&self.plan.inputs, &columns, row)?;
                if entry.keys.is_empty() {
                    entry.keys = vec![0; n];
                }
                entry.keys[row] = key;
                if self.loaded.contains(key) {
                    hits.push((row, key));
                    continue;
                }
            }
            entry.waiting += 1;
            self.state.queue.push_back(Queued {
                row: RowRef {
                    input: seq,
                    row: row as u32,
                },
                len,
                at: now,
            });
        }
        if !hits.is_empty() {
            // Answered from the results log, as a request of its own that needs no model.
            let keys: Vec<u64> = hits.iter().map(|(_, k)| *k).collect();
            let outputs = self.loaded.outputs(&keys, self.plan.outputs.len())?;
            let id = self.state.next_id();
            for (k, (row, _)) in hits.iter().enumerate() {
                entry.results[*row] = Some((id, k as u32));
            }
            self.done.insert(
                id,
                Done {
                    outputs,
                    uses: hits.len(),
                },
            );
            self.counters
                .rows_from_log
                .fetch_add(hits.len() as u64, Ordering::Relaxed);
        }
        self.entries.push_back((seq, entry));
        Ok(())
    }

    /// Forms batches from queued rows when a trigger says so; returns whether any was formed.
    fn form(&mut self) -> bool {
        let triggers = Triggers {
            target: self.controller.target(),
            max_size: self.controller.max_size(),
            max_wait: self.spec.batch.max_wait,
            sort_by_length: self.plan.sort_by_length,
            flushing: self.flushing,
            now: self.clock.now(),
        };
        self.state.form(&triggers)
    }

    fn rows_held(&self) -> usize {
        self.state.queue.len()
    }
}

#[async_trait]
impl Operator for InferOperator {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.restore(ctx).await?;
        self.attach()?;
        if self.own_pool {
            ctx.metrics().set_model_instances(self.spec.instances);
        }
        self.pump()
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        self.attach()?;
        self.admit(batch, ctx)?;
        self.drain_ready(ctx)?;
        self.pump()?;
        // Backpressure: hold at most a few rounds of batches beyond what is in flight.
        let limit = 4 * self.controller.max_size() * self.lane;
        while self.rows_held() > limit {
            self.wait_one(ctx).await?;
            self.pump()?;
            self.emit_ready(out)?;
        }
        self.emit_ready(out)
    }

    fn has_pending(&self) -> bool {
        self.next_emittable().is_some()
            || !self.state.requests.is_empty()
            || !self.state.queue.is_empty()
            || !self.state.formed.is_empty()
            || self.log.as_ref().is_some_and(LogWriter::busy)
    }

    async fn poll_pending(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        if !self.has_pending() {
            return std::future::pending().await;
        }
        if self.next_emittable().is_some() {
            return self.emit_ready(out);
        }
        self.wait_one(ctx).await?;
        self.drain_ready(ctx)?;
        self.pump()?;
        self.emit_ready(out)
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        self.attach()?;
        self.flushing = true;
        self.finished = true;
        loop {
            self.drain_ready(ctx)?;
            self.pump()?;
            self.emit_ready(out)?;
            if !self.has_pending() {
                break;
            }
            self.wait_one(ctx).await?;
        }
        self.emit_ready(out)?;
        // The step's own pool stops (its instance threads end after their current run); a
        // per-job service stops when its last caller detaches.
        self.detach();
        if self.log.is_some() {
            tracing::info!(
                model = %self.model,
                node = ctx.name(),
                subtask = ctx.info().subtask,
                rows_from_log = self.counters.rows_from_log(),
                reinferred_rows = self.counters.reinferred_rows(),
                model_rows = self.counters.model_rows(),
                "inference results log"
            );
        }
        Ok(())
    }

    /// Stores every row admitted and not yet emitted (queued, batched, dispatched or answered but
    /// waiting for an earlier row) without waiting for them, with the results already computed
    /// for them, and starts a new epoch of the results log.
    async fn snapshot(
        &mut self,
        barrier: &Barrier,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<StateSnapshot> {
        self.take_snapshot(barrier, ctx)
    }

    /// Deletes the log segments a restore from `id` (or later) no longer needs.
    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        let finished = self.finished;
        if let Some(log) = self.log.as_mut() {
            log.delete_before(id, finished, ctx).await?;
        }
        Ok(())
    }
}

impl Drop for InferOperator {
    fn drop(&mut self) {
        // Detaching never blocks: the pool's instance threads end after their current run and
        // are not joined here, to never block an executor thread.
        self.detach();
    }
}
