//! `images-loop`: the hand-written Rust baseline of the image benchmark, what weir's image
//! pipeline (`bench/images/weir.yaml`) does, with no engine.
//!
//! 1. Lists `*.jpg` of `--dir` (sorted by name) and cuts the list into batches of `--batch-size`.
//! 2. A helper thread prepares batch *k + 1* while the model runs on batch *k* (at most
//!    `--prefetch` prepared batches wait): it reads the batch's files, then decodes (zune-jpeg, RGB)
//!    and preprocesses (fast_image_resize bilinear to shorter side 256, centre crop 224, BGR minus
//!    mean, NHWC f32) the images in parallel on rayon's global pool (one thread per core), into
//!    one `[n, 224, 224, 3]` buffer — the same work, crates and parallelism as weir's
//!    `decode_image` → `resize` → `center_crop` → `to_tensor`.
//! 3. The calling thread runs open-nsfw with ONNX Runtime (`--threads` intra-op threads, as weir's
//!    `infer` with `cpus: N`) and takes the arg-max of `outputs` `[n, 2]`.
//! 4. At the end it writes `path, label, nsfw` (file name, arg-max index, unsafe probability) to
//!    one Parquet file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{ArrayRef, Float32Array, Int64Array, StringArray};
use clap::Parser;
use fast_image_resize::Resizer;
use ort::session::SessionInputValue;
use rayon::prelude::*;
use std::sync::Arc;
use weir_bench::ai;

/// Classify a folder of JPEGs with open-nsfw, hand-written.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Folder of images (`*.jpg`).
    #[arg(long, default_value = "data/generated/images")]
    dir: PathBuf,
    /// The open-nsfw model. Default `$WEIR_MODELS/opennsfw/open-nsfw.onnx`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images per model run.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Let the intra-op threads sleep instead of spinning while they wait (ONNX Runtime spins by
    /// default, as does weir's `infer` unless `spin: false`).
    #[arg(long)]
    no_spin: bool,
    /// Prepared batches that may wait for the model (0: no overlap, prepare then run).
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Output Parquet file.
    #[arg(long, default_value = "out/bench/images-loop.parquet")]
    out: PathBuf,
}

struct Prepared {
    names: Vec<String>,
    tensor: Vec<f32>,
}

fn prepare(paths: Vec<PathBuf>) -> Result<Prepared> {
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<_>>()?;
    let mut tensor = vec![0f32; ai::IMAGE_LEN * paths.len()];
    tensor
        .par_chunks_mut(ai::IMAGE_LEN)
        .zip(files.par_iter())
        .try_for_each_init(Resizer::new, |resizer, (out, bytes)| -> Result<()> {
            let (w, h, rgb) = ai::decode_rgb(bytes)?;
            ai::preprocess_nsfw(resizer, w, h, &rgb, out)
        })?;
    let names = paths
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    Ok(Prepared { names, tensor })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let start = Instant::now();
    let model = match args.model {
        Some(m) => m,
        None => PathBuf::from(
            std::env::var_os("WEIR_MODELS").ok_or_else(|| anyhow!("WEIR_MODELS is not set"))?,
        )
        .join("opennsfw/open-nsfw.onnx"),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("listing {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no *.jpg in {}", args.dir.display());
    }
    let env = ai::ort_environment()?;
    let mut session = ai::open_session(&env, &model, args.threads, !args.no_spin)?;
    let jobs: Vec<Vec<PathBuf>> = paths.chunks(args.batch_size).map(<[_]>::to_vec).collect();
    let (mut names, mut labels, mut nsfw) = (Vec::new(), Vec::new(), Vec::new());
    let mut model_time = 0f64;
    let mut consume = |p: Prepared| -> Result<()> {
        let n = p.names.len();
        let t = Instant::now();
        let input = ort::value::TensorRef::from_array_view((
            [n, ai::CROP as usize, ai::CROP as usize, 3],
            &p.tensor[..],
        ))
        .map_err(|e| anyhow!("input tensor: {e}"))?;
        let input: SessionInputValue<'_> = input.into();
        let outputs = session
            .run(vec![("input:0", input)])
            .map_err(|e| anyhow!("open-nsfw: {e}"))?;
        let (_, scores) = outputs["outputs"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("outputs: {e}"))?;
        for s in scores.chunks_exact(2) {
            labels.push(i64::from(s[1] > s[0]));
            nsfw.push(s[1]);
        }
        names.extend(p.names);
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
    let count = names.len();
    ai::write_parquet(
        &args.out,
        vec![
            ("path", Arc::new(StringArray::from(names)) as ArrayRef),
            ("label", Arc::new(Int64Array::from(labels))),
            ("nsfw", Arc::new(Float32Array::from(nsfw))),
        ],
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "images-loop: rows_out={count} in {secs:.2} s ({:.1} images/s; model {model_time:.2} s); wrote {}",
        count as f64 / secs,
        args.out.display()
    );
    Ok(())
}
