//! `select`: projects the input onto a list of SQL expressions, each with an optional alias.

use crate::expr::{CompiledExpr, compile, evaluate_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// Options of a `select` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSpec {
    /// The output columns, in order: each a SQL expression with an optional alias, e.g. `id`,
    /// `price * 2 AS doubled`, `upper(name) AS name`, `CAST(x AS BIGINT) AS x`. The column is
    /// named by the alias, else the bare column name, else DataFusion's display name of the
    /// expression. Required, no default; must not be empty and the names must be unique.
    pub columns: Vec<String>,
}

impl SelectSpec {
    fn compile(&self, input: &SchemaRef) -> Result<(Vec<CompiledExpr>, SchemaRef)> {
        if self.columns.is_empty() {
            return Err(Error::config("select needs at least one column"));
        }
        let exprs = self
            .columns
            .iter()
            .map(|c| compile(c, input))
            .collect::<Result<Vec<_>>>()?;
        let mut seen = BTreeSet::new();
        for e in &exprs {
            if !seen.insert(e.name()) {
                return Err(Error::config(format!(
                    "select produces column '{}' twice (from '{}'); give it an alias with AS",
                    e.name(),
                    e.sql()
                )));
            }
        }
        let schema = Arc::new(Schema::new(
            exprs.iter().map(|e| e.field(e.name())).collect::<Vec<_>>(),
        ));
        Ok((exprs, schema))
    }

    /// Plan time: checks the spec against the input schema and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.compile(input)?.1)
    }

    /// Plan time: the input columns the expressions read.
    pub fn required_columns(&self, input: &SchemaRef) -> Result<BTreeSet<String>> {
        let (exprs, _) = self.compile(input)?;
        Ok(exprs.iter().flat_map(CompiledExpr::columns).collect())
    }

    /// Builds one running instance (called once per parallel subtask) for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let (exprs, schema) = self.compile(input)?;
        Ok(Box::new(Select { exprs, schema }))
    }

    /// One line for `weir validate`, e.g. `select id, price * 2 AS doubled`.
    pub fn describe(&self) -> String {
        format!("select {}", self.columns.join(", "))
    }
}

impl kind::Spec for SelectSpec {
    fn describe(&self) -> String {
        SelectSpec::describe(self)
    }
}

impl kind::OperatorSpec for SelectSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        SelectSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn input_need(&self, inputs: &[SchemaRef], _out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![kind::Need::Columns(
            self.required_columns(kind::first_input(inputs)?)?,
        )])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        SelectSpec::create(self, ctx.input()?)
    }
}

/// A running `select`.
#[derive(Debug)]
pub struct Select {
    exprs: Vec<CompiledExpr>,
    schema: SchemaRef,
}

