//! Aggregates written as SQL (`count(*)`, `sum(price) AS total`, `count(DISTINCT bidder)`,
//! `approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY price)`, `max(x) FILTER (WHERE y > 0)`),
//! planned by DataFusion and run with DataFusion's own accumulators.
//!
//! Each aggregate becomes a DataFusion [`AggregateFunctionExpr`]; groups of rows are aggregated
//! with its [`GroupsAccumulator`] (vectorised over all groups of a batch at once), or, for the
//! functions DataFusion has no grouped accumulator for, with its plain accumulators behind
//! DataFusion's [`GroupsAccumulatorAdapter`]. Nothing here re-implements an aggregate function.
//! Partial results move between accumulators (panes into windows, into and out of checkpoints) as
//! DataFusion's intermediate *state* arrays (`state` / `merge_batch`), the same ones its
//! two-phase aggregation uses.

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{Field, FieldRef, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{EmitTo, Expr, GroupsAccumulator};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::sync::Arc;
use weir_types::{Error, Result};

thread_local! {
    /// One DataFusion session per thread (building one registers every function).
    static SESSION: SessionContext = SessionContext::new_with_config(
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false),
    );
}

/// One aggregate, compiled against an input schema.
#[derive(Debug, Clone)]
pub struct CompiledAggregate {
    sql: String,
    expr: Arc<AggregateFunctionExpr>,
    /// Arguments, then the aggregate's ORDER BY expressions (what its accumulator is fed).
    inputs: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    state_fields: Vec<FieldRef>,
}

/// Parses and plans one aggregate expression against `schema`. Errors are config errors naming
/// the expression (and the available columns when a column is unknown).
pub fn compile_aggregate(sql: &str, schema: &SchemaRef) -> Result<CompiledAggregate> {
    let names = crate::window::names(schema);
    let fail = |e: datafusion::error::DataFusionError| {
        Error::config(format!(
            "invalid aggregate '{sql}': {}; available columns: {names}",
            e.find_root().message()
        ))
    };
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| {
        Error::schema(format!("input schema is not usable for aggregate '{sql}'")).with_source(e)
    })?;
    SESSION.with(|ctx| {
        let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(fail)?;
        let mut inner = &expr;
        while let Expr::Alias(a) = inner {
            inner = a.expr.as_ref();
        }
        if !matches!(inner, Expr::AggregateFunction(_)) {
            return Err(Error::config(format!(
                "'{sql}' is not an aggregate: write one aggregate function call, like \
                 'count(*)', 'sum(price) AS total' or 'max(price) FILTER (WHERE price > 0)', and \
                 compute on its result in a later step"
            )));
        }
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .with_config_options(ctx.state().config_options().clone())
                .build(),
        );
        let expr = simplifier.coerce(expr, &df_schema).map_err(fail)?;
        let props = ExecutionProps::new();
        let lowered = LoweredAggregateBuilder::new(
            &expr,
            &df_schema,
            schema.as_ref(),
            &props,
            &PhysicalPlanningContext::default(),
        )
        .build()
        .map_err(fail)?;
        let agg = lowered.aggregate;
        let all = agg.all_expressions();
        let inputs = all.args.into_iter().chain(all.order_by_exprs).collect();
        let state_fields = agg.state_fields().map_err(fail)?;
        Ok(CompiledAggregate {
            sql: sql.to_string(),
            expr: agg,
            inputs,
            filter: lowered.filter,
            state_fields,
        })
    })
}

impl CompiledAggregate {
    /// The SQL it was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The output column name (the alias, else DataFusion's name such as `count(*)`).
    pub fn name(&self) -> &str {
        self.expr.name()
    }

    /// The output field.
    pub fn field(&self) -> FieldRef {
        self.expr.field()
    }

    /// The fields of the intermediate state (what a checkpoint or a pane holds per group).
    pub fn state_fields(&self) -> &[FieldRef] {
        &self.state_fields
    }

