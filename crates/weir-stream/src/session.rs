//! Session windows: a key's rows less than `gap` apart form one window `[first, last + gap)`.
//!
//! Sessions merge as rows arrive (a row between two sessions joins them), so their aggregates
//! cannot be kept per window from the start; the rows of open sessions are kept per key in a
//! [`weir_state`] list state, each key's sessions beside them, and an event-time timer at each
//! session's end. When the watermark reaches a session's end its rows are aggregated with
//! DataFusion's accumulators (all sessions closing at one watermark in one vectorised pass, one
//! group per session) and dropped. Rows, sessions and timers are keyed state, so they move with
//! their key groups on restore.
//!
//! With a memory budget, once the rows kept pass it they are all written to a local file (an
//! Arrow IPC file of the rows tagged with their key and sorted by the end their session had
//! then) and dropped from memory; rows that arrive later are kept in memory as before (adding a
//! row never reads the disk). A session's end only grows, so its rows are never needed before
//! the watermark reaches the end recorded with them: each watermark reads back, in order, the
//! parts of each file whose recorded ends it has reached (a file is read once, front to back,
//! and deleted when read), ahead of the rows in memory. A checkpoint reads every file back.

use crate::aggregate::{Accumulators, CompiledAggregate};
use crate::late::Clock;
use crate::spill::{Budget, open_ipc, write_ipc};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_checkpoint::StateSnapshot;
use weir_runtime::{Emitter, OperatorContext};
use weir_state::time::{event_millis, millis_as};
use weir_state::{KeyId, ListHandle, StateBackend, TimeDomain};
use weir_types::{Error, KeyGroupRange, Result};

/// One session of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    start: i64,
    end: i64,
    fired: bool,
}

/// The session windows of one `op: aggregate` instance.
pub(crate) struct Sessions {
    gap: i64,
    lateness: i64,
    input: SchemaRef,
    key_idx: Vec<usize>,
    time_idx: usize,
    aggs: Vec<CompiledAggregate>,
    output: SchemaRef,
    bound_type: DataType,
    state: Option<StateBackend>,
    rows: Option<ListHandle>,
    saved: Option<ListHandle>,
    /// Per key id, its sessions by start.
    sessions: Vec<Vec<Session>>,
    ids: Vec<KeyId>,
    budget: Option<Budget>,
    /// Rows of open sessions written to disk under the memory budget, oldest file first.
    spill_files: Vec<SpillFile>,
}

/// One spill file: rows sorted by the session end recorded with them, in IPC batches.
#[derive(Debug)]
struct SpillFile {
    path: tempfile::TempPath,
    /// Per IPC batch: the smallest recorded end in it.
    first_end: Vec<i64>,
    /// The first IPC batch not read back yet.
    next: usize,
}

/// Rows per IPC batch of a session spill file.
const SPILL_BATCH_ROWS: usize = 8192;

fn sessions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
        Field::new("fired", DataType::Boolean, false),
    ]))
}

