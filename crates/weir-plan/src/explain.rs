//! Rendering a plan: `weir validate`'s listing of the nodes with their schemas and tasks, and
//! `weir explain`'s logical graph, rewrites and physical plan, as text or as JSON.

use crate::plan::Plan;
use serde::Serialize;
use std::fmt::Write;
use weir_types::{Error, Result};

/// The physical plan in `weir explain --json`.
#[derive(Debug, Serialize)]
struct PhysicalJson {
    /// Tasks (chains of nodes run together), in topological order.
    tasks: Vec<TaskJson>,
    /// Channels between tasks.
    edges: Vec<TaskEdgeJson>,
    /// The task holding the dead-letter sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_task: Option<usize>,
}

#[derive(Debug, Serialize)]
struct TaskJson {
    task: usize,
    parallelism: u32,
    nodes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TaskEdgeJson {
    from: usize,
    to: usize,
    routing: String,
}

#[derive(Debug, Serialize)]
struct ExplainJson<'a> {
    logical: &'a crate::graph::LogicalGraph,
    physical: PhysicalJson,
}

fn schema_lines(s: &mut String, schema: &arrow::datatypes::Schema, indent: &str) {
    for f in schema.fields() {
        let null = if f.is_nullable() { "" } else { " not null" };
        let ext = f
            .extension_type_name()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let _ = writeln!(s, "{indent}{}: {}{null}{ext}", f.name(), f.data_type());
    }
}

impl Plan {
    /// The plan rendered for `weir validate`: each node with its schema, then the task chains.
    pub fn describe(&self) -> Result<String> {
        let mut s = String::new();
        let _ = writeln!(s, "steps:");
        for st in &self.steps {
            let _ = writeln!(
                s,
                "  {} ({}: {}) x{}",
                st.name,
                st.role.key(),
                st.description,
                st.parallelism
            );
            if let Some(schema) = &st.schema {
                schema_lines(&mut s, schema, "      ");
            }
        }
        let (graph, physical) = self.physical()?;
        s.push_str(&physical.describe(&graph));
        Ok(s)
    }

    /// The plan rendered for `weir explain`: the planned logical graph (nodes with kind,
    /// parallelism and output schema; edges with routing; services), the rewrites applied, and
    /// the physical plan (tasks, chains, edges, parallelism).
    pub fn explain(&self) -> Result<String> {
        let g = &self.logical;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "logical graph (job '{}', version {}):",
            g.job.name, g.version
        );
        let _ = writeln!(s, "  nodes:");
        for (node, st) in g.nodes.iter().zip(&self.steps) {
            let _ = writeln!(
                s,
                "    {} ({}) x{}: {}",
                node.name,
                node.kind_label(),
                st.parallelism,
                st.description
            );
            if let Some(schema) = &node.schema {
                schema_lines(&mut s, schema, "        ");
            }
        }
        let _ = writeln!(s, "  edges:");
        if g.edges.is_empty() {
            let _ = writeln!(s, "    none");
        }
        for e in &g.edges {
            let port = if e.port > 0 {
                format!(" (input {})", e.port)
            } else {
                String::new()
            };
            let _ = writeln!(s, "    {} -> {}{port}: {}", e.from, e.to, e.routing);
        }
        if let Some(dl) = &g.job.dead_letter {
            let _ = writeln!(s, "  dead letters: to {dl}");
        }
        if !g.services.is_empty() {
            let _ = writeln!(s, "  services:");
            for v in &g.services {
                let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                let model = v.get("model").and_then(|n| n.as_str()).unwrap_or("?");
                let _ = writeln!(s, "    {name}: model {model} (started with the job)");
            }
        }
        let _ = writeln!(s, "rewrites:");
        if g.rewrites.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for r in &g.rewrites {
            let rule = serde_json::to_value(r.rule)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(s, "  {rule}: {}", r.detail);
        }
        let _ = writeln!(s, "physical plan:");
        let (graph, physical) = self.physical()?;
        for line in physical.describe(&graph).lines() {
            let _ = writeln!(s, "  {line}");
        }
        Ok(s)
    }

    /// [`explain`](Plan::explain) as JSON: `{"logical": <the planned graph>, "physical": {"tasks":
    /// [{"task", "parallelism", "nodes"}], "edges": [{"from", "to", "routing"}],
    /// "dead_letter_task"}}` (see `docs/plan-json.md`).
    pub fn explain_json(&self) -> Result<String> {
        let (graph, physical) = self.physical()?;
        let json = ExplainJson {
            logical: &self.logical,
            physical: PhysicalJson {
                tasks: physical
                    .chains
                    .iter()
                    .enumerate()
                    .map(|(i, c)| TaskJson {
                        task: i,
                        parallelism: c.parallelism,
                        nodes: c
                            .nodes
                            .iter()
                            .map(|&n| graph.nodes[n].name.clone())
                            .collect(),
                    })
                    .collect(),
                edges: physical
                    .edges
                    .iter()
                    .map(|e| TaskEdgeJson {
                        from: e.from,
                        to: e.to,
                        routing: e.partitioning.to_string(),
                    })
                    .collect(),
                dead_letter_task: physical.dead_letter,
            },
        };
        serde_json::to_string_pretty(&json)
            .map_err(|e| Error::internal("cannot serialise the plan").with_source(e))
    }
}
