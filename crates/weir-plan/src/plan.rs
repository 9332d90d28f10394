//! From a parsed spec to the runtime's [`JobGraph`]: resolves inputs, checks schemas step by step
//! (so a wrong column name fails before anything runs), applies parallelism and routing steps, and
//! wires the dead-letter output.

use crate::kinds::{KeyBySpec, NoOptions, ROUTING};
use crate::spec::{OnError, ParsedSpec, Role, StepSpec, parse};
use arrow::datatypes::SchemaRef;
use serde_norway::{Mapping, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use weir_runtime::kind::{
    CreateContext, Need, OperatorSpec, PlanContext, Registry, Resources, Step,
};
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

/// Reads and plans the spec at `path` with every kind weir ships.
pub fn plan_file(path: &Path, opts: &PlanOptions) -> Result<Plan> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read pipeline spec {}", path.display())).with_source(e)
    })?;
    plan_str(&text, &path.display().to_string(), opts)
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
    let yaml = crate::spec::substitute(yaml, origin, &opts.vars)?;
    let parsed = parse(&yaml, origin, &opts.overrides)?;
    build(registry, &parsed, opts)
}

/// What a YAML step turned out to be: a node of some kind, or the routing of the edges out of the
/// step before it.
#[derive(Debug, Clone)]
enum Planned {
    Node(Step),
    Route(Partitioning),
}

impl Planned {
    fn describe(&self) -> String {
        match self {
            Planned::Node(step) => step.describe(),
            Planned::Route(Partitioning::Hash { keys }) => format!("key_by {}", keys.join(", ")),
            Planned::Route(p) => p.to_string(),
        }
    }
}

/// Parses a step's kind and options: a registered kind, or a routing step.
fn parse_kind(registry: &Registry, step: &StepSpec) -> Result<Planned> {
    if step.role == Role::Op {
        let route = match step.kind.as_str() {
            "key_by" => Some(Partitioning::Hash {
                keys: step.options::<KeyBySpec>()?.keys,
            }),
            "rebalance" => step
                .options::<NoOptions>()
                .map(|_| Partitioning::Rebalance)
                .map(Some)?,
            "broadcast" => step
                .options::<NoOptions>()
                .map(|_| Partitioning::Broadcast)
                .map(Some)?,
            _ => None,
        };
        if let Some(r) = route {
            return Ok(Planned::Route(r));
        }
    }
    if registry.get(step.role, &step.kind).is_none() {
        let extra: &[&str] = if step.role == Role::Op { &ROUTING } else { &[] };
        return Err(Error::config(format!(
            "steps[{}]: key '{}': {}",
            step.index,
            step.role.key(),
            registry.unknown(step.role, &step.kind, extra)
        )));
    }
    registry
        .parse(step.role, &step.kind, step.options_json()?, &step.locator())
        .map(Planned::Node)
}

fn build(registry: &Registry, spec: &ParsedSpec, opts: &PlanOptions) -> Result<Plan> {
    let kinds = fuse(
        &spec.steps,
        spec.steps
            .iter()
            .map(|s| parse_kind(registry, s))
            .collect::<Result<_>>()?,
    )?;
    let resources = Resources::new();
    let (plan, inputs) = build_with(registry, spec, &kinds, opts, &resources, &HashMap::new())?;
    let projections = pushdown(spec, &kinds, &plan, &inputs)?;
    if projections.is_empty() {
        return Ok(plan);
    }
    Ok(build_with(registry, spec, &kinds, opts, &resources, &projections)?.0)
}

