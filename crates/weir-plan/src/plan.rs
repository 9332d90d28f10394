//! From a logical graph to a plan: checks the graph (names, edges, ports, kinds and their specs),
//! computes every node's output schema (so a wrong column name fails before anything runs),
//! applies the rewrites (fusion, projection pushdown) and records them in the planned graph, and
//! makes the runtime's [`JobGraph`] when the job starts ([`Plan::start`]).
//!
//! Planning has no side effects: it parses, reads metadata (file footers, model inputs) and
//! computes; it registers nothing, starts nothing and writes nothing. The declared services are
//! made by [`Plan::start`], and reach the steps through the job's resources.

use crate::graph::{Edge, LogicalGraph, Node, Rewrite, RewriteRule, Routing, VERSION};
use crate::services::{self, Declared};
use crate::spec::{OnError, Role};
use arrow::datatypes::SchemaRef;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use weir_infer::ModelService;
use weir_runtime::event_time::WatermarkConfig;
use weir_runtime::kind::{CreateContext, JobInfo, Need, PlanContext, Registry, Resources, Step};
use weir_runtime::{ErrorPolicy, EventTimeSource, JobConfig, JobGraph, NodeId, Partitioning};
use weir_types::{Error, Result, dead_letter_schema};

/// Options given on the command line.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Parallelism for every step that does not set its own (overrides the spec's `parallelism`).
    pub parallelism: Option<u32>,
    /// `key.path=value` overrides applied to the spec before it is read.
    pub overrides: Vec<String>,
    /// Values of `${NAME}` in the spec (the environment is consulted after these).
    pub vars: HashMap<String, String>,
}

/// What the planner decided for one node.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    /// The node's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// One-line description.
    pub description: String,
    /// Its output schema (none for sinks).
    pub schema: Option<SchemaRef>,
    /// Instances.
    pub parallelism: u32,
    /// The runtime node (every planned node is one).
    pub node: Option<NodeId>,
}

/// A planned pipeline: the checked, rewritten logical graph, and what running it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The planned logical graph: rewritten, with each node's description and output schema and
    /// the rewrites applied.
    pub logical: LogicalGraph,
    /// Per-node decisions, in the planned graph's order (which is the runtime's node order).
    pub steps: Vec<PlannedStep>,
    /// Checkpoint settings, when the job checkpoints.
    pub checkpoint: Option<CheckpointPlan>,
    /// Restarts after a failure.
    pub restart: Restart,
    /// How many dead letters fail the run.
    pub error_budget: crate::spec::ErrorBudget,
    config: JobConfig,
    nodes: Vec<Bound>,
    /// (producer, consumer, routing), in each consumer's port order.
    edges: Vec<(usize, usize, Partitioning)>,
    dead_letter: Option<usize>,
    services: Vec<Declared>,
}

/// A node with its parsed spec and planned schemas.
#[derive(Debug, Clone)]
struct Bound {
    step: Step,
    inputs: Vec<SchemaRef>,
    output: Option<SchemaRef>,
    /// Sources with `watermark:`: the checked option; the running source is wrapped in an
    /// [`EventTimeSource`](weir_runtime::EventTimeSource).
    event_time: Option<WatermarkConfig>,
}

/// A started job: the runtime's graph, whose steps hold the job's services, and those services
/// (for the control endpoint and progress displays). Dropping it drops the services.
#[derive(Debug)]
pub struct Job {
    /// The graph to run (clone it for each attempt).
    pub graph: JobGraph,
    /// The services the job declared, made when it started.
    pub services: Vec<Arc<dyn ModelService>>,
}

/// Where and how a job checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    /// A directory or object-store URL.
    pub store: String,
    /// Explicit object-store options (`checkpoint.storage`), which win over the environment.
    pub storage: weir_store::StorageOptions,
    /// Interval, timeout, mode, retention.
    pub config: weir_checkpoint::CheckpointConfig,
}

/// The restart strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restart {
    /// Restarts allowed.
    pub attempts: u32,
    /// Wait before the first restart (doubled each time).
    pub backoff: std::time::Duration,
}

/// Reads and plans the pipeline at `path` with every kind weir ships: a YAML spec, or a logical
/// graph in its JSON form when the file name ends in `.json`.
pub fn plan_file(path: &Path, opts: &PlanOptions) -> Result<Plan> {
    let registry = crate::kinds::builtin();
    let graph = graph_file(&registry, path, opts)?;
    plan_graph(&registry, &graph, &path.display().to_string())
}

