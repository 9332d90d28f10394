//! `op: aggregate`: keyed aggregations per event-time window.
//!
//! Rows are assigned to *slots*: the window itself for tumbling and column windows, a pane of one
//! `slide` for hopping windows (a row is aggregated once, into its pane; a window merges the
//! intermediate states of its `size / slide` panes when it fires). A slot holds DataFusion group
//! values (the keys, interned vectorised) and one grouped accumulator per aggregate. When the
//! watermark reaches a window's end its result is emitted: `window_start`, `window_end`, the keys
//! and the aggregates. With `allowed_lateness`, a window's state is kept that much longer and a
//! late row within it makes the window emit again (an updated row for the same window and key),
//! as Flink does. Session windows are in [`crate::session`].
//!
//! At a checkpoint every slot's accumulators are turned into their intermediate state (as
//! DataFusion's two-phase aggregation does) and written per key group; aggregation goes on in
//! fresh accumulators, and a window merges all the parts of its slots when it fires.
//!
//! With `memory_budget`, state beyond the budget is spilled the same way: the largest slots are
//! frozen into sorted runs on local disk, and a window with spilled slots is merged one
//! key-group range at a time (see [`crate::spill`]). Session windows write their rows to disk sorted
//! by their session's end and read them back as the watermark reaches it (see [`crate::session`]).

use crate::aggregate::{Accumulators, AggregateInput, CompiledAggregate, compile_aggregate};
use crate::gauge::StateGauge;
use crate::late::{Clock, OnLate};
use crate::session::Sessions;
use crate::spill::{Budget, Run, merge_ranges, run_batch, victims};
use crate::window::{Assigner, RowWindows, Span, WindowSpec, names};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use async_trait::async_trait;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use weir_checkpoint::{StateKey, StateSnapshot};
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_state::codec::decode_part;
use weir_types::{Barrier, Error, KeyGroupRange, Result, Watermark};

/// Options of `op: aggregate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Group-by columns; default none: one group per window, and the step runs as one instance.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The event-time column windows are over; required for tumbling, hopping and session windows.
    #[serde(default)]
    pub time: Option<String>,
    /// The windows; required.
    pub window: WindowSpec,
    /// Aggregates as SQL, e.g. `count(*) AS n`, `max(price)`; required, at least one.
    pub aggregates: Vec<String>,
    /// How long after a window's end its state is kept for late rows; default 0.
    #[serde(default)]
    pub allowed_lateness: Span,
    /// What to do with rows later than that: `dead_letter` (default) or `drop`.
    #[serde(default)]
    pub on_late: OnLate,
    /// Bytes of window state each instance keeps in memory (e.g. `256MiB`); beyond it the
    /// largest windows are spilled as sorted runs to `spill_dir` and merged from there when they
    /// fire (session windows: their rows, read back as the watermark reaches their sessions'
    /// ends). Default
    /// none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// The directory spilled runs are written to. Default the system's temporary directory
    /// (`TMPDIR`, else `/tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

/// The names of the window bound columns of a windowed step's output.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";

/// What the spec compiles to against an input schema.
#[derive(Debug, Clone)]
struct Plan {
    assigner: Assigner,
    rows: RowWindows,
    aggs: Vec<CompiledAggregate>,
    /// The keys' input columns.
    key_idx: Vec<usize>,
    /// The group key's input columns: the keys, and the window columns of column windows (so the
    /// group key is what rows are routed by); empty when there are neither.
    group_idx: Vec<usize>,
    /// The group key's schema (one constant column `__all` when `group_idx` is empty).
    key_schema: SchemaRef,
    time_idx: Option<usize>,
    bound_type: DataType,
    output: SchemaRef,
    budget: Option<Budget>,
}

impl Plan {
    /// Splits the columns of frozen state (as [`part_columns`] lays them out: the keys, then
    /// each aggregate's state arrays) back into keys and per-aggregate states.
    fn split_state(&self, columns: &[ArrayRef]) -> (Vec<ArrayRef>, Vec<Vec<ArrayRef>>) {
        let n_keys = self.key_schema.fields().len();
        let mut at = n_keys;
        let states = self
            .aggs
            .iter()
            .map(|a| {
                let n = a.state_fields().len();
                at += n;
                columns[at - n..at].to_vec()
            })
            .collect();
        (columns[..n_keys].to_vec(), states)
    }
}

