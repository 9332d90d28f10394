//! A service's declaration ([`ServiceSpec`]): one entry of the pipeline spec's `services:`
//! section. Every option has a default; `docs/pipeline-spec.md` lists them.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::time::Duration;
use weir_types::{Error, Result};

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Which backend the instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// ONNX Runtime (`ort`) on CPU, or CUDA with `resources.gpus`.
    #[default]
    Onnx,
}

/// Where the instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Threads of the job's process.
    #[default]
    Thread,
    /// One process per instance (`weir serve-model`, or `command`), reached over Arrow Flight on
    /// loopback; killing it kills only that instance.
    Process,
}

/// Whether the service outlives the job that declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Instances start when the first `infer` step calling the service opens and stop when the
    /// last one finishes.
    #[default]
    PerJob,
    /// The service runs in a host process of its own (`weir serve-service`), found by name in the
    /// service registry directory (`$WEIR_SERVICES_DIR`, default `.weir/services`). The first job
    /// that needs it starts the host; later jobs, in this process or in others, that declare the
    /// same service (same name, same definition) attach to the running host. The host outlives
    /// the jobs: it stops after `idle_timeout` without calls, or on `weir stop-service NAME`.
    Shared,
}

/// How many instances.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesSpec {
    /// Instances started with the service. Default 1.
    #[serde(default = "one")]
    pub initial: usize,
    /// Fewest instances the autoscaler and `weir scale` may leave. Default 1.
    #[serde(default = "one")]
    pub min: usize,
    /// Most instances the autoscaler and `weir scale` may run. Default: `initial`.
    #[serde(default)]
    pub max: Option<usize>,
}

impl Default for InstancesSpec {
    fn default() -> Self {
        InstancesSpec {
            initial: 1,
            min: 1,
            max: None,
        }
    }
}

impl InstancesSpec {
    /// `max`, or `initial` when unset.
    pub fn max(&self) -> usize {
        self.max.unwrap_or(self.initial)
    }
}

/// What each instance is given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Intra-op threads of each instance's model session. Default 1.
    #[serde(default = "one")]
    pub cpus: usize,
    /// GPUs per instance (CUDA execution provider); 0 runs on CPU. Default 0.
    #[serde(default)]
    pub gpus: usize,
    /// Memory one instance is expected to use (`2GiB`), reported with the service's status.
    /// Default: not declared.
    #[serde(default)]
    pub memory: Option<String>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            cpus: 1,
            gpus: 0,
            memory: None,
        }
    }
}

/// Batching on the service side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBatchSpec {
    /// Largest batch (rows) one request may carry; an `infer` step calling the service caps its
    /// batches at this. Default 32.
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// Merge requests that wait in the queue (from any callers) into one model batch of at most
    /// `max_size` rows when an instance frees up; each caller gets its own rows back. Requests
    /// only wait when every instance is busy, so merging adds no latency. A merged batch that
    /// fails or kills its instance is retried request by request, so one bad request fails
    /// alone. Default true.
    #[serde(default = "yes")]
    pub merge: bool,
}

