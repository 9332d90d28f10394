//! The job graph the runtime executes: nodes with a parallelism and a factory for their running
//! instances, and edges with a partitioning. `weir-plan` builds it from a spec; Rust users may build
//! it directly with [`JobGraph::add_source`], [`JobGraph::add_operator`] and [`JobGraph::connect`].

use crate::operator::{ErrorPolicy, Operator, TaskInfo};
use crate::source::Source;
use std::fmt;
use std::sync::Arc;
use weir_types::{Error, Result};

/// Makes the running instance of a source for one subtask.
pub type SourceFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Source>> + Send + Sync>;
/// Makes the running instance of an operator or sink for one subtask.
pub type OperatorFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync>;

/// Index of a node in its [`JobGraph`].
pub type NodeId = usize;

/// How rows travel along an edge from the producer's subtasks to the consumer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Subtask *i* sends to subtask *i*; needs equal parallelism (otherwise planned as rebalance).
    Forward,
    /// Batches go round robin to all consumer subtasks.
    Rebalance,
    /// Rows go to the subtask owning the key group of their key columns.
    Hash {
        /// Key column names.
        keys: Vec<String>,
    },
    /// Every batch goes to every consumer subtask.
    Broadcast,
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Forward => write!(f, "forward"),
            Partitioning::Rebalance => write!(f, "rebalance"),
            Partitioning::Hash { keys } => write!(f, "hash({})", keys.join(", ")),
            Partitioning::Broadcast => write!(f, "broadcast"),
        }
    }
}

/// What a node runs.
#[derive(Clone)]
pub enum NodeKind {
    /// A source: no inputs.
    Source(SourceFactory),
    /// An operator: inputs and outputs.
    Operator(OperatorFactory),
    /// A sink: inputs, no outputs.
    Sink(OperatorFactory),
}

/// A node of the job graph.
#[derive(Clone)]
pub struct Node {
    /// Unique name, used in metrics and errors.
    pub name: String,
    /// A one-line description for `weir validate` (kind and main options).
    pub description: String,
    /// What it runs.
    pub kind: NodeKind,
    /// Number of parallel instances (at least 1).
    pub parallelism: u32,
    /// Whether the node may share a task with its forward neighbours.
    pub chainable: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parallelism", &self.parallelism)
            .finish()
    }
}

/// A directed edge.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Producer.
    pub from: NodeId,
    /// Consumer.
    pub to: NodeId,
    /// How rows are routed.
    pub partitioning: Partitioning,
}

/// Job-wide settings the runtime needs.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The job's name.
    pub name: String,
    /// What to do with bad rows.
    pub error_policy: ErrorPolicy,
    /// Number of key groups; the upper bound for any keyed node's parallelism.
    pub max_parallelism: u32,
    /// Capacity of each channel in bytes.
    pub channel_capacity_bytes: usize,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "job".into(),
            error_policy: ErrorPolicy::Fail,
            max_parallelism: 128,
            channel_capacity_bytes: 16 << 20,
        }
    }
}

/// A dataflow graph ready to run.
#[derive(Debug, Clone, Default)]
pub struct JobGraph {
    /// Nodes, in the order they were added.
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
    /// The sink that receives every dead-letter row, if any.
    pub dead_letter: Option<NodeId>,
    /// Job-wide settings.
    pub config: JobConfig,
}

impl JobGraph {
    /// An empty graph with `config`.
    pub fn new(config: JobConfig) -> Self {
        JobGraph {
            config,
            ..Default::default()
        }
    }

