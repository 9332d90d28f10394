//! The operator in checkpoints: at a barrier it stores every row admitted and not yet emitted
//! (as Arrow IPC, one union entry per subtask) with the results already computed for them, and
//! seals an epoch of the results log; on restore it loads the results log, takes its share of
//! the stored rows and admits them again (their requests are re-issued, or answered from the log).

use super::InferOperator;
use crate::results_log::{LogWriter, ipc, log_schema, model_identity};
use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;
use weir_runtime::{OperatorContext, StateSnapshot};
use weir_types::{Barrier, Error, Result};

/// The keys of the operator's union state entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum StateKey {
    /// The rows subtask `subtask` held at a checkpoint (admitted, not yet emitted), as Arrow IPC.
    InFlight { subtask: u32 },
    /// The results already computed for those rows, as Arrow IPC of the results log's schema.
    Computed { subtask: u32 },
}

impl InferOperator {
    /// Opens the results log (when on), loading it on restore, and re-admits the rows that were in
    /// flight at the restored checkpoint.
    pub(super) async fn restore(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let store = match (self.spec.results_log, ctx.log_store()) {
            (Some(false), _) | (None, None) => None,
            (_, Some(store)) => Some(store.clone()),
            (Some(true), None) => {
                return Err(Error::config(
                    "'results_log: true' needs the job to take checkpoints (the log is kept in the checkpoint store)",
                ));
            }
        };
        let restored_from = ctx.restored_from();
        let mut mine: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut computed: Vec<Vec<u8>> = Vec::new();
        if let Some(state) = ctx.restored_state() {
            let (me, par) = (ctx.info().subtask, ctx.info().parallelism.max(1));
            for entry in state.unions::<StateKey>() {
                match entry? {
                    (StateKey::InFlight { subtask }, bytes) if subtask % par == me => {
                        mine.push((subtask, bytes.to_vec()))
                    }
                    (StateKey::Computed { .. }, bytes) => computed.push(bytes.to_vec()),
                    (StateKey::InFlight { .. }, _) => {}
                }
            }
        }
        if let Some(store) = store {
            let outputs: Vec<(String, String)> = self
                .plan
                .outputs
                .iter()
                .map(|o| (o.output.clone(), o.column.clone()))
                .collect();
            let fields: Vec<arrow::datatypes::Field> = self
                .plan
                .outputs
                .iter()
                .map(|o| o.field.as_ref().clone())
                .collect();
            let schema = log_schema(&fields);
            let path = self.plan.info.path.clone();
            let model_id = ctx
                .spawn_cpu(move || model_identity(&path, &outputs))
                .await??;
            if let Some(from) = restored_from {
                let mut loaded =
                    crate::results_log::load(&store, &schema, model_id, from, ctx).await?;
                for bytes in &computed {
                    loaded.add_stream(bytes, &schema, model_id, "the checkpoint's state");
                }
                tracing::info!(
                    model = %self.model,
                    node = ctx.name(),
                    checkpoint = from,
                    results = loaded.len(),
                    "loaded the inference results log"
                );
                self.loaded = loaded;
            }
            self.log = Some(LogWriter::new(
                store,
                schema.clone(),
                model_id,
                ctx.info().subtask,
                restored_from.unwrap_or(0),
            ));
            self.log_schema = Some(schema);
        }
        mine.sort_by_key(|(old, _)| *old);
        let mut batches = Vec::new();
        for (_, bytes) in mine {
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
            for b in reader {
                batches.push(b?);
            }
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > 0 {
            tracing::info!(model = %self.model, rows, "re-issuing inference requests in flight at the restored checkpoint");
        }
        for b in batches {
            self.admit(b, ctx)?;
        }
        Ok(())
    }

    /// The rows admitted and not yet emitted, per held input batch in output order (bad rows,
    /// already reported, left out), as one Arrow IPC stream.
    fn encode_in_flight(&self) -> Result<Option<Vec<u8>>> {
        let mut held = Vec::new();
        for (_, e) in &self.entries {
            let batch = if e.bad.iter().any(|b| *b) {
                let mask = BooleanArray::from(e.bad.iter().map(|b| !b).collect::<Vec<_>>());
                arrow::compute::filter_record_batch(&e.batch, &mask)?
            } else {
                e.batch.clone()
            };
            if batch.num_rows() > 0 {
                held.push(batch);
            }
        }
        let Some(first) = held.first() else {
            return Ok(None);
        };
        let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema())?;
        for b in &held {
            w.write(b)?;
        }
        Ok(Some(w.into_inner()?))
    }

    /// Rows computed but not yet emitted: their identities and outputs (kept with the checkpoint).
    fn computed_not_emitted(&self) -> Result<(Vec<u64>, Vec<ArrayRef>)> {
        let mut keys = Vec::new();
        let mut order: Vec<u64> = Vec::new();
        let mut indices = Vec::new();
        for (_, e) in &self.entries {
            for (r, res) in e.results.iter().enumerate() {
                let (Some((req, k)), Some(key)) = (res, e.keys.get(r)) else {
                    continue;
                };
                let pos = match order.iter().position(|q| q == req) {
                    Some(p) => p,
                    None => {
                        order.push(*req);
                        order.len() - 1
                    }
                };
                indices.push((pos, *k as usize));
                keys.push(*key);
            }
        }
        let mut outputs = Vec::new();
        if keys.is_empty() {
            return Ok((keys, outputs));
        }
        for j in 0..self.plan.outputs.len() {
            let arrays: Vec<&dyn Array> = order
                .iter()
                .map(|q| {
                    self.done
                        .get(q)
                        .and_then(|d| d.outputs.get(j))
                        .map(|a| a.as_ref())
                        .ok_or_else(|| Error::internal("a finished request's outputs are gone"))
                })
                .collect::<Result<_>>()?;
            outputs.push(arrow::compute::interleave(&arrays, &indices)?);
        }
        Ok((keys, outputs))
    }

    /// The snapshot at `barrier`: every row admitted and not yet emitted (queued, batched,
    /// dispatched or answered but waiting for an earlier row), without waiting for them, with
    /// the results already computed for them; starts a new epoch of the results log.
    pub(super) fn take_snapshot(
        &mut self,
        barrier: &Barrier,
        ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut state = StateSnapshot::new();
        let subtask = ctx.info().subtask;
        if let Some(bytes) = self.encode_in_flight()? {
            state.push_union(&StateKey::InFlight { subtask }, bytes)?;
        }
        if let (Some(log), Some(schema)) = (&self.log, &self.log_schema) {
            let (keys, outputs) = self.computed_not_emitted()?;
            if !keys.is_empty() {
                let n = keys.len();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(arrow::array::UInt64Array::from(keys)),
                    Arc::new(arrow::array::UInt64Array::from(vec![log.model(); n])),
                ];
                columns.extend(outputs);
                let batch = RecordBatch::try_new(schema.clone(), columns)?;
                state.push_union(&StateKey::Computed { subtask }, ipc(schema, &[batch])?)?;
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.seal(barrier.checkpoint_id, ctx)?;
        }
        Ok(state)
    }
}
