//! `arrow-loop`: the hand-written arrow-rs baseline of the `filter` benchmark.
//! One thread reads the Parquet file with `ParquetRecordBatchReader`, runs
//! `weir_bench::filter_project` on each batch (arrow compute kernels) and
//! drops the result into a blackhole that only counts rows.

use std::fs::File;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_bench::filter_project::{INPUT_COLUMNS, filter_project, output_schema};

/// Filter + project a Parquet file with plain arrow-rs, single-threaded.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Input Parquet file (from gen-events).
    #[arg(long, default_value = "data/generated/events.parquet")]
    file: PathBuf,
    /// Rows per decoded batch (weir's default is 8192).
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Decode every column instead of only the four the query uses
    /// (turns off projection pushdown into the Parquet reader).
    #[arg(long)]
    all_columns: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("reading Parquet metadata of {}", args.file.display()))?
        .with_batch_size(args.batch_size);
    if !args.all_columns {
        let schema = builder.schema();
        let indices = INPUT_COLUMNS
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build()?;

    let out_schema = output_schema();
    let (mut rows_in, mut rows_out, mut batches) = (0u64, 0u64, 0u64);
    for batch in reader {
        let batch = batch?;
        rows_in += batch.num_rows() as u64;
        batches += 1;
        let out = filter_project(&batch, &out_schema)?;
        // Blackhole: count the rows, hide the batch from the optimiser, drop it.
        rows_out += black_box(out).num_rows() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "arrow-loop: rows_in={rows_in} rows_out={rows_out} batches={batches} elapsed_s={elapsed:.3} rows_per_s={:.0} columns={}",
        rows_in as f64 / elapsed,
        if args.all_columns { "all" } else { "needed" }
    );
    Ok(())
}
