//! `limit`: emits only the first `n` rows it sees and drops the rest. The planner runs it at
//! parallelism 1; it does not stop its sources.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::Result;

/// Options of a `limit` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The number of rows to let through. Required, no default; `0` lets nothing through.
    pub n: u64,
}

impl LimitSpec {
    /// Plan time: returns the output schema (the input schema: a limit only drops rows).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(input.clone())
    }

    /// Builds one running instance (the planner makes one: it runs at parallelism 1).
    pub fn create(&self, _input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Limit { remaining: self.n }))
    }

    /// One line for `weir validate`, e.g. `limit 10`.
    pub fn describe(&self) -> String {
        format!("limit {}", self.n)
    }
}

impl kind::Spec for LimitSpec {
    fn describe(&self) -> String {
        LimitSpec::describe(self)
    }

    /// A limit counts every row of the job in one place.
    fn single_instance(&self) -> bool {
        true
    }
}

impl kind::OperatorSpec for LimitSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        LimitSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn input_need(&self, _inputs: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.clone()])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        LimitSpec::create(self, ctx.input()?)
    }
}

/// A running `limit`.
#[derive(Debug)]
pub struct Limit {
    remaining: u64,
}

#[async_trait]
impl Operator for Limit {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if self.remaining == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        if rows <= self.remaining {
            self.remaining -= rows;
            out.emit(batch);
        } else {
            // `remaining < rows`, so it fits in usize.
            let take = usize::try_from(self.remaining).unwrap_or(batch.num_rows());
            self.remaining = 0;
            out.emit(batch.slice(0, take));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{batch, run};
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;
    use weir_runtime::ErrorPolicy;

    #[tokio::test]
    async fn limits_across_batches() {
        let b = |v: Vec<i64>| batch(&[("x", Arc::new(Int64Array::from(v)) as ArrayRef)]);
        let cases: &[(u64, Vec<Vec<i64>>)] = &[
            (0, vec![]),
            (2, vec![vec![1, 2]]),
            (3, vec![vec![1, 2, 3]]),
            (5, vec![vec![1, 2, 3], vec![4, 5]]),
            (100, vec![vec![1, 2, 3], vec![4, 5], vec![6]]),
        ];
        for (n, expected) in cases {
            let spec = LimitSpec { n: *n };
            let input = vec![b(vec![1, 2, 3]), b(vec![4, 5]), b(vec![6])];
            let mut op = spec.create(&input[0].schema()).expect("create");
            let mut ctx = OperatorContext::for_test("l", ErrorPolicy::Fail);
            let out = run(op.as_mut(), &mut ctx, input).await.expect("run");
            let want: Vec<RecordBatch> = expected.iter().map(|v| b(v.clone())).collect();
            assert_eq!(out, want, "limit {n}");
        }
        assert_eq!(LimitSpec { n: 10 }.describe(), "limit 10");
    }

    #[test]
    fn deserializes() {
        let spec: LimitSpec = serde_json::from_str(r#"{"n": 3}"#).expect("n");
        assert_eq!(spec.n, 3);
        assert!(serde_json::from_str::<LimitSpec>(r#"{"n": 3, "m": 1}"#).is_err());
        assert!(serde_json::from_str::<LimitSpec>(r#"{"n": -1}"#).is_err());
    }
}
