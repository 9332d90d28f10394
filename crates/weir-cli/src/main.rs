//! The `weir` binary: one executable whose subcommands are its roles.
//!
//! `weir run FILE` plans and runs a pipeline with live progress and an end-of-run summary;
//! `weir validate FILE` plans it and prints the graph without running anything; `weir explain
//! FILE [--json]` prints the logical graph, the rewrites applied and the physical plan;
//! `weir status`, `weir scale SERVICE N` and `weir services` talk to a running job's web API
//! (`weir-web`; the Flight control endpoint with `--control-file` or `--shared`);
//! `weir serve-model` is one out-of-process instance; `weir serve-service` hosts a shared service
//! for several jobs and `weir stop-service` stops one.

mod alloc;
mod budget;
mod checkpoints;
mod control;
mod host;
mod progress;
mod status;
mod summary;

use weir_web::why;

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_plan::{PlanOptions, plan_file};
use weir_runtime::{CheckpointSetup, Runtime};
use weir_types::ErrorKind;

/// Exit statuses of `weir run` (README, `docs/checkpoints.md`).
mod exit {
    /// The job failed (the error is printed).
    pub const FAILED: u8 = 1;
    /// The spec or the command line is invalid.
    pub const INVALID: u8 = 2;
    /// Too many rows became dead letters (`error_budget`).
    pub const OVER_BUDGET: u8 = 3;
    /// The job was stopped by SIGTERM or Ctrl-C before its input ended: everything read was
    /// processed and, with checkpoints, a final checkpoint completed; `--resume` continues.
    pub const STOPPED: u8 = 143;
    /// `--grace` ran out after SIGTERM or Ctrl-C before the job had stopped: the process exited
    /// at once, leaving the last complete checkpoint intact (`--resume` continues from it).
    pub const GRACE_EXPIRED: u8 = 124;
}

/// weir: a streaming dataflow engine for AI workloads.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace). The WEIR_LOG variable (tracing filter syntax) wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until its inputs end (or Ctrl-C / SIGTERM stops it cleanly).
    Run(RunArgs),
    /// Parse and plan a pipeline, print the planned graph with schemas, run nothing.
    Validate(SpecArgs),
    /// Show a running job through its web API: state, every step's rows, rates, load and
    /// watermark, checkpoints, dead letters, services and why it is slow.
    Status(status::StatusArgs),
    /// Plan a pipeline and print its logical graph (nodes, schemas, edges, services), the
    /// rewrites applied (fusion, projection pushdown) and the physical plan (tasks, chains,
    /// edges, parallelism); run, start and write nothing.
    Explain(ExplainArgs),
    /// Show the checkpoints a pipeline has stored.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Serve a model as an out-of-process inference instance: Arrow Flight on 127.0.0.1, prints
    /// `listening on ADDR` once the model has loaded and warmed up; SIGTERM drains and exits.
    ServeModel(ServeModelArgs),
    /// Set the number of instances of a running job's inference service (within its
    /// `instances.min`..`max`), through the job's control endpoint.
    Scale(control::ScaleArgs),
    /// Show the status of a running job's inference services (instances, queue, why slow), or
    /// with `--shared` of every running shared-service host.
    Services(control::JobArgs),
    /// Host a shared inference service (`lifecycle: shared`) for any number of jobs: its
    /// instances, routing and scaling in this process, announced in the service registry
    /// directory. Jobs start one on their own when none runs; start it by hand to place it.
    ServeService(host::ServeServiceArgs),
    /// Stop a shared service's host (it drains the calls in flight, then exits).
    StopService(host::StopServiceArgs),
}

#[derive(Debug, Args)]
struct ServeModelArgs {
    /// The model file.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Intra-op threads.
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// GPUs (CUDA execution provider); 0 runs on CPU.
    #[arg(long, default_value_t = 0)]
    gpus: usize,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// After SIGTERM, longest time to finish the requests in flight before exiting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// Shut down (as on SIGTERM) when stdin closes: for instances started by `weir run`, which
    /// holds the pipe, so they end with the job however it ends.
    #[arg(long)]
    exit_with_parent: bool,
}