impl AggregateSpec {
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        let rows = RowWindows::new(&self.window, input, self.time.as_deref())?;
        let assigner = rows.assigner;
        if self.aggregates.is_empty() && self.keys.is_empty() {
            return Err(Error::config(
                "key 'aggregates': give at least one aggregate (or keys, to list the distinct \
                 keys per window)",
            ));
        }
        if self.allowed_lateness.0 < 0 {
            return Err(Error::config(format!(
                "key 'allowed_lateness': must not be negative, found {}",
                self.allowed_lateness
            )));
        }
        let mut key_idx = Vec::new();
        let mut key_fields = Vec::new();
        for k in &self.keys {
            let i = input.index_of(k).map_err(|_| {
                Error::schema(format!(
                    "key 'keys': column '{k}' is not in the input; available: {}",
                    names(input)
                ))
            })?;
            key_idx.push(i);
            key_fields.push(input.field(i).clone());
        }
        let mut group_idx = key_idx.clone();
        if let WindowSpec::Column { start, end } = &self.window {
            for c in [start, end] {
                group_idx.push(
                    input
                        .index_of(c)
                        .map_err(|e| Error::schema(e.to_string()))?,
                );
            }
        }
        let key_schema = if group_idx.is_empty() {
            Arc::new(Schema::new(vec![Field::new(
                "__all",
                DataType::Boolean,
                false,
            )]))
        } else {
            Arc::new(Schema::new(
                group_idx
                    .iter()
                    .map(|&i| input.field(i).clone())
                    .collect::<Vec<_>>(),
            ))
        };
        let aggs = self
            .aggregates
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                compile_aggregate(sql, input)
                    .map_err(|e| Error::config(format!("key 'aggregates[{i}]': {}", e.message())))
            })
            .collect::<Result<Vec<_>>>()?;
        let time_idx = match (&self.window, &self.time) {
            (WindowSpec::Column { .. }, _) | (_, None) => None,
            (_, Some(t)) => Some(input.index_of(t).map_err(|_| {
                Error::schema(format!("key 'time': column '{t}' is not in the input"))
            })?),
        };
        let bound_type = self.window.bound_type(input, self.time.as_deref());
        let budget = self.budget()?;
        let mut fields = vec![
            Field::new(WINDOW_START, bound_type.clone(), false),
            Field::new(WINDOW_END, bound_type.clone(), false),
        ];
        fields.extend(key_fields);
        fields.extend(crate::aggregate::output_fields(&aggs));
        let mut seen = BTreeSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(Error::config(format!(
                    "the output would have two columns named '{}' (window bounds are \
                     {WINDOW_START} and {WINDOW_END}; name aggregates with AS)",
                    f.name()
                )));
            }
        }
        Ok(Plan {
            assigner,
            rows,
            aggs,
            key_idx,
            group_idx,
            key_schema,
            time_idx,
            bound_type,
            output: Arc::new(Schema::new(fields)),
            budget,
        })
    }

    fn budget(&self) -> Result<Option<Budget>> {
        crate::spill::parse_budget(self.memory_budget.as_deref(), self.spill_dir.as_deref())
    }

    /// Plan time: checks the spec against the input and returns the output schema:
    /// `window_start`, `window_end`, the keys, then one column per aggregate.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.plan(input)?.output)
    }

    /// The input columns rows must be hash-routed by (`None`: the step needs one instance).
    /// Column windows route by the keys and the window columns, so windows spread over instances
    /// even without keys.
    pub fn partition_keys(&self) -> Option<Vec<String>> {
        let mut keys = self.keys.clone();
        if let WindowSpec::Column { start, end } = &self.window {
            keys.push(start.clone());
            keys.push(end.clone());
        }
        (!keys.is_empty()).then_some(keys)
    }

    /// Plan time: the input columns the step reads.
    pub fn required_columns(&self, input: &SchemaRef) -> Result<BTreeSet<String>> {
        let plan = self.plan(input)?;
        let mut cols: BTreeSet<String> = self.keys.iter().cloned().collect();
        cols.extend(self.time.iter().cloned());
        if let WindowSpec::Column { start, end } = &self.window {
            cols.insert(start.clone());
            cols.insert(end.clone());
        }
        for a in &plan.aggs {
            cols.extend(a.columns());
        }
        Ok(cols)
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WindowAggregate::new(self, input)?))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let by = if self.keys.is_empty() {
            String::new()
        } else {
            format!(" by {}", self.keys.join(", "))
        };
        let budget = match &self.memory_budget {
            Some(b) => format!(", state over {b} spilled to disk"),
            None => String::new(),
        };
        format!(
            "aggregate {}{by} over {}{budget}",
            self.aggregates.join(", "),
            self.window.describe()
        )
    }
}

