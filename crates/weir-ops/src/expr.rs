//! SQL expressions compiled with DataFusion: parsed and type-checked once against an input schema,
//! then evaluated vectorised on every batch.
//!
//! Column names are case-sensitive and match the schema exactly (unquoted identifiers are not
//! lower-cased); function names are case-insensitive. Row-level evaluation errors (a `CAST` of
//! `'abc'` to an integer, an integer division by zero) are handled by [`evaluate_batch`]: the batch is
//! evaluated once, and only when that fails is it re-evaluated row by row to find the bad rows.

use arrow::array::{Array, ArrayRef, UInt32Array, new_empty_array};
use arrow::compute::{concat, take_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::{DFSchema, DataFusionError, SchemaError};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use weir_runtime::OperatorContext;
use weir_types::{Error, Result, row_as_json};

thread_local! {
    /// One DataFusion session per thread: building one registers every function, which is too slow
    /// to do per expression.
    static SESSION: SessionContext = SessionContext::new_with_config(
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false),
    );
}

/// A SQL expression compiled against one input schema.
#[derive(Clone)]
pub struct CompiledExpr {
    sql: String,
    name: String,
    data_type: DataType,
    nullable: bool,
    /// Field metadata of the result (an extension type's name and metadata when the
    /// expression passes a column through, e.g. `image` or `img AS picture`).
    metadata: std::collections::HashMap<String, String>,
    physical: Arc<dyn PhysicalExpr>,
}

impl fmt::Debug for CompiledExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledExpr")
            .field("sql", &self.sql)
            .field("name", &self.name)
            .field("data_type", &self.data_type)
            .field("nullable", &self.nullable)
            .finish()
    }
}

/// Lists the schema's column names, for error messages.
pub(crate) fn available_columns(schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// Turns a DataFusion planning error into a config error naming the expression (and the unknown
/// column, when that is the problem) and listing the available columns.
fn plan_error(sql: &str, schema: &SchemaRef, e: DataFusionError) -> Error {
    let available = available_columns(schema);
    let message = match e.find_root() {
        DataFusionError::SchemaError(se, _) => match se.as_ref() {
            SchemaError::FieldNotFound { field, .. } => format!(
                "unknown column '{}' in expression '{sql}'; available columns: {available}",
                field.name()
            ),
            _ => format!(
                "invalid expression '{sql}': {}; available columns: {available}",
                e.find_root().message()
            ),
        },
        root => format!(
            "invalid expression '{sql}': {}; available columns: {available}",
            root.message()
        ),
    };
    Error::config(message).with_source(e)
}

/// Parses and plans `sql` against `schema`.
///
/// The output column name is the alias (`price * 2 AS doubled`), else the bare column name (`id`),
/// else DataFusion's display name of the expression (`upper(name)`). Errors are config errors that
/// name the expression and list the available columns.
pub fn compile(sql: &str, schema: &SchemaRef) -> Result<CompiledExpr> {
    if sql.trim().is_empty() {
        return Err(Error::config("empty expression"));
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| {
        Error::schema(format!("input schema is not usable for expression '{sql}'")).with_source(e)
    })?;
    SESSION.with(|ctx| {
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| plan_error(sql, schema, e))?;
        let name = match &expr {
            Expr::Alias(a) => a.name.clone(),
            Expr::Column(c) => c.name.clone(),
            other => other.schema_name().to_string(),
        };
        // Coerce and simplify first: some functions (COALESCE, NVL, ...) are only executable after
        // the simplifier rewrote them, and constant parts get folded once here instead of per batch.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .with_config_options(ctx.state().config_options().clone())
                .build(),
        );
        let expr = simplifier
            .coerce(expr, &df_schema)
            .and_then(|e| simplifier.simplify(e))
            .map_err(|e| plan_error(sql, schema, e))?;
        let physical = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| plan_error(sql, schema, e))?;
        let field = physical
            .return_field(schema.as_ref())
            .map_err(|e| plan_error(sql, schema, e))?;
        Ok(CompiledExpr {
            sql: sql.to_string(),
            name,
            data_type: field.data_type().clone(),
            nullable: field.is_nullable(),
            metadata: field.metadata().clone(),
            physical,
        })
    })
}

impl CompiledExpr {
    /// The input columns the expression reads (for projection pushdown at plan time).
    pub fn columns(&self) -> BTreeSet<String> {
        datafusion::physical_expr::utils::collect_columns(&self.physical)
            .into_iter()
            .map(|c| c.name().to_string())
            .collect()
    }

    /// The SQL text it was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The output column name (alias, bare column name, or DataFusion's display name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The output type.
    pub fn data_type(&self) -> &DataType {
        &self.data_type
    }

    /// Whether the output may hold nulls.
    pub fn nullable(&self) -> bool {
        self.nullable
    }

