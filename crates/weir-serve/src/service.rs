//! The running service ([`Service`]): a [`Pool`] configured from its [`ServiceSpec`], with
//! ONNX Runtime instances on threads of the job's process or (`placement: process`) one
//! instance process each. The pool itself (routing, scaling, deaths, timeouts) is
//! `weir_infer::pool`, the same one that runs an `infer` step's own instances.

use crate::spec::{Lifecycle, Placement, ServiceSpec};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use weir_infer::pool::{Membership, Pool, PoolConfig};
use weir_infer::{
    BackendFactory, BackendOptions, CallOptions, ModelInfo, ModelService, OrtBackend,
    ServiceStatus, Tensors,
};
use weir_types::{Error, Result};

/// A running (or ready to run) inference service. See the crate docs.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    pool: Pool,
}

/// The pool configuration a service spec asks for.
fn pool_config(spec: &ServiceSpec) -> PoolConfig {
    PoolConfig {
        name: spec.name.clone(),
        label: format!("service '{}'", spec.name),
        thread_prefix: format!("weir-serve-{}", spec.name),
        model: spec.model.clone(),
        definition: spec.describe(),
        initial: spec.instances.initial,
        min: spec.instances.min,
        max: spec.instances.max(),
        window: spec.window,
        merge: spec.batch.merge,
        max_batch: spec.batch.max_size,
        max_deaths: spec.max_deaths,
        max_load_failures: spec.max_load_failures,
        autoscale: spec.autoscale.clone(),
        keep_when_detached: spec.lifecycle == Lifecycle::Shared,
        warm_up: true,
        log_lifecycle: true,
    }
}

impl Service {
    /// A service running `spec.model` on ONNX Runtime, in threads of this process or (with
    /// `placement: process`) in one instance process each. Starts nothing until a caller
    /// attaches.
    pub fn new(spec: ServiceSpec) -> Result<Self> {
        if spec.placement == Placement::Process {
            let mut command = match &spec.command {
                Some(c) => c.clone(),
                None => default_instance_command(&spec.name)?,
            };
            command.push("--grace".into());
            command.push(humantime::format_duration(spec.grace).to_string());
            if spec.resources.gpus > 0 {
                command.push("--gpus".into());
                command.push(spec.resources.gpus.to_string());
            }
            let pids = Arc::new(Mutex::new(Vec::new()));
            let factory = crate::flight::process_factory(
                command,
                spec.model.clone(),
                spec.resources.cpus,
                pids.clone(),
            );
            spec.validate()?;
            let pool = Pool::with_processes(pool_config(&spec), factory, pids)?;
            return Ok(Service { spec, pool });
        }
        let factory = OrtBackend::factory(
            &spec.model,
            BackendOptions {
                cpus: spec.resources.cpus,
                gpus: spec.resources.gpus,
                // Instances in the job's process share its cores with the other steps.
                spin: false,
            },
        );
        Self::with_backend(spec, factory)
    }

    /// A service whose instances run backends from `factory` (another backend, or a
    /// fault-injection stand-in); the model file is still read for its metadata.
    pub fn with_backend(spec: ServiceSpec, factory: BackendFactory) -> Result<Self> {
        spec.validate()?;
        let pool = Pool::new(pool_config(&spec), factory)?;
        Ok(Service { spec, pool })
    }

    /// The service's declaration.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Membership changes, pushed: a receiver that sees every change of the instance set.
    pub fn members(&self) -> watch::Receiver<Membership> {
        self.pool.members()
    }

    /// Requests answered by each instance so far (instance id → count), including instances
    /// that have stopped or died since.
    pub fn served(&self) -> BTreeMap<u64, u64> {
        self.pool.served()
    }

    /// Stops every instance now (in-flight requests fail); a later attach starts it again.
    pub fn stop(&self) {
        self.pool.stop();
    }
}

impl ModelService for Service {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn definition(&self) -> String {
        self.pool.definition()
    }

    fn info(&self) -> Result<ModelInfo> {
        self.pool.info()
    }

    fn max_batch(&self) -> Option<usize> {
        self.pool.max_batch()
    }

    fn attach(&self) -> Result<()> {
        self.pool.attach()
    }

    fn detach(&self) {
        self.pool.detach()
    }

    fn in_use(&self) -> bool {
        self.pool.in_use()
    }

    fn call(&self, inputs: Tensors, options: &CallOptions) -> BoxFuture<'static, Result<Tensors>> {
        self.pool.call(inputs, options)
    }

    fn call_timed(
        &self,
        inputs: Tensors,
        options: &CallOptions,
    ) -> BoxFuture<'static, Result<(Tensors, Duration)>> {
        self.pool.call_timed(inputs, options)
    }

    fn scale(&self, instances: usize) -> Result<()> {
        self.pool.scale(instances)
    }

    fn status(&self) -> ServiceStatus {
        self.pool.status()
    }
}

/// `[this weir binary, "serve-model"]`: the default instance command of `placement: process`,
/// available only when the job runs in the `weir` binary itself.
fn default_instance_command(service: &str) -> Result<Vec<String>> {
    let exe = this_weir(
        &format!("service '{service}': placement: process starts `weir serve-model` by default"),
        "set the service's `command:` (e.g. [/path/to/weir, serve-model])",
    )?;
    Ok(vec![exe.display().to_string(), "serve-model".into()])
}

/// This program, when it is the `weir` binary (the one that can run `weir serve-model` and
/// `weir serve-service`); otherwise a config error saying `needs` and how to `fix` it.
pub(crate) fn this_weir(needs: &str, fix: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::config(format!(
            "{needs}, but this executable cannot be found; {fix}"
        ))
        .with_source(e)
    })?;
    if exe.file_stem().and_then(|s| s.to_str()) != Some("weir") {
        return Err(Error::config(format!(
            "{needs}, but this program is {}, not weir; {fix}",
            exe.display()
        )));
    }
    Ok(exe)
}
