//! Event time at the sources: the `watermark:` option any source can declare, per-split watermarks
//! merged as the minimum over live splits, idle splits, and the generic handling of late rows.
//!
//! A source that declares `watermark: {column, max_out_of_orderness, idle_timeout}` is wrapped in an
//! [`EventTimeSource`] when the job is planned. The wrapper reads each batch's event-time column
//! (a timestamp, a date, an integer of milliseconds since the Unix epoch, or RFC 3339 text), reports
//! rows without a usable event time as bad rows (a dead letter under `on_error: dead_letter`), and
//! keeps, per split the batch came from (a file, a partition, a generator split; see
//! [`SourceEvent::SplitBatch`]), the largest event time seen. A split's watermark is that maximum
//! minus `max_out_of_orderness`; the source's watermark is the minimum over its live splits, where
//! a split is live until it ends ([`SourceEvent::SplitEnd`]) and while it has produced a row within
//! `idle_timeout`. The minimum is taken by a [`WatermarkMerge`] with one input per split (the same
//! merge every task's input gate uses); the wrapper reports its advances with
//! [`OperatorContext::emit_watermark`] and, when every split is idle, [`OperatorContext::mark_idle`],
//! so downstream inputs leave the source out of their own minimum until it is active again.
//!
//! Watermarks are milliseconds since the Unix epoch and never go backwards. A watermark `w` says
//! that no row with an event time below `w` will follow; a row that still does is *late*.
//! Operators that hold rows by event time (windows, joins) decide what is late with
//! [`late_mask`] and hand late rows to [`OperatorContext::late_rows`], which counts them and sends
//! them to the dead-letter output (reason `late`) or drops them.
//!
//! The tracker ([`SplitWatermarks`]) is a pure state machine fed with the time, so its behaviour is
//! tested without clocks; the wrapper only feeds it. Each split's largest event time is kept in
//! checkpoints (a union entry per split), so a restored split does not start from nothing.

use crate::operator::OperatorContext;
use crate::source::{Source, SourceEvent, SplitId};
use crate::watermark::{Progress, WatermarkMerge};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_checkpoint::{AbortReason, StateKey, StateSnapshot};
use weir_types::{
    Barrier, CheckpointId, Error, ErrorKind, Result, Watermark, WatermarkStatus, row_as_json,
};

fn default_zero() -> String {
    "0s".into()
}

/// The `watermark:` option of a source step.
///
/// ```yaml
/// watermark:
///   column: date_time          # required
///   max_out_of_orderness: 4s   # default 0s
///   idle_timeout: 10s          # default none: a silent split holds time back
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// The event-time column: a timestamp (any unit), a date, an integer (milliseconds since the
    /// Unix epoch) or text in RFC 3339 (`2024-01-01T00:00:00Z`). Required.
    pub column: String,
    /// How far behind the largest event time seen a row may still arrive on time. Default `0s`.
    #[serde(default = "default_zero")]
    pub max_out_of_orderness: String,
    /// A split that has produced no row for this long no longer holds the watermark back (and a
    /// source whose splits are all idle is idle downstream). Default: none.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// A checked [`WatermarkSpec`], as the running wrapper uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// Name of the event-time column.
    pub column: String,
    /// Its index in the source's schema.
    pub index: usize,
    /// Allowed disorder, in milliseconds.
    pub max_out_of_orderness_ms: i64,
    /// When a silent split counts as idle.
    pub idle_timeout: Option<Duration>,
}

fn parse_duration(key: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        Error::config(format!(
            "key 'watermark.{key}': expected a duration like 4s or 500ms, found '{s}'"
        ))
        .with_source(e)
    })
}

