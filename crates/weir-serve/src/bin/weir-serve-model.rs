//! `weir-serve-model`: the same Flight model server as `weir serve-model`, as a binary of this
//! crate so that its tests start instance processes without building the CLI.
//!
//! Usage: `weir-serve-model --model PATH [--cpus N] [--port P] [--grace 10s] [--exit-with-parent]`.

use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = arg(&args, "--model") else {
        eprintln!("usage: weir-serve-model --model PATH [--cpus N] [--port P] [--grace 10s]");
        std::process::exit(2);
    };
    let parse = |name: &str, default: &str| arg(&args, name).unwrap_or_else(|| default.into());
    let grace =
        humantime::parse_duration(&parse("--grace", "10s")).unwrap_or(Duration::from_secs(10));
    let opts = weir_serve::flight::ServeModelOptions {
        model: model.into(),
        cpus: parse("--cpus", "1").parse().unwrap_or(1),
        gpus: parse("--gpus", "0").parse().unwrap_or(0),
        port: parse("--port", "0").parse().unwrap_or(0),
        grace,
        exit_with_parent: args.iter().any(|a| a == "--exit-with-parent"),
    };
    if let Err(e) = weir_serve::flight::serve_model(opts).await {
        eprintln!("error: {}", e.report());
        std::process::exit(1);
    }
}
