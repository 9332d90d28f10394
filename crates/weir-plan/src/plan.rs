//! From a parsed spec to the runtime's [`JobGraph`]: resolves inputs, checks schemas step by step
//! (so a wrong column name fails before anything runs), applies parallelism and routing steps, and
//! wires the dead-letter output.

use crate::kinds::{Kind, Need};
use crate::spec::{OnError, ParsedSpec, Role, StepSpec, parse};
use arrow::datatypes::SchemaRef;
use serde_norway::{Mapping, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use weir_runtime::{ErrorPolicy, JobConfig, JobGraph, NodeId, Partitioning};
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

/// What the planner decided for one step.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    /// The step's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// One-line description.
    pub description: String,
    /// Its output schema (none for sinks).
    pub schema: Option<SchemaRef>,
    /// Instances.
    pub parallelism: u32,
    /// The runtime node, if the step is one (routing steps are not).
    pub node: Option<NodeId>,
}

/// A planned pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The graph to run.
    pub graph: JobGraph,
    /// Per-step decisions, in spec order.
    pub steps: Vec<PlannedStep>,
    /// Checkpoint settings, when the spec has a `checkpoint:` section.
    pub checkpoint: Option<CheckpointPlan>,
    /// Restarts after a failure.
    pub restart: Restart,
    /// How many dead letters fail the run.
    pub error_budget: crate::spec::ErrorBudget,
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

fn checkpoint_plan(name: &str, section: &Mapping) -> Result<CheckpointPlan> {
    let mut m = section.clone();
    let store = match m.remove("store") {
        None => format!(".weir/checkpoints/{name}"),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(Error::config(format!(
                "key 'checkpoint.store': expected a directory or URL, found {v:?}"
            )));
        }
    };
    let storage: weir_store::StorageOptions = match m.remove("storage") {
        None => Default::default(),
        Some(v) => crate::spec::from_value(v, "key 'checkpoint.storage'")?,
    };
    let config: weir_checkpoint::CheckpointConfig =
        crate::spec::from_value(Value::Mapping(m), "key 'checkpoint'")?;
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
        storage,
        config,
    })
}

/// Reads and plans the spec at `path`.
pub fn plan_file(path: &Path, opts: &PlanOptions) -> Result<Plan> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read pipeline spec {}", path.display())).with_source(e)
    })?;
    plan_str(&text, &path.display().to_string(), opts)
}

/// Plans a spec given as YAML text; `origin` names it in errors.
pub fn plan_str(yaml: &str, origin: &str, opts: &PlanOptions) -> Result<Plan> {
    let yaml = crate::spec::substitute(yaml, origin, &opts.vars)?;
    let parsed = parse(&yaml, origin, &opts.overrides)?;
    build(&parsed, opts)
}

fn build(spec: &ParsedSpec, opts: &PlanOptions) -> Result<Plan> {
    let (plan, inputs) = build_with(spec, opts, &HashMap::new())?;
    let projections = pushdown(spec, &plan, &inputs)?;
    if projections.is_empty() {
        return Ok(plan);
    }
    Ok(build_with(spec, opts, &projections)?.0)
}

/// Projection pushdown: walks the steps backwards from the sinks collecting the columns each step's
/// consumers read, and returns, for every source that can read a subset of its columns and whose
/// consumers do not read all of them, the columns to read (in schema order).
fn pushdown(
    spec: &ParsedSpec,
    plan: &Plan,
    inputs: &[Vec<usize>],
) -> Result<HashMap<usize, Vec<String>>> {
    let mut need = vec![Need::Columns(Default::default()); spec.steps.len()];
    let mut kinds = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        kinds.push(Kind::parse(step)?);
    }
    for step in spec.steps.iter().rev() {
        let i = step.index;
        let out = match step.role {
            Role::Source => continue,
            Role::Sink => Need::All,
            Role::Op => need[i].clone(),
        };
        for &input in &inputs[i] {
            let reads = match (&kinds[i], &plan.steps[input].schema) {
                (Kind::Union(_), _) | (_, None) => Need::All,
                (kind, Some(schema)) => kind.input_need(schema, &out)?,
            };
            need[input].merge(reads);
        }
    }
    let mut projections = HashMap::new();
    for step in &spec.steps {
        let i = step.index;
        let (Need::Columns(cols), Some(schema)) = (&need[i], &plan.steps[i].schema) else {
            continue;
        };
        if step.role != Role::Source || !kinds[i].projects() || cols.len() >= schema.fields().len()
        {
            continue;
        }
        let mut read: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| cols.contains(f.name()))
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

