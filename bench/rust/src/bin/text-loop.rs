//! `text-loop`: the hand-written Rust baseline of the text benchmark, what weir's text pipeline
//! (`bench/text/weir.yaml`) does, with no engine — the straightforward loop.
//!
//! 1. Reads `--input` (one sentence per line) and cuts it into batches of `--batch-size` in input
//!    order (no sorting by length).
//! 2. A helper thread tokenizes batch *k + 1* while the model runs on batch *k* (at most
//!    `--prefetch` batches wait): MiniLM's `tokenizer.json` with its fixed padding turned off and
//!    truncation at 128 (`encode_batch_fast`, as weir's `tokenize`), then pads the batch to its
//!    longest row (`[PAD]` = 0, mask 0, token types 0).
//! 3. The calling thread runs MiniLM int8 with ONNX Runtime (`--threads` intra-op threads, as
//!    weir's `infer` with `cpus: N`) on `input_ids`, `attention_mask`, `token_type_ids`, then
//!    mean-pools `last_hidden_state` with the mask and L2-normalises.
//! 4. At the end it writes `id, embedding` (line number, `FixedSizeList<f32, 384>`) to one
//!    Parquet file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{ArrayRef, Int64Array};
use clap::Parser;
use ort::session::SessionInputValue;
use ort::value::TensorRef;
use weir_bench::ai;

/// Embed sentences with MiniLM, hand-written.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Sentences, one per line.
    #[arg(long, default_value = "data/generated/text/sentences.txt")]
    input: PathBuf,
    /// The MiniLM model. Default `$WEIR_MODELS/minilm-int8/model.onnx`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Its tokenizer. Default `$WEIR_MODELS/minilm-tokenizer/tokenizer.json`.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Sentences per model run.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most tokens per sentence (longer ones are truncated).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Let the intra-op threads sleep instead of spinning while they wait (ONNX Runtime spins by
    /// default, as does weir's `infer` unless `spin: false`).
    #[arg(long)]
    no_spin: bool,
    /// Tokenized batches that may wait for the model (0: no overlap).
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Output Parquet file.
    #[arg(long, default_value = "out/bench/text-loop.parquet")]
    out: PathBuf,
}

/// Embedding dimension of all-MiniLM-L6-v2.
const DIM: usize = 384;

struct Prepared {
    rows: usize,
    len: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// A borrowed `[rows, len]` int64 model input.
fn view(shape: [usize; 2], v: &[i64]) -> Result<SessionInputValue<'_>> {
    Ok(TensorRef::from_array_view((shape, v))
        .map_err(|e| anyhow!("input tensor: {e}"))?
        .into())
}

fn models_dir() -> Result<PathBuf> {
    Ok(PathBuf::from(std::env::var_os("WEIR_MODELS").ok_or_else(
        || anyhow!("WEIR_MODELS is not set: `source .weir/env.sh`"),
    )?))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let start = Instant::now();
    let model = match args.model {
        Some(m) => m,
        None => models_dir()?.join("minilm-int8/model.onnx"),
    };
    let tok_path = match args.tokenizer {
        Some(t) => t,
        None => models_dir()?.join("minilm-tokenizer/tokenizer.json"),
    };
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let tokenizer = ai::minilm_tokenizer(&tok_path, args.max_length)?;
    let env = ai::ort_environment()?;
    let mut session = ai::open_session(&env, &model, args.threads, !args.no_spin)?;
    let jobs: Vec<Vec<String>> = lines.chunks(args.batch_size).map(<[_]>::to_vec).collect();

    let prepare = |batch: Vec<String>| -> Result<Prepared> {
        let enc = tokenizer
            .encode_batch_fast(batch, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let rows = enc.len();
        let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut p = Prepared {
            rows,
            len,
            ids: vec![0; rows * len],
            mask: vec![0; rows * len],
            types: vec![0; rows * len],
        };
        for (r, e) in enc.iter().enumerate() {
            for (k, id) in e.get_ids().iter().enumerate() {
                p.ids[r * len + k] = i64::from(*id);
                p.mask[r * len + k] = 1;
            }
            for (k, t) in e.get_type_ids().iter().enumerate() {
                p.types[r * len + k] = i64::from(*t);
            }
        }
        Ok(p)
    };
    let mut embeddings: Vec<f32> = Vec::with_capacity(lines.len() * DIM);
    let (mut model_time, mut tokens, mut padded) = (0f64, 0usize, 0usize);
    let mut consume = |p: Prepared| -> Result<()> {
        let t = Instant::now();
        let shape = [p.rows, p.len];
        let outputs = session
            .run(vec![
                ("input_ids", view(shape, &p.ids)?),
                ("attention_mask", view(shape, &p.mask)?),
                ("token_type_ids", view(shape, &p.types)?),
            ])
            .map_err(|e| anyhow!("minilm: {e}"))?;
        let (_, hidden) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("last_hidden_state: {e}"))?;
        for (r, h) in hidden.chunks_exact(p.len * DIM).enumerate() {
            ai::pool_normalize(h, &p.mask[r * p.len..][..p.len], DIM, &mut embeddings);
        }
        tokens += p.mask.iter().filter(|m| **m != 0).count();
        padded += p.rows * p.len;
        model_time += t.elapsed().as_secs_f64();
        Ok(())
    };
    if args.prefetch == 0 {
        for job in jobs {
            consume(prepare(job)?)?;
        }
    } else {
        ai::pipelined(jobs, args.prefetch, prepare, consume)?;
    }
    let count = embeddings.len() / DIM;
    if count != lines.len() {
        bail!("{} sentences but {count} embeddings", lines.len());
    }
    ai::write_parquet(
        &args.out,
        vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..count as i64)) as ArrayRef,
            ),
            ("embedding", ai::vectors(embeddings, DIM)?),
        ],
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "text-loop: rows_out={count} in {secs:.2} s ({:.1} sentences/s; model {model_time:.2} s; {tokens} tokens, {padded} with padding = {:.0} % padding); wrote {}",
        count as f64 / secs,
        100.0 * (padded - tokens) as f64 / padded.max(1) as f64,
        args.out.display()
    );
    Ok(())
}
