//! The checkpoint coordinator protocol, sans-IO: facts in, decisions out.
//!
//! [`Coordinator`] holds no clock, spawns nothing and touches no storage. The runtime feeds it
//! facts — time passed ([`poll`](Coordinator::poll)), a task acknowledged a checkpoint
//! ([`on_ack`](Coordinator::on_ack)), a task or the store declined one
//! ([`on_decline`](Coordinator::on_decline)), the manifest was written
//! ([`on_finalized`](Coordinator::on_finalized)), a task finished its input
//! ([`on_finished_task`](Coordinator::on_finished_task)) — and carries out the [`Action`]s each
//! call returns, in order. Every call takes `now` from the caller, so tests drive it with a fake
//! clock and a failing sequence replays exactly.
//!
//! # Life of a checkpoint
//!
//! ```text
//!            poll: due            all expected acks in       older ones resolved       on_finalized
//!  (none) ───────────────► Acking ───────────────────► Acked ──────────────────► Finalizing ─────────► complete
//!           Trigger{id}      │                           │      Finalize{id}          │                Notify{id}
//!                            │ timeout: Expire{id}       │ timeout: Expire{id}        │ on_decline:    Retain{keep}
//!                            │ on_decline: Abort         │ on_decline: Abort          │ Abort
//!                            │ newer one Finalizes:      │ newer one Finalizes:       │
//!                            │ Abort(Subsumed)           │ Abort(Subsumed)            │
//! ```
//!
//! # Rules
//!
//! - **Triggering.** A checkpoint is triggered by `poll(now)` when all of these hold: `now` is at
//!   least `interval` after the previous trigger (or after the coordinator was created, for the
//!   first one); `now` is at least `min_pause` after the most recent *end* of a checkpoint
//!   (completed, expired, declined or subsumed); fewer than `max_concurrent` checkpoints are in
//!   flight; and at least one source task has not finished (barriers start at sources, so with
//!   every source finished no barrier could flow). At most one checkpoint is triggered per call.
//!   After [`request_checkpoint`](Coordinator::request_checkpoint) the `interval` condition is
//!   waived for the next trigger (the others hold).
//! - **Ids** strictly increase, starting at `next_id` given to [`Coordinator::new`] (after a
//!   restore from checkpoint *n*, pass *n + 1* so that no folder is reused).
//! - **Expected tasks.** A checkpoint expects an ack from every task that had not finished when it
//!   was triggered. A task that finishes later ([`on_finished_task`](Coordinator::on_finished_task))
//!   is removed from the expected set of every checkpoint still waiting for it: it has emitted all
//!   its output before its end-of-stream, so downstream tasks' state already includes everything
//!   it will ever send, and it will never see that barrier. The runtime must carry the final
//!   state of a finished task (for example a source's end position) into later manifests, or mark
//!   it finished in [`Manifest::extra`](crate::Manifest::extra), so that a restore does not replay
//!   its input.
//! - **Completion.** When the last expected ack of checkpoint *n* arrives, *n* is *acked*. An acked
//!   checkpoint is finalized (`Finalize{n}`: the runtime writes the manifest) as soon as no other
//!   checkpoint is finalizing; when several are acked, the newest is finalized and every older
//!   checkpoint still in flight is aborted as [`AbortReason::Subsumed`] (its effects are included
//!   in *n*). So finalizations, and therefore `Notify`s, happen in strictly increasing id order,
//!   one at a time. `Notify{n}` means: every task may publish what it staged for any checkpoint up
//!   to *n* (a sink's two-phase commit).
//! - **Failure.** A checkpoint that is not finalizing expires `timeout` after its trigger. Once
//!   `Finalize` is issued the timeout no longer applies: the manifest write either succeeds
//!   (`on_finalized`) or fails (the runtime calls `on_decline`). A declined, expired or subsumed
//!   checkpoint never completes; later acks, declines or finalizations for it are ignored.
//!
//! # Invariants (checked by the property tests below)
//!
//! 1. Triggered ids strictly increase.
//! 2. At most `max_concurrent` checkpoints are in flight (triggered and not yet ended).
//! 3. Each trigger is at least `interval` after the previous trigger and at least `min_pause` after
//!    the previous end.
//! 4. `Finalize{n}` is issued only when every task either acked *n* or had finished.
//! 5. `Notify{n}` follows `Finalize{n}` and `on_finalized(n)`; an expired or aborted checkpoint is
//!    never notified; notified ids strictly increase.
//! 6. Every triggered checkpoint ends at most once (`Expire`, `Abort` or `Notify`).
//!
//! # Driving it
//!
//! ```
//! use std::time::{Duration, Instant};
//! use weir_checkpoint::{Action, CheckpointConfig, Coordinator, ExpectedTask, TaskKey};
//!
//! let t0 = Instant::now();
//! let src = TaskKey::new("source", 0);
//! let sink = TaskKey::new("sink", 0);
//! let tasks = vec![ExpectedTask::source(src.clone()), ExpectedTask::other(sink.clone())];
//! let mut c = Coordinator::new(CheckpointConfig::default(), tasks, 1, t0).unwrap();
//!
//! assert!(c.poll(t0).is_empty()); // not due before the interval
//! let t1 = t0 + Duration::from_secs(10);
//! assert!(matches!(c.poll(t1)[..], [Action::Trigger { id: 1, .. }]));
//! assert!(c.on_ack(1, &src, t1).is_empty());
//! assert_eq!(c.on_ack(1, &sink, t1), vec![Action::Finalize { id: 1 }]);
//! // ... the runtime writes the manifest ...
//! assert_eq!(c.on_finalized(1, t1), vec![Action::Notify { id: 1 }, Action::Retain { keep: 3 }]);
//! ```

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};
use weir_types::{BarrierKind, CheckpointId, Error, Result};