/// Plans the spec, reading only `projections[i]` of source `i` where given. Also returns each
/// step's inputs (indices into the steps), for [`pushdown`].
fn build_with(
    spec: &ParsedSpec,
    opts: &PlanOptions,
    projections: &HashMap<usize, Vec<String>>,
) -> Result<(Plan, Vec<Vec<usize>>)> {
    let p = &spec.pipeline;
    let channel_capacity = p
        .channel_capacity
        .parse::<bytesize::ByteSize>()
        .map_err(|e| {
            Error::config(format!(
                "key 'channel_capacity': expected a size like 16MiB: {e}"
            ))
        })?
        .as_u64() as usize;
    let config = JobConfig {
        name: p.name.clone(),
        error_policy: match p.on_error {
            OnError::Fail => ErrorPolicy::Fail,
            OnError::DeadLetter => ErrorPolicy::DeadLetter,
        },
        max_parallelism: p.max_parallelism,
        channel_capacity_bytes: channel_capacity,
    };
    let default_par = opts.parallelism.unwrap_or(p.parallelism);
    if default_par == 0 {
        return Err(Error::config("--parallelism: expected at least 1"));
    }
    let mut graph = JobGraph::new(config);
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut planned: Vec<PlannedStep> = Vec::new();
    // For routing steps: where their edge starts and how it routes.
    let mut routes: HashMap<usize, (NodeId, Partitioning)> = HashMap::new();
    let mut step_inputs: Vec<Vec<usize>> = Vec::with_capacity(spec.steps.len());

    let kinds = fuse(
        &spec.steps,
        spec.steps.iter().map(Kind::parse).collect::<Result<_>>()?,
    );
    for (step, kind) in spec.steps.iter().zip(kinds) {
        if by_name.insert(step.name.as_str(), step.index).is_some() {
            return Err(Error::config(format!(
                "steps[{}]: two steps are named '{}'",
                step.index, step.name
            )));
        }
        let inputs = resolve_inputs(step, &by_name, &planned)?;
        step_inputs.push(inputs.clone());
        let parallelism = if kind.single_instance() {
            1
        } else {
            step.parallelism.unwrap_or(default_par)
        };
        let named = |e: Error| e.in_operator(step.name.clone());
        let mut description = kind.describe();
        let (schema, node) = match step.role {
            Role::Source => {
                let mut schema = kind.source_schema().map_err(named)?;
                if let Some(cols) = projections.get(&step.index) {
                    let indices = cols
                        .iter()
                        .map(|c| schema.index_of(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .and_then(|ix| schema.project(&ix))
                        .map_err(|e| Error::internal("projection pushdown").with_source(e))?;
                    schema = Arc::new(indices);
                    let _ = write!(description, ", reads only {}", cols.join(", "));
                }
                let factory = kind.source_factory(schema.clone())?;
                let id = graph.add_source(&step.name, parallelism, factory);
                (Some(schema), Some(id))
            }
            Role::Op | Role::Sink => {
                let in_schemas: Vec<SchemaRef> = inputs
                    .iter()
                    .map(|&i| {
                        planned[i]
                            .schema
                            .clone()
                            .ok_or_else(|| Error::internal("input without schema"))
                    })
                    .collect::<Result<_>>()?;
                if in_schemas.len() > 1 && !matches!(kind, Kind::Union(_)) {
                    return Err(Error::config(format!(
                        "{}: has {} inputs; only 'op: union' takes several",
                        step.locator(),
                        in_schemas.len()
                    )));
                }
                let out_schema = match step.role {
                    Role::Op => Some(kind.output_schema(&in_schemas).map_err(named)?),
                    _ => None,
                };
                let routing = match &kind {
                    Kind::KeyBy(k) => Some(Partitioning::Hash {
                        keys: k.keys.clone(),
                    }),
                    Kind::Rebalance(_) => Some(Partitioning::Rebalance),
                    Kind::Broadcast(_) => Some(Partitioning::Broadcast),
                    _ => None,
                };
                if let Some(part) = routing {
                    let (from, _) = endpoint(inputs[0], &planned, &routes)?;
                    routes.insert(step.index, (from, part));
                    (out_schema, None)
                } else {
                    // A union relabels every input's batches to its output schema.
                    let build_schema = match (&kind, &out_schema) {
                        (Kind::Union(_), Some(out)) => out.clone(),
                        _ => in_schemas[0].clone(),
                    };
                    let factory = kind.operator_factory(build_schema)?;
                    let id = if step.role == Role::Sink {
                        graph.add_sink(&step.name, parallelism, factory)
                    } else {
                        graph.add_operator(&step.name, parallelism, factory)
                    };
                    for &i in &inputs {
                        let (from, part) = endpoint(i, &planned, &routes)?;
                        graph.connect(from, id, part);
                    }
                    (out_schema, Some(id))
                }
            }
        };
        if let Some(id) = node {
            graph.nodes[id].description = description.clone();
        }
        planned.push(PlannedStep {
            name: step.name.clone(),
            role: step.role,
            description,
            schema,
            parallelism: if node.is_some() { parallelism } else { 0 },
            node,
        });
    }

    if p.on_error == OnError::DeadLetter {
        let mapping = p
            .dead_letter
            .clone()
            .unwrap_or_else(|| default_dead_letter(&p.name));
        let step = dead_letter_step(mapping, spec.steps.len())?;
        let kind = Kind::parse(&step)?;
        let factory = kind.operator_factory(dead_letter_schema())?;
        let id = graph.add_sink(&step.name, 1, factory);
        graph.nodes[id].description = kind.describe();
        graph.dead_letter = Some(id);
        planned.push(PlannedStep {
            name: step.name.clone(),
            role: Role::Sink,
            description: kind.describe(),
            schema: None,
            parallelism: 1,
            node: Some(id),
        });
    }
    graph.validate()?;
    let checkpoint = p
        .checkpoint
        .as_ref()
        .map(|c| checkpoint_plan(&p.name, c))
        .transpose()?;
    let restart = match &p.restart {
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
    Ok((
        Plan {
            graph,
            steps: planned,
            checkpoint,
            restart,
            error_budget: p.error_budget,
        },
        step_inputs,
    ))
}

/// Fuses steps that are cheaper as one: a `resize`, then a `center_crop`, then a `to_tensor`
/// right after the `decode_image` whose output they change in place or read (each reading only
/// the step before it, with the same parallelism, and no other step reading those before it) are
/// done by the decoder, image by image, while the pixels are still in the decoding thread's
/// cache; the fused steps stay in the graph and pass batches through. A fused `to_tensor` needs a
/// fixed image size from the fused crop (or an exact resize), and leaves the image column in the
/// batch as the unfused one does.
fn fuse(steps: &[StepSpec], mut kinds: Vec<Kind>) -> Vec<Kind> {
    // Whether step `i + 1` reads only step `i`, nothing else reads `i`, and both run with the
    // same parallelism.
    let chained = |i: usize| -> bool {
        let (from, to) = (&steps[i], &steps[i + 1]);
        let reads_only = to
            .inputs
            .as_ref()
            .is_none_or(|names| names.len() == 1 && names[0] == from.name);
        // Only the step right after `i` reads it implicitly; others name it.
        let read_elsewhere = steps
            .iter()
            .enumerate()
            .any(|(k, s)| k != i + 1 && s.inputs.as_ref().is_some_and(|n| n.contains(&from.name)));
        reads_only && !read_elsewhere && from.parallelism == to.parallelism
    };
    for i in 0..steps.len() {
        if !matches!(kinds[i], Kind::DecodeImage(_)) {
            continue;
        }
        // Each step after the decoder that it can take over, in order, until one it cannot.
        let mut last = i;
        while last + 1 < steps.len() && chained(last) {
            let (head, tail) = kinds.split_at_mut(last + 1);
            let fused = match (&mut head[i], tail.first_mut()) {
                (Kind::DecodeImage(d), Some(next)) => absorb(d, next),
                _ => false,
            };
            if !fused {
                break;
            }
            last += 1;
        }
    }
    kinds
}

/// Fuses `next` into the decoder `d` when it is a step the decoder can do next (a `resize`, then a
/// `center_crop`, then a `to_tensor`; the `can_fuse*` checks keep that order); whether it did.
fn absorb(d: &mut weir_media::DecodeImageSpec, next: &mut Kind) -> bool {
    match next {
        Kind::Resize(r) if d.can_fuse(r) => {
            d.then_resize = Some(r.clone());
            r.fused = true;
        }
        Kind::CenterCrop(c) if d.can_fuse_crop(c) => {
            d.then_crop = Some(c.clone());
            c.fused = true;
        }
        Kind::ToTensor(t) if d.can_fuse_tensor(t) => {
            d.then_tensor = Some(Box::new(t.clone()));
            t.fused = true;
        }
        _ => return false,
    }
    true
}

fn default_dead_letter(name: &str) -> Mapping {
    let mut m = Mapping::new();
    m.insert(Value::String("sink".into()), Value::String("jsonl".into()));
    m.insert(
        Value::String("path".into()),
        Value::String(format!("{name}.dead-letter.jsonl")),
    );
    m
}

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
        options: mapping,
    })
}

