//! `op: top_n`: the first `n` rows per window (and per key) in an order, emitted when the window is
//! complete (Flink's window Top-N, `ROW_NUMBER()` or `RANK() OVER (PARTITION BY window, keys ORDER
//! BY ...) <= n`).
//!
//! Each window keeps its candidate rows as Arrow batches; when they grow past twice what the last
//! pruning kept, they are sorted (Arrow's `lexsort`) and cut to the first `n` per key, so the state
//! is about `n` rows per key and window. When the watermark reaches the window's end the survivors
//! are emitted, optionally with their rank. With `memory_budget`, the largest windows' candidates
//! are pruned and written to local disk when the candidates kept pass it (see [`crate::spill`]),
//! and a spilled window is ranked one key-group range at a time.

use crate::gauge::StateGauge;
use crate::late::{Clock, OnLate};
use crate::parts::{Parts, key_groups, read};
use crate::spill::{Budget, Run, merge_ranges, over_budget, parse_budget, read_rows, spill_rows};
use crate::window::{Assigner, RowWindows, WindowSpec, names};
use crate::windowed::{WINDOW_END, WINDOW_START};
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use weir_checkpoint::StateSnapshot;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Barrier, Error, KeyGroupRange, Result, Watermark};

/// Options of `op: top_n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopNSpec {
    /// Columns to rank within, besides the window (Flink's `PARTITION BY`); default none.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The event-time column, for tumbling and hopping windows.
    #[serde(default)]
    pub time: Option<String>,
    /// The windows: tumbling, hopping, or column (rows that carry their window, such as the output
    /// of `op: aggregate`); required.
    pub window: WindowSpec,
    /// The order, first column first: `price DESC`, `bidder`, `x ASC NULLS FIRST` (columns of the
    /// input; ascending by default; nulls last ascending and first descending); required.
    pub order_by: Vec<String>,
    /// How many rows to keep per window and key; required, at least 1.
    pub n: usize,
    /// Keep rows tied with the `n`-th as well (`RANK()` instead of `ROW_NUMBER()`); default false,
    /// which keeps an arbitrary `n` of tied rows.
    #[serde(default)]
    pub with_ties: bool,
    /// Name of a column to add with each row's rank (from 1); default none.
    #[serde(default)]
    pub rank_column: Option<String>,
    /// What to do with rows whose window was already emitted: `dead_letter` (default) or `drop`.
    #[serde(default)]
    pub on_late: OnLate,
    /// Bytes of candidate rows each instance keeps in memory (e.g. `256MiB`); beyond it the
    /// largest windows' candidates are written to `spill_dir` and ranked from there, one
    /// key-group range at a time, when they fire. Default none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// The directory spilled rows are written to. Default the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Plan {
    rows: RowWindows,
    key_idx: Vec<usize>,
    order: Vec<(usize, SortOptions)>,
    input: SchemaRef,
    output: SchemaRef,
    bound_type: DataType,
    budget: Option<Budget>,
}

fn parse_order(text: &str, input: &SchemaRef, i: usize) -> Result<(usize, SortOptions)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let bad = || {
        Error::config(format!(
            "key 'order_by[{i}]': expected 'column [ASC|DESC] [NULLS FIRST|LAST]', found '{text}'"
        ))
    };
    let (col, rest) = words.split_first().ok_or_else(bad)?;
    let idx = input.index_of(col).map_err(|_| {
        Error::schema(format!(
            "key 'order_by[{i}]': column '{col}' is not in the input; available: {}",
            names(input)
        ))
    })?;
    let upper: Vec<String> = rest.iter().map(|w| w.to_ascii_uppercase()).collect();
    let (descending, rest) = match upper.first().map(String::as_str) {
        Some("DESC") => (true, &upper[1..]),
        Some("ASC") => (false, &upper[1..]),
        _ => (false, &upper[..]),
    };
    let nulls_first = match rest {
        [] => descending,
        [a, b] if a == "NULLS" && b == "FIRST" => true,
        [a, b] if a == "NULLS" && b == "LAST" => false,
        _ => return Err(bad()),
    };
    Ok((
        idx,
        SortOptions {
            descending,
            nulls_first,
        },
    ))
}

