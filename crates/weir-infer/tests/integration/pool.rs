//! An `infer` step's own instances are a pool (`weir_infer::pool`), the same one services run:
//! an instance that panics mid-batch is replaced and its batch re-dispatched (every row answered
//! once, as the model answers it), and a model that cannot be loaded fails the job with the load
//! error instead of turning every row into a dead letter. The backends here are
//! fault-injection stand-ins wrapping the real ONNX Runtime backend.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use weir_infer::{
    Backend, BackendFactory, BackendOptions, HostTensor, InferSpec, ModelInfo, OrtBackend,
};
use weir_runtime::ErrorPolicy;
use weir_types::{Error, Result};

/// Fault-injection stand-in: the real model, except that the `panic_at`-th batch run by any
/// instance panics (killing its instance thread).
struct PanicOnce {
    inner: OrtBackend,
    runs: Arc<AtomicU64>,
    panic_at: u64,
}

impl Backend for PanicOnce {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn run(&mut self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>> {
        if self.runs.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_at {
            panic!("fault injection: the instance crashes");
        }
        self.inner.run(inputs)
    }
}

fn ort() -> BackendOptions {
    BackendOptions {
        cpus: 1,
        gpus: 0,
        spin: false,
    }
}

fn spec() -> InferSpec {
    let mut spec = InferSpec::new(orientation());
    spec.batch.max_size = 4;
    spec.batch.adaptive = false;
    spec.instances = 2;
    spec
}

fn batches() -> Vec<arrow::record_batch::RecordBatch> {
    (0..6)
        .map(|k| image_batch(&[3, 224, 224], k * 4, 4))
        .collect()
}

#[test]
fn an_instance_that_panics_is_replaced_and_every_row_answered_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let input = batches();
    let schema = input[0].schema();
    // The reference: the same rows through a pool that never fails.
    let mut clean = spec()
        .create_with_backend(&schema, OrtBackend::factory(&orientation(), ort()))
        .unwrap();
    let (want, dead) = rt
        .block_on(drive(&mut clean, input.clone(), ErrorPolicy::Fail))
        .unwrap();
    assert!(dead.is_empty());

    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let factory: BackendFactory = Arc::new(move |_| {
        Ok(Box::new(PanicOnce {
            inner: OrtBackend::load(&orientation(), &ort())?,
            runs: r.clone(),
            panic_at: 3,
        }) as Box<dyn Backend>)
    });
    let mut op = spec().create_with_backend(&schema, factory).unwrap();
    let (got, dead) = rt
        .block_on(drive(&mut op, input, ErrorPolicy::Fail))
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(ids(&got), (0..24).collect::<Vec<u64>>());
    assert_eq!(
        rows_f32(&got, "fetch_name_0"),
        rows_f32(&want, "fetch_name_0")
    );
    // 6 batches answered, plus the run that panicked (its batch ran again elsewhere).
    assert_eq!(runs.load(Ordering::SeqCst), 7);
    assert_eq!(op.counters().model_rows(), 24);
}

#[test]
fn a_model_that_cannot_load_fails_the_job_with_the_load_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let input = batches();
    let schema = input[0].schema();
    let factory: BackendFactory = Arc::new(|i| {
        Err(Error::config(format!(
            "fault injection: instance {i} cannot load its model"
        )))
    });
    let mut op = spec().create_with_backend(&schema, factory).unwrap();
    let err = rt
        .block_on(drive(&mut op, input, ErrorPolicy::DeadLetter))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot load its model") && err.contains("failed to load"),
        "{err}"
    );
}