    /// The input columns it reads.
    pub fn columns(&self) -> std::collections::BTreeSet<String> {
        self.inputs
            .iter()
            .chain(&self.filter)
            .flat_map(datafusion::physical_expr::utils::collect_columns)
            .map(|c| c.name().to_string())
            .collect()
    }

    /// A new accumulator of many groups.
    pub fn accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        let e = |err: datafusion::error::DataFusionError| {
            Error::internal(format!("cannot create the accumulator of '{}'", self.sql))
                .with_source(err)
        };
        if self.expr.groups_accumulator_supported() {
            return self.expr.create_groups_accumulator().map_err(e);
        }
        let expr = self.expr.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            expr.create_accumulator()
        })))
    }

    /// Evaluates its inputs (and filter) on `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<AggregateInput> {
        let e = |err: datafusion::error::DataFusionError| {
            Error::input(format!("cannot evaluate the inputs of '{}'", self.sql)).with_source(err)
        };
        let n = batch.num_rows();
        let values = self
            .inputs
            .iter()
            .map(|x| x.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(e)?;
        let filter = match &self.filter {
            None => None,
            Some(f) => {
                let v = f.evaluate(batch).and_then(|v| v.into_array(n)).map_err(e)?;
                Some(v.as_boolean_opt().cloned().ok_or_else(|| {
                    Error::config(format!("the FILTER of '{}' is not boolean", self.sql))
                })?)
            }
        };
        Ok(AggregateInput { values, filter })
    }
}

/// One aggregate's evaluated inputs for a batch.
#[derive(Debug, Clone)]
pub struct AggregateInput {
    /// Argument (and ORDER BY) values.
    pub values: Vec<ArrayRef>,
    /// The FILTER's values, if any.
    pub filter: Option<BooleanArray>,
}

impl AggregateInput {
    /// The rows at `indices`.
    pub fn take(&self, indices: &arrow::array::UInt32Array) -> Result<AggregateInput> {
        let t = |a: &ArrayRef| {
            arrow::compute::take(a.as_ref(), indices, None)
                .map_err(|e| Error::internal("cannot take aggregate inputs").with_source(e))
        };
        Ok(AggregateInput {
            values: self.values.iter().map(t).collect::<Result<_>>()?,
            filter: match &self.filter {
                None => None,
                Some(f) => Some(t(&(Arc::new(f.clone()) as ArrayRef))?.as_boolean().clone()),
            },
        })
    }
}

/// Wraps a DataFusion error from an accumulator.
pub(crate) fn acc_error(what: &str) -> impl Fn(datafusion::error::DataFusionError) -> Error + '_ {
    move |e| Error::internal(format!("aggregate accumulator failed to {what}")).with_source(e)
}

/// A set of accumulators, one per aggregate, over the same groups.
pub(crate) struct Accumulators {
    pub(crate) accs: Vec<Box<dyn GroupsAccumulator>>,
}

impl std::fmt::Debug for Accumulators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Accumulators({})", self.accs.len())
    }
}

impl Accumulators {
    pub(crate) fn new(aggs: &[CompiledAggregate]) -> Result<Self> {
        Ok(Accumulators {
            accs: aggs
                .iter()
                .map(CompiledAggregate::accumulator)
                .collect::<Result<_>>()?,
        })
    }

    /// Feeds rows whose groups are `groups` (ids below `n_groups`).
    pub(crate) fn update(
        &mut self,
        inputs: &[AggregateInput],
        groups: &[usize],
        n_groups: usize,
    ) -> Result<()> {
        for (acc, input) in self.accs.iter_mut().zip(inputs) {
            acc.update_batch(&input.values, groups, input.filter.as_ref(), n_groups)
                .map_err(acc_error("update"))?;
        }
        Ok(())
    }

    /// Merges intermediate states (`states[i]` for aggregate `i`) of the groups `groups`.
    pub(crate) fn merge(
        &mut self,
        states: &[Vec<ArrayRef>],
        groups: &[usize],
        n_groups: usize,
    ) -> Result<()> {
        for (acc, state) in self.accs.iter_mut().zip(states) {
            acc.merge_batch(state, groups, n_groups)
                .map_err(acc_error("merge"))?;
        }
        Ok(())
    }