impl TopNSpec {
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        if matches!(self.window, WindowSpec::Session { .. }) {
            return Err(Error::config(
                "key 'window.type': top_n takes tumbling, hopping or column windows; for \
                 sessions, aggregate first and rank over the aggregate's windows (type: column)",
            ));
        }
        if self.n == 0 {
            return Err(Error::config("key 'n': must be at least 1, found 0"));
        }
        if self.order_by.is_empty() {
            return Err(Error::config("key 'order_by': give at least one column"));
        }
        let rows = RowWindows::new(&self.window, input, self.time.as_deref())?;
        let key_idx = self
            .keys
            .iter()
            .map(|k| {
                input.index_of(k).map_err(|_| {
                    Error::schema(format!(
                        "key 'keys': column '{k}' is not in the input; available: {}",
                        names(input)
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let order = self
            .order_by
            .iter()
            .enumerate()
            .map(|(i, o)| parse_order(o, input, i))
            .collect::<Result<Vec<_>>>()?;
        let bound_type = self.window.bound_type(input, self.time.as_deref());
        let mut fields: Vec<Field> = Vec::new();
        if rows.assigner != Assigner::Column {
            fields.push(Field::new(WINDOW_START, bound_type.clone(), false));
            fields.push(Field::new(WINDOW_END, bound_type.clone(), false));
        }
        fields.extend(input.fields().iter().map(|f| f.as_ref().clone()));
        if let Some(r) = &self.rank_column {
            fields.push(Field::new(r, DataType::UInt64, false));
        }
        let mut seen = BTreeSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(Error::config(format!(
                    "the output would have two columns named '{}'",
                    f.name()
                )));
            }
        }
        Ok(Plan {
            rows,
            key_idx,
            order,
            input: input.clone(),
            output: Arc::new(Schema::new(fields)),
            bound_type,
            budget: parse_budget(self.memory_budget.as_deref(), self.spill_dir.as_deref())?,
        })
    }

    /// Plan time: the output schema: `window_start` and `window_end` (unless the rows carry their
    /// window), the input's columns, and the rank column if asked for.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.plan(input)?.output)
    }

    /// The input columns rows are hash-routed by (`None`: one instance).
    pub fn partition_keys(&self) -> Option<Vec<String>> {
        let mut keys = self.keys.clone();
        if let WindowSpec::Column { start, end } = &self.window {
            keys.push(start.clone());
            keys.push(end.clone());
        }
        (!keys.is_empty()).then_some(keys)
    }

    /// Builds one running instance.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let plan = self.plan(input)?;
        let mut route_idx = plan.key_idx.clone();
        if let Some((s, e)) = plan.rows.window_idx {
            route_idx.push(s);
            route_idx.push(e);
        }
        let fields: Vec<SortField> = plan
            .key_idx
            .iter()
            .map(|&i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        let order_fields: Vec<SortField> = plan
            .order
            .iter()
            .map(|(i, _)| SortField::new(input.field(*i).data_type().clone()))
            .collect();
        Ok(Box::new(TopN {
            keys: (!fields.is_empty())
                .then(|| RowConverter::new(fields))
                .transpose()
                .map_err(|e| Error::schema("keys cannot be compared").with_source(e))?,
            order_rows: RowConverter::new(order_fields)
                .map_err(|e| Error::schema("order columns cannot be compared").with_source(e))?,
            plan,
            route_idx,
            n: self.n,
            with_ties: self.with_ties,
            rank: self.rank_column.is_some(),
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
        let by = if self.keys.is_empty() {
            String::new()
        } else {
            format!(" per {}", self.keys.join(", "))
        };
        let budget = match &self.memory_budget {
            Some(b) => format!(", candidates over {b} spilled to disk"),
            None => String::new(),
        };
        format!(
            "top {}{by} by {} over {}{budget}",
            self.n,
            self.order_by.join(", "),
            self.window.describe()
        )
    }
}

/// Candidate rows of one window.
#[derive(Debug, Default)]
struct Candidates {
    batches: Vec<RecordBatch>,
    rows: usize,
    kept: usize,
    /// Pruned candidates spilled under the memory budget.
    runs: Vec<Run>,
}

impl Candidates {
    fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }
}

/// A running `op: top_n`.
pub struct TopN {
    plan: Plan,
    keys: Option<RowConverter>,
    order_rows: RowConverter,
    route_idx: Vec<usize>,
    n: usize,
    with_ties: bool,
    rank: bool,
    clock: Clock,
    slots: BTreeMap<(i64, i64), Candidates>,
    range: KeyGroupRange,
    max_parallelism: u32,
    gauge: StateGauge,
    /// The step said once that its candidates passed the memory budget.
    budget_noted: bool,
}

impl std::fmt::Debug for TopN {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopN")
            .field("windows", &self.slots.len())
            .finish()
    }
}

const PART: &str = "top_n";

impl TopN {
    /// Sorts `batch` by keys then order and keeps the first `n` per key; with the ranks.
    fn prune(&self, batch: &RecordBatch) -> Result<(RecordBatch, UInt64Array)> {
        let mut sort: Vec<SortColumn> = self
            .plan
            .key_idx
            .iter()
            .map(|&i| SortColumn {
                values: batch.column(i).clone(),
                options: None,
            })
            .collect();
        sort.extend(self.plan.order.iter().map(|(i, o)| SortColumn {
            values: batch.column(*i).clone(),
            options: Some(*o),
        }));
        let idx = lexsort_to_indices(&sort, None)
            .map_err(|e| Error::internal("cannot sort top-n candidates").with_source(e))?;
        let sorted =
            take_record_batch(batch, &idx).map_err(|e| Error::internal("take").with_source(e))?;
        let key_rows = match &self.keys {
            Some(c) => Some(
                c.convert_columns(
                    &self
                        .plan
                        .key_idx
                        .iter()
                        .map(|&i| sorted.column(i).clone())
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| Error::internal("row conversion").with_source(e))?,
            ),
            None => None,
        };
        let order_rows = self
            .order_rows
            .convert_columns(
                &self
                    .plan
                    .order
                    .iter()
                    .map(|(i, _)| sorted.column(*i).clone())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::internal("row conversion").with_source(e))?;
        let mut keep = Vec::new();
        let mut ranks = Vec::new();
        let (mut number, mut rank) = (0u64, 0u64);
        for row in 0..sorted.num_rows() {
            let new_key = row == 0
                || key_rows
                    .as_ref()
                    .is_some_and(|k| k.row(row) != k.row(row - 1));
            if new_key {
                number = 0;
                rank = 0;
            }
            number += 1;
            if new_key || order_rows.row(row) != order_rows.row(row - 1) {
                rank = number;
            }
            let r = if self.with_ties { rank } else { number };
            if r <= self.n as u64 {
                keep.push(row as u32);
                ranks.push(r);
            }
        }
        let kept = take_record_batch(&sorted, &UInt32Array::from(keep))
            .map_err(|e| Error::internal("take").with_source(e))?;
        Ok((kept, UInt64Array::from(ranks)))
    }

    fn add_rows(&mut self, slot: (i64, i64), rows: RecordBatch) -> Result<()> {
        let c = self.slots.entry(slot).or_default();
        c.rows += rows.num_rows();
        c.batches.push(rows);
        if c.rows > (2 * c.kept).max(1024) {
            let all = concat_batches(&self.plan.input, &c.batches)
                .map_err(|e| Error::internal("concat").with_source(e))?;
            let (kept, _) = self.prune(&all)?;
            let c = self.slots.entry(slot).or_default();
            c.rows = kept.num_rows();
            c.kept = kept.num_rows();
            c.batches = vec![kept];
        }
        Ok(())
    }

    fn add(&mut self, batch: RecordBatch, ctx: &mut OperatorContext) -> Result<()> {
        let (batch, slots, times) = self.plan.rows.assign(batch, ctx)?;
        let wm = self.clock.watermark();
        let mut by_window: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
        for (row, &slot) in slots.iter().enumerate() {
            let mut any = false;
            for w in self.plan.rows.windows_of(slot) {
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
            self.add_rows(w, part)?;
        }
        Ok(())
    }

    /// Prunes the candidates in memory of window `id` and writes them to disk.
    fn spill_slot(&mut self, id: (i64, i64)) -> Result<()> {
        let Some(budget) = self.plan.budget.as_ref() else {
            return Ok(());
        };
        let Some(c) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        let batches = std::mem::take(&mut c.batches);
        c.rows = 0;
        c.kept = 0;
        if batches.is_empty() {
            return Ok(());
        }
        let all = concat_batches(&self.plan.input, &batches)
            .map_err(|e| Error::internal("concat").with_source(e))?;
        drop(batches);
        let (kept, _) = self.prune(&all)?;
        drop(all);
        let run = spill_rows(
            budget,
            &[kept],
            &self.route_idx,
            self.max_parallelism,
            self.range,
        )?;
        if let (Some(run), Some(c)) = (run, self.slots.get_mut(&id)) {
            c.runs.push(run);
        }
        Ok(())
    }

    /// Spills the largest windows while the candidates in memory are over the budget, down to
    /// half of it.
    fn enforce_budget(&mut self, ctx: &OperatorContext) -> Result<()> {
        let Some(budget) = self.plan.budget.as_ref() else {
            return Ok(());
        };
        let sizes = self.slots.iter().map(|(k, c)| (*k, c.bytes())).collect();
        let ids = over_budget(
            budget,
            sizes,
            &mut self.budget_noted,
            ctx.name(),
            "top-n candidates",
        );
        for id in ids {
            self.spill_slot(id)?;
        }
        Ok(())
    }

    /// The window `[start, end)`'s ranked rows from its candidates `all`.
    fn window_rows(&self, start: i64, end: i64, all: &RecordBatch) -> Result<RecordBatch> {
        let (kept, ranks) = self.prune(all)?;
        let n = kept.num_rows();
        let mut cols: Vec<ArrayRef> = Vec::new();
        if self.plan.rows.assigner != Assigner::Column {
            cols.extend(crate::window::bound_columns(
                start,
                end,
                n,
                &self.plan.bound_type,
            )?);
        }
        cols.extend(kept.columns().iter().cloned());
        if self.rank {
            cols.push(Arc::new(ranks));
        }
        RecordBatch::try_new(self.plan.output.clone(), cols)
            .map_err(|e| Error::internal("cannot build top-n rows").with_source(e))
    }

    fn fire(&mut self, w: i64, out: &mut Emitter) -> Result<()> {
        let due: Vec<(i64, i64)> = self
            .slots
            .range(..=(w, i64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for (end, start) in due {
            if self
                .slots
                .get(&(end, start))
                .is_some_and(|c| !c.runs.is_empty())
            {
                // Rows of a key are in one key group: rank one range at a time.
                self.spill_slot((end, start))?;
                let (Some(c), Some(budget)) =
                    (self.slots.remove(&(end, start)), self.plan.budget.as_ref())
                else {
                    continue;
                };
                let runs: Vec<&Run> = c.runs.iter().collect();
                for range in merge_ranges(&runs, budget) {
                    let rows = read_rows(&runs, range, &self.plan.input)?;
                    if rows.is_empty() {
                        continue;
                    }
                    let all = concat_batches(&self.plan.input, &rows)
                        .map_err(|e| Error::internal("concat").with_source(e))?;
                    out.emit(self.window_rows(start, end, &all)?);
                }
                continue;
            }
            let Some(c) = self.slots.remove(&(end, start)) else {
                continue;
            };
            let all = concat_batches(&self.plan.input, &c.batches)
                .map_err(|e| Error::internal("concat").with_source(e))?;
            out.emit(self.window_rows(start, end, &all)?);
        }
        Ok(())
    }
}

impl TopN {
    /// Bytes and rows of the candidates kept.
    fn state_size(&self) -> (usize, usize) {
        self.slots.values().fold((0, 0), |(b, n), c| {
            let spilled: usize = c.runs.iter().map(Run::rows).sum();
            let rows: usize = c.batches.iter().map(RecordBatch::num_rows).sum();
            (b + c.bytes(), n + rows + spilled)
        })
    }

    /// Records the state's size in the metrics.
    fn report_state(&mut self, ctx: &OperatorContext) {
        let size = self.state_size();
        self.gauge.report(ctx, size);
    }
}

#[async_trait]
impl Operator for TopN {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let info = ctx.info();
        self.max_parallelism = info.max_parallelism;
        self.range =
            KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.subtask);
        if let Some(snap) = ctx.restored_state().cloned() {
            self.clock.restore(self.range, &snap)?;
            for b in read(&snap, PART)? {
                let ends = b.column(0).as_primitive::<Int64Type>().clone();
                let starts = b.column(1).as_primitive::<Int64Type>().clone();
                let rows = RecordBatch::try_new(self.plan.input.clone(), b.columns()[2..].to_vec())
                    .map_err(|e| {
                        Error::io(
                            "checkpoint state does not fit this top_n (was the input changed?)",
                        )
                        .with_source(e)
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
                    self.add_rows(slot, part)?;
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
        self.add(batch, ctx)?;
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
        let mut parts = Parts::default();
        let mut fields = vec![
            Field::new("__end", DataType::Int64, false),
            Field::new("__start", DataType::Int64, false),
        ];
        fields.extend(self.plan.input.fields().iter().map(|f| f.as_ref().clone()));
        let schema = Arc::new(Schema::new(fields));
        for (&(end, start), c) in &self.slots {
            // Spilled candidates are read back: a checkpoint holds the step's candidates in
            // memory while it is written.
            let runs: Vec<&Run> = c.runs.iter().collect();
            let spilled = read_rows(&runs, 0..u32::MAX, &self.plan.input)?;
            for b in c.batches.iter().chain(&spilled) {
                let n = b.num_rows();
                let mut cols: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![end; n])),
                    Arc::new(Int64Array::from(vec![start; n])),
                ];
                cols.extend(b.columns().iter().cloned());
                let tagged = RecordBatch::try_new(schema.clone(), cols)
                    .map_err(|e| Error::internal("cannot save top-n rows").with_source(e))?;
                let keys: Vec<ArrayRef> = self
                    .route_idx
                    .iter()
                    .map(|&i| b.column(i).clone())
                    .collect();
                let groups = key_groups(&keys, n, self.max_parallelism, self.range)?;
                parts.add(&tagged, &groups)?;
            }
        }
        parts.write(PART, &mut snap)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn order_by_parses_directions_and_null_placement() {
        let input: SchemaRef = Arc::new(Schema::new(vec![Field::new("p", DataType::Int64, true)]));
        let o = |t: &str| parse_order(t, &input, 0);
        assert_eq!(
            o("p").expect("p").1,
            SortOptions {
                descending: false,
                nulls_first: false
            }
        );
        assert_eq!(
            o("p desc").expect("desc").1,
            SortOptions {
                descending: true,
                nulls_first: true
            }
        );
        assert_eq!(
            o("p DESC NULLS LAST").expect("last").1,
            SortOptions {
                descending: true,
                nulls_first: false
            }
        );
        assert!(o("q").expect_err("q").message().contains("column 'q'"));
        assert!(o("p sideways").is_err());
    }
}