/// Aggregated state of one slot's groups, saved as intermediate state.
#[derive(Debug, Clone)]
struct Frozen {
    keys: Vec<ArrayRef>,
    /// Per aggregate, its state arrays.
    states: Vec<Vec<ArrayRef>>,
}

impl Frozen {
    fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.len())
    }
}

/// One window (tumbling, column) or pane (hopping).
struct Slot {
    groups: Box<dyn GroupValues>,
    accs: Accumulators,
    frozen: Vec<Frozen>,
    /// Frozen parts spilled to disk under the memory budget.
    runs: Vec<Run>,
    /// The window was emitted (kept only for allowed lateness).
    fired: bool,
}

impl Slot {
    fn new(plan: &Plan) -> Result<Self> {
        Ok(Slot {
            groups: new_group_values(plan.key_schema.clone(), &GroupOrdering::None)
                .map_err(|e| Error::internal("cannot create group values").with_source(e))?,
            accs: Accumulators::new(&plan.aggs)?,
            frozen: Vec::new(),
            runs: Vec::new(),
            fired: false,
        })
    }

    /// Moves the live groups into a frozen part.
    fn freeze(&mut self) -> Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let keys = self
            .groups
            .emit(EmitTo::All)
            .map_err(|e| Error::internal("cannot emit group values").with_source(e))?;
        let states = self.accs.take_state()?;
        self.frozen.push(Frozen { keys, states });
        Ok(())
    }

    /// Freezes the live groups and gives up the memory their tables held (emptied group values
    /// and accumulators keep their capacity).
    fn freeze_and_shrink(&mut self, plan: &Plan) -> Result<()> {
        self.freeze()?;
        let fresh = Slot::new(plan)?;
        self.groups = fresh.groups;
        self.accs = fresh.accs;
        Ok(())
    }

    /// Whether any of its state is on disk.
    fn spilled(&self) -> bool {
        !self.runs.is_empty()
    }

    /// Merges intermediate state (`keys`, and per aggregate its state arrays) into the live
    /// groups; `ids` is scratch for the group indices.
    fn merge(
        &mut self,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        ids: &mut Vec<usize>,
    ) -> Result<()> {
        self.groups
            .intern(keys, ids)
            .map_err(|e| Error::internal("cannot intern group keys").with_source(e))?;
        let n = self.groups.len();
        self.accs.merge(states, ids, n)
    }

    /// The live groups' keys and final aggregate values (the groups are emptied), or `None` if
    /// there are none.
    fn take_result(&mut self) -> Result<Option<(Vec<ArrayRef>, Vec<ArrayRef>)>> {
        if self.groups.is_empty() {
            return Ok(None);
        }
        let keys = self
            .groups
            .emit(EmitTo::All)
            .map_err(|e| Error::internal("cannot emit group values").with_source(e))?;
        Ok(Some((keys, self.accs.evaluate()?)))
    }

    /// Bytes in memory (spilled runs not counted).
    fn size(&self) -> usize {
        self.groups.size()
            + self.accs.size()
            + self
                .frozen
                .iter()
                .flat_map(|f| f.keys.iter().chain(f.states.iter().flatten()))
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
    }
}

/// A running `op: aggregate`.
pub struct WindowAggregate {
    plan: Plan,
    lateness: i64,
    clock: Clock,
    /// Slots by `(end, start)`.
    slots: BTreeMap<(i64, i64), Slot>,
    /// Windows `(end, start)` to emit again (late rows arrived within the lateness).
    refire: BTreeSet<(i64, i64)>,
    sessions: Option<Sessions>,
    /// The watermark up to which windows were emitted.
    fired_upto: i64,
    range: KeyGroupRange,
    max_parallelism: u32,
    group_ids: Vec<usize>,
    gauge: StateGauge,
    /// The step said once that its state passed the memory budget.
    budget_noted: bool,
}

