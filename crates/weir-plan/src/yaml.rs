//! The YAML front end: a parsed spec ([`crate::spec::ParsedSpec`]) becomes a [`LogicalGraph`].
//!
//! Each step that names a registered kind becomes a node whose spec is the step's options parsed
//! by the kind and serialised back (so defaults are written out); a step reads the step before it
//! unless it names `input:` / `inputs:`. The routing steps (`key_by`, `rebalance`, `broadcast`)
//! are not nodes: they set the routing of the edges from the step they read to the steps that
//! read them. Errors point at the step and key as written (`steps[2] ('keep', op: filter): key
//! 'predicate': ...`).

use crate::graph::{CheckpointOptions, Edge, JobOptions, LogicalGraph, Node, Routing, VERSION};
use crate::kinds::{KeyBySpec, NoOptions, ROUTING};
use crate::spec::{OnError, ParsedSpec, Role, StepSpec, from_value, to_json};
use serde_norway::{Mapping, Value};
use std::collections::HashMap;
use weir_runtime::kind::Registry;
use weir_types::{Error, Result};

/// What a step becomes.
enum Made {
    /// A node (index into the graph's nodes).
    Node(usize),
    /// The routing of the edges out of a node.
    Route { from: usize, routing: Routing },
}

/// The logical graph of `spec`, with `parallelism` (the command line's) as the job's default
/// when given. Checks every step's kind and options; schemas are checked when it is planned.
pub fn to_graph(
    registry: &Registry,
    spec: &ParsedSpec,
    origin: &str,
    parallelism: Option<u32>,
) -> Result<LogicalGraph> {
    let p = &spec.pipeline;
    let parallelism = parallelism.unwrap_or(p.parallelism);
    if parallelism == 0 {
        return Err(Error::config("--parallelism: expected at least 1"));
    }
    let checkpoint = p.checkpoint.as_ref().map(checkpoint_options).transpose()?;
    let mut graph = LogicalGraph {
        version: VERSION,
        job: JobOptions {
            name: p.name.clone(),
            parallelism,
            max_parallelism: p.max_parallelism,
            on_error: p.on_error,
            dead_letter: None,
            channel_capacity: p.channel_capacity.clone(),
            checkpoint,
            restart: p.restart.clone(),
            error_budget: p.error_budget,
        },
        services: p
            .services
            .iter()
            .enumerate()
            .map(|(i, m)| {
                to_json(
                    &Value::Mapping(m.clone()),
                    &format!("{origin}: services[{i}]"),
                )
            })
            .collect::<Result<_>>()?,
        nodes: Vec::new(),
        edges: Vec::new(),
        rewrites: Vec::new(),
    };
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut made: Vec<Made> = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        if by_name.insert(step.name.as_str(), step.index).is_some() {
            return Err(Error::config(format!(
                "steps[{}]: two steps are named '{}'",
                step.index, step.name
            )));
        }
        let inputs = resolve_inputs(step, &by_name, &made, &graph)?;
        if step.role == Role::Op
            && let Some(routing) = routing(step)?
        {
            let [input] = inputs.as_slice() else {
                return Err(Error::config(format!(
                    "{}: has {} inputs; a routing step takes one",
                    step.locator(),
                    inputs.len()
                )));
            };
            let from = match made[*input] {
                Made::Node(n) | Made::Route { from: n, .. } => n,
            };
            made.push(Made::Route { from, routing });
            continue;
        }
        let node = node(registry, step)?;
        let id = graph.nodes.len();
        for (port, &i) in inputs.iter().enumerate() {
            let (from, routing) = match &made[i] {
                Made::Node(n) => (*n, Routing::Forward),
                Made::Route { from, routing } => (*from, routing.clone()),
            };
            graph.edges.push(Edge {
                from: graph.nodes[from].name.clone(),
                to: node.name.clone(),
                port,
                routing,
            });
        }
        graph.nodes.push(node);
        made.push(Made::Node(id));
    }
    if p.on_error == OnError::DeadLetter
        && let Some(mapping) = &p.dead_letter
    {
        let step = dead_letter_step(mapping.clone(), spec.steps.len())?;
        if by_name.contains_key(step.name.as_str()) {
            return Err(Error::config(format!(
                "key 'dead_letter': a step is already named '{}'; give the dead-letter sink another name",
                step.name
            )));
        }
        graph.job.dead_letter = Some(step.name.clone());
        graph.nodes.push(node(registry, &step)?);
    }
    Ok(graph)
}

/// The routing a step sets, if it is a routing step.
fn routing(step: &StepSpec) -> Result<Option<Routing>> {
    Ok(match step.kind.as_str() {
        "key_by" => Some(Routing::Hash {
            keys: step.options::<KeyBySpec>()?.keys,
        }),
        "rebalance" => {
            step.options::<NoOptions>()?;
            Some(Routing::Rebalance)
        }
        "broadcast" => {
            step.options::<NoOptions>()?;
            Some(Routing::Broadcast)
        }
        _ => None,
    })
}

