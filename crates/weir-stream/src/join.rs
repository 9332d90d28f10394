//! Joins of two streams on equal keys: `op: interval_join` (the right row's time within bounds of
//! the left row's) and `op: join` (a regular inner join, its state optionally bounded by a TTL).
//!
//! Each side keeps its rows in a [`Buffer`]; a batch from one side probes the other side's buffer
//! (vectorised key rows, a hash index, chains per key) and the matches are emitted at once, then
//! the batch is buffered for the other side's future rows. The watermark drops what can no longer
//! match: for `right.time BETWEEN left.time + lower AND left.time + upper`, a left row once
//! `left.time + upper` is behind the watermark, a right row once `right.time - lower` is (rows
//! behind the watermark are late and dropped or dead-lettered, as in Flink); with a `ttl`, a row
//! once its time plus the TTL is. So the state of an interval join on an unbounded stream stays
//! bounded by the bounds and the sources' out-of-orderness.
//!
//! With `memory_budget`, once the rows buffered pass it the oldest batches' rows are written to
//! local disk and read back only for the rows a probe matches; keys, times and the index stay in
//! memory (see [`Buffer::spill_oldest`]).
//!
//! The output has the left columns then the right ones, each side's names with its optional
//! prefix (`left_prefix`, `right_prefix`); names must not clash.

use crate::buffer::Buffer;
use crate::gauge::StateGauge;
use crate::late::{Clock, OnLate};
use crate::parts::{Parts, key_groups, read};
use crate::spill::{Budget, parse_budget};
use crate::window::{Span, names};
use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use weir_checkpoint::StateSnapshot;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_state::time::{check_event_time_type, event_millis};
use weir_types::{Barrier, Error, KeyGroupRange, Result, Watermark};

/// The two inputs' keys and how output columns are named; shared by every join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinOn {
    /// Key columns of the left input (the first of `inputs`); required.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, as many and of the same types; required.
    pub right_keys: Vec<String>,
    /// Prefix for the left columns in the output; default none.
    #[serde(default)]
    pub left_prefix: String,
    /// Prefix for the right columns in the output; default none.
    #[serde(default)]
    pub right_prefix: String,
}

/// Resolved columns of one side.
#[derive(Debug, Clone)]
pub(crate) struct SideCols {
    pub(crate) schema: SchemaRef,
    pub(crate) key_idx: Vec<usize>,
    pub(crate) time_idx: Option<usize>,
}

fn index(schema: &SchemaRef, key: &str, col: &str) -> Result<usize> {
    schema.index_of(col).map_err(|_| {
        Error::schema(format!(
            "key '{key}': column '{col}' is not in that input; available: {}",
            names(schema)
        ))
    })
}

impl JoinOn {
    /// Checks the keys against both inputs; returns each side's key indices.
    pub(crate) fn sides(
        &self,
        inputs: &[SchemaRef],
        times: (Option<&str>, Option<&str>),
    ) -> Result<(SideCols, SideCols)> {
        let [left, right] = inputs else {
            return Err(Error::config(format!(
                "a join reads exactly two inputs (key 'inputs': [left, right]), found {}",
                inputs.len()
            )));
        };
        if self.left_keys.is_empty() || self.left_keys.len() != self.right_keys.len() {
            return Err(Error::config(format!(
                "key 'right_keys': give as many key columns as 'left_keys' ({}), at least one",
                self.left_keys.len()
            )));
        }
        let mut lk = Vec::new();
        let mut rk = Vec::new();
        for (l, r) in self.left_keys.iter().zip(&self.right_keys) {
            let li = index(left, "left_keys", l)?;
            let ri = index(right, "right_keys", r)?;
            let (lt, rt) = (left.field(li).data_type(), right.field(ri).data_type());
            if lt != rt {
                return Err(Error::schema(format!(
                    "key 'right_keys': '{r}' is {rt} but '{l}' is {lt}; join keys must have the \
                     same type (cast one with with_column first)"
                )));
            }
            lk.push(li);
            rk.push(ri);
        }
        let time = |schema: &SchemaRef, key: &str, t: Option<&str>| -> Result<Option<usize>> {
            t.map(|t| {
                let i = index(schema, key, t)?;
                check_event_time_type(t, schema.field(i).data_type())
                    .map_err(|e| Error::schema(format!("key '{key}': {}", e.message())))?;
                Ok(i)
            })
            .transpose()
        };
        Ok((
            SideCols {
                schema: left.clone(),
                key_idx: lk,
                time_idx: time(left, "left_time", times.0)?,
            },
            SideCols {
                schema: right.clone(),
                key_idx: rk,
                time_idx: time(right, "right_time", times.1)?,
            },
        ))
    }

