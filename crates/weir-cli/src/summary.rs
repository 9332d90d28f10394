//! The end-of-run summary: a table of every operator's counters, what each sink wrote, and the
//! JSON form written by `--metrics-json` (refreshed while the job runs, see [`live_json`]).

use crate::progress::{fmt_secs, human_bytes};
use crate::why::Held;
use serde::Serialize;
use std::fmt::Write;
use weir_infer::ServiceStatus;
use weir_runtime::{JobReport, NodeMetrics, NodeRole};

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

/// The summary as text, with the services' final counters and what held the pipeline up.
pub fn render(r: &JobReport, services: &[ServiceStatus], slow: &[Held]) -> String {
    let mut s = String::new();
    let how = if r.stopped_early {
        "stopped early (inputs not fully read)"
    } else {
        "finished"
    };
    let _ = writeln!(
        s,
        "\njob '{}' {how} in {}",
        r.name,
        fmt_secs(r.elapsed.as_secs_f64())
    );
    let _ = writeln!(
        s,
        "{:<20} {:<8} {:>3} {:>12} {:>12} {:>7} {:>7} {:>6} {:>6} {:>6}",
        "step", "role", "par", "rows in", "rows out", "errors", "dead", "busy", "bp", "idle"
    );
    for n in &r.nodes {
        let t = &n.totals;
        let whole = t.busy_ms + t.backpressured_ms + t.idle_ms;
        let role = match n.role {
            NodeRole::Source => "source",
            NodeRole::Operator => "op",
            NodeRole::Sink => "sink",
        };
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:>3} {:>12} {:>12} {:>7} {:>7} {:>6} {:>6} {:>6}",
            n.name,
            role,
            n.parallelism,
            if n.role == NodeRole::Source {
                "-".to_string()
            } else {
                t.rows_in.to_string()
            },
            if n.role == NodeRole::Sink {
                "-".to_string()
            } else {
                t.rows_out.to_string()
            },
            t.errors,
            t.dead_letters,
            pct(t.busy_ms, whole),
            pct(t.backpressured_ms, whole),
            pct(t.idle_ms, whole),
        );
    }
    for n in r.nodes.iter().filter(|n| n.role == NodeRole::Sink) {
        let _ = writeln!(s, "written: {} received {} rows", n.name, n.totals.rows_in);
    }
    for n in r.nodes.iter().filter(|n| n.totals.model_instances > 0) {
        let t = &n.totals;
        let capacity = (t.model_instances as f64 * r.elapsed.as_secs_f64() * 1000.0).max(1.0);
        let _ = writeln!(
            s,
            "models: {} kept {} model instance(s) {:.0}% busy running batches (the rest of the time they waited for rows)",
            n.name,
            t.model_instances,
            (t.model_busy_ms as f64 / capacity * 100.0).min(100.0)
        );
    }
    for n in r.nodes.iter().filter(|n| n.totals.state_bytes_peak > 0) {
        let t = &n.totals;
        let _ = writeln!(
            s,
            "state: {} held at most {} in memory; at the end {} in {} entries",
            n.name,
            human_bytes(t.state_bytes_peak),
            human_bytes(t.state_bytes),
            t.state_entries
        );
    }
    if let Some(c) = &r.checkpoints {
        let mut d = c.durations_ms.clone();
        d.sort_unstable();
        let pick = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let _ = write!(
            s,
            "checkpoints: {} completed, {} failed",
            c.completed, c.failed
        );
        if !d.is_empty() {
            let _ = write!(s, ", duration p50 {} ms, p99 {} ms", pick(0.5), pick(0.99));
        }
        if let Some(id) = c.last_completed {
            let _ = write!(s, ", last complete {id}");
        }
        if c.completed > 0 {
            let _ = write!(
                s,
                ", state written {}, referred to in earlier checkpoints {}",
                human_bytes(c.written_bytes),
                human_bytes(c.referred_bytes)
            );
        }
        if let Some(id) = c.restored_from {
            let _ = write!(s, "; restored from checkpoint {id}");
        }
        let _ = writeln!(s);
    }
    for svc in services {
        let _ = writeln!(
            s,
            "service '{}': {} answered ({} rows), latency p50 {} p99 {}, {} retries, {} instance deaths, {} failed",
            svc.name,
            svc.answered,
            svc.answered_rows,
            ms(weir_infer::service::latency_quantile_ms(
                &svc.latency_buckets,
                0.5
            )),
            ms(weir_infer::service::latency_quantile_ms(
                &svc.latency_buckets,
                0.99
            )),
            svc.retries,
            svc.deaths,
            svc.failed
        );
    }
    for h in slow.iter().filter(|h| h.seconds >= 1.0) {
        let _ = writeln!(
            s,
            "slow: {} for {} (last: {})",
            h.reason,
            fmt_secs(h.seconds),
            h.last
        );
    }
    let dead: u64 = r.nodes.iter().map(|n| n.totals.dead_letters).sum();
    if dead > 0 {
        let _ = writeln!(
            s,
            "dead letters: {dead} row(s) were refused and written to the dead-letter output"
        );
    }
    s
}