    /// The output field, named `name`, with the result's field metadata (so a column passed
    /// through keeps its extension type).
    pub fn field(&self, name: &str) -> Field {
        Field::new(name, self.data_type.clone(), self.nullable).with_metadata(self.metadata.clone())
    }

    /// Evaluates the expression on `batch` (one vectorised call), returning one value per row.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        self.try_evaluate(batch).map_err(|e| {
            Error::input(format!("cannot evaluate expression '{}'", self.sql)).with_source(e)
        })
    }

    fn try_evaluate(&self, batch: &RecordBatch) -> std::result::Result<ArrayRef, DataFusionError> {
        self.physical.evaluate(batch)?.into_array(batch.num_rows())
    }
}

/// Evaluates every expression of `exprs` on `batch`.
///
/// The common path is one vectorised evaluation per expression. When any fails, the batch is
/// re-evaluated row by row: each row on which some expression fails is reported through
/// [`OperatorContext::bad_row`] (returning its error under the fail policy), and the result holds
/// only the good rows, in order: the input rows kept and each expression's values for them.
pub fn evaluate_batch(
    exprs: &[CompiledExpr],
    batch: &RecordBatch,
    ctx: &mut OperatorContext,
) -> Result<(RecordBatch, Vec<ArrayRef>)> {
    let fast: std::result::Result<Vec<ArrayRef>, DataFusionError> =
        exprs.iter().map(|e| e.try_evaluate(batch)).collect();
    match fast {
        Ok(values) => Ok((batch.clone(), values)),
        Err(_) => evaluate_row_by_row(exprs, batch, ctx),
    }
}

fn evaluate_row_by_row(
    exprs: &[CompiledExpr],
    batch: &RecordBatch,
    ctx: &mut OperatorContext,
) -> Result<(RecordBatch, Vec<ArrayRef>)> {
    let mut good: Vec<u32> = Vec::new();
    let mut per_expr: Vec<Vec<ArrayRef>> = vec![Vec::new(); exprs.len()];
    'rows: for i in 0..batch.num_rows() {
        let row = batch.slice(i, 1);
        let mut values = Vec::with_capacity(exprs.len());
        for expr in exprs {
            match expr.try_evaluate(&row) {
                Ok(v) => values.push(v),
                Err(e) => {
                    let error = Error::input(format!("cannot evaluate expression '{}'", expr.sql))
                        .with_source(e);
                    ctx.bad_row(
                        error,
                        None,
                        Some(format!("row {i} of batch")),
                        row_as_json(batch, i),
                    )?;
                    continue 'rows;
                }
            }
        }
        let index = u32::try_from(i).map_err(|_| {
            Error::input(format!("batch of {} rows is too large", batch.num_rows()))
        })?;
        good.push(index);
        for (acc, v) in per_expr.iter_mut().zip(values) {
            acc.push(v);
        }
    }
    let kept = take_record_batch(batch, &UInt32Array::from(good))?;
    let mut columns = Vec::with_capacity(exprs.len());
    for (expr, parts) in exprs.iter().zip(per_expr) {
        let column = if parts.is_empty() {
            new_empty_array(&expr.data_type)
        } else {
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            concat(&refs)?
        };
        columns.push(column);
    }
    Ok((kept, columns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::batch;
    use arrow::array::{Int64Array, StringArray};
    use weir_types::ErrorKind;

    fn schema() -> SchemaRef {
        batch(&[
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
        ])
        .schema()
    }

    #[test]
    fn names_types_and_nullability() {
        let cases: &[(&str, &str, DataType)] = &[
            ("id", "id", DataType::Int64),
            ("id * 2 AS doubled", "doubled", DataType::Int64),
            ("upper(name)", "upper(name)", DataType::Utf8),
            ("CAST(id AS INT) AS x", "x", DataType::Int32),
            (
                "id > 1 AND name IS NOT NULL",
                "id > Int64(1) AND name IS NOT NULL",
                DataType::Boolean,
            ),
        ];
        for (sql, name, dt) in cases {
            let e = compile(sql, &schema()).expect(sql);
            assert_eq!(e.name(), *name, "{sql}");
            assert_eq!(e.data_type(), dt, "{sql}");
        }
    }

    #[test]
    fn unknown_column_is_a_config_error_naming_it() {
        let err = compile("nme = 'x'", &schema()).expect_err("unknown column");
        assert_eq!(err.kind(), ErrorKind::Config);
        let msg = err.to_string();
        assert!(msg.contains("unknown column 'nme'"), "{msg}");
        assert!(msg.contains("available columns: id, name"), "{msg}");
    }

    #[test]
    fn syntax_error_names_expression() {
        let err = compile("id >", &schema()).expect_err("syntax");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("'id >'"), "{err}");
    }
}