/// The logical graph of the pipeline at `path` (see [`plan_file`]), before planning.
pub fn graph_file(registry: &Registry, path: &Path, opts: &PlanOptions) -> Result<LogicalGraph> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read pipeline spec {}", path.display())).with_source(e)
    })?;
    let origin = path.display().to_string();
    if path.extension().is_some_and(|x| x == "json") {
        let mut graph = LogicalGraph::from_json(&text, &origin)?;
        if let Some(p) = opts.parallelism {
            graph.job.parallelism = p;
        }
        return Ok(graph);
    }
    yaml_graph(registry, &text, &origin, opts)
}

/// The logical graph of a YAML spec, before planning.
pub fn yaml_graph(
    registry: &Registry,
    yaml: &str,
    origin: &str,
    opts: &PlanOptions,
) -> Result<LogicalGraph> {
    let value = crate::spec::substitute(yaml, origin, &opts.vars)?;
    let parsed = crate::spec::parse_value(value, origin, &opts.overrides)?;
    crate::yaml::to_graph(registry, &parsed, origin, opts.parallelism)
}

/// Plans a spec given as YAML text with every kind weir ships; `origin` names it in errors.
pub fn plan_str(yaml: &str, origin: &str, opts: &PlanOptions) -> Result<Plan> {
    plan_str_with(&crate::kinds::builtin(), yaml, origin, opts)
}

/// Plans a spec given as YAML text with the kinds of `registry`.
pub fn plan_str_with(
    registry: &Registry,
    yaml: &str,
    origin: &str,
    opts: &PlanOptions,
) -> Result<Plan> {
    let graph = yaml_graph(registry, yaml, origin, opts)?;
    plan_graph(registry, &graph, origin)
}

