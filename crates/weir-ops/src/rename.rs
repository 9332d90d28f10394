//! `rename`: renames columns, keeping their order, types and values.

use crate::expr::available_columns;
use arrow::datatypes::{Field, Schema, SchemaRef};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Operator, Relabel};
use weir_types::{Error, Result};

/// Options of a `rename` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameSpec {
    /// Old column name → new column name. Required, no default. Every old name must be an input
    /// column, and the output names must be unique.
    pub columns: BTreeMap<String, String>,
}

impl RenameSpec {
    /// Plan time: checks the spec against the input schema and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        for old in self.columns.keys() {
            if input.index_of(old).is_err() {
                return Err(Error::config(format!(
                    "rename: unknown column '{old}'; available columns: {}",
                    available_columns(input)
                )));
            }
        }
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| match self.columns.get(f.name()) {
                Some(new) => f.as_ref().clone().with_name(new.clone()),
                None => f.as_ref().clone(),
            })
            .collect();
        let mut seen = BTreeSet::new();
        for f in &fields {
            if f.name().is_empty() {
                return Err(Error::config("rename: new column name is empty"));
            }
            if !seen.insert(f.name().as_str()) {
                return Err(Error::config(format!(
                    "rename: column '{}' would appear twice in the output",
                    f.name()
                )));
            }
        }
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )))
    }

    /// Builds one running instance (called once per parallel subtask) for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Relabel::new(self.output_schema(input)?)))
    }

    /// One line for `weir validate`, e.g. `rename amt -> amount, nm -> name`.
    pub fn describe(&self) -> String {
        let pairs: Vec<String> = self
            .columns
            .iter()
            .map(|(old, new)| format!("{old} -> {new}"))
            .collect();
        format!("rename {}", pairs.join(", "))
    }
}

impl kind::Spec for RenameSpec {
    fn describe(&self) -> String {
        RenameSpec::describe(self)
    }
}

impl kind::OperatorSpec for RenameSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        RenameSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// The consumers' columns under their old names.
    fn input_need(&self, _inputs: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![match out {
            kind::Need::All => kind::Need::All,
            kind::Need::Columns(c) => kind::Need::Columns(
                c.iter()
                    .map(|name| {
                        self.columns
                            .iter()
                            .find(|(_, new)| *new == name)
                            .map_or_else(|| name.clone(), |(old, _)| old.clone())
                    })
                    .collect(),
            ),
        }])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        RenameSpec::create(self, ctx.input()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{batch, run};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use weir_runtime::ErrorPolicy;
    use weir_runtime::OperatorContext;
    use weir_types::ErrorKind;

    fn input() -> RecordBatch {
        batch(&[
            ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ])
    }

    fn spec(pairs: &[(&str, &str)]) -> RenameSpec {
        RenameSpec {
            columns: pairs
                .iter()
                .map(|(o, n)| (o.to_string(), n.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn renames_in_place() {
        let s = spec(&[("b", "bee")]);
        let mut op = s.create(&input().schema()).expect("create");
        let mut ctx = OperatorContext::for_test("r", ErrorPolicy::Fail);
        let out = run(op.as_mut(), &mut ctx, vec![input()])
            .await
            .expect("run");
        let expected = batch(&[
            ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "bee",
                Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef,
            ),
        ]);
        assert_eq!(out, vec![expected]);
        assert_eq!(s.describe(), "rename b -> bee");
    }

    #[test]
    fn errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("c", "d")],
                "rename: unknown column 'c'; available columns: a, b",
            ),
            (
                &[("a", "b")],
                "rename: column 'b' would appear twice in the output",
            ),
            (&[("a", "")], "rename: new column name is empty"),
        ];
        for (pairs, msg) in cases {
            let err = spec(pairs).output_schema(&input().schema()).expect_err(msg);
            assert_eq!(err.kind(), ErrorKind::Config);
            assert_eq!(err.to_string(), *msg);
        }
    }

    #[test]
    fn swapping_names_is_fine() {
        let schema = spec(&[("a", "b"), ("b", "a")])
            .output_schema(&input().schema())
            .expect("swap");
        assert_eq!(schema.field(0).name(), "b");
        assert_eq!(schema.field(1).name(), "a");
    }
}
