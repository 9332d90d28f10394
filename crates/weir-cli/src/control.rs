//! The control side of `weir`: `weir run` opens the job's control endpoint when the spec declares
//! services ([`open`]); `weir scale SERVICE N` and `weir services` find it through the control
//! file and call it with its token.

use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use weir_serve::control::{self, ControlEndpoint, ControlFile};
use weir_types::{Error, Result};

/// Which running job to talk to.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Print each service's status as one JSON object per line (with the latency histogram).
    #[arg(long)]
    json: bool,
    /// The job's name (its control file is `.weir/control/JOB.json`). Default: the only job
    /// with a control file there.
    #[arg(long)]
    job: Option<String>,
    /// The job's control file (overrides `--job`).
    #[arg(long, value_name = "FILE")]
    control_file: Option<PathBuf>,
}

/// `weir scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The service's name (`services[].name` in the spec).
    service: String,
    /// The number of instances wanted.
    instances: usize,
    #[command(flatten)]
    job: JobArgs,
}

const DIR: &str = ".weir/control";

fn default_file(job: &str) -> PathBuf {
    Path::new(DIR).join(format!("{job}.json"))
}

/// Starts the control endpoint when the plan registered services, and writes its control file.
pub fn open(
    plan: &weir_plan::Plan,
    port: u16,
    file: Option<&Path>,
) -> Result<Option<ControlEndpoint>> {
    if weir_serve::registered_services().is_empty() {
        return Ok(None);
    }
    let job = &plan.graph.config.name;
    let mut ep = ControlEndpoint::start(port)?;
    let path = file.map_or_else(|| default_file(job), Path::to_path_buf);
    ep.write_file(&path, job)?;
    tracing::info!(
        "control endpoint on {} (token in {}): weir scale SERVICE N --control-file {}",
        ep.addr(),
        path.display(),
        path.display()
    );
    Ok(Some(ep))
}

fn find(args: &JobArgs) -> Result<ControlFile> {
    if let Some(f) = &args.control_file {
        return ControlFile::read(f);
    }
    if let Some(job) = &args.job {
        return ControlFile::read(&default_file(job));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => ControlFile::read(one),
        [] => Err(Error::config(format!(
            "no running job with services found (no control file in {DIR}); give --control-file"
        ))),
        many => Err(Error::config(format!(
            "several jobs have control files in {DIR} ({}); choose one with --job",
            many.iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `weir scale SERVICE N`.
pub fn scale(args: ScaleArgs) -> Result<ExitCode> {
    let f = find(&args.job)?;
    let said = control::scale(&f.addr, &f.token, &args.service, args.instances)?;
    println!("{said}");
    Ok(ExitCode::SUCCESS)
}

/// `weir services`: one line per service, then the process ids of out-of-process instances.
pub fn services(args: JobArgs) -> Result<ExitCode> {
    let f = find(&args)?;
    for reply in control::status(&f.addr, &f.token)? {
        if args.json {
            let line = serde_json::to_string(&reply)
                .map_err(|e| Error::internal("cannot encode a service status").with_source(e))?;
            println!("{line}");
            continue;
        }
        let s = &reply.status;
        println!(
            "{}: {} ready, {} loading, {} draining (target {}), {} queued, {} in flight, {:.0}% busy, {} answered, p99 {}, {} retries, {} deaths, {} failed{}{}",
            s.name,
            s.ready,
            s.loading,
            s.draining,
            s.target,
            s.queued,
            s.in_flight,
            s.utilisation * 100.0,
            s.answered,
            reply
                .latency_p99_ms
                .map_or("-".into(), |v| format!("{v:.0} ms")),
            s.retries,
            s.deaths,
            s.failed,
            if s.processes.is_empty() {
                String::new()
            } else {
                format!(
                    "; processes {}",
                    s.processes
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            },
            reply
                .why_slow
                .as_deref()
                .map(|w| format!("; {w}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
