//! The keyed state of one operator instance: its keys, its named value, list and map states and
//! its timers, snapshotted per key group and restored (also at another parallelism) from them.
//!
//! # Example
//!
//! ```
//! use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
//! use arrow::datatypes::{DataType, Field, Int64Type, Schema};
//! use std::sync::Arc;
//! use weir_state::{StateBackend, TimeDomain};
//! use weir_types::KeyGroupRange;
//!
//! // A running count per key, as one subtask of one owning every key group.
//! let mut state = StateBackend::new(vec![DataType::Utf8], 128, KeyGroupRange { start: 0, end: 128 })?;
//! let counts = state.value_state(
//!     "count",
//!     Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
//! )?;
//! let keys: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
//! let mut ids = Vec::new();
//! state.intern(&[keys], &mut ids)?;
//! for &id in &ids {
//!     let (old, _) = state.value(counts).get(&[id])?;
//!     let n = old.column(0).as_primitive::<Int64Type>();
//!     let next = if n.is_null(0) { 1 } else { n.value(0) + 1 };
//!     let row = RecordBatch::try_new(
//!         state.value(counts).schema().clone(),
//!         vec![Arc::new(Int64Array::from(vec![next])) as ArrayRef],
//!     )?;
//!     state.value_mut(counts).put(&[id], row)?;
//! }
//! state.timers_mut().register(TimeDomain::EventTime, ids[0], 1_000);
//!
//! // Snapshot, then restore into a fresh instance: same counts, same timer.
//! let snapshot = state.snapshot()?;
//! let mut restored = StateBackend::new(vec![DataType::Utf8], 128, KeyGroupRange { start: 0, end: 128 })?;
//! let counts2 = restored.value_state(
//!     "count",
//!     Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
//! )?;
//! restored.restore(&snapshot)?;
//! let a: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
//! restored.intern(&[a], &mut ids)?;
//! let (n, _) = restored.value(counts2).get(&ids)?;
//! assert_eq!(n.column(0).as_primitive::<Int64Type>().value(0), 2);
//! assert_eq!(restored.timers_mut().advance_watermark(1_000).len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::{decode_part, encode_part};
use crate::keys::{KeyId, KeyTable};
use crate::list::ListState;
use crate::map::MapState;
use crate::timers::{TimeDomain, Timers};
use crate::value::ValueState;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Int64Array, RecordBatch, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt8Type};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use weir_checkpoint::{StateKey, StateSnapshot};
use weir_types::{Error, ErrorKind, KeyGroupRange, Result};

/// The column holding a state row's key (Arrow row format bytes) in a snapshot part.
pub const KEY_COLUMN: &str = "__key";
const MAP_KEY_COLUMN: &str = "__map_key";
const TIMERS: &str = "__timers";
const TTL: &str = "__ttl";

/// A value state of a [`StateBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueHandle(usize);
/// A list state of a [`StateBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListHandle(usize);
/// A map state of a [`StateBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapHandle(usize);

#[derive(Debug)]
enum Named {
    Value(ValueState),
    List(ListState),
    Map(Box<MapState>),
}

/// Keys, named states and timers of one operator instance.
#[derive(Debug)]
pub struct StateBackend {
    keys: KeyTable,
    range: KeyGroupRange,
    names: Vec<String>,
    states: Vec<Named>,
    timers: Timers,
    ttl: Ttl,
}

/// Last-update times of keys, for state TTL (see [`StateBackend::set_ttl`]).
#[derive(Debug, Default)]
struct Ttl {
    ttl: Option<i64>,
    /// Per key id: when it was last updated, or `i64::MIN` when never (or expired).
    touched: Vec<i64>,
    /// `(last update, key)` for every touched key, oldest first.
    by_time: BTreeSet<(i64, KeyId)>,
}

impl Ttl {
    fn touch(&mut self, id: KeyId, time: i64) {
        let i = id as usize;
        if i >= self.touched.len() {
            self.touched.resize(i + 1, i64::MIN);
        }
        let old = self.touched[i];
        if old >= time {
            return;
        }
        if old != i64::MIN {
            self.by_time.remove(&(old, id));
        }
        self.touched[i] = time;
        self.by_time.insert((time, id));
    }
}

