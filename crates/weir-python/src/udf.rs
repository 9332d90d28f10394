//! `op: map_batches`: a Python function, or a class constructed once per instance, applied to
//! batches of rows, with the engine in charge (parallelism, backpressure, dead letters,
//! checkpoints).
//!
//! Each instance of the step calls the user's code in one of two places:
//! - a thread of the job's process (`processes: false`): the batch goes to Python through the
//!   Arrow C data interface, no copy, under the GIL (so instances of CPU-bound Python code take
//!   turns);
//! - a worker process of its own (`processes: true`, `python -m weir._worker`): the batch goes
//!   over a pipe as an Arrow IPC stream, so instances run on separate cores. The worker's stdin is
//!   the pipe the instance holds, so a worker never outlives its job, even one killed with
//!   `kill -9`.
//!
//! The user's code sits behind `weir._udf.Adapter` (Python) in both places, which turns what the
//! code returns into a batch and an exception into its traceback. The output must have one row
//! per input row and the planned schema (`schema:`, or the input's); anything else fails the job
//! with an error naming the step. An exception makes the batch's rows bad rows (`on_error:
//! batch`), or the batch is retried row by row and only the rows that raise are (`on_error:
//! row`); under `on_error: dead_letter` of the job they become dead letters with the traceback.
//! A class with `snapshot()` / `restore(state)` has its state in every checkpoint (a union entry
//! per subtask, restored to the subtask of the same index).

use crate::ffi;
use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use pyo3::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use weir_checkpoint::StateSnapshot;
use weir_runtime::kind::{self, CreateContext, Need, PlanContext};
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Barrier, Error, Result, Watermark};

/// The resource (named [`Udfs::RESOURCE`]) with the Python callables a job started from Python
/// registered, by the name its `map_batches` steps give in `function`.
#[derive(Debug, Default)]
pub struct Udfs(pub HashMap<String, Py<PyAny>>);

impl Udfs {
    /// The resource's name.
    pub const RESOURCE: &'static str = "python_udfs";
}

/// How an exception in the user's code is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdfErrors {
    /// Every row of the batch is a bad row with the traceback (default).
    #[default]
    Batch,
    /// The batch is retried row by row; only the rows that raise are bad rows.
    Row,
}

/// Options of `op: map_batches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapBatchesSpec {
    /// The function or class: `module:qualname` of an importable one, or the name under which
    /// the Python caller registered it. Required.
    pub function: String,
    /// Rows per call: the input is cut and joined into batches of this many rows (the last one
    /// before a checkpoint, a watermark or the end may be smaller). Default: the input's batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Call the code in a worker process per instance (`true`) or in a thread of the job's
    /// process (`false`, the default).
    #[serde(default)]
    pub processes: bool,
    /// `batch` (default) or `row`: see [`UdfErrors`].
    #[serde(default)]
    pub on_error: UdfErrors,
    /// The output schema, in arrow-schema's serde form (`{fields: [...]}`). Default: the
    /// input's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

impl MapBatchesSpec {
    fn declared(&self) -> Result<Option<SchemaRef>> {
        self.schema
            .as_ref()
            .map(|v| {
                serde_json::from_value::<Schema>(v.clone())
                    .map(Arc::new)
                    .map_err(|e| {
                        Error::config(format!(
                            "map_batches '{}': key 'schema': not an Arrow schema: {e}",
                            self.function
                        ))
                    })
            })
            .transpose()
    }
}

impl kind::Spec for MapBatchesSpec {
    fn describe(&self) -> String {
        format!(
            "map_batches {} ({}{}{})",
            self.function,
            if self.processes {
                "worker processes"
            } else {
                "threads"
            },
            self.batch_size
                .map(|n| format!(", {n} rows per call"))
                .unwrap_or_default(),
            if self.on_error == UdfErrors::Row {
                ", errors per row"
            } else {
                ""
            }
        )
    }
}