/// The node of a step: its options parsed by its kind and written back with every default.
fn node(registry: &Registry, step: &StepSpec) -> Result<Node> {
    if registry.get(step.role, &step.kind).is_none() {
        let feature = match step.kind.as_str() {
            "kafka" if cfg!(not(feature = "kafka")) => Some("kafka"),
            "tokenize" if cfg!(not(feature = "text")) => Some("text"),
            _ => None,
        };
        if let Some(feature) = feature {
            return Err(Error::config(format!(
                "steps[{}]: kind '{}' is not in this build of weir (build it with the cargo feature '{feature}')",
                step.index, step.kind
            )));
        }
        let extra: &[&str] = if step.role == Role::Op { &ROUTING } else { &[] };
        return Err(Error::config(format!(
            "steps[{}]: key '{}': {}",
            step.index,
            step.role.key(),
            registry.unknown(step.role, &step.kind, extra)
        )));
    }
    let parsed = registry.parse(step.role, &step.kind, step.options_json()?, &step.locator())?;
    let mut node = Node::new(&step.name, step.role, &step.kind, parsed.to_value()?);
    node.parallelism = step.parallelism;
    node.watermark = step.watermark.clone();
    Ok(node)
}

/// `checkpoint:` as written (`store` beside the options of `CheckpointConfig`).
fn checkpoint_options(section: &Mapping) -> Result<CheckpointOptions> {
    let mut m = section.clone();
    let store = match m.remove("store") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            return Err(Error::config(format!(
                "key 'checkpoint.store': expected a directory or URL, found {v:?}"
            )));
        }
    };
    let storage = match m.remove("storage") {
        None => Default::default(),
        Some(v) => from_value(v, "key 'checkpoint.storage'")?,
    };
    Ok(CheckpointOptions {
        store,
        storage,
        config: from_value(Value::Mapping(m), "key 'checkpoint'")?,
    })
}

/// The `dead_letter:` mapping as a sink step.
fn dead_letter_step(mut mapping: Mapping, index: usize) -> Result<StepSpec> {
    let kind = match mapping.remove("sink") {
        Some(Value::String(k)) => k,
        _ => {
            return Err(Error::config(
                "key 'dead_letter': expected a sink, e.g. {sink: jsonl, path: dead.jsonl}",
            ));
        }
    };
    let name = match mapping.remove("name") {
        Some(Value::String(n)) => n,
        _ => "dead_letter".into(),
    };
    Ok(StepSpec {
        index,
        name,
        role: Role::Sink,
        kind,
        inputs: None,
        parallelism: Some(1),
        watermark: None,
        options: mapping,
    })
}

/// The steps `step` reads (indices), in port order.
fn resolve_inputs(
    step: &StepSpec,
    by_name: &HashMap<&str, usize>,
    made: &[Made],
    graph: &LogicalGraph,
) -> Result<Vec<usize>> {
    if step.role == Role::Source {
        if step.inputs.is_some() {
            return Err(Error::config(format!(
                "{}: a source takes no 'input'",
                step.locator()
            )));
        }
        return Ok(Vec::new());
    }
    let inputs = match &step.inputs {
        None if step.index == 0 => {
            return Err(Error::config(format!(
                "{}: the first step must be a source (or name its 'input')",
                step.locator()
            )));
        }
        None => vec![step.index - 1],
        Some(names) => names
            .iter()
            .map(|n| {
                by_name
                    .get(n.as_str())
                    .copied()
                    .filter(|&i| i < step.index)
                    .ok_or_else(|| {
                        let before = by_name
                            .iter()
                            .filter(|(_, i)| **i < step.index)
                            .map(|(name, _)| *name);
                        let hint = weir_runtime::kind::did_you_mean(n, before)
                            .map(|s| format!("; did you mean '{s}'?"))
                            .unwrap_or_default();
                        Error::config(format!(
                            "{}: key 'input': '{n}' is not a step defined before this one{hint}",
                            step.locator()
                        ))
                    })
            })
            .collect::<Result<_>>()?,
    };
    if inputs.is_empty() {
        return Err(Error::config(format!(
            "{}: key 'inputs': expected at least one",
            step.locator()
        )));
    }
    for &i in &inputs {
        if let Made::Node(n) = made[i]
            && graph.nodes[n].role == Role::Sink
        {
            return Err(Error::config(format!(
                "{}: reads from '{}', which is a sink; sinks have no output",
                step.locator(),
                graph.nodes[n].name
            )));
        }
    }
    Ok(inputs)
}
