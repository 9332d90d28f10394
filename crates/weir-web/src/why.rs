//! Why is it slow: every half second the [`Sampler`] is handed the operators' metrics and the
//! inference services' status (by [`crate::Watch::sample`]) and names what holds the pipeline up — a service saturated, its
//! instances still loading, calls being retried, instances dying, or backpressure from a sink.
//! The progress display and the API show the current reasons; the summary, the API and
//! `--metrics-json` say how long each held.
//!
//! The decision is a pure function ([`reasons`]) of one sampling window, so it is tested on
//! tables of numbers.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_infer::{ModelService, ServiceStatus};
use weir_runtime::{NodeMetrics, NodeRole};

/// How often the sampler looks.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// One node's load over a sampling window.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    /// The step's name.
    pub name: String,
    /// Source, operator or sink.
    pub role: NodeRole,
    /// Fraction of the window its subtasks spent working.
    pub busy: f64,
    /// Fraction of the window its subtasks spent waiting to send downstream.
    pub backpressured: f64,
}

/// One reason: a stable key (what is counted over time) and the message shown now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// `service 'clf' saturated`, `backpressure from sink 'out'`, ...
    pub key: String,
    /// The key with the numbers of this window.
    pub message: String,
}

/// A sink working more than this fraction while another step waits to send more than
/// [`PRESSURED`] is named as the source of backpressure.
pub const SINK_BUSY: f64 = 0.5;
/// See [`SINK_BUSY`].
pub const PRESSURED: f64 = 0.2;

