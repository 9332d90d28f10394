//! `throttle`: passes rows on at no more than a given rate, for calling rate-limited services and
//! for replaying recorded data at its original pace.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::time::{Duration, Instant};
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// Options of a `throttle` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Rows per second each instance lets through (the job's rate is this times the parallelism).
    /// Required; must be > 0.
    pub rows_per_second: f64,
}

impl ThrottleSpec {
    /// Plan time: the schema is unchanged.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if !(self.rows_per_second > 0.0 && self.rows_per_second.is_finite()) {
            return Err(Error::config(format!(
                "throttle: rows_per_second must be a positive number, found {}",
                self.rows_per_second
            )));
        }
        Ok(input.clone())
    }

    /// One running instance.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        self.output_schema(input)?;
        Ok(Box::new(Throttle {
            rate: self.rows_per_second,
            started: None,
            rows: 0,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!("throttle {} rows/s", self.rows_per_second)
    }
}

impl kind::Spec for ThrottleSpec {
    fn describe(&self) -> String {
        ThrottleSpec::describe(self)
    }
}

impl kind::OperatorSpec for ThrottleSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        ThrottleSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn input_need(&self, _inputs: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.clone()])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        ThrottleSpec::create(self, ctx.input()?)
    }
}

/// The running throttle: waits (asynchronously) until the rows passed so far fit the rate.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    started: Option<Instant>,
    rows: u64,
}

#[async_trait]
impl Operator for Throttle {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let started = *self.started.get_or_insert_with(Instant::now);
        self.rows += batch.num_rows() as u64;
        let due = started + Duration::from_secs_f64(self.rows as f64 / self.rate);
        tokio::time::sleep_until(due.into()).await;
        out.emit(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;
    use weir_runtime::ErrorPolicy;

    #[tokio::test]
    async fn holds_the_rate() {
        let b =
            RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from_iter_values(0..50)) as _)])
                .expect("batch");
        let spec = ThrottleSpec {
            rows_per_second: 1000.0,
        };
        let mut op = spec.create(&b.schema()).expect("create");
        let mut ctx = OperatorContext::for_test("t", ErrorPolicy::Fail);
        let t = Instant::now();
        let mut out = Emitter::default();
        for _ in 0..4 {
            op.process_batch(b.clone(), &mut ctx, &mut out)
                .await
                .expect("process");
        }
        assert_eq!(out.take().len(), 4);
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "200 rows at 1000/s take 200 ms"
        );
        assert!(spec_err(0.0).contains("positive"));
    }

    fn spec_err(rate: f64) -> String {
        let s = Arc::new(arrow::datatypes::Schema::empty());
        ThrottleSpec {
            rows_per_second: rate,
        }
        .output_schema(&s)
        .expect_err("bad")
        .to_string()
    }
}