impl WatermarkSpec {
    /// Plan time: checks the column exists in `schema` with a type event time can be read from,
    /// and parses the durations. Errors name the key.
    pub fn check(&self, schema: &SchemaRef) -> Result<WatermarkConfig> {
        let Some((index, field)) = schema.column_with_name(&self.column) else {
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::schema(format!(
                "key 'watermark.column': column '{}' is not in the source's output; available: {}",
                self.column,
                names.join(", ")
            )));
        };
        if !is_event_time_type(field.data_type()) {
            return Err(Error::schema(format!(
                "key 'watermark.column': column '{}' is {}; event time must be a timestamp, a \
                 date, an integer of milliseconds since the Unix epoch or RFC 3339 text",
                self.column,
                field.data_type()
            )));
        }
        let ooo = parse_duration("max_out_of_orderness", &self.max_out_of_orderness)?;
        let idle_timeout = self
            .idle_timeout
            .as_deref()
            .map(|s| parse_duration("idle_timeout", s))
            .transpose()?;
        if idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "key 'watermark.idle_timeout': must be above 0 (leave it out for no idleness)",
            ));
        }
        Ok(WatermarkConfig {
            column: self.column.clone(),
            index,
            max_out_of_orderness_ms: ooo.as_millis().min(i64::MAX as u128) as i64,
            idle_timeout,
        })
    }

    /// One phrase for plan descriptions: `event time date_time, 4s out of order, idle after 10s`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "event time {}, {} out of order",
            self.column, self.max_out_of_orderness
        );
        if let Some(t) = &self.idle_timeout {
            s.push_str(&format!(", idle after {t}"));
        }
        s
    }
}

/// Whether event time can be read from a column of this type.
pub fn is_event_time_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Int64
            | DataType::Int32
            | DataType::UInt32
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