impl StateBackend {
    /// State keyed by columns of `key_types`, for the instance owning `range` of
    /// `max_parallelism` key groups.
    pub fn new(
        key_types: Vec<DataType>,
        max_parallelism: u32,
        range: KeyGroupRange,
    ) -> Result<Self> {
        Ok(StateBackend {
            keys: KeyTable::new(key_types, max_parallelism)?,
            range,
            names: Vec::new(),
            states: Vec::new(),
            timers: Timers::new(),
            ttl: Ttl::default(),
        })
    }

    fn declare(&mut self, name: &str, state: Named) -> Result<usize> {
        if name.starts_with("__") {
            return Err(Error::config(format!(
                "state name '{name}': names starting with '__' are reserved"
            )));
        }
        if self.names.iter().any(|n| n == name) {
            return Err(Error::config(format!("state '{name}' is declared twice")));
        }
        self.names.push(name.to_string());
        self.states.push(state);
        Ok(self.states.len() - 1)
    }

    /// Declares a value state named `name` with values of the columns of `schema`.
    pub fn value_state(&mut self, name: &str, schema: SchemaRef) -> Result<ValueHandle> {
        Ok(ValueHandle(
            self.declare(name, Named::Value(ValueState::new(schema)?))?,
        ))
    }

    /// Declares a list state named `name` with rows of the columns of `schema`.
    pub fn list_state(&mut self, name: &str, schema: SchemaRef) -> Result<ListHandle> {
        Ok(ListHandle(
            self.declare(name, Named::List(ListState::new(schema)))?,
        ))
    }

    /// Declares a map state named `name` with map keys of `map_key_schema`'s columns and values
    /// of `value_schema`'s.
    pub fn map_state(
        &mut self,
        name: &str,
        map_key_schema: &SchemaRef,
        value_schema: SchemaRef,
    ) -> Result<MapHandle> {
        Ok(MapHandle(self.declare(
            name,
            Named::Map(Box::new(MapState::new(map_key_schema, value_schema)?)),
        )?))
    }