/// Plans a logical graph with the kinds of `registry`; `origin` names it in errors.
pub fn plan_graph(registry: &Registry, graph: &LogicalGraph, origin: &str) -> Result<Plan> {
    if graph.version != VERSION {
        return Err(Error::config(format!(
            "{origin}: key 'version': this weir plans version {VERSION} of the graph, found {}",
            graph.version
        )));
    }
    let job = &graph.job;
    if job.parallelism == 0 {
        return Err(Error::config(format!(
            "{origin}: key 'parallelism': expected at least 1"
        )));
    }
    let channel_capacity = job
        .channel_capacity
        .parse::<bytesize::ByteSize>()
        .map_err(|e| {
            Error::config(format!(
                "key 'channel_capacity': expected a size like 16MiB: {e}"
            ))
        })?
        .as_u64() as usize;
    let config = JobConfig {
        name: job.name.clone(),
        error_policy: match job.on_error {
            OnError::Fail => ErrorPolicy::Fail,
            OnError::DeadLetter => ErrorPolicy::DeadLetter,
        },
        max_parallelism: job.max_parallelism,
        channel_capacity_bytes: channel_capacity,
    };
    let checkpoint = job
        .checkpoint
        .as_ref()
        .map(|c| checkpoint_plan(&job.name, c))
        .transpose()?;
    if !(0.0..=1.0).contains(&job.error_budget.max_fraction) {
        return Err(Error::config(format!(
            "{origin}: key 'error_budget.max_fraction': expected a share between 0.0 and 1.0, found {}",
            job.error_budget.max_fraction
        )));
    }
    let restart = match &job.restart {
        None => Restart::default(),
        Some(r) => Restart {
            attempts: r.attempts,
            backoff: humantime::parse_duration(&r.backoff).map_err(|e| {
                Error::config(format!(
                    "key 'restart.backoff': expected a duration like 1s: {e}"
                ))
            })?,
        },
    };
    let declared = services::check(&graph.services, origin)?;
    let mut resources = services::declarations(&declared);
    resources.insert(JobInfo::RESOURCE, job_info(&job.name, &checkpoint));

    let mut logical = graph.clone();
    logical.rewrites.clear();
    let dead_letter = dead_letter_node(&mut logical)?;
    let parse = |g: &LogicalGraph| {
        g.nodes
            .iter()
            .map(|n| {
                registry.parse(
                    n.role,
                    &n.kind,
                    n.spec.clone(),
                    &format!("{origin}: node '{}' ({})", n.name, n.kind_label()),
                )
            })
            .collect::<Result<Vec<_>>>()
    };
    let steps = parse(&logical)?;
    let mut shape = Shape::of(&logical, dead_letter.as_deref())?;
    keyed(&mut logical, &mut shape, &steps)?;
    let (shape, steps) = if fuse(&mut logical, &shape, &steps)? {
        // The rewritten graph, checked and parsed again (its fused nodes are registered kinds).
        let mut shape = Shape::of(&logical, dead_letter.as_deref())?;
        let steps = parse(&logical)?;
        keyed(&mut logical, &mut shape, &steps)?;
        (shape, steps)
    } else {
        (shape, steps)
    };

    let ctx = PlanContext::new(&resources);
    let mut bound = schemas(&logical, &shape, &steps, &ctx, &HashMap::new())?;
    let projections = pushdown(&shape, &bound)?;
    if !projections.is_empty() {
        bound = schemas(&logical, &shape, &steps, &ctx, &projections)?;
        for (&i, cols) in &projections {
            logical.rewrites.push(Rewrite {
                rule: RewriteRule::ProjectionPushdown,
                nodes: vec![logical.nodes[i].name.clone()],
                detail: format!(
                    "'{}' reads only {} of its columns: {}",
                    logical.nodes[i].name,
                    cols.len(),
                    cols.join(", ")
                ),
            });
        }
        logical.rewrites.sort_by_key(|r| match r.rule {
            RewriteRule::Fusion => 0,
            RewriteRule::ProjectionPushdown => 1,
        });
    }

    let mut planned = Vec::with_capacity(bound.len());
    for (i, (node, b)) in logical.nodes.iter_mut().zip(&bound).enumerate() {
        let mut description = b.step.describe();
        if let Some(cols) = projections.get(&i) {
            description.push_str(&format!(", reads only {}", cols.join(", ")));
        }
        if let Some(w) = &node.watermark {
            description.push_str(&format!("; {}", w.describe()));
        }
        node.description = Some(description.clone());
        node.schema = b.output.clone();
        planned.push(PlannedStep {
            name: node.name.clone(),
            role: node.role,
            description,
            schema: b.output.clone(),
            parallelism: shape.parallelism[i],
            node: Some(i),
        });
    }
    let plan = Plan {
        logical,
        steps: planned,
        checkpoint,
        restart,
        error_budget: graph.job.error_budget,
        config,
        nodes: bound,
        edges: shape.edges.clone(),
        dead_letter: shape.dead_letter,
        services: declared,
    };
    // The shape checks of the runtime (every node connected, no cycle, parallelism within
    // bounds), with factories that are never called.
    plan.job_graph(Arc::new(resources)).validate()?;
    Ok(plan)
}

impl Plan {
    /// Where the job's file sinks (the dead-letter output included) publish, with each sink's
    /// name: what `weir run` checks for an earlier run's output before it starts. Sinks that do
    /// not write local files (console, Kafka, ...) are not listed.
    pub fn outputs(&self) -> Vec<(String, weir_connectors::OutputAt)> {
        let mut out = Vec::new();
        for (i, b) in self.nodes.iter().enumerate() {
            let Step::Sink(spec) = &b.step else { continue };
            let any = spec.as_any();
            let at = if let Some(s) = any.downcast_ref::<weir_connectors::jsonl::JsonlSinkSpec>() {
                s.output_at()
            } else if let Some(s) = any.downcast_ref::<weir_connectors::parquet::ParquetSinkSpec>()
            {
                s.output_at()
            } else {
                continue;
            };
            let name = self
                .steps
                .get(i)
                .map_or_else(|| format!("sink {i}"), |s| s.name.clone());
            out.push((name, at));
        }
        out
    }

