//! `gen-events`: writes the deterministic synthetic `events` Parquet file the
//! benchmarks read (schema in `weir_bench::events`; snappy, 1 M-row row groups).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use weir_bench::events;

/// Write the synthetic events table as Parquet.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of rows to write.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Output file (parent directories are created).
    #[arg(long, default_value = "data/generated/events.parquet")]
    out: PathBuf,
    /// PRNG seed; the same seed and row count always give the same file.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write next to the target and rename at the end, so an interrupted run
    // never leaves a truncated file where the benchmark script looks for one.
    let mut tmp = args.out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let start = Instant::now();
    let row_groups = events::write_parquet(&tmp, args.seed, args.rows)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    let bytes = std::fs::metadata(&args.out)?.len();
    println!(
        "gen-events: wrote {} rows ({} row groups, {:.1} MiB, snappy, seed {}) to {} in {:.2}s",
        args.rows,
        row_groups,
        bytes as f64 / (1024.0 * 1024.0),
        args.seed,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
