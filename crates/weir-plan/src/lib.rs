//! weir's planner: turns a YAML pipeline spec into the runtime's job graph.
//!
//! [`spec`] parses the YAML (with `--set` overrides) and points errors at the offending key;
//! [`kinds`] registers every step kind weir ships in a [`weir_runtime::kind::Registry`] (one line
//! each); [`plan`] checks schemas step by step and builds the [`weir_runtime::JobGraph`].
//!
//! Invariant: planning runs nothing; it may read file metadata (Parquet footers, the first lines of
//! CSV/JSON files) to learn schemas.

#![warn(missing_docs)]

pub mod kinds;
pub mod plan;
pub mod services;
pub mod spec;

pub use plan::{
    CheckpointPlan, Plan, PlanOptions, PlannedStep, Restart, plan_file, plan_str, plan_str_with,
};
pub use spec::ErrorBudget;