#[derive(Serialize)]
struct JsonCheckpoints {
    completed: u64,
    failed: u64,
    last_completed: Option<u64>,
    restored_from: Option<u64>,
    first_completed_ms: Option<u64>,
    durations_ms: Vec<u64>,
    /// Bytes of state the completed checkpoints wrote.
    written_bytes: u64,
    /// Bytes of unchanged keyed state they referred to in earlier checkpoints instead.
    referred_bytes: u64,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    job: &'a str,
    /// `running` while the job runs, `finished` at the end.
    state: &'a str,
    elapsed_s: f64,
    stopped_early: bool,
    nodes: &'a [NodeMetrics],
    checkpoints: Option<JsonCheckpoints>,
    services: Vec<JsonService>,
    /// What held the pipeline up, and for how long, longest first.
    slow: &'a [Held],
}

#[derive(Serialize)]
struct JsonService {
    name: String,
    target: usize,
    ready: usize,
    answered: u64,
    retries: u64,
    deaths: u64,
    failed: u64,
    processes: Vec<u32>,
    answered_rows: u64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
}

/// The metrics of a running job as pretty JSON (the shape of [`to_json`], `"state": "running"`).
pub fn live_json(
    watch: &weir_web::Watch,
    metrics: &weir_runtime::MetricsRegistry,
    elapsed: std::time::Duration,
) -> String {
    let checkpoints = watch.checkpoints().map(|(t, records)| {
        let done = || {
            records
                .iter()
                .filter(|r| r.status == weir_runtime::CheckpointStatus::Completed)
        };
        weir_runtime::CheckpointStats {
            completed: t.completed,
            failed: t.failed,
            last_completed: t.last_completed,
            durations_ms: done().filter_map(|r| r.duration_ms).collect(),
            restored_from: None,
            first_completed_ms: done()
                .next()
                .and_then(|r| r.triggered_at_ms.checked_sub(watch.started_at_ms()))
                .map(|ms| ms + done().next().and_then(|r| r.duration_ms).unwrap_or(0)),
            written_bytes: t.written_bytes,
            referred_bytes: t.referred_bytes,
        }
    });
    let report = JobReport {
        name: watch.info().name.clone(),
        elapsed,
        stopped_early: false,
        nodes: metrics.snapshot(),
        checkpoints,
    };
    to_json(&report, &watch.services(), &watch.held(), "running")
}

/// The report as pretty JSON; `state` says whether the job still runs.
pub fn to_json(r: &JobReport, services: &[ServiceStatus], slow: &[Held], state: &str) -> String {
    let j = JsonReport {
        job: &r.name,
        state,
        elapsed_s: r.elapsed.as_secs_f64(),
        stopped_early: r.stopped_early,
        nodes: &r.nodes,
        checkpoints: r.checkpoints.as_ref().map(|c| JsonCheckpoints {
            completed: c.completed,
            failed: c.failed,
            last_completed: c.last_completed,
            restored_from: c.restored_from,
            first_completed_ms: c.first_completed_ms,
            durations_ms: c.durations_ms.clone(),
            written_bytes: c.written_bytes,
            referred_bytes: c.referred_bytes,
        }),
        services: services
            .iter()
            .map(|s| JsonService {
                name: s.name.clone(),
                target: s.target,
                ready: s.ready,
                answered: s.answered,
                retries: s.retries,
                deaths: s.deaths,
                failed: s.failed,
                processes: s.processes.clone(),
                answered_rows: s.answered_rows,
                latency_p50_ms: weir_infer::service::latency_quantile_ms(&s.latency_buckets, 0.5),
                latency_p99_ms: weir_infer::service::latency_quantile_ms(&s.latency_buckets, 0.99),
            })
            .collect(),
        slow,
    };
    serde_json::to_string_pretty(&j).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