impl Sessions {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        gap: i64,
        lateness: i64,
        input: &SchemaRef,
        key_idx: &[usize],
        time_idx: Option<usize>,
        aggs: &[CompiledAggregate],
        output: SchemaRef,
        bound_type: DataType,
        budget: Option<Budget>,
    ) -> Result<Self> {
        Ok(Sessions {
            budget,
            spill_files: Vec::new(),
            gap,
            lateness,
            input: input.clone(),
            key_idx: key_idx.to_vec(),
            time_idx: time_idx.ok_or_else(|| Error::internal("session windows without a time"))?,
            aggs: aggs.to_vec(),
            output,
            bound_type,
            state: None,
            rows: None,
            saved: None,
            sessions: Vec::new(),
            ids: Vec::new(),
        })
    }

    pub(crate) fn open(&mut self, max_parallelism: u32, range: KeyGroupRange) -> Result<()> {
        let types = if self.key_idx.is_empty() {
            vec![DataType::Boolean]
        } else {
            self.key_idx
                .iter()
                .map(|&i| self.input.field(i).data_type().clone())
                .collect()
        };
        let mut state = StateBackend::new(types, max_parallelism, range)?;
        self.rows = Some(state.list_state("rows", self.input.clone())?);
        self.saved = Some(state.list_state("sessions", sessions_schema())?);
        self.state = Some(state);
        Ok(())
    }

    fn backend(&mut self) -> Result<(&mut StateBackend, ListHandle)> {
        match (&mut self.state, self.rows) {
            (Some(s), Some(h)) => Ok((s, h)),
            _ => Err(Error::internal("session state used before open")),
        }
    }

    fn keys_of(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        if self.key_idx.is_empty() {
            vec![Arc::new(BooleanArray::from(vec![true; batch.num_rows()]))]
        } else {
            self.key_idx
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect()
        }
    }

    /// Open sessions over all keys.
    pub(crate) fn entries(&self) -> usize {
        self.sessions.iter().map(Vec::len).sum()
    }

    pub(crate) fn size_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, StateBackend::size_bytes)
            + self.sessions.iter().map(|s| s.len() * 24).sum::<usize>()
    }

    /// Over the budget (and with at least a quarter of it in rows, so that keys, sessions and
    /// timers alone over it do not make every batch spill), writes every row kept in memory to
    /// one spill file, sorted by its session's end, and drops them from memory; returns whether
    /// it did (the caller says so once).
    pub(crate) fn enforce_budget(&mut self) -> Result<bool> {
        let Some(budget) = self.budget.clone() else {
            return Ok(false);
        };
        let row_bytes = match (&self.state, self.rows) {
            (Some(s), Some(h)) => s.list(h).size_bytes(),
            _ => 0,
        };
        // The cheap test first: measuring the whole state walks every key.
        if row_bytes < budget.bytes / 4 || self.size_bytes() <= budget.bytes {
            return Ok(false);
        }
        let (state, rows) = self.backend()?;
        let keys: Vec<KeyId> = state.list(rows).keys().collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let (batch, ends) = state.list(rows).get_many(&keys)?;
        let times = event_millis(batch.column(self.time_idx))?;
        // Each row's key, and the end of the session it is in now (a session only grows).
        let mut key_col = Vec::with_capacity(batch.num_rows());
        let mut end_col = Vec::with_capacity(batch.num_rows());
        let mut from = 0;
        for (&id, &to) in keys.iter().zip(&ends) {
            let list = self
                .sessions
                .get(id as usize)
                .map_or(&[][..], Vec::as_slice);
            for row in from..to {
                let t = times.value(row);
                let end = list
                    .iter()
                    .find(|s| s.start <= t && t < s.end)
                    .map_or(i64::MIN, |s| s.end);
                key_col.push(id);
                end_col.push(end);
            }
            from = to;
        }
        let mut fields = vec![
            Field::new("__key", DataType::UInt32, false),
            Field::new("__end", DataType::Int64, false),
        ];
        fields.extend(self.input.fields().iter().map(|f| f.as_ref().clone()));
        let schema = Arc::new(Schema::new(fields));
        let ends_arr = Int64Array::from(end_col);
        let order = arrow::compute::sort_to_indices(&ends_arr, None, None)
            .map_err(|e| Error::internal("cannot sort spilled session rows").with_source(e))?;
        let mut cols: Vec<ArrayRef> =
            vec![Arc::new(UInt32Array::from(key_col)), Arc::new(ends_arr)];
        cols.extend(batch.columns().iter().cloned());
        let tagged = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::internal("cannot tag spilled session rows").with_source(e))?;
        drop(batch);
        let mut first_end = Vec::new();
        let (path, _) = write_ipc(&budget.dir, "weir-spill-", &schema, |w| {
            let mut at = 0;
            while at < tagged.num_rows() {
                let len = SPILL_BATCH_ROWS.min(tagged.num_rows() - at);
                let chunk = take_record_batch(&tagged, &order.slice(at, len))
                    .map_err(|e| Error::internal("take").with_source(e))?;
                first_end.push(chunk.column(1).as_primitive::<Int64Type>().value(0));
                w.write(&chunk)?;
                at += len;
            }
            Ok(())
        })?;
        drop(tagged);
        let (state, rows) = self.backend()?;
        for &id in &keys {
            state.list_mut(rows).clear(id)?;
        }
        self.spill_files.push(SpillFile {
            path,
            first_end,
            next: 0,
        });
        Ok(true)
    }

    /// Reads back the spilled rows whose recorded session end is at most `w` (whole IPC
    /// batches, so a few later ones come along), each key's ahead of its rows in memory, and
    /// deletes the files read to the end.
    fn reload(&mut self, w: i64) -> Result<()> {
        // The batches read back, and per key its rows in them (batch, row), oldest first.
        let mut sources: Vec<RecordBatch> = Vec::new();
        let mut rows_of: BTreeMap<KeyId, Vec<(usize, usize)>> = BTreeMap::new();
        for file in &mut self.spill_files {
            if file.first_end.get(file.next).is_none_or(|e| *e > w) {
                continue;
            }
            let mut reader = open_ipc(&file.path)?;
            while file.first_end.get(file.next).is_some_and(|e| *e <= w) {
                let err = |e: arrow::error::ArrowError| {
                    Error::io(format!(
                        "cannot read the spill file {}",
                        file.path.display()
                    ))
                    .with_source(e)
                };
                reader.set_index(file.next).map_err(err)?;
                let Some(batch) = reader.next().transpose().map_err(err)? else {
                    return Err(Error::io(format!(
                        "the spill file {} ends early",
                        file.path.display()
                    )));
                };
                file.next += 1;
                // Source 0 is kept for the rows in memory.
                let src = sources.len() + 1;
                let keys = batch.column(0).as_primitive::<UInt32Type>();
                for (r, k) in keys.values().iter().enumerate() {
                    rows_of.entry(*k).or_default().push((src, r));
                }
                sources.push(
                    RecordBatch::try_new(self.input.clone(), batch.columns()[2..].to_vec())
                        .map_err(|e| {
                            Error::internal("spilled session rows do not fit the input")
                                .with_source(e)
                        })?,
                );
            }
        }
        self.spill_files.retain(|f| f.next < f.first_end.len());
        if rows_of.is_empty() {
            return Ok(());
        }
        // One batch: each key's rows read back, then its rows in memory; added in one go.
        let keys: Vec<KeyId> = rows_of.keys().copied().collect();
        let (state, rows) = self.backend()?;
        let (in_memory, ends) = state.list(rows).get_many(&keys)?;
        for &id in &keys {
            state.list_mut(rows).clear(id)?;
        }
        let mut order = Vec::new();
        let mut ids = Vec::new();
        let mut from = 0;
        for ((id, spilled), to) in rows_of.into_iter().zip(ends) {
            ids.extend(std::iter::repeat_n(id, spilled.len() + (to - from)));
            order.extend(spilled);
            order.extend((from..to).map(|r| (0, r)));
            from = to;
        }
        sources.insert(0, in_memory);
        let refs: Vec<&RecordBatch> = sources.iter().collect();
        let all = arrow::compute::interleave_record_batch(&refs, &order)
            .map_err(|e| Error::internal("cannot gather session rows").with_source(e))?;
        drop(sources);
        let (state, rows) = self.backend()?;
        state.list_mut(rows).add(&ids, all)
    }

    pub(crate) fn add(
        &mut self,
        batch: RecordBatch,
        clock: &mut Clock,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        let times = event_millis(batch.column(self.time_idx))?;
        if times.null_count() > 0 {
            let name = self.input.field(self.time_idx).name().clone();
            Clock::null_times(ctx, &batch, &times, &name)?;
        }
        let keys = self.keys_of(&batch);
        let mut ids = std::mem::take(&mut self.ids);
        self.backend()?.0.intern(&keys, &mut ids)?;
        let wm = clock.watermark();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut timers = Vec::new();
        for (row, &id) in ids.iter().enumerate() {
            if times.is_null(row) {
                keep.push(false);
                continue;
            }
            let t = times.value(row);
            let i = id as usize;
            if i >= self.sessions.len() {
                self.sessions.resize_with(i + 1, Vec::new);
            }
            let list = &mut self.sessions[i];
            // The row's window, merged with every session it touches.
            let (mut start, mut end) = (t, t.saturating_add(self.gap));
            let mut fired = false;
            for s in list.iter() {
                if s.start <= end && s.end >= start {
                    start = start.min(s.start);
                    end = end.max(s.end);
                    fired |= s.fired;
                }
            }
            if end.saturating_add(self.lateness) <= wm {
                keep.push(false);
                clock.late_row(
                    ctx,
                    &batch,
                    row,
                    t,
                    "is behind the end of its session plus the allowed lateness",
                )?;
                continue;
            }
            keep.push(true);
            list.retain(|s| !(s.start <= end && s.end >= start));
            // A session that was emitted and got a row within its lateness is emitted again.
            let refire = fired && end <= wm;
            let pos = list.partition_point(|s| s.start < start);
            list.insert(
                pos,
                Session {
                    start,
                    end,
                    fired: fired && !refire,
                },
            );
            timers.push((id, if refire { wm } else { end }));
        }
        let (state, rows) = self.backend()?;
        for (id, t) in timers {
            state.timers_mut().register(TimeDomain::EventTime, id, t);
        }
        let all_kept = keep.iter().all(|k| *k);
        if all_kept {
            state.list_mut(rows).add(&ids, batch)?;
        } else {
            let mask = BooleanArray::from(keep.clone());
            let kept = arrow::compute::filter_record_batch(&batch, &mask)
                .map_err(|e| Error::internal("filter").with_source(e))?;
            let kept_ids: Vec<KeyId> = ids
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(id, _)| *id)
                .collect();
            state.list_mut(rows).add(&kept_ids, kept)?;
        }
        self.ids = ids;
        Ok(())
    }

    /// Emits every session whose end the watermark `w` reached.
    pub(crate) fn fire(&mut self, w: i64, out: &mut Emitter) -> Result<()> {
        // Rows of sessions that may close now, from disk (before the timers: they do not
        // depend on it).
        self.reload(w)?;
        let fired = self.backend()?.0.timers_mut().advance_watermark(w);
        if fired.is_empty() {
            return Ok(());
        }
        // The keys with a session to close (a key's timer may be stale: its session grew).
        let mut keys: Vec<KeyId> = fired.iter().map(|f| f.key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut closing: Vec<(KeyId, Session)> = Vec::new();
        for &id in &keys {
            if let Some(list) = self.sessions.get(id as usize) {
                for s in list {
                    if s.end <= w && !s.fired {
                        closing.push((id, *s));
                    }
                }
            }
        }
        if closing.is_empty() {
            return Ok(());
        }
        let lateness = self.lateness;
        let (rows_batch, ends) = {
            let (state, rows) = self.backend()?;
            state.list(rows).get_many(&keys)?
        };
        let times = event_millis(rows_batch.column(self.time_idx))?;
        // Each row of a closing session gets that session's group id.
        let mut take = Vec::new();
        let mut groups = Vec::new();
        let mut start_row = 0;
        let mut c = 0;
        for (k, &id) in keys.iter().enumerate() {
            let end_row = ends[k];
            let first = c;
            while c < closing.len() && closing[c].0 == id {
                c += 1;
            }
            for row in start_row..end_row {
                let t = times.value(row);
                if let Some(g) =
                    (first..c).find(|&g| closing[g].1.start <= t && t < closing[g].1.end)
                {
                    take.push(row as u32);
                    groups.push(g);
                }
            }
            start_row = end_row;
        }
        let rows = take_record_batch(&rows_batch, &UInt32Array::from(take))
            .map_err(|e| Error::internal("take").with_source(e))?;
        let mut accs = Accumulators::new(&self.aggs)?;
        let inputs = self
            .aggs
            .iter()
            .map(|a| a.evaluate(&rows))
            .collect::<Result<Vec<_>>>()?;
        accs.update(&inputs, &groups, closing.len())?;
        let values = accs.evaluate()?;
        let session_keys: Vec<KeyId> = closing.iter().map(|(id, _)| *id).collect();
        let starts = Int64Array::from_iter_values(closing.iter().map(|(_, s)| s.start));
        let ends_col = Int64Array::from_iter_values(closing.iter().map(|(_, s)| s.end));
        let mut cols = vec![
            millis_as(starts, &self.bound_type)?,
            millis_as(ends_col, &self.bound_type)?,
        ];
        if !self.key_idx.is_empty() {
            let (state, _) = self.backend()?;
            cols.extend(state.keys().key_arrays(&session_keys)?);
        }
        cols.extend(values);
        out.emit(
            RecordBatch::try_new(self.output.clone(), cols)
                .map_err(|e| Error::internal("cannot build session results").with_source(e))?,
        );
        // Sessions past their lateness go with their rows; the others are marked emitted.
        for &id in &keys {
            let Some(list) = self.sessions.get_mut(id as usize) else {
                continue;
            };
            let mut gone = Vec::new();
            for s in list.iter_mut() {
                if s.end <= w {
                    s.fired = true;
                    if s.end.saturating_add(lateness) <= w {
                        gone.push(*s);
                    } else {
                        let t = s.end.saturating_add(lateness);
                        if let Some(st) = &mut self.state {
                            st.timers_mut().register(TimeDomain::EventTime, id, t);
                        }
                    }
                }
            }
            list.retain(|s| !gone.contains(s));
            if gone.is_empty() {
                continue;
            }
            let (state, rows) = match (&mut self.state, self.rows) {
                (Some(s), Some(h)) => (s, h),
                _ => return Err(Error::internal("session state used before open")),
            };
            let batch = state.list(rows).get(id)?;
            let t = event_millis(batch.column(self.time_idx))?;
            state.list_mut(rows).retain(id, |i| {
                let v = t.value(i);
                !gone.iter().any(|s| s.start <= v && v < s.end)
            })?;
        }
        Ok(())
    }

    pub(crate) fn snapshot(&mut self, snap: &mut StateSnapshot) -> Result<()> {
        // Spilled rows are read back: a checkpoint holds the step's rows in memory while it is
        // written.
        self.reload(i64::MAX)?;
        let saved = self
            .saved
            .ok_or_else(|| Error::internal("sessions before open"))?;
        let Some(state) = &mut self.state else {
            return Err(Error::internal("sessions before open"));
        };
        let keys: Vec<KeyId> = state.list(saved).keys().collect();
        for id in keys {
            state.list_mut(saved).clear(id)?;
        }
        let mut ids = Vec::new();
        let (mut starts, mut ends, mut fired) = (Vec::new(), Vec::new(), Vec::new());
        for (id, list) in self.sessions.iter().enumerate() {
            for s in list {
                ids.push(id as KeyId);
                starts.push(s.start);
                ends.push(s.end);
                fired.push(s.fired);
            }
        }
        let batch = RecordBatch::try_new(
            sessions_schema(),
            vec![
                Arc::new(Int64Array::from(starts)),
                Arc::new(Int64Array::from(ends)),
                Arc::new(BooleanArray::from(fired)),
            ],
        )
        .map_err(|e| Error::internal("cannot save sessions").with_source(e))?;
        state.list_mut(saved).add(&ids, batch)?;
        let keyed = state.snapshot()?;
        snap.entries.extend(keyed.entries);
        Ok(())
    }

    pub(crate) fn restore(&mut self, snap: &StateSnapshot) -> Result<()> {
        let saved = self
            .saved
            .ok_or_else(|| Error::internal("sessions before open"))?;
        let Some(state) = &mut self.state else {
            return Err(Error::internal("sessions before open"));
        };
        state.restore(snap)?;
        let keys: Vec<KeyId> = state.list(saved).keys().collect();
        for id in keys {
            let b = state.list(saved).get(id)?;
            let starts = b.column(0).as_primitive::<Int64Type>();
            let ends = b.column(1).as_primitive::<Int64Type>();
            let fired = b.column(2).as_boolean();
            let i = id as usize;
            if i >= self.sessions.len() {
                self.sessions.resize_with(i + 1, Vec::new);
            }
            for r in 0..b.num_rows() {
                self.sessions[i].push(Session {
                    start: starts.value(r),
                    end: ends.value(r),
                    fired: fired.value(r),
                });
            }
            self.sessions[i].sort_by_key(|s| s.start);
            state.list_mut(saved).clear(id)?;
        }
        Ok(())
    }
}
