//! The one instance pool behind every `infer` call ([`Pool`], a [`ModelService`]): model
//! instances on threads of their own, a queue of requests routed to the ready instance with the
//! least outstanding work, scaling and draining, and what happens when an instance dies or hangs.
//!
//! An `infer` step without `service:` runs its model in a pool of its own (an in-process service
//! made by the operator, [`PoolConfig::inline`]); a declared service (`weir-serve`'s `Service`)
//! is a pool too, configured from its spec, with out-of-process instances when it says so. Both
//! are called through the same [`ModelService`] contract.
//!
//! The state is one value behind one mutex (`state.rs`), changed only by short functions that
//! never block: callers submit and cancel requests, instance threads (`instance.rs`) report
//! "loaded", "done" and "died", the autoscaler (`autoscale.rs`) sets a target. Callers get
//! per-attempt timeouts and retries with backoff; a request that killed `max_deaths` instances
//! fails with the reason; after `max_load_failures` instances failed to load in a row the pool
//! is *broken*: calls fail with a configuration error naming the load error (which an `infer`
//! step turns into a job failure, not into bad rows).

mod autoscale;
mod calls;
mod instance;
mod state;

pub use autoscale::{AutoscaleSpec, Observation, decide};
pub use instance::{check_outputs, warmup_inputs};

use crate::backend::BackendFactory;
use crate::model::ModelInfo;
use crate::service::{CallOptions, ModelService, ServiceStatus, Tensors};
use futures::future::BoxFuture;
use state::Shared;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use weir_types::{Error, Result};

/// How a pool runs: its instances' bounds, routing, batching, fault limits and lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name (a service's name; an inline pool's model file name).
    pub name: String,
    /// How messages name it: `service 'clf'`, `model resnet.onnx`.
    pub label: String,
    /// Name prefix of the instance threads (`weir-serve-clf`, `weir-infer-resnet.onnx`).
    pub thread_prefix: String,
    /// The model file (for [`ModelService::info`]).
    pub model: PathBuf,
    /// A description of the definition ([`ModelService::definition`]).
    pub definition: String,
    /// Instances started with the pool.
    pub initial: usize,
    /// Fewest instances scaling may leave.
    pub min: usize,
    /// Most instances scaling may run.
    pub max: usize,
    /// Requests one instance holds at a time (one runs, the others wait on it).
    pub window: usize,
    /// Whether queued requests merge into one model batch of at most `max_batch` rows.
    pub merge: bool,
    /// The largest batch (rows) a caller should send; merged batches stay within it.
    pub max_batch: usize,
    /// Instance deaths one request may cause before it fails.
    pub max_deaths: u32,
    /// Instances failing to load in a row before the pool is broken.
    pub max_load_failures: u32,
    /// The autoscaler, if any.
    pub autoscale: Option<AutoscaleSpec>,
    /// Whether the instances keep running when the last caller detaches (a shared service).
    pub keep_when_detached: bool,
    /// Whether an instance runs one batch of zeros after loading, before it takes requests.
    pub warm_up: bool,
    /// Whether the pool's and its instances' lifecycle (starting, ready, draining, stopped) is
    /// logged at info level (a service) or at debug level (a step's own pool). Deaths, load
    /// failures and scaling are always logged.
    pub log_lifecycle: bool,
}

impl PoolConfig {
    /// The pool of an `infer` step's own instances: `instances` of `model`, each holding up to
    /// `max_in_flight` batches, no merging (the step forms its batches), no autoscaler, no
    /// warm-up batch (the first batch pays for the first run; the model's rows are the step's
    /// only), broken as soon as one instance fails to load (the job fails with the load error),
    /// stopped when the step finishes.
    pub fn inline(model: &std::path::Path, instances: usize, max_in_flight: usize) -> Self {
        let file = model
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| model.display().to_string());
        let instances = instances.max(1);
        PoolConfig {
            label: format!("model {file}"),
            thread_prefix: format!("weir-infer-{file}"),
            definition: format!(
                "inline model={} instances={instances} window={max_in_flight}",
                model.display()
            ),
            name: file,
            model: model.to_path_buf(),
            initial: instances,
            min: instances,
            max: instances,
            window: max_in_flight.max(1),
            merge: false,
            max_batch: usize::MAX,
            max_deaths: 3,
            max_load_failures: 1,
            autoscale: None,
            keep_when_detached: false,
            warm_up: false,
            log_lifecycle: false,
        }
    }
}