fn serve_model(args: ServeModelArgs) -> weir_types::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| {
        weir_types::Error::internal("cannot start the tokio runtime").with_source(e)
    })?;
    rt.block_on(weir_serve::flight::serve_model(
        weir_serve::flight::ServeModelOptions {
            model: args.model,
            cpus: args.cpus,
            gpus: args.gpus,
            port: args.port,
            grace: args.grace,
            exit_with_parent: args.exit_with_parent,
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
enum CheckpointsCommand {
    /// One line per stored checkpoint: id, complete or why not, size, age.
    List(SpecArgs),
    /// The manifest of one checkpoint (default: the newest complete one): nodes, files, sizes.
    Inspect {
        #[command(flatten)]
        spec: SpecArgs,
        /// The checkpoint id.
        #[arg(long)]
        id: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct ExplainArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Print JSON: `{"logical": GRAPH, "physical": {...}}` (see docs/logical-graph.md).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SpecArgs {
    /// The pipeline: a YAML spec, or a logical graph in its JSON form (a `.json` file).
    file: PathBuf,
    /// Parallelism of every step that does not set its own.
    #[arg(short, long)]
    parallelism: Option<u32>,
    /// Override a spec value: `--set steps.read.path=data/x.csv` (repeatable). Steps are addressed
    /// by name or index; the value is read as YAML.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Give `${NAME}` in the spec a value: `--var DATA=/mnt/photos` (repeatable; the environment is
    /// consulted after these).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Worker threads for the tasks. Default: the number of CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Write the per-operator metrics as JSON to this file: refreshed every
    /// `--metrics-json-interval` while the job runs (`"state": "running"`), and the final ones
    /// at the end.
    #[arg(long, value_name = "FILE")]
    metrics_json: Option<PathBuf>,
    /// Seconds between two refreshes of the `--metrics-json` file while the job runs.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    metrics_json_interval: f64,
    /// Where the web API, UI and Prometheus metrics listen: `HOST:PORT`, or `off`. Loopback by
    /// default (reads open to local users, control requests need the token); any other address
    /// needs the token for every request. When the default port is taken, any free port is
    /// used (the API file says which).
    #[arg(long, default_value = weir_web::DEFAULT_ADDR, value_name = "ADDR|off")]
    http: HttpArg,
    /// The job's directory: the API file (`api.json`: URL and token, mode 0600, removed at the
    /// end) is written there. Default: `.weir/jobs/JOB` in the working directory.
    #[arg(long, value_name = "DIR")]
    job_dir: Option<PathBuf>,
    /// Progress display: `auto` (a live display on a terminal, log lines otherwise), `bar`, `log`,
    /// or `off`.
    #[arg(long, default_value = "auto")]
    progress: progress::Mode,
    /// Seconds between progress log lines when the output is not a terminal.
    #[arg(long, default_value_t = 10.0)]
    log_interval: f64,
    /// Continue from the newest complete checkpoint in the spec's checkpoint store (sources resume
    /// where it left off; output staged but not yet published is published).
    #[arg(long)]
    resume: bool,
    /// Delete the output of an earlier run (the sinks' published and in-progress files) and every
    /// checkpoint in the spec's checkpoint store, then start from the beginning. Without it, a
    /// run that is not `--resume` refuses to start where an earlier run left output or
    /// checkpoints (they would be duplicated), and so does `--resume` with no usable checkpoint
    /// but published output.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Preemption: after SIGTERM (or Ctrl-C), the longest time to stop cleanly. The sources stop,
    /// a checkpoint is taken at once (when the job checkpoints) and what was read is written;
    /// the job exits with status 143. If this runs out first, the process exits at once with
    /// status 124, leaving the last complete checkpoint intact for `--resume`. Default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    grace: Option<std::time::Duration>,
    /// Port of the control endpoint (`weir scale`, `weir services`), opened when the spec
    /// declares services; 0 takes any free port.
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Address the control endpoint binds to. Default loopback only; another address makes it
    /// reachable from the network, protected by its token (no TLS), and is logged as a warning.
    #[arg(long, default_value = "127.0.0.1")]
    control_host: std::net::IpAddr,
    /// Where to write the control endpoint's address and token (mode 0600; removed when the job
    /// ends). Default: `.weir/control/JOB.json` in the working directory.
    #[arg(long, value_name = "FILE")]
    control_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    alloc::tune();
    let result = match cli.command {
        Command::Validate(args) => validate(args),
        Command::Explain(args) => explain(args),
        Command::Run(args) => run(args),
        Command::Status(args) => status::status(args),
        Command::Checkpoints(cmd) => checkpoints::command(cmd),
        Command::ServeModel(args) => serve_model(args),
        Command::Scale(args) => control::scale(args),
        Command::Services(args) => control::services(args),
        Command::ServeService(args) => host::serve(args),
        Command::StopService(args) => host::stop(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.report());
            match e.kind() {
                ErrorKind::Config | ErrorKind::Schema => ExitCode::from(exit::INVALID),
                _ => ExitCode::from(exit::FAILED),
            }
        }
    }
}

fn init_logging(verbose: u8) {
    // ONNX Runtime logs every session's graph optimisations at info: keep it to warnings unless
    // asked for more (`-vv`, or WEIR_LOG=ort=info).
    let default = match verbose {
        // librdkafka logs every failed reconnection while a broker is down; the Kafka steps say
        // "waiting for Kafka" instead (WEIR_LOG=librdkafka=info shows them).
        0 => "info,ort=warn,rdkafka=off,librdkafka=off",
        1 => "debug,ort=warn,rdkafka=warn,librdkafka=warn",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn plan_options(args: &SpecArgs) -> weir_types::Result<PlanOptions> {
    let mut vars = std::collections::HashMap::new();
    for v in &args.vars {
        let Some((k, val)) = v.split_once('=') else {
            return Err(weir_types::Error::config(format!(
                "--var '{v}': expected NAME=VALUE"
            )));
        };
        vars.insert(k.to_string(), val.to_string());
    }
    Ok(PlanOptions {
        parallelism: args.parallelism,
        overrides: args.overrides.clone(),
        vars,
    })
}

fn validate(args: SpecArgs) -> weir_types::Result<ExitCode> {
    let plan = plan_file(&args.file, &plan_options(&args)?)?;
    print!("{}", plan.describe()?);
    println!("ok: {} is valid", args.file.display());
    Ok(ExitCode::SUCCESS)
}

fn explain(args: ExplainArgs) -> weir_types::Result<ExitCode> {
    let plan = plan_file(&args.spec.file, &plan_options(&args.spec)?)?;
    if args.json {
        println!("{}", plan.explain_json()?);
    } else {
        print!("{}", plan.explain()?);
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> weir_types::Result<ExitCode> {
    let plan = plan_file(&args.spec.file, &plan_options(&args.spec)?)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = Runtime::new(threads)?;
    let (store, mut restore) = weir_plan::stale::prepare(
        &runtime,
        &plan,
        weir_plan::stale::Intent {
            resume: args.resume,
            overwrite: args.overwrite,
        },
        "--resume needs a 'checkpoint:' section in the spec (where are the checkpoints?)",
    )?;
    // Job start: the declared services are made here (their instances start when the first
    // step calling them opens); restarts reuse them.
    let job = plan.start()?;
    let _control = control::open(
        &plan,
        &job,
        std::net::SocketAddr::new(args.control_host, args.control_port),
        args.control_file.as_deref(),
    )?;
    let watch = weir_web::Watch::new(
        weir_web::JobInfo {
            name: job.graph.config.name.clone(),
            spec: Some(args.spec.file.display().to_string()),
            pid: std::process::id(),
        },
        job.services.clone(),
    );
    let _web = serve_web(&watch, &args)?;
    tracing::info!(
        "running {} on {threads} thread(s)",
        args.spec.file.display()
    );
    let mut attempt = 0;
    let ended = loop {
        let setup = match (&store, &plan.checkpoint) {
            (Some(store), Some(c)) => Some(CheckpointSetup {
                store: store.clone(),
                config: c.config.clone(),
                restore: restore.clone(),
            }),
            _ => None,
        };
        match run_once(&runtime, &plan, &job, setup, &args, &watch) {
            Ok(ended) => break ended,
            Err(e)
                if attempt < plan.restart.attempts
                    && store.is_some()
                    && e.kind() != ErrorKind::Config =>
            {
                attempt += 1;
                let wait = plan.restart.backoff * 2u32.saturating_pow(attempt - 1);
                watch.restarting(e.report());
                tracing::warn!(
                    "job failed (restart {attempt} of {}), restarting from the newest complete checkpoint in {}: {}",
                    plan.restart.attempts,
                    progress::fmt_secs(wait.as_secs_f64()),
                    e.report()
                );
                std::thread::sleep(wait);
                if let Some(store) = &store {
                    restore = checkpoints::newest_complete(&runtime, store)?;
                }
            }
            Err(e) => {
                watch.ended(Err(e.report()));
                return Err(e);
            }
        }
    };
    watch.ended(Ok(()));
    let (report, slow, reasons) = match ended {
        Ended::OverBudget(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(exit::OVER_BUDGET));
        }
        Ended::Report(report, slow, reasons) => (report, slow, reasons),
    };
    let services = why::service_statuses(&job.services);
    eprint!("{}", summary::render(&report, &services, &slow));
    if let Some(path) = &args.metrics_json {
        let json = summary::to_json(&report, &services, &slow, "finished");
        write_atomically(path, &json)?;
    }
    if let Some(message) = budget::exceeded(&plan.error_budget, &report.nodes, || reasons, true) {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(exit::OVER_BUDGET));
    }
    if report.stopped_early {
        eprintln!(
            "stopped before the input ended (exit status {}){}",
            exit::STOPPED,
            if store.is_some() {
                ": the final checkpoint is complete, `weir run --resume` continues"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(exit::STOPPED));
    }
    Ok(ExitCode::SUCCESS)
}

/// How `--http` was given.
#[derive(Debug, Clone)]
enum HttpArg {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for HttpArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(HttpArg::Off);
        }
        s.parse()
            .map(HttpArg::At)
            .map_err(|e| format!("expected HOST:PORT (e.g. 127.0.0.1:8642) or 'off': {e}"))
    }
}

/// The web server and its API file, both gone when dropped.
struct Web {
    _file: weir_web::ApiFileGuard,
    _server: weir_web::WebServer,
}

/// Starts the web API as `--http` says and writes the job's API file.
fn serve_web(watch: &Arc<weir_web::Watch>, args: &RunArgs) -> weir_types::Result<Option<Web>> {
    let HttpArg::At(bind) = args.http else {
        return Ok(None);
    };
    let token = weir_web::new_token()?;
    let start = |bind| {
        weir_web::WebServer::start(
            watch.clone(),
            weir_web::WebOptions {
                bind,
                token: token.clone(),
                always_token: false,
            },
        )
    };
    let server = match start(bind) {
        Ok(s) => s,
        // The default port taken (another job runs): any free port, said in the API file.
        Err(e) if bind.to_string() == weir_web::DEFAULT_ADDR => {
            tracing::debug!("{}; taking any free port", e.report());
            start(std::net::SocketAddr::new(bind.ip(), 0))?
        }
        Err(e) => return Err(e),
    };
    let job = &watch.info().name;
    let dir = args
        .job_dir
        .clone()
        .unwrap_or_else(|| Path::new(".weir/jobs").join(job));
    let path = dir.join("api.json");
    weir_web::ApiFile {
        url: server.url(),
        token,
        pid: std::process::id(),
        job: job.clone(),
    }
    .write(&path)?;
    if bind.ip().is_loopback() {
        tracing::info!(
            "web UI and API on {} (metrics: {}/metrics; control token in {})",
            server.url(),
            server.url(),
            path.display()
        );
    } else {
        tracing::warn!(
            "web UI and API on {}, reachable from the network without TLS: every request needs the token in {} (Authorization: Bearer TOKEN, or the token as the password in the browser)",
            server.url(),
            path.display()
        );
    }
    Ok(Some(Web {
        _file: weir_web::ApiFileGuard(path),
        _server: server,
    }))
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_atomically(path: &Path, text: &str) -> weir_types::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "metrics".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            weir_types::Error::io(format!("cannot write metrics to {}", path.display()))
                .with_source(e)
        })
}

/// How one run of the job ended.
enum Ended {
    /// It ended (inputs done, or stopped): its report, how long each reason for slowness held,
    /// and its dead letters by reason.
    Report(
        weir_runtime::JobReport,
        Vec<why::Held>,
        Vec<(String, String, u64)>,
    ),
    /// It was cut short because too many rows became dead letters.
    OverBudget(String),
}

/// Runs the planned job once, with progress, until it ends or exceeds its error budget.
fn run_once(
    runtime: &Runtime,
    plan: &weir_plan::Plan,
    job: &weir_plan::Job,
    setup: Option<CheckpointSetup>,
    args: &RunArgs,
    watch: &Arc<weir_web::Watch>,
) -> weir_types::Result<Ended> {
    let handle = runtime.start_with(job.graph.clone(), setup)?;
    tracing::debug!("physical plan:\n{}", handle.description());
    watch.attach(weir_web::Attempt::of(&handle));
    let metrics = handle.metrics().clone();
    let stop = handle.stop_token();
    let control = handle.control();
    let grace = args.grace;
    let mode = args.progress.resolve(std::io::stderr().is_terminal());
    let interval = Duration::from_secs_f64(args.log_interval.max(0.2));
    let steps = plan.steps.clone();
    let metrics_json = args.metrics_json.clone();
    let json_every = Duration::from_secs_f64(args.metrics_json_interval.max(0.5));
    let started = handle.started();
    let watch = watch.clone();
    let budget = plan.error_budget;
    runtime.block_on(async move {
        let signals = tokio::spawn(watch_signals(stop, control, grace));
        let mut display = progress::Progress::new(mode, metrics.clone(), &steps, started);
        let mut tick = tokio::time::interval(display.tick(interval));
        let mut look = tokio::time::interval(why::INTERVAL);
        let mut json = tokio::time::interval_at((Instant::now() + json_every).into(), json_every);
        let wait = handle.wait();
        tokio::pin!(wait);
        let result = loop {
            tokio::select! {
                r = &mut wait => break r.map(Ok),
                _ = tick.tick() => display.update(&watch.reasons()),
                _ = look.tick() => {
                    watch.sample();
                    if let Some(m) = budget::exceeded(
                        &budget,
                        &metrics.snapshot(),
                        || metrics.dead_letter_reasons(),
                        false,
                    ) {
                        break Ok(Err(m));
                    }
                }
                _ = json.tick(), if metrics_json.is_some() => {
                    if let Some(path) = &metrics_json {
                        let text = summary::live_json(&watch, &metrics, started.elapsed());
                        if let Err(e) = write_atomically(path, &text) {
                            tracing::warn!("{}", e.report());
                        }
                    }
                }
            }
        };
        signals.abort();
        watch.sample();
        display.finish(&watch.reasons());
        match result? {
            Ok(r) => Ok(Ended::Report(
                r,
                watch.held(),
                metrics.dead_letter_reasons(),
            )),
            Err(m) => Ok(Ended::OverBudget(m)),
        }
    })
}

/// First Ctrl-C or SIGTERM: stop the sources and let everything read so far be written (with
/// `--grace`: also take a checkpoint at once, and exit with [`exit::GRACE_EXPIRED`] when the grace
/// runs out first). Second: abort at once.
async fn watch_signals(
    stop: weir_runtime::StopToken,
    control: weir_runtime::JobControl,
    grace: Option<Duration>,
) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            return;
        }
    };
    let signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    signal.await;
    let Some(grace) = grace else {
        eprintln!("\nstopping: finishing and writing what was read (Ctrl-C again aborts)");
        stop.cancel();
        second_signal(&mut term).await;
        return;
    };
    eprintln!(
        "\nstopping within {}: a final checkpoint, then what was read is written (Ctrl-C again aborts)",
        humantime::format_duration(grace)
    );
    // The checkpoint first, so that its barrier is injected before the sources stop: the newest
    // checkpoint is then at most as old as the signal even if the drain outlasts the grace.
    if control.checkpoints() {
        let c = control.clone();
        tokio::spawn(async move {
            match c.checkpoint_now().await {
                Ok(r) => tracing::info!("checkpoint {} taken after the stop signal", r.id),
                Err(e) => tracing::debug!("no checkpoint after the stop signal: {}", e.report()),
            }
        });
        tokio::task::yield_now().await;
    }
    stop.cancel();
    tokio::select! {
        () = tokio::time::sleep(grace) => {
            eprintln!(
                "grace of {} ran out before the job stopped: exiting (status {}); the last complete checkpoint is intact, `weir run --resume` continues from it",
                humantime::format_duration(grace),
                exit::GRACE_EXPIRED
            );
            std::process::exit(i32::from(exit::GRACE_EXPIRED));
        }
        () = second_signal(&mut term) => {}
    }
}

/// A second Ctrl-C or SIGTERM aborts at once.
async fn second_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("\naborted: output written so far may be incomplete");
    std::process::exit(130);
}
