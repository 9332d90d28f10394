//! The step kinds of this crate (`op: aggregate`, `top_n`, `interval_join`, `join`,
//! `window_join`, `lookup_join`) under weir-runtime's step-kind contract
//! ([`weir_runtime::kind`]): each spec's planning and creating calls, which inputs it reads, and
//! the columns each input is hash-routed by ([`OperatorSpec::input_keys`]) so that a key's rows
//! and its state meet in one instance. Registered in `weir_plan::kinds::builtin`.

use crate::{AggregateSpec, IntervalJoinSpec, JoinSpec, LookupJoinSpec, TopNSpec, WindowJoinSpec};
use arrow::datatypes::SchemaRef;
use std::ops::RangeInclusive;
use weir_runtime::Operator;
use weir_runtime::kind::{CreateContext, Need, OperatorSpec, PlanContext, Spec, first_input};
use weir_types::Result;

impl Spec for AggregateSpec {
    fn describe(&self) -> String {
        AggregateSpec::describe(self)
    }

    /// Without keys (and without column windows) all groups are one instance's state.
    fn single_instance(&self) -> bool {
        self.partition_keys().is_none()
    }
}

impl OperatorSpec for AggregateSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        AggregateSpec::output_schema(self, first_input(inputs)?)
    }

    fn input_need(&self, inputs: &[SchemaRef], _out: &Need) -> Result<Vec<Need>> {
        Ok(vec![Need::Columns(
            self.required_columns(first_input(inputs)?)?,
        )])
    }

    fn input_keys(&self, _input: usize) -> Option<Vec<String>> {
        Some(self.partition_keys().unwrap_or_default())
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        AggregateSpec::create(self, ctx.input()?)
    }
}

impl Spec for TopNSpec {
    fn describe(&self) -> String {
        TopNSpec::describe(self)
    }

    fn single_instance(&self) -> bool {
        self.partition_keys().is_none()
    }
}

impl OperatorSpec for TopNSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        TopNSpec::output_schema(self, first_input(inputs)?)
    }

    fn input_keys(&self, _input: usize) -> Option<Vec<String>> {
        Some(self.partition_keys().unwrap_or_default())
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        TopNSpec::create(self, ctx.input()?)
    }
}

/// The two inputs of a join, left then right.
const TWO: RangeInclusive<usize> = 2..=2;

impl Spec for IntervalJoinSpec {
    fn describe(&self) -> String {
        IntervalJoinSpec::describe(self)
    }
}

impl OperatorSpec for IntervalJoinSpec {
    fn arity(&self) -> RangeInclusive<usize> {
        TWO
    }

    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        IntervalJoinSpec::output_schema(self, inputs)
    }

    fn input_keys(&self, input: usize) -> Option<Vec<String>> {
        self.on.partition_keys().get(input).cloned()
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        IntervalJoinSpec::create(self, ctx.inputs())
    }
}

impl Spec for JoinSpec {
    fn describe(&self) -> String {
        JoinSpec::describe(self)
    }
}

impl OperatorSpec for JoinSpec {
    fn arity(&self) -> RangeInclusive<usize> {
        TWO
    }

    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        JoinSpec::output_schema(self, inputs)
    }

    fn input_keys(&self, input: usize) -> Option<Vec<String>> {
        self.on.partition_keys().get(input).cloned()
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        JoinSpec::create(self, ctx.inputs())
    }
}

impl Spec for WindowJoinSpec {
    fn describe(&self) -> String {
        WindowJoinSpec::describe(self)
    }
}

impl OperatorSpec for WindowJoinSpec {
    fn arity(&self) -> RangeInclusive<usize> {
        TWO
    }

    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        WindowJoinSpec::output_schema(self, inputs)
    }

    fn input_keys(&self, input: usize) -> Option<Vec<String>> {
        self.partition_keys().get(input).cloned()
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        WindowJoinSpec::create(self, ctx.inputs())
    }
}

impl Spec for LookupJoinSpec {
    fn describe(&self) -> String {
        LookupJoinSpec::describe(self)
    }
}

/// Every instance reads the whole table, so the input keeps its routing.
impl OperatorSpec for LookupJoinSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> Result<SchemaRef> {
        LookupJoinSpec::output_schema(self, first_input(inputs)?)
    }

    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>> {
        LookupJoinSpec::create(self, ctx.input()?)
    }
}