/// How barriers are aligned; see `DESIGN.md` §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointMode {
    /// A task holds the inputs that delivered the barrier until every input delivered it.
    #[default]
    Aligned,
    /// Barriers overtake queued data, which is stored with the checkpoint; for pipelines whose slow
    /// inference would otherwise stall checkpoints.
    Unaligned,
}

impl CheckpointMode {
    /// The barrier kind that carries this mode.
    pub fn barrier_kind(self) -> BarrierKind {
        match self {
            CheckpointMode::Aligned => BarrierKind::Aligned,
            CheckpointMode::Unaligned => BarrierKind::Unaligned,
        }
    }
}

/// When and how checkpoints are taken. Durations are written as humantime strings (`"10s"`,
/// `"1m 30s"`, `"500ms"`); unknown fields are rejected; missing fields take their defaults.
///
/// ```
/// let c: weir_checkpoint::CheckpointConfig =
///     serde_json::from_str(r#"{ "interval": "1s", "mode": "unaligned" }"#).unwrap();
/// assert_eq!(c.interval, std::time::Duration::from_secs(1));
/// assert_eq!(c.max_concurrent, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Time between two triggers. Default `10s`. Must be > 0.
    #[serde(with = "humantime_duration")]
    pub interval: Duration,
    /// A checkpoint not acked by every expected task this long after its trigger expires.
    /// Default `10m`. Must be > 0.
    #[serde(with = "humantime_duration")]
    pub timeout: Duration,
    /// At most this many checkpoints in flight at once. Default `1`. Must be ≥ 1.
    pub max_concurrent: usize,
    /// Least time between the end of one checkpoint (whatever its outcome) and the trigger of the
    /// next. Default `0s`.
    #[serde(with = "humantime_duration")]
    pub min_pause: Duration,
    /// Barrier alignment. Default `aligned`.
    pub mode: CheckpointMode,
    /// How many complete checkpoints to keep in the store; the newest complete one is always kept,
    /// even with `0`. Files that a kept checkpoint refers to (see `incremental`) are kept too.
    /// Default `3`.
    pub retain: usize,
    /// Incremental checkpoints: each subtask writes only the key groups of its keyed state that
    /// changed since its previous checkpoint and refers to the earlier files for the rest
    /// ([`crate::incremental`]). Default `true`.
    pub incremental: bool,
    /// With `incremental`, every `full_every`-th checkpoint of a subtask is full (writes
    /// everything), which bounds how many checkpoints a restore reads and lets retention
    /// delete old files. Default `10`; `1` makes every checkpoint full. Must be ≥ 1.
    pub full_every: u32,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            max_concurrent: 1,
            min_pause: Duration::ZERO,
            mode: CheckpointMode::Aligned,
            retain: 3,
            incremental: true,
            full_every: 10,
        }
    }
}

impl CheckpointConfig {
    /// What the tasks' incremental trackers need of this configuration.
    pub fn incremental_config(&self) -> crate::IncrementalConfig {
        crate::IncrementalConfig {
            enabled: self.incremental,
            full_every: self.full_every,
        }
    }

    /// Checks the ranges documented on each field; errors with kind `Config` naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(Error::config("checkpoint interval must be greater than 0"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("checkpoint timeout must be greater than 0"));
        }
        if self.max_concurrent == 0 {
            return Err(Error::config(
                "checkpoint max_concurrent must be at least 1",
            ));
        }
        if self.full_every == 0 {
            return Err(Error::config(
                "checkpoint full_every must be at least 1 (1: every checkpoint is full)",
            ));
        }
        Ok(())
    }
}

/// Serde for `Duration` as a humantime string (`"10s"`, `"1h 5m"`).
mod humantime_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration '{text}': {e} (write for example \"10s\", \"500ms\" or \"2m\")"
            ))
        })
    }
}

/// Identifies one running subtask: a node of the job graph and the subtask index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// The node's name.
    pub node: String,
    /// The subtask index, `0..parallelism`.
    pub subtask: u32,
}

impl TaskKey {
    /// Subtask `subtask` of `node`.
    pub fn new(node: impl Into<String>, subtask: u32) -> Self {
        TaskKey {
            node: node.into(),
            subtask,
        }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.node, self.subtask)
    }
}

/// A task that takes part in checkpoints, as declared to [`Coordinator::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTask {
    /// The task.
    pub key: TaskKey,
    /// Whether barriers are injected here (a source subtask).
    pub is_source: bool,
}

impl ExpectedTask {
    /// A source subtask.
    pub fn source(key: TaskKey) -> Self {
        ExpectedTask {
            key,
            is_source: true,
        }
    }

    /// An operator or sink subtask.
    pub fn other(key: TaskKey) -> Self {
        ExpectedTask {
            key,
            is_source: false,
        }
    }
}

/// Why a checkpoint was aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// A task or the store declined it (a snapshot or a write failed); the text says why.
    Declined(String),
    /// A newer checkpoint completed first and includes everything this one would have.
    Subsumed {
        /// The newer checkpoint.
        by: CheckpointId,
    },
    /// Not every task acknowledged it within the timeout ([`Action::Expire`]; the coordinator
    /// itself reports expiry as that action, the runtime passes this reason on to the tasks).
    Expired,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Declined(why) => write!(f, "declined: {why}"),
            AbortReason::Subsumed { by } => write!(f, "subsumed by checkpoint {by}"),
            AbortReason::Expired => write!(f, "expired before every task acknowledged it"),
        }
    }
}