    fn add(&mut self, name: &str, kind: NodeKind, parallelism: u32) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            description: String::new(),
            kind,
            parallelism: parallelism.max(1),
            chainable: true,
        });
        self.nodes.len() - 1
    }

    /// Adds a source node.
    pub fn add_source(
        &mut self,
        name: &str,
        parallelism: u32,
        factory: impl Fn(&TaskInfo) -> Result<Box<dyn Source>> + Send + Sync + 'static,
    ) -> NodeId {
        self.add(name, NodeKind::Source(Arc::new(factory)), parallelism)
    }

    /// Adds an operator node.
    pub fn add_operator(
        &mut self,
        name: &str,
        parallelism: u32,
        factory: impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static,
    ) -> NodeId {
        self.add(name, NodeKind::Operator(Arc::new(factory)), parallelism)
    }

    /// Adds a sink node.
    pub fn add_sink(
        &mut self,
        name: &str,
        parallelism: u32,
        factory: impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static,
    ) -> NodeId {
        self.add(name, NodeKind::Sink(Arc::new(factory)), parallelism)
    }

    /// Connects `from` to `to`.
    pub fn connect(&mut self, from: NodeId, to: NodeId, partitioning: Partitioning) {
        self.edges.push(Edge {
            from,
            to,
            partitioning,
        });
    }

    /// Inputs of `node`, as edge indices.
    pub fn inputs(&self, node: NodeId) -> impl Iterator<Item = (usize, &Edge)> {
        self.edges
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.to == node)
    }

    /// Outputs of `node`, as edge indices.
    pub fn outputs(&self, node: NodeId) -> impl Iterator<Item = (usize, &Edge)> {
        self.edges
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.from == node)
    }

    /// Checks the shape of the graph: names unique, sources without inputs, sinks without outputs,
    /// every other node connected both ways, no cycles, parallelism within bounds.
    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (id, n) in self.nodes.iter().enumerate() {
            if !names.insert(n.name.as_str()) {
                return Err(Error::config(format!("two nodes are named '{}'", n.name)));
            }
            if n.parallelism > self.config.max_parallelism {
                return Err(Error::config(format!(
                    "node '{}' has parallelism {} above max_parallelism {}",
                    n.name, n.parallelism, self.config.max_parallelism
                )));
            }
            let n_in = self.inputs(id).count();
            let n_out = self.outputs(id).count();
            match n.kind {
                NodeKind::Source(_) if n_in > 0 => {
                    return Err(Error::config(format!(
                        "source '{}' cannot have inputs",
                        n.name
                    )));
                }
                NodeKind::Sink(_) if n_out > 0 => {
                    return Err(Error::config(format!(
                        "sink '{}' cannot have outputs",
                        n.name
                    )));
                }
                NodeKind::Operator(_) | NodeKind::Sink(_)
                    if n_in == 0 && self.dead_letter != Some(id) =>
                {
                    return Err(Error::config(format!("node '{}' has no input", n.name)));
                }
                NodeKind::Source(_) | NodeKind::Operator(_) if n_out == 0 => {
                    return Err(Error::config(format!(
                        "node '{}' has no output: connect it to a sink",
                        n.name
                    )));
                }
                _ => {}
            }
        }
        if let Some(dl) = self.dead_letter
            && !matches!(self.nodes.get(dl).map(|n| &n.kind), Some(NodeKind::Sink(_)))
        {
            return Err(Error::config("the dead-letter output must be a sink"));
        }
        self.topological_order().map(|_| ())
    }

    /// Node ids in an order where every edge points forward; an error names a node on a cycle.
    pub fn topological_order(&self) -> Result<Vec<NodeId>> {
        let mut indegree = vec![0usize; self.nodes.len()];
        for e in &self.edges {
            indegree[e.to] += 1;
        }
        let mut ready: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| indegree[i] == 0)
            .collect();
        ready.reverse();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(n) = ready.pop() {
            order.push(n);
            for e in self.edges.iter().filter(|e| e.from == n) {
                indegree[e.to] -= 1;
                if indegree[e.to] == 0 {
                    ready.push(e.to);
                }
            }
        }
        if order.len() != self.nodes.len() {
            let on_cycle = (0..self.nodes.len())
                .find(|i| indegree[*i] > 0)
                .unwrap_or(0);
            return Err(Error::config(format!(
                "the graph has a cycle through node '{}'",
                self.nodes[on_cycle].name
            )));
        }
        Ok(order)
    }
}