/// The event times of `column` in milliseconds since the Unix epoch; null where a row has none
/// (the value is null, or text that is not a timestamp). Timestamps of a finer unit are floored
/// to the millisecond.
pub fn event_times_ms(column: &ArrayRef) -> Result<Int64Array> {
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    let ms = match column.data_type() {
        DataType::Int64 => return Ok(column.as_primitive::<Int64Type>().clone()),
        DataType::Int32 | DataType::UInt32 => {
            arrow::compute::cast_with_options(column, &DataType::Int64, &safe)?
        }
        DataType::Timestamp(unit, _) => {
            let raw = arrow::compute::cast_with_options(column, &DataType::Int64, &safe)?;
            let raw = raw.as_primitive::<Int64Type>();
            let div = match unit {
                TimeUnit::Second => {
                    return Ok(arrow::compute::kernels::arity::unary(raw, |v| {
                        v.saturating_mul(1000)
                    }));
                }
                TimeUnit::Millisecond => return Ok(raw.clone()),
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            return Ok(arrow::compute::kernels::arity::unary(raw, |v| {
                v.div_euclid(div)
            }));
        }
        DataType::Date32
        | DataType::Date64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View => {
            let ts = arrow::compute::cast_with_options(
                column,
                &DataType::Timestamp(TimeUnit::Millisecond, None),
                &safe,
            )?;
            arrow::compute::cast_with_options(&ts, &DataType::Int64, &safe)?
        }
        other => {
            return Err(Error::schema(format!(
                "event time cannot be read from a column of type {other}"
            )));
        }
    };
    Ok(ms.as_primitive::<Int64Type>().clone())
}

/// One split's clock.
#[derive(Debug, Clone)]
struct SplitClock {
    /// Its input of the [`WatermarkMerge`].
    input: usize,
    /// The largest event time seen (milliseconds), if any row was.
    max: Option<i64>,
    /// When it last produced a row (or was first seen).
    active_at: Instant,
    /// Whether it was reported idle to the merge.
    idle: bool,
}

/// Per-split watermarks, merged by a [`WatermarkMerge`] (one input per split) as the minimum
/// over live, non-idle splits. This adds what a source needs on top of the merge: each split's
/// watermark from the largest event time seen, idleness by `idle_timeout` measured on a clock,
/// and what the source reports when it has no split at all. Pure: every call is given the
/// current time.
#[derive(Debug, Clone)]
pub struct SplitWatermarks {
    out_of_orderness: i64,
    idle_timeout: Option<Duration>,
    splits: HashMap<SplitId, SplitClock>,
    merge: WatermarkMerge,
    /// The watermark and status last handed out.
    reported: Option<Watermark>,
    status: WatermarkStatus,
    /// When the source was opened or last produced a row (for a source with no live split).
    active_at: Instant,
}

impl SplitWatermarks {
    /// A tracker with no splits yet, started at `now`.
    pub fn new(max_out_of_orderness_ms: i64, idle_timeout: Option<Duration>, now: Instant) -> Self {
        SplitWatermarks {
            out_of_orderness: max_out_of_orderness_ms,
            idle_timeout,
            splits: HashMap::new(),
            merge: WatermarkMerge::new(0),
            reported: None,
            status: WatermarkStatus::Active,
            active_at: now,
        }
    }

    /// `split` is now read: it holds the watermark back until it produces rows, goes idle or
    /// ends. It starts at `restored` (its largest event time before a restore) if given.
    pub fn on_split_start(&mut self, split: &SplitId, restored: Option<i64>, now: Instant) {
        self.ensure(split, restored, now);
    }

    /// Makes the clock of `split` (active, at `restored`) when it is new.
    fn ensure(&mut self, split: &SplitId, restored: Option<i64>, now: Instant) {
        let merge = &mut self.merge;
        let ooo = self.out_of_orderness;
        self.splits.entry(split.clone()).or_insert_with(|| {
            let input = merge.add_input();
            if let Some(m) = restored {
                merge.watermark(input, Watermark(m.saturating_sub(ooo)));
            }
            SplitClock {
                input,
                max: restored,
                active_at: now,
                idle: false,
            }
        });
    }

    /// Rows arrived from `split`, the largest event time among them being `max` (none when every
    /// row was refused). A split seen for the first time starts at `restored` (its maximum before
    /// a restore) if given.
    pub fn on_rows(
        &mut self,
        split: &SplitId,
        max: Option<i64>,
        restored: Option<i64>,
        now: Instant,
    ) {
        self.active_at = now;
        self.ensure(split, restored, now);
        let (merge, ooo) = (&mut self.merge, self.out_of_orderness);
        let Some(clock) = self.splits.get_mut(split) else {
            return;
        };
        clock.active_at = now;
        if std::mem::take(&mut clock.idle) {
            merge.set_status(clock.input, WatermarkStatus::Active);
        }
        if let Some(m) = max {
            clock.max = Some(clock.max.map_or(m, |c| c.max(m)));
        }
        if let Some(m) = clock.max {
            merge.watermark(clock.input, Watermark(m.saturating_sub(ooo)));
        }
    }

    /// `split` will produce nothing more: it no longer holds the watermark back.
    pub fn on_split_end(&mut self, split: &SplitId) {
        if let Some(c) = self.splits.remove(split) {
            self.merge.end(c.input);
        }
    }

    /// The largest event time seen per live split (what a checkpoint keeps).
    pub fn maxima(&self) -> impl Iterator<Item = (&SplitId, i64)> {
        self.splits
            .iter()
            .filter_map(|(s, c)| c.max.map(|m| (s, m)))
    }

    /// How long after `now` a split may turn idle (when to look again), if ever.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let timeout = self.idle_timeout?;
        let oldest = if self.splits.is_empty() {
            (self.status == WatermarkStatus::Active).then_some(self.active_at)
        } else {
            self.splits
                .values()
                .filter(|c| !c.idle)
                .map(|c| c.active_at)
                .min()
        }?;
        Some((oldest + timeout).saturating_duration_since(now))
    }

    /// What changed at `now`: a higher watermark, the source turning idle or active again, or
    /// nothing. Splits silent for `idle_timeout` are marked idle in the merge first.
    pub fn poll(&mut self, now: Instant) -> Progress {
        if let Some(t) = self.idle_timeout {
            for c in self.splits.values_mut() {
                if !c.idle && now.saturating_duration_since(c.active_at) >= t {
                    c.idle = true;
                    self.merge.set_status(c.input, WatermarkStatus::Idle);
                }
            }
        }
        let status = if self.splits.is_empty() {
            // No live split: idle once the source has been silent for the timeout.
            match self.idle_timeout {
                Some(t) if now.saturating_duration_since(self.active_at) >= t => {
                    WatermarkStatus::Idle
                }
                _ => WatermarkStatus::Active,
            }
        } else {
            self.merge.status()
        };
        let mut progress = Progress::default();
        if let Some(w) = self.merge.current()
            && self.reported.is_none_or(|r| w > r)
        {
            self.reported = Some(w);
            progress.watermark = Some(w);
        }
        if status != self.status {
            self.status = status;
            progress.status = Some(status);
        }
        progress
    }
}

