//! `filter`: keeps the rows for which a SQL boolean expression is true (rows where it is false or
//! NULL are dropped).

use crate::expr::{CompiledExpr, compile, evaluate_batch};
use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::collections::BTreeSet;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// Options of a `filter` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// A SQL boolean expression over the input columns, e.g. `amount > 100 AND name IS NOT NULL`.
    /// Required, no default. Rows where it is false or NULL are dropped.
    pub predicate: String,
}

impl FilterSpec {
    fn compile(&self, input: &SchemaRef) -> Result<CompiledExpr> {
        let expr = compile(&self.predicate, input)?;
        if expr.data_type() != &DataType::Boolean {
            return Err(Error::config(format!(
                "filter predicate '{}' must be boolean, but its type is {}",
                self.predicate,
                expr.data_type()
            )));
        }
        Ok(expr)
    }

    /// Plan time: checks the spec against the input schema and returns the output schema (the
    /// input schema: a filter only drops rows).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.compile(input)?;
        Ok(input.clone())
    }

    /// Plan time: the input columns the predicate reads.
    pub fn required_columns(&self, input: &SchemaRef) -> Result<BTreeSet<String>> {
        Ok(self.compile(input)?.columns())
    }

    /// Builds one running instance (called once per parallel subtask) for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Filter {
            predicate: self.compile(input)?,
        }))
    }

    /// One line for `weir validate`, e.g. `filter amount > 100`.
    pub fn describe(&self) -> String {
        format!("filter {}", self.predicate)
    }
}

impl kind::Spec for FilterSpec {
    fn describe(&self) -> String {
        FilterSpec::describe(self)
    }
}

impl kind::OperatorSpec for FilterSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        FilterSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn input_need(&self, inputs: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![
            out.plus(self.required_columns(kind::first_input(inputs)?)?),
        ])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        FilterSpec::create(self, ctx.input()?)
    }
}

/// A running `filter`.
#[derive(Debug)]
pub struct Filter {
    predicate: CompiledExpr,
}

#[async_trait]
impl Operator for Filter {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let (kept, values) = evaluate_batch(std::slice::from_ref(&self.predicate), &batch, ctx)?;
        let Some(mask) = values.first().and_then(|v| v.as_boolean_opt()) else {
            return Err(Error::internal(format!(
                "filter predicate '{}' did not evaluate to booleans",
                self.predicate.sql()
            )));
        };
        out.emit(filter_record_batch(&kept, mask)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{batch, concat, run};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;
    use weir_runtime::ErrorPolicy;
    use weir_types::ErrorKind;

    fn input() -> RecordBatch {
        batch(&[
            (
                "amount",
                Arc::new(Int64Array::from(vec![
                    Some(50),
                    Some(150),
                    None,
                    Some(300),
                    Some(200),
                ])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("c"),
                    None,
                    Some("e"),
                ])) as ArrayRef,
            ),
        ])
    }

    #[tokio::test]
    async fn filters_and_drops_null_predicates() {
        let cases: &[(&str, Vec<i64>)] = &[
            ("amount > 100", vec![150, 300, 200]),
            ("amount > 100 AND name IS NOT NULL", vec![150, 200]),
            ("amount IS NULL AND amount > 0", vec![]),
            ("NOT (amount > 100)", vec![50]),
            (
                "name LIKE 'e%' OR length(name) = 1 AND amount < 100",
                vec![50, 200],
            ),
            ("COALESCE(amount, 1000) < 100", vec![50]),
            ("CASE WHEN name = 'b' THEN true ELSE false END", vec![150]),
        ];
        for (predicate, expected) in cases {
            let spec = FilterSpec {
                predicate: predicate.to_string(),
            };
            let schema = input().schema();
            assert_eq!(spec.output_schema(&schema).expect("plan"), schema);
            let mut op = spec.create(&schema).expect("create");
            let mut ctx = OperatorContext::for_test("f", ErrorPolicy::Fail);
            let out = run(op.as_mut(), &mut ctx, vec![input()])
                .await
                .expect("run");
            let got = concat(&schema, &out);
            let amounts: Vec<i64> = got
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .flatten()
                .collect();
            assert_eq!(&amounts, expected, "{predicate}");
            assert_eq!(got.num_rows(), expected.len(), "{predicate}");
        }
    }

    #[test]
    fn non_boolean_predicate_is_a_config_error() {
        let spec = FilterSpec {
            predicate: "amount + 1".into(),
        };
        let err = spec
            .output_schema(&input().schema())
            .expect_err("not boolean");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("must be boolean"), "{err}");
    }

    #[test]
    fn unknown_column_names_it() {
        let spec = FilterSpec {
            predicate: "amout > 1".into(),
        };
        let err = spec.output_schema(&input().schema()).expect_err("unknown");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("'amout'"), "{err}");
        assert!(err.to_string().contains("amount, name"), "{err}");
    }

    #[tokio::test]
    async fn bad_cast_rows_go_to_dead_letters() {
        let b = batch(&[(
            "s",
            Arc::new(StringArray::from(vec!["1", "abc", "30"])) as ArrayRef,
        )]);
        let spec = FilterSpec {
            predicate: "CAST(s AS BIGINT) > 5".into(),
        };
        let mut op = spec.create(&b.schema()).expect("create");
        let mut ctx = OperatorContext::for_test("f", ErrorPolicy::DeadLetter);
        let out = run(op.as_mut(), &mut ctx, vec![b.clone()])
            .await
            .expect("run");
        assert_eq!(concat(&b.schema(), &out), b.slice(2, 1));
        let dead = ctx.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].raw.as_deref(), Some(br#"{"s":"abc"}"#.as_slice()));
    }

    #[test]
    fn describes() {
        let spec = FilterSpec {
            predicate: "amount > 100".into(),
        };
        assert_eq!(spec.describe(), "filter amount > 100");
    }
}
