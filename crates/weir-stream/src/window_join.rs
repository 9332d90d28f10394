//! `op: window_join`: rows of two inputs with equal keys in the same window, joined when the
//! watermark reaches the window's end (Flink's window join).
//!
//! Each input's rows are kept per window as Arrow batches; when the window is complete the right
//! rows are indexed by key and the left rows probe them (the same [`Buffer`] the stream joins use),
//! and the window's rows are dropped. Over tumbling or hopping windows the output starts with
//! `window_start` and `window_end`; over column windows (both inputs carry their window, as two
//! aggregates' outputs do) the right input's window columns are left out, being equal to the
//! left's.

use crate::buffer::Buffer;
use crate::gauge::StateGauge;
use crate::join::{JoinOn, side_of};
use crate::late::{Clock, OnLate};
use crate::parts::{Parts, key_groups, read};
use crate::spill::{Budget, Run, merge_ranges, over_budget, parse_budget, read_rows, spill_rows};
use crate::window::{Assigner, RowWindows, WindowSpec};
use crate::windowed::{WINDOW_END, WINDOW_START};
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use weir_checkpoint::StateSnapshot;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Barrier, Error, KeyGroupRange, Result, Watermark};

/// Options of `op: window_join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowJoinSpec {
    /// Keys and output names.
    #[serde(flatten)]
    pub on: JoinOn,
    /// The windows, the same for both inputs: tumbling, hopping, or column (both inputs carry
    /// their window in columns of these names); required.
    pub window: WindowSpec,
    /// The left input's event-time column (tumbling and hopping windows).
    #[serde(default)]
    pub left_time: Option<String>,
    /// The right input's event-time column (tumbling and hopping windows).
    #[serde(default)]
    pub right_time: Option<String>,
    /// What to do with rows whose window was already joined: `dead_letter` (default) or `drop`.
    #[serde(default)]
    pub on_late: OnLate,
    /// Bytes of buffered rows each instance keeps in memory (e.g. `256MiB`); beyond it the
    /// largest windows' rows are written to `spill_dir` and joined from there, one key-group
    /// range at a time, when they fire. Default none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// The directory spilled rows are written to. Default the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Plan {
    schemas: [SchemaRef; 2],
    key_idx: [Vec<usize>; 2],
    windows: [RowWindows; 2],
    /// Per side: the columns rows are routed by (keys, plus window columns of column windows).
    route_idx: [Vec<usize>; 2],
    skip_right: Vec<usize>,
    bound_type: DataType,
    output: SchemaRef,
    budget: Option<Budget>,
}

impl WindowJoinSpec {
    fn plan(&self, inputs: &[SchemaRef]) -> Result<Plan> {
        if matches!(self.window, WindowSpec::Session { .. }) {
            return Err(Error::config(
                "key 'window.type': window_join takes tumbling, hopping or column windows",
            ));
        }
        let (l, r) = self.on.sides(
            inputs,
            (self.left_time.as_deref(), self.right_time.as_deref()),
        )?;
        let lw = RowWindows::new(&self.window, &l.schema, self.left_time.as_deref())
            .map_err(|e| Error::config(format!("left input: {}", e.message())))?;
        let rw = RowWindows::new(&self.window, &r.schema, self.right_time.as_deref())
            .map_err(|e| Error::config(format!("right input: {}", e.message())))?;
        let mut leading = Vec::new();
        let mut skip_right = Vec::new();
        let bound_type = self.window.bound_type(&l.schema, self.left_time.as_deref());
        if lw.assigner == Assigner::Column {
            if let Some((s, e)) = rw.window_idx {
                skip_right = vec![s, e];
            }
        } else {
            leading.push(Field::new(WINDOW_START, bound_type.clone(), false));
            leading.push(Field::new(WINDOW_END, bound_type.clone(), false));
        }
        let output = self.on.output(leading, &l.schema, &r.schema, &skip_right)?;
        let route = |keys: &[usize], w: &RowWindows| {
            let mut v = keys.to_vec();
            if let Some((s, e)) = w.window_idx {
                v.push(s);
                v.push(e);
            }
            v
        };
        let budget = parse_budget(self.memory_budget.as_deref(), self.spill_dir.as_deref())?;
        Ok(Plan {
            budget,
            route_idx: [route(&l.key_idx, &lw), route(&r.key_idx, &rw)],
            schemas: [l.schema, r.schema],
            key_idx: [l.key_idx, r.key_idx],
            windows: [lw, rw],
            skip_right,
            bound_type,
            output,
        })
    }