    /// Interns the keys of a batch (one array per key column): one id per row into `ids`.
    pub fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<KeyId>) -> Result<()> {
        self.keys.intern(keys, ids)
    }

    /// The key table.
    pub fn keys(&self) -> &KeyTable {
        &self.keys
    }

    /// The key groups this instance owns.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    /// A value state.
    pub fn value(&self, h: ValueHandle) -> &ValueState {
        match &self.states[h.0] {
            Named::Value(s) => s,
            _ => unreachable!("a value handle names a value state"),
        }
    }

    /// A value state, to change.
    pub fn value_mut(&mut self, h: ValueHandle) -> &mut ValueState {
        match &mut self.states[h.0] {
            Named::Value(s) => s,
            _ => unreachable!("a value handle names a value state"),
        }
    }

    /// A list state.
    pub fn list(&self, h: ListHandle) -> &ListState {
        match &self.states[h.0] {
            Named::List(s) => s,
            _ => unreachable!("a list handle names a list state"),
        }
    }

    /// A list state, to change.
    pub fn list_mut(&mut self, h: ListHandle) -> &mut ListState {
        match &mut self.states[h.0] {
            Named::List(s) => s,
            _ => unreachable!("a list handle names a list state"),
        }
    }

    /// A map state, to change (reads intern map keys, so they need `&mut` too).
    pub fn map_mut(&mut self, h: MapHandle) -> &mut MapState {
        match &mut self.states[h.0] {
            Named::Map(s) => s,
            _ => unreachable!("a map handle names a map state"),
        }
    }

    /// The timers.
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// The timers, to register, delete or fire.
    pub fn timers_mut(&mut self) -> &mut Timers {
        &mut self.timers
    }

    /// Sets the state TTL (milliseconds; `None`, the default, keeps state until the operator
    /// removes it). With a TTL, every state and timer of a key that was not
    /// [touched](Self::touch) for `ttl` is dropped by [`expire`](Self::expire).
    ///
    /// The backend has no clock of its own: the operator says which time it counts in by what
    /// it passes to `touch` and `expire`, the same for both. Event time (the row's time, then the
    /// watermark) gives answers that do not depend on speed or restarts; processing time (the
    /// wall clock, as Flink's state TTL) bounds memory even when event time stalls.
    pub fn set_ttl(&mut self, ttl_ms: Option<i64>) {
        self.ttl.ttl = ttl_ms;
    }

    /// The state TTL in milliseconds, if any.
    pub fn ttl(&self) -> Option<i64> {
        self.ttl.ttl
    }

    /// Records that the keys `ids` were updated at `time` (ms, in the TTL's time; an earlier time
    /// than a key's last update changes nothing). A no-op without a TTL.
    pub fn touch(&mut self, ids: &[KeyId], time: i64) {
        if self.ttl.ttl.is_none() {
            return;
        }
        for &id in ids {
            self.ttl.touch(id, time);
        }
    }

    /// When key `id` was last [touched](Self::touch), if it was and has not expired since.
    pub fn last_touched(&self, id: KeyId) -> Option<i64> {
        self.ttl
            .touched
            .get(id as usize)
            .copied()
            .filter(|&t| t != i64::MIN)
    }

    /// Drops every state and timer of the keys last touched at or before `now - ttl`, and
    /// returns those keys, oldest update first. Costs time in the number of keys dropped (plus
    /// the timers, when some are dropped). Returns nothing without a TTL.
    pub fn expire(&mut self, now: i64) -> Result<Vec<KeyId>> {
        let Some(ttl) = self.ttl.ttl else {
            return Ok(Vec::new());
        };
        let cut = now.saturating_sub(ttl);
        let rest = match cut.checked_add(1) {
            Some(next) => self.ttl.by_time.split_off(&(next, 0)),
            None => BTreeSet::new(),
        };
        let gone: Vec<KeyId> = std::mem::replace(&mut self.ttl.by_time, rest)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        for &id in &gone {
            self.ttl.touched[id as usize] = i64::MIN;
        }
        for state in &mut self.states {
            match state {
                Named::Value(v) => v.remove(&gone),
                Named::List(l) => {
                    for &id in &gone {
                        l.clear(id)?;
                    }
                }
                Named::Map(m) => {
                    for &id in &gone {
                        m.clear(id);
                    }
                }
            }
        }
        if !self.timers.is_empty() {
            let set: std::collections::HashSet<KeyId> = gone.iter().copied().collect();
            self.timers.retain_keys(|k| !set.contains(&k));
        }
        Ok(gone)
    }

    /// Memory held by keys, states and timers (approximately).
    pub fn size_bytes(&self) -> usize {
        self.keys.size_bytes()
            + self.timers.len() * 24
            + self.ttl.touched.capacity() * 8
            + self.ttl.by_time.len() * 24
            + self
                .states
                .iter()
                .map(|s| match s {
                    Named::Value(v) => v.size_bytes(),
                    Named::List(l) => l.size_bytes(),
                    Named::Map(m) => m.size_bytes(),
                })
                .sum::<usize>()
    }

    fn key_column(&self, ids: &[KeyId]) -> BinaryArray {
        let mut b = BinaryBuilder::with_capacity(ids.len(), ids.len() * 8);
        for &id in ids {
            b.append_value(self.keys.bytes(id));
        }
        b.finish()
    }

    /// Groups key ids by key group, ascending.
    fn by_group(&self, ids: impl Iterator<Item = KeyId>) -> BTreeMap<u32, Vec<KeyId>> {
        let mut groups: BTreeMap<u32, Vec<KeyId>> = BTreeMap::new();
        for id in ids {
            groups.entry(self.keys.key_group(id)).or_default().push(id);
        }
        groups
    }

    /// Every state and timer, as keyed entries of their key groups (one part per state and key
    /// group that holds something; see [`crate::codec`]).
    pub fn snapshot(&self) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        for (name, state) in self.names.iter().zip(&self.states) {
            match state {
                Named::Value(v) => {
                    for (kg, ids) in self.by_group(v.keys()) {
                        let (values, _) = v.get(&ids)?;
                        let batch = with_leading(
                            vec![(KEY_COLUMN, Arc::new(self.key_column(&ids)) as ArrayRef)],
                            &values,
                        )?;
                        snap.push_keyed(kg, encode_part(name, &batch)?);
                    }
                }
                Named::List(l) => {
                    for (kg, ids) in self.by_group(l.keys()) {
                        let (rows, ends) = l.get_many(&ids)?;
                        let mut repeated = Vec::with_capacity(rows.num_rows());
                        let mut start = 0;
                        for (&id, &end) in ids.iter().zip(&ends) {
                            repeated.extend(std::iter::repeat_n(id, end - start));
                            start = end;
                        }
                        let batch = with_leading(
                            vec![(KEY_COLUMN, Arc::new(self.key_column(&repeated)) as ArrayRef)],
                            &rows,
                        )?;
                        snap.push_keyed(kg, encode_part(name, &batch)?);
                    }
                }
                Named::Map(m) => {
                    for (kg, ids) in self.by_group(m.keys()) {
                        let mut keys = Vec::new();
                        let mut map_keys = BinaryBuilder::new();
                        let mut positions = Vec::new();
                        for &id in &ids {
                            for (mk, p) in m.raw_entries(id) {
                                keys.push(id);
                                map_keys.append_value(m.map_key_bytes(mk));
                                positions.push(p);
                            }
                        }
                        let values = m.gather(&positions)?;
                        let batch = with_leading(
                            vec![
                                (KEY_COLUMN, Arc::new(self.key_column(&keys)) as ArrayRef),
                                (MAP_KEY_COLUMN, Arc::new(map_keys.finish()) as ArrayRef),
                            ],
                            &values,
                        )?;
                        snap.push_keyed(kg, encode_part(name, &batch)?);
                    }
                }
            }
        }
        type TimerColumns = (Vec<KeyId>, Vec<i64>, Vec<u8>);
        let mut timers: BTreeMap<u32, TimerColumns> = BTreeMap::new();
        for (domain, key, time) in self.timers.iter() {
            let e = timers.entry(self.keys.key_group(key)).or_default();
            e.0.push(key);
            e.1.push(time);
            e.2.push(domain.code());
        }
        for (kg, (keys, times, domains)) in timers {
            let batch = RecordBatch::try_from_iter([
                (KEY_COLUMN, Arc::new(self.key_column(&keys)) as ArrayRef),
                ("__time", Arc::new(Int64Array::from(times)) as ArrayRef),
                ("__domain", Arc::new(UInt8Array::from(domains)) as ArrayRef),
            ])
            .map_err(|e| Error::internal("cannot build the timers' snapshot").with_source(e))?;
            snap.push_keyed(kg, encode_part(TIMERS, &batch)?);
        }
        let mut touched: BTreeMap<u32, (Vec<KeyId>, Vec<i64>)> = BTreeMap::new();
        for &(time, key) in &self.ttl.by_time {
            let e = touched.entry(self.keys.key_group(key)).or_default();
            e.0.push(key);
            e.1.push(time);
        }
        for (kg, (keys, times)) in touched {
            let batch = RecordBatch::try_from_iter([
                (KEY_COLUMN, Arc::new(self.key_column(&keys)) as ArrayRef),
                ("__touched", Arc::new(Int64Array::from(times)) as ArrayRef),
            ])
            .map_err(|e| Error::internal("cannot build the TTL snapshot").with_source(e))?;
            snap.push_keyed(kg, encode_part(TTL, &batch)?);
        }
        Ok(snap)
    }

    /// Restores the keyed entries of `snapshot` (union entries are left to the operator). Every
    /// part must name a declared state, hold that state's columns, and belong to a key group of
    /// this instance's range; anything else is an error naming the state and key group.
    pub fn restore(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let mut ids = Vec::new();
        for entry in &snapshot.entries {
            let StateKey::KeyGroup(kg) = entry.key else {
                continue;
            };
            if !self.range.contains(kg) {
                return Err(mismatch(format!(
                    "key group {kg} was restored to the instance owning key groups {}..{}",
                    self.range.start, self.range.end
                )));
            }
            let (name, batch) = decode_part(&entry.bytes)?;
            let key_col = binary_column(&batch, KEY_COLUMN, name)?;
            ids.clear();
            for i in 0..key_col.len() {
                let id = self.keys.intern_bytes(key_col.value(i));
                if self.keys.key_group(id) != kg {
                    return Err(mismatch(format!(
                        "state '{name}' of key group {kg} holds a key of key group {} (was it \
                         written with another max parallelism or other key columns?)",
                        self.keys.key_group(id)
                    )));
                }
                ids.push(id);
            }
            if name == TIMERS {
                let times = batch
                    .column_by_name("__time")
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| mismatch("the timers' snapshot has no __time column"))?;
                let domains = batch
                    .column_by_name("__domain")
                    .and_then(|c| c.as_primitive_opt::<UInt8Type>())
                    .ok_or_else(|| mismatch("the timers' snapshot has no __domain column"))?;
                for (i, &id) in ids.iter().enumerate() {
                    let domain = TimeDomain::from_code(domains.value(i))
                        .ok_or_else(|| mismatch("a timer of an unknown time domain"))?;
                    self.timers.register(domain, id, times.value(i));
                }
                continue;
            }
            if name == TTL {
                let times = batch
                    .column_by_name("__touched")
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| mismatch("the TTL snapshot has no __touched column"))?;
                for (i, &id) in ids.iter().enumerate() {
                    self.ttl.touch(id, times.value(i));
                }
                continue;
            }
            let Some(index) = self.names.iter().position(|n| n == name) else {
                return Err(mismatch(format!(
                    "the checkpoint holds state '{name}', which this operator does not declare \
                     (declared: {})",
                    self.names.join(", ")
                )));
            };
            match &mut self.states[index] {
                Named::Value(v) => {
                    let values = project(&batch, v.schema(), 1, name)?;
                    v.put(&ids, values)?;
                }
                Named::List(l) => {
                    let rows = project(&batch, l.schema(), 1, name)?;
                    l.add(&ids, rows)?;
                }
                Named::Map(m) => {
                    let mk = binary_column(&batch, MAP_KEY_COLUMN, name)?;
                    let mk: Vec<&[u8]> = (0..mk.len()).map(|i| mk.value(i)).collect();
                    let values = project(&batch, m.schema(), 2, name)?;
                    m.put_raw(&ids, &mk, values)?;
                }
            }
        }
        Ok(())
    }
}

fn mismatch(why: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "checkpoint state does not fit this operator: {}",
            why.into()
        ),
    )
}

fn binary_column<'a>(batch: &'a RecordBatch, col: &str, name: &str) -> Result<&'a BinaryArray> {
    batch
        .column_by_name(col)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| mismatch(format!("state '{name}' has no binary column {col}")))
}

/// `batch` without its first `skip` columns, under `schema` (checked).
fn project(
    batch: &RecordBatch,
    schema: &SchemaRef,
    skip: usize,
    name: &str,
) -> Result<RecordBatch> {
    let cols = batch.columns()[skip.min(batch.num_columns())..].to_vec();
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| {
        mismatch(format!(
            "state '{name}' in the checkpoint does not have the columns {schema}"
        ))
        .with_source(e)
    })
}

/// `batch` with `leading` columns before its own.
pub(crate) fn with_leading(
    leading: Vec<(&str, ArrayRef)>,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = leading
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
        .collect();
    fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
    let mut cols: Vec<ArrayRef> = leading.into_iter().map(|(_, a)| a).collect();
    cols.extend(batch.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::internal("cannot build a state snapshot part").with_source(e))
}
