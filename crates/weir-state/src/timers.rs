//! Timers per key, in event time and in processing time.
//!
//! An event-time timer at `t` fires when the watermark reaches `t` (`watermark >= t`: no row with
//! an event time below `t` will follow, so everything before `t` has been seen). A processing-time
//! timer at `t` (milliseconds since the Unix epoch) fires when the wall clock reaches `t`. A key has
//! at most one timer per domain and time; registering it again changes nothing. Timers fire in time
//! order (then key id order), and are part of the keyed state: they are snapshotted with their key
//! and fire after a restore, on whichever subtask owns the key then.

use crate::keys::KeyId;
use std::collections::BTreeSet;

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// The watermark.
    EventTime,
    /// The wall clock.
    ProcessingTime,
}

impl TimeDomain {
    pub(crate) fn code(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(TimeDomain::EventTime),
            1 => Some(TimeDomain::ProcessingTime),
            _ => None,
        }
    }
}

/// A timer that fired: the key and the time it was set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// The key whose timer fired.
    pub key: KeyId,
    /// The time it was registered for.
    pub time: i64,
}

/// The timers of one operator instance.
#[derive(Debug, Default)]
pub struct Timers {
    event: BTreeSet<(i64, KeyId)>,
    processing: BTreeSet<(i64, KeyId)>,
}

impl Timers {
    /// No timers.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, domain: TimeDomain) -> &mut BTreeSet<(i64, KeyId)> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer of `key` at `time`; returns whether it is new.
    pub fn register(&mut self, domain: TimeDomain, key: KeyId, time: i64) -> bool {
        self.set(domain).insert((time, key))
    }

    /// Deletes the timer of `key` at `time`; returns whether there was one.
    pub fn delete(&mut self, domain: TimeDomain, key: KeyId, time: i64) -> bool {
        self.set(domain).remove(&(time, key))
    }

    /// Removes and returns, in time order, every event-time timer at or before `watermark`.
    pub fn advance_watermark(&mut self, watermark: i64) -> Vec<Fired> {
        pop_until(&mut self.event, watermark)
    }

    /// Removes and returns, in time order, every processing-time timer at or before `now_ms`.
    pub fn advance_processing_time(&mut self, now_ms: i64) -> Vec<Fired> {
        pop_until(&mut self.processing, now_ms)
    }

    /// The earliest timer of `domain`.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event.first().map(|t| t.0),
            TimeDomain::ProcessingTime => self.processing.first().map(|t| t.0),
        }
    }

    /// The number of timers of both domains.
    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    /// Whether there are no timers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every timer as `(domain, key, time)`.
    pub fn iter(&self) -> impl Iterator<Item = (TimeDomain, KeyId, i64)> + '_ {
        self.event
            .iter()
            .map(|&(t, k)| (TimeDomain::EventTime, k, t))
            .chain(
                self.processing
                    .iter()
                    .map(|&(t, k)| (TimeDomain::ProcessingTime, k, t)),
            )
    }

    /// Keeps only the timers of keys for which `keep` is true (linear in the number of timers).
    pub fn retain_keys(&mut self, mut keep: impl FnMut(KeyId) -> bool) {
        self.event.retain(|&(_, k)| keep(k));
        self.processing.retain(|&(_, k)| keep(k));
    }

    /// Removes every timer of `key` (linear in the number of timers).
    pub fn clear_key(&mut self, key: KeyId) {
        self.event.retain(|&(_, k)| k != key);
        self.processing.retain(|&(_, k)| k != key);
    }
}

fn pop_until(set: &mut BTreeSet<(i64, KeyId)>, time: i64) -> Vec<Fired> {
    let rest = match time.checked_add(1) {
        Some(next) => set.split_off(&(next, 0)),
        None => BTreeSet::new(),
    };
    let fired = std::mem::replace(set, rest);
    fired
        .into_iter()
        .map(|(time, key)| Fired { key, time })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_order_once() {
        let mut t = Timers::new();
        assert!(t.register(TimeDomain::EventTime, 2, 10));
        assert!(!t.register(TimeDomain::EventTime, 2, 10));
        t.register(TimeDomain::EventTime, 1, 10);
        t.register(TimeDomain::EventTime, 1, 5);
        t.register(TimeDomain::EventTime, 3, 11);
        t.register(TimeDomain::ProcessingTime, 3, 1);
        assert_eq!(t.advance_watermark(4), []);
        let fired: Vec<(KeyId, i64)> = t
            .advance_watermark(10)
            .iter()
            .map(|f| (f.key, f.time))
            .collect();
        assert_eq!(fired, [(1, 5), (1, 10), (2, 10)]);
        assert_eq!(t.next(TimeDomain::EventTime), Some(11));
        assert!(t.delete(TimeDomain::EventTime, 3, 11));
        assert_eq!(t.advance_watermark(i64::MAX), []);
        assert_eq!(t.advance_processing_time(1).len(), 1);
        assert!(t.is_empty());
    }
}