impl std::fmt::Debug for WindowAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowAggregate")
            .field("slots", &self.slots.len())
            .field("watermark", &self.clock.watermark())
            .finish()
    }
}

const PART: &str = "windows";

impl WindowAggregate {
    /// A running instance of `spec` for `input`.
    pub fn new(spec: &AggregateSpec, input: &SchemaRef) -> Result<Self> {
        let plan = spec.plan(input)?;
        let sessions = match plan.assigner {
            Assigner::Session { gap } => Some(Sessions::new(
                gap,
                spec.allowed_lateness.0,
                input,
                &plan.key_idx,
                plan.time_idx,
                &plan.aggs,
                plan.output.clone(),
                plan.bound_type.clone(),
                plan.budget.clone(),
            )?),
            _ => None,
        };
        Ok(WindowAggregate {
            plan,
            lateness: spec.allowed_lateness.0,
            clock: Clock::new(spec.on_late),
            slots: BTreeMap::new(),
            refire: BTreeSet::new(),
            sessions,
            fired_upto: i64::MIN,
            range: KeyGroupRange { start: 0, end: 1 },
            max_parallelism: 1,
            group_ids: Vec::new(),
            gauge: StateGauge::default(),
            budget_noted: false,
        })
    }

    /// Memory held by the window state (approximately).
    pub fn state_bytes(&self) -> usize {
        self.slots.values().map(Slot::size).sum::<usize>()
            + self.sessions.as_ref().map_or(0, Sessions::size_bytes)
    }

    /// Entries of the window state: `(key, window)` groups (sessions for session windows).
    pub fn state_entries(&self) -> usize {
        match &self.sessions {
            Some(s) => s.entries(),
            None => self
                .slots
                .values()
                .map(|s| {
                    s.groups.len()
                        + s.frozen.iter().map(Frozen::len).sum::<usize>()
                        + s.runs.iter().map(Run::rows).sum::<usize>()
                })
                .sum(),
        }
    }

    fn state_size(&self) -> (usize, usize) {
        (self.state_bytes(), self.state_entries())
    }

    fn key_arrays(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        if self.plan.group_idx.is_empty() {
            vec![Arc::new(BooleanArray::from(vec![true; batch.num_rows()]))]
        } else {
            self.plan
                .group_idx
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect()
        }
    }