/// Which instances a pool has, pushed to subscribers on every change ([`Pool::members`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Instances the pool wants.
    pub target: usize,
    /// Instances loading their model or warming up (not routable).
    pub loading: Vec<u64>,
    /// Instances receiving requests.
    pub ready: Vec<u64>,
    /// Instances finishing their requests before they stop (not routable).
    pub draining: Vec<u64>,
}

/// A pool of model instances, called as a [`ModelService`]. Starts nothing until a caller
/// attaches; dropping it stops every instance.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// A pool whose instances run backends from `factory`.
    pub fn new(config: PoolConfig, factory: BackendFactory) -> Result<Self> {
        Self::build(config, factory, None)
    }

    /// A pool whose instances are processes (their backends talk to them); `processes` collects
    /// the ids of the processes started, for [`ServiceStatus::processes`].
    pub fn with_processes(
        config: PoolConfig,
        factory: BackendFactory,
        processes: Arc<Mutex<Vec<u32>>>,
    ) -> Result<Self> {
        Self::build(config, factory, Some(processes))
    }

    fn build(
        config: PoolConfig,
        factory: BackendFactory,
        processes: Option<Arc<Mutex<Vec<u32>>>>,
    ) -> Result<Self> {
        let at = |what: &str| Error::config(format!("{}: {what}", config.label));
        if config.window == 0 || config.max_batch == 0 {
            return Err(at("window and the batch size must be at least 1"));
        }
        if config.max_deaths == 0 || config.max_load_failures == 0 {
            return Err(at("max_deaths and max_load_failures must be at least 1"));
        }
        if !(config.min <= config.initial && config.initial <= config.max) {
            return Err(at(&format!(
                "expected min <= initial <= max instances, got {}, {}, {}",
                config.min, config.initial, config.max
            )));
        }
        Ok(Pool {
            shared: Arc::new(Shared::new(config, factory, processes)),
        })
    }

    /// How the pool runs.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Membership changes, pushed: a receiver that sees every change of the instance set.
    pub fn members(&self) -> watch::Receiver<Membership> {
        self.shared.members.subscribe()
    }

    /// Requests answered by each instance so far (instance id → count), including instances
    /// that have stopped or died since.
    pub fn served(&self) -> BTreeMap<u64, u64> {
        self.shared.served()
    }

    /// Stops every instance now (in-flight requests fail); a later attach starts it again.
    pub fn stop(&self) {
        let mut st = self.shared.lock();
        self.shared.stop(&mut st);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ModelService for Pool {
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    fn definition(&self) -> String {
        self.shared.config.definition.clone()
    }

    fn info(&self) -> Result<ModelInfo> {
        self.shared.info()
    }

    fn max_batch(&self) -> Option<usize> {
        Some(self.shared.config.max_batch)
    }

    fn attach(&self) -> Result<()> {
        self.shared.attach();
        Ok(())
    }

    fn detach(&self) {
        self.shared.detach();
    }

    fn in_use(&self) -> bool {
        self.shared.in_use()
    }

    fn call(&self, inputs: Tensors, options: &CallOptions) -> BoxFuture<'static, Result<Tensors>> {
        let fut = calls::call(self.shared.clone(), Arc::new(inputs), options.clone());
        Box::pin(async move { fut.await.map(|(out, _)| out) })
    }

    fn call_timed(
        &self,
        inputs: Tensors,
        options: &CallOptions,
    ) -> BoxFuture<'static, Result<(Tensors, Duration)>> {
        calls::call(self.shared.clone(), Arc::new(inputs), options.clone())
    }

    fn scale(&self, instances: usize) -> Result<()> {
        self.shared.scale(instances)
    }

    fn status(&self) -> ServiceStatus {
        self.shared.status()
    }
}
