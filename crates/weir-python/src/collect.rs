//! `sink: collect`: the batches of a job delivered to the Python caller (`.collect()`,
//! `.iter_batches()`, `.show()`), through a bounded channel, so a caller that reads slowly holds
//! the job back like any slow sink.
//!
//! The channel is a job resource (named by the spec's `channel`), provided when the job starts
//! from Python; a spec naming a channel the job does not have fails when the job starts.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weir_runtime::kind::{self, CreateContext, PlanContext};
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// The resource holding the channel of a `collect` sink, by the sink's `channel` name.
#[derive(Debug, Clone)]
pub struct CollectChannel(pub mpsc::Sender<RecordBatch>);

fn default_channel() -> String {
    "collect".into()
}

/// Options of `sink: collect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSinkSpec {
    /// The name of the channel (a job resource) the batches go to. Default `collect`.
    #[serde(default = "default_channel")]
    pub channel: String,
}

impl kind::Spec for CollectSinkSpec {
    fn describe(&self) -> String {
        "collect sink (batches to the Python caller)".into()
    }

    fn single_instance(&self) -> bool {
        true
    }
}

impl kind::SinkSpec for CollectSinkSpec {
    fn check_inputs(&self, _inputs: &[SchemaRef], _ctx: &PlanContext<'_>) -> Result<()> {
        Ok(())
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        let channel = ctx
            .resources()
            .get::<CollectChannel>(&self.channel)
            .ok_or_else(|| {
                Error::config(format!(
                    "sink: collect: no channel '{}' in this job (a collect sink runs only in a job started from Python)",
                    self.channel
                ))
            })?;
        Ok(Box::new(CollectSink {
            tx: channel.0.clone(),
            schema: ctx.input()?.clone(),
        }))
    }
}

struct CollectSink {
    tx: mpsc::Sender<RecordBatch>,
    /// The planned input schema, whose field metadata carries weir's extension types.
    schema: SchemaRef,
}

#[async_trait]
impl Operator for CollectSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Labelled with the planned schema (extension types in the field metadata), which
        // operators need not carry on every batch.
        let batch = if batch.schema_ref() == &self.schema {
            batch
        } else {
            RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()).unwrap_or(batch)
        };
        // A caller that went away (stopped reading) drops the receiver: the rows have nowhere
        // to go, and the job is being stopped by the caller.
        let _ = self.tx.send(batch).await;
        Ok(())
    }
}