impl kind::OperatorSpec for MapBatchesSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _ctx: &PlanContext<'_>) -> Result<SchemaRef> {
        if self.batch_size == Some(0) {
            return Err(Error::config(format!(
                "map_batches '{}': key 'batch_size': expected at least 1",
                self.function
            )));
        }
        Ok(self.declared()?.unwrap_or_else(|| inputs[0].clone()))
    }

    fn input_need(&self, inputs: &[SchemaRef], _out: &Need) -> Result<Vec<Need>> {
        Ok(vec![Need::All; inputs.len()])
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        let info = ctx.info();
        let function = Python::attach(|py| -> PyResult<Py<PyAny>> {
            if let Some(f) = ctx
                .resources()
                .get::<Udfs>(Udfs::RESOURCE)
                .and_then(|u| u.0.get(&self.function))
            {
                return Ok(f.clone_ref(py));
            }
            let udf = py.import("weir._udf")?;
            Ok(udf.call_method1("resolve", (&self.function,))?.unbind())
        })
        .map_err(|e| {
            Error::config(format!(
                "step '{}': map_batches cannot find the function '{}': {}",
                info.node,
                self.function,
                py_report(&e)
            ))
        })?;
        Ok(Box::new(MapBatches {
            node: info.node.clone(),
            subtask: info.subtask,
            function: Some(function),
            caller: None,
            processes: self.processes,
            on_error: self.on_error,
            batch_size: self.batch_size,
            schema: ctx.output()?.clone(),
            held: Vec::new(),
            held_rows: 0,
        }))
    }
}

/// A Python exception as text: its traceback when there is one.
pub fn py_report(e: &PyErr) -> String {
    Python::attach(|py| {
        let tb = e
            .traceback(py)
            .and_then(|tb| tb.format().ok())
            .unwrap_or_default();
        format!("{tb}{}", e.value(py))
    })
}

/// What one call of the user's code gave.
enum Outcome {
    Batch(RecordBatch),
    /// It raised: the traceback.
    Raised(String),
}

/// Where an instance calls the user's code.
trait Caller: Send {
    fn call(&mut self, batch: RecordBatch) -> Result<Outcome>;
    /// The state of a class with `snapshot()`, pickled; `None` without one.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>>;
    fn restore(&mut self, state: &[u8]) -> Result<()>;
}

/// In a thread of this process, under the GIL.
struct ThreadCaller {
    adapter: Py<PyAny>,
}

impl Caller for ThreadCaller {
    fn call(&mut self, batch: RecordBatch) -> Result<Outcome> {
        Python::attach(|py| {
            let b = ffi::batch_to_py(py, batch).map_err(py_err("cannot hand a batch to Python"))?;
            let r = self
                .adapter
                .call_method1(py, "call", (b,))
                .map_err(py_err("the map_batches adapter failed"))?;
            let (ok, value): (bool, Bound<'_, PyAny>) = r
                .extract(py)
                .map_err(py_err("the map_batches adapter answered wrongly"))?;
            if ok {
                Ok(Outcome::Batch(ffi::batch_from_py(&value).map_err(
                    py_err("cannot read the batch the function returned"),
                )?))
            } else {
                Ok(Outcome::Raised(
                    value.extract::<String>().unwrap_or_default(),
                ))
            }
        })
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Python::attach(|py| {
            let r = self
                .adapter
                .call_method0(py, "snapshot")
                .map_err(py_err("snapshot() failed"))?;
            r.extract::<Option<Vec<u8>>>(py)
                .map_err(py_err("snapshot() state is not bytes"))
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        Python::attach(|py| {
            self.adapter
                .call_method1(py, "restore", (pyo3::types::PyBytes::new(py, state),))
                .map_err(py_err("restore() failed"))?;
            Ok(())
        })
    }
}

fn py_err(what: &'static str) -> impl Fn(PyErr) -> Error {
    move |e| Error::external(format!("{what}: {}", py_report(&e)))
}

/// In a worker process (`python -m weir._worker`), over pipes. Frames: a tag byte, a
/// little-endian u64 length, the payload.
struct ProcessCaller {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl ProcessCaller {
    fn start(python: &str, payload: &[u8]) -> Result<Self> {
        let mut child = Command::new(python)
            .args(["-m", "weir._worker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::io(format!(
                    "cannot start a map_batches worker ({python} -m weir._worker)"
                ))
                .with_source(e)
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::internal("a worker process without pipes"));
        };
        let mut c = ProcessCaller {
            child,
            stdin,
            stdout,
        };
        c.send(b'I', payload)?;
        match c.recv()? {
            (b'O', _) => Ok(c),
            (b'X', tb) => Err(Error::external(format!(
                "the map_batches worker could not start the function:\n{}",
                String::from_utf8_lossy(&tb)
            ))),
            (t, _) => Err(c.protocol(t)),
        }
    }

    fn send(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        let mut head = [0u8; 9];
        head[0] = tag;
        head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        let r = self
            .stdin
            .write_all(&head)
            .and_then(|()| self.stdin.write_all(payload))
            .and_then(|()| self.stdin.flush());
        r.map_err(|e| self.died(e))
    }

    fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        if let Err(e) = self.stdout.read_exact(&mut head) {
            return Err(self.died(e));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[1..]);
        let mut payload = vec![0u8; u64::from_le_bytes(len) as usize];
        if let Err(e) = self.stdout.read_exact(&mut payload) {
            return Err(self.died(e));
        }
        Ok((head[0], payload))
    }

    fn died(&mut self, e: std::io::Error) -> Error {
        let status = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        Error::external(format!("the map_batches worker process ended{status}")).with_source(e)
    }

    fn protocol(&self, tag: u8) -> Error {
        Error::internal(format!(
            "the map_batches worker answered with an unknown frame {tag:#x}"
        ))
    }
}

impl Drop for ProcessCaller {
    fn drop(&mut self) {
        // Closing stdin ends the worker; reap it so no zombie stays.
        let _ = self.send(b'Q', &[]);
        let _ = self.child.wait();
    }
}

fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, batch.schema_ref())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn from_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let mut r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    match r.next() {
        Some(b) => Ok(b?),
        None => Err(Error::internal(
            "the map_batches worker sent an empty stream",
        )),
    }
}