/// Hands `progress` to the runtime: the watermark first, then going idle. (Becoming active again
/// needs nothing: the runtime does it before the source's next batch or watermark.)
fn report(progress: Progress, ctx: &mut OperatorContext) {
    if let Some(w) = progress.watermark {
        ctx.emit_watermark(w);
    }
    if progress.status == Some(WatermarkStatus::Idle) {
        ctx.mark_idle();
    }
}

/// The key of the union-state entry under which a split's largest event time is kept in
/// checkpoints (its payload is the maximum as JSON). The wrapper takes these entries out of the
/// restored state before the wrapped source sees it, so the source reads only its own keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTimeKey {
    event_time_split: String,
}

/// The split of a source that does not name its splits.
fn whole_subtask() -> SplitId {
    Arc::from("")
}

/// Wraps any source with event time: reads the event-time column of every batch, refuses rows
/// without one, tracks per-split watermarks and reports them through
/// [`OperatorContext::emit_watermark`] / [`OperatorContext::mark_idle`] (the runtime sends them
/// after the batch that moved them).
pub struct EventTimeSource {
    inner: Box<dyn Source>,
    config: WatermarkConfig,
    tracker: Option<SplitWatermarks>,
    /// Largest event time per split at the restored checkpoint.
    restored: HashMap<String, i64>,
    unnamed: SplitId,
}

impl std::fmt::Debug for EventTimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTimeSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EventTimeSource {
    /// Wraps `inner`, whose schema must have been checked with [`WatermarkSpec::check`].
    pub fn new(inner: Box<dyn Source>, config: WatermarkConfig) -> Self {
        EventTimeSource {
            inner,
            config,
            tracker: None,
            restored: HashMap::new(),
            unnamed: whole_subtask(),
        }
    }

    fn tracker(&mut self) -> &mut SplitWatermarks {
        let (ooo, idle) = (
            self.config.max_out_of_orderness_ms,
            self.config.idle_timeout,
        );
        self.tracker
            .get_or_insert_with(|| SplitWatermarks::new(ooo, idle, Instant::now()))
    }

    /// Takes the event times of `batch`, refuses rows without one, updates `split`'s clock and
    /// reports the watermark this moves. Returns the rows that have an event time.
    fn on_batch(
        &mut self,
        split: SplitId,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
    ) -> Result<RecordBatch> {
        let column = batch.column(self.config.index).clone();
        let times = event_times_ms(&column).map_err(|e| e.in_operator(ctx.name().to_string()))?;
        let mut batch = batch;
        if times.null_count() > 0 {
            let input = (!split.is_empty()).then(|| split.to_string());
            for i in 0..times.len() {
                if times.is_valid(i) {
                    continue;
                }
                let why = if column.is_null(i) {
                    format!("event-time column '{}' is null", self.config.column)
                } else {
                    let shown =
                        arrow::util::display::array_value_to_string(&column, i).unwrap_or_default();
                    format!(
                        "event-time column '{}': cannot read '{shown}' as a timestamp",
                        self.config.column
                    )
                };
                ctx.bad_row(
                    Error::new(ErrorKind::InvalidInput, why),
                    input.clone(),
                    Some(format!("row {i} of batch")),
                    row_as_json(&batch, i),
                )?;
            }
            let keep = arrow::compute::is_not_null(&times)?;
            batch = arrow::compute::filter_record_batch(&batch, &keep)?;
        }
        let max = arrow::compute::max(&times);
        let restored = if split.is_empty() {
            None
        } else {
            self.restored.get(split.as_ref()).copied()
        };
        let now = Instant::now();
        let tracker = self.tracker();
        tracker.on_rows(&split, max, restored, now);
        let progress = tracker.poll(now);
        report(progress, ctx);
        Ok(batch)
    }
}

