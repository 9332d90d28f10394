//! weir's Python bindings: the native module `weir._weir` of the `weir` package (`python/`).
//!
//! The Python side (`weir.DataFrame`) accumulates a pipeline as the very structure a YAML spec
//! has (job options and `steps`, each a mapping with `source:` / `op:` / `sink:`), and hands it
//! here as JSON. It is read by the same spec parser and planner as `weir run`, so a DataFrame
//! and its YAML make the same logical graph, `explain` prints what `weir explain` prints, and
//! plan errors carry the same message and key path. Two step kinds exist only here:
//! `op: map_batches` (Python code, [`udf`]) and `sink: collect` (batches to the caller,
//! [`collect`]). Batches cross into Python through the Arrow C data interface ([`ffi`]).
//!
//! A started job ([`Job`]) runs on weir's executors while Python waits with the GIL released,
//! looking for Ctrl-C between waits: the first stops the job cleanly (what was read is written).

mod collect;
mod ffi;
mod udf;

use arrow::record_batch::RecordBatch;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use weir_plan::{LogicalGraph, Plan};
use weir_runtime::kind::{Registry, Resources};
use weir_runtime::{CheckpointSetup, JobReport, MetricsRegistry, Runtime, StopToken};
use weir_types::{Error, ErrorKind};

create_exception!(
    _weir,
    PlanError,
    PyException,
    "The pipeline is invalid: the same message and key path as `weir validate` / `weir run`."
);
create_exception!(
    _weir,
    JobError,
    PyException,
    "The job failed while running; the message carries the cause chain."
);

/// Every kind weir ships, plus the two that exist only in Python.
fn registry() -> Registry {
    let mut r = weir_plan::kinds::builtin();
    r.op::<udf::MapBatchesSpec>("map_batches")
        .sink::<collect::CollectSinkSpec>("collect");
    r
}

/// A weir error as the Python exception its kind calls for.
fn to_py(e: Error) -> PyErr {
    match e.kind() {
        ErrorKind::Config | ErrorKind::Schema => PlanError::new_err(e.report()),
        _ => JobError::new_err(e.report()),
    }
}

/// A plan-time error as `PlanError`, whatever its kind.
fn plan_err(e: Error) -> PyErr {
    PlanError::new_err(e.report())
}

/// The YAML spec mapping of a JSON text.
fn spec_value(spec_json: &str) -> Result<serde_norway::Value, Error> {
    serde_json::from_str(spec_json)
        .map_err(|e| Error::config(format!("the pipeline is not valid JSON: {e}")))
}

/// The logical graph of a spec (JSON text of the YAML structure).
fn graph_of(
    spec_json: &str,
    origin: &str,
    parallelism: Option<u32>,
) -> Result<LogicalGraph, Error> {
    let parsed = weir_plan::spec::parse_value(spec_value(spec_json)?, origin, &[])?;
    weir_plan::yaml::to_graph(&registry(), &parsed, origin, parallelism)
}

fn plan_of(spec_json: &str, origin: &str, parallelism: Option<u32>) -> Result<Plan, Error> {
    let graph = graph_of(spec_json, origin, parallelism)?;
    weir_plan::plan_graph(&registry(), &graph, origin)
}

/// The logical graph of a pipeline as JSON (`docs/logical-graph.md`), before planning.
#[pyfunction]
#[pyo3(signature = (spec_json, origin="<DataFrame>", parallelism=None))]
fn logical_graph(spec_json: &str, origin: &str, parallelism: Option<u32>) -> PyResult<String> {
    graph_of(spec_json, origin, parallelism)
        .and_then(|g| g.to_json())
        .map_err(plan_err)
}

/// The planned pipeline as `weir explain` prints it (`json`: as `weir explain --json`).
#[pyfunction]
#[pyo3(signature = (spec_json, origin="<DataFrame>", json=false, parallelism=None))]
fn explain(
    spec_json: &str,
    origin: &str,
    json: bool,
    parallelism: Option<u32>,
) -> PyResult<String> {
    let plan = plan_of(spec_json, origin, parallelism).map_err(plan_err)?;
    if json {
        plan.explain_json().map_err(plan_err)
    } else {
        plan.explain().map_err(plan_err)
    }
}