#[async_trait]
impl Operator for Select {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let (kept, columns) = evaluate_batch(&self.exprs, &batch, ctx)?;
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
    use crate::test_util::{batch, concat, run};
    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};
    use weir_runtime::ErrorPolicy;
    use weir_types::ErrorKind;

    fn input() -> RecordBatch {
        batch(&[
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "price",
                Arc::new(Float64Array::from(vec![1.5, 2.0, 10.0])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![Some(" ab "), None, Some("Cd")])) as ArrayRef,
            ),
            (
                "x",
                Arc::new(StringArray::from(vec!["7", "8", "9"])) as ArrayRef,
            ),
        ])
    }

    async fn select(
        columns: &[&str],
        policy: ErrorPolicy,
        input: RecordBatch,
    ) -> Result<(RecordBatch, OperatorContext)> {
        let spec = SelectSpec {
            columns: columns.iter().map(|c| c.to_string()).collect(),
        };
        let schema = spec.output_schema(&input.schema())?;
        let mut op = spec.create(&input.schema())?;
        let mut ctx = OperatorContext::for_test("sel", policy);
        let out = run(op.as_mut(), &mut ctx, vec![input]).await?;
        Ok((concat(&schema, &out), ctx))
    }

    #[tokio::test]
    async fn projects_expressions() {
        let cases: Vec<(&[&str], RecordBatch)> = vec![
            (
                &["id"],
                batch(&[("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef)]),
            ),
            (
                &["price * 2 AS doubled", "id + 1 AS next"],
                batch(&[
                    (
                        "doubled",
                        Arc::new(Float64Array::from(vec![3.0, 4.0, 20.0])) as ArrayRef,
                    ),
                    (
                        "next",
                        Arc::new(Int64Array::from(vec![2, 3, 4])) as ArrayRef,
                    ),
                ]),
            ),
            (
                &["upper(trim(name)) AS name", "length(name) AS len"],
                batch(&[
                    (
                        "name",
                        Arc::new(StringArray::from(vec![Some("AB"), None, Some("CD")])) as ArrayRef,
                    ),
                    (
                        "len",
                        Arc::new(Int32Array::from(vec![Some(4), None, Some(2)])) as ArrayRef,
                    ),
                ]),
            ),
            (
                &[
                    "lower(name) AS l",
                    "substr(x, 1, 1) AS s",
                    "concat(x, '-', id) AS c",
                ],
                batch(&[
                    (
                        "l",
                        Arc::new(StringArray::from(vec![Some(" ab "), None, Some("cd")]))
                            as ArrayRef,
                    ),
                    (
                        "s",
                        Arc::new(StringArray::from(vec!["7", "8", "9"])) as ArrayRef,
                    ),
                    (
                        "c",
                        Arc::new(StringArray::from(vec!["7-1", "8-2", "9-3"])) as ArrayRef,
                    ),
                ]),
            ),
            (
                &["CAST(x AS BIGINT) AS x", "COALESCE(name, 'none') AS n"],
                batch(&[
                    ("x", Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef),
                    (
                        "n",
                        Arc::new(StringArray::from(vec![" ab ", "none", "Cd"])) as ArrayRef,
                    ),
                ]),
            ),
        ];
        for (columns, expected) in cases {
            let (got, _) = select(columns, ErrorPolicy::Fail, input())
                .await
                .expect("select");
            // Compare values and names; nullability is DataFusion's to decide.
            assert_eq!(got.columns(), expected.columns(), "{columns:?}");
            let names: Vec<_> = got
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let want: Vec<_> = expected
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(names, want, "{columns:?}");
        }
    }

    #[test]
    fn a_column_passed_through_keeps_its_field_metadata() {
        // Extension types (weir.image, weir.tensor, ...) live in field metadata: a select that
        // passes the column through, renamed or not, must keep them; a computed column has none.
        let meta = std::collections::HashMap::from([(
            "ARROW:extension:name".to_string(),
            "weir.test".to_string(),
        )]);
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true)
                .with_metadata(meta.clone()),
        ]));
        let spec = SelectSpec {
            columns: vec![
                "name".into(),
                "name AS renamed".into(),
                "upper(name) AS up".into(),
            ],
        };
        let out = spec.output_schema(&schema).expect("plan");
        assert_eq!(out.field(0).metadata(), &meta);
        assert_eq!(out.field(1).metadata(), &meta);
        assert!(out.field(2).metadata().is_empty());
    }

    #[test]
    fn display_name_without_alias() {
        let spec = SelectSpec {
            columns: vec!["upper(name)".into()],
        };
        let schema = spec.output_schema(&input().schema()).expect("plan");
        assert_eq!(schema.field(0).name(), "upper(name)");
    }

    #[test]
    fn duplicate_names_and_empty_list_are_errors() {
        let dup = SelectSpec {
            columns: vec!["id".into(), "price AS id".into()],
        };
        let err = dup.output_schema(&input().schema()).expect_err("dup");
        assert!(err.to_string().contains("column 'id' twice"), "{err}");
        let empty = SelectSpec { columns: vec![] };
        assert_eq!(
            empty
                .output_schema(&input().schema())
                .expect_err("empty")
                .kind(),
            ErrorKind::Config
        );
    }

    #[tokio::test]
    async fn bad_cast_under_dead_letter_keeps_other_rows() {
        let b = batch(&[
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "x",
                Arc::new(StringArray::from(vec!["7", "abc", "9"])) as ArrayRef,
            ),
        ]);
        let (got, mut ctx) = select(&["id", "CAST(x AS INT) AS x"], ErrorPolicy::DeadLetter, b)
            .await
            .expect("select");
        let expected = batch(&[
            ("id", Arc::new(Int64Array::from(vec![1, 3])) as ArrayRef),
            ("x", Arc::new(Int32Array::from(vec![7, 9])) as ArrayRef),
        ]);
        assert_eq!(got.columns(), expected.columns());
        let dead = ctx.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].operator, "sel");
        assert_eq!(dead[0].position.as_deref(), Some("row 1 of batch"));
        assert_eq!(
            dead[0].raw.as_deref(),
            Some(br#"{"id":2,"x":"abc"}"#.as_slice())
        );
        assert!(
            dead[0].error.contains("CAST(x AS INT)"),
            "{}",
            dead[0].error
        );
    }

    #[tokio::test]
    async fn bad_cast_under_fail_names_operator_and_row() {
        let b = batch(&[(
            "x",
            Arc::new(StringArray::from(vec!["7", "8", "abc"])) as ArrayRef,
        )]);
        let err = select(&["CAST(x AS INT) AS x"], ErrorPolicy::Fail, b)
            .await
            .expect_err("bad cast");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.operator(), Some("sel"));
        assert_eq!(err.location(), Some("row 2 of batch"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("operator 'sel': cannot evaluate expression 'CAST(x AS INT) AS x'"),
            "{msg}"
        );
        assert!(err.report().contains("abc"), "{}", err.report());
    }

    #[tokio::test]
    async fn all_rows_bad_emits_nothing() {
        let b = batch(&[("x", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef)]);
        let (got, mut ctx) = select(&["CAST(x AS INT) AS x"], ErrorPolicy::DeadLetter, b)
            .await
            .expect("select");
        assert_eq!(got.num_rows(), 0);
        assert_eq!(ctx.take_dead_letters().len(), 2);
    }

    #[test]
    fn describes() {
        let spec = SelectSpec {
            columns: vec!["id".into(), "price * 2 AS doubled".into()],
        };
        assert_eq!(spec.describe(), "select id, price * 2 AS doubled");
    }
}
