//! `weir serve-service` (run a shared service's host) and `weir stop-service` (stop one): the
//! command-line side of `weir_serve::host`.

use clap::Args;
use serde_norway::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir_serve::ServiceSpec;
use weir_serve::host::{HostEntry, HostOptions};
use weir_types::{Error, Result};

/// `weir serve-service`.
#[derive(Debug, Args)]
pub struct ServeServiceArgs {
    /// A pipeline spec whose `services:` section declares the service (its steps are not run).
    #[arg(required_unless_present = "definition")]
    file: Option<PathBuf>,
    /// Which service of FILE to serve (needed when it declares several).
    #[arg(long)]
    service: Option<String>,
    /// The service's declaration as YAML or JSON, instead of FILE (jobs start hosts this way).
    #[arg(long, conflicts_with = "file")]
    definition: Option<String>,
    /// Give `${NAME}` in FILE a value (repeatable; the environment is consulted after these).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Address of the data endpoint (Arrow Flight `DoExchange`). A non-loopback address makes it
    /// reachable from the network without authentication.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Address of the token-protected control endpoint (`scale`, `status`, `shutdown`).
    #[arg(long, default_value = "127.0.0.1:0")]
    control_bind: SocketAddr,
    /// The registry directory the host announces itself in. Default: `$WEIR_SERVICES_DIR`, else
    /// `.weir/services` in the working directory.
    #[arg(long, value_name = "DIR")]
    services_dir: Option<PathBuf>,
    /// Stop after this long without a call (`0s`: never). Default: the service's `idle_timeout`.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
}

/// `weir stop-service`.
#[derive(Debug, Args)]
pub struct StopServiceArgs {
    /// The shared service's name.
    service: String,
    /// The registry directory. Default: `$WEIR_SERVICES_DIR`, else `.weir/services`.
    #[arg(long, value_name = "DIR")]
    services_dir: Option<PathBuf>,
    /// Wait at most this long for the host to exit.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

fn declaration(args: &ServeServiceArgs) -> Result<Value> {
    if let Some(d) = &args.definition {
        return serde_norway::from_str(d)
            .map_err(|e| Error::config("--definition: not YAML or JSON").with_source(e));
    }
    let Some(file) = &args.file else {
        return Err(Error::config("give a spec FILE or --definition"));
    };
    let origin = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::config(format!("cannot read {origin}")).with_source(e))?;
    let mut vars = std::collections::HashMap::new();
    for v in &args.vars {
        let (k, val) = v
            .split_once('=')
            .ok_or_else(|| Error::config(format!("--var '{v}': expected NAME=VALUE")))?;
        vars.insert(k.to_string(), val.to_string());
    }
    let root: Value = weir_plan::spec::substitute(&text, &origin, &vars)?;
    let declared: Vec<Value> = root
        .get("services")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let name_of = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    let names: Vec<String> = declared.iter().filter_map(name_of).collect();
    match (&args.service, declared.as_slice()) {
        (_, []) => Err(Error::config(format!(
            "{origin}: declares no services (a `services:` section)"
        ))),
        (None, [one]) => Ok(one.clone()),
        (None, _) => Err(Error::config(format!(
            "{origin} declares several services ({}); choose one with --service",
            names.join(", ")
        ))),
        (Some(want), all) => all
            .iter()
            .find(|v| name_of(v).as_deref() == Some(want.as_str()))
            .cloned()
            .ok_or_else(|| {
                Error::config(format!(
                    "{origin} declares no service '{want}' (declared: {})",
                    names.join(", ")
                ))
            }),
    }
}

fn dir_or_default(dir: &Option<PathBuf>) -> PathBuf {
    dir.clone().unwrap_or_else(weir_serve::host::registry_dir)
}

/// `weir serve-service`.
pub fn serve(args: ServeServiceArgs) -> Result<ExitCode> {
    let spec: ServiceSpec = serde_norway::from_value(declaration(&args)?)
        .map_err(|e| Error::config("the service declaration is not valid").with_source(e))?;
    spec.validate()?;
    let idle = args.idle_timeout.unwrap_or(spec.idle_timeout);
    let opts = HostOptions {
        spec,
        bind: args.bind,
        control_bind: args.control_bind,
        dir: dir_or_default(&args.services_dir),
        idle_timeout: (!idle.is_zero()).then_some(idle),
    };
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Error::internal("cannot start the tokio runtime").with_source(e))?;
    rt.block_on(weir_serve::host::serve_host(opts))?;
    Ok(ExitCode::SUCCESS)
}

/// `weir stop-service`: asks the host to shut down and waits for its process to end.
pub fn stop(args: StopServiceArgs) -> Result<ExitCode> {
    let dir = dir_or_default(&args.services_dir);
    let entry = HostEntry::read(&dir, &args.service)?
        .filter(HostEntry::alive)
        .ok_or_else(|| {
            Error::config(format!(
                "no running host for shared service '{}' in {}",
                args.service,
                dir.display()
            ))
        })?;
    weir_serve::control::call(&entry.control_addr, &entry.token, "shutdown", Vec::new())?;
    let start = std::time::Instant::now();
    while entry.alive() {
        if start.elapsed() > args.wait {
            return Err(Error::external(format!(
                "the host of '{}' (pid {}) is still running after {:?}",
                args.service, entry.pid, args.wait
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "stopped shared service '{}' (pid {})",
        args.service, entry.pid
    );
    Ok(ExitCode::SUCCESS)
}
