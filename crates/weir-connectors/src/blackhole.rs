//! The blackhole sink: counts rows and drops them, for benchmarks and dry runs.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext, TaskInfo};
use weir_types::Result;

/// Drops every row (the runtime's metrics still count them).
///
/// ```yaml
/// sink: { type: blackhole }
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkSpec {}

impl BlackholeSinkSpec {
    /// One running instance.
    pub fn create(&self, _info: &TaskInfo, _input: SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Blackhole { rows: 0 }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        "blackhole sink (drops all rows)".to_string()
    }
}

impl kind::Spec for BlackholeSinkSpec {
    fn describe(&self) -> String {
        BlackholeSinkSpec::describe(self)
    }
}

impl kind::SinkSpec for BlackholeSinkSpec {
    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        BlackholeSinkSpec::create(self, ctx.info(), ctx.input()?.clone())
    }
}

/// Counts and drops.
struct Blackhole {
    rows: u64,
}

#[async_trait]
impl Operator for Blackhole {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
}
