//! weir's planner: turns a pipeline into the runtime's job graph.
//!
//! A front end builds a [`graph::LogicalGraph`], the pipeline as a value: [`spec`] parses the
//! YAML (with `--set` overrides and `${VAR}`s, errors pointing at the offending key) and [`yaml`]
//! turns it into a graph; the graph's JSON form (`docs/logical-graph.md`) and its builder serve other
//! front ends. [`kinds`] registers every step kind weir ships in a
//! [`weir_runtime::kind::Registry`] (one line each). [`plan`] checks the graph, computes every
//! node's schema, applies the rewrites (fusion, projection pushdown) and makes the runtime's
//! [`weir_runtime::JobGraph`] when the job starts; [`explain`] renders a plan.
//!
//! Invariant: planning has no side effects. It may read file metadata (Parquet footers, the first
//! lines of CSV/JSON files, model inputs) to learn schemas; it registers nothing, starts nothing
//! and writes nothing. Services are made by the job-start function, [`Plan::start`].

#![warn(missing_docs)]

pub mod explain;
pub mod graph;
pub mod kinds;
pub mod plan;
pub mod services;
pub mod spec;
pub mod stale;
pub mod yaml;

pub use graph::LogicalGraph;
pub use plan::{
    CheckpointPlan, Job, Plan, PlanOptions, PlannedStep, Restart, graph_file, plan_file,
    plan_graph, plan_str, plan_str_with, yaml_graph,
};
pub use spec::ErrorBudget;