impl Caller for ProcessCaller {
    fn call(&mut self, batch: RecordBatch) -> Result<Outcome> {
        self.send(b'B', &to_ipc(&batch)?)?;
        match self.recv()? {
            (b'B', bytes) => Ok(Outcome::Batch(from_ipc(&bytes)?)),
            (b'E', tb) => Ok(Outcome::Raised(String::from_utf8_lossy(&tb).into_owned())),
            (b'X', tb) => Err(Error::external(String::from_utf8_lossy(&tb).into_owned())),
            (t, _) => Err(self.protocol(t)),
        }
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        self.send(b'S', &[])?;
        match self.recv()? {
            (b'S', bytes) => Ok(Some(bytes)),
            (b'N', _) => Ok(None),
            (b'X', tb) => Err(Error::external(format!(
                "snapshot() failed:\n{}",
                String::from_utf8_lossy(&tb)
            ))),
            (t, _) => Err(self.protocol(t)),
        }
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        self.send(b'R', state)?;
        match self.recv()? {
            (b'O', _) => Ok(()),
            (b'X', tb) => Err(Error::external(format!(
                "restore() failed:\n{}",
                String::from_utf8_lossy(&tb)
            ))),
            (t, _) => Err(self.protocol(t)),
        }
    }
}

/// The union key of an instance's state.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct UdfState {
    subtask: u32,
}

struct MapBatches {
    node: String,
    subtask: u32,
    /// The user's callable until `open` hands it to the caller.
    function: Option<Py<PyAny>>,
    caller: Option<Box<dyn Caller>>,
    processes: bool,
    on_error: UdfErrors,
    batch_size: Option<usize>,
    schema: SchemaRef,
    held: Vec<RecordBatch>,
    held_rows: usize,
}

impl MapBatches {
    fn make_caller(&mut self) -> Result<Box<dyn Caller>> {
        let Some(function) = self.function.take() else {
            return Err(Error::internal("map_batches opened twice"));
        };
        let node = self.node.clone();
        Python::attach(|py| -> Result<Box<dyn Caller>> {
            let udf = py
                .import("weir._udf")
                .map_err(py_err("cannot import weir._udf"))?;
            if self.processes {
                let payload: Vec<u8> = udf
                    .call_method1("worker_payload", (function.bind(py),))
                    .and_then(|p| p.extract())
                    .map_err(py_err("cannot pickle the function for a worker process"))?;
                let python: String = py
                    .import("sys")
                    .and_then(|s| s.getattr("executable"))
                    .and_then(|e| e.extract())
                    .map_err(py_err("no sys.executable"))?;
                // Starting a process and waiting for its import is slow: not under the GIL.
                let c = py.detach(|| ProcessCaller::start(&python, &payload))?;
                Ok(Box::new(c))
            } else {
                let adapter = udf
                    .call_method1("Adapter", (function.bind(py),))
                    .map_err(|e| {
                        Error::external(format!(
                            "step '{node}': the map_batches function could not start:\n{}",
                            py_report(&e)
                        ))
                    })?;
                Ok(Box::new(ThreadCaller {
                    adapter: adapter.unbind(),
                }))
            }
        })
    }

