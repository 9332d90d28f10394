//! The live progress display: on a terminal, one line per source and sink (rows, rows/s, bytes,
//! progress and ETA for bounded inputs) plus a line naming busy and backpressured operators; when
//! the output is not a terminal, one plain log line per interval. Both end with why the pipeline
//! is slow, when something holds it up (`why.rs`).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};
use weir_plan::PlannedStep;
use weir_runtime::{MetricsRegistry, NodeMetrics, NodeRole};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A live display on a terminal, log lines otherwise.
    Auto,
    /// Always the live display.
    Bar,
    /// Always log lines.
    Log,
    /// Nothing until the summary.
    Off,
}

impl Mode {
    /// Resolves `Auto` for an output that is (or is not) a terminal.
    pub fn resolve(self, is_terminal: bool) -> Mode {
        match self {
            Mode::Auto if is_terminal => Mode::Bar,
            Mode::Auto => Mode::Log,
            m => m,
        }
    }
}

/// The display state.
pub struct Progress {
    mode: Mode,
    metrics: MetricsRegistry,
    started: Instant,
    last: Option<(Instant, Vec<NodeMetrics>)>,
    bars: Vec<ProgressBar>,
    status: Option<ProgressBar>,
    _multi: Option<MultiProgress>,
}

fn human_rows(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

impl Progress {
    /// A display over `metrics` for the planned `steps`.
    pub fn new(
        mode: Mode,
        metrics: MetricsRegistry,
        steps: &[PlannedStep],
        started: Instant,
    ) -> Self {
        let mut p = Progress {
            mode,
            metrics,
            started,
            last: None,
            bars: Vec::new(),
            status: None,
            _multi: None,
        };
        if mode == Mode::Bar {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let style = ProgressStyle::with_template("{prefix:>14.bold} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            for s in steps.iter().filter(|s| s.node.is_some()) {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(s.name.clone());
                p.bars.push(bar);
            }
            let status = multi.add(ProgressBar::new_spinner());
            status.set_style(style);
            status.set_prefix("status");
            p.status = Some(status);
            p._multi = Some(multi);
        }
        p
    }

    /// How often `update` should be called.
    pub fn tick(&self, log_interval: Duration) -> Duration {
        match self.mode {
            Mode::Bar => Duration::from_millis(250),
            Mode::Log => log_interval,
            _ => Duration::from_secs(3600),
        }
    }

    /// Reads the metrics and redraws (or logs), naming `why` the pipeline is slow, if anything
    /// holds it up.
    pub fn update(&mut self, why: &[crate::why::Reason]) {
        if matches!(self.mode, Mode::Off | Mode::Auto) {
            return;
        }
        let now = Instant::now();
        let snap = self.metrics.snapshot();
        let (since, prev) = match &self.last {
            Some((t, p)) => (now.duration_since(*t).as_secs_f64(), Some(p)),
            None => (now.duration_since(self.started).as_secs_f64(), None),
        };
        let mut lines = Vec::new();
        let mut busy = Vec::new();
        let mut pressured = Vec::new();
        for (i, n) in snap.iter().enumerate() {
            let before = prev.and_then(|p| p.get(i));
            let rows = match n.role {
                NodeRole::Source => n.totals.rows_out,
                _ => n.totals.rows_in,
            };
            let rows_before = before.map_or(0, |b| match b.role {
                NodeRole::Source => b.totals.rows_out,
                _ => b.totals.rows_in,
            });
            let rate = (rows - rows_before.min(rows)) as f64 / since.max(1e-3);
            let bytes = match n.role {
                NodeRole::Source => n.totals.bytes_out,
                _ => n.totals.bytes_in,
            };
            let mut line = format!(
                "{:>8} rows {:>9} rows/s {:>11}",
                human_rows(rows as f64),
                human_rows(rate),
                human_bytes(bytes)
            );
            if n.role == NodeRole::Source && n.totals.total > 0 {
                let frac = (n.totals.progress as f64 / n.totals.total as f64).min(1.0);
                let elapsed = now.duration_since(self.started).as_secs_f64();
                let eta = if frac > 0.0 {
                    elapsed * (1.0 - frac) / frac
                } else {
                    f64::NAN
                };
                line.push_str(&format!("  {:>3.0}%", frac * 100.0));
                if eta.is_finite() && frac < 1.0 {
                    line.push_str(&format!("  eta {}", fmt_secs(eta)));
                }
            }
            if n.totals.dead_letters > 0 {
                line.push_str(&format!("  dead letters {}", n.totals.dead_letters));
            }
            if let Some(w) = n.totals.watermark_ms {
                line.push_str(&format!("  watermark {}", fmt_event_time(w)));
            }
            if n.totals.late_rows > 0 {
                line.push_str(&format!("  late {}", n.totals.late_rows));
            }
            if n.totals.finished_subtasks == n.totals.subtasks {
                line.push_str("  done");
            }
            let window_ms = since * 1000.0 * n.totals.subtasks as f64;
            let d = |f: fn(&NodeMetrics) -> u64| {
                let b = before.map_or(0, f);
                (f(n) - b.min(f(n))) as f64 / window_ms.max(1.0)
            };
            let busy_frac = d(|m| m.totals.busy_ms);
            let bp_frac = d(|m| m.totals.backpressured_ms);
            if busy_frac > 0.5 {
                busy.push(format!("{} {:.0}%", n.name, busy_frac * 100.0));
            }
            if bp_frac > 0.2 {
                pressured.push(format!("{} {:.0}%", n.name, bp_frac * 100.0));
            }
            lines.push((n.name.clone(), n.role, line));
        }
        let elapsed = fmt_secs(now.duration_since(self.started).as_secs_f64());
        let mut status = format!(
            "elapsed {elapsed}  busy: {}  backpressured: {}",
            if busy.is_empty() {
                "-".into()
            } else {
                busy.join(", ")
            },
            if pressured.is_empty() {
                "-".into()
            } else {
                pressured.join(", ")
            }
        );
        if !why.is_empty() {
            status.push_str("  why slow: ");
            status.push_str(
                &why.iter()
                    .map(|r| r.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        match self.mode {
            Mode::Bar => {
                for (bar, (_, _, line)) in self.bars.iter().zip(&lines) {
                    bar.set_message(line.clone());
                }
                if let Some(s) = &self.status {
                    s.set_message(status);
                }
            }
            _ => {
                let parts: Vec<String> = lines
                    .iter()
                    .filter(|(_, role, _)| *role != NodeRole::Operator)
                    .map(|(name, _, l)| {
                        format!(
                            "{name}: {}",
                            l.split_whitespace().collect::<Vec<_>>().join(" ")
                        )
                    })
                    .collect();
                tracing::info!("progress: {} | {status}", parts.join(" | "));
            }
        }
        self.last = Some((now, snap));
    }

    /// Clears the live display.
    pub fn finish(&mut self, why: &[crate::why::Reason]) {
        if self.mode == Mode::Bar {
            self.update(why);
            for b in &self.bars {
                b.finish();
            }
            if let Some(s) = &self.status {
                s.finish();
            }
        }
    }
}

/// An event time (ms since the Unix epoch) as RFC 3339 UTC to the second, or the raw number
/// when it is out of range.
fn fmt_event_time(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .map_or_else(
            || format!("{ms} ms"),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

/// `75s` → `1m15s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_print_as_utc_seconds() {
        assert_eq!(fmt_event_time(1_704_067_205_999), "2024-01-01T00:00:05Z");
        assert_eq!(fmt_event_time(-5), "-5 ms");
    }
}