    /// Takes every group's intermediate state (the accumulators are empty afterwards).
    pub(crate) fn take_state(&mut self) -> Result<Vec<Vec<ArrayRef>>> {
        self.accs
            .iter_mut()
            .map(|a| a.state(EmitTo::All).map_err(acc_error("save its state")))
            .collect()
    }

    /// Takes every group's final value.
    pub(crate) fn evaluate(&mut self) -> Result<Vec<ArrayRef>> {
        self.accs
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All).map_err(acc_error("evaluate")))
            .collect()
    }

    pub(crate) fn size(&self) -> usize {
        self.accs.iter().map(|a| a.size()).sum()
    }
}

/// The output fields of `aggs`.
pub(crate) fn output_fields(aggs: &[CompiledAggregate]) -> Vec<Field> {
    aggs.iter().map(|a| a.field().as_ref().clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("price", DataType::Int64, true),
            Field::new("score", DataType::Float64, true),
        ]))
    }

    fn run(sql: &str) -> ArrayRef {
        let s = schema();
        let agg = compile_aggregate(sql, &s).expect(sql);
        let batch = RecordBatch::try_new(
            s,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "a"])),
                Arc::new(Int64Array::from(vec![Some(1), Some(5), None, Some(3)])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            ],
        )
        .expect("batch");
        let mut accs = Accumulators::new(std::slice::from_ref(&agg)).expect("acc");
        let input = agg.evaluate(&batch).expect("eval");
        accs.update(std::slice::from_ref(&input), &[0, 1, 0, 0], 2)
            .expect("update");
        // Through the intermediate state, as panes and checkpoints go.
        let state = accs.take_state().expect("state");
        let mut merged = Accumulators::new(std::slice::from_ref(&agg)).expect("acc");
        merged.merge(&state, &[0, 1], 2).expect("merge");
        merged.evaluate().expect("evaluate").remove(0)
    }

    #[test]
    fn sql_aggregates_run_through_datafusion_accumulators() {
        let count = run("count(*) AS n");
        assert_eq!(
            count.as_primitive::<arrow::datatypes::Int64Type>().values(),
            &[3, 1]
        );
        let sum = run("sum(price)");
        let sum = sum.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!((sum.value(0), sum.value(1)), (4, 5));
        let avg = run("avg(price)");
        assert_eq!(
            avg.as_primitive::<arrow::datatypes::Float64Type>().value(0),
            2.0
        );
        let max = run("max(price) FILTER (WHERE score < 3.5)");
        assert_eq!(
            max.as_primitive::<arrow::datatypes::Int64Type>().value(0),
            1
        );
        let distinct = run("count(DISTINCT price)");
        assert_eq!(
            distinct
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            2
        );
        for sql in [
            "stddev(score)",
            "var(score)",
            "approx_distinct(price)",
            "bool_and(score > 0)",
            "first_value(price ORDER BY score DESC)",
            "array_agg(price)",
            "min(k)",
        ] {
            assert_eq!(run(sql).len(), 2, "{sql}");
        }
        let first = run("first_value(price ORDER BY score DESC)");
        assert_eq!(
            first.as_primitive::<arrow::datatypes::Int64Type>().value(0),
            3
        );
        let p = run("approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY score)");
        assert_eq!(
            p.as_primitive::<arrow::datatypes::Float64Type>().value(1),
            2.0
        );
    }

    #[test]
    fn non_aggregates_and_unknown_columns_are_config_errors() {
        let e = compile_aggregate("price + 1", &schema()).expect_err("not an aggregate");
        assert!(e.message().contains("is not an aggregate"), "{e}");
        let e = compile_aggregate("sum(nope)", &schema()).expect_err("unknown column");
        assert!(
            e.message().contains("nope")
                && e.message().contains("available columns: k, price, score"),
            "{e}"
        );
        let agg = compile_aggregate("sum(price) AS total", &schema()).expect("sum");
        assert_eq!(agg.name(), "total");
        assert_eq!(agg.columns().into_iter().collect::<Vec<_>>(), ["price"]);
    }
}