    /// Calls the user's code on `batch` on a blocking thread and emits the result.
    async fn run(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let Some(mut caller) = self.caller.take() else {
            return Err(Error::internal("map_batches called before open"));
        };
        let per_row = self.on_error == UdfErrors::Row;
        let (caller, result) = ctx
            .spawn_cpu(move || {
                let r = call_all(caller.as_mut(), batch, per_row);
                (caller, r)
            })
            .await?;
        self.caller = Some(caller);
        let (outputs, raised) = result.map_err(|e| e.in_operator(self.node.clone()))?;
        for (input, output) in outputs {
            out.emit(self.check(&input, output)?);
        }
        for (row, tb) in raised {
            ctx.bad_row(
                Error::external(format!(
                    "the map_batches function raised:\n{}",
                    tb.trim_end()
                )),
                None,
                row.map(|r| format!("row {r} of the batch")),
                None,
            )?;
        }
        Ok(())
    }

    /// The output of one call, checked against its input and the planned schema.
    fn check(&self, input: &RecordBatch, output: RecordBatch) -> Result<RecordBatch> {
        if output.num_rows() != input.num_rows() {
            return Err(Error::schema(format!(
                "the map_batches function returned {} rows for a batch of {}; it must return one row per input row",
                output.num_rows(),
                input.num_rows()
            )));
        }
        let want = &self.schema;
        let got = output.schema();
        let same = got.fields().len() == want.fields().len()
            && got
                .fields()
                .iter()
                .zip(want.fields())
                .all(|(g, w)| g.name() == w.name() && g.data_type() == w.data_type());
        if !same {
            return Err(Error::schema(format!(
                "the map_batches function returned columns ({}) where the plan has ({}); declare its output with schema=",
                describe_fields(&got),
                describe_fields(want)
            )));
        }
        RecordBatch::try_new(want.clone(), output.columns().to_vec()).map_err(|e| {
            Error::schema(format!(
                "the map_batches function's output does not fit the planned schema: {e}"
            ))
        })
    }

    /// Calls the code on the rows held (batch_size), emitting them.
    async fn flush(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        self.held_rows = 0;
        let batch = concat_batches(&held[0].schema(), &held)?;
        self.run(batch, ctx, out).await
    }
}

fn describe_fields(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Outputs with their inputs, and the rows that raised (`None`: the whole batch).
type Called = (
    Vec<(RecordBatch, RecordBatch)>,
    Vec<(Option<usize>, String)>,
);

/// One call of the whole batch; when it raises and `per_row`, one call per row.
fn call_all(caller: &mut dyn Caller, batch: RecordBatch, per_row: bool) -> Result<Called> {
    match caller.call(batch.clone())? {
        Outcome::Batch(out) => Ok((vec![(batch, out)], Vec::new())),
        Outcome::Raised(tb) if !per_row => Ok((
            Vec::new(),
            (0..batch.num_rows()).map(|_| (None, tb.clone())).collect(),
        )),
        Outcome::Raised(_) => {
            let mut outputs = Vec::new();
            let mut raised = Vec::new();
            for i in 0..batch.num_rows() {
                let row = batch.slice(i, 1);
                match caller.call(row.clone())? {
                    Outcome::Batch(out) => outputs.push((row, out)),
                    Outcome::Raised(tb) => raised.push((Some(i), tb)),
                }
            }
            Ok((outputs, raised))
        }
    }
}

#[async_trait]
impl Operator for MapBatches {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let mut caller = self
            .make_caller()
            .map_err(|e| e.in_operator(self.node.clone()))?;
        if let Some(state) = ctx.restored_state() {
            for entry in state.unions::<UdfState>() {
                let (key, bytes) = entry?;
                if key.subtask == self.subtask {
                    caller.restore(bytes)?;
                }
            }
        }
        self.caller = Some(caller);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let Some(size) = self.batch_size else {
            return self.run(batch, ctx, out).await;
        };
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        if self.held_rows < size {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        let all = concat_batches(&held[0].schema(), &held)?;
        let mut at = 0;
        while all.num_rows() - at >= size {
            self.run(all.slice(at, size), ctx, out).await?;
            at += size;
        }
        self.held_rows = all.num_rows() - at;
        if self.held_rows > 0 {
            self.held.push(all.slice(at, self.held_rows));
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        self.flush(ctx, out).await?;
        out.emit_watermark(watermark);
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<StateSnapshot> {
        self.flush(ctx, out).await?;
        let mut snap = StateSnapshot::new();
        let Some(caller) = self.caller.as_mut() else {
            return Ok(snap);
        };
        if let Some(bytes) = caller.snapshot()? {
            snap.push_union(
                &UdfState {
                    subtask: self.subtask,
                },
                bytes,
            )?;
        }
        Ok(snap)
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        self.flush(ctx, out).await
    }
}
