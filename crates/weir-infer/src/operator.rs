//! The `infer` operator: admits rows, forms batches (size/time triggers, adaptive size, length
//! buckets), sends them to instance threads, and emits results in input order.
//!
//! Requests in flight are plain data ([`InFlight`]: request id + input rows), so they can be
//! checkpointed and re-issued; only the reply futures are not.
//!
//! With `service:` the operator starts no instances of its own: every formed batch becomes one
//! asynchronous call to a [`ModelService`] (at most `max_in_flight` at a time), whose future the
//! operator polls like an instance's reply.

use crate::backend::{BackendFactory, HostTensor};
use crate::batching::{AdaptiveController, Clock, SystemClock, batch_ready, bucket_by_length};
use crate::results_log::{LoadedLog, LogWriter, ipc, log_schema, model_identity, row_identity};
use crate::service::{CallOptions, ModelService};
use crate::spec::{InferPlan, InferSpec};
use crate::tensor::{InputBinding, OutputBinding};
use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use weir_runtime::{Emitter, Operator, OperatorContext, StateSnapshot};
use weir_types::{Barrier, CheckpointId, Error, Result};

/// The keys of the operator's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum StateKey {
    /// The rows subtask `subtask` held at a checkpoint (admitted, not yet emitted), as Arrow IPC.
    InFlight { subtask: u32 },
    /// The results already computed for those rows, as Arrow IPC of the results log's schema.
    Computed { subtask: u32 },
}

/// Counters of the results log (shared, so a test or a report can read them while the operator
/// runs inside the runtime).
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

/// A row of an input batch: the batch's sequence number and the row's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowRef {
    /// Sequence number of the input batch (in arrival order).
    pub input: u64,
    /// Row index in that batch.
    pub row: u32,
}

/// How many queued rows the next batch takes: `target` (or all there are), except that a batch
/// ends where the head row's input batch ends when that leaves it at least half the target. Once
/// model batches start at input-batch boundaries, a model batch of consecutive rows of one input
/// column is passed to the model as a slice of it, without a copy; without this, one batch cut
/// off-boundary (while the controller probes sizes) would make every later batch straddle two
/// input batches and be copied.
fn aligned_take(q: &VecDeque<Queued>, target: usize) -> usize {
    let take = q.len().min(target);
    let Some(head) = q.front() else {
        return take;
    };
    let run = q
        .iter()
        .take(take)
        .take_while(|r| r.row.input == head.row.input)
        .count();
    if run < take && run * 2 >= target {
        run
    } else {
        take
    }
}

/// A batch formed but not yet sent to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormedBatch {
    /// Its rows, in model batch order.
    pub rows: Vec<RowRef>,
    /// Whether this is a row-by-row retry after a failed batch (a failure makes a bad row).
    pub isolate: bool,
}

/// A request sent to an instance and not yet answered.
pub struct Request {
    /// Request id (unique in this operator instance).
    pub id: u64,
    /// The batch's rows.
    pub batch: FormedBatch,
    /// Instance it was sent to.
    pub instance: usize,
    /// When it was sent.
    pub sent: Instant,
    reply: BoxFuture<'static, Result<Reply>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("batch", &self.batch)
            .field("instance", &self.instance)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// A row admitted and waiting for a batch.
#[derive(Debug, Clone, Copy)]
struct Queued {
    row: RowRef,
    len: usize,
    at: Instant,
}

/// Everything between input and output, as data: queued rows, formed batches and requests in
/// flight (what a checkpoint stores and a restore re-issues).
#[derive(Debug, Default)]
pub struct InFlight {
    next_request: u64,
    queue: VecDeque<Queued>,
    formed: VecDeque<FormedBatch>,
    requests: BTreeMap<u64, Request>,
}

impl InFlight {
    /// Rows admitted and not yet answered nor failed.
    pub fn rows_pending(&self) -> usize {
        self.queue.len()
            + self.formed.iter().map(|b| b.rows.len()).sum::<usize>()
            + self
                .requests
                .values()
                .map(|r| r.batch.rows.len())
                .sum::<usize>()
    }

