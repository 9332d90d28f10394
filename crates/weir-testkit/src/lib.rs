//! Test support shared by weir's integration tests: run a pipeline spec with variables, read what
//! its sinks wrote as canonical JSON rows, and compare them with golden files
//! (`UPDATE_GOLDEN=1` rewrites the golden files instead of comparing); find what the set-up
//! installed ([`setup`]).

#![warn(missing_docs)]

pub mod kafka_broker;
pub mod s3;
pub mod setup;

use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_infer::ModelService;
use weir_plan::{PlanOptions, plan_file};
use weir_runtime::{JobReport, Runtime};
use weir_types::{Error, Result};

/// The repository root (where `Cargo.toml` of the workspace is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// Runs the spec at `spec` with `${ROOT}` = the repository root, `${OUT}` = `out`, at `parallelism`
/// (the default of steps without their own), on a runtime of 2 task threads.
pub fn run_spec(
    spec: &Path,
    out: &Path,
    parallelism: u32,
    overrides: &[&str],
) -> Result<JobReport> {
    Ok(run_spec_with_services(spec, out, parallelism, overrides)?.0)
}

/// [`run_spec`] with more variables (`weir run --var NAME=VALUE`) besides `ROOT` and `OUT`.
pub fn run_spec_with_vars(
    spec: &Path,
    out: &Path,
    parallelism: u32,
    vars: &[(&str, &str)],
) -> Result<JobReport> {
    let mut all = base_vars(out);
    all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let opts = PlanOptions {
        parallelism: Some(parallelism),
        overrides: Vec::new(),
        vars: all,
    };
    let job = plan_file(spec, &opts)?.start()?;
    Runtime::new(2)?.run(job.graph)
}

/// `ROOT` = the repository root, `OUT` = `out`.
fn base_vars(out: &Path) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    vars.insert("ROOT".to_string(), repo_root().display().to_string());
    vars.insert("OUT".to_string(), out.display().to_string());
    vars
}

/// [`run_spec`], also returning the services the job declared (made when it started), to look at
/// their status after the run.
pub fn run_spec_with_services(
    spec: &Path,
    out: &Path,
    parallelism: u32,
    overrides: &[&str],
) -> Result<(JobReport, Vec<Arc<dyn ModelService>>)> {
    let opts = PlanOptions {
        parallelism: Some(parallelism),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        vars: base_vars(out),
    };
    let job = plan_file(spec, &opts)?.start()?;
    let report = Runtime::new(2)?.run(job.graph)?;
    Ok((report, job.services))
}

/// Every row in `path` (a file, or a directory of `.parquet` / `.jsonl` files; hidden and
/// in-progress files are skipped) as one JSON object per row, sorted.
pub fn read_rows(path: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("cannot list {}", path.display())).with_source(e))?;
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && !name.ends_with(".inprogress") {
                files.push(p);
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        match ext {
            "parquet" => {
                let file = std::fs::File::open(&f).map_err(|e| {
                    Error::io(format!("cannot open {}", f.display())).with_source(e)
                })?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| Error::io(format!("cannot read {}", f.display())).with_source(e))?
                    .build()
                    .map_err(|e| {
                        Error::io(format!("cannot read {}", f.display())).with_source(e)
                    })?;
                for b in reader {
                    rows.extend(batch_rows(&b?)?);
                }
            }
            "jsonl" | "json" => {
                let text = std::fs::read_to_string(&f).map_err(|e| {
                    Error::io(format!("cannot read {}", f.display())).with_source(e)
                })?;
                rows.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(String::from),
                );
            }
            _ => {}
        }
    }
    rows.sort();
    Ok(rows)
}

/// Rows of a batch as JSON objects.
pub fn batch_rows(batch: &RecordBatch) -> Result<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut w = LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .map(String::from)
        .collect())
}

/// Compares `rows` with the golden file `expected` (one row per line); with `UPDATE_GOLDEN=1`
/// writes the file instead. Panics with the first difference.
pub fn check_golden(expected: &Path, rows: &[String]) {
    let text = rows.iter().map(|r| format!("{r}\n")).collect::<String>();
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(expected, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected.display()));
        return;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {} ({e}); run with UPDATE_GOLDEN=1 to create it",
            expected.display()
        )
    });
    let want: Vec<&str> = want.lines().collect();
    for (i, (w, g)) in want.iter().zip(rows).enumerate() {
        assert_eq!(
            *w,
            g.as_str(),
            "{}: row {} differs",
            expected.display(),
            i + 1
        );
    }
    assert_eq!(
        want.len(),
        rows.len(),
        "{}: row count differs",
        expected.display()
    );
}
