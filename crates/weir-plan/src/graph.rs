//! The logical graph: a pipeline as a value. Every front end builds one (the YAML spec through
//! [`crate::spec`], the Python API and SQL later, or anyone through its JSON form or the builder
//! below); the planner checks it, rewrites it (projection pushdown, fusion) and makes the runtime's
//! physical plan from it.
//!
//! A graph is job options, the services the job declares, nodes (each a step kind of a role with
//! its spec as a JSON value) and edges (producer, consumer, input port, routing). It serialises
//! with serde; `docs/logical-graph.md` documents the JSON form. What planning works out (each node's
//! description and output schema, the rewrites applied) is written into the planned graph too, so
//! `weir explain --json` shows it; those fields are ignored when a graph is read and planned.
//!
//! ```
//! use weir_plan::graph::{LogicalGraph, Node, Routing};
//! use weir_runtime::kind::Role;
//!
//! let mut g = LogicalGraph::new("orders");
//! g.add(Node::new("read", Role::Source, "csv", serde_json::json!({"path": "orders.csv"})))
//!     .add(Node::new("keep", Role::Op, "filter", serde_json::json!({"predicate": "amount > 10"})))
//!     .add(Node::new("out", Role::Sink, "blackhole", serde_json::json!({})).with_parallelism(2))
//!     .connect("read", "keep")
//!     .connect_with("keep", "out", 0, Routing::Hash { keys: vec!["city".into()] });
//! let text = g.to_json()?;
//! assert_eq!(LogicalGraph::from_json(&text, "g.json")?, g);
//! # Ok::<(), weir_types::Error>(())
//! ```

use crate::spec::{OnError, RestartSpec};
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use std::fmt;
use weir_checkpoint::CheckpointConfig;
use weir_runtime::kind::Role;
use weir_types::{Error, Result};

/// The version of the graph's JSON form this weir writes and reads.
pub const VERSION: u32 = 1;

fn default_version() -> u32 {
    VERSION
}

/// A pipeline as a value. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalGraph {
    /// The version of this form ([`VERSION`]). Default: the current one.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Job-wide options.
    #[serde(default)]
    pub job: JobOptions,
    /// The model services the job declares (each a `weir_serve::ServiceSpec` as a value), which
    /// `infer` nodes call by name. They start when the job starts, not when it is planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// The nodes, each named uniquely.
    pub nodes: Vec<Node>,
    /// The edges between nodes.
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Written by planning: the rewrites applied, in order. Ignored when read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<Rewrite>,
}

fn default_name() -> String {
    "pipeline".into()
}
fn default_parallelism() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    128
}
fn default_channel_capacity() -> String {
    "16MiB".into()
}

/// Job-wide options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    /// The job's name, used in logs and default file names. Default `pipeline`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Parallelism of every node that does not set its own. Default 1.
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Number of key groups: the upper bound of any node's parallelism. Default 128.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// `fail` (default) or `dead_letter`.
    #[serde(default)]
    pub on_error: OnError,
    /// With `on_error: dead_letter`: the name of the sink node (without inputs) that receives
    /// the dead-letter rows. Default: a `jsonl` sink writing `<name>.dead-letter.jsonl`, added by
    /// planning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Bytes each channel between two tasks may hold before the producer waits. Default `16MiB`.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: String,
    /// Checkpoints; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointOptions>,
    /// Restarts after a failure; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// How many dead letters fail the run. Default `{max_fraction: 0.5, min_rows: 1000}`.
    #[serde(default)]
    pub error_budget: crate::spec::ErrorBudget,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            name: default_name(),
            parallelism: default_parallelism(),
            max_parallelism: default_max_parallelism(),
            on_error: OnError::default(),
            dead_letter: None,
            channel_capacity: default_channel_capacity(),
            checkpoint: None,
            restart: None,
            error_budget: Default::default(),
        }
    }
}

/// Where and how a job checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointOptions {
    /// A directory or object-store URL. Default `.weir/checkpoints/<job name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Explicit object-store options for `store` (object_store keys such as `aws_endpoint`), which
    /// win over the environment. Default none.
    #[serde(default, skip_serializing_if = "storage_is_empty")]
    pub storage: weir_store::StorageOptions,
    /// Interval, timeout, mode, retention (defaults: see `weir_checkpoint::CheckpointConfig`).
    #[serde(default)]
    pub config: CheckpointConfig,
}

fn storage_is_empty(s: &weir_store::StorageOptions) -> bool {
    s.0.is_empty()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One step of the pipeline: a registered kind of a role, with its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique in the graph; names the node in metrics, errors and edges.
    pub name: String,
    /// `source`, `op` or `sink`.
    pub role: Role,
    /// The kind (`filter` of `op: filter`).
    pub kind: String,
    /// The kind's options, as the kind parses them. Default `{}`.
    #[serde(default = "empty_object")]
    pub spec: serde_json::Value,
    /// Instances; default the job's `parallelism` (a kind that must run alone runs as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Sources only: the event-time column and how watermarks are made from it (`watermark:` in
    /// YAML). Default: none (the source emits no watermarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<weir_runtime::WatermarkSpec>,
    /// Written by planning: one line saying what the node does. Ignored when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Written by planning: the output schema (none for sinks), as arrow-schema serialises it
    /// (extension types survive in the field metadata). Ignored when read.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "schema_json")]
    pub schema: Option<SchemaRef>,
}