    fn add(&mut self, batch: RecordBatch, ctx: &mut OperatorContext) -> Result<()> {
        let (batch, slots, times) = self.plan.rows.assign(batch, ctx)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let wm = self.clock.watermark();
        let lateness = self.lateness;
        // Late rows: every window of their slot is complete and past the lateness.
        let mut keep = Vec::with_capacity(slots.len());
        let mut any_late = false;
        for (row, &slot) in slots.iter().enumerate() {
            let last_end = match self.plan.assigner {
                Assigner::Hopping { size, .. } => slot.1.saturating_add(size),
                _ => slot.0,
            };
            let late = last_end.saturating_add(lateness) <= wm;
            keep.push(!late);
            if late {
                any_late = true;
                self.clock.late_row(
                    ctx,
                    &batch,
                    row,
                    times.value(row),
                    "is behind the end of its last window plus the allowed lateness",
                )?;
            } else if lateness > 0 && slot.0 <= wm {
                // Some window of the slot was emitted already: emit it again with this row.
                for w in self.plan.rows.windows_of(slot) {
                    if w.0 <= wm && w.0.saturating_add(lateness) > wm {
                        self.refire.insert(w);
                    }
                }
            }
        }
        let (batch, slots) = if any_late {
            let mask = BooleanArray::from(keep.clone());
            let b = filter_record_batch(&batch, &mask)
                .map_err(|e| Error::internal("filter").with_source(e))?;
            let s: Vec<(i64, i64)> = slots
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(s, _)| s)
                .collect();
            (b, s)
        } else {
            (batch, slots)
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self.key_arrays(&batch);
        let inputs: Vec<AggregateInput> = self
            .plan
            .aggs
            .iter()
            .map(|a| a.evaluate(&batch))
            .collect::<Result<_>>()?;
        // Rows by slot; one slot for the whole batch is the common case.
        if slots.iter().all(|s| *s == slots[0]) {
            return self.update_slot(slots[0], &keys, &inputs);
        }
        let mut by_slot: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
        for (row, s) in slots.iter().enumerate() {
            by_slot.entry(*s).or_default().push(row as u32);
        }
        for (slot, rows) in by_slot {
            let idx = UInt32Array::from(rows);
            let keys: Vec<ArrayRef> = keys
                .iter()
                .map(|k| arrow::compute::take(k.as_ref(), &idx, None))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::internal("take").with_source(e))?;
            let inputs: Vec<AggregateInput> =
                inputs.iter().map(|i| i.take(&idx)).collect::<Result<_>>()?;
            self.update_slot(slot, &keys, &inputs)?;
        }
        Ok(())
    }

    fn update_slot(
        &mut self,
        slot: (i64, i64),
        keys: &[ArrayRef],
        inputs: &[AggregateInput],
    ) -> Result<()> {
        let s = match self.slots.entry(slot) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Slot::new(&self.plan)?),
        };
        s.groups
            .intern(keys, &mut self.group_ids)
            .map_err(|e| Error::internal("cannot intern group keys").with_source(e))?;
        s.accs.update(inputs, &self.group_ids, s.groups.len())
    }

    /// The result rows of window `[start, end)` made of `slots` (none if they hold nothing).
    /// `consume` says the slots are not needed afterwards (so a lone slot is evaluated in place).
    fn window_result(
        &mut self,
        start: i64,
        end: i64,
        slots: &[(i64, i64)],
        consume: bool,
    ) -> Result<Vec<RecordBatch>> {
        if slots
            .iter()
            .any(|id| self.slots.get(id).is_some_and(Slot::spilled))
        {
            return self.spilled_window_result(start, end, slots);
        }
        let lone = consume
            && slots.len() == 1
            && self
                .slots
                .get(&slots[0])
                .is_some_and(|s| s.frozen.is_empty());
        let result = if lone {
            match self.slots.get_mut(&slots[0]) {
                Some(s) => s.take_result()?,
                None => None,
            }
        } else {
            let mut merged = Slot::new(&self.plan)?;
            for id in slots {
                let Some(s) = self.slots.get_mut(id) else {
                    continue;
                };
                s.freeze()?;
                for part in &s.frozen {
                    merged.merge(&part.keys, &part.states, &mut self.group_ids)?;
                }
            }
            merged.take_result()?
        };
        match result {
            Some((keys, values)) => Ok(vec![self.result_batch(start, end, keys, values)?]),
            None => Ok(Vec::new()),
        }
    }

    /// [`Self::window_result`] of a window some of whose slots are spilled: the slots' state in
    /// memory is spilled too, and the runs are merged one key-group range at a time, each range
    /// holding about half the budget's worth of run bytes, so the merge stays within the budget.
    fn spilled_window_result(
        &mut self,
        start: i64,
        end: i64,
        slots: &[(i64, i64)],
    ) -> Result<Vec<RecordBatch>> {
        for id in slots {
            self.spill_slot(*id)?;
        }
        let runs: Vec<&Run> = slots
            .iter()
            .filter_map(|id| self.slots.get(id))
            .flat_map(|s| &s.runs)
            .collect();
        let Some(budget) = self.plan.budget.as_ref() else {
            return Err(Error::internal(
                "a spilled window in a step without a memory budget",
            ));
        };
        let ranges = merge_ranges(&runs, budget);
        let mut ids = std::mem::take(&mut self.group_ids);
        let mut out = Vec::new();
        for range in ranges {
            let mut merged = Slot::new(&self.plan)?;
            for run in &runs {
                for batch in run.read(range.clone())? {
                    // Column 0 is the key group.
                    let (keys, states) = self.plan.split_state(&batch.columns()[1..]);
                    merged.merge(&keys, &states, &mut ids)?;
                }
            }
            if let Some((keys, values)) = merged.take_result()? {
                out.push(self.result_batch(start, end, keys, values)?);
            }
        }
        self.group_ids = ids;
        Ok(out)
    }

    /// The key group of every row of a frozen part.
    fn part_groups(&self, part: &Frozen) -> Result<Vec<u32>> {
        let keys: &[ArrayRef] = if self.plan.group_idx.is_empty() {
            &[]
        } else {
            &part.keys
        };
        crate::parts::key_groups(keys, part.len(), self.max_parallelism, self.range)
    }

    /// Freezes slot `id` and writes all its frozen parts to disk as one sorted run.
    fn spill_slot(&mut self, id: (i64, i64)) -> Result<()> {
        let Some(budget) = self.plan.budget.clone() else {
            return Ok(());
        };
        let parts = match self.slots.get_mut(&id) {
            Some(s) => {
                s.freeze_and_shrink(&self.plan)?;
                std::mem::take(&mut s.frozen)
            }
            None => return Ok(()),
        };
        let mut batches = Vec::with_capacity(parts.len());
        for part in &parts {
            if part.len() == 0 {
                continue;
            }
            let (fields, columns) = part_columns(part);
            batches.push(run_batch(self.part_groups(part)?, fields, columns)?);
        }
        drop(parts);
        if batches.is_empty() {
            return Ok(());
        }
        let run = Run::write(&budget.dir, &batches)?;
        if let Some(s) = self.slots.get_mut(&id) {
            s.runs.push(run);
        }
        Ok(())
    }

    /// Spills the largest slots while the state in memory is over the budget, down to half of
    /// it (so that spilling is not repeated for every batch).
    fn enforce_budget(&mut self, ctx: &OperatorContext) -> Result<()> {
        let Some(limit) = self.plan.budget.as_ref().map(|b| b.bytes) else {
            return Ok(());
        };
        if let Some(s) = &mut self.sessions {
            if s.enforce_budget()? && !self.budget_noted {
                self.budget_noted = true;
                tracing::info!(
                    step = ctx.name(),
                    "session rows passed their memory_budget of {limit} bytes; spilling them to \
                     {}",
                    self.plan
                        .budget
                        .as_ref()
                        .map_or(String::new(), |b| b.dir.display().to_string())
                );
            }
            return Ok(());
        }
        let sizes: Vec<((i64, i64), usize)> =
            self.slots.iter().map(|(k, s)| (*k, s.size())).collect();
        let before: usize = sizes.iter().map(|s| s.1).sum();
        let ids = victims(sizes, limit);
        if ids.is_empty() {
            return Ok(());
        }
        for id in &ids {
            self.spill_slot(*id)?;
        }
        let spilled = ids.len();
        let total: usize = self.slots.values().map(Slot::size).sum();
        let on_disk: u64 = self
            .slots
            .values()
            .flat_map(|s| &s.runs)
            .map(Run::bytes)
            .sum();
        if !self.budget_noted {
            self.budget_noted = true;
            tracing::info!(
                step = ctx.name(),
                "window state passed its memory_budget of {limit} bytes; spilling sorted runs to \
                 {}",
                self.plan
                    .budget
                    .as_ref()
                    .map_or(String::new(), |b| b.dir.display().to_string())
            );
        }
        tracing::debug!(
            step = ctx.name(),
            "spilled {spilled} windows: {before} -> {total} bytes in memory, {on_disk} bytes on \
             disk"
        );
        Ok(())
    }

    fn result_batch(
        &self,
        start: i64,
        end: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let n = keys.first().map_or(0, |k| k.len());
        let mut cols = crate::window::bound_columns(start, end, n, &self.plan.bound_type)?.to_vec();
        cols.extend(keys.into_iter().take(self.plan.key_idx.len()));
        cols.extend(values);
        RecordBatch::try_new(self.plan.output.clone(), cols)
            .map_err(|e| Error::internal("cannot build a window result").with_source(e))
    }

    /// Emits every window complete at watermark `w` (and due re-emissions), drops what is past
    /// the lateness.
    fn fire(&mut self, w: i64, out: &mut Emitter) -> Result<()> {
        let lateness = self.lateness;
        match self.plan.assigner {
            Assigner::Hopping { size, slide, .. } => {
                let before = self.fired_upto;
                let mut ends = BTreeSet::new();
                for &(_, start) in self.slots.keys() {
                    for k in 1..=size / slide {
                        let e = start + k * slide;
                        if e > before && e <= w {
                            ends.insert(e);
                        }
                    }
                }
                for e in ends {
                    let s = e - size;
                    let members: Vec<(i64, i64)> = self
                        .slots
                        .range((s + slide, i64::MIN)..=(e, i64::MAX))
                        .map(|(k, _)| *k)
                        .filter(|k| k.1 >= s && k.1 < e)
                        .collect();
                    for b in self.window_result(s, e, &members, false)? {
                        out.emit(b);
                    }
                }
                self.refire_due(w, out)?;
                // A pane is needed until the last window holding it is past the lateness.
                self.slots.retain(|&(_, start), _| {
                    start.saturating_add(size).saturating_add(lateness) > w
                });
            }
            _ => {
                let due: Vec<(i64, i64)> = self
                    .slots
                    .range(..=(w, i64::MAX))
                    .filter(|(_, s)| !s.fired)
                    .map(|(k, _)| *k)
                    .collect();
                for (end, start) in due {
                    let keep = end.saturating_add(lateness) > w;
                    for b in self.window_result(start, end, &[(end, start)], !keep)? {
                        out.emit(b);
                    }
                    if keep {
                        if let Some(s) = self.slots.get_mut(&(end, start)) {
                            s.fired = true;
                        }
                    } else {
                        self.slots.remove(&(end, start));
                    }
                }
                self.refire_due(w, out)?;
                self.slots
                    .retain(|&(end, _), _| end.saturating_add(lateness) > w);
            }
        }
        Ok(())
    }

    /// Emits again the windows that got late rows.
    fn refire_due(&mut self, w: i64, out: &mut Emitter) -> Result<()> {
        let due = std::mem::take(&mut self.refire);
        for (end, start) in due {
            if end > w {
                continue;
            }
            let members: Vec<(i64, i64)> = match self.plan.assigner {
                Assigner::Hopping { .. } => self
                    .slots
                    .keys()
                    .filter(|k| k.1 >= start && k.1 < end)
                    .copied()
                    .collect(),
                _ => vec![(end, start)],
            };
            for b in self.window_result(start, end, &members, false)? {
                out.emit(b);
            }
        }
        Ok(())
    }

    fn snapshot_slots(&mut self, snap: &mut StateSnapshot) -> Result<()> {
        let mut per_group = crate::parts::Parts::default();
        for slot in self.slots.values_mut() {
            slot.freeze()?;
        }
        for (&(end, start), slot) in &self.slots {
            let fired = slot.fired;
            for part in &slot.frozen {
                if part.len() == 0 {
                    continue;
                }
                let (fields, columns) = part_columns(part);
                let batch = slot_state_batch(end, start, fired, fields, columns)?;
                per_group.add(&batch, &self.part_groups(part)?)?;
            }
            // Spilled runs are read back whole (a snapshot is built in memory); their rows carry
            // their key groups.
            for run in &slot.runs {
                for batch in run.read(0..u32::MAX)? {
                    let groups = batch
                        .column(0)
                        .as_primitive::<UInt32Type>()
                        .values()
                        .to_vec();
                    let schema = batch.schema();
                    let fields: Vec<Field> = schema.fields()[1..]
                        .iter()
                        .map(|f| f.as_ref().clone())
                        .collect();
                    let batch =
                        slot_state_batch(end, start, fired, fields, batch.columns()[1..].to_vec())?;
                    per_group.add(&batch, &groups)?;
                }
            }
        }
        per_group.write(PART, snap)
    }

    fn restore_slots(&mut self, snap: &StateSnapshot) -> Result<()> {
        let n_keys = self.plan.key_schema.fields().len();
        let n_states: usize = self.plan.aggs.iter().map(|a| a.state_fields().len()).sum();
        for entry in &snap.entries {
            let StateKey::KeyGroup(_) = entry.key else {
                continue;
            };
            let (name, batch) = decode_part(&entry.bytes)?;
            if name != PART {
                continue;
            }
            let want = 3 + n_keys + n_states;
            if batch.num_columns() != want {
                return Err(Error::io(format!(
                    "checkpoint state does not fit this operator: window state has {} columns, \
                     this aggregate needs {want} (were the keys or aggregates changed?)",
                    batch.num_columns()
                )));
            }
            let ends = batch.column(0).as_primitive::<Int64Type>();
            let starts = batch.column(1).as_primitive::<Int64Type>();
            let fired = batch.column(2).as_boolean();
            let mut by_slot: BTreeMap<(i64, i64), (bool, Vec<u32>)> = BTreeMap::new();
            for row in 0..batch.num_rows() {
                by_slot
                    .entry((ends.value(row), starts.value(row)))
                    .or_insert_with(|| (fired.value(row), Vec::new()))
                    .1
                    .push(row as u32);
            }
            for (slot, (was_fired, rows)) in by_slot {
                let part = take_record_batch(&batch, &UInt32Array::from(rows))
                    .map_err(|e| Error::internal("take").with_source(e))?;
                let (keys, states) = self.plan.split_state(&part.columns()[3..]);
                let s = match self.slots.entry(slot) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(Slot::new(&self.plan)?)
                    }
                };
                s.fired |= was_fired;
                s.frozen.push(Frozen { keys, states });
            }
        }
        Ok(())
    }
}

