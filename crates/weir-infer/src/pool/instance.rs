//! An instance: one OS thread that loads its backend, runs one warm-up batch (when the pool warms
//! up), tells the pool it is ready, then runs the requests routed to it one at a time.
//!
//! A panic in the backend (while loading or running) is caught at the thread's edge and reported
//! as the instance's death with the panic message; the backend is dropped and the thread ends.
//! A backend that reports itself unhealthy after an error (a remote model that went away) dies
//! the same way. Either way the pool re-dispatches the instance's requests and starts a
//! replacement.

use super::state::Shared;
use crate::backend::{Backend, HostTensor};
use crate::model::{ModelInfo, format_shape};
use crate::service::Tensors;
use arrow::array::Int8Array;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::time::Instant;
use weir_types::{Error, Result};

/// One request of a [`Work`].
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) id: u64,
    pub(crate) rows: usize,
    pub(crate) inputs: Arc<Tensors>,
}

/// What an instance runs as one model batch: one request, or several merged (their inputs
/// concatenated along the batch dimension, the outputs split back by rows).
#[derive(Debug)]
pub(crate) struct Work {
    pub(crate) parts: Vec<Part>,
}

impl Work {
    pub(crate) fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// The model's inputs: the one request's, or the requests' concatenated.
    fn inputs(&self) -> Result<Tensors> {
        match self.parts.as_slice() {
            [one] => Ok(one.inputs.as_ref().clone()),
            parts => concat(parts),
        }
    }
}

/// Whether `b` can join a batch with `a`: the same inputs, element types and row shapes.
pub(crate) fn mergeable(a: &Tensors, b: &Tensors) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb
                && ta.data.data_type() == tb.data.data_type()
                && ta.shape.get(1..) == tb.shape.get(1..)
        })
}

fn concat(parts: &[Part]) -> Result<Tensors> {
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let rows: usize = parts.iter().map(|p| p.rows).sum();
    let mut out = Vec::with_capacity(first.inputs.len());
    for (i, (name, t)) in first.inputs.iter().enumerate() {
        let arrays: Vec<&dyn arrow::array::Array> = parts
            .iter()
            .filter_map(|p| p.inputs.get(i).map(|(_, t)| t.data.as_ref()))
            .collect();
        let data = arrow::compute::concat(&arrays)?;
        let mut shape = t.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = rows;
        }
        out.push((name.clone(), HostTensor::try_new(shape, data)?));
    }
    Ok(out)
}

/// Splits the outputs of a merged batch into `rows[i]`-row pieces, in order.
pub(crate) fn split(out: &Tensors, rows: &[usize]) -> Result<Vec<Tensors>> {
    let mut pieces: Vec<Tensors> = vec![Vec::with_capacity(out.len()); rows.len()];
    for (name, t) in out {
        let total = t.shape.first().copied().unwrap_or(0);
        let per_row = t.data.len().checked_div(total).unwrap_or(0);
        let mut at = 0;
        for (piece, &n) in pieces.iter_mut().zip(rows) {
            let mut shape = t.shape.clone();
            if let Some(d) = shape.first_mut() {
                *d = n;
            }
            let data = t.data.slice(at * per_row, n * per_row);
            at += n;
            piece.push((name.clone(), HostTensor::try_new(shape, data)?));
        }
    }
    Ok(pieces)
}

/// Reports the instance dead if its thread ends any other way than through [`run`]'s returns.
struct ExitGuard {
    shared: Option<Arc<Shared>>,
    id: u64,
}

