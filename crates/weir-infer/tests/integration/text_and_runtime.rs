//! Length bucketing on MiniLM (with mean_pool + l2_normalize) and the whole operator chain through
//! `weir_runtime::Runtime`, on real ONNX Runtime and real models.
#![allow(clippy::unwrap_used)]

use crate::common;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use common::*;
use std::sync::{Arc, Mutex};
use weir_infer::{InferSpec, L2NormalizeSpec, MeanPoolSpec, TopKSpec};
use weir_runtime::*;

/// 50 "sentences": [CLS] + 1..=40 pseudo-random word-piece ids + [SEP].
fn sentences() -> Vec<Vec<i64>> {
    (0..50u64)
        .map(|i| {
            let len = 1 + ((i * 37 + 11) % 40) as usize;
            let mut ids = vec![101];
            ids.extend(
                noise(i + 7, len)
                    .into_iter()
                    .map(|v| 1000 + ((v + 1.0) * 2000.0) as i64),
            );
            ids.push(102);
            ids
        })
        .collect()
}

fn text_batch(rows: &[Vec<i64>], first: u64) -> RecordBatch {
    let masks: Vec<Vec<i64>> = rows.iter().map(|r| vec![1; r.len()]).collect();
    let types: Vec<Vec<i64>> = rows.iter().map(|r| vec![0; r.len()]).collect();
    let ids = id_list(rows);
    let list_type = ids.data_type().clone();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("input_ids", list_type.clone(), true),
        Field::new("attention_mask", list_type.clone(), true),
        Field::new("token_type_ids", list_type, true),
    ]));
    let n = rows.len() as u64;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(arrow::array::UInt64Array::from_iter_values(
                first..first + n,
            )),
            ids,
            id_list(&masks),
            id_list(&types),
        ],
    )
    .unwrap()
}

/// Runs MiniLM then mean_pool and l2_normalize; returns ids and embeddings.
fn embed(spec: &InferSpec, batches: Vec<RecordBatch>) -> (Vec<u64>, Vec<Vec<f32>>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = batches[0].schema();
    let mut infer = spec.create(&schema).unwrap();
    let s1 = spec.output_schema(&schema).unwrap();
    let pool = MeanPoolSpec {
        column: "last_hidden_state".into(),
        mask: Some("attention_mask".into()),
        output: "embedding".into(),
        dim: None,
    };
    let s2 = pool.output_schema(&s1).unwrap();
    let norm = L2NormalizeSpec {
        column: "embedding".into(),
        output: None,
    };
    let (out, dead) = rt
        .block_on(drive(infer.as_mut(), batches, ErrorPolicy::Fail))
        .unwrap();
    assert!(dead.is_empty());
    let (out, _) = rt
        .block_on(drive(
            pool.create(&s1).unwrap().as_mut(),
            out,
            ErrorPolicy::Fail,
        ))
        .unwrap();
    let (out, _) = rt
        .block_on(drive(
            norm.create(&s2).unwrap().as_mut(),
            out,
            ErrorPolicy::Fail,
        ))
        .unwrap();
    (ids(&out), rows_f32(&out, "embedding"))
}

