//! The contract between the `infer` operator and an inference *service* ([`ModelService`]): a
//! model deployed apart from the data plane, with instances of its own, that the operator calls
//! asynchronously with batches of tensors. Also the options of one call ([`CallOptions`]), a
//! service's state for progress displays ([`ServiceStatus`]) and how a step finds the services of
//! its job: by name in the job's resources ([`service`], [`service_info`]).
//!
//! The trait lives here, with the instance pool that implements it ([`crate::pool::Pool`]: an
//! `infer` step's own instances, and the core of `weir-serve`'s services), so that dependencies
//! point down: `weir-serve` depends on `weir-infer`. The
//! services are the job's: the planner puts a [`DeclaredService`] in the plan-time resources for
//! each entry of the spec's `services:` section, and the job-start function the running service
//! ([`provide`]); nothing is registered in the process.

use crate::backend::HostTensor;
use crate::model::ModelInfo;
use futures::future::BoxFuture;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind::Resources;
use weir_types::{Error, Result};

/// Named tensors: (model input or output name, tensor with the batch dimension first).
pub type Tensors = Vec<(String, HostTensor)>;

/// How one caller calls a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOptions {
    /// Longest wait for one attempt's answer; an attempt that takes longer is abandoned (and the
    /// instance running it is treated as hung and replaced).
    pub timeout: Duration,
    /// Further attempts after a retryable failure (a timeout, an external error).
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one.
    pub backoff: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Why a service is slow or waiting, for progress displays and metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Instances the service wants.
    pub target: usize,
    /// Instances loading their model or running their warm-up batch (not routable yet).
    pub loading: usize,
    /// Instances receiving requests.
    pub ready: usize,
    /// Instances finishing their in-flight requests before they stop (not routable).
    pub draining: usize,
    /// Requests waiting for an instance.
    pub queued: usize,
    /// Requests sent to instances and not answered yet.
    pub in_flight: usize,
    /// Fraction of the last measuring interval the ready instances spent running batches.
    pub utilisation: f64,
    /// Requests answered so far.
    pub answered: u64,
    /// Attempts retried after a timeout or a retryable error.
    pub retries: u64,
    /// Instances that died (panicked, exited, were killed, hung) and were replaced.
    pub deaths: u64,
    /// Requests given up on (answered with an error).
    pub failed: u64,
    /// Process ids of the instance processes started so far, oldest first (out-of-process
    /// instances only; empty for threads).
    pub processes: Vec<u32>,
    /// Rows of the calls answered so far.
    pub answered_rows: u64,
    /// Latency of the calls answered so far, from the first attempt to the answer (queueing,
    /// re-dispatches and retries included): `latency_buckets[i]` counts the calls that took at
    /// most [`latency_bound_ms`]`(i)` and more than the bound before; the last bucket has no
    /// upper bound. Counts only grow, so two statuses subtracted give one interval's latencies.
    pub latency_buckets: Vec<u64>,
    /// Each instance now: its phase and the work it holds (empty where the service does not
    /// report instances).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

/// One instance of a service, for status displays.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceStatus {
    /// The instance's number within its service (never reused).
    pub id: u64,
    /// `loading`, `ready` or `draining`.
    pub phase: String,
    /// Requests sent to it and not answered.
    pub outstanding_requests: usize,
    /// Rows of those requests.
    pub outstanding_rows: usize,
    /// Requests it answered.
    pub answered: u64,
    /// How long its current batch has run, milliseconds (`None` when idle).
    pub running_ms: Option<u64>,
}

/// Number of latency buckets in [`ServiceStatus::latency_buckets`].
pub const LATENCY_BUCKETS: usize = 90;

/// Upper bound (milliseconds) of latency bucket `i`: 1.15^i, from 1 ms to about 3.5 minutes; the
/// last bucket is unbounded.
pub fn latency_bound_ms(i: usize) -> f64 {
    if i + 1 >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        1.15f64.powi(i32::try_from(i).unwrap_or(i32::MAX))
    }
}