impl ExitGuard {
    fn disarm(&mut self) {
        self.shared = None;
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.on_death(
                self.id,
                format!("instance {}'s thread ended unexpectedly", self.id),
            );
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The body of instance `id`'s thread.
pub(super) fn run(shared: Arc<Shared>, id: u64, jobs: mpsc::Receiver<Work>) {
    let mut guard = ExitGuard {
        shared: Some(shared.clone()),
        id,
    };
    let loaded = catch_unwind(AssertUnwindSafe(|| load(&shared, id)));
    let mut backend = match loaded {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            guard.disarm();
            shared.on_load_failed(id, e);
            return;
        }
        Err(p) => {
            guard.disarm();
            shared.on_load_failed(
                id,
                Error::external(format!(
                    "instance {id} panicked while loading: {}",
                    panic_message(p.as_ref())
                )),
            );
            return;
        }
    };
    if !shared.on_ready(id) {
        guard.disarm();
        return;
    }
    while let Ok(work) = jobs.recv() {
        if !shared.take_work(id, &work) {
            continue;
        }
        let rows = work.rows();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            work.inputs().and_then(|inputs| backend.run(inputs))
        }));
        let run = started.elapsed();
        match result {
            Err(p) => {
                guard.disarm();
                drop(backend);
                shared.on_death(
                    id,
                    format!("instance {id} panicked: {}", panic_message(p.as_ref())),
                );
                return;
            }
            Ok(Err(e)) if !backend.healthy() => {
                guard.disarm();
                shared.on_death(id, format!("instance {id} is gone: {}", e.message()));
                return;
            }
            Ok(result) => {
                let result =
                    result.and_then(|out| check_outputs(shared.label(), backend.info(), rows, out));
                shared.on_complete(id, &work, result, run);
            }
        }
    }
    // The channel closed: the pool stopped this instance.
    guard.disarm();
}

/// Loads the backend and runs the warm-up batch (when the pool warms up).
fn load(shared: &Shared, id: u64) -> Result<Box<dyn Backend>> {
    let index = usize::try_from(id).unwrap_or(usize::MAX);
    let mut backend = (shared.factory)(index)?;
    if !shared.config.warm_up {
        return Ok(backend);
    }
    let inputs = warmup_inputs(backend.info())?;
    let out = backend.run(inputs).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "instance {id} of {} failed its warm-up batch: {}",
                shared.label(),
                e.message()
            ),
        )
    })?;
    check_outputs(shared.label(), backend.info(), 1, out)?;
    Ok(backend)
}

/// One row of zeros for every model input (dynamic dimensions set to 1).
pub fn warmup_inputs(info: &ModelInfo) -> Result<Tensors> {
    let mut inputs = Vec::with_capacity(info.inputs.len());
    for t in &info.inputs {
        let shape: Vec<usize> = t.shape.iter().map(|d| d.unwrap_or(1)).collect();
        let n: usize = shape.iter().product();
        let dt = t.element.to_arrow().ok_or_else(|| {
            Error::config(format!(
                "model {}: input '{}' has element type {}, which weir cannot feed",
                info.file_name(),
                t.name,
                t.element
            ))
        })?;
        let zeros = arrow::compute::cast(&Int8Array::from(vec![0i8; n]), &dt)?;
        inputs.push((t.name.clone(), HostTensor::try_new(shape, zeros)?));
    }
    Ok(inputs)
}

/// Checks a backend's answer against the model's declared outputs: every output present, the
/// batch dimension equal to `rows`, fixed dimensions as declared. Errors start with `label`
/// (`service 'clf'`).
pub fn check_outputs(label: &str, info: &ModelInfo, rows: usize, out: Tensors) -> Result<Tensors> {
    let model = info.file_name();
    for t in &info.outputs {
        let Some((_, got)) = out.iter().find(|(n, _)| *n == t.name) else {
            return Err(Error::input(format!(
                "{label}: model {model} returned no output '{}' (it returned: {})",
                t.name,
                out.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let fits = got.shape.len() == t.shape.len()
            && got.shape.first() == Some(&rows)
            && got
                .shape
                .iter()
                .zip(&t.shape)
                .skip(1)
                .all(|(g, d)| d.is_none_or(|d| d == *g));
        if !fits {
            return Err(Error::input(format!(
                "{label}: model {model} returned output '{}' with the wrong shape {:?} for a batch of {rows} rows (the model declares {})",
                t.name,
                got.shape,
                format_shape(&t.shape, Some(&t.symbols))
            )));
        }
    }
    Ok(out)
}