    /// The runtime's graph, whose steps are created with `resources` when the job starts.
    pub fn job_graph(&self, resources: Arc<Resources>) -> JobGraph {
        let mut resources = Arc::unwrap_or_clone(resources);
        resources.insert(
            JobInfo::RESOURCE,
            job_info(&self.config.name, &self.checkpoint),
        );
        let resources = Arc::new(resources);
        let mut graph = JobGraph::new(self.config.clone());
        for (i, (b, s)) in self.nodes.iter().zip(&self.steps).enumerate() {
            let res = resources.clone();
            let (inputs, output) = (b.inputs.clone(), b.output.clone());
            let id = match &b.step {
                Step::Source(spec) => {
                    let (spec, event_time) = (spec.clone(), b.event_time.clone());
                    graph.add_source(&s.name, s.parallelism, move |info| {
                        let source =
                            spec.create(&CreateContext::new(info, &inputs, output.as_ref(), &res))?;
                        Ok(match &event_time {
                            Some(c) => Box::new(EventTimeSource::new(source, c.clone())),
                            None => source,
                        })
                    })
                }
                Step::Op(spec) => {
                    let spec = spec.clone();
                    graph.add_operator(&s.name, s.parallelism, move |info| {
                        spec.create(&CreateContext::new(info, &inputs, output.as_ref(), &res))
                    })
                }
                Step::Sink(spec) => {
                    let spec = spec.clone();
                    graph.add_sink(&s.name, s.parallelism, move |info| {
                        spec.create(&CreateContext::new(info, &inputs, output.as_ref(), &res))
                    })
                }
            };
            debug_assert_eq!(id, i);
            graph.nodes[id].description = s.description.clone();
        }
        for (from, to, part) in &self.edges {
            graph.connect(*from, *to, part.clone());
        }
        graph.dead_letter = self.dead_letter;
        graph
    }

    /// Job start: makes the declared services and returns the graph to run, whose steps find
    /// them in the job's resources.
    pub fn start(&self) -> Result<Job> {
        self.start_with(Resources::new())
    }

    /// Job start with `extra` resources beside the services, for kinds a front end adds (the
    /// Python package's `collect` sink finds its channel there, `map_batches` its functions).
    pub fn start_with(&self, extra: Resources) -> Result<Job> {
        let services = services::start(&self.services)?;
        let mut resources = extra;
        resources.extend(services::declarations(&self.services));
        for s in &services {
            weir_infer::service::provide(&mut resources, s.clone());
        }
        Ok(Job {
            graph: self.job_graph(Arc::new(resources)),
            services,
        })
    }

    /// The physical plan (tasks, chains, edges), with the graph it was made from.
    pub fn physical(&self) -> Result<(JobGraph, weir_runtime::physical::PhysicalPlan)> {
        let graph = self.job_graph(Arc::new(services::declarations(&self.services)));
        let physical = weir_runtime::physical::plan(&graph)?;
        Ok((graph, physical))
    }
}

/// What the steps may know of the job (see [`JobInfo`]).
fn job_info(name: &str, checkpoint: &Option<CheckpointPlan>) -> JobInfo {
    JobInfo {
        name: name.to_string(),
        checkpoint_interval: checkpoint.as_ref().map(|c| c.config.interval),
    }
}

fn checkpoint_plan(name: &str, c: &crate::graph::CheckpointOptions) -> Result<CheckpointPlan> {
    let store = c
        .store
        .clone()
        .unwrap_or_else(|| format!(".weir/checkpoints/{name}"));
    let config = c.config.clone();
    config.validate()?;
    if config.mode == weir_checkpoint::CheckpointMode::Unaligned && config.max_concurrent > 1 {
        return Err(Error::config(format!(
            "key 'checkpoint.max_concurrent': unaligned checkpoints are taken one at a time \
             (each records the data its barriers overtook until every input delivered it); \
             found {}, use 1",
            config.max_concurrent
        )));
    }
    Ok(CheckpointPlan {
        store,
        storage: c.storage.clone(),
        config,
    })
}

/// With `on_error: dead_letter`: the name of the dead-letter sink, added (a `jsonl` sink writing
/// `<job>.dead-letter.jsonl`) when the graph names none.
fn dead_letter_node(g: &mut LogicalGraph) -> Result<Option<String>> {
    match (g.job.on_error, &g.job.dead_letter) {
        (OnError::Fail, None) => Ok(None),
        (OnError::Fail, Some(n)) => Err(Error::config(format!(
            "key 'dead_letter': names '{n}' but on_error is fail; set on_error: dead_letter"
        ))),
        (OnError::DeadLetter, Some(n)) => Ok(Some(n.clone())),
        (OnError::DeadLetter, None) => {
            let name = "dead_letter".to_string();
            if g.node(&name).is_some() {
                return Err(Error::config(
                    "a node is named 'dead_letter': name the dead-letter sink in key 'dead_letter'",
                ));
            }
            let mut node = Node::new(
                &name,
                Role::Sink,
                "jsonl",
                serde_json::json!({ "path": format!("{}.dead-letter.jsonl", g.job.name) }),
            );
            node.parallelism = Some(1);
            g.nodes.push(node);
            g.job.dead_letter = Some(name.clone());
            Ok(Some(name))
        }
    }
}

