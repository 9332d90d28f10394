//! Measures `vector_search` throughput (queries/s) for index sizes of 10k and 100k rows of
//! dimension 384 (random unit vectors, k 10, cosine, batches of 64 queries). Run optimised:
//!
//! ```text
//! cargo run --release -p weir-vector --example vector_search_bench
//! ```
//!
//! Optional arguments: the index sizes to measure, e.g. `-- 10000 100000 1000000`.

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::sync::Arc;
use std::time::Instant;
use weir_runtime::{Emitter, ErrorPolicy, OperatorContext};
use weir_vector::VectorSearchSpec;

const DIM: usize = 384;
const BATCH: usize = 64;

/// Deterministic pseudo-random floats in [-1, 1) (xorshift32).
fn floats(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn vectors(values: Vec<f32>) -> Result<ArrayRef, Box<dyn std::error::Error>> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        item,
        DIM as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    let dir = tempfile::tempdir()?;
    for rows in sizes {
        let path = dir.path().join(format!("index-{rows}.parquet"));
        let embedding = vectors(floats(rows * DIM, rows as u32))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("doc", DataType::Utf8, false),
            Field::new("embedding", embedding.data_type().clone(), false),
        ]));
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
        let docs: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("doc-{i}")),
        ));
        let index = RecordBatch::try_new(schema.clone(), vec![ids, docs, embedding])?;
        let mut w = ArrowWriter::try_new(std::fs::File::create(&path)?, schema, None)?;
        w.write(&index)?;
        w.close()?;

        let mut spec = VectorSearchSpec::new(&path);
        spec.k = 10;
        let qschema = Arc::new(Schema::new(vec![Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                DIM as i32,
            ),
            false,
        )]));
        let mut op = spec.create(&qschema)?;
        let mut ctx = OperatorContext::for_test("vector_search", ErrorPolicy::Fail);
        let t = Instant::now();
        op.open(&mut ctx).await?;
        let load = t.elapsed().as_secs_f64();

        let batches = if rows <= 20_000 { 32 } else { 8 };
        let queries: Vec<RecordBatch> = (0..=batches)
            .map(|b| {
                let col = vectors(floats(BATCH * DIM, 1_000_000 + b as u32))?;
                Ok(RecordBatch::try_new(qschema.clone(), vec![col])?)
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        let mut out = Emitter::default();
        // Warm-up batch, not timed.
        op.process_batch(queries[0].clone(), &mut ctx, &mut out)
            .await?;
        out.take();
        let t = Instant::now();
        let mut answered = 0;
        for q in &queries[1..] {
            op.process_batch(q.clone(), &mut ctx, &mut out).await?;
            answered += out.take().iter().map(RecordBatch::num_rows).sum::<usize>();
        }
        let secs = t.elapsed().as_secs_f64();
        let qps = answered as f64 / secs;
        let gflops = 2.0 * (rows * DIM) as f64 * qps / 1e9;
        println!(
            "index {rows} x {DIM}: load {load:.2} s; {answered} queries in {secs:.2} s = {qps:.0} \
             queries/s ({:.1} ms per batch of {BATCH}, {gflops:.1} GFLOP/s), k 10, cosine",
            secs * 1e3 / batches as f64
        );
    }
    Ok(())
}