/// The bucket of a latency.
pub fn latency_bucket(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1000.0;
    (0..LATENCY_BUCKETS)
        .find(|&i| ms <= latency_bound_ms(i))
        .unwrap_or(LATENCY_BUCKETS - 1)
}

/// The `q` quantile (0..=1) of bucketed latencies, as its bucket's upper bound in milliseconds
/// (at most 15% above the true value); `None` without any call.
pub fn latency_quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(latency_bound_ms(i));
        }
    }
    None
}

impl ServiceStatus {
    /// One lowercase phrase saying why callers wait, or `None` when nothing holds them up:
    /// `service 'clf' saturated: 40 requests queued, 3/3 instances busy`.
    pub fn why_slow(&self) -> Option<String> {
        let name = &self.name;
        if self.ready == 0 && self.loading > 0 {
            return Some(format!(
                "service '{name}' has no ready instance: {} loading (model load and warm-up)",
                self.loading
            ));
        }
        if self.ready == 0 && self.queued > 0 {
            return Some(format!(
                "service '{name}' has no instance: {} requests queued",
                self.queued
            ));
        }
        if self.queued > 0 && self.loading > 0 {
            return Some(format!(
                "service '{name}' scaling out: {} requests queued, {} instances loading",
                self.queued, self.loading
            ));
        }
        if self.queued > self.ready {
            return Some(format!(
                "service '{name}' saturated: {} requests queued, {}/{} instances busy ({:.0}% utilisation)",
                self.queued,
                self.ready,
                self.target,
                self.utilisation * 100.0
            ));
        }
        None
    }
}

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service '{}': {} ready, {} loading, {} draining (target {}), {} queued, {} in flight, {:.0}% busy, {} answered, {} retries, {} instance deaths, {} failed",
            self.name,
            self.ready,
            self.loading,
            self.draining,
            self.target,
            self.queued,
            self.in_flight,
            self.utilisation * 100.0,
            self.answered,
            self.retries,
            self.deaths,
            self.failed
        )
    }
}

/// A model deployed as a service: instances of its own (threads or processes) that load the model,
/// warm up, and then answer batches routed to them by load.
///
/// Contract:
/// - [`info`](ModelService::info) is available before any instance runs (read from the model
///   file once, then cached), so a plan can be checked without starting the service.
/// - [`attach`](ModelService::attach) counts a caller and starts the instances when the service is
///   not running; it does not wait for them to load. Every successful `attach` is matched by one
///   [`detach`](ModelService::detach); a per-job service stops its instances when the last caller
///   detaches, a shared one keeps them.
/// - [`call`](ModelService::call) never blocks: it returns a `'static` future that resolves
///   **exactly once**, to one tensor per model output with the batch dimension equal to the input
///   rows, or to an error once timeouts, retries and re-dispatches are used up. An error whose
///   kind is not retryable concerns this batch only; the service stays usable. Dropping the future
///   cancels the request: an answer arriving later is discarded, never delivered twice.
/// - A request is answered at most once even when the instance running it dies: it is then
///   re-dispatched to another instance, at most a bounded number of times, after which the call
///   fails with the reason (so a poison input never loops forever).
/// - Methods may be called from any thread, including async executor threads.
pub trait ModelService: Send + Sync + fmt::Debug {
    /// The service's name (`services[].name` in the spec).
    fn name(&self) -> &str;

    /// A description of the definition; two services with equal definitions are interchangeable
    /// (a shared service defined again by another job is reused).
    fn definition(&self) -> String;

    /// The model's inputs, outputs and metadata.
    fn info(&self) -> Result<ModelInfo>;

    /// The largest batch (rows) a caller should send, if the service limits it.
    fn max_batch(&self) -> Option<usize>;

    /// Counts a caller; starts the instances when the service is not running.
    fn attach(&self) -> Result<()>;

    /// Uncounts a caller (see the contract).
    fn detach(&self);

    /// Whether a caller is attached.
    fn in_use(&self) -> bool;

