//! The autoscaler: its policy ([`AutoscaleSpec`], a service's `autoscale:` option), a pure
//! decision ([`decide`]) from what the pool observes, and the thread that asks for it every
//! interval.

use super::state::Shared;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::{Weak, mpsc};
use std::time::Duration;
use weir_types::{Error, Result};

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The autoscaler: every `interval` it compares queue depth and utilisation with its thresholds
/// and adds or removes one instance, within `[instances.min, instances.max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// How often the autoscaler looks. Default `1s`.
    #[serde(
        default = "default_interval",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub interval: Duration,
    /// Queued requests per live instance at or above which one instance is added. Default 2.
    #[serde(default = "default_queue_per_instance")]
    pub scale_out_queue: f64,
    /// Utilisation (fraction of the interval the ready instances spent running batches) above
    /// which one instance is added while requests are queued. Default 0.85.
    #[serde(default = "default_out_util")]
    pub scale_out_utilisation: f64,
    /// Utilisation below which one instance is removed when nothing is queued. Default 0.3.
    #[serde(default = "default_in_util")]
    pub scale_in_utilisation: f64,
    /// Shortest time between two changes. Default `5s`.
    #[serde(
        default = "default_cooldown",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub cooldown: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_queue_per_instance() -> f64 {
    2.0
}
fn default_out_util() -> f64 {
    0.85
}
fn default_in_util() -> f64 {
    0.3
}
fn default_cooldown() -> Duration {
    Duration::from_secs(5)
}

impl Default for AutoscaleSpec {
    fn default() -> Self {
        AutoscaleSpec {
            interval: default_interval(),
            scale_out_queue: default_queue_per_instance(),
            scale_out_utilisation: default_out_util(),
            scale_in_utilisation: default_in_util(),
            cooldown: default_cooldown(),
        }
    }
}

/// What the autoscaler looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Instances loading or ready (not draining).
    pub live: usize,
    /// Of those, instances still loading.
    pub loading: usize,
    /// Requests waiting in the service's queue.
    pub queued: usize,
    /// Fraction of the interval the ready instances spent running batches.
    pub utilisation: f64,
    /// Time since the number of instances last changed.
    pub since_change: Duration,
}

/// The number of instances to run next, within `[min, max]`: one more when the queue is deep
/// (`scale_out_queue` per live instance) or the instances are busy above
/// `scale_out_utilisation` with requests waiting; one fewer when nothing waits and utilisation is
/// below `scale_in_utilisation`; otherwise unchanged. Nothing changes while an instance is loading
/// or within `cooldown` of the last change.
pub fn decide(o: &Observation, p: &AutoscaleSpec, min: usize, max: usize) -> usize {
    let current = o.live.clamp(min, max.max(min));
    if o.loading > 0 || o.since_change < p.cooldown {
        return current;
    }
    let deep = o.queued as f64 >= p.scale_out_queue * o.live.max(1) as f64;
    let busy = o.queued > 0 && o.utilisation > p.scale_out_utilisation;
    if (deep || busy) && current < max {
        return current + 1;
    }
    if o.queued == 0 && o.utilisation < p.scale_in_utilisation && current > min {
        return current - 1;
    }
    current
}

/// Starts the autoscaler thread; dropping the returned sender stops it.
pub(crate) fn spawn(shared: Weak<Shared>, interval: Duration) -> Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("weir-pool-autoscaler".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                let Some(s) = shared.upgrade() else {
                    break;
                };
                s.autoscale_tick();
            }
        })
        .map_err(|e| Error::internal("cannot start the autoscaler thread").with_source(e))?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(live: usize, queued: usize, utilisation: f64) -> Observation {
        Observation {
            live,
            loading: 0,
            queued,
            utilisation,
            since_change: Duration::from_secs(60),
        }
    }

    #[test]
    fn decisions() {
        let p = AutoscaleSpec::default();
        // Deep queue: out by one, never above max.
        assert_eq!(decide(&obs(1, 5, 0.5), &p, 1, 3), 2);
        assert_eq!(decide(&obs(3, 50, 1.0), &p, 1, 3), 3);
        // Busy with a little queued: out.
        assert_eq!(decide(&obs(2, 1, 0.95), &p, 1, 3), 3);
        // Idle: in by one, never below min.
        assert_eq!(decide(&obs(3, 0, 0.1), &p, 1, 3), 2);
        assert_eq!(decide(&obs(1, 0, 0.0), &p, 1, 3), 1);
        // In between: unchanged.
        assert_eq!(decide(&obs(2, 0, 0.5), &p, 1, 3), 2);
        // Loading or cooling down: unchanged.
        let mut o = obs(1, 10, 1.0);
        o.loading = 1;
        assert_eq!(decide(&o, &p, 1, 3), 1);
        let mut o = obs(1, 10, 1.0);
        o.since_change = Duration::from_secs(1);
        assert_eq!(decide(&o, &p, 1, 3), 1);
    }
}