/// What the runtime must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Inject a barrier for checkpoint `id` at every running source.
    Trigger {
        /// The new checkpoint.
        id: CheckpointId,
        /// The barrier kind (from [`CheckpointConfig::mode`]).
        kind: BarrierKind,
    },
    /// Checkpoint `id` timed out: delete its files ([`CheckpointStore::abort`]) and tell the tasks
    /// to drop what they staged for it.
    ///
    /// [`CheckpointStore::abort`]: crate::CheckpointStore::abort
    Expire {
        /// The expired checkpoint.
        id: CheckpointId,
    },
    /// Checkpoint `id` will not complete: handle as [`Action::Expire`].
    Abort {
        /// The aborted checkpoint.
        id: CheckpointId,
        /// Why.
        reason: AbortReason,
    },
    /// Every expected task acked `id`: write its manifest ([`CheckpointStore::commit`]), then call
    /// [`Coordinator::on_finalized`], or [`Coordinator::on_decline`] if the write failed.
    ///
    /// [`CheckpointStore::commit`]: crate::CheckpointStore::commit
    Finalize {
        /// The checkpoint to finalize.
        id: CheckpointId,
    },
    /// Checkpoint `id` is complete: tell every task (sinks publish what they staged up to `id`).
    Notify {
        /// The completed checkpoint.
        id: CheckpointId,
    },
    /// Prune old checkpoints: [`CheckpointStore::retain`]`(keep)`.
    ///
    /// [`CheckpointStore::retain`]: crate::CheckpointStore::retain
    Retain {
        /// Complete checkpoints to keep ([`CheckpointConfig::retain`]).
        keep: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for acks.
    Acking,
    /// Every expected task acked; waiting for an older checkpoint's finalization to resolve.
    Acked,
    /// `Finalize` issued; waiting for `on_finalized` or `on_decline`.
    Finalizing,
}

#[derive(Debug, Clone)]
struct InFlight {
    triggered_at: Instant,
    waiting: BTreeSet<TaskKey>,
    phase: Phase,
}

/// The checkpoint coordinator's state machine; see the [module docs](self) for the rules.
#[derive(Debug, Clone)]
pub struct Coordinator {
    config: CheckpointConfig,
    /// Every task, with whether it is a source.
    tasks: BTreeMap<TaskKey, bool>,
    finished: BTreeSet<TaskKey>,
    next_id: CheckpointId,
    in_flight: BTreeMap<CheckpointId, InFlight>,
    /// The previous trigger, or the creation time before the first.
    last_trigger: Instant,
    /// The most recent end of a checkpoint, whatever its outcome.
    last_end: Option<Instant>,
    last_completed: Option<CheckpointId>,
    /// A checkpoint was asked for ([`Coordinator::request_checkpoint`]) and not yet triggered.
    requested: bool,
}