    /// Plan time: the output schema.
    pub fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.plan(inputs)?.output)
    }

    /// The columns each input is hash-routed by.
    pub fn partition_keys(&self) -> Vec<Vec<String>> {
        let mut keys = self.on.partition_keys();
        if let WindowSpec::Column { start, end } = &self.window {
            for k in &mut keys {
                k.push(start.clone());
                k.push(end.clone());
            }
        }
        keys
    }

    /// Builds one running instance.
    pub fn create(&self, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WindowJoin {
            plan: self.plan(inputs)?,
            clock: Clock::new(self.on_late),
            slots: BTreeMap::new(),
            range: KeyGroupRange { start: 0, end: 1 },
            max_parallelism: 1,
            gauge: StateGauge::default(),
            budget_noted: false,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let budget = match &self.memory_budget {
            Some(b) => format!(", rows over {b} spilled to disk"),
            None => String::new(),
        };
        format!(
            "window join on {} = {} over {}{budget}",
            self.on.left_keys.join(", "),
            self.on.right_keys.join(", "),
            self.window.describe()
        )
    }
}

/// The rows of one window, per side: in memory, and spilled under the budget.
#[derive(Debug, Default)]
struct Slot {
    rows: [Vec<RecordBatch>; 2],
    runs: [Vec<Run>; 2],
}

impl Slot {
    fn bytes(&self) -> usize {
        self.rows
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    fn spilled(&self) -> bool {
        self.runs.iter().any(|r| !r.is_empty())
    }
}

/// A running `op: window_join`.
pub struct WindowJoin {
    plan: Plan,
    clock: Clock,
    /// Rows per window `(end, start)`.
    slots: BTreeMap<(i64, i64), Slot>,
    range: KeyGroupRange,
    max_parallelism: u32,
    gauge: StateGauge,
    /// The step said once that its rows passed the memory budget.
    budget_noted: bool,
}

impl std::fmt::Debug for WindowJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowJoin")
            .field("windows", &self.slots.len())
            .finish()
    }
}

const PARTS: [&str; 2] = ["left", "right"];