/// The graph's structure by node index: edges, inputs per node in port order, parallelism.
#[derive(Debug, Clone)]
struct Shape {
    /// (producer, consumer, routing), grouped by consumer in port order.
    edges: Vec<(usize, usize, Partitioning)>,
    /// For each node, its producers in port order.
    inputs: Vec<Vec<usize>>,
    /// For each node, its consumers.
    outputs: Vec<Vec<usize>>,
    /// For each node, the routing of its input edges in port order.
    routing: Vec<Vec<Partitioning>>,
    /// Resolved parallelism.
    parallelism: Vec<u32>,
    /// Node indices, producers before consumers.
    order: Vec<usize>,
    dead_letter: Option<usize>,
}

impl Shape {
    /// Checks names, edges and ports, and orders the nodes.
    fn of(g: &LogicalGraph, dead_letter: Option<&str>) -> Result<Shape> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(Error::config(format!(
                    "node {i}: key 'name' must not be empty"
                )));
            }
            if index.insert(n.name.as_str(), i).is_some() {
                return Err(Error::config(format!("two nodes are named '{}'", n.name)));
            }
            if n.parallelism == Some(0) {
                return Err(Error::config(format!(
                    "node '{}': key 'parallelism': expected at least 1",
                    n.name
                )));
            }
        }
        let find = |name: &str, e: &Edge| -> Result<usize> {
            index.get(name).copied().ok_or_else(|| {
                let hint = weir_runtime::kind::did_you_mean(name, index.keys().copied())
                    .map(|s| format!("; did you mean '{s}'?"))
                    .unwrap_or_default();
                Error::config(format!(
                    "edge '{}' -> '{}': no node is named '{name}'{hint}",
                    e.from, e.to
                ))
            })
        };
        let n = g.nodes.len();
        let mut ports: Vec<BTreeMap<usize, (usize, Partitioning)>> = vec![BTreeMap::new(); n];
        let mut outputs = vec![Vec::new(); n];
        for e in &g.edges {
            let (from, to) = (find(&e.from, e)?, find(&e.to, e)?);
            if g.nodes[from].role == Role::Sink {
                return Err(Error::config(format!(
                    "edge '{}' -> '{}': '{}' is a sink; sinks have no output",
                    e.from, e.to, e.from
                )));
            }
            if g.nodes[to].role == Role::Source {
                return Err(Error::config(format!(
                    "edge '{}' -> '{}': '{}' is a source; sources have no input",
                    e.from, e.to, e.to
                )));
            }
            if ports[to]
                .insert(e.port, (from, partitioning(&e.routing)))
                .is_some()
            {
                return Err(Error::config(format!(
                    "node '{}': two edges go into its input {}",
                    e.to, e.port
                )));
            }
            outputs[from].push(to);
        }
        let dead_letter = match dead_letter {
            None => None,
            Some(name) => {
                let i = *index.get(name).ok_or_else(|| {
                    Error::config(format!("key 'dead_letter': no node is named '{name}'"))
                })?;
                if g.nodes[i].role != Role::Sink || !ports[i].is_empty() {
                    return Err(Error::config(format!(
                        "key 'dead_letter': '{name}' must be a sink without inputs"
                    )));
                }
                Some(i)
            }
        };
        let mut edges = Vec::new();
        let mut inputs = vec![Vec::new(); n];
        let mut routing = vec![Vec::new(); n];
        for (to, p) in ports.iter().enumerate() {
            for (k, (port, (from, part))) in p.iter().enumerate() {
                if *port != k {
                    return Err(Error::config(format!(
                        "node '{}': its inputs are numbered {}; expected 0 to {} without gaps",
                        g.nodes[to].name,
                        p.keys()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        p.len() - 1
                    )));
                }
                edges.push((*from, to, part.clone()));
                inputs[to].push(*from);
                routing[to].push(part.clone());
            }
        }
        let parallelism = g
            .nodes
            .iter()
            .map(|n| n.parallelism.unwrap_or(g.job.parallelism))
            .collect();
        let order = topological(&inputs, &outputs).ok_or_else(|| {
            Error::config("the graph has a cycle: a node reads, through others, its own output")
        })?;
        Ok(Shape {
            edges,
            inputs,
            outputs,
            routing,
            parallelism,
            order,
            dead_letter,
        })
    }
}