#[async_trait]
impl Source for EventTimeSource {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let (Some(state), Some(from)) = (ctx.restored_state(), ctx.restored_from()) {
            let mut own = StateSnapshot::new();
            for e in &state.entries {
                let StateKey::Union(key) = &e.key else {
                    own.entries.push(e.clone());
                    continue;
                };
                let Ok(k) = key.parse::<EventTimeKey>() else {
                    own.entries.push(e.clone());
                    continue;
                };
                let max: i64 = serde_json::from_slice(&e.bytes).map_err(|err| {
                    Error::new(
                        ErrorKind::Io,
                        format!("unreadable event-time entry {key} in the checkpoint"),
                    )
                    .with_source(err)
                })?;
                let m = self.restored.entry(k.event_time_split).or_insert(max);
                *m = (*m).max(max);
            }
            ctx.set_restored_state(own, from);
        }
        self.tracker();
        self.inner.open(ctx).await
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        loop {
            let (split, batch) = match self.inner.next(ctx).await? {
                SourceEvent::Batch(b) => (self.unnamed.clone(), b),
                SourceEvent::SplitBatch { split, batch } => (split, batch),
                SourceEvent::SplitStart(split) => {
                    let restored = self.restored.get(split.as_ref()).copied();
                    self.tracker()
                        .on_split_start(&split, restored, Instant::now());
                    return Ok(SourceEvent::SplitStart(split));
                }
                SourceEvent::SplitEnd(split) => {
                    let tracker = self.tracker();
                    tracker.on_split_end(&split);
                    let progress = tracker.poll(Instant::now());
                    report(progress, ctx);
                    return Ok(SourceEvent::SplitEnd(split));
                }
                SourceEvent::Idle(d) => {
                    let now = Instant::now();
                    let tracker = self.tracker();
                    let progress = tracker.poll(now);
                    let wake = tracker.next_deadline(now).map_or(d, |t| d.min(t));
                    report(progress, ctx);
                    return Ok(SourceEvent::Idle(wake));
                }
                SourceEvent::Finished => return Ok(SourceEvent::Finished),
            };
            let kept = self.on_batch(split.clone(), batch, ctx)?;
            if kept.num_rows() == 0 {
                // Every row was refused; the watermark it may have moved goes out with the next
                // event.
                continue;
            }
            // The runtime sends the batch first, then the watermark it moved.
            return Ok(if split.is_empty() {
                SourceEvent::Batch(kept)
            } else {
                SourceEvent::SplitBatch { split, batch: kept }
            });
        }
    }

    async fn snapshot(
        &mut self,
        barrier: &Barrier,
        ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut snap = self.inner.snapshot(barrier, ctx).await?;
        if let Some(t) = &self.tracker {
            let mut maxima: Vec<_> = t.maxima().filter(|(s, _)| !s.is_empty()).collect();
            maxima.sort();
            for (split, max) in maxima {
                let key = EventTimeKey {
                    event_time_split: split.to_string(),
                };
                snap.push_union(&key, max.to_string())?;
            }
        }
        Ok(snap)
    }

    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        self.inner.notify_checkpoint_complete(id, ctx).await
    }

    async fn notify_checkpoint_aborted(
        &mut self,
        id: CheckpointId,
        reason: &AbortReason,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        self.inner.notify_checkpoint_aborted(id, reason, ctx).await
    }

    async fn close(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.inner.close(ctx).await
    }
}

/// What to do with late rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Send them to the dead-letter output with reason `late` when the job has one
    /// (`on_error: dead_letter`), else drop them; count them either way (the default).
    #[default]
    DeadLetter,
    /// Drop them; count them.
    Drop,
}

/// Which rows are late: event time (milliseconds, `times`) below `watermark − allowed_lateness`.
/// Rows without an event time are not late (they are refused earlier). `None` when no row is late.
pub fn late_mask(
    times: &Int64Array,
    watermark: Option<Watermark>,
    allowed_lateness_ms: i64,
) -> Option<BooleanArray> {
    let w = watermark?.0.saturating_sub(allowed_lateness_ms);
    let values = times.values();
    if !(0..times.len()).any(|i| times.is_valid(i) && values[i] < w) {
        return None;
    }
    let mask: BooleanArray = (0..times.len())
        .map(|i| Some(times.is_valid(i) && values[i] < w))
        .collect();
    Some(mask)
}

