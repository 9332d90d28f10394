//! Measures the `tokenize` operator's throughput (sentences/s) on the fortunes corpus with the
//! MiniLM tokenizer. Run optimised:
//!
//! ```text
//! source .weir/env.sh
//! cargo run --release -p weir-text --example tokenize_throughput
//! ```

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use weir_runtime::{Emitter, ErrorPolicy, OperatorContext};
use weir_text::TokenizeSpec;

fn dir(var: &str, sub: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.weir")
            .join(sub)
    })
}

fn corpus() -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let text_dir = dir("WEIR_DATA", "data").join("text");
    let mut files: Vec<_> = std::fs::read_dir(&text_dir)
        .map_err(|e| format!("{}: {e}; run scripts/setup-models.sh", text_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f)?).into_owned();
        out.extend(
            text.split("\n%\n")
                .map(str::trim)
                .filter(|e| !e.is_empty() && *e != "%")
                .map(String::from),
        );
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tokenizer = dir("WEIR_MODELS", "models").join("minilm-tokenizer/tokenizer.json");
    if !tokenizer.is_file() {
        return Err(format!(
            "{} missing: run scripts/setup-models.sh",
            tokenizer.display()
        )
        .into());
    }
    let texts = corpus()?;
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batches: Vec<RecordBatch> = texts
        .chunks(256)
        .map(|c| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from_iter_values(c))],
            )
        })
        .collect::<Result<_, _>>()?;
    // The raw tokenizer, configured as the operator configures it: `encode_batch` (with offsets)
    // against `encode_batch_fast` (without, which the operator uses).
    let mut raw = tokenizers::Tokenizer::from_file(&tokenizer)?;
    raw.with_padding(None);
    raw.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 128,
        ..Default::default()
    }))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for fast in [false, true] {
        let start = Instant::now();
        for chunk in refs.chunks(256) {
            if fast {
                raw.encode_batch_fast(chunk.to_vec(), true)?;
            } else {
                raw.encode_batch(chunk.to_vec(), true)?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "raw tokenizer {}: {:.0} texts/s",
            if fast {
                "encode_batch_fast"
            } else {
                "encode_batch"
            },
            refs.len() as f64 / secs
        );
    }
    let spec = TokenizeSpec::new(tokenizer);
    let mut op = spec.create(&schema)?;
    let mut ctx = OperatorContext::for_test("tokenize", ErrorPolicy::DeadLetter);
    op.open(&mut ctx).await?;
    for round in 0..2 {
        let start = Instant::now();
        let (mut rows, mut tokens) = (0usize, 0usize);
        for b in &batches {
            let mut out = Emitter::default();
            op.process_batch(b.clone(), &mut ctx, &mut out).await?;
            for o in out.take() {
                rows += o.num_rows();
                if let Some(ids) = o.column_by_name("input_ids") {
                    tokens += ids.to_data().child_data()[0].len();
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "round {round}: {rows} texts ({} refused, {tokens} tokens) in {secs:.2} s: \
             {:.0} texts/s, {:.0} tokens/s (batches of 256, max_length 128)",
            ctx.take_dead_letters().len(),
            rows as f64 / secs,
            tokens as f64 / secs
        );
    }
    Ok(())
}