impl Coordinator {
    /// A coordinator for `tasks`, whose first checkpoint will have id `next_id`, created at `now`
    /// (the first trigger is due `interval` later).
    ///
    /// Errors (kind `Config`) when the config is invalid, or (kind `Internal`) when `next_id` is 0
    /// or a task appears twice.
    pub fn new(
        config: CheckpointConfig,
        tasks: impl IntoIterator<Item = ExpectedTask>,
        next_id: CheckpointId,
        now: Instant,
    ) -> Result<Self> {
        config.validate()?;
        if next_id == 0 {
            return Err(Error::internal("checkpoint ids start at 1, got next_id 0"));
        }
        let mut map = BTreeMap::new();
        for t in tasks {
            if map.insert(t.key.clone(), t.is_source).is_some() {
                return Err(Error::internal(format!(
                    "task {} declared twice to the checkpoint coordinator",
                    t.key
                )));
            }
        }
        Ok(Coordinator {
            config,
            tasks: map,
            finished: BTreeSet::new(),
            next_id,
            in_flight: BTreeMap::new(),
            last_trigger: now,
            last_end: None,
            last_completed: None,
            requested: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// The id the next triggered checkpoint will get.
    pub fn next_id(&self) -> CheckpointId {
        self.next_id
    }

    /// The newest checkpoint completed by this coordinator.
    pub fn last_completed(&self) -> Option<CheckpointId> {
        self.last_completed
    }

    /// The checkpoints in flight (triggered, not yet ended), oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.in_flight.keys().copied()
    }

    /// The tasks checkpoint `id` still waits for (empty once acked), or `None` when `id` is not
    /// in flight. For stall reports: `checkpoint 12 waits for map[1]`.
    pub fn waiting_for(&self, id: CheckpointId) -> Option<impl Iterator<Item = &TaskKey>> {
        self.in_flight.get(&id).map(|c| c.waiting.iter())
    }

    /// Whether `task` has been reported finished.
    pub fn is_finished(&self, task: &TaskKey) -> bool {
        self.finished.contains(task)
    }

    /// When `poll` should next be called if nothing else happens: the next trigger time (when a
    /// trigger is possible) or the earliest expiry, whichever comes first. `None` when nothing is
    /// scheduled. Ask again after every call, since every event may change it.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let trigger = if self.can_trigger() {
            self.trigger_due()
        } else {
            None
        };
        let expiry = self
            .in_flight
            .values()
            .filter(|c| c.phase != Phase::Finalizing)
            .filter_map(|c| c.triggered_at.checked_add(self.config.timeout))
            .min();
        match (trigger, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: expires overdue checkpoints, then triggers a new one if one is due.
    ///
    /// Returns `Expire`s (oldest first), then possibly one `Trigger`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let timeout = self.config.timeout;
        let overdue: Vec<CheckpointId> = self
            .in_flight
            .iter()
            .filter(|(_, c)| {
                c.phase != Phase::Finalizing
                    && c.triggered_at
                        .checked_add(timeout)
                        .is_some_and(|t| now >= t)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.in_flight.remove(&id);
            self.last_end = Some(now);
            actions.push(Action::Expire { id });
        }
        if self.can_trigger() && self.trigger_due().is_some_and(|due| now >= due) {
            self.requested = false;
            let id = self.next_id;
            self.next_id += 1;
            self.last_trigger = now;
            let waiting = self
                .tasks
                .keys()
                .filter(|t| !self.finished.contains(*t))
                .cloned()
                .collect();
            self.in_flight.insert(
                id,
                InFlight {
                    triggered_at: now,
                    waiting,
                    phase: Phase::Acking,
                },
            );
            actions.push(Action::Trigger {
                id,
                kind: self.config.mode.barrier_kind(),
            });
        }
        actions
    }

    /// `task` snapshotted its state for checkpoint `id` and the store wrote it.
    ///
    /// Returns `Finalize` (possibly after `Abort(Subsumed)`s of older checkpoints) when this was
    /// the last expected ack and no older checkpoint is finalizing. Acks for a checkpoint not in
    /// flight (expired, aborted, unknown), repeated acks, and acks from tasks it does not expect
    /// are ignored.
    pub fn on_ack(&mut self, id: CheckpointId, task: &TaskKey, now: Instant) -> Vec<Action> {
        if let Some(c) = self.in_flight.get_mut(&id)
            && c.phase == Phase::Acking
            && c.waiting.remove(task)
            && c.waiting.is_empty()
        {
            c.phase = Phase::Acked;
        }
        self.advance(now)
    }

    /// Checkpoint `id` cannot complete: a task failed to snapshot, a state file or the manifest
    /// could not be written. Returns `Abort{id, Declined(reason)}` if `id` was in flight (in any
    /// phase, including finalizing), followed by whatever that unblocks; otherwise nothing.
    pub fn on_decline(
        &mut self,
        id: CheckpointId,
        reason: impl Into<String>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.in_flight.remove(&id).is_some() {
            self.last_end = Some(now);
            actions.push(Action::Abort {
                id,
                reason: AbortReason::Declined(reason.into()),
            });
        }
        actions.extend(self.advance(now));
        actions
    }

    /// The manifest of checkpoint `id` was written: it is complete.
    ///
    /// Returns `Notify{id}` and `Retain{keep}` (then a `Finalize` of a newer acked checkpoint, if
    /// one was waiting) when `id` was finalizing; otherwise nothing.
    pub fn on_finalized(&mut self, id: CheckpointId, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self
            .in_flight
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Finalizing)
        {
            self.in_flight.remove(&id);
            self.last_end = Some(now);
            self.last_completed = Some(id);
            actions.push(Action::Notify { id });
            actions.push(Action::Retain {
                keep: self.config.retain,
            });
        }
        actions.extend(self.advance(now));
        actions
    }

    /// `task` processed all its input and finished: no checkpoint waits for it from now on,
    /// including those already in flight (see "Expected tasks" in the [module docs](self)). Once
    /// every source has finished, no more checkpoints are triggered.
    ///
    /// Returns a `Finalize` if that removed the last awaited ack. Unknown or already finished
    /// tasks are ignored.
    pub fn on_finished_task(&mut self, task: &TaskKey, now: Instant) -> Vec<Action> {
        if self.tasks.contains_key(task) && self.finished.insert(task.clone()) {
            for c in self.in_flight.values_mut() {
                if c.phase == Phase::Acking && c.waiting.remove(task) && c.waiting.is_empty() {
                    c.phase = Phase::Acked;
                }
            }
        }
        self.advance(now)
    }

    /// Someone asked for a checkpoint now (an operator's "checkpoint now"): the next `poll` at
    /// least `min_pause` after the previous end triggers one without waiting for `interval`
    /// (still at most `max_concurrent` in flight: with one in flight, it waits for its end).
    /// Several requests before that trigger are served by the same checkpoint.
    pub fn request_checkpoint(&mut self) {
        self.requested = true;
    }

    fn can_trigger(&self) -> bool {
        self.in_flight.len() < self.config.max_concurrent
            && self
                .tasks
                .iter()
                .any(|(t, is_source)| *is_source && !self.finished.contains(t))
    }

    /// When the next trigger is due, ignoring `max_concurrent` and finished sources; `None` when
    /// it would overflow `Instant`.
    fn trigger_due(&self) -> Option<Instant> {
        let after_interval = if self.requested {
            self.last_trigger
        } else {
            self.last_trigger.checked_add(self.config.interval)?
        };
        match self.last_end {
            Some(end) => Some(after_interval.max(end.checked_add(self.config.min_pause)?)),
            None => Some(after_interval),
        }
    }

    /// Finalizes the newest acked checkpoint when none is finalizing, subsuming older ones.
    fn advance(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self
            .in_flight
            .values()
            .any(|c| c.phase == Phase::Finalizing)
        {
            return actions;
        }
        let Some(newest) = self
            .in_flight
            .iter()
            .rev()
            .find(|(_, c)| c.phase == Phase::Acked)
            .map(|(id, _)| *id)
        else {
            return actions;
        };
        let older: Vec<CheckpointId> = self.in_flight.range(..newest).map(|(id, _)| *id).collect();
        for id in older {
            self.in_flight.remove(&id);
            self.last_end = Some(now);
            actions.push(Action::Abort {
                id,
                reason: AbortReason::Subsumed { by: newest },
            });
        }
        if let Some(c) = self.in_flight.get_mut(&newest) {
            c.phase = Phase::Finalizing;
        }
        actions.push(Action::Finalize { id: newest });
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn src(i: u32) -> TaskKey {
        TaskKey::new("src", i)
    }

    fn sink() -> TaskKey {
        TaskKey::new("sink", 0)
    }

    fn tasks() -> Vec<ExpectedTask> {
        vec![
            ExpectedTask::source(src(0)),
            ExpectedTask::source(src(1)),
            ExpectedTask::other(sink()),
        ]
    }

    fn config(edit: impl FnOnce(&mut CheckpointConfig)) -> CheckpointConfig {
        let mut c = CheckpointConfig {
            interval: S(10),
            timeout: S(60),
            ..CheckpointConfig::default()
        };
        edit(&mut c);
        c
    }

    fn trigger(id: CheckpointId) -> Action {
        Action::Trigger {
            id,
            kind: BarrierKind::Aligned,
        }
    }

    /// One step of a scripted scenario: at `t` seconds after start, do `event`, expect `actions`.
    enum Ev {
        Poll,
        Ack(CheckpointId, TaskKey),
        Decline(CheckpointId),
        Finalized(CheckpointId),
        Finished(TaskKey),
    }

    fn run(config: CheckpointConfig, script: Vec<(u64, Ev, Vec<Action>)>) {
        let t0 = Instant::now();
        let mut c = Coordinator::new(config, tasks(), 1, t0).expect("coordinator");
        for (step, (t, ev, expected)) in script.into_iter().enumerate() {
            let now = t0 + S(t);
            let got = match ev {
                Ev::Poll => c.poll(now),
                Ev::Ack(id, task) => c.on_ack(id, &task, now),
                Ev::Decline(id) => c.on_decline(id, "disk full", now),
                Ev::Finalized(id) => c.on_finalized(id, now),
                Ev::Finished(task) => c.on_finished_task(&task, now),
            };
            assert_eq!(got, expected, "step {step} at t={t}s");
        }
    }

    fn ack_all(t: u64, id: CheckpointId) -> Vec<(u64, Ev, Vec<Action>)> {
        vec![
            (t, Ev::Ack(id, src(0)), vec![]),
            (t, Ev::Ack(id, src(1)), vec![]),
            (t, Ev::Ack(id, sink()), vec![Action::Finalize { id }]),
        ]
    }

    #[test]
    fn happy_path_triggers_every_interval() {
        let mut script = vec![
            (0, Ev::Poll, vec![]),
            (9, Ev::Poll, vec![]),
            (10, Ev::Poll, vec![trigger(1)]),
            (11, Ev::Poll, vec![]),
        ];
        script.extend(ack_all(12, 1));
        script.extend([
            (12, Ev::Poll, vec![]),
            (
                13,
                Ev::Finalized(1),
                vec![Action::Notify { id: 1 }, Action::Retain { keep: 3 }],
            ),
            (19, Ev::Poll, vec![]),
            (20, Ev::Poll, vec![trigger(2)]),
        ]);
        run(config(|_| {}), script);
    }

    #[test]
    fn a_requested_checkpoint_waives_the_interval_only() {
        let t0 = Instant::now();
        let mut c =
            Coordinator::new(config(|c| c.min_pause = S(2)), tasks(), 1, t0).expect("coordinator");
        c.request_checkpoint();
        assert!(matches!(
            c.poll(t0 + S(1))[..],
            [Action::Trigger { id: 1, .. }]
        ));
        // One in flight: a second request waits for its end, then for min_pause.
        c.request_checkpoint();
        assert!(c.poll(t0 + S(2)).is_empty());
        for t in [src(0), src(1), sink()] {
            c.on_ack(1, &t, t0 + S(3));
        }
        c.on_finalized(1, t0 + S(3));
        assert!(c.poll(t0 + S(4)).is_empty(), "min_pause still holds");
        assert!(matches!(
            c.poll(t0 + S(5))[..],
            [Action::Trigger { id: 2, .. }]
        ));
        for t in [src(0), src(1), sink()] {
            c.on_ack(2, &t, t0 + S(5));
        }
        c.on_finalized(2, t0 + S(5));
        // The request is used up: the next trigger waits the interval again.
        assert!(c.poll(t0 + S(14)).is_empty());
        assert!(matches!(
            c.poll(t0 + S(15))[..],
            [Action::Trigger { id: 3, .. }]
        ));
    }

    #[test]
    fn max_concurrent_delays_the_next_trigger() {
        let mut script = vec![
            (10, Ev::Poll, vec![trigger(1)]),
            (20, Ev::Poll, vec![]), // 1 still in flight
            (30, Ev::Poll, vec![]),
        ];
        script.extend(ack_all(35, 1));
        script.extend([
            (
                35,
                Ev::Finalized(1),
                vec![Action::Notify { id: 1 }, Action::Retain { keep: 3 }],
            ),
            (35, Ev::Poll, vec![trigger(2)]), // interval long passed, no min pause
        ]);
        run(config(|_| {}), script);
    }

    #[test]
    fn min_pause_counts_from_the_end_of_the_previous_checkpoint() {
        let mut script = vec![(10, Ev::Poll, vec![trigger(1)])];
        script.extend(ack_all(18, 1));
        script.extend([
            (
                18,
                Ev::Finalized(1),
                vec![Action::Notify { id: 1 }, Action::Retain { keep: 3 }],
            ),
            (20, Ev::Poll, vec![]), // interval passed, but 18 + 5 > 20
            (22, Ev::Poll, vec![]),
            (23, Ev::Poll, vec![trigger(2)]),
        ]);
        run(config(|c| c.min_pause = S(5)), script);
    }

    #[test]
    fn timeout_expires_and_late_acks_are_ignored() {
        run(
            config(|_| {}),
            vec![
                (10, Ev::Poll, vec![trigger(1)]),
                (11, Ev::Ack(1, src(0)), vec![]),
                (69, Ev::Poll, vec![]),
                (70, Ev::Poll, vec![Action::Expire { id: 1 }, trigger(2)]),
                (71, Ev::Ack(1, src(1)), vec![]),
                (71, Ev::Ack(1, sink()), vec![]),
                (71, Ev::Finalized(1), vec![]),
            ],
        );
    }

    #[test]
    fn decline_aborts_and_never_completes() {
        run(
            config(|_| {}),
            vec![
                (10, Ev::Poll, vec![trigger(1)]),
                (11, Ev::Ack(1, src(0)), vec![]),
                (
                    12,
                    Ev::Decline(1),
                    vec![Action::Abort {
                        id: 1,
                        reason: AbortReason::Declined("disk full".into()),
                    }],
                ),
                (13, Ev::Ack(1, src(1)), vec![]),
                (13, Ev::Ack(1, sink()), vec![]),
                (13, Ev::Decline(1), vec![]),
                (20, Ev::Poll, vec![trigger(2)]),
            ],
        );
    }

    #[test]
    fn failed_manifest_write_declines_a_finalizing_checkpoint() {
        let mut script = vec![(10, Ev::Poll, vec![trigger(1)])];
        script.extend(ack_all(11, 1));
        script.extend([
            // The timeout no longer applies once Finalize was issued.
            (100, Ev::Poll, vec![]),
            (
                100,
                Ev::Decline(1),
                vec![Action::Abort {
                    id: 1,
                    reason: AbortReason::Declined("disk full".into()),
                }],
            ),
            (100, Ev::Finalized(1), vec![]),
            (100, Ev::Poll, vec![trigger(2)]),
        ]);
        run(config(|_| {}), script);
    }

    #[test]
    fn duplicate_and_foreign_acks_do_not_complete() {
        run(
            config(|_| {}),
            vec![
                (10, Ev::Poll, vec![trigger(1)]),
                (11, Ev::Ack(1, src(0)), vec![]),
                (11, Ev::Ack(1, src(0)), vec![]),
                (11, Ev::Ack(1, TaskKey::new("stranger", 0)), vec![]),
                (11, Ev::Ack(2, src(1)), vec![]),
                (11, Ev::Ack(1, sink()), vec![]),
                (12, Ev::Ack(1, src(1)), vec![Action::Finalize { id: 1 }]),
            ],
        );
    }

    #[test]
    fn a_finished_task_is_no_longer_awaited() {
        run(
            config(|_| {}),
            vec![
                (10, Ev::Poll, vec![trigger(1)]),
                (11, Ev::Ack(1, src(0)), vec![]),
                (11, Ev::Ack(1, sink()), vec![]),
                // src[1] finished before its barrier was injected: checkpoint 1 stops waiting.
                (12, Ev::Finished(src(1)), vec![Action::Finalize { id: 1 }]),
                (
                    12,
                    Ev::Finalized(1),
                    vec![Action::Notify { id: 1 }, Action::Retain { keep: 3 }],
                ),
                (22, Ev::Poll, vec![trigger(2)]),
                // Checkpoint 2 never expected src[1].
                (23, Ev::Ack(2, src(0)), vec![]),
                (23, Ev::Ack(2, sink()), vec![Action::Finalize { id: 2 }]),
                (
                    23,
                    Ev::Finalized(2),
                    vec![Action::Notify { id: 2 }, Action::Retain { keep: 3 }],
                ),
                // Once every source finished, nothing more is triggered.
                (24, Ev::Finished(src(0)), vec![]),
                (100, Ev::Poll, vec![]),
            ],
        );
    }

    #[test]
    fn a_newer_acked_checkpoint_subsumes_older_ones() {
        let cfg = config(|c| c.max_concurrent = 3);
        run(
            cfg,
            vec![
                (10, Ev::Poll, vec![trigger(1)]),
                (20, Ev::Poll, vec![trigger(2)]),
                (30, Ev::Poll, vec![trigger(3)]),
                (31, Ev::Ack(2, src(0)), vec![]),
                (31, Ev::Ack(2, src(1)), vec![]),
                (
                    31,
                    Ev::Ack(2, sink()),
                    vec![
                        Action::Abort {
                            id: 1,
                            reason: AbortReason::Subsumed { by: 2 },
                        },
                        Action::Finalize { id: 2 },
                    ],
                ),
                // 3 becomes acked while 2 is finalizing: it waits for 2.
                (32, Ev::Ack(3, src(0)), vec![]),
                (32, Ev::Ack(3, src(1)), vec![]),
                (32, Ev::Ack(3, sink()), vec![]),
                (
                    33,
                    Ev::Finalized(2),
                    vec![
                        Action::Notify { id: 2 },
                        Action::Retain { keep: 3 },
                        Action::Finalize { id: 3 },
                    ],
                ),
                (
                    33,
                    Ev::Finalized(3),
                    vec![Action::Notify { id: 3 }, Action::Retain { keep: 3 }],
                ),
                (39, Ev::Poll, vec![]),
                (40, Ev::Poll, vec![trigger(4)]),
            ],
        );
    }

    #[test]
    fn next_wakeup_names_the_next_trigger_or_expiry() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(config(|_| {}), tasks(), 7, t0).expect("coordinator");
        assert_eq!(c.next_wakeup(), Some(t0 + S(10)));
        assert_eq!(c.poll(t0 + S(10)), vec![trigger(7)]);
        // One in flight (max 1): the next event is its expiry.
        assert_eq!(c.next_wakeup(), Some(t0 + S(70)));
        assert_eq!(
            c.waiting_for(7)
                .map(|w| w.map(|t| t.to_string()).collect::<Vec<_>>()),
            Some(vec![
                "sink[0]".to_string(),
                "src[0]".into(),
                "src[1]".into()
            ])
        );
        assert_eq!(c.next_id(), 8);
        assert_eq!(c.in_flight().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn config_parses_humantime_and_rejects_unknown_fields() {
        let c: CheckpointConfig = serde_json::from_str(
            r#"{"interval": "1s", "timeout": "2m 30s", "min_pause": "500ms", "max_concurrent": 2, "mode": "unaligned", "retain": 0}"#,
        )
        .expect("parse");
        assert_eq!(c.interval, S(1));
        assert_eq!(c.timeout, S(150));
        assert_eq!(c.min_pause, Duration::from_millis(500));
        assert_eq!(c.mode.barrier_kind(), BarrierKind::Unaligned);
        let back: CheckpointConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("re-parse");
        assert_eq!(back, c);

        let defaults: CheckpointConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(defaults, CheckpointConfig::default());

        let e = serde_json::from_str::<CheckpointConfig>(r#"{"intervall": "1s"}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `intervall`"), "{e}");
        let e = serde_json::from_str::<CheckpointConfig>(r#"{"interval": "soon"}"#)
            .expect_err("bad duration");
        assert!(e.to_string().contains("invalid duration 'soon'"), "{e}");

        for bad in [
            config(|c| c.interval = Duration::ZERO),
            config(|c| c.timeout = Duration::ZERO),
            config(|c| c.max_concurrent = 0),
        ] {
            let e = Coordinator::new(bad, tasks(), 1, Instant::now()).expect_err("invalid");
            assert_eq!(e.kind(), weir_types::ErrorKind::Config);
        }
        assert!(Coordinator::new(config(|_| {}), tasks(), 0, Instant::now()).is_err());
        let twice = [tasks(), tasks()].concat();
        assert!(Coordinator::new(config(|_| {}), twice, 1, Instant::now()).is_err());
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t0 = Instant::now();
        let cfg = config(|c| {
            c.timeout = Duration::MAX;
            c.min_pause = Duration::MAX;
        });
        let mut c = Coordinator::new(cfg, tasks(), 1, t0).expect("coordinator");
        assert_eq!(c.poll(t0 + S(10)), vec![trigger(1)]);
        assert_eq!(c.next_wakeup(), None);
        assert!(c.poll(t0 + S(100_000)).is_empty());
        let _ = c.on_decline(1, "x", t0 + S(100_001));
        assert!(c.poll(t0 + S(200_000)).is_empty());
    }

    // ---- Property test: random event sequences against the invariants in the module docs. ----

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        Poll,
        Ack(usize, usize),
        Decline(usize),
        Finalized(usize),
        Finished(usize),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u64..8_000).prop_map(Step::Advance),
            3 => Just(Step::Poll),
            6 => (0usize..8, 0usize..4).prop_map(|(i, t)| Step::Ack(i, t)),
            1 => (0usize..8).prop_map(Step::Decline),
            2 => (0usize..8).prop_map(Step::Finalized),
            1 => (0usize..4).prop_map(Step::Finished),
        ]
    }

    fn arb_config() -> impl Strategy<Value = CheckpointConfig> {
        (1u64..5_000, 1u64..20_000, 1usize..4, 0u64..5_000).prop_map(|(i, t, m, p)| {
            CheckpointConfig {
                interval: Duration::from_millis(i),
                timeout: Duration::from_millis(t),
                max_concurrent: m,
                min_pause: Duration::from_millis(p),
                ..CheckpointConfig::default()
            }
        })
    }

    #[derive(Default)]
    struct Model {
        /// id → trigger time.
        triggered: BTreeMap<CheckpointId, Instant>,
        ended: BTreeSet<CheckpointId>,
        acked: BTreeMap<CheckpointId, BTreeSet<TaskKey>>,
        finished: BTreeSet<TaskKey>,
        finalizing: BTreeSet<CheckpointId>,
        finalized_reported: BTreeSet<CheckpointId>,
        last_trigger: Option<(CheckpointId, Instant)>,
        last_end: Option<Instant>,
        last_notify: Option<CheckpointId>,
    }

    impl Model {
        fn in_flight(&self) -> usize {
            self.triggered.len() - self.ended.len()
        }

        fn check(
            &mut self,
            cfg: &CheckpointConfig,
            all: &[TaskKey],
            now: Instant,
            actions: &[Action],
        ) -> std::result::Result<(), TestCaseError> {
            for a in actions {
                match a {
                    Action::Trigger { id, .. } => {
                        if let Some((prev, at)) = self.last_trigger {
                            prop_assert!(*id > prev, "ids must increase: {} after {}", id, prev);
                            prop_assert!(now >= at + cfg.interval, "trigger before interval");
                        }
                        if let Some(end) = self.last_end {
                            prop_assert!(now >= end + cfg.min_pause, "trigger within min pause");
                        }
                        self.last_trigger = Some((*id, now));
                        self.triggered.insert(*id, now);
                        prop_assert!(self.in_flight() <= cfg.max_concurrent, "too many in flight");
                    }
                    Action::Expire { id } => {
                        let at = self.triggered.get(id).copied();
                        prop_assert!(at.is_some_and(|at| now >= at + cfg.timeout), "early expiry");
                        prop_assert!(!self.finalizing.contains(id), "expired while finalizing");
                        prop_assert!(self.ended.insert(*id), "ended twice");
                        self.last_end = Some(now);
                    }
                    Action::Abort { id, .. } => {
                        prop_assert!(self.triggered.contains_key(id), "abort of unknown");
                        prop_assert!(self.ended.insert(*id), "ended twice");
                        self.finalizing.remove(id);
                        self.last_end = Some(now);
                    }
                    Action::Finalize { id } => {
                        prop_assert!(!self.ended.contains(id), "finalize after end");
                        prop_assert!(self.finalizing.is_empty(), "two finalizing at once");
                        let acked = self.acked.get(id).cloned().unwrap_or_default();
                        for t in all {
                            prop_assert!(
                                acked.contains(t) || self.finished.contains(t),
                                "finalize {} without ack from {}",
                                id,
                                t
                            );
                        }
                        self.finalizing.insert(*id);
                    }
                    Action::Notify { id } => {
                        prop_assert!(
                            self.finalized_reported.contains(id),
                            "notify before finalized"
                        );
                        prop_assert!(self.finalizing.remove(id), "notify without finalize");
                        prop_assert!(self.ended.insert(*id), "ended twice");
                        prop_assert!(self.last_notify.is_none_or(|n| *id > n), "notify order");
                        self.last_notify = Some(*id);
                        self.last_end = Some(now);
                    }
                    Action::Retain { keep } => prop_assert_eq!(*keep, cfg.retain),
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold_for_random_event_sequences(
            cfg in arb_config(),
            steps in proptest::collection::vec(arb_step(), 0..120),
        ) {
            let t0 = Instant::now();
            let all: Vec<TaskKey> = tasks().into_iter().map(|t| t.key).collect();
            let mut c = Coordinator::new(cfg.clone(), tasks(), 1, t0).expect("coordinator");
            let mut m = Model::default();
            let mut now = t0;
            // Picks an id: mostly one in flight, sometimes a stale or unknown one.
            let pick = |c: &Coordinator, i: usize| -> CheckpointId {
                let live: Vec<CheckpointId> = c.in_flight().collect();
                if i < live.len() { live[i] } else { c.next_id().saturating_sub(i as u64 % 3) }
            };
            for step in steps {
                let actions = match step {
                    Step::Advance(ms) => { now += Duration::from_millis(ms); vec![] }
                    Step::Poll => c.poll(now),
                    Step::Ack(i, t) => {
                        let id = pick(&c, i);
                        let task = all.get(t).cloned().unwrap_or_else(|| TaskKey::new("x", 9));
                        // Only acks for a checkpoint in flight count as acks.
                        if m.triggered.contains_key(&id) && !m.ended.contains(&id) {
                            m.acked.entry(id).or_default().insert(task.clone());
                        }
                        c.on_ack(id, &task, now)
                    }
                    Step::Decline(i) => { let id = pick(&c, i); c.on_decline(id, "no", now) }
                    Step::Finalized(i) => {
                        let id = pick(&c, i);
                        if m.finalizing.contains(&id) { m.finalized_reported.insert(id); }
                        c.on_finalized(id, now)
                    }
                    Step::Finished(t) => {
                        let task = all.get(t).cloned().unwrap_or_else(|| TaskKey::new("x", 9));
                        if all.contains(&task) { m.finished.insert(task.clone()); }
                        c.on_finished_task(&task, now)
                    }
                };
                m.check(&cfg, &all, now, &actions)?;
                prop_assert_eq!(c.in_flight().count(), m.in_flight());
            }
        }

        /// With every task acking promptly, a checkpoint completes every interval (liveness).
        #[test]
        fn prompt_acks_complete_every_checkpoint(cfg in arb_config(), rounds in 1usize..20) {
            let t0 = Instant::now();
            let mut c = Coordinator::new(cfg.clone(), tasks(), 1, t0).expect("coordinator");
            let all: Vec<TaskKey> = tasks().into_iter().map(|t| t.key).collect();
            let mut now = t0;
            for round in 1..=rounds as u64 {
                let wake = c.next_wakeup().expect("a trigger is scheduled");
                now = now.max(wake);
                let actions = c.poll(now);
                prop_assert_eq!(actions, vec![trigger(round)]);
                let mut last = vec![];
                for t in &all { last = c.on_ack(round, t, now); }
                prop_assert_eq!(last, vec![Action::Finalize { id: round }]);
                let done = c.on_finalized(round, now);
                prop_assert_eq!(done[0].clone(), Action::Notify { id: round });
                prop_assert_eq!(c.last_completed(), Some(round));
            }
        }
    }
}