impl OperatorContext {
    /// Hands over the rows of `batch` marked in `late` (see [`late_mask`]): counted as late rows,
    /// then sent to the dead-letter output with an error starting with `late:` (policy
    /// [`LatePolicy::DeadLetter`] and a job with a dead-letter output) or dropped. Returns the rows
    /// that are not late.
    pub fn late_rows(
        &mut self,
        batch: &RecordBatch,
        late: &BooleanArray,
        times: &Int64Array,
        watermark: Watermark,
        policy: LatePolicy,
    ) -> Result<RecordBatch> {
        let n_late = late.true_count();
        if n_late == 0 {
            return Ok(batch.clone());
        }
        self.metrics().add_late(n_late as u64);
        if policy == LatePolicy::DeadLetter
            && self.error_policy() == crate::operator::ErrorPolicy::DeadLetter
        {
            for i in 0..late.len() {
                if !late.value(i) {
                    continue;
                }
                self.dead_letter(
                    format!(
                        "late: event time {} ms is behind the watermark {} ms",
                        times.value(i),
                        watermark.0
                    ),
                    Some(format!("row {i} of batch")),
                    row_as_json(batch, i),
                );
            }
        }
        let keep = arrow::compute::not(late)?;
        Ok(arrow::compute::filter_record_batch(batch, &keep)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn split(s: &str) -> SplitId {
        Arc::from(s)
    }

    /// The watermark a poll reported.
    fn wm(w: i64) -> Progress {
        Progress {
            status: None,
            watermark: Some(Watermark(w)),
        }
    }

    fn status(s: WatermarkStatus) -> Progress {
        Progress {
            status: Some(s),
            watermark: None,
        }
    }

    const NOTHING: Progress = Progress {
        status: None,
        watermark: None,
    };

    #[test]
    fn the_watermark_is_the_minimum_over_live_splits() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(10, None, t0);
        w.on_rows(&split("a"), Some(100), None, t0);
        assert_eq!(w.poll(t0), wm(90));
        w.on_rows(&split("b"), Some(50), None, t0);
        // b holds time back: nothing new.
        assert_eq!(w.poll(t0), NOTHING);
        w.on_rows(&split("b"), Some(300), None, t0);
        w.on_rows(&split("a"), Some(200), None, t0);
        assert_eq!(w.poll(t0), wm(190));
        // Older rows never move it back.
        w.on_rows(&split("a"), Some(20), None, t0);
        assert_eq!(w.poll(t0), NOTHING);
        // A split that ends no longer holds time back.
        w.on_split_end(&split("a"));
        assert_eq!(w.poll(t0), wm(290));
    }

    #[test]
    fn a_split_without_rows_holds_time_back_until_idle() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(0, Some(Duration::from_secs(5)), t0);
        w.on_rows(&split("a"), None, None, t0);
        w.on_rows(&split("b"), Some(1_000), None, t0);
        assert_eq!(w.poll(t0), NOTHING);
        w.on_rows(&split("b"), Some(2_000), None, at(t0, 4_000));
        assert_eq!(w.poll(at(t0, 4_000)), NOTHING);
        assert_eq!(w.next_deadline(at(t0, 4_000)), Some(Duration::from_secs(1)));
        // a has been silent for 5 s: b alone sets the watermark.
        assert_eq!(w.poll(at(t0, 5_000)), wm(2_000));
        // Then b goes silent too: the whole source is idle, once.
        assert_eq!(w.poll(at(t0, 9_000)), status(WatermarkStatus::Idle));
        assert_eq!(w.poll(at(t0, 9_500)), NOTHING);
        // b comes back without progress: the source is active again (the runtime says so before
        // its batch), the watermark stays.
        w.on_rows(&split("b"), Some(1_500), None, at(t0, 10_000));
        assert_eq!(w.poll(at(t0, 10_000)), status(WatermarkStatus::Active));
        assert_eq!(w.poll(at(t0, 10_000)), NOTHING);
        // And it moves on from there.
        w.on_rows(&split("b"), Some(2_500), None, at(t0, 10_100));
        assert_eq!(w.poll(at(t0, 10_100)), wm(2_500));
    }

