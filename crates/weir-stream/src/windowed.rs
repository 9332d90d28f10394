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

use crate::aggregate::{Accumulators, AggregateInput, CompiledAggregate, compile_aggregate};
use crate::gauge::StateGauge;
use crate::late::{Clock, OnLate};
use crate::session::Sessions;
use crate::window::{Assigner, RowWindows, Span, WindowSpec, names};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use weir_checkpoint::{StateKey, StateSnapshot};
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_state::codec::{decode_part, encode_part};
use weir_state::time::millis_as;
use weir_types::key_group::key_group_of;
use weir_types::{Barrier, Error, KeyGroupRange, Result, Watermark, hash_keys};

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
        })
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
        format!(
            "aggregate {}{by} over {}",
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
                .map(|s| s.groups.len() + s.frozen.iter().map(Frozen::len).sum::<usize>())
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

    /// The result rows of window `[start, end)` made of `slots`, or `None` if they hold nothing.
    /// `consume` says the slots are not needed afterwards (so a lone slot is evaluated in place).
    fn window_result(
        &mut self,
        start: i64,
        end: i64,
        slots: &[(i64, i64)],
        consume: bool,
    ) -> Result<Option<RecordBatch>> {
        let lone = consume
            && slots.len() == 1
            && self
                .slots
                .get(&slots[0])
                .is_some_and(|s| s.frozen.is_empty());
        let (keys, values) = if lone {
            let Some(s) = self.slots.get_mut(&slots[0]) else {
                return Ok(None);
            };
            if s.groups.is_empty() {
                return Ok(None);
            }
            let keys = s
                .groups
                .emit(EmitTo::All)
                .map_err(|e| Error::internal("cannot emit group values").with_source(e))?;
            (keys, s.accs.evaluate()?)
        } else {
            let mut merged = Slot::new(&self.plan)?;
            let mut any = false;
            for id in slots {
                let Some(s) = self.slots.get_mut(id) else {
                    continue;
                };
                s.freeze()?;
                for part in &s.frozen {
                    any = true;
                    merged
                        .groups
                        .intern(&part.keys, &mut self.group_ids)
                        .map_err(|e| Error::internal("cannot intern group keys").with_source(e))?;
                    let n = merged.groups.len();
                    merged.accs.merge(&part.states, &self.group_ids, n)?;
                }
            }
            if !any || merged.groups.is_empty() {
                return Ok(None);
            }
            let keys = merged
                .groups
                .emit(EmitTo::All)
                .map_err(|e| Error::internal("cannot emit group values").with_source(e))?;
            (keys, merged.accs.evaluate()?)
        };
        self.result_batch(start, end, keys, values).map(Some)
    }

    fn result_batch(
        &self,
        start: i64,
        end: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let n = keys.first().map_or(0, |k| k.len());
        let mut cols = vec![
            millis_as(Int64Array::from(vec![start; n]), &self.plan.bound_type)?,
            millis_as(Int64Array::from(vec![end; n]), &self.plan.bound_type)?,
        ];
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
                    if let Some(b) = self.window_result(s, e, &members, false)? {
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
                    if let Some(b) = self.window_result(start, end, &[(end, start)], !keep)? {
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
            if let Some(b) = self.window_result(start, end, &members, false)? {
                out.emit(b);
            }
        }
        Ok(())
    }

    fn snapshot_slots(&mut self, snap: &mut StateSnapshot) -> Result<()> {
        let mut per_group: BTreeMap<u32, Vec<RecordBatch>> = BTreeMap::new();
        let mut schema: Option<SchemaRef> = None;
        for (&(end, start), slot) in self.slots.iter_mut() {
            slot.freeze()?;
            for part in &slot.frozen {
                let n = part.keys.first().map_or(0, |k| k.len());
                if n == 0 {
                    continue;
                }
                let mut fields = vec![
                    Field::new("__end", DataType::Int64, false),
                    Field::new("__start", DataType::Int64, false),
                    Field::new("__fired", DataType::Boolean, false),
                ];
                let mut cols: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![end; n])),
                    Arc::new(Int64Array::from(vec![start; n])),
                    Arc::new(BooleanArray::from(vec![slot.fired; n])),
                ];
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
                let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
                    .map_err(|e| Error::internal("cannot build window state").with_source(e))?;
                schema.get_or_insert_with(|| batch.schema());
                let groups: Vec<u32> = if self.plan.group_idx.is_empty() {
                    vec![self.range.start; n]
                } else {
                    hash_keys(&part.keys)
                        .map_err(|e| Error::internal("cannot hash keys").with_source(e))?
                        .into_iter()
                        .map(|h| key_group_of(h, self.max_parallelism))
                        .collect()
                };
                let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for (row, kg) in groups.into_iter().enumerate() {
                    rows.entry(kg).or_default().push(row as u32);
                }
                for (kg, rows) in rows {
                    let b = take_record_batch(&batch, &UInt32Array::from(rows))
                        .map_err(|e| Error::internal("take").with_source(e))?;
                    per_group.entry(kg).or_default().push(b);
                }
            }
        }
        for (kg, batches) in per_group {
            let b = concat_batches(&batches[0].schema(), &batches)
                .map_err(|e| Error::internal("cannot concatenate window state").with_source(e))?;
            snap.push_keyed(kg, encode_part(PART, &b)?);
        }
        Ok(())
    }

    fn restore_slots(&mut self, snap: &StateSnapshot) -> Result<()> {
        let n_keys = self.plan.key_schema.fields().len();
        let n_states: Vec<usize> = self
            .plan
            .aggs
            .iter()
            .map(|a| a.state_fields().len())
            .collect();
        for entry in &snap.entries {
            let StateKey::KeyGroup(_) = entry.key else {
                continue;
            };
            let (name, batch) = decode_part(&entry.bytes)?;
            if name != PART {
                continue;
            }
            let want = 3 + n_keys + n_states.iter().sum::<usize>();
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
                let keys = part.columns()[3..3 + n_keys].to_vec();
                let mut at = 3 + n_keys;
                let mut states = Vec::new();
                for &n in &n_states {
                    states.push(part.columns()[at..at + n].to_vec());
                    at += n;
                }
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
        } else {
            self.add(batch, ctx)?;
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
