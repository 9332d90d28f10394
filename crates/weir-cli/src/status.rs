//! `weir status`: a running job seen through its web API (`GET /api/v1/overview`), and how the
//! clients of that API (`weir status`, `weir services`, `weir scale`) find a job: its API file,
//! `.weir/jobs/JOB/api.json`, written by `weir run` with the address and the token.

use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use weir_types::{Error, Result};
use weir_web::{ApiFile, Client};

/// Where running jobs' directories are, relative to the working directory.
pub const JOBS_DIR: &str = ".weir/jobs";

/// `weir status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job's name (its API file is `.weir/jobs/JOB/api.json`). Default: the only running
    /// job with an API file there.
    #[arg(long)]
    job: Option<String>,
    /// The job's API file (overrides `--job`).
    #[arg(long, value_name = "FILE")]
    api_file: Option<PathBuf>,
    /// Print the API's overview document as JSON instead.
    #[arg(long)]
    json: bool,
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The API file of the job named by `job` / `file`, or of the only running job.
pub fn find_api(job: Option<&str>, file: Option<&Path>) -> Result<ApiFile> {
    if let Some(f) = file {
        return ApiFile::read(f);
    }
    if let Some(job) = job {
        return ApiFile::read(&Path::new(JOBS_DIR).join(job).join("api.json"));
    }
    let running: Vec<ApiFile> = std::fs::read_dir(JOBS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| ApiFile::read(&e.path().join("api.json")).ok())
                .filter(|f| alive(f.pid))
                .collect()
        })
        .unwrap_or_default();
    match running.len() {
        1 => Ok(running
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("no job"))?),
        0 => Err(Error::config(format!(
            "no running job found (no API file of a live process in {JOBS_DIR}/*/api.json); give --job or --api-file, or start one with `weir run` (its --http must not be off)"
        ))),
        _ => Err(Error::config(format!(
            "several jobs run ({}); choose one with --job",
            running
                .iter()
                .map(|f| f.job.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn n(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x.abs() >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x.abs() >= 1e4 => format!("{:.1}k", x / 1e3),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

/// The overview as text.
pub fn render(o: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let j = &o["job"];
    let _ = writeln!(
        s,
        "job '{}' {} for {:.0}s (pid {}, attempt {}): {} rows read, {} written, {} dead letters{}",
        j["name"].as_str().unwrap_or("?"),
        j["state"].as_str().unwrap_or("?"),
        j["uptime_s"].as_f64().unwrap_or(0.0),
        j["pid"],
        j["attempts"],
        n(&j["rows_read"]),
        n(&j["rows_written"]),
        n(&j["dead_letters"]),
        j["failure"]
            .as_str()
            .map(|f| format!("; last failure: {f}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "{:<20} {:<8} {:>3} {:>10} {:>10} {:>9} {:>5} {:>5} {:>5} {:>24}",
        "step", "role", "par", "rows in", "rows out", "rows/s", "busy", "bp", "idle", "watermark"
    );
    for op in o["operators"].as_array().into_iter().flatten() {
        let r = &op["rates"];
        let c = &op["counters"];
        let rate = if op["role"] == "sink" {
            &r["rows_in_per_s"]
        } else {
            &r["rows_out_per_s"]
        };
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:>3} {:>10} {:>10} {:>9} {:>5} {:>5} {:>5} {:>24}",
            op["name"].as_str().unwrap_or("?"),
            op["role"].as_str().unwrap_or("?"),
            op["parallelism"],
            n(&c["rows_in"]),
            n(&c["rows_out"]),
            n(rate),
            pct(&r["busy"]),
            pct(&r["backpressured"]),
            pct(&r["idle"]),
            op["watermark_ms"]
                .as_i64()
                .map_or("-".to_string(), |w| w.to_string())
                + &match op["watermark_idle_subtasks"].as_u64() {
                    Some(n) if n > 0 => format!(" ({n} idle)"),
                    _ => String::new(),
                },
        );
    }
    let c = &o["checkpoints"];
    if c["enabled"] == true {
        let t = &c["totals"];
        let _ = writeln!(
            s,
            "checkpoints: {} completed, {} failed, {} in progress, newest complete {}",
            t["completed"], t["failed"], t["in_progress"], t["last_completed"]
        );
    }
    for d in o["dead_letters"]["counts"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "dead letters: {} x {} ({})",
            d["operator"].as_str().unwrap_or("?"),
            d["count"],
            d["reason"].as_str().unwrap_or("?")
        );
    }
    for svc in o["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "service '{}': {} ready, {} loading, {} queued, {} answered, p99 {}",
            svc["name"].as_str().unwrap_or("?"),
            svc["ready"],
            svc["loading"],
            svc["queued"],
            svc["answered"],
            svc["latency_p99_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0} ms"))
        );
    }
    for r in o["why"]["current"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "why slow: {}", r["message"].as_str().unwrap_or("?"));
    }
    s
}

/// `weir status`.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let client = Client::new(find_api(args.job.as_deref(), args.api_file.as_deref())?)?;
    let o: Value = client.get("/api/v1/overview")?;
    if args.json {
        println!("{o}");
    } else {
        print!("{}", render(&o));
    }
    Ok(ExitCode::SUCCESS)
}