impl WindowJoin {
    fn add(&mut self, side: usize, batch: RecordBatch, ctx: &mut OperatorContext) -> Result<()> {
        let windows = self.plan.windows[side];
        let (batch, slots, times) = windows.assign(batch, ctx)?;
        let wm = self.clock.watermark();
        let mut by_window: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
        for (row, &slot) in slots.iter().enumerate() {
            let mut any = false;
            for w in windows.windows_of(slot) {
                if w.0 > wm {
                    any = true;
                    by_window.entry(w).or_default().push(row as u32);
                }
            }
            if !any {
                self.clock.late_row(
                    ctx,
                    &batch,
                    row,
                    times.value(row),
                    "is behind the end of its last window",
                )?;
            }
        }
        for (w, rows) in by_window {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))
                    .map_err(|e| Error::internal("take").with_source(e))?
            };
            self.slots.entry(w).or_default().rows[side].push(part);
        }
        Ok(())
    }

    /// Writes the rows in memory of window `id` to disk, both sides.
    fn spill_slot(&mut self, id: (i64, i64)) -> Result<()> {
        let Some(budget) = self.plan.budget.as_ref() else {
            return Ok(());
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        for side in 0..2 {
            let rows = std::mem::take(&mut slot.rows[side]);
            if let Some(run) = spill_rows(
                budget,
                &rows,
                &self.plan.route_idx[side],
                self.max_parallelism,
                self.range,
            )? {
                slot.runs[side].push(run);
            }
        }
        Ok(())
    }

    /// Spills the largest windows while the rows in memory are over the budget, down to half
    /// of it.
    fn enforce_budget(&mut self, ctx: &OperatorContext) -> Result<()> {
        let Some(budget) = self.plan.budget.as_ref() else {
            return Ok(());
        };
        let sizes = self.slots.iter().map(|(k, s)| (*k, s.bytes())).collect();
        let ids = over_budget(
            budget,
            sizes,
            &mut self.budget_noted,
            ctx.name(),
            "window join rows",
        );
        for id in ids {
            self.spill_slot(id)?;
        }
        Ok(())
    }

    /// Joins the left rows `left` with the right rows `right` of window `[start, end)`.
    fn join(
        &self,
        start: i64,
        end: i64,
        left: &[RecordBatch],
        right: Vec<RecordBatch>,
        out: &mut Emitter,
    ) -> Result<()> {
        if left.is_empty() || right.is_empty() {
            return Ok(());
        }
        let l = concat_batches(&self.plan.schemas[0], left)
            .map_err(|e| Error::internal("concat").with_source(e))?;
        let r = concat_batches(&self.plan.schemas[1], &right)
            .map_err(|e| Error::internal("concat").with_source(e))?;
        drop(right);
        let mut index = Buffer::new(
            self.plan.schemas[1].clone(),
            self.plan.key_idx[1].clone(),
            None,
        )?;
        index.push(r, None)?;
        let probe = Buffer::new(
            self.plan.schemas[0].clone(),
            self.plan.key_idx[0].clone(),
            None,
        )?;
        let (keys, valid) = probe.keys_of(&l)?;
        let (mut li, mut ri) = (Vec::new(), Vec::new());
        index.probe(&keys, &valid, |row, id| {
            li.push(row as u32);
            ri.push(id);
        });
        if li.is_empty() {
            return Ok(());
        }
        let n = li.len();
        let lrows = take_record_batch(&l, &UInt32Array::from(li))
            .map_err(|e| Error::internal("take").with_source(e))?;
        let rrows = index.gather(&ri)?;
        let mut cols: Vec<ArrayRef> = Vec::new();
        if self.plan.windows[0].assigner != Assigner::Column {
            cols.extend(crate::window::bound_columns(
                start,
                end,
                n,
                &self.plan.bound_type,
            )?);
        }
        cols.extend(lrows.columns().iter().cloned());
        for (i, c) in rrows.columns().iter().enumerate() {
            if !self.plan.skip_right.contains(&i) {
                cols.push(c.clone());
            }
        }
        out.emit(
            RecordBatch::try_new(self.plan.output.clone(), cols)
                .map_err(|e| Error::internal("cannot build joined rows").with_source(e))?,
        );
        Ok(())
    }

    fn fire(&mut self, w: i64, out: &mut Emitter) -> Result<()> {
        let due: Vec<(i64, i64)> = self
            .slots
            .range(..=(w, i64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for (end, start) in due {
            if self.slots.get(&(end, start)).is_some_and(Slot::spilled) {
                // Rows of equal keys are in the same key group: join one range at a time.
                self.spill_slot((end, start))?;
                let Some(slot) = self.slots.remove(&(end, start)) else {
                    continue;
                };
                let Some(budget) = self.plan.budget.as_ref() else {
                    continue;
                };
                let all: Vec<&Run> = slot.runs.iter().flatten().collect();
                for range in merge_ranges(&all, budget) {
                    let [l, r] = [0, 1].map(|side| {
                        let runs: Vec<&Run> = slot.runs[side].iter().collect();
                        read_rows(&runs, range.clone(), &self.plan.schemas[side])
                    });
                    self.join(start, end, &l?, r?, out)?;
                }
                continue;
            }
            let Some(Slot {
                rows: [left, right],
                ..
            }) = self.slots.remove(&(end, start))
            else {
                continue;
            };
            self.join(start, end, &left, right, out)?;
        }
        Ok(())
    }
}

impl WindowJoin {
    /// Bytes and rows kept for open windows.
    fn state_size(&self) -> (usize, usize) {
        self.slots.values().fold((0, 0), |(b, n), s| {
            let spilled: usize = s.runs.iter().flatten().map(Run::rows).sum();
            let rows: usize = s.rows.iter().flatten().map(RecordBatch::num_rows).sum();
            (b + s.bytes(), n + rows + spilled)
        })
    }

    /// Records the state's size in the metrics.
    fn report_state(&mut self, ctx: &OperatorContext) {
        let size = self.state_size();
        self.gauge.report(ctx, size);
    }
}

#[async_trait]
impl Operator for WindowJoin {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let info = ctx.info();
        self.max_parallelism = info.max_parallelism;
        self.range =
            KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.subtask);
        if let Some(snap) = ctx.restored_state().cloned() {
            self.clock.restore(self.range, &snap)?;
            for (side, part) in PARTS.iter().enumerate() {
                for b in read(&snap, part)? {
                    let ends = b.column(0).as_primitive::<Int64Type>().clone();
                    let starts = b.column(1).as_primitive::<Int64Type>().clone();
                    let rows = RecordBatch::try_new(
                        self.plan.schemas[side].clone(),
                        b.columns()[2..].to_vec(),
                    )
                    .map_err(|e| {
                        Error::io("checkpoint state does not fit this window join").with_source(e)
                    })?;
                    let mut by_slot: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
                    for r in 0..b.num_rows() {
                        by_slot
                            .entry((ends.value(r), starts.value(r)))
                            .or_default()
                            .push(r as u32);
                    }
                    for (slot, idx) in by_slot {
                        let part = take_record_batch(&rows, &UInt32Array::from(idx))
                            .map_err(|e| Error::internal("take").with_source(e))?;
                        self.slots.entry(slot).or_default().rows[side].push(part);
                    }
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
        _out: &mut Emitter,
    ) -> Result<()> {
        let side = side_of(ctx)?;
        self.add(side, batch, ctx)?;
        self.enforce_budget(ctx)?;
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
            self.fire(watermark.0, out)?;
            // After the windows it completed, so a step downstream sees time advance.
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
        for (side, name) in PARTS.iter().enumerate() {
            let mut fields = vec![
                Field::new("__end", DataType::Int64, false),
                Field::new("__start", DataType::Int64, false),
            ];
            fields.extend(
                self.plan.schemas[side]
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone()),
            );
            let schema = Arc::new(Schema::new(fields));
            let mut parts = Parts::default();
            for (&(end, start), slot) in &self.slots {
                // Spilled rows are read back: a checkpoint holds the step's rows in memory while
                // it is written.
                let runs: Vec<&Run> = slot.runs[side].iter().collect();
                let spilled = read_rows(&runs, 0..u32::MAX, &self.plan.schemas[side])?;
                for b in slot.rows[side].iter().chain(&spilled) {
                    let n = b.num_rows();
                    let mut cols: Vec<ArrayRef> = vec![
                        Arc::new(Int64Array::from(vec![end; n])),
                        Arc::new(Int64Array::from(vec![start; n])),
                    ];
                    cols.extend(b.columns().iter().cloned());
                    let tagged = RecordBatch::try_new(schema.clone(), cols)
                        .map_err(|e| Error::internal("cannot save window rows").with_source(e))?;
                    let keys: Vec<ArrayRef> = self.plan.route_idx[side]
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    let groups = key_groups(&keys, n, self.max_parallelism, self.range)?;
                    parts.add(&tagged, &groups)?;
                }
            }
            parts.write(name, &mut snap)?;
        }
        self.report_state(ctx);
        Ok(snap)
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        self.fire(i64::MAX, out)?;
        self.report_state(ctx);
        self.clock.finish(ctx.name());
        Ok(())
    }
}