    /// The output: `leading` columns, then the left's then the right's (prefixed), the right's
    /// `skip_right` columns left out; names must be unique.
    pub(crate) fn output(
        &self,
        leading: Vec<Field>,
        left: &SchemaRef,
        right: &SchemaRef,
        skip_right: &[usize],
    ) -> Result<SchemaRef> {
        let mut fields = leading;
        for f in left.fields() {
            fields.push(
                f.as_ref()
                    .clone()
                    .with_name(format!("{}{}", self.left_prefix, f.name())),
            );
        }
        for (i, f) in right.fields().iter().enumerate() {
            if !skip_right.contains(&i) {
                fields.push(f.as_ref().clone().with_name(format!(
                    "{}{}",
                    self.right_prefix,
                    f.name()
                )));
            }
        }
        let mut seen = BTreeSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(Error::config(format!(
                    "both inputs have a column '{}'; set 'left_prefix' or 'right_prefix' (or \
                     rename one first)",
                    f.name()
                )));
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The columns each input is hash-routed by.
    pub fn partition_keys(&self) -> Vec<Vec<String>> {
        vec![self.left_keys.clone(), self.right_keys.clone()]
    }
}

/// Options of `op: interval_join`: rows of the two inputs with equal keys and
/// `right_time BETWEEN left_time + lower AND left_time + upper`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalJoinSpec {
    /// Keys and output names.
    #[serde(flatten)]
    pub on: JoinOn,
    /// The left input's event-time column; required.
    pub left_time: String,
    /// The right input's event-time column; required.
    pub right_time: String,
    /// Lower bound of the right time relative to the left (may be negative, e.g. `-10s`); required.
    pub lower: Span,
    /// Upper bound, not below `lower`; required.
    pub upper: Span,
    /// What to do with rows behind the watermark: `dead_letter` (default) or `drop`.
    #[serde(default)]
    pub on_late: OnLate,
    /// Bytes of buffered rows each instance keeps in memory (e.g. `256MiB`); beyond it the
    /// oldest rows are written to `spill_dir` and read back when a later row matches them (keys,
    /// times and the hash index stay in memory). Default none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// The directory spilled rows are written to. Default the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

/// Options of `op: join`: a regular inner join on equal keys. Without `ttl` it keeps every row
/// of both inputs; with `ttl` (which needs both time columns) a row is dropped once the watermark
/// is `ttl` past its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Keys and output names.
    #[serde(flatten)]
    pub on: JoinOn,
    /// How long (in event time) a row is kept; default forever.
    #[serde(default)]
    pub ttl: Option<Span>,
    /// The left input's event-time column (needed with `ttl`).
    #[serde(default)]
    pub left_time: Option<String>,
    /// The right input's event-time column (needed with `ttl`).
    #[serde(default)]
    pub right_time: Option<String>,
    /// Bytes of buffered rows each instance keeps in memory (e.g. `256MiB`); beyond it the
    /// oldest rows are written to `spill_dir` and read back when a later row matches them (keys,
    /// times and the hash index stay in memory). Default none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// The directory spilled rows are written to. Default the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

/// How long rows of each side are useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bounds {
    /// `right.time - left.time` within `[lower, upper]`.
    Interval { lower: i64, upper: i64 },
    /// Any times; rows kept `ttl` past their time (forever without).
    Regular { ttl: Option<i64> },
}

impl IntervalJoinSpec {
    /// Plan time: the output schema (left columns, then right columns, prefixed).
    pub fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let (l, r) = self.sides(inputs)?;
        self.on.output(vec![], &l.schema, &r.schema, &[])
    }

    fn sides(&self, inputs: &[SchemaRef]) -> Result<(SideCols, SideCols)> {
        if self.upper < self.lower {
            return Err(Error::config(format!(
                "key 'upper': must not be below 'lower' ({}), found {}",
                self.lower, self.upper
            )));
        }
        self.on
            .sides(inputs, (Some(&self.left_time), Some(&self.right_time)))
    }

    /// Builds one running instance.
    pub fn create(&self, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.build(inputs)?))
    }

    /// Builds one running instance, as its type.
    pub fn build(&self, inputs: &[SchemaRef]) -> Result<StreamJoin> {
        let (l, r) = self.sides(inputs)?;
        let out = self.on.output(vec![], &l.schema, &r.schema, &[])?;
        StreamJoin::new(
            l,
            r,
            out,
            Bounds::Interval {
                lower: self.lower.0,
                upper: self.upper.0,
            },
            self.on_late,
            parse_budget(self.memory_budget.as_deref(), self.spill_dir.as_deref())?,
        )
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "interval join on {} = {}, {} between {} {:+} ms and {:+} ms{}",
            self.on.left_keys.join(", "),
            self.on.right_keys.join(", "),
            self.right_time,
            self.left_time,
            self.lower.0,
            self.upper.0,
            spill_note(self.memory_budget.as_deref())
        )
    }
}

