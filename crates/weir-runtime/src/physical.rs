//! Physical planning: which nodes share a task (chaining) and how each edge is routed.
//!
//! A forward edge between nodes of equal parallelism, where the producer has no other output and the
//! consumer no other input, is chained: both run in one task and batches pass by function call, not
//! through a channel. A forward edge between unequal parallelisms is routed as rebalance.

use crate::graph::{JobGraph, NodeId, NodeKind, Partitioning};
use std::fmt::Write;
use weir_types::Result;

/// A chain of nodes run by one task per subtask; the head may be a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Nodes, head first; each feeds the next by a forward edge.
    pub nodes: Vec<NodeId>,
    /// The common parallelism.
    pub parallelism: u32,
}

/// An edge between two chains, routed by a channel per pair of subtasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEdge {
    /// Producing chain (its last node produces).
    pub from: usize,
    /// Consuming chain (its head consumes).
    pub to: usize,
    /// Routing, after forward edges of unequal parallelism became rebalance.
    pub partitioning: Partitioning,
    /// Which input of the consuming chain's head node this edge is (its index among that node's
    /// input edges, in the order they were added): what [`OperatorContext::input`] says.
    ///
    /// [`OperatorContext::input`]: crate::OperatorContext::input
    pub input: usize,
}

/// The physical plan: chains and the edges between them.
#[derive(Debug, Clone)]
pub struct PhysicalPlan {
    /// Chains in topological order.
    pub chains: Vec<Chain>,
    /// Edges between chains.
    pub edges: Vec<ChainEdge>,
    /// The chain holding the dead-letter sink, if any.
    pub dead_letter: Option<usize>,
}

/// Plans `graph` into chains. The graph is validated first.
pub fn plan(graph: &JobGraph) -> Result<PhysicalPlan> {
    graph.validate()?;
    let order = graph.topological_order()?;
    let chains_into = |from: NodeId, to: NodeId, p: &Partitioning| -> bool {
        let (a, b) = (&graph.nodes[from], &graph.nodes[to]);
        *p == Partitioning::Forward
            && a.parallelism == b.parallelism
            && a.chainable
            && b.chainable
            && graph.outputs(from).count() == 1
            && graph.inputs(to).count() == 1
            && graph.dead_letter != Some(to)
            && !matches!(b.kind, NodeKind::Source(_))
    };
    let mut chain_of = vec![usize::MAX; graph.nodes.len()];
    let mut chains: Vec<Chain> = Vec::new();
    for &n in &order {
        let upstream = graph.inputs(n).next().map(|(_, e)| e.clone());
        match upstream {
            Some(e) if graph.inputs(n).count() == 1 && chains_into(e.from, n, &e.partitioning) => {
                let c = chain_of[e.from];
                chains[c].nodes.push(n);
                chain_of[n] = c;
            }
            _ => {
                chain_of[n] = chains.len();
                chains.push(Chain {
                    nodes: vec![n],
                    parallelism: graph.nodes[n].parallelism,
                });
            }
        }
    }
    let mut edges = Vec::new();
    let mut inputs_seen = vec![0usize; graph.nodes.len()];
    for e in &graph.edges {
        let input = inputs_seen[e.to];
        inputs_seen[e.to] += 1;
        let (from, to) = (chain_of[e.from], chain_of[e.to]);
        if from == to {
            continue;
        }
        let partitioning = match &e.partitioning {
            Partitioning::Forward if chains[from].parallelism != chains[to].parallelism => {
                Partitioning::Rebalance
            }
            p => p.clone(),
        };
        edges.push(ChainEdge {
            from,
            to,
            partitioning,
            input,
        });
    }
    Ok(PhysicalPlan {
        chains,
        edges,
        dead_letter: graph.dead_letter.map(|d| chain_of[d]),
    })
}

