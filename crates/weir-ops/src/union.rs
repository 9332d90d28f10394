//! `union`: merges several inputs with the same columns into one stream (UNION ALL: nothing is
//! deduplicated, and the order between inputs is the order batches arrive).

use arrow::datatypes::{Field, Schema, SchemaRef};
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Operator, Relabel};
use weir_types::{Error, Result};

/// Options of a `union` operator: there are none.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnionSpec {}

impl UnionSpec {
    /// Plan time: checks that all inputs have the same column names and types, in the same order,
    /// and returns the output schema (a column is nullable if it is in any input).
    pub fn output_schema_union(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let Some(first) = inputs.first() else {
            return Err(Error::config("union needs at least one input"));
        };
        let mut fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (n, input) in inputs.iter().enumerate().skip(1) {
            if input.fields().len() != fields.len() {
                let names = |s: &SchemaRef| {
                    s.fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::schema(format!(
                    "union inputs differ: input 0 has {} columns ({}) but input {n} has {} ({})",
                    fields.len(),
                    names(first),
                    input.fields().len(),
                    names(input)
                )));
            }
            for (i, (out, f)) in fields.iter_mut().zip(input.fields().iter()).enumerate() {
                if out.name() != f.name() {
                    return Err(Error::schema(format!(
                        "union inputs differ at column {i}: input 0 has '{}' but input {n} has '{}'",
                        out.name(),
                        f.name()
                    )));
                }
                if out.data_type() != f.data_type() {
                    return Err(Error::schema(format!(
                        "union inputs differ in column '{}': {} in input 0 but {} in input {n}",
                        out.name(),
                        out.data_type(),
                        f.data_type()
                    )));
                }
                if f.is_nullable() {
                    out.set_nullable(true);
                }
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Plan time for a single input: the output schema is the input schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.output_schema_union(std::slice::from_ref(input))
    }

    /// Builds one running instance (called once per parallel subtask) whose output schema is
    /// `output` (the result of [`UnionSpec::output_schema_union`]).
    pub fn create(&self, output: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Relabel::new(output.clone())))
    }

    /// One line for `weir validate`: `union`.
    pub fn describe(&self) -> String {
        "union".to_string()
    }
}

impl kind::Spec for UnionSpec {
    fn describe(&self) -> String {
        UnionSpec::describe(self)
    }
}

impl kind::OperatorSpec for UnionSpec {
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        1..=usize::MAX
    }

    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        self.output_schema_union(inputs)
    }

    /// Relabels every input's batches to the output schema.
    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        UnionSpec::create(self, ctx.output()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{batch, run};
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use weir_runtime::ErrorPolicy;
    use weir_runtime::OperatorContext;
    use weir_types::ErrorKind;

    fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn schema_checks() {
        let a = schema(&[("id", DataType::Int64, false), ("s", DataType::Utf8, false)]);
        let cases: Vec<(SchemaRef, &str)> = vec![
            (
                schema(&[("id", DataType::Int32, false), ("s", DataType::Utf8, false)]),
                "union inputs differ in column 'id': Int64 in input 0 but Int32 in input 1",
            ),
            (
                schema(&[("id", DataType::Int64, false), ("t", DataType::Utf8, false)]),
                "union inputs differ at column 1: input 0 has 's' but input 1 has 't'",
            ),
            (
                schema(&[("id", DataType::Int64, false)]),
                "union inputs differ: input 0 has 2 columns (id, s) but input 1 has 1 (id)",
            ),
        ];
        for (b, msg) in cases {
            let err = UnionSpec {}
                .output_schema_union(&[a.clone(), b])
                .expect_err(msg);
            assert_eq!(err.kind(), ErrorKind::Schema);
            assert_eq!(err.to_string(), msg);
        }
        let nullable = schema(&[("id", DataType::Int64, true), ("s", DataType::Utf8, false)]);
        let out = UnionSpec {}
            .output_schema_union(&[a.clone(), nullable])
            .expect("compatible");
        assert!(out.field(0).is_nullable());
        assert!(!out.field(1).is_nullable());
        assert!(UnionSpec {}.output_schema_union(&[]).is_err());
    }

    #[tokio::test]
    async fn passes_batches_through() {
        let b1 = batch(&[("x", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)]);
        let b2 = batch(&[(
            "x",
            Arc::new(Int64Array::from(vec![Some(3), None])) as ArrayRef,
        )]);
        let spec = UnionSpec {};
        let out_schema = spec
            .output_schema_union(&[b1.schema(), b2.schema()])
            .expect("plan");
        let mut op = spec.create(&out_schema).expect("create");
        let mut ctx = OperatorContext::for_test("u", ErrorPolicy::Fail);
        let out = run(op.as_mut(), &mut ctx, vec![b1, b2]).await.expect("run");
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|b| b.schema() == out_schema));
        assert_eq!(
            out[1].column(0).as_ref(),
            &Int64Array::from(vec![Some(3), None]) as &dyn arrow::array::Array
        );
        let _ = (Int32Array::from(vec![1]), StringArray::from(vec!["a"]));
        assert_eq!(spec.describe(), "union");
    }

    #[test]
    fn deserializes_from_empty_map() {
        let spec: UnionSpec = serde_json::from_str("{}").expect("empty");
        assert_eq!(spec.describe(), "union");
        assert!(serde_json::from_str::<UnionSpec>(r#"{"x": 1}"#).is_err());
    }
}