impl JoinSpec {
    fn sides(&self, inputs: &[SchemaRef]) -> Result<(SideCols, SideCols)> {
        if let Some(ttl) = self.ttl {
            if ttl.0 <= 0 {
                return Err(Error::config(format!(
                    "key 'ttl': must be greater than 0, found {ttl}"
                )));
            }
            if self.left_time.is_none() || self.right_time.is_none() {
                return Err(Error::config(
                    "key 'ttl': a TTL counts in event time; give 'left_time' and 'right_time'",
                ));
            }
        }
        self.on.sides(
            inputs,
            (self.left_time.as_deref(), self.right_time.as_deref()),
        )
    }

    /// Plan time: the output schema (left columns, then right columns, prefixed).
    pub fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let (l, r) = self.sides(inputs)?;
        self.on.output(vec![], &l.schema, &r.schema, &[])
    }

    /// Builds one running instance.
    pub fn create(&self, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.build(inputs)?))
    }

    /// Builds one running instance, as its type.
    pub fn build(&self, inputs: &[SchemaRef]) -> Result<StreamJoin> {
        let (l, r) = self.sides(inputs)?;
        let out = self.on.output(vec![], &l.schema, &r.schema, &[])?;
        StreamJoin::new(
            l,
            r,
            out,
            Bounds::Regular {
                ttl: self.ttl.map(|t| t.0),
            },
            OnLate::Drop,
            parse_budget(self.memory_budget.as_deref(), self.spill_dir.as_deref())?,
        )
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let ttl = self.ttl.map(|t| format!(", ttl {t}")).unwrap_or_default();
        format!(
            "join on {} = {}{ttl}{}",
            self.on.left_keys.join(", "),
            self.on.right_keys.join(", "),
            spill_note(self.memory_budget.as_deref())
        )
    }
}

/// `weir validate`'s words for a join's memory budget.
fn spill_note(budget: Option<&str>) -> String {
    budget.map_or(String::new(), |b| {
        format!(", rows over {b} spilled to disk")
    })
}

/// Which input (0 left, 1 right) the batch now being processed came from, as the runtime says
/// ([`OperatorContext::input`]); the planner connects a join's left input first.
pub(crate) fn side_of(ctx: &OperatorContext) -> Result<usize> {
    match ctx.input() {
        i @ (0 | 1) => Ok(i),
        other => Err(Error::internal(format!(
            "{}: a join has two inputs, a batch came on input {other}",
            ctx.name()
        ))),
    }
}

/// A running `op: interval_join` or `op: join`.
pub struct StreamJoin {
    sides: [SideCols; 2],
    buffers: [Buffer; 2],
    output: SchemaRef,
    bounds: Bounds,
    clock: Clock,
    range: KeyGroupRange,
    max_parallelism: u32,
    gauge: StateGauge,
    budget: Option<Budget>,
    /// What the step said about its memory budget: 1 spilling, 2 the index alone passes it.
    budget_noted: u8,
}

impl std::fmt::Debug for StreamJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamJoin")
            .field("left_rows", &self.buffers[0].len())
            .field("right_rows", &self.buffers[1].len())
            .finish()
    }
}

const PARTS: [&str; 2] = ["left", "right"];

impl StreamJoin {
    fn new(
        l: SideCols,
        r: SideCols,
        output: SchemaRef,
        bounds: Bounds,
        on_late: OnLate,
        budget: Option<Budget>,
    ) -> Result<Self> {
        let buffers = [
            Buffer::new(l.schema.clone(), l.key_idx.clone(), l.time_idx)?,
            Buffer::new(r.schema.clone(), r.key_idx.clone(), r.time_idx)?,
        ];
        Ok(StreamJoin {
            sides: [l, r],
            buffers,
            output,
            bounds,
            clock: Clock::new(on_late),
            range: KeyGroupRange { start: 0, end: 1 },
            max_parallelism: 1,
            gauge: StateGauge::default(),
            budget,
            budget_noted: 0,
        })
    }