impl PhysicalPlan {
    /// A human-readable rendering: one line per task chain, then the edges.
    pub fn describe(&self, graph: &JobGraph) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "job '{}': {} task chain(s)",
            graph.config.name,
            self.chains.len()
        );
        for (i, c) in self.chains.iter().enumerate() {
            let names: Vec<String> = c
                .nodes
                .iter()
                .map(|&n| {
                    let node = &graph.nodes[n];
                    if node.description.is_empty() {
                        node.name.clone()
                    } else {
                        format!("{} [{}]", node.name, node.description)
                    }
                })
                .collect();
            let dl = if self.dead_letter == Some(i) {
                "  (dead-letter output)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  task {i} x{}: {}{dl}",
                c.parallelism,
                names.join(" -> ")
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  edge task {} -> task {}: {}",
                e.from, e.to, e.partitioning
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::JobConfig;
    use crate::operator::{Emitter, Operator, OperatorContext};
    use crate::source::{Source, SourceEvent};
    use arrow::datatypes::{Schema, SchemaRef};
    use arrow::record_batch::RecordBatch;
    use async_trait::async_trait;
    use std::sync::Arc;

    struct Nothing;
    #[async_trait]
    impl Source for Nothing {
        fn schema(&self) -> SchemaRef {
            Arc::new(Schema::empty())
        }
        async fn next(&mut self, _: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
            Ok(SourceEvent::Finished)
        }
    }
    struct Pass;
    #[async_trait]
    impl Operator for Pass {
        async fn process_batch(
            &mut self,
            b: RecordBatch,
            _: &mut OperatorContext,
            out: &mut Emitter,
        ) -> weir_types::Result<()> {
            out.emit(b);
            Ok(())
        }
    }

    fn graph(pars: &[u32], parts: &[Partitioning]) -> JobGraph {
        let mut g = JobGraph::new(JobConfig::default());
        let mut prev = g.add_source("src", pars[0], |_| Ok(Box::new(Nothing)));
        for (i, p) in pars[1..].iter().enumerate() {
            let last = i + 2 == pars.len();
            let name = format!("n{i}");
            let id = if last {
                g.add_sink(&name, *p, |_| Ok(Box::new(Pass)))
            } else {
                g.add_operator(&name, *p, |_| Ok(Box::new(Pass)))
            };
            g.connect(prev, id, parts[i].clone());
            prev = id;
        }
        g
    }

    #[test]
    fn forward_edges_of_equal_parallelism_chain() {
        let g = graph(&[2, 2, 2], &[Partitioning::Forward, Partitioning::Forward]);
        let p = plan(&g).expect("plan");
        assert_eq!(p.chains.len(), 1);
        assert_eq!(p.chains[0].nodes, vec![0, 1, 2]);
    }

    #[test]
    fn unequal_parallelism_and_shuffles_break_chains() {
        let g = graph(
            &[1, 4, 4, 2],
            &[
                Partitioning::Forward,
                Partitioning::Hash {
                    keys: vec!["k".into()],
                },
                Partitioning::Forward,
            ],
        );
        let p = plan(&g).expect("plan");
        assert_eq!(p.chains.len(), 4);
        assert_eq!(p.edges[0].partitioning, Partitioning::Rebalance);
        assert_eq!(
            p.edges[1].partitioning,
            Partitioning::Hash {
                keys: vec!["k".into()]
            }
        );
        assert!(p.describe(&g).contains("hash(k)"));
    }

    #[test]
    fn a_cycle_is_refused() {
        let mut g = graph(&[1, 1, 1], &[Partitioning::Forward, Partitioning::Forward]);
        g.connect(1, 1, Partitioning::Forward);
        let err = plan(&g).expect_err("cycle");
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn an_operator_without_a_sink_is_refused() {
        let mut g = JobGraph::new(JobConfig::default());
        let s = g.add_source("src", 1, |_| Ok(Box::new(Nothing)));
        let o = g.add_operator("dangling", 1, |_| Ok(Box::new(Pass)));
        g.connect(s, o, Partitioning::Forward);
        let err = plan(&g).expect_err("no sink");
        assert!(
            err.to_string().contains("'dangling' has no output"),
            "{err}"
        );
    }
}
