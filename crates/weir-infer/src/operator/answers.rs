//! Answers: replies are polled (without waiting, or until one comes or the batch deadline
//! passes), each is handled once — its rows get their results, its batch is retried row by row
//! after a failure, a row that fails alone is a bad row, and an error that is not the rows' fault
//! (a broken pool: no instance can load the model) fails the job — and finished input batches
//! are emitted, in input order unless `ordered: false`.

use super::InferOperator;
use super::call::Reply;
use super::rows::FormedBatch;
use super::{Done, Entry};
use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;
use weir_runtime::{Emitter, OperatorContext};
use weir_types::{Error, ErrorKind, Result};

impl InferOperator {
    // Entries are held in increasing sequence order; unordered emission removes them from the
    // middle, so they are found by binary search.
    pub(super) fn entry(&self, seq: u64) -> Result<&Entry> {
        self.entries
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|(_, e)| e)
            .ok_or_else(|| Error::internal(format!("input batch {seq} is no longer held")))
    }

    fn entry_mut(&mut self, seq: u64) -> Result<&mut Entry> {
        self.entries
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .map(|(_, e)| e)
            .ok_or_else(|| Error::internal(format!("input batch {seq} is no longer held")))
    }

    /// The position of the next input batch that may be emitted: the front one when it is
    /// complete, or (unordered) any complete one.
    pub(super) fn next_emittable(&self) -> Option<usize> {
        if self.spec.ordered {
            return self
                .entries
                .front()
                .is_some_and(|(_, e)| e.waiting == 0)
                .then_some(0);
        }
        self.entries.iter().position(|(_, e)| e.waiting == 0)
    }

    /// Polls every request's reply; takes the first that is ready.
    fn poll_reply(&mut self, cx: &mut std::task::Context<'_>) -> Poll<(u64, Result<Reply>)> {
        let mut ready = None;
        for (id, r) in self.state.requests.iter_mut() {
            if let Poll::Ready(res) = r.reply.as_mut().poll(cx) {
                ready = Some((*id, res));
                break;
            }
        }
        match ready {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Takes every reply that is already there, without waiting.
    pub(super) fn drain_ready(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        while let Poll::Ready((id, res)) = self.poll_reply(&mut cx) {
            self.complete(id, res, ctx)?;
        }
        Ok(())
    }

    /// Handles the answer to request `id`.
    fn complete(&mut self, id: u64, res: Result<Reply>, ctx: &mut OperatorContext) -> Result<()> {
        let Some(req) = self.state.requests.remove(&id) else {
            return Ok(());
        };
        let rows = req.batch.rows.len();
        match res {
            Ok(reply) => {
                // From the call to the answer: the wait in the pool's queue and on the instance
                // is part of what the adaptive batch size keeps under the latency budget.
                let latency = self.clock.now().saturating_duration_since(req.sent);
                self.controller.observe(rows, reply.run, latency);
                ctx.metrics().record_batch(rows, latency);
                ctx.metrics().add_model_busy(reply.run);
                self.counters
                    .model_rows
                    .fetch_add(rows as u64, Ordering::Relaxed);
                self.counters
                    .largest_batch
                    .fetch_max(rows as u64, Ordering::Relaxed);
                if self.log.is_some() {
                    let mut keys = Vec::with_capacity(rows);
                    for r in &req.batch.rows {
                        let e = self.entry(r.input)?;
                        let key = e
                            .keys
                            .get(r.row as usize)
                            .copied()
                            .ok_or_else(|| Error::internal("a logged row has no identity"))?;
                        keys.push(key);
                    }
                    let again = keys.iter().filter(|k| self.loaded.contains(**k)).count();
                    self.counters
                        .reinferred_rows
                        .fetch_add(again as u64, Ordering::Relaxed);
                    if let Some(log) = self.log.as_mut() {
                        log.append(keys, &reply.outputs, ctx)?;
                    }
                }
                for (k, r) in req.batch.rows.iter().enumerate() {
                    let e = self.entry_mut(r.input)?;
                    e.results[r.row as usize] = Some((id, k as u32));
                    e.waiting -= 1;
                }
                self.done.insert(
                    id,
                    Done {
                        outputs: reply.outputs,
                        uses: rows,
                    },
                );
            }
            // Not the rows' fault: the pool is broken (no instance could load the model), or a
            // bug. The job fails with the reason instead of turning every row into a bad row.
            Err(e) if matches!(e.kind(), ErrorKind::Config | ErrorKind::Internal) => {
                return Err(Error::new(
                    e.kind(),
                    format!("infer ({}): {}", self.model, e.message()),
                ));
            }
            Err(e) if rows > 1 && !req.batch.isolate => {
                tracing::warn!(
                    model = %self.model,
                    rows,
                    error = %e.report(),
                    "batch failed, retrying its rows one by one"
                );
                for r in req.batch.rows.iter().rev() {
                    self.state.formed.push_front(FormedBatch {
                        rows: vec![*r],
                        isolate: true,
                    });
                }
            }
            Err(e) => {
                let column = self
                    .plan
                    .inputs
                    .iter()
                    .map(|b| b.column.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                for r in &req.batch.rows {
                    {
                        let entry = self.entry_mut(r.input)?;
                        entry.bad[r.row as usize] = true;
                        entry.waiting -= 1;
                    }
                    let err = Error::input(format!(
                        "model {} failed on this row: {}",
                        self.model,
                        e.message()
                    ));
                    ctx.bad_row(
                        err,
                        Some(column.clone()),
                        Some(format!("row {}", r.row)),
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Emits every finished input batch at the front, in input order.
    pub(super) fn emit_ready(&mut self, out: &mut Emitter) -> Result<()> {
        while let Some(pos) = self.next_emittable() {
            let Some((_, e)) = self.entries.remove(pos) else {
                break;
            };
            let keep: Vec<usize> = (0..e.batch.num_rows()).filter(|r| !e.bad[*r]).collect();
            let mut order: Vec<u64> = Vec::new();
            let mut indices = Vec::with_capacity(keep.len());
            for r in &keep {
                let Some((req, k)) = e.results[*r] else {
                    return Err(Error::internal("a row has neither a result nor an error"));
                };
                let pos = match order.iter().position(|q| *q == req) {
                    Some(p) => p,
                    None => {
                        order.push(req);
                        order.len() - 1
                    }
                };
                indices.push((pos, k as usize));
            }
            let mut columns: Vec<ArrayRef> = if keep.len() == e.batch.num_rows() {
                e.batch.columns().to_vec()
            } else {
                let mask = BooleanArray::from(e.bad.iter().map(|b| !b).collect::<Vec<_>>());
                e.batch
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::filter(c, &mask))
                    .collect::<std::result::Result<_, _>>()?
            };
            for (j, o) in self.plan.outputs.iter().enumerate() {
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
                if arrays.is_empty() {
                    columns.push(arrow::array::new_empty_array(o.field.data_type()));
                } else {
                    columns.push(arrow::compute::interleave(&arrays, &indices)?);
                }
            }
            for (pos, _) in &indices {
                let q = order[*pos];
                if let Some(d) = self.done.get_mut(&q) {
                    d.uses -= 1;
                    if d.uses == 0 {
                        self.done.remove(&q);
                    }
                }
            }
            let batch = RecordBatch::try_new(self.plan.schema.clone(), columns)?;
            out.emit(batch);
        }
        Ok(())
    }

    /// When the time trigger fires for the queued rows, if a request could be sent.
    fn deadline(&self) -> Option<Instant> {
        if !self.state.formed.is_empty() || !self.has_room() {
            return None;
        }
        self.state
            .queue
            .front()
            .map(|r| r.at + self.spec.batch.max_wait)
    }

    /// Waits for one reply or the batch deadline, then handles what came. Cancel-safe: a reply
    /// is taken from its future and handled in the same poll, with no await in between.
    pub(super) async fn wait_one(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let deadline = self.deadline();
        let res = {
            let context: &OperatorContext = ctx;
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_reply(cx) {
                    return Poll::Ready(Ok(Some(r)));
                }
                // A results log segment written: the next one starts.
                match self.log.as_mut().map(|l| l.poll(cx, context)) {
                    Some(Poll::Ready(r)) => Poll::Ready(r.map(|()| None)),
                    _ => Poll::Pending,
                }
            });
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = woken => r?,
                _ = sleep => None,
            }
        };
        if let Some((id, r)) = res {
            self.complete(id, r, ctx)?;
        }
        Ok(())
    }
}