    /// Memory held by buffered rows that are not spilled (keys, times and index left out).
    pub fn row_bytes(&self) -> usize {
        self.buffers[0].rows_bytes() + self.buffers[1].rows_bytes()
    }

    /// Rows of each side written to disk under the memory budget.
    pub fn spilled_rows(&self) -> [usize; 2] {
        [
            self.buffers[0].spilled_rows(),
            self.buffers[1].spilled_rows(),
        ]
    }

    /// Over the budget, writes the oldest rows of the side holding more to disk until the state
    /// in memory is down to half the budget, or only keys and index are left.
    fn enforce_budget(&mut self, ctx: &OperatorContext) -> Result<()> {
        let Some(budget) = self.budget.as_ref() else {
            return Ok(());
        };
        let total = self.state_bytes();
        if total <= budget.bytes {
            return Ok(());
        }
        let mut need = total - budget.bytes / 2;
        let mut order = [0, 1];
        order.sort_by_key(|&s| std::cmp::Reverse(self.buffers[s].rows_bytes()));
        for side in order {
            if need == 0 {
                break;
            }
            let freed = self.buffers[side].spill_oldest(&budget.dir, need)?;
            need = need.saturating_sub(freed);
        }
        if self.budget_noted == 0 {
            self.budget_noted = 1;
            tracing::info!(
                step = ctx.name(),
                "join rows passed their memory_budget of {} bytes; spilling the oldest to {}",
                budget.bytes,
                budget.dir.display()
            );
        }
        let index = self.buffers[0].index_bytes() + self.buffers[1].index_bytes();
        if index > budget.bytes && self.budget_noted < 2 {
            self.budget_noted = 2;
            tracing::warn!(
                step = ctx.name(),
                "the join's keys, times and index alone take {index} bytes, over its \
                 memory_budget of {} bytes; they are not spilled",
                budget.bytes
            );
        }
        Ok(())
    }

    /// Rows buffered on each side (for tests of boundedness).
    pub fn buffered_rows(&self) -> [usize; 2] {
        [self.buffers[0].len(), self.buffers[1].len()]
    }

    /// Memory held by both sides' rows (approximately).
    pub fn state_bytes(&self) -> usize {
        self.buffers[0].size_bytes() + self.buffers[1].size_bytes()
    }

    /// Whether a left row at `l` and a right row at `r` match in time.
    fn in_time(&self, l: i64, r: i64) -> bool {
        match self.bounds {
            Bounds::Interval { lower, upper } => {
                let d = r.saturating_sub(l);
                d >= lower && d <= upper
            }
            Bounds::Regular { .. } => true,
        }
    }

    fn add(
        &mut self,
        side: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let times = match self.sides[side].time_idx {
            Some(t) => Some(event_millis(batch.column(t))?),
            None => None,
        };
        // Rows without a time, and (interval joins) rows behind the watermark, are left out.
        let (batch, times) = match times {
            Some(times) => {
                let name = self.sides[side]
                    .schema
                    .field(self.sides[side].time_idx.unwrap_or(0))
                    .name()
                    .clone();
                if times.null_count() > 0 {
                    Clock::null_times(ctx, &batch, &times, &name)?;
                }
                let wm = self.clock.watermark();
                let late_matters = matches!(self.bounds, Bounds::Interval { .. });
                let mut keep = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    let ok = times.is_valid(row) && !(late_matters && times.value(row) < wm);
                    if times.is_valid(row) && !ok {
                        self.clock.late_row(
                            ctx,
                            &batch,
                            row,
                            times.value(row),
                            "is behind the watermark",
                        )?;
                    }
                    if ok {
                        keep.push(row as u32);
                    }
                }
                if keep.len() == batch.num_rows() {
                    (batch, Some(times))
                } else {
                    let idx = UInt32Array::from(keep);
                    let b = take_record_batch(&batch, &idx)
                        .map_err(|e| Error::internal("take").with_source(e))?;
                    let t = arrow::compute::take(&times, &idx, None)
                        .map_err(|e| Error::internal("take").with_source(e))?;
                    let t = t.as_any().downcast_ref::<Int64Array>().cloned();
                    (b, t)
                }
            }
            None => (batch, None),
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let other = 1 - side;
        let (keys, valid) = self.buffers[side].keys_of(&batch)?;
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        {
            let buf = &self.buffers[other];
            // With a TTL a buffered row may outlive it inside a batch not yet dropped: such rows
            // match nothing, so results do not depend on how rows were batched.
            let min_time = match self.bounds {
                Bounds::Regular { ttl: Some(ttl) } => {
                    Some(self.clock.watermark().saturating_sub(ttl))
                }
                _ => None,
            };
            let interval = matches!(self.bounds, Bounds::Interval { .. });
            buf.probe(&keys, &valid, |r, id| {
                if let Some(min) = min_time
                    && buf.time(id) < min
                {
                    return;
                }
                if interval && let Some(t) = &times {
                    let (mine_t, their_t) = (t.value(r), buf.time(id));
                    let (l, rt) = if side == 0 {
                        (mine_t, their_t)
                    } else {
                        (their_t, mine_t)
                    };
                    if !self.in_time(l, rt) {
                        return;
                    }
                }
                mine.push(r as u32);
                theirs.push(id);
            });
        }
        if !mine.is_empty() {
            let mine_rows = take_record_batch(&batch, &UInt32Array::from(mine))
                .map_err(|e| Error::internal("take").with_source(e))?;
            let their_rows = self.buffers[other].gather(&theirs)?;
            let (l, r) = if side == 0 {
                (mine_rows, their_rows)
            } else {
                (their_rows, mine_rows)
            };
            let mut cols: Vec<ArrayRef> = l.columns().to_vec();
            cols.extend(r.columns().iter().cloned());
            out.emit(
                RecordBatch::try_new(self.output.clone(), cols)
                    .map_err(|e| Error::internal("cannot build joined rows").with_source(e))?,
            );
        }
        self.buffers[side].push(batch, times)?;
        self.enforce_budget(ctx)
    }

