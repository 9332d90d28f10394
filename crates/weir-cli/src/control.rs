//! The control side of `weir`: `weir run` opens the job's control endpoint when the spec declares
//! services ([`open`]); `weir scale SERVICE N` and `weir services` find it through the control
//! file and call it with its token. With `--shared` they talk to shared-service hosts instead,
//! found through the service registry directory (`weir_serve::host`).

use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use weir_serve::control::{self, ControlEndpoint, ControlFile};
use weir_serve::host::HostEntry;
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
    /// Talk to shared-service hosts (`lifecycle: shared`) instead of a job.
    #[arg(long, conflicts_with_all = ["job", "control_file"])]
    shared: bool,
    /// With `--shared`: the service registry directory. Default: `$WEIR_SERVICES_DIR`, else
    /// `.weir/services`.
    #[arg(long, value_name = "DIR", requires = "shared")]
    services_dir: Option<PathBuf>,
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

/// Starts the control endpoint when the job declared services, and writes its control file.
pub fn open(
    plan: &weir_plan::Plan,
    job: &weir_plan::Job,
    bind: std::net::SocketAddr,
    file: Option<&Path>,
) -> Result<Option<ControlEndpoint>> {
    if job.services.is_empty() {
        return Ok(None);
    }
    let job_name = &plan.logical.job.name;
    let mut ep = ControlEndpoint::start_on(bind, None, job.services.clone())?;
    let path = file.map_or_else(|| default_file(job_name), Path::to_path_buf);
    ep.write_file(&path, job_name)?;
    tracing::info!(
        "control endpoint on {} (token in {}): weir scale SERVICE N --control-file {}",
        ep.addr(),
        path.display(),
        path.display()
    );
    Ok(Some(ep))
}

/// The live shared-service hosts, as control files (one per host).
fn shared_hosts(args: &JobArgs, service: Option<&str>) -> Result<Vec<ControlFile>> {
    let dir = args
        .services_dir
        .clone()
        .unwrap_or_else(weir_serve::host::registry_dir);
    let hosts: Vec<ControlFile> = HostEntry::list(&dir)
        .into_iter()
        .filter(|e| e.alive() && service.is_none_or(|s| s == e.service))
        .map(|e| ControlFile {
            addr: e.control_addr,
            token: e.token,
            pid: e.pid,
            job: e.service,
        })
        .collect();
    if hosts.is_empty() {
        return Err(Error::config(format!(
            "no running shared-service host{} in {}",
            service.map(|s| format!(" for '{s}'")).unwrap_or_default(),
            dir.display()
        )));
    }
    Ok(hosts)
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
    let f = if args.job.shared {
        shared_hosts(&args.job, Some(&args.service))?.remove(0)
    } else {
        find(&args.job)?
    };
    let said = control::scale(&f.addr, &f.token, &args.service, args.instances)?;
    println!("{said}");
    Ok(ExitCode::SUCCESS)
}

/// `weir services`: one line per service, then the process ids of out-of-process instances.
pub fn services(args: JobArgs) -> Result<ExitCode> {
    let replies = if args.shared {
        let mut all = Vec::new();
        for f in shared_hosts(&args, None)? {
            all.extend(control::status(&f.addr, &f.token)?);
        }
        all
    } else {
        let f = find(&args)?;
        control::status(&f.addr, &f.token)?
    };
    for reply in replies {
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