    /// The requests in flight: (request id, its rows).
    pub fn requests(&self) -> Vec<(u64, Vec<RowRef>)> {
        self.requests
            .values()
            .map(|r| (r.id, r.batch.rows.clone()))
            .collect()
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

/// What an instance answers.
#[derive(Debug)]
struct Reply {
    outputs: Vec<ArrayRef>,
    run: Duration,
}

/// A request as sent to an instance thread.
struct Job {
    inputs: Vec<Vec<(ArrayRef, usize)>>,
    reply: oneshot::Sender<Result<Reply>>,
}

/// What an instance thread needs besides its backend.
struct Bindings {
    inputs: Vec<InputBinding>,
    outputs: Vec<OutputBinding>,
    model: String,
}

/// One inference instance: a dedicated OS thread owning its backend.
struct Instance {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
}

/// A batch's model inputs, gathered from its rows: (inputs, rows, ragged lengths per symbol).
type Gathered = (Vec<(String, HostTensor)>, usize, Vec<(String, Vec<usize>)>);

/// Stacks the rows of `job_inputs` (per model input: (column, row)) into model inputs.
fn gather(b: &Bindings, job_inputs: &[Vec<(ArrayRef, usize)>]) -> Result<Gathered> {
    let rows = job_inputs.first().map(|r| r.len()).unwrap_or(0);
    let mut inputs = Vec::with_capacity(b.inputs.len());
    let mut lengths: Vec<(String, Vec<usize>)> = Vec::new();
    for (binding, rows) in b.inputs.iter().zip(job_inputs) {
        if let (true, Some(sym)) = (binding.ragged(), &binding.symbol)
            && !lengths.iter().any(|(s, _)| s == sym)
        {
            let inner: usize = binding
                .row_shape
                .iter()
                .skip(1)
                .map(|d| d.unwrap_or(1))
                .product::<usize>()
                .max(1);
            let mut v = Vec::with_capacity(rows.len());
            for (col, r) in rows {
                let (values, _) = crate::tensor::row_values(col, *r)?;
                v.push(values.len() / inner);
            }
            lengths.push((sym.clone(), v));
        }
        inputs.push((binding.input.clone(), binding.gather(rows)?));
    }
    Ok((inputs, rows, lengths))
}

/// Turns model outputs into the bound output columns.
fn scatter(
    b: &Bindings,
    out: Vec<(String, HostTensor)>,
    rows: usize,
    lengths: &[(String, Vec<usize>)],
    run: Duration,
) -> Result<Reply> {
    let mut out: HashMap<String, HostTensor> = out.into_iter().collect();
    let mut outputs = Vec::with_capacity(b.outputs.len());
    for o in &b.outputs {
        let t = out.remove(&o.output).ok_or_else(|| {
            Error::external(format!(
                "model {} returned no output '{}'",
                b.model, o.output
            ))
        })?;
        outputs.push(o.scatter(&t, rows, lengths, &b.model)?);
    }
    Ok(Reply { outputs, run })
}

fn run_job(backend: &mut dyn crate::backend::Backend, b: &Bindings, job: &Job) -> Result<Reply> {
    let (inputs, rows, lengths) = gather(b, &job.inputs)?;
    let started = Instant::now();
    let out = backend.run(inputs)?;
    scatter(b, out, rows, &lengths, started.elapsed())
}

/// One call to a service: gathers the rows, calls, and turns the answer into output columns.
fn call_service(
    service: Arc<dyn ModelService>,
    bindings: Arc<Bindings>,
    job_inputs: Vec<Vec<(ArrayRef, usize)>>,
    options: CallOptions,
) -> BoxFuture<'static, Result<Reply>> {
    Box::pin(async move {
        let (inputs, rows, lengths) = gather(&bindings, &job_inputs)?;
        drop(job_inputs);
        let started = Instant::now();
        let out = service.call(inputs, &options).await?;
        scatter(&bindings, out, rows, &lengths, started.elapsed())
    })
}

impl Instance {
    /// Starts instance `index`: its thread loads the backend, reports the load's result through
    /// `loaded`, then runs jobs until the job channel closes.
    fn start(
        index: usize,
        factory: BackendFactory,
        bindings: Arc<Bindings>,
        loaded: oneshot::Sender<Result<()>>,
    ) -> Result<Instance> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("weir-infer-{index}"))
            .spawn(move || {
                let mut backend = match factory(index) {
                    Ok(b) => {
                        let _ = loaded.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    let r = run_job(backend.as_mut(), &bindings, &job);
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| Error::internal("cannot start an inference thread").with_source(e))?;
        Ok(Instance {
            jobs: Some(tx),
            thread: Some(thread),
            in_flight: 0,
        })
    }
}

/// The running `infer` operator. Made by [`InferSpec::create`].
pub struct InferOperator {
    spec: InferSpec,
    plan: InferPlan,
    factory: Option<BackendFactory>,
    /// The service called instead of instances of the operator's own.
    service: Option<Arc<dyn ModelService>>,
    /// Whether [`ModelService::attach`] succeeded and is not yet matched by a detach.
    attached: bool,
    bindings: Arc<Bindings>,
    instances: Vec<Instance>,
    /// Instances started by `open` whose model load has not been awaited yet.
    loading: Vec<(usize, oneshot::Receiver<Result<()>>)>,
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
    pub(crate) fn new(spec: InferSpec, plan: InferPlan, factory: BackendFactory) -> Self {
        Self::build(spec, plan, Some(factory), None)
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
        Self::build(spec, plan, None, Some(service))
    }

    fn build(
        spec: InferSpec,
        plan: InferPlan,
        factory: Option<BackendFactory>,
        service: Option<Arc<dyn ModelService>>,
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
            factory,
            service,
            attached: false,
            bindings,
            instances: Vec::new(),
            loading: Vec::new(),
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

    /// The results-log counters (shared; they keep counting while the operator runs).
    pub fn counters(&self) -> Arc<InferCounters> {
        self.counters.clone()
    }

    /// Opens the results log (when on), loading it on restore, and re-admits the rows that were in
    /// flight at the restored checkpoint.
    async fn restore(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let store = match (self.spec.results_log, ctx.log_store()) {
            (Some(false), _) | (None, None) => None,
            (_, Some(store)) => Some(store.clone()),
            (Some(true), None) => {
                return Err(Error::config(
                    "'results_log: true' needs the job to take checkpoints (the log is kept in the checkpoint store)",
                ));
            }
        };
        let restored_from = ctx.restored_from();
        let mut mine: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut computed: Vec<Vec<u8>> = Vec::new();
        if let Some(state) = ctx.restored_state() {
            let (me, par) = (ctx.info().subtask, ctx.info().parallelism.max(1));
            for entry in state.unions::<StateKey>() {
                match entry? {
                    (StateKey::InFlight { subtask }, bytes) if subtask % par == me => {
                        mine.push((subtask, bytes.to_vec()))
                    }
                    (StateKey::Computed { .. }, bytes) => computed.push(bytes.to_vec()),
                    (StateKey::InFlight { .. }, _) => {}
                }
            }
        }
        if let Some(store) = store {
            let outputs: Vec<(String, String)> = self
                .plan
                .outputs
                .iter()
                .map(|o| (o.output.clone(), o.column.clone()))
                .collect();
            let fields: Vec<arrow::datatypes::Field> = self
                .plan
                .outputs
                .iter()
                .map(|o| o.field.as_ref().clone())
                .collect();
            let schema = log_schema(&fields);
            let path = self.plan.info.path.clone();
            let model_id = ctx
                .spawn_cpu(move || model_identity(&path, &outputs))
                .await??;
            if let Some(from) = restored_from {
                let mut loaded =
                    crate::results_log::load(&store, &schema, model_id, from, ctx).await?;
                for bytes in &computed {
                    loaded.add_stream(bytes, &schema, model_id, "the checkpoint's state");
                }
                tracing::info!(
                    model = %self.model,
                    node = ctx.name(),
                    checkpoint = from,
                    results = loaded.len(),
                    "loaded the inference results log"
                );
                self.loaded = loaded;
            }
            self.log = Some(LogWriter::new(
                store,
                schema.clone(),
                model_id,
                ctx.info().subtask,
                restored_from.unwrap_or(0),
            ));
            self.log_schema = Some(schema);
        }
        mine.sort_by_key(|(old, _)| *old);
        let mut batches = Vec::new();
        for (_, bytes) in mine {
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
            for b in reader {
                batches.push(b?);
            }
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > 0 {
            tracing::info!(model = %self.model, rows, "re-issuing inference requests in flight at the restored checkpoint");
        }
        for b in batches {
            self.admit(b, ctx)?;
        }
        Ok(())
    }

    /// The rows admitted and not yet emitted, per held input batch in output order (bad rows,
    /// already reported, left out), as one Arrow IPC stream.
    fn encode_in_flight(&self) -> Result<Option<Vec<u8>>> {
        let mut held = Vec::new();
        for (_, e) in &self.entries {
            let batch = if e.bad.iter().any(|b| *b) {
                let mask = BooleanArray::from(e.bad.iter().map(|b| !b).collect::<Vec<_>>());
                arrow::compute::filter_record_batch(&e.batch, &mask)?
            } else {
                e.batch.clone()
            };
            if batch.num_rows() > 0 {
                held.push(batch);
            }
        }
        let Some(first) = held.first() else {
            return Ok(None);
        };
        let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema())?;
        for b in &held {
            w.write(b)?;
        }
        Ok(Some(w.into_inner()?))
    }

    /// Rows computed but not yet emitted: their identities and outputs (kept with the checkpoint).
    fn computed_not_emitted(&self) -> Result<(Vec<u64>, Vec<ArrayRef>)> {
        let mut keys = Vec::new();
        let mut order: Vec<u64> = Vec::new();
        let mut indices = Vec::new();
        for (_, e) in &self.entries {
            for (r, res) in e.results.iter().enumerate() {
                let (Some((req, k)), Some(key)) = (res, e.keys.get(r)) else {
                    continue;
                };
                let pos = match order.iter().position(|q| q == req) {
                    Some(p) => p,
                    None => {
                        order.push(*req);
                        order.len() - 1
                    }
                };
                indices.push((pos, *k as usize));
                keys.push(*key);
            }
        }
        let mut outputs = Vec::new();
        if keys.is_empty() {
            return Ok((keys, outputs));
        }
        for j in 0..self.plan.outputs.len() {
            let arrays: Vec<&dyn Array> = order
                .iter()
                .map(|q| {
                    self.done
                        .get(q)
                        .and_then(|d| d.outputs.get(j))
                        .map(|a| a.as_ref())
                        .ok_or_else(|| Error::internal("a finished request's outputs are gone"))
                })
                .collect::<Result<_>>()?;
            outputs.push(arrow::compute::interleave(&arrays, &indices)?);
        }
        Ok((keys, outputs))
    }

    /// The output schema.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.plan.schema.clone()
    }

    /// Queued rows, formed batches and requests in flight.
    pub fn in_flight(&self) -> &InFlight {
        &self.state
    }

    async fn start_instances(&mut self) -> Result<()> {
        if let Some(service) = &self.service {
            if !self.attached {
                service.attach()?;
                self.attached = true;
            }
            return Ok(());
        }
        self.begin_instances()?;
        for (i, rx) in std::mem::take(&mut self.loading) {
            rx.await.map_err(|_| {
                Error::internal(format!(
                    "inference instance {i} of {} died while loading",
                    self.model
                ))
            })??;
        }
        Ok(())
    }

    /// Starts the instances' threads (each loads the model) without waiting for the loads:
    /// `open` calls this so that loading overlaps with the upstream work on the first batch;
    /// [`Self::start_instances`] waits for them before the first batch is admitted.
    fn begin_instances(&mut self) -> Result<()> {
        if self.service.is_some() || !self.instances.is_empty() {
            return Ok(());
        }
        let factory = self
            .factory
            .clone()
            .ok_or_else(|| Error::internal("an inline infer operator has no backend factory"))?;
        for i in 0..self.spec.instances {
            let (tx, rx) = oneshot::channel();
            self.instances.push(Instance::start(
                i,
                factory.clone(),
                self.bindings.clone(),
                tx,
            )?);
            self.loading.push((i, rx));
        }
        Ok(())
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
            let id = self.state.next_request;
            self.state.next_request += 1;
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

    fn free_instance(&self) -> Option<usize> {
        if self.service.is_some() {
            // One lane for the whole service: `instance` is then `usize::MAX`.
            return (self.attached && self.state.requests.len() < self.spec.max_in_flight)
                .then_some(usize::MAX);
        }
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.in_flight < self.spec.max_in_flight && i.jobs.is_some())
            .min_by_key(|(_, i)| i.in_flight)
            .map(|(i, _)| i)
    }

    /// Forms batches from queued rows when a trigger says so; returns whether any was formed.
    fn form(&mut self) -> bool {
        let q = &mut self.state.queue;
        if q.is_empty() {
            return false;
        }
        let target = self.controller.target();
        let now = self.clock.now();
        let oldest = q.front().map(|r| r.at);
        if self.plan.sort_by_length {
            let window = 4 * self.controller.max_size();
            let fire = self.flushing
                || q.len() >= window
                || batch_ready(q.len(), usize::MAX, oldest, now, self.spec.batch.max_wait);
            if !fire {
                return false;
            }
            let take = q.len().min(window);
            let rows: Vec<Queued> = q.drain(..take).collect();
            let lengths: Vec<usize> = rows.iter().map(|r| r.len).collect();
            for bucket in bucket_by_length(&lengths, target) {
                self.state.formed.push_back(FormedBatch {
                    rows: bucket.into_iter().map(|i| rows[i].row).collect(),
                    isolate: false,
                });
            }
            return true;
        }
        let fire =
            self.flushing || batch_ready(q.len(), target, oldest, now, self.spec.batch.max_wait);
        if !fire {
            return false;
        }
        let take = aligned_take(q, target);
        let rows = q.drain(..take).map(|r| r.row).collect();
        self.state.formed.push_back(FormedBatch {
            rows,
            isolate: false,
        });
        true
    }

    /// Sends formed batches (forming new ones as needed) while an instance has room.
    fn pump(&mut self) -> Result<()> {
        while let Some(inst) = self.free_instance() {
            if self.state.formed.is_empty() && !self.form() {
                break;
            }
            let Some(batch) = self.state.formed.pop_front() else {
                break;
            };
            let mut inputs = Vec::with_capacity(self.plan.inputs.len());
            for b in &self.plan.inputs {
                let mut rows = Vec::with_capacity(batch.rows.len());
                for r in &batch.rows {
                    let entry = self.entry(r.input)?;
                    rows.push((entry.batch.column(b.index).clone(), r.row as usize));
                }
                inputs.push(rows);
            }
            let id = self.state.next_request;
            self.state.next_request += 1;
            let reply = if let Some(service) = &self.service {
                call_service(
                    service.clone(),
                    self.bindings.clone(),
                    inputs,
                    self.spec.call_options(),
                )
            } else {
                let (tx, rx) = oneshot::channel();
                let sender = self.instances[inst].jobs.as_ref().ok_or_else(|| {
                    Error::internal(format!(
                        "inference instance {inst} of {} is closed",
                        self.model
                    ))
                })?;
                sender.send(Job { inputs, reply: tx }).map_err(|_| {
                    Error::external(format!(
                        "inference instance {inst} of {} stopped unexpectedly",
                        self.model
                    ))
                })?;
                self.instances[inst].in_flight += 1;
                let fut: BoxFuture<'static, Result<Reply>> = Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(Error::external(format!(
                            "inference instance {inst} stopped unexpectedly (its thread ended)"
                        )))
                    })
                });
                fut
            };
            self.state.requests.insert(
                id,
                Request {
                    id,
                    batch,
                    instance: inst,
                    sent: self.clock.now(),
                    reply,
                },
            );
        }
        Ok(())
    }

    // Entries are held in increasing sequence order; unordered emission removes them from the
    // middle, so they are found by binary search.
    fn entry(&self, seq: u64) -> Result<&Entry> {
        self.entries
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|(_, e)| e)
            .ok_or_else(|| Error::internal(format!("input batch {seq} is no longer held")))
    }

    fn entry_mut(&mut self, seq: u64) -> Result<&mut Entry> {
        self.entries
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .map(|(_, e)| e)
            .ok_or_else(|| Error::internal(format!("input batch {seq} is no longer held")))
    }

    /// The position of the next input batch that may be emitted: the front one when it is
    /// complete, or (unordered) any complete one.
    fn next_emittable(&self) -> Option<usize> {
        if self.spec.ordered {
            return self
                .entries
                .front()
                .is_some_and(|(_, e)| e.waiting == 0)
                .then_some(0);
        }
        self.entries.iter().position(|(_, e)| e.waiting == 0)
    }

    /// Polls every request's reply; takes the first that is ready.
    fn poll_reply(&mut self, cx: &mut std::task::Context<'_>) -> Poll<(u64, Result<Reply>)> {
        let mut ready = None;
        for (id, r) in self.state.requests.iter_mut() {
            if let Poll::Ready(res) = r.reply.as_mut().poll(cx) {
                ready = Some((*id, res));
                break;
            }
        }
        match ready {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Takes every reply that is already there, without waiting.
    fn drain_ready(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        while let Poll::Ready((id, res)) = self.poll_reply(&mut cx) {
            self.complete(id, res, ctx)?;
        }
        Ok(())
    }

    /// Handles the answer to request `id`.
    fn complete(&mut self, id: u64, res: Result<Reply>, ctx: &mut OperatorContext) -> Result<()> {
        let Some(req) = self.state.requests.remove(&id) else {
            return Ok(());
        };
        if let Some(i) = self.instances.get_mut(req.instance) {
            i.in_flight = i.in_flight.saturating_sub(1);
        }
        let rows = req.batch.rows.len();
        match res {
            Ok(reply) => {
                let latency = self.clock.now().saturating_duration_since(req.sent);
                self.controller.observe(rows, reply.run, latency);
                ctx.metrics().record_batch(rows, latency);
                ctx.metrics().add_model_busy(reply.run);
                self.counters
                    .model_rows
                    .fetch_add(rows as u64, Ordering::Relaxed);
                self.counters
                    .largest_batch
                    .fetch_max(rows as u64, Ordering::Relaxed);
                if self.log.is_some() {
                    let mut keys = Vec::with_capacity(rows);
                    for r in &req.batch.rows {
                        let e = self.entry(r.input)?;
                        let key = e
                            .keys
                            .get(r.row as usize)
                            .copied()
                            .ok_or_else(|| Error::internal("a logged row has no identity"))?;
                        keys.push(key);
                    }
                    let again = keys.iter().filter(|k| self.loaded.contains(**k)).count();
                    self.counters
                        .reinferred_rows
                        .fetch_add(again as u64, Ordering::Relaxed);
                    if let Some(log) = self.log.as_mut() {
                        log.append(keys, &reply.outputs, ctx)?;
                    }
                }
                for (k, r) in req.batch.rows.iter().enumerate() {
                    let e = self.entry_mut(r.input)?;
                    e.results[r.row as usize] = Some((id, k as u32));
                    e.waiting -= 1;
                }
                self.done.insert(
                    id,
                    Done {
                        outputs: reply.outputs,
                        uses: rows,
                    },
                );
            }
            Err(e) if rows > 1 && !req.batch.isolate => {
                tracing::warn!(
                    model = %self.model,
                    rows,
                    error = %e.report(),
                    "batch failed, retrying its rows one by one"
                );
                for r in req.batch.rows.iter().rev() {
                    self.state.formed.push_front(FormedBatch {
                        rows: vec![*r],
                        isolate: true,
                    });
                }
            }
            Err(e) => {
                for r in &req.batch.rows {
                    let column = self
                        .plan
                        .inputs
                        .iter()
                        .map(|b| b.column.clone())
                        .collect::<Vec<_>>()
                        .join(",");
                    {
                        let entry = self.entry_mut(r.input)?;
                        entry.bad[r.row as usize] = true;
                        entry.waiting -= 1;
                    }
                    let err = Error::input(format!(
                        "model {} failed on this row: {}",
                        self.model,
                        e.message()
                    ));
                    ctx.bad_row(err, Some(column), Some(format!("row {}", r.row)), None)?;
                }
            }
        }
        Ok(())
    }

    /// Emits every finished input batch at the front, in input order.
    fn emit_ready(&mut self, out: &mut Emitter) -> Result<()> {
        while let Some(pos) = self.next_emittable() {
            let Some((_, e)) = self.entries.remove(pos) else {
                break;
            };
            let keep: Vec<usize> = (0..e.batch.num_rows()).filter(|r| !e.bad[*r]).collect();
            let mut order: Vec<u64> = Vec::new();
            let mut indices = Vec::with_capacity(keep.len());
            for r in &keep {
                let Some((req, k)) = e.results[*r] else {
                    return Err(Error::internal("a row has neither a result nor an error"));
                };
                let pos = match order.iter().position(|q| *q == req) {
                    Some(p) => p,
                    None => {
                        order.push(req);
                        order.len() - 1
                    }
                };
                indices.push((pos, k as usize));
            }
            let mut columns: Vec<ArrayRef> = if keep.len() == e.batch.num_rows() {
                e.batch.columns().to_vec()
            } else {
                let mask = BooleanArray::from(e.bad.iter().map(|b| !b).collect::<Vec<_>>());
                e.batch
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::filter(c, &mask))
                    .collect::<std::result::Result<_, _>>()?
            };
            for (j, o) in self.plan.outputs.iter().enumerate() {
                let arrays: Vec<&dyn Array> = order
                    .iter()
                    .map(|q| {
                        self.done
                            .get(q)
                            .and_then(|d| d.outputs.get(j))
                            .map(|a| a.as_ref())
                            .ok_or_else(|| Error::internal("a finished request's outputs are gone"))
                    })
                    .collect::<Result<_>>()?;
                if arrays.is_empty() {
                    columns.push(arrow::array::new_empty_array(o.field.data_type()));
                } else {
                    columns.push(arrow::compute::interleave(&arrays, &indices)?);
                }
            }
            for (pos, _) in &indices {
                let q = order[*pos];
                if let Some(d) = self.done.get_mut(&q) {
                    d.uses -= 1;
                    if d.uses == 0 {
                        self.done.remove(&q);
                    }
                }
            }
            let batch = RecordBatch::try_new(self.plan.schema.clone(), columns)?;
            out.emit(batch);
        }
        Ok(())
    }

    /// When the time trigger fires for the queued rows, if an instance could take them.
    fn deadline(&self) -> Option<Instant> {
        if !self.state.formed.is_empty() || self.free_instance().is_none() {
            return None;
        }
        self.state
            .queue
            .front()
            .map(|r| r.at + self.spec.batch.max_wait)
    }

    /// Waits for one reply or the batch deadline, then handles what came. Cancel-safe: a reply
    /// is taken from its channel and handled in the same poll, with no await in between.
    async fn wait_one(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let deadline = self.deadline();
        let res = {
            let context: &OperatorContext = ctx;
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_reply(cx) {
                    return Poll::Ready(Ok(Some(r)));
                }
                // A results log segment written: the next one starts.
                match self.log.as_mut().map(|l| l.poll(cx, context)) {
                    Some(Poll::Ready(r)) => Poll::Ready(r.map(|()| None)),
                    _ => Poll::Pending,
                }
            });
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = woken => r?,
                _ = sleep => None,
            }
        };
        if let Some((id, r)) = res {
            self.complete(id, r, ctx)?;
        }
        Ok(())
    }

    fn rows_held(&self) -> usize {
        self.state.queue.len()
    }
}