    /// Sends one batch; see the contract.
    fn call(&self, inputs: Tensors, options: &CallOptions) -> BoxFuture<'static, Result<Tensors>>;

    /// [`call`](ModelService::call), with how long the model ran for the answer (what the
    /// adaptive batch size keeps under its latency budget). The default measures the whole
    /// call; a service that knows the model's run time (an instance pool) reports that.
    fn call_timed(
        &self,
        inputs: Tensors,
        options: &CallOptions,
    ) -> BoxFuture<'static, Result<(Tensors, Duration)>> {
        let call = self.call(inputs, options);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let out = call.await?;
            Ok((out, started.elapsed()))
        })
    }

    /// Sets the number of instances (within the service's bounds): new instances receive traffic
    /// once loaded and warmed up; removed ones stop receiving requests, finish the ones they have,
    /// then stop.
    fn scale(&self, instances: usize) -> Result<()>;

    /// The current state (cheap; for progress displays).
    fn status(&self) -> ServiceStatus;
}

/// A service a job declares, as plans see it before the job starts: its name and the model it
/// serves. The planner puts one in the plan-time [`Resources`] for each declared service, so that
/// an `infer` step calling it can check its columns against the model without starting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredService {
    /// The service's name.
    pub name: String,
    /// Its model file.
    pub model: PathBuf,
}

impl DeclaredService {
    /// The model's inputs, outputs and metadata, read from the model file.
    pub fn info(&self) -> Result<ModelInfo> {
        ModelInfo::load(&self.model)
            .map_err(|e| Error::new(e.kind(), format!("service '{}': {}", self.name, e.report())))
    }
}

/// Adds a running service to a job's resources, under its name (the job-start function does this
/// for every declared service; tests that build graphs by hand too).
pub fn provide(resources: &mut Resources, service: Arc<dyn ModelService>) {
    resources.insert(service.name().to_string(), service);
}

/// The running service `name` of the job, from its resources; the error lists the declared names.
pub fn service(resources: &Resources, name: &str) -> Result<Arc<dyn ModelService>> {
    resources
        .get::<Arc<dyn ModelService>>(name)
        .cloned()
        .ok_or_else(|| not_declared(resources, name))
}

/// The model information of service `name`: from the running service when the job has started,
/// else from its declaration (plan time).
pub fn service_info(resources: &Resources, name: &str) -> Result<ModelInfo> {
    if let Some(s) = resources.get::<Arc<dyn ModelService>>(name) {
        return s.info();
    }
    match resources.get::<DeclaredService>(name) {
        Some(d) => d.info(),
        None => Err(not_declared(resources, name)),
    }
}

fn not_declared(resources: &Resources, name: &str) -> Error {
    let mut names: Vec<&str> = resources.names::<DeclaredService>();
    names.extend(resources.names::<Arc<dyn ModelService>>());
    names.sort_unstable();
    names.dedup();
    Error::config(format!(
        "no service named '{name}' is declared (declared: {}); add it to the spec's services section",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_and_quantiles() {
        assert_eq!(latency_bucket(Duration::from_micros(500)), 0);
        assert_eq!(latency_bucket(Duration::from_millis(1)), 0);
        let b = latency_bucket(Duration::from_millis(100));
        assert!(latency_bound_ms(b) >= 100.0 && latency_bound_ms(b - 1) < 100.0);
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
        assert!(latency_bound_ms(LATENCY_BUCKETS - 2) > 200_000.0);

        let mut h = vec![0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile_ms(&h, 0.99), None);
        for ms in 1..=100u64 {
            h[latency_bucket(Duration::from_millis(ms * 10))] += 1;
        }
        // 100 calls of 10..1000 ms: the median is 500 ms, the 99th 990 ms, each within 15%.
        let p50 = latency_quantile_ms(&h, 0.5).unwrap_or(0.0);
        let p99 = latency_quantile_ms(&h, 0.99).unwrap_or(0.0);
        assert!((500.0..=575.0).contains(&p50), "{p50}");
        assert!((990.0..=1139.0).contains(&p99), "{p99}");
    }
}