impl Default for ServiceBatchSpec {
    fn default() -> Self {
        ServiceBatchSpec {
            max_size: default_max_size(),
            merge: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// The autoscaler's policy (the `autoscale:` option): the pool's, in `weir_infer::pool`.
pub use weir_infer::pool::AutoscaleSpec;

/// One model service. See the field docs for defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The name `infer` steps call it by (`service: NAME`). Required.
    pub name: String,
    /// Path of the model file. Required.
    pub model: PathBuf,
    /// The backend the instances run. Default `onnx`.
    #[serde(default)]
    pub backend: BackendKind,
    /// `thread` (default) or `process`.
    #[serde(default)]
    pub placement: Placement,
    /// With `placement: process`: the executable and its first arguments, to which
    /// `--grace`, `--model`, `--cpus` and `--port 0` are appended; it must print
    /// `listening on 127.0.0.1:PORT` once ready and speak the tensor wire format of
    /// `weir_serve::flight`. Default: this `weir` binary with `serve-model`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// With `placement: process`: how long an instance process that gets SIGTERM may take to
    /// finish the requests it holds before it exits (the rest are handed back). Default `10s`.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
    /// How many instances. Defaults: see [`InstancesSpec`].
    #[serde(default)]
    pub instances: InstancesSpec,
    /// Resources per instance. Defaults: see [`ResourcesSpec`].
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Batching. Defaults: see [`ServiceBatchSpec`].
    #[serde(default)]
    pub batch: ServiceBatchSpec,
    /// `per_job` (default) or `shared`.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The autoscaler; absent (default) means the number of instances changes only through
    /// `weir scale` (or the API).
    #[serde(default)]
    pub autoscale: Option<AutoscaleSpec>,
    /// Requests an instance holds at a time (one runs, the others wait on the instance so it never
    /// idles between two); the rest wait in the service's queue, where new instances find them.
    /// Default 2.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Instance deaths (panic, exit, kill, hang) one request may cause before it fails with the
    /// reason instead of being sent to yet another instance. Default 3.
    #[serde(default = "default_max_deaths")]
    pub max_deaths: u32,
    /// Instances that fail to load in a row before the service gives up and fails its requests
    /// with the load error. Default 3.
    #[serde(default = "default_max_load_failures")]
    pub max_load_failures: u32,
    /// With `lifecycle: shared`: how long the host waits without any call before it stops
    /// (`0s`: never; stop it with `weir stop-service`). Default `5m`.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

fn one() -> usize {
    1
}
fn default_max_size() -> usize {
    32
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_window() -> usize {
    2
}
fn default_max_deaths() -> u32 {
    3
}
fn default_max_load_failures() -> u32 {
    3
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

impl ServiceSpec {
    /// A spec with every default for `model`.
    pub fn new(name: impl Into<String>, model: impl Into<PathBuf>) -> Self {
        ServiceSpec {
            name: name.into(),
            model: model.into(),
            backend: BackendKind::default(),
            placement: Placement::default(),
            command: None,
            grace: default_grace(),
            instances: InstancesSpec::default(),
            resources: ResourcesSpec::default(),
            batch: ServiceBatchSpec::default(),
            lifecycle: Lifecycle::default(),
            autoscale: None,
            window: default_window(),
            max_deaths: default_max_deaths(),
            max_load_failures: default_max_load_failures(),
            idle_timeout: default_idle_timeout(),
        }
    }

    /// Checks the numbers; errors name the service and the key.
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty() {
            return Err(Error::config("services: key 'name' must not be empty"));
        }
        let at =
            |key: &str, what: &str| Error::config(format!("service '{name}': key '{key}': {what}"));
        for (key, v) in [
            ("instances.min", self.instances.min),
            ("resources.cpus", self.resources.cpus),
            ("batch.max_size", self.batch.max_size),
            ("window", self.window),
        ] {
            if v == 0 {
                return Err(at(key, "must be at least 1"));
            }
        }
        if self.max_deaths == 0 {
            return Err(at("max_deaths", "must be at least 1"));
        }
        if self.max_load_failures == 0 {
            return Err(at("max_load_failures", "must be at least 1"));
        }
        let (min, initial, max) = (
            self.instances.min,
            self.instances.initial,
            self.instances.max(),
        );
        if !(min <= initial && initial <= max) {
            return Err(at(
                "instances",
                &format!(
                    "expected min <= initial <= max, got min {min}, initial {initial}, max {max}"
                ),
            ));
        }
        if let Some(c) = &self.command {
            if self.placement != Placement::Process {
                return Err(at("command", "is only used with placement: process"));
            }
            if c.is_empty() {
                return Err(at("command", "must name an executable"));
            }
        }
        if let Some(m) = &self.resources.memory {
            m.parse::<bytesize::ByteSize>()
                .map_err(|e| at("resources.memory", &format!("'{m}' is not a size: {e}")))?;
        }
        if let Some(a) = &self.autoscale {
            if a.interval.is_zero() {
                return Err(at("autoscale.interval", "must be more than 0"));
            }
            if a.scale_in_utilisation >= a.scale_out_utilisation {
                return Err(at(
                    "autoscale",
                    "scale_in_utilisation must be below scale_out_utilisation",
                ));
            }
        }
        Ok(())
    }

    /// One line for plans, logs and the registry's definition check.
    pub fn describe(&self) -> String {
        format!(
            "service {} model={} backend={:?} placement={:?} command={:?} grace={:?} instances={}..{} (initial {}) cpus={} gpus={} memory={} batch<={} merge={} lifecycle={:?} autoscale={} window={} max_deaths={} idle_timeout={:?}",
            self.name,
            self.model.display(),
            self.backend,
            self.placement,
            self.command,
            self.grace,
            self.instances.min,
            self.instances.max(),
            self.instances.initial,
            self.resources.cpus,
            self.resources.gpus,
            self.resources.memory.as_deref().unwrap_or("-"),
            self.batch.max_size,
            self.batch.merge,
            self.lifecycle,
            match &self.autoscale {
                Some(a) => format!("{a:?}"),
                None => "off".into(),
            },
            self.window,
            self.max_deaths,
            self.idle_timeout
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let s: ServiceSpec = serde_norway::from_str("name: clf\nmodel: m.onnx\n").unwrap();
        assert_eq!(s, ServiceSpec::new("clf", "m.onnx"));
        assert_eq!(s.instances.max(), 1);
        s.validate().unwrap();

        let s: ServiceSpec = serde_norway::from_str(
            "name: clf\nmodel: m.onnx\ninstances: {initial: 4, min: 1, max: 3}\n",
        )
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("service 'clf': key 'instances'"), "{e}");

        let e = serde_norway::from_str::<ServiceSpec>("name: a\nmodel: m\nreplicas: 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `replicas`"), "{e}");

        let s: ServiceSpec = serde_norway::from_str(
            "name: a\nmodel: m\nresources: {memory: lots}\nautoscale: {interval: 200ms}\n",
        )
        .unwrap();
        assert_eq!(
            s.autoscale.as_ref().unwrap().interval,
            Duration::from_millis(200)
        );
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("resources.memory"), "{e}");

        let s: ServiceSpec = serde_norway::from_str(
            "name: a\nmodel: m\nplacement: process\ncommand: [python3, inst.py]\ngrace: 2s\n",
        )
        .unwrap();
        assert_eq!(s.placement, Placement::Process);
        assert_eq!(s.grace, Duration::from_secs(2));
        s.validate().unwrap();
        let s: ServiceSpec =
            serde_norway::from_str("name: a\nmodel: m\ncommand: [python3]\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("key 'command'"), "{e}");
    }
}