/// The output schema of the node `node` of the planned pipeline, as a `pyarrow.Schema`.
#[pyfunction]
#[pyo3(signature = (spec_json, node, origin="<DataFrame>"))]
fn node_schema<'py>(
    py: Python<'py>,
    spec_json: &str,
    node: &str,
    origin: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let plan = plan_of(spec_json, origin, None).map_err(plan_err)?;
    let schema = plan
        .steps
        .iter()
        .find(|s| s.name == node)
        .and_then(|s| s.schema.clone())
        .ok_or_else(|| PlanError::new_err(format!("no step '{node}' with an output")))?;
    ffi::schema_to_py(py, schema)
}

/// A YAML spec's text, with `${NAME}` references resolved from `vars` (then the environment), as
/// the JSON text of its mapping.
#[pyfunction]
#[pyo3(signature = (text, origin, vars=None))]
fn yaml_to_json(
    text: &str,
    origin: &str,
    vars: Option<HashMap<String, String>>,
) -> PyResult<String> {
    let value =
        weir_plan::spec::substitute(text, origin, &vars.unwrap_or_default()).map_err(plan_err)?;
    // Checked as `weir validate` would read it, so errors come early with their key path.
    weir_plan::spec::parse_value(value.clone(), origin, &[]).map_err(plan_err)?;
    serde_json::to_string(&value)
        .map_err(|e| PlanError::new_err(format!("{origin}: cannot be read as JSON: {e}")))
}

/// The JSON text of a spec mapping as YAML.
#[pyfunction]
fn json_to_yaml(spec_json: &str) -> PyResult<String> {
    let value = spec_value(spec_json).map_err(plan_err)?;
    serde_norway::to_string(&value).map_err(|e| PlanError::new_err(e.to_string()))
}

/// A `pyarrow.Schema` in arrow-schema's serde form (what `map_batches`' `schema:` holds), as JSON.
#[pyfunction]
fn schema_json(schema: &Bound<'_, PyAny>) -> PyResult<String> {
    let pa = schema.py().import("pyarrow")?;
    let empty = pa
        .getattr("RecordBatch")?
        .call_method1("from_pylist", (Vec::<i32>::new(), schema))?;
    let batch = ffi::batch_from_py(&empty)?;
    serde_json::to_string(batch.schema_ref().as_ref())
        .map_err(|e| PlanError::new_err(e.to_string()))
}

/// How a started job ended, kept for whoever asks.
type Ended = Option<Result<JobReport, Error>>;

/// A running job started from Python.
#[pyclass(module = "weir._weir")]
struct Job {
    runtime: Arc<Runtime>,
    rx: Option<mpsc::Receiver<RecordBatch>>,
    ended: Arc<Mutex<Ended>>,
    done: watch::Receiver<bool>,
    stop: StopToken,
    metrics: MetricsRegistry,
    steps: Vec<String>,
    /// Kept alive for the job's life (declared services).
    _job: weir_plan::Job,
}