    fn expire(&mut self, w: i64) {
        match self.bounds {
            Bounds::Interval { lower, upper } => {
                // Left rows with time + upper < w, right rows with time - lower < w are useless.
                self.buffers[0].expire(w.saturating_sub(upper));
                self.buffers[1].expire(w.saturating_add(lower));
            }
            Bounds::Regular { ttl: Some(ttl) } => {
                let min = w.saturating_sub(ttl);
                self.buffers[0].expire(min);
                self.buffers[1].expire(min);
            }
            Bounds::Regular { ttl: None } => {}
        }
    }
}

impl StreamJoin {
    /// Bytes and rows buffered.
    fn state_size(&self) -> (usize, usize) {
        let [l, r] = self.buffered_rows();
        (self.state_bytes(), l + r)
    }

    /// Records the state's size in the metrics.
    fn report_state(&mut self, ctx: &OperatorContext) {
        let size = self.state_size();
        self.gauge.report(ctx, size);
    }
}

#[async_trait]
impl Operator for StreamJoin {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let info = ctx.info();
        self.max_parallelism = info.max_parallelism;
        self.range =
            KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.subtask);
        if let Some(snap) = ctx.restored_state().cloned() {
            self.clock.restore(self.range, &snap)?;
            for (side, part) in PARTS.iter().enumerate() {
                for b in read(&snap, part)? {
                    let b =
                        RecordBatch::try_new(self.sides[side].schema.clone(), b.columns().to_vec())
                            .map_err(|e| {
                                Error::io(
                            "checkpoint state does not fit this join (were its inputs changed?)",
                        )
                        .with_source(e)
                            })?;
                    let times = match self.sides[side].time_idx {
                        Some(t) => Some(event_millis(b.column(t))?),
                        None => None,
                    };
                    self.buffers[side].push(b, times)?;
                }
            }
            self.enforce_budget(ctx)?;
        }
        self.report_state(ctx);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let side = side_of(ctx)?;
        self.add(side, batch, ctx, out)?;
        if self.gauge.due() {
            self.report_state(ctx);
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if self.clock.advance(watermark.0) {
            self.expire(watermark.0);
            // Matches are emitted as rows arrive, so nothing is held back from it.
            out.emit_watermark(watermark);
        }
        self.report_state(ctx);
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        self.clock.snapshot(self.range, &mut snap)?;
        for (side, part) in PARTS.iter().enumerate() {
            let mut parts = Parts::default();
            // Spilled rows are read back: a checkpoint holds the step's rows in memory while it
            // is written.
            for b in self.buffers[side].batches() {
                let b = &b?;
                let keys = self.buffers[side].key_columns(b);
                let groups = key_groups(&keys, b.num_rows(), self.max_parallelism, self.range)?;
                parts.add(b, &groups)?;
            }
            parts.write(part, &mut snap)?;
        }
        self.report_state(ctx);
        Ok(snap)
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        self.report_state(ctx);
        self.clock.finish(ctx.name());
        Ok(())
    }
}