/// The key and state columns of a frozen part, named `__k{i}` and `__s{a}_{j}` as checkpoints
/// and spilled runs hold them.
fn part_columns(part: &Frozen) -> (Vec<Field>, Vec<ArrayRef>) {
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (i, k) in part.keys.iter().enumerate() {
        fields.push(Field::new(format!("__k{i}"), k.data_type().clone(), true));
        cols.push(k.clone());
    }
    for (a, state) in part.states.iter().enumerate() {
        for (j, s) in state.iter().enumerate() {
            fields.push(Field::new(
                format!("__s{a}_{j}"),
                s.data_type().clone(),
                true,
            ));
            cols.push(s.clone());
        }
    }
    (fields, cols)
}

/// A checkpoint's rows of one slot: `__end`, `__start`, `__fired`, then the part's columns.
fn slot_state_batch(
    end: i64,
    start: i64,
    fired: bool,
    mut fields: Vec<Field>,
    mut columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let n = columns.first().map_or(0, |c| c.len());
    fields.splice(
        0..0,
        [
            Field::new("__end", DataType::Int64, false),
            Field::new("__start", DataType::Int64, false),
            Field::new("__fired", DataType::Boolean, false),
        ],
    );
    columns.splice(
        0..0,
        [
            Arc::new(Int64Array::from(vec![end; n])) as ArrayRef,
            Arc::new(Int64Array::from(vec![start; n])),
            Arc::new(BooleanArray::from(vec![fired; n])),
        ],
    );
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::internal("cannot build window state").with_source(e))
}

