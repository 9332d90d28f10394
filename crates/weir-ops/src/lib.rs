//! weir's built-in relational operators.
//!
//! Each operator has a *spec* (what it is: the options a YAML pipeline gives, deserialised with
//! serde and unknown keys rejected) and a running [`weir_runtime::Operator`] (what it does). Every
//! spec offers the same three calls, which the planner uses:
//!
//! - `output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>`: checks the spec against the
//!   input schema at plan time and returns the output schema;
//! - `create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>>`: builds one running instance
//!   (called once per parallel subtask);
//! - `describe(&self) -> String`: one line for `weir validate`.
//!
//! [`UnionSpec`] also has `output_schema_union(&self, inputs: &[SchemaRef])` for its several inputs.
//!
//! Each spec also implements [`weir_runtime::kind::OperatorSpec`] (by delegating to those
//! calls), through which the planner's registry knows it.
//!
//! Expressions are SQL, compiled with DataFusion ([`expr`]); rows on which an expression fails go
//! through the job's `on_error` policy, the other rows of the batch go on.

#![warn(missing_docs)]

pub mod expr;
pub mod filter;
pub mod limit;
pub mod rename;
pub mod select;
pub mod throttle;
pub mod union;
pub mod with_column;

pub use expr::{CompiledExpr, compile};
pub use filter::{Filter, FilterSpec};
pub use limit::{Limit, LimitSpec};
pub use rename::RenameSpec;
pub use select::{Select, SelectSpec};
pub use throttle::{Throttle, ThrottleSpec};
pub use union::UnionSpec;
pub use with_column::{WithColumn, WithColumnSpec};

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the unit tests: building batches and running an operator through its hooks.

    use arrow::array::ArrayRef;
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    use weir_runtime::{Emitter, Operator, OperatorContext};

    /// A batch of the named columns (nullable iff the column holds a null).
    pub fn batch(cols: &[(&str, ArrayRef)]) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), a.null_count() > 0))
            .collect();
        let arrays = cols.iter().map(|(_, a)| a.clone()).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("test batch")
    }

    /// Runs `op` through open, process_batch for each of `input`, and finish; returns what it
    /// emitted, or the first error.
    pub async fn run(
        op: &mut dyn Operator,
        ctx: &mut OperatorContext,
        input: Vec<RecordBatch>,
    ) -> weir_types::Result<Vec<RecordBatch>> {
        let mut out = Emitter::default();
        op.open(ctx).await?;
        for b in input {
            op.process_batch(b, ctx, &mut out).await?;
        }
        op.finish(ctx, &mut out).await?;
        Ok(out.take())
    }

    /// Concatenates batches into one (for exact comparisons).
    pub fn concat(schema: &arrow::datatypes::SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(schema, batches).expect("concat")
    }
}
