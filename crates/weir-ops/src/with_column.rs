//! `with_column`: adds one column computed by a SQL expression, or replaces (in place) the column
//! of that name.

use crate::expr::{CompiledExpr, compile, evaluate_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// Options of a `with_column` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithColumnSpec {
    /// The column's name (YAML key `column`; `name` names the step). Required, no default. An
    /// input column of that name is replaced in place; otherwise the column is added at the end.
    #[serde(rename = "column")]
    pub name: String,
    /// A SQL expression over the input columns, e.g. `price * quantity`. Required, no default.
    pub expr: String,
}

impl WithColumnSpec {
    fn compile(&self, input: &SchemaRef) -> Result<(CompiledExpr, Option<usize>, SchemaRef)> {
        if self.name.is_empty() {
            return Err(Error::config("with_column: name is empty"));
        }
        let expr = compile(&self.expr, input)?;
        let field = Arc::new(expr.field(&self.name));
        let replaces = input.index_of(&self.name).ok();
        let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
        match replaces {
            Some(i) => fields[i] = field,
            None => fields.push(field),
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        Ok((expr, replaces, schema))
    }

    /// Plan time: checks the spec against the input schema and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.compile(input)?.2)
    }

    /// Plan time: the input columns the expression reads.
    pub fn required_columns(&self, input: &SchemaRef) -> Result<BTreeSet<String>> {
        Ok(self.compile(input)?.0.columns())
    }

    /// Builds one running instance (called once per parallel subtask) for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let (expr, replaces, schema) = self.compile(input)?;
        Ok(Box::new(WithColumn {
            expr,
            replaces,
            schema,
        }))
    }

    /// One line for `weir validate`, e.g. `with_column total = price * quantity`.
    pub fn describe(&self) -> String {
        format!("with_column {} = {}", self.name, self.expr)
    }
}

impl kind::Spec for WithColumnSpec {
    fn describe(&self) -> String {
        WithColumnSpec::describe(self)
    }
}

impl kind::OperatorSpec for WithColumnSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        WithColumnSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// What the consumers read, less the computed column, plus what the expression reads.
    fn input_need(&self, inputs: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![match out {
            kind::Need::All => kind::Need::All,
            kind::Need::Columns(c) => {
                let mut c = c.clone();
                c.remove(&self.name);
                c.extend(self.required_columns(kind::first_input(inputs)?)?);
                kind::Need::Columns(c)
            }
        }])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        WithColumnSpec::create(self, ctx.input()?)
    }
}

/// A running `with_column`.
#[derive(Debug)]
pub struct WithColumn {
    expr: CompiledExpr,
    replaces: Option<usize>,
    schema: SchemaRef,
}

#[async_trait]
impl Operator for WithColumn {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let (kept, mut values) = evaluate_batch(std::slice::from_ref(&self.expr), &batch, ctx)?;
        let Some(value) = values.pop() else {
            return Err(Error::internal("with_column evaluated no values"));
        };
        let mut columns = kept.columns().to_vec();
        match self.replaces {
            Some(i) if i < columns.len() => columns[i] = value,
            _ => columns.push(value),
        }
        let options = RecordBatchOptions::new().with_row_count(Some(kept.num_rows()));
        out.emit(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{batch, run};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use weir_runtime::ErrorPolicy;
    use weir_types::ErrorKind;

    fn input() -> RecordBatch {
        batch(&[
            ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ])
    }

    #[tokio::test]
    async fn adds_or_replaces() {
        let cases: Vec<(&str, &str, RecordBatch)> = vec![
            (
                "c",
                "a * 10",
                batch(&[
                    ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
                    ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
                    ("c", Arc::new(Int64Array::from(vec![10, 20])) as ArrayRef),
                ]),
            ),
            (
                "a",
                "upper(b)",
                batch(&[
                    ("a", Arc::new(StringArray::from(vec!["X", "Y"])) as ArrayRef),
                    ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
                ]),
            ),
        ];
        for (name, expr, expected) in cases {
            let spec = WithColumnSpec {
                name: name.into(),
                expr: expr.into(),
            };
            let schema = spec.output_schema(&input().schema()).expect("plan");
            let mut op = spec.create(&input().schema()).expect("create");
            let mut ctx = OperatorContext::for_test("w", ErrorPolicy::Fail);
            let out = run(op.as_mut(), &mut ctx, vec![input()])
                .await
                .expect("run");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].schema(), schema);
            assert_eq!(out[0].columns(), expected.columns(), "{name} = {expr}");
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let want: Vec<_> = expected
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(names, want);
        }
    }

    #[tokio::test]
    async fn division_by_zero_row_is_dead_lettered() {
        let b = batch(&[
            (
                "a",
                Arc::new(Int64Array::from(vec![10, 20, 30])) as ArrayRef,
            ),
            ("d", Arc::new(Int64Array::from(vec![2, 0, 3])) as ArrayRef),
        ]);
        let spec = WithColumnSpec {
            name: "q".into(),
            expr: "a / d".into(),
        };
        let mut op = spec.create(&b.schema()).expect("create");
        let mut ctx = OperatorContext::for_test("w", ErrorPolicy::DeadLetter);
        let out = run(op.as_mut(), &mut ctx, vec![b]).await.expect("run");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].column(2).as_ref(),
            &Int64Array::from(vec![5, 10]) as &dyn arrow::array::Array
        );
        assert_eq!(ctx.take_dead_letters().len(), 1);
    }

    #[test]
    fn errors_and_describe() {
        let spec = WithColumnSpec {
            name: "c".into(),
            expr: "zz + 1".into(),
        };
        let err = spec.output_schema(&input().schema()).expect_err("unknown");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("'zz'"), "{err}");
        assert_eq!(spec.describe(), "with_column c = zz + 1");
    }
}