/// Applies what specs say about where they run: a step that must run as one instance
/// ([`Spec::single_instance`](weir_runtime::kind::Spec::single_instance)) gets parallelism 1, and
/// each input of a step that keeps state per key
/// ([`OperatorSpec::input_keys`](weir_runtime::kind::OperatorSpec::input_keys)) is hash-routed by
/// its keys (so a key's rows and state meet in one instance). A forward edge becomes that hash
/// routing; a hash routing by the same keys is kept; any other routing is an error.
fn keyed(g: &mut LogicalGraph, shape: &mut Shape, steps: &[Step]) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if step.single_instance() {
            shape.parallelism[i] = 1;
        }
        let Step::Op(op) = step else { continue };
        for port in 0..shape.routing[i].len() {
            let Some(keys) = op.input_keys(port).filter(|k| !k.is_empty()) else {
                continue;
            };
            let want = Partitioning::Hash { keys: keys.clone() };
            match &shape.routing[i][port] {
                Partitioning::Forward => {}
                p if *p == want => continue,
                other => {
                    return Err(Error::config(format!(
                        "node '{}' ({}): its input {port} from '{}' is routed {other}, but it \
                         keeps state by {} and routes that input by them itself; remove the \
                         routing step",
                        g.nodes[i].name,
                        g.nodes[i].kind_label(),
                        g.nodes[shape.inputs[i][port]].name,
                        keys.join(", ")
                    )));
                }
            }
            shape.routing[i][port] = want.clone();
            if let Some(e) = shape
                .edges
                .iter_mut()
                .filter(|(_, to, _)| *to == i)
                .nth(port)
            {
                e.2 = want;
            }
            let name = g.nodes[i].name.clone();
            if let Some(e) = g.edges.iter_mut().find(|e| e.to == name && e.port == port) {
                e.routing = Routing::Hash { keys };
            }
        }
    }
    Ok(())
}

/// Node indices with every producer before its consumers (lowest index first among the ready
/// ones), or `None` on a cycle.
fn topological(inputs: &[Vec<usize>], outputs: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut indegree: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> =
        (0..inputs.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(inputs.len());
    while let Some(n) = ready.pop_first() {
        order.push(n);
        for &c in &outputs[n] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.insert(c);
            }
        }
    }
    (order.len() == inputs.len()).then_some(order)
}

fn partitioning(r: &Routing) -> Partitioning {
    match r {
        Routing::Forward => Partitioning::Forward,
        Routing::Rebalance => Partitioning::Rebalance,
        Routing::Hash { keys } => Partitioning::Hash { keys: keys.clone() },
        Routing::Broadcast => Partitioning::Broadcast,
    }
}