#[async_trait]
impl Operator for InferOperator {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.restore(ctx).await?;
        if self.has_pending() || self.service.is_some() {
            // Restored requests are dispatched right away: their instances must be up.
            self.start_instances().await?;
        } else {
            // The loads overlap with the upstream work on the first batch; process_batch and
            // finish wait for them (and report a failed load) before admitting rows.
            self.begin_instances()?;
        }
        if self.service.is_none() {
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
        self.start_instances().await?;
        self.admit(batch, ctx)?;
        self.drain_ready(ctx)?;
        self.pump()?;
        // Backpressure: hold at most a few rounds of batches beyond what is in flight.
        let limit =
            4 * self.controller.max_size() * self.spec.instances.max(1) * self.spec.max_in_flight;
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
        self.start_instances().await?;
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
        let threads: Vec<_> = self
            .instances
            .iter_mut()
            .filter_map(|i| {
                i.jobs = None;
                i.thread.take()
            })
            .collect();
        ctx.spawn_cpu(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await?;
        if let (Some(service), true) = (&self.service, self.attached) {
            service.detach();
            self.attached = false;
        }
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
        let mut state = StateSnapshot::new();
        let subtask = ctx.info().subtask;
        if let Some(bytes) = self.encode_in_flight()? {
            state.push_union(&StateKey::InFlight { subtask }, bytes)?;
        }
        if let (Some(log), Some(schema)) = (&self.log, &self.log_schema) {
            let (keys, outputs) = self.computed_not_emitted()?;
            if !keys.is_empty() {
                let n = keys.len();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(arrow::array::UInt64Array::from(keys)),
                    Arc::new(arrow::array::UInt64Array::from(vec![log.model(); n])),
                ];
                columns.extend(outputs);
                let batch = RecordBatch::try_new(schema.clone(), columns)?;
                state.push_union(&StateKey::Computed { subtask }, ipc(schema, &[batch])?)?;
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.seal(barrier.checkpoint_id, ctx)?;
        }
        Ok(state)
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
        // Closing the job channels ends the threads after their current run; they are not
        // joined here, to never block an executor thread.
        for i in &mut self.instances {
            i.jobs = None;
        }
        if let (Some(service), true) = (&self.service, self.attached) {
            service.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(batches: &[(u64, u32)]) -> VecDeque<Queued> {
        let at = Instant::now();
        batches
            .iter()
            .flat_map(|&(input, rows)| {
                (0..rows).map(move |row| Queued {
                    row: RowRef { input, row },
                    len: 1,
                    at,
                })
            })
            .collect()
    }

    #[test]
    fn batches_realign_with_input_batches() {
        // 24 rows left of input 0, then input 1: cut at the boundary (24 >= 32 / 2).
        let mut q = queue(&[(0, 32), (1, 32), (2, 32)]);
        q.drain(..8);
        assert_eq!(aligned_take(&q, 32), 24);
        q.drain(..24);
        // Aligned: whole input batches from now on.
        assert_eq!(aligned_take(&q, 32), 32);
        // Only 8 rows left of the head's batch: too small a batch, take the target.
        let mut q = queue(&[(0, 32), (1, 32)]);
        q.drain(..24);
        assert_eq!(aligned_take(&q, 32), 32);
        // Input batches larger than the target: the target.
        assert_eq!(aligned_take(&queue(&[(0, 100)]), 32), 32);
        // Fewer rows queued than the target: all of them (or up to the boundary).
        assert_eq!(aligned_take(&queue(&[(0, 5)]), 32), 5);
        assert_eq!(aligned_take(&queue(&[(0, 20), (1, 5)]), 32), 20);
        assert_eq!(aligned_take(&VecDeque::new(), 32), 0);
    }
}