/// Projection pushdown: walks the steps backwards from the sinks collecting the columns each step's
/// consumers read, and returns, for every source that can read a subset of its columns and whose
/// consumers do not read all of them, the columns to read (in schema order).
fn pushdown(
    spec: &ParsedSpec,
    kinds: &[Planned],
    plan: &Plan,
    inputs: &[Vec<usize>],
) -> Result<HashMap<usize, Vec<String>>> {
    let mut need = vec![Need::nothing(); spec.steps.len()];
    for step in spec.steps.iter().rev() {
        let i = step.index;
        let in_schemas: Option<Vec<SchemaRef>> = inputs[i]
            .iter()
            .map(|&k| plan.steps[k].schema.clone())
            .collect();
        let Some(in_schemas) = in_schemas else {
            continue;
        };
        let reads = match &kinds[i] {
            Planned::Node(Step::Source(_)) => continue,
            Planned::Node(Step::Sink(_)) => vec![Need::All; in_schemas.len()],
            Planned::Node(Step::Op(op)) => op.input_need(&in_schemas, &need[i])?,
            Planned::Route(Partitioning::Hash { keys }) => vec![need[i].plus(keys.iter().cloned())],
            Planned::Route(_) => vec![need[i].clone()],
        };
        for (&input, n) in inputs[i].iter().zip(reads) {
            need[input].merge(n);
        }
    }
    let mut projections = HashMap::new();
    for step in &spec.steps {
        let i = step.index;
        let (Need::Columns(cols), Some(schema)) = (&need[i], &plan.steps[i].schema) else {
            continue;
        };
        let projects = matches!(&kinds[i], Planned::Node(Step::Source(s)) if s.projects());
        if !projects || cols.len() >= schema.fields().len() {
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
    registry: &Registry,
    spec: &ParsedSpec,
    kinds: &[Planned],
    opts: &PlanOptions,
    resources: &Resources,
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
    let ctx = PlanContext::new(resources);
    let shared = Arc::new(resources.clone());
    let mut graph = JobGraph::new(config);
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut planned: Vec<PlannedStep> = Vec::new();
    // For routing steps: where their edge starts and how it routes.
    let mut routes: HashMap<usize, (NodeId, Partitioning)> = HashMap::new();
    let mut step_inputs: Vec<Vec<usize>> = Vec::with_capacity(spec.steps.len());

    for (step, kind) in spec.steps.iter().zip(kinds) {
        if by_name.insert(step.name.as_str(), step.index).is_some() {
            return Err(Error::config(format!(
                "steps[{}]: two steps are named '{}'",
                step.index, step.name
            )));
        }
        let inputs = resolve_inputs(step, &by_name, &planned)?;
        step_inputs.push(inputs.clone());
        let single = matches!(kind, Planned::Node(s) if s.single_instance());
        let parallelism = if single {
            1
        } else {
            step.parallelism.unwrap_or(default_par)
        };
        let named = |e: Error| e.in_operator(step.name.clone());
        let mut description = kind.describe();
        let in_schemas: Vec<SchemaRef> = inputs
            .iter()
            .map(|&i| {
                planned[i]
                    .schema
                    .clone()
                    .ok_or_else(|| Error::internal("input without schema"))
            })
            .collect::<Result<_>>()?;
        if let Planned::Node(s) = kind
            && step.role != Role::Source
            && !s.arity().contains(&in_schemas.len())
        {
            return Err(Error::config(format!(
                "{}: has {} inputs; {}: {} takes {}",
                step.locator(),
                in_schemas.len(),
                step.role.key(),
                step.kind,
                arity_text(s.arity())
            )));
        }
        let (schema, node) = match kind {
            Planned::Node(Step::Source(source)) => {
                let mut schema = source.schema(&ctx).map_err(named)?;
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
                let (source, out, res) = (source.clone(), schema.clone(), shared.clone());
                let id = graph.add_source(&step.name, parallelism, move |info| {
                    source.create(&CreateContext::new(info, &[], Some(&out), &res))
                });
                (Some(schema), Some(id))
            }
            Planned::Node(Step::Op(op)) => {
                let out = op.output_schema(&in_schemas, &ctx).map_err(named)?;
                let (op, ins, o, res) =
                    (op.clone(), in_schemas.clone(), out.clone(), shared.clone());
                let id = graph.add_operator(&step.name, parallelism, move |info| {
                    op.create(&CreateContext::new(info, &ins, Some(&o), &res))
                });
                connect(&mut graph, id, &inputs, &planned, &routes)?;
                (Some(out), Some(id))
            }
            Planned::Node(Step::Sink(sink)) => {
                sink.check_inputs(&in_schemas, &ctx).map_err(named)?;
                let (sink, ins, res) = (sink.clone(), in_schemas.clone(), shared.clone());
                let id = graph.add_sink(&step.name, parallelism, move |info| {
                    sink.create(&CreateContext::new(info, &ins, None, &res))
                });
                connect(&mut graph, id, &inputs, &planned, &routes)?;
                (None, Some(id))
            }
            Planned::Route(part) => {
                let [input] = in_schemas.as_slice() else {
                    return Err(Error::config(format!(
                        "{}: has {} inputs; a routing step takes one",
                        step.locator(),
                        in_schemas.len()
                    )));
                };
                if let Partitioning::Hash { keys } = part {
                    check_keys(keys, input).map_err(named)?;
                }
                let (from, _) = endpoint(inputs[0], &planned, &routes)?;
                routes.insert(step.index, (from, part.clone()));
                (Some(input.clone()), None)
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
        let Planned::Node(Step::Sink(sink)) = parse_kind(registry, &step)? else {
            return Err(Error::internal("the dead-letter step is not a sink"));
        };
        let (s, res) = (sink.clone(), shared.clone());
        let ins = vec![dead_letter_schema()];
        let id = graph.add_sink(&step.name, 1, move |info| {
            s.create(&CreateContext::new(info, &ins, None, &res))
        });
        graph.nodes[id].description = sink.describe();
        graph.dead_letter = Some(id);
        planned.push(PlannedStep {
            name: step.name.clone(),
            role: Role::Sink,
            description: sink.describe(),
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

/// "one", "2", "1 or more", ...
fn arity_text(r: std::ops::RangeInclusive<usize>) -> String {
    match (*r.start(), *r.end()) {
        (1, 1) => "one".into(),
        (a, b) if a == b => a.to_string(),
        (a, usize::MAX) => format!("{a} or more"),
        (a, b) => format!("{a} to {b}"),
    }
}

/// Checks that the key columns of `key_by` are in its input.
fn check_keys(keys: &[String], input: &SchemaRef) -> Result<()> {
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

/// Connects each of `inputs` (step indices) to node `id`, in port order.
fn connect(
    graph: &mut JobGraph,
    id: NodeId,
    inputs: &[usize],
    planned: &[PlannedStep],
    routes: &HashMap<usize, (NodeId, Partitioning)>,
) -> Result<()> {
    for &i in inputs {
        let (from, part) = endpoint(i, planned, routes)?;
        graph.connect(from, id, part);
    }
    Ok(())
}

/// Fuses steps that are cheaper as one: a `resize`, then a `center_crop`, then a `to_tensor`
/// right after the `decode_image` whose output they change in place or read (each reading only
/// the step before it, with the same parallelism, and no other step reading those before it) are
/// done by the decoder, image by image, while the pixels are still in the decoding thread's
/// cache; the fused steps stay in the graph and pass batches through. A fused `to_tensor` needs a
/// fixed image size from the fused crop (or an exact resize), and leaves the image column in the
/// batch as the unfused one does.
fn fuse(steps: &[StepSpec], mut kinds: Vec<Planned>) -> Result<Vec<Planned>> {
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
        let Some(mut decoder) = op_spec::<weir_media::DecodeImageSpec>(&kinds[i]).cloned() else {
            continue;
        };
        // Each step after the decoder that it can take over, in order, until one it cannot.
        let mut last = i;
        while last + 1 < steps.len() && chained(last) {
            let Some(fused) = absorb(&mut decoder, &kinds[last + 1]) else {
                break;
            };
            kinds[last + 1] = Planned::Node(Step::Op(fused));
            last += 1;
        }
        kinds[i] = Planned::Node(Step::Op(Arc::new(decoder)));
    }
    Ok(kinds)
}

/// The operator spec of type `T` a step is, if it is one.
fn op_spec<T: 'static>(kind: &Planned) -> Option<&T> {
    match kind {
        Planned::Node(Step::Op(op)) => op.as_any().downcast_ref::<T>(),
        _ => None,
    }
}

/// Fuses `next` into the decoder `d` when it is a step the decoder can do next (a `resize`, then a
/// `center_crop`, then a `to_tensor`; the `can_fuse*` checks keep that order); returns what
/// `next` becomes (a pass-through) when it did.
fn absorb(d: &mut weir_media::DecodeImageSpec, next: &Planned) -> Option<Arc<dyn OperatorSpec>> {
    if let Some(r) = op_spec::<weir_media::ResizeSpec>(next)
        && d.can_fuse(r)
    {
        d.then_resize = Some(r.clone());
        let mut r = r.clone();
        r.fused = true;
        return Some(Arc::new(r));
    }
    if let Some(c) = op_spec::<weir_media::CenterCropSpec>(next)
        && d.can_fuse_crop(c)
    {
        d.then_crop = Some(c.clone());
        let mut c = c.clone();
        c.fused = true;
        return Some(Arc::new(c));
    }
    if let Some(t) = op_spec::<weir_media::ToTensorSpec>(next)
        && d.can_fuse_tensor(t)
    {
        d.then_tensor = Some(Box::new(t.clone()));
        let mut t = t.clone();
        t.fused = true;
        return Some(Arc::new(t));
    }
    None
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