/// The reasons of one window: each service's own (`ServiceStatus::why_slow`), services that
/// retried calls or lost instances since `before`, and sinks that backpressure the rest.
pub fn reasons(
    nodes: &[NodeLoad],
    services: &[ServiceStatus],
    before: &[ServiceStatus],
    window: Duration,
) -> Vec<Reason> {
    let mut out = Vec::new();
    for s in services {
        if let Some(m) = s.why_slow() {
            let key = m.split(':').next().unwrap_or(&m).to_string();
            out.push(Reason { key, message: m });
        }
        let prev = before.iter().find(|b| b.name == s.name);
        let retries = s.retries - prev.map_or(0, |p| p.retries).min(s.retries);
        if retries > 0 {
            out.push(Reason {
                key: format!("service '{}' retrying", s.name),
                message: format!(
                    "service '{}' retrying: {retries} call attempt(s) retried in the last {:.1}s (timeouts or errors; {} given up so far)",
                    s.name,
                    window.as_secs_f64(),
                    s.failed
                ),
            });
        }
        let deaths = s.deaths - prev.map_or(0, |p| p.deaths).min(s.deaths);
        if deaths > 0 {
            out.push(Reason {
                key: format!("service '{}' instances dying", s.name),
                message: format!(
                    "service '{}' instances dying: {deaths} died in the last {:.1}s, their requests re-sent and replacements loading",
                    s.name,
                    window.as_secs_f64()
                ),
            });
        }
    }
    let pressured: Vec<&NodeLoad> = nodes
        .iter()
        .filter(|n| n.role != NodeRole::Sink && n.backpressured > PRESSURED)
        .collect();
    if !pressured.is_empty() {
        for sink in nodes
            .iter()
            .filter(|n| n.role == NodeRole::Sink && n.busy > SINK_BUSY)
        {
            out.push(Reason {
                key: format!("backpressure from sink '{}'", sink.name),
                message: format!(
                    "backpressure from sink '{}': busy {:.0}% writing while upstream waits to send ({})",
                    sink.name,
                    sink.busy * 100.0,
                    pressured
                        .iter()
                        .map(|n| format!("{} {:.0}%", n.name, n.backpressured * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    out
}

/// How long one reason held over the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Held {
    /// The reason's key.
    pub reason: String,
    /// Seconds it held (summed over sampling windows).
    pub seconds: f64,
    /// Its message the last time it held.
    pub last: String,
}

/// Keeps the current reasons and how long each held, from the samples it is handed.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<(Instant, Vec<NodeMetrics>)>,
    services: Vec<ServiceStatus>,
    current: Vec<Reason>,
    held: BTreeMap<String, Held>,
}

/// The statuses of the job's services.
pub fn service_statuses(services: &[Arc<dyn ModelService>]) -> Vec<ServiceStatus> {
    services.iter().map(|s| s.status()).collect()
}

impl Sampler {
    /// Forgets the previous sample (a restarted job's counters start again from zero); the
    /// time each reason held is kept.
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// Looks once at `snap` (every node's counters) and `services` taken at `now`: computes
    /// this window's reasons and adds the window to each one's time.
    pub fn sample(&mut self, now: Instant, snap: Vec<NodeMetrics>, services: Vec<ServiceStatus>) {
        if let Some((then, prev)) = &self.last {
            let window = now.duration_since(*then);
            let loads = loads(&snap, prev, window);
            self.current = reasons(&loads, &services, &self.services, window);
            // Steps that cannot reach an external system they need (a Kafka broker) say so.
            for n in &snap {
                if let Some(w) = &n.waiting {
                    self.current.push(Reason {
                        key: format!("'{}' {w}", n.name),
                        message: format!("'{}' {w}", n.name),
                    });
                }
            }
            for r in &self.current {
                let h = self.held.entry(r.key.clone()).or_insert_with(|| Held {
                    reason: r.key.clone(),
                    seconds: 0.0,
                    last: String::new(),
                });
                h.seconds += window.as_secs_f64();
                h.last = r.message.clone();
            }
        }
        self.services = services;
        self.last = Some((now, snap));
    }

    /// The reasons of the latest window.
    pub fn current(&self) -> &[Reason] {
        &self.current
    }

    /// Every reason seen, longest first.
    pub fn held(&self) -> Vec<Held> {
        let mut v: Vec<Held> = self.held.values().cloned().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }
}

/// Each node's busy and backpressured fractions between two snapshots `window` apart.
fn loads(now: &[NodeMetrics], before: &[NodeMetrics], window: Duration) -> Vec<NodeLoad> {
    now.iter()
        .map(|n| {
            let b = before.iter().find(|b| b.name == n.name);
            let ms = window.as_secs_f64() * 1000.0 * n.totals.subtasks.max(1) as f64;
            let frac = |f: fn(&NodeMetrics) -> u64| {
                let prev = b.map_or(0, f);
                (f(n) - prev.min(f(n))) as f64 / ms.max(1.0)
            };
            NodeLoad {
                name: n.name.clone(),
                role: n.role,
                busy: frac(|m| m.totals.busy_ms).min(1.0),
                backpressured: frac(|m| m.totals.backpressured_ms).min(1.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: NodeRole, busy: f64, bp: f64) -> NodeLoad {
        NodeLoad {
            name: name.into(),
            role,
            busy,
            backpressured: bp,
        }
    }

    fn svc(name: &str, f: impl FnOnce(&mut ServiceStatus)) -> ServiceStatus {
        let mut s = ServiceStatus {
            name: name.into(),
            target: 2,
            ready: 2,
            ..ServiceStatus::default()
        };
        f(&mut s);
        s
    }

    fn keys(r: &[Reason]) -> Vec<&str> {
        r.iter().map(|r| r.key.as_str()).collect()
    }

    const W: Duration = Duration::from_millis(500);

    /// (nodes, services now, services before, expected reason keys)
    type Case = (
        Vec<NodeLoad>,
        Vec<ServiceStatus>,
        Vec<ServiceStatus>,
        Vec<&'static str>,
    );

    #[test]
    fn each_cause_is_named() {
        use NodeRole::*;
        let idle = [node("src", Source, 0.1, 0.0), node("out", Sink, 0.1, 0.0)];
        let cases: Vec<Case> = vec![
            (idle.to_vec(), vec![svc("clf", |_| {})], vec![], vec![]),
            (
                idle.to_vec(),
                vec![svc("clf", |s| {
                    s.ready = 0;
                    s.loading = 2;
                })],
                vec![],
                vec!["service 'clf' has no ready instance"],
            ),
            (
                idle.to_vec(),
                vec![svc("clf", |s| {
                    s.queued = 9;
                    s.utilisation = 0.97;
                })],
                vec![],
                vec!["service 'clf' saturated"],
            ),
            (
                idle.to_vec(),
                vec![svc("clf", |s| {
                    s.retries = 5;
                    s.deaths = 1;
                })],
                vec![svc("clf", |s| s.retries = 2)],
                vec!["service 'clf' retrying", "service 'clf' instances dying"],
            ),
            (
                vec![
                    node("src", Source, 0.2, 0.7),
                    node("map", Operator, 0.3, 0.6),
                    node("out", Sink, 0.95, 0.0),
                ],
                vec![],
                vec![],
                vec!["backpressure from sink 'out'"],
            ),
            // A busy sink nobody waits for is not backpressure.
            (
                vec![node("src", Source, 0.2, 0.0), node("out", Sink, 0.95, 0.0)],
                vec![],
                vec![],
                vec![],
            ),
        ];
        for (i, (nodes, now, before, want)) in cases.into_iter().enumerate() {
            let got = reasons(&nodes, &now, &before, W);
            assert_eq!(keys(&got), want, "case {i}: {got:?}");
        }
        let got = reasons(
            &[node("src", Source, 0.2, 0.7), node("out", Sink, 0.95, 0.0)],
            &[],
            &[],
            W,
        );
        assert_eq!(
            got[0].message,
            "backpressure from sink 'out': busy 95% writing while upstream waits to send (src 70%)"
        );
    }
}