#[test]
fn length_bucketing_matches_row_by_row() {
    let s = sentences();
    let batches = vec![text_batch(&s[..20], 0), text_batch(&s[20..], 20)];
    let mut one = InferSpec::new(minilm());
    one.batch.max_size = 1;
    one.batch.adaptive = false;
    let (ids1, e1) = embed(&one, batches.clone());
    let mut bucketed = InferSpec::new(minilm());
    bucketed.batch.max_size = 8;
    bucketed.batch.adaptive = false;
    bucketed.instances = 2;
    assert_eq!(
        bucketed.sort_by_length, None,
        "default: on for ragged inputs"
    );
    let (ids2, e2) = embed(&bucketed, batches);
    assert_eq!(ids1, (0..50).collect::<Vec<u64>>());
    assert_eq!(ids2, ids1);
    let mut worst = 0f32;
    for (a, b) in e1.iter().zip(&e2) {
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("minilm bucketed vs row-by-row: max |diff| = {worst:e}");
    // Identical, bit for bit: padding is masked and cut off again, order is restored.
    assert_eq!(e2, e1);
}

#[test]
fn minilm_known_sentence_embedding() {
    // "A man is eating food." tokenised as in scripts/README.md "Model facts".
    let ids = vec![vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102]];
    let mut spec = InferSpec::new(minilm());
    spec.batch.max_size = 4;
    let (_, e) = embed(&spec, vec![text_batch(&ids, 0)]);
    let want = [0.0310f32, 0.0067, -0.0044, 0.0475, -0.1399];
    for (x, y) in e[0].iter().zip(want) {
        assert!((x - y).abs() < 2e-3, "{:?}", &e[0][..5]);
    }
}

/// Emits `n` batches of `rows` CHW image tensors, then ends.
struct Images {
    left: usize,
    rows: usize,
    next: usize,
    schema: SchemaRef,
}

#[async_trait]
impl Source for Images {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
        if self.left == 0 {
            return Ok(SourceEvent::Finished);
        }
        self.left -= 1;
        let b = image_batch(&[3, 224, 224], self.next, self.rows);
        self.next += self.rows;
        Ok(SourceEvent::Batch(b))
    }
}

struct Keep(Arc<Mutex<Vec<RecordBatch>>>);

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

#[test]
fn infer_and_top_k_through_the_runtime() {
    let model = orientation();
    let schema = image_batch(&[3, 224, 224], 0, 1).schema();
    let mut spec = InferSpec::new(&model);
    spec.instances = 2;
    spec.batch.max_size = 4;
    let s1 = spec.output_schema(&schema).unwrap();
    let topk = TopKSpec {
        column: "fetch_name_0".into(),
        k: 1,
        labels: Some("metadata:character".into()),
        model: Some(model.clone()),
        output_label: "angle".into(),
        output_score: "p".into(),
    };
    let s2 = topk.output_schema(&s1).unwrap();
    assert_eq!(
        s2.field_with_name("angle").unwrap().data_type(),
        &DataType::Utf8
    );

    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut g = JobGraph::new(JobConfig::default());
    let src_schema = schema.clone();
    let src = g.add_source("images", 1, move |_| {
        Ok(Box::new(Images {
            left: 5,
            rows: 3,
            next: 0,
            schema: src_schema.clone(),
        }))
    });
    let (sp, sc) = (spec.clone(), schema.clone());
    let inf = g.add_operator("infer", 1, move |_| sp.create(&sc));
    let (tk, s1c) = (topk.clone(), s1.clone());
    let top = g.add_operator("top_k", 1, move |_| tk.create(&s1c));
    let k = kept.clone();
    let sink = g.add_sink("keep", 1, move |_| Ok(Box::new(Keep(k.clone()))));
    g.connect(src, inf, Partitioning::Forward);
    g.connect(inf, top, Partitioning::Forward);
    g.connect(top, sink, Partitioning::Forward);
    let report = Runtime::new(2).unwrap().run(g).unwrap();

    let out = kept.lock().unwrap().clone();
    assert_eq!(ids(&out), (0..15).collect::<Vec<u64>>());
    for b in &out {
        let angle = b
            .column_by_name("angle")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let p = b.column_by_name("p").unwrap().as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            assert!(["0", "90", "180", "270"].contains(&angle.value(i)));
            assert!(p.value(i) >= 0.25 && p.value(i) <= 1.0);
        }
    }
    let infer = report.nodes.iter().find(|n| n.name == "infer").unwrap();
    assert_eq!(infer.totals.rows_out, 15);
    assert!(infer.totals.batch_rows_last >= 1);
    assert!(infer.totals.batch_latency_us_ewma > 0);
}