/// Starts a pipeline. `collect`: the spec ends in a `collect` sink whose batches this job's
/// `next_batch` returns. `udfs`: the Python callables of its `map_batches` steps by name.
/// `resume` / `overwrite`: as `weir run --resume` / `--overwrite`.
#[pyfunction]
#[pyo3(signature = (spec_json, origin="<DataFrame>", parallelism=None, udfs=None, collect=false, resume=false, overwrite=false, threads=None))]
#[allow(clippy::too_many_arguments)]
fn start(
    py: Python<'_>,
    spec_json: &str,
    origin: &str,
    parallelism: Option<u32>,
    udfs: Option<&Bound<'_, PyDict>>,
    collect: bool,
    resume: bool,
    overwrite: bool,
    threads: Option<usize>,
) -> PyResult<Job> {
    let plan = plan_of(spec_json, origin, parallelism).map_err(plan_err)?;
    let mut resources = Resources::new();
    if let Some(udfs) = udfs {
        let mut map = HashMap::new();
        for (k, v) in udfs.iter() {
            map.insert(k.extract::<String>()?, v.unbind());
        }
        resources.insert(udf::Udfs::RESOURCE, udf::Udfs(map));
    }
    let (tx, rx) = mpsc::channel(16);
    if collect {
        resources.insert("collect", collect::CollectChannel(tx));
    } else {
        drop(tx);
    }
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Starting opens files and may start processes (map_batches workers import Python): not
    // under the GIL, so the job's Python calls can run.
    py.detach(move || -> PyResult<Job> {
        let runtime = Arc::new(Runtime::new(threads).map_err(to_py)?);
        if resume && plan.checkpoint.is_none() {
            return Err(PlanError::new_err(
                "resume=True needs a checkpoint (run(checkpoint=...) or a 'checkpoint:' section)",
            ));
        }
        let (store, restore) = weir_plan::stale::prepare(
            &runtime,
            &plan,
            weir_plan::stale::Intent { resume, overwrite },
            "resume=True needs a checkpoint",
        )
        .map_err(to_py)?;
        let job = plan.start_with(resources).map_err(to_py)?;
        let setup = match (&store, &plan.checkpoint) {
            (Some(store), Some(c)) => Some(CheckpointSetup {
                store: store.clone(),
                config: c.config.clone(),
                restore,
            }),
            _ => None,
        };
        let handle = runtime
            .start_with(job.graph.clone(), setup)
            .map_err(to_py)?;
        let metrics = handle.metrics().clone();
        let stop = handle.stop_token();
        let ended: Arc<Mutex<Ended>> = Arc::new(Mutex::new(None));
        let (done_tx, done) = watch::channel(false);
        let e = ended.clone();
        runtime.task_handle().spawn(async move {
            let r = handle.wait().await;
            if let Ok(mut g) = e.lock() {
                *g = Some(r);
            }
            let _ = done_tx.send(true);
        });
        Ok(Job {
            runtime,
            rx: Some(rx),
            ended,
            done,
            stop,
            metrics,
            steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
            _job: job,
        })
    })
}

/// How long one wait lasts before Python's signals are checked.
const TICK: Duration = Duration::from_millis(100);

#[pymethods]
impl Job {
    /// The next batch of the collect sink as a `pyarrow.RecordBatch`, or `None` once the job has
    /// ended and every batch was returned. Ctrl-C stops the job (what was read is written) and
    /// raises `KeyboardInterrupt`.
    fn next_batch<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        enum Got {
            Batch(RecordBatch),
            Ended,
            Tick,
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Ok(None);
            };
            let mut done = self.done.clone();
            let got = py.detach(|| {
                self.runtime.io_handle().block_on(async {
                    tokio::select! {
                        biased;
                        b = rx.recv() => b.map_or(Got::Ended, Got::Batch),
                        _ = done.wait_for(|d| *d) => Got::Ended,
                        _ = tokio::time::sleep(TICK) => Got::Tick,
                    }
                })
            });
            match got {
                Got::Batch(batch) => return Ok(Some(ffi::batch_to_py(py, batch)?)),
                Got::Ended if *self.done.borrow() => {
                    // Ended: what is still in the channel, then the end.
                    if let Ok(batch) = rx.try_recv() {
                        return Ok(Some(ffi::batch_to_py(py, batch)?));
                    }
                    self.rx = None;
                    self.raise_if_failed()?;
                    return Ok(None);
                }
                // The channel closed before the job ended: wait for its end.
                Got::Ended => {
                    self.wait(py)?;
                    return Ok(None);
                }
                Got::Tick => {}
            }
            self.check_signals(py)?;
        }
    }

    /// Waits for the end of the job and returns its per-step counters as JSON; raises
    /// `JobError` when it failed. Ctrl-C stops the job cleanly and raises `KeyboardInterrupt`.
    fn wait(&mut self, py: Python<'_>) -> PyResult<String> {
        // A collect sink whose batches nobody reads would hold the job back: drop them.
        if let Some(mut rx) = self.rx.take() {
            rx.close();
        }
        loop {
            let mut done = self.done.clone();
            let finished = py.detach(|| {
                self.runtime.io_handle().block_on(async {
                    tokio::time::timeout(TICK, done.wait_for(|d| *d))
                        .await
                        .is_ok()
                })
            });
            if finished {
                break;
            }
            self.check_signals(py)?;
        }
        self.raise_if_failed()?;
        Ok(self.progress())
    }

    /// Asks the sources to stop: what was read is processed and written, then the job ends.
    fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether the job has ended.
    fn finished(&self) -> bool {
        *self.done.borrow()
    }

    /// Live per-step counters (rows and bytes in and out, busy time, dead letters, what it waits
    /// for), as JSON: a list of objects in step order.
    fn progress(&self) -> String {
        serde_json::to_string(&self.metrics.snapshot()).unwrap_or_else(|_| "[]".into())
    }

    /// The step names in plan order.
    fn steps(&self) -> Vec<String> {
        self.steps.clone()
    }
}