fn resolve_inputs(
    step: &StepSpec,
    by_name: &HashMap<&str, usize>,
    planned: &[PlannedStep],
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
                        Error::config(format!(
                            "{}: key 'input': '{n}' is not a step defined before this one",
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
        if planned[i].role == Role::Sink {
            return Err(Error::config(format!(
                "{}: reads from '{}', which is a sink; sinks have no output",
                step.locator(),
                planned[i].name
            )));
        }
    }
    Ok(inputs)
}

/// The node an edge out of step `i` starts from, and its routing.
fn endpoint(
    i: usize,
    planned: &[PlannedStep],
    routes: &HashMap<usize, (NodeId, Partitioning)>,
) -> Result<(NodeId, Partitioning)> {
    if let Some(r) = routes.get(&i) {
        return Ok(r.clone());
    }
    planned[i]
        .node
        .map(|n| (n, Partitioning::Forward))
        .ok_or_else(|| Error::internal(format!("step '{}' has no node", planned[i].name)))
}

impl Plan {
    /// The plan rendered for `weir validate`: each step with its schema, then the task chains.
    pub fn describe(&self) -> Result<String> {
        let mut s = String::new();
        let _ = writeln!(s, "steps:");
        for st in &self.steps {
            let par = if st.node.is_some() {
                format!("x{}", st.parallelism)
            } else {
                "routing".into()
            };
            let _ = writeln!(
                s,
                "  {} ({}: {}) {par}",
                st.name,
                st.role.key(),
                st.description
            );
            if let Some(schema) = &st.schema {
                for f in schema.fields() {
                    let null = if f.is_nullable() { "" } else { " not null" };
                    let _ = writeln!(s, "      {}: {}{null}", f.name(), f.data_type());
                }
            }
        }
        let physical = weir_runtime::physical::plan(&self.graph)?;
        s.push_str(&physical.describe(&self.graph));
        Ok(s)
    }
}