impl Node {
    /// A node of kind `role: kind` with spec `spec` (an object of the kind's options).
    pub fn new(
        name: impl Into<String>,
        role: Role,
        kind: impl Into<String>,
        spec: serde_json::Value,
    ) -> Self {
        Node {
            name: name.into(),
            role,
            kind: kind.into(),
            spec,
            parallelism: None,
            watermark: None,
            description: None,
            schema: None,
        }
    }

    /// A node whose spec is a typed spec value (`FilterSpec { .. }`).
    pub fn of<T: Serialize>(
        name: impl Into<String>,
        role: Role,
        kind: impl Into<String>,
        spec: &T,
    ) -> Result<Self> {
        let value = serde_json::to_value(spec)
            .map_err(|e| Error::config("cannot serialise a node's spec").with_source(e))?;
        Ok(Node::new(name, role, kind, value))
    }

    /// With its own parallelism.
    pub fn with_parallelism(mut self, parallelism: u32) -> Self {
        self.parallelism = Some(parallelism);
        self
    }

    /// `role: kind` for messages.
    pub fn kind_label(&self) -> String {
        format!("{}: {}", self.role, self.kind)
    }
}

/// How rows travel along an edge from the producer's instances to the consumer's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Instance *i* to instance *i* (chained into one task when the parallelisms are equal;
    /// routed as rebalance otherwise). The default.
    #[default]
    Forward,
    /// Batches round robin to every consumer instance.
    Rebalance,
    /// Rows by key: equal keys go to the same consumer instance.
    Hash {
        /// Key columns (of the producer's output).
        keys: Vec<String>,
    },
    /// Every batch to every consumer instance.
    Broadcast,
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::Forward => write!(f, "forward"),
            Routing::Rebalance => write!(f, "rebalance"),
            Routing::Hash { keys } => write!(f, "hash({})", keys.join(", ")),
            Routing::Broadcast => write!(f, "broadcast"),
        }
    }
}

/// A directed edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// The producing node's name.
    pub from: String,
    /// The consuming node's name.
    pub to: String,
    /// Which input of the consumer (0 for the first; a node's inputs are numbered 0, 1, ...
    /// without gaps, and their order matters for kinds such as joins). Default 0.
    #[serde(default)]
    pub port: usize,
    /// How rows are routed. Default `forward`.
    #[serde(default)]
    pub routing: Routing,
}

/// A rewrite planning applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewriteRule {
    /// A source reads only the columns its consumers read.
    ProjectionPushdown,
    /// Several nodes became one node doing their work together.
    Fusion,
}

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Which rule.
    pub rule: RewriteRule,
    /// The nodes it concerned (for a fusion: the fused node first, then the nodes it replaced).
    pub nodes: Vec<String>,
    /// One line saying what changed.
    pub detail: String,
}

impl LogicalGraph {
    /// An empty graph for job `name` with default options.
    pub fn new(name: impl Into<String>) -> Self {
        LogicalGraph {
            version: VERSION,
            job: JobOptions {
                name: name.into(),
                ..JobOptions::default()
            },
            services: Vec::new(),
            nodes: Vec::new(),
            edges: Vec::new(),
            rewrites: Vec::new(),
        }
    }

    /// Adds a node.
    pub fn add(&mut self, node: Node) -> &mut Self {
        self.nodes.push(node);
        self
    }

    /// Adds a forward edge from `from` into the first input of `to`.
    pub fn connect(&mut self, from: &str, to: &str) -> &mut Self {
        self.connect_with(from, to, 0, Routing::Forward)
    }

    /// Adds an edge from `from` into input `port` of `to`, routed by `routing`.
    pub fn connect_with(
        &mut self,
        from: &str,
        to: &str,
        port: usize,
        routing: Routing,
    ) -> &mut Self {
        self.edges.push(Edge {
            from: from.into(),
            to: to.into(),
            port,
            routing,
        });
        self
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The graph as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::internal("cannot serialise the logical graph").with_source(e))
    }

    /// Reads a graph from its JSON form; `origin` names it in errors, which name the key path.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("{origin} is not valid JSON: {e}")))?;
        let graph: LogicalGraph = weir_runtime::kind::from_value(value, origin)?;
        if graph.version != VERSION {
            return Err(Error::config(format!(
                "{origin}: key 'version': this weir reads version {VERSION} of the graph, found {}",
                graph.version
            )));
        }
        Ok(graph)
    }
}

/// Serde of an optional Arrow schema in arrow-schema's own form, written through a JSON value so
/// that its metadata maps come out in key order (the same text every time).
mod schema_json {
    use arrow_schema::{Schema, SchemaRef};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(schema: &Option<SchemaRef>, s: S) -> Result<S::Ok, S::Error> {
        match schema {
            None => s.serialize_none(),
            Some(schema) => serde_json::to_value(schema.as_ref())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SchemaRef>, D::Error> {
        Ok(Option::<Schema>::deserialize(d)?.map(Arc::new))
    }
}