#[async_trait]
impl Operator for WindowAggregate {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let info = ctx.info();
        self.max_parallelism = info.max_parallelism;
        self.range =
            KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.subtask);
        if let Some(s) = &mut self.sessions {
            s.open(info.max_parallelism, self.range)?;
        }
        if let Some(snap) = ctx.restored_state().cloned() {
            self.clock.restore(self.range, &snap)?;
            match &mut self.sessions {
                Some(s) => s.restore(&snap)?,
                None => self.restore_slots(&snap)?,
            }
            self.enforce_budget(ctx)?;
        }
        self.fired_upto = self.clock.watermark();
        let size = self.state_size();
        self.gauge.report(ctx, size);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if let Some(s) = &mut self.sessions {
            s.add(batch, &mut self.clock, ctx)?;
            self.enforce_budget(ctx)?;
        } else {
            self.add(batch, ctx)?;
            self.enforce_budget(ctx)?;
            if !self.refire.is_empty() {
                let w = self.clock.watermark();
                self.refire_due(w, out)?;
            }
        }
        if self.gauge.due() {
            let size = self.state_size();
            self.gauge.report(ctx, size);
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if !self.clock.advance(watermark.0) {
            return Ok(());
        }
        let w = self.clock.watermark();
        if let Some(s) = &mut self.sessions {
            s.fire(w, out)?;
        } else {
            self.fire(w, out)?;
            self.fired_upto = w;
        }
        // After the windows it completed, so a windowed step downstream sees time advance.
        out.emit_watermark(watermark);
        let size = self.state_size();
        self.gauge.report(ctx, size);
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
        match &mut self.sessions {
            Some(s) => s.snapshot(&mut snap)?,
            None => self.snapshot_slots(&mut snap)?,
        }
        let size = self.state_size();
        self.gauge.report(ctx, size);
        Ok(snap)
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, out: &mut Emitter) -> Result<()> {
        // The input is complete: every window is.
        if let Some(s) = &mut self.sessions {
            s.fire(i64::MAX, out)?;
        } else {
            self.fire(i64::MAX, out)?;
        }
        let size = self.state_size();
        self.gauge.report(ctx, size);
        self.clock.finish(ctx.name());
        Ok(())
    }
}