/// How long dropping a job that still runs waits for it to end after asking it to stop.
const DROP_GRACE: Duration = Duration::from_secs(10);

impl Drop for Job {
    /// A job whose Python object goes away while it runs (the caller was interrupted between
    /// starting it and waiting for it, or dropped an iterator) is asked to stop and given a
    /// bounded time to end cleanly, so that it neither runs on unseen nor holds the interpreter's
    /// exit forever.
    fn drop(&mut self) {
        if *self.done.borrow() {
            return;
        }
        self.stop.cancel();
        if let Some(mut rx) = self.rx.take() {
            rx.close();
        }
        let mut done = self.done.clone();
        let runtime = &self.runtime;
        // Without the GIL while waiting: the job's Python steps need it to finish.
        Python::attach(|py| {
            py.detach(|| {
                let _ = runtime.io_handle().block_on(async {
                    tokio::time::timeout(DROP_GRACE, done.wait_for(|d| *d)).await
                });
            })
        });
    }
}

impl Job {
    fn check_signals(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Err(e) = py.check_signals() {
            if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                self.stop.cancel();
                // Let the job end cleanly (sources stop, what was read is written).
                if let Some(mut rx) = self.rx.take() {
                    rx.close();
                }
                let mut done = self.done.clone();
                py.detach(|| {
                    self.runtime
                        .io_handle()
                        .block_on(async { done.wait_for(|d| *d).await.map(|_| ()) })
                })
                .ok();
            }
            return Err(e);
        }
        Ok(())
    }

    fn raise_if_failed(&self) -> PyResult<()> {
        let guard = self
            .ended
            .lock()
            .map_err(|_| JobError::new_err("the job's result was lost (a thread panicked)"))?;
        match guard.as_ref() {
            Some(Err(e)) => Err(match e.kind() {
                ErrorKind::Config | ErrorKind::Schema if e.operator().is_none() => {
                    PlanError::new_err(e.report())
                }
                _ => JobError::new_err(e.report()),
            }),
            _ => Ok(()),
        }
    }
}

/// The native module.
#[pymodule]
fn _weir(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ort=warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    m.add("PlanError", m.py().get_type::<PlanError>())?;
    m.add("JobError", m.py().get_type::<JobError>())?;
    m.add_class::<Job>()?;
    m.add_class::<ffi::BatchExport>()?;
    m.add_class::<ffi::SchemaExport>()?;
    m.add_function(wrap_pyfunction!(logical_graph, m)?)?;
    m.add_function(wrap_pyfunction!(explain, m)?)?;
    m.add_function(wrap_pyfunction!(node_schema, m)?)?;
    m.add_function(wrap_pyfunction!(yaml_to_json, m)?)?;
    m.add_function(wrap_pyfunction!(json_to_yaml, m)?)?;
    m.add_function(wrap_pyfunction!(schema_json, m)?)?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    Ok(())
}