    #[test]
    fn a_started_split_holds_time_back_before_its_first_row() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(0, None, t0);
        w.on_split_start(&split("a"), None, t0);
        w.on_split_start(&split("b"), Some(40), t0);
        w.on_rows(&split("a"), Some(100), None, t0);
        // b restored at 40 holds time there until it moves.
        assert_eq!(w.poll(t0), wm(40));
        w.on_rows(&split("b"), Some(70), None, t0);
        assert_eq!(w.poll(t0), wm(70));
        w.on_split_start(&split("c"), None, t0);
        w.on_rows(&split("a"), Some(200), None, t0);
        w.on_rows(&split("b"), Some(300), None, t0);
        assert_eq!(w.poll(t0), NOTHING);
    }

    #[test]
    fn without_idle_timeout_silence_changes_nothing() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(0, None, t0);
        assert_eq!(w.poll(at(t0, 100_000)), NOTHING);
        w.on_rows(&split("a"), Some(7), None, t0);
        assert_eq!(w.poll(at(t0, 100_000)), wm(7));
        assert_eq!(w.next_deadline(t0), None);
    }

    #[test]
    fn a_source_with_no_split_turns_idle_after_the_timeout() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(0, Some(Duration::from_secs(1)), t0);
        assert_eq!(w.poll(at(t0, 500)), NOTHING);
        assert_eq!(w.poll(at(t0, 1_000)), status(WatermarkStatus::Idle));
    }

    #[test]
    fn restored_maxima_start_the_split() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(0, None, t0);
        w.on_rows(&split("a"), Some(10), Some(500), t0);
        assert_eq!(w.poll(t0), wm(500));
        assert_eq!(w.maxima().map(|(_, m)| m).collect::<Vec<_>>(), vec![500]);
    }

    #[test]
    fn reads_event_time_from_timestamps_integers_and_text() -> Result<()> {
        let us: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_500), None, Some(-1)]).with_timezone("UTC"),
        );
        let ms = event_times_ms(&us)?;
        assert_eq!(ms.value(0), 1);
        assert!(ms.is_null(1));
        assert_eq!(ms.value(2), -1);
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("1970-01-01T00:00:01Z"),
            Some("not a time"),
            None,
        ]));
        let ms = event_times_ms(&text)?;
        assert_eq!(ms.value(0), 1_000);
        assert!(ms.is_null(1) && ms.is_null(2));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![5, 6]));
        assert_eq!(event_times_ms(&ints)?.values().to_vec(), vec![5, 6]);
        Ok(())
    }

    #[test]
    fn plan_time_checks_name_the_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("f", DataType::Float64, true),
        ]));
        let spec = |col: &str, ooo: &str, idle: Option<&str>| WatermarkSpec {
            column: col.into(),
            max_out_of_orderness: ooo.into(),
            idle_timeout: idle.map(Into::into),
        };
        let ok = spec("ts", "4s", Some("10s")).check(&schema).expect("valid");
        assert_eq!(ok.max_out_of_orderness_ms, 4_000);
        assert_eq!(ok.idle_timeout, Some(Duration::from_secs(10)));
        let e = spec("nope", "0s", None)
            .check(&schema)
            .expect_err("missing");
        assert!(e.to_string().contains("watermark.column"), "{e}");
        let e = spec("f", "0s", None).check(&schema).expect_err("float");
        assert!(e.to_string().contains("Float64"), "{e}");
        let e = spec("ts", "soon", None)
            .check(&schema)
            .expect_err("duration");
        assert!(e.to_string().contains("max_out_of_orderness"), "{e}");
        let e = spec("ts", "0s", Some("0s"))
            .check(&schema)
            .expect_err("zero idle");
        assert!(e.to_string().contains("idle_timeout"), "{e}");
    }

    #[test]
    fn late_rows_are_those_behind_watermark_minus_lateness() {
        let times = Int64Array::from(vec![Some(100), Some(50), None, Some(89)]);
        assert!(late_mask(&times, None, 0).is_none());
        assert!(late_mask(&times, Some(Watermark(40)), 0).is_none());
        let m = late_mask(&times, Some(Watermark(100)), 10).expect("some late");
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(true), Some(false), Some(true)]
        );
    }
}
