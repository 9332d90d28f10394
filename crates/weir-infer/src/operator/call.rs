//! Calling the model: a formed batch's rows are gathered into model inputs, sent as one call to
//! the operator's [`ModelService`] (its own pool, or a declared service), and the answer is
//! scattered back into the bound output columns ([`Reply`]).

use super::InferOperator;
use super::rows::Request;
use crate::backend::HostTensor;
use crate::service::{CallOptions, ModelService};
use crate::tensor::{InputBinding, OutputBinding};
use arrow::array::ArrayRef;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_types::{Error, Result};

/// What a call answers: one column per bound output, and how long the model ran.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) outputs: Vec<ArrayRef>,
    pub(super) run: Duration,
}

/// What gathering and scattering need besides the rows.
#[derive(Debug)]
pub(super) struct Bindings {
    pub(super) inputs: Vec<InputBinding>,
    pub(super) outputs: Vec<OutputBinding>,
    pub(super) model: String,
}

/// A batch's model inputs, gathered from its rows: (inputs, rows, ragged lengths per symbol).
type Gathered = (Vec<(String, HostTensor)>, usize, Vec<(String, Vec<usize>)>);

/// Stacks the rows of `job_inputs` (per model input: (column, row)) into model inputs.
fn gather(b: &Bindings, job_inputs: &[Vec<(ArrayRef, usize)>]) -> Result<Gathered> {
    let rows = job_inputs.first().map(|r| r.len()).unwrap_or(0);
    let mut inputs = Vec::with_capacity(b.inputs.len());
    let mut lengths: Vec<(String, Vec<usize>)> = Vec::new();
    for (binding, rows) in b.inputs.iter().zip(job_inputs) {
        if let (true, Some(sym)) = (binding.ragged(), &binding.symbol)
            && !lengths.iter().any(|(s, _)| s == sym)
        {
            let inner: usize = binding
                .row_shape
                .iter()
                .skip(1)
                .map(|d| d.unwrap_or(1))
                .product::<usize>()
                .max(1);
            let mut v = Vec::with_capacity(rows.len());
            for (col, r) in rows {
                let (values, _) = crate::tensor::row_values(col, *r)?;
                v.push(values.len() / inner);
            }
            lengths.push((sym.clone(), v));
        }
        inputs.push((binding.input.clone(), binding.gather(rows)?));
    }
    Ok((inputs, rows, lengths))
}

/// Turns model outputs into the bound output columns.
fn scatter(
    b: &Bindings,
    out: Vec<(String, HostTensor)>,
    rows: usize,
    lengths: &[(String, Vec<usize>)],
    run: Duration,
) -> Result<Reply> {
    let mut out: HashMap<String, HostTensor> = out.into_iter().collect();
    let mut outputs = Vec::with_capacity(b.outputs.len());
    for o in &b.outputs {
        let t = out.remove(&o.output).ok_or_else(|| {
            Error::external(format!(
                "model {} returned no output '{}'",
                b.model, o.output
            ))
        })?;
        outputs.push(o.scatter(&t, rows, lengths, &b.model)?);
    }
    Ok(Reply { outputs, run })
}

/// One call: gathers the rows into model inputs now (on the caller's thread), sends them to the
/// service (a pool queues or dispatches them at once), and turns the answer into output columns
/// when it comes. A gathering error is the future's answer.
fn call(
    service: &dyn ModelService,
    bindings: Arc<Bindings>,
    job_inputs: Vec<Vec<(ArrayRef, usize)>>,
    options: &CallOptions,
) -> BoxFuture<'static, Result<Reply>> {
    let (inputs, rows, lengths) = match gather(&bindings, &job_inputs) {
        Ok(g) => g,
        Err(e) => return Box::pin(std::future::ready(Err(e))),
    };
    drop(job_inputs);
    let answer = service.call_timed(inputs, options);
    Box::pin(async move {
        let (out, run) = answer.await?;
        scatter(&bindings, out, rows, &lengths, run)
    })
}

impl InferOperator {
    /// Whether another request may be sent: the service is attached and fewer than the lane's
    /// width are in flight.
    pub(super) fn has_room(&self) -> bool {
        self.attached && self.state.requests.len() < self.lane
    }

    /// Sends formed batches (forming new ones as needed) while there is room.
    pub(super) fn pump(&mut self) -> Result<()> {
        while self.has_room() {
            if self.state.formed.is_empty() && !self.form() {
                break;
            }
            let Some(batch) = self.state.formed.pop_front() else {
                break;
            };
            let mut inputs = Vec::with_capacity(self.plan.inputs.len());
            for b in &self.plan.inputs {
                let mut rows = Vec::with_capacity(batch.rows.len());
                for r in &batch.rows {
                    let entry = self.entry(r.input)?;
                    rows.push((entry.batch.column(b.index).clone(), r.row as usize));
                }
                inputs.push(rows);
            }
            let id = self.state.next_id();
            let reply = call(
                self.service.as_ref(),
                self.bindings.clone(),
                inputs,
                &self.spec.call_options(),
            );
            self.state.requests.insert(
                id,
                Request {
                    id,
                    batch,
                    sent: self.clock.now(),
                    reply,
                },
            );
        }
        Ok(())
    }
}