/// Computes every node's schemas in topological order, reading only `projections[i]` of source
/// `i` where given; checks arity and hash keys.
fn schemas(
    g: &LogicalGraph,
    shape: &Shape,
    steps: &[Step],
    ctx: &PlanContext<'_>,
    projections: &HashMap<usize, Vec<String>>,
) -> Result<Vec<Bound>> {
    let mut outputs: Vec<Option<SchemaRef>> = vec![None; steps.len()];
    let mut event_times: Vec<Option<WatermarkConfig>> = vec![None; steps.len()];
    let mut inputs_of: Vec<Vec<SchemaRef>> = vec![Vec::new(); steps.len()];
    for &i in &shape.order {
        let node = &g.nodes[i];
        let named = |e: Error| e.in_operator(node.name.clone());
        let inputs: Vec<SchemaRef> = shape.inputs[i]
            .iter()
            .map(|&k| {
                outputs[k]
                    .clone()
                    .ok_or_else(|| Error::internal("an input without a schema"))
            })
            .collect::<Result<_>>()?;
        for ((&from, part), input) in shape.inputs[i].iter().zip(&shape.routing[i]).zip(&inputs) {
            if let Partitioning::Hash { keys } = part {
                check_keys(keys, input).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "edge '{}' -> '{}': {}",
                            g.nodes[from].name,
                            node.name,
                            e.message()
                        ),
                    )
                })?;
            }
        }
        let arity = steps[i].arity();
        let is_dead_letter = shape.dead_letter == Some(i);
        if !is_dead_letter && node.role != Role::Source && !arity.contains(&inputs.len()) {
            return Err(Error::config(format!(
                "node '{}' ({}): has {} input(s); {} takes {}",
                node.name,
                node.kind_label(),
                inputs.len(),
                node.kind_label(),
                arity_text(arity)
            )));
        }
        let inputs = if is_dead_letter {
            vec![dead_letter_schema()]
        } else {
            inputs
        };
        let output = match &steps[i] {
            Step::Source(s) => {
                let mut schema = s.schema(ctx).map_err(named)?;
                if let Some(cols) = projections.get(&i) {
                    let indices = cols
                        .iter()
                        .map(|c| schema.index_of(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .and_then(|ix| schema.project(&ix))
                        .map_err(|e| Error::internal("projection pushdown").with_source(e))?;
                    schema = Arc::new(indices);
                }
                if let Some(w) = &node.watermark {
                    event_times[i] = Some(w.check(&schema).map_err(named)?);
                }
                Some(schema)
            }
            _ if node.watermark.is_some() => {
                return Err(Error::config(format!(
                    "node '{}' ({}): key 'watermark': only a source declares event time",
                    node.name,
                    node.kind_label()
                )));
            }
            Step::Op(op) => Some(op.output_schema(&inputs, ctx).map_err(named)?),
            Step::Sink(sink) => {
                sink.check_inputs(&inputs, ctx).map_err(named)?;
                None
            }
        };
        outputs[i] = output;
        inputs_of[i] = inputs;
    }
    let bound = steps
        .iter()
        .zip(inputs_of)
        .zip(outputs)
        .zip(event_times)
        .map(|(((step, inputs), output), event_time)| Bound {
            step: step.clone(),
            inputs,
            output,
            event_time,
        })
        .collect();
    Ok(bound)
}

/// "one", "2", "1 or more", ...
fn arity_text(r: std::ops::RangeInclusive<usize>) -> String {
    match (*r.start(), *r.end()) {
        (1, 1) => "one".into(),
        (a, b) if a == b => a.to_string(),
        (a, usize::MAX) => format!("{a} or more"),
        (a, b) => format!("{a} to {b}"),
    }
}

/// Checks that the key columns of a hash routing are in the rows routed.
fn check_keys(keys: &[String], input: &SchemaRef) -> Result<()> {
    if keys.is_empty() {
        return Err(Error::config("key_by: expected at least one key column"));
    }
    for key in keys {
        if input.column_with_name(key).is_none() {
            let names: Vec<_> = input.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::schema(format!(
                "key column '{key}' is not in the input; available: {}",
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Projection pushdown: walks the nodes from the sinks back collecting the columns each node's
/// consumers read (hash keys included), and returns, for every source that can read a subset of
/// its columns and whose consumers do not read all of them, the columns to read (in schema order).
fn pushdown(shape: &Shape, bound: &[Bound]) -> Result<HashMap<usize, Vec<String>>> {
    let mut need = vec![Need::nothing(); bound.len()];
    for &i in shape.order.iter().rev() {
        let b = &bound[i];
        let reads = match &b.step {
            Step::Source(_) => continue,
            Step::Sink(_) => vec![Need::All; b.inputs.len()],
            Step::Op(op) => op.input_need(&b.inputs, &need[i])?,
        };
        for ((&from, part), n) in shape.inputs[i].iter().zip(&shape.routing[i]).zip(reads) {
            let n = match part {
                Partitioning::Hash { keys } => n.plus(keys.iter().cloned()),
                _ => n,
            };
            need[from].merge(n);
        }
    }
    let mut projections = HashMap::new();
    for (i, b) in bound.iter().enumerate() {
        let (Need::Columns(cols), Some(schema)) = (&need[i], &b.output) else {
            continue;
        };
        let projects = matches!(&b.step, Step::Source(s) if s.projects());
        if !projects || cols.len() >= schema.fields().len() {
            continue;
        }
        // A source's event-time column is read by its watermarks, whoever else reads it.
        let event_time = b.event_time.as_ref().map(|e| &e.column);
        let mut read: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| cols.contains(f.name()) || event_time == Some(f.name()))
            .map(|f| f.name().clone())
            .collect();
        if read.is_empty() {
            // Nothing is read, but rows still count: keep the first column.
            read.extend(schema.fields().first().map(|f| f.name().clone()));
        }
        projections.insert(i, read);
    }
    Ok(projections)
}

/// The fusion rewrite: a `resize`, then a `center_crop`, then a `to_tensor` right after the
/// `decode_image` whose output they change in place or read (each the only consumer of the one
/// before, over a forward edge, with the same parallelism, set the same way), as far as the
/// decoder can take them,
/// become one `decode_image_fused` node named as the decoder: it does them image by image while
/// the pixels are still in the decoding thread's cache. The nodes it replaces leave the graph,
/// and the edges out of the last of them leave the fused node. A fused `to_tensor` needs a fixed
/// image size from the fused crop (or an exact resize), and leaves the image column in the batch
/// as the unfused one does. Returns whether it rewrote anything.
fn fuse(g: &mut LogicalGraph, shape: &Shape, steps: &[Step]) -> Result<bool> {
    // The parallelism each node sets itself.
    let own: Vec<Option<u32>> = g.nodes.iter().map(|n| n.parallelism).collect();
    // The consumer `i` hands its rows to alone, over a forward edge, at the same parallelism.
    let next = |i: usize| -> Option<usize> {
        let [c] = shape.outputs[i].as_slice() else {
            return None;
        };
        // A step given a parallelism of its own (other than the decoder's) is kept apart.
        let single = shape.inputs[*c].len() == 1
            && shape.routing[*c].first() == Some(&Partitioning::Forward)
            && shape.parallelism[*c] == shape.parallelism[i]
            && own[*c] == own[i];
        single.then_some(*c)
    };
    let mut removed: HashMap<String, String> = HashMap::new();
    for i in shape.order.clone() {
        let Some(decode) = op_spec::<weir_media::DecodeImageSpec>(&steps[i]) else {
            continue;
        };
        let mut fused = weir_media::FusedDecodeSpec::from(decode.clone());
        let mut replaced = Vec::new();
        let mut last = i;
        while let Some(c) = next(last) {
            if !absorb(&mut fused, &steps[c]) {
                break;
            }
            replaced.push(g.nodes[c].name.clone());
            last = c;
        }
        if replaced.is_empty() {
            continue;
        }
        let name = g.nodes[i].name.clone();
        let node = &mut g.nodes[i];
        node.kind = "decode_image_fused".into();
        node.spec = serde_json::to_value(&fused)
            .map_err(|e| Error::internal("cannot serialise a fused node's spec").with_source(e))?;
        g.rewrites.push(Rewrite {
            rule: RewriteRule::Fusion,
            detail: format!(
                "'{name}' (decode_image_fused) does decode_image, {} in one node",
                replaced.join(", ")
            ),
            nodes: std::iter::once(name.clone())
                .chain(replaced.iter().cloned())
                .collect(),
        });
        for r in replaced {
            removed.insert(r, name.clone());
        }
    }
    if removed.is_empty() {
        return Ok(false);
    }
    g.nodes.retain(|n| !removed.contains_key(&n.name));
    // Edges inside a fused chain go; edges out of its last node leave the fused node.
    g.edges.retain(|e| !removed.contains_key(&e.to));
    for e in &mut g.edges {
        if let Some(fused) = removed.get(&e.from) {
            e.from = fused.clone();
        }
    }
    Ok(true)
}

/// The operator spec of type `T` a step is, if it is one.
fn op_spec<T: 'static>(step: &Step) -> Option<&T> {
    match step {
        Step::Op(op) => op.as_any().downcast_ref::<T>(),
        _ => None,
    }
}

/// Fuses `next` into `d` when it is a step the decoder can do next (a `resize`, then a
/// `center_crop`, then a `to_tensor`; the `can_fuse_*` checks keep that order); returns whether
/// it did.
fn absorb(d: &mut weir_media::FusedDecodeSpec, next: &Step) -> bool {
    if let Some(r) = op_spec::<weir_media::ResizeSpec>(next)
        && d.can_fuse_resize(r)
    {
        d.resize = Some(r.clone());
        return true;
    }
    if let Some(c) = op_spec::<weir_media::CenterCropSpec>(next)
        && d.can_fuse_crop(c)
    {
        d.crop = Some(c.clone());
        return true;
    }
    if let Some(t) = op_spec::<weir_media::ToTensorSpec>(next)
        && d.can_fuse_tensor(t)
    {
        d.tensor = Some(t.clone());
        return true;
    }
    false
}
