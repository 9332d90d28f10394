//! Step kinds: the contract every kind of pipeline step implements, and the open registry that
//! maps a step's role and kind name (`op: filter`) to it.
//!
//! A step kind is two things, kept apart as the rest of weir keeps them apart:
//! - what a step *is*: a serialisable, validated spec ([`SourceSpec`], [`OperatorSpec`] or
//!   [`SinkSpec`], all [`Spec`]s) that lives in the plan. It is parsed from a neutral
//!   `serde_json::Value` (the YAML front end converts its mappings; the JSON form of the logical
//!   graph and other front ends give one directly), answers the planner's questions (output
//!   schema, columns read, single instance) without running anything, and serialises back to the
//!   same value;
//! - what a step *does*: the running [`Source`] or [`Operator`] its spec creates, once per parallel
//!   subtask, when the job starts.
//!
//! A [`Registry`] holds the kinds by `(role, name)`; registering a kind is one line
//! (`registry.op::<FilterSpec>("filter")`). The kinds live in the crates that implement them
//! (`weir-ops`, `weir-connectors`, `weir-media`, ...), which all sit above this crate; `weir-plan`
//! has the one function that lists them all.
//!
//! # Contract of a spec
//!
//! - **Parsing.** A spec type is `serde::Deserialize` with `#[serde(deny_unknown_fields)]` and a
//!   documented default for every optional key. [`from_value`] parses it with errors that name
//!   the key path and suggest the closest known key ("did you mean 'predicate'?").
//! - **Serialising.** A spec type is `serde::Serialize` too, such that parsing what it serialises
//!   gives an equal spec ([`SpecValue::to_value`] is implemented for every such type). Values a
//!   user writes as text (durations, sizes) serialise as text that parses back to them.
//! - **Planning** ([`SourceSpec::schema`], [`OperatorSpec::output_schema`],
//!   [`OperatorSpec::input_need`], [`SinkSpec::check_inputs`]) runs before the job exists: it
//!   may read metadata (file footers, a model's inputs) to learn schemas, but starts nothing,
//!   registers nothing and writes nothing. What the job will provide (declared services) is
//!   described in the [`PlanContext`]'s resources.
//! - **Creating** ([`SourceSpec::create`], [`OperatorSpec::create`], [`SinkSpec::create`]) is
//!   called once per parallel subtask when the job starts, on the thread starting the job (not
//!   on an executor), with the planned schemas and the job's [`Resources`]. It builds the running
//!   instance and may do cheap set-up (compile an expression); loading models or connecting to
//!   systems belongs in the instance's `open` hook.
//! - Specs are immutable once parsed and shared between threads (`Send + Sync`).
//!
//! # Example
//!
//! A kind `op: add_one` that adds one to an Int64 column, registered and planned:
//!
//! ```
//! use arrow::array::{ArrayRef, Int64Array};
//! use arrow::datatypes::{DataType, SchemaRef};
//! use arrow::record_batch::RecordBatch;
//! use async_trait::async_trait;
//! use serde::{Deserialize, Serialize};
//! use std::sync::Arc;
//! use weir_runtime::kind::{CreateContext, OperatorSpec, PlanContext, Registry, Resources, Role, Spec, Step};
//! use weir_runtime::{Emitter, Operator, OperatorContext};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct AddOneSpec {
//!     /// The Int64 column. Required.
//!     column: String,
//! }
//!
//! impl Spec for AddOneSpec {
//!     fn describe(&self) -> String {
//!         format!("add_one {}", self.column)
//!     }
//! }
//!
//! impl OperatorSpec for AddOneSpec {
//!     fn output_schema(&self, inputs: &[SchemaRef], _: &PlanContext<'_>) -> weir_types::Result<SchemaRef> {
//!         match inputs[0].field_with_name(&self.column) {
//!             Ok(f) if f.data_type() == &DataType::Int64 => Ok(inputs[0].clone()),
//!             _ => Err(weir_types::Error::schema(format!("add_one: no Int64 column '{}'", self.column))),
//!         }
//!     }
//!     fn create(&self, ctx: &CreateContext<'_>) -> weir_types::Result<Box<dyn Operator>> {
//!         Ok(Box::new(AddOne(ctx.input()?.index_of(&self.column)?)))
//!     }
//! }
//!
//! struct AddOne(usize);
//!
//! #[async_trait]
//! impl Operator for AddOne {
//!     async fn process_batch(&mut self, b: RecordBatch, _: &mut OperatorContext, out: &mut Emitter)
//!         -> weir_types::Result<()> {
//!         let n = b.column(self.0).as_any().downcast_ref::<Int64Array>()
//!             .ok_or_else(|| weir_types::Error::internal("add_one: not Int64"))?;
//!         let mut columns = b.columns().to_vec();
//!         columns[self.0] = Arc::new(Int64Array::from_iter(n.iter().map(|v| v.map(|v| v + 1)))) as ArrayRef;
//!         out.emit(RecordBatch::try_new(b.schema(), columns)?);
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.op::<AddOneSpec>("add_one");
//! let step = registry.parse(Role::Op, "add_one", serde_json::json!({"column": "n"}), "steps[1]")?;
//! assert_eq!(step.describe(), "add_one n");
//! assert_eq!(step.to_value()?, serde_json::json!({"column": "n"}));
//! let err = registry
//!     .parse(Role::Op, "add_one", serde_json::json!({"colum": "n"}), "steps[1]")
//!     .unwrap_err();
//! assert!(err.to_string().contains("steps[1]: key 'colum': unknown field `colum`"));
//! assert!(err.to_string().contains("did you mean 'column'?"));
//! # Ok::<(), weir_types::Error>(())
//! ```

use crate::operator::{Operator, TaskInfo};
use crate::source::Source;
use arrow::datatypes::SchemaRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use weir_types::{Error, Result};

/// Where a step sits in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Produces rows (`source:`); no inputs.
    Source,
    /// Transforms rows (`op:`); inputs and an output.
    Op,
    /// Writes rows (`sink:`); inputs, no output.
    Sink,
}

impl Role {
    /// The name of the role as specs write it: `source`, `op` or `sink`.
    pub fn key(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Op => "op",
            Role::Sink => "sink",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Which columns of a step's output its consumers read: the currency of projection pushdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Every column (a sink, or a step that does not say what it reads).
    All,
    /// Only these.
    Columns(BTreeSet<String>),
}

impl Need {
    /// Nothing yet (before any consumer was looked at).
    pub fn nothing() -> Need {
        Need::Columns(BTreeSet::new())
    }

    /// Adds what another consumer reads.
    pub fn merge(&mut self, other: Need) {
        match (&mut *self, other) {
            (Need::All, _) => {}
            (_, Need::All) => *self = Need::All,
            (Need::Columns(a), Need::Columns(b)) => a.extend(b),
        }
    }

    /// This need plus `more` columns.
    pub fn plus(&self, more: impl IntoIterator<Item = String>) -> Need {
        match self {
            Need::All => Need::All,
            Need::Columns(c) => Need::Columns(c.iter().cloned().chain(more).collect()),
        }
    }

    /// What a step needs of its input when its consumers need `self` of its output, for a step
    /// that computes the columns `produced` (new ones, or in place) from the columns `reads` and
    /// passes every other column through unchanged: `self` less `produced`, plus `reads`.
    pub fn through<'a>(
        &self,
        produced: impl IntoIterator<Item = &'a str>,
        reads: impl IntoIterator<Item = &'a str>,
    ) -> Need {
        match self {
            Need::All => Need::All,
            Need::Columns(c) => {
                let mut c = c.clone();
                for p in produced {
                    c.remove(p);
                }
                c.extend(reads.into_iter().map(str::to_string));
                Need::Columns(c)
            }
        }
    }
}

/// Job-scoped values that steps share, by type and name: the services a job declares, and later
/// clients or connections. At plan time it holds what the job *will* provide (declarations,
/// which starting nothing can answer questions such as a model's inputs); when the job starts, the
/// job-start function adds the live values and hands the result to every `create`. Nothing in it
/// outlives the job that made it.
#[derive(Clone, Default)]
pub struct Resources {
    entries: HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` as the `T` named `name`, replacing an earlier one.
    pub fn insert<T: Any + Send + Sync>(&mut self, name: impl Into<String>, value: T) {
        self.entries
            .insert((TypeId::of::<T>(), name.into()), Arc::new(value));
    }

    /// The `T` named `name`.
    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Option<&T> {
        self.entries
            .get(&(TypeId::of::<T>(), name.to_string()))
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// The names of every `T`, sorted (for errors that list what exists).
    pub fn names<T: Any + Send + Sync>(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .entries
            .keys()
            .filter(|(t, _)| *t == TypeId::of::<T>())
            .map(|(_, n)| n.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Every `T`, by name, sorted by name.
    pub fn all<T: Any + Send + Sync>(&self) -> Vec<(&str, &T)> {
        let mut all: Vec<(&str, &T)> = self
            .entries
            .iter()
            .filter_map(|((_, n), v)| v.downcast_ref::<T>().map(|v| (n.as_str(), v)))
            .collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds every entry of `other` (an entry of the same type and name is replaced).
    pub fn extend(&mut self, other: Resources) {
        self.entries.extend(other.entries);
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.entries.keys().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        f.debug_struct("Resources").field("names", &names).finish()
    }
}

/// What a step may know of the job it is planned into, in the [`Resources`] as the one
/// `JobInfo` named [`JobInfo::RESOURCE`] (the planner puts it there): for kinds whose defaults
/// or checks depend on the job, such as a Kafka sink that names its transactional ids after the
/// job and must fit a transaction into a checkpoint interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// How often the job checkpoints; `None` when it does not.
    pub checkpoint_interval: Option<std::time::Duration>,
}

impl JobInfo {
    /// Its name among the [`Resources`].
    pub const RESOURCE: &'static str = "job";

    /// The job's `JobInfo` in `resources`, if the planner put one there.
    pub fn of(resources: &Resources) -> Option<&JobInfo> {
        resources.get::<JobInfo>(Self::RESOURCE)
    }
}

/// What planning may consult besides a step's own spec and input schemas.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PlanContext<'a> {
    /// What the job will provide (see [`Resources`]): at plan time, declarations only.
    pub resources: &'a Resources,
}

impl<'a> PlanContext<'a> {
    /// A context over `resources`.
    pub fn new(resources: &'a Resources) -> Self {
        PlanContext { resources }
    }
}

/// What [`SourceSpec::create`], [`OperatorSpec::create`] and [`SinkSpec::create`] are given for
/// one subtask.
#[derive(Debug, Clone, Copy)]
pub struct CreateContext<'a> {
    info: &'a TaskInfo,
    inputs: &'a [SchemaRef],
    output: Option<&'a SchemaRef>,
    resources: &'a Resources,
}

impl<'a> CreateContext<'a> {
    /// The context of subtask `info`, with the planned input schemas (one per input, in port
    /// order; none for sources), the planned output schema (none for sinks) and the job's
    /// resources.
    pub fn new(
        info: &'a TaskInfo,
        inputs: &'a [SchemaRef],
        output: Option<&'a SchemaRef>,
        resources: &'a Resources,
    ) -> Self {
        CreateContext {
            info,
            inputs,
            output,
            resources,
        }
    }

    /// Which subtask this is.
    pub fn info(&self) -> &'a TaskInfo {
        self.info
    }

    /// The schema of each input, in port order (empty for sources).
    pub fn inputs(&self) -> &'a [SchemaRef] {
        self.inputs
    }

    /// The schema of the first input (an internal error for sources).
    pub fn input(&self) -> Result<&'a SchemaRef> {
        self.inputs
            .first()
            .ok_or_else(|| Error::internal(format!("{}: created without an input", self.info.node)))
    }

    /// The planned output schema (an internal error for sinks). Sources emit exactly this
    /// schema, which may be a projection of what their spec reads when the planner pushed a
    /// projection down ([`SourceSpec::projects`]).
    pub fn output(&self) -> Result<&'a SchemaRef> {
        self.output.ok_or_else(|| {
            Error::internal(format!(
                "{}: created without an output schema",
                self.info.node
            ))
        })
    }

    /// The job's resources (services by name, ...).
    pub fn resources(&self) -> &'a Resources {
        self.resources
    }
}

/// A spec as a value: implemented for every `Serialize + 'static` type, so spec types get it by
/// deriving `Serialize`.
pub trait SpecValue {
    /// The spec as the neutral value it parses from (see the module's contract).
    fn to_value(&self) -> Result<serde_json::Value>;

    /// For rewrites that recognise a spec type (fusion): `spec.as_any().downcast_ref::<T>()`.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any> SpecValue for T {
    fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| {
            Error::internal(format!(
                "cannot serialise a spec of type {}",
                std::any::type_name::<T>()
            ))
            .with_source(e)
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What every spec answers, whatever its role.
pub trait Spec: SpecValue + fmt::Debug + Send + Sync + 'static {
    /// One line for `weir validate` / `weir explain`: the kind and its main options
    /// (`filter amount > 100`).
    fn describe(&self) -> String;

    /// Whether the step must run as one instance whatever parallelism is asked (a global limit,
    /// the console). Default: no.
    fn single_instance(&self) -> bool {
        false
    }
}

/// A source kind's spec: reads rows from outside the job.
pub trait SourceSpec: Spec {
    /// Plan time: the schema of the rows it emits. May list the input and read metadata (a
    /// Parquet footer, the first lines of a CSV file); an error names what is missing or wrong.
    fn schema(&self, ctx: &PlanContext<'_>) -> Result<SchemaRef>;

    /// Whether the running source reads only the columns of the output schema it is created with
    /// ([`CreateContext::output`]), so that the planner may push a projection down: hand it a
    /// subset of [`schema`](SourceSpec::schema)'s columns, in schema order. Default: no.
    fn projects(&self) -> bool {
        false
    }

    /// Job start, once per subtask: the running source for `ctx.info()`'s share of the input,
    /// emitting batches of `ctx.output()`.
    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Source>>;
}

/// An operator kind's spec: reads rows from its inputs and emits rows.
pub trait OperatorSpec: Spec {
    /// How many inputs it takes. Default: exactly one. A union takes any number from one; a
    /// join exactly two (its inputs are told apart by port, the order of
    /// [`output_schema`](OperatorSpec::output_schema)'s `inputs`).
    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    /// Plan time: checks the spec against the input schemas (one per input, in port order;
    /// their number is within [`arity`](OperatorSpec::arity)) and returns the output schema. An
    /// unknown column or a wrong type is an error naming both.
    fn output_schema(&self, inputs: &[SchemaRef], ctx: &PlanContext<'_>) -> Result<SchemaRef>;

    /// Plan time, for projection pushdown: the columns of each input (in port order) it reads
    /// when its consumers read `out` of its output. Default: every column of every input, which
    /// is always correct; answer less only when sure.
    fn input_need(&self, inputs: &[SchemaRef], out: &Need) -> Result<Vec<Need>> {
        let _ = out;
        Ok(vec![Need::All; inputs.len()])
    }

    /// Plan time, for operators that keep state per key (windowed aggregations, joins): the
    /// columns rows of input `input` (port order) must be hash-routed by, so that the rows of a
    /// key and its state meet in one instance. The planner routes that input by them; a routing
    /// step before it that routes otherwise is a plan error. `Some(vec![])` means the state is
    /// global (no keys), and the step must also answer [`Spec::single_instance`] `true`.
    /// Default: `None` (the input is routed as the spec's routing steps say).
    fn input_keys(&self, input: usize) -> Option<Vec<String>> {
        let _ = input;
        None
    }

    /// Job start, once per subtask: the running operator, given the planned input and output
    /// schemas (`ctx.inputs()`, `ctx.output()`). It must emit batches of exactly the output
    /// schema.
    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>>;
}

/// A sink kind's spec: writes rows outside the job. Its running instance is an [`Operator`] that
/// emits nothing.
pub trait SinkSpec: Spec {
    /// How many inputs it takes. Default: exactly one.
    fn arity(&self) -> RangeInclusive<usize> {
        1..=1
    }

    /// Plan time: checks that it can write rows of these schemas. Default: it can write any.
    fn check_inputs(&self, inputs: &[SchemaRef], ctx: &PlanContext<'_>) -> Result<()> {
        let _ = (inputs, ctx);
        Ok(())
    }

    /// Job start, once per subtask: the running sink, given the planned input schemas.
    fn create(&self, ctx: &CreateContext<'_>) -> Result<Box<dyn Operator>>;
}

/// A parsed step: its role and its spec.
#[derive(Debug, Clone)]
pub enum Step {
    /// A source.
    Source(Arc<dyn SourceSpec>),
    /// An operator.
    Op(Arc<dyn OperatorSpec>),
    /// A sink.
    Sink(Arc<dyn SinkSpec>),
}

impl Step {
    /// Its role.
    pub fn role(&self) -> Role {
        match self {
            Step::Source(_) => Role::Source,
            Step::Op(_) => Role::Op,
            Step::Sink(_) => Role::Sink,
        }
    }

    /// What every spec answers.
    pub fn spec(&self) -> &dyn Spec {
        match self {
            Step::Source(s) => s.as_ref(),
            Step::Op(s) => s.as_ref(),
            Step::Sink(s) => s.as_ref(),
        }
    }

    /// See [`Spec::describe`].
    pub fn describe(&self) -> String {
        self.spec().describe()
    }

    /// See [`Spec::single_instance`].
    pub fn single_instance(&self) -> bool {
        self.spec().single_instance()
    }

    /// See [`SpecValue::to_value`].
    pub fn to_value(&self) -> Result<serde_json::Value> {
        self.spec().to_value()
    }

    /// How many inputs it takes (none for sources).
    pub fn arity(&self) -> RangeInclusive<usize> {
        match self {
            Step::Source(_) => 0..=0,
            Step::Op(s) => s.arity(),
            Step::Sink(s) => s.arity(),
        }
    }
}

type ParseFn = fn(serde_json::Value, &str) -> Result<Step>;

/// One registered kind: its role, its name and how to parse its spec.
#[derive(Clone)]
pub struct Kind {
    role: Role,
    name: &'static str,
    parse: ParseFn,
}

impl Kind {
    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its name (`filter` of `op: filter`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Parses a spec of this kind; errors start with `at` and name the key path.
    pub fn parse(&self, options: serde_json::Value, at: &str) -> Result<Step> {
        (self.parse)(options, at)
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.role, self.name)
    }
}

fn parse_source<T: SourceSpec + DeserializeOwned>(v: serde_json::Value, at: &str) -> Result<Step> {
    Ok(Step::Source(Arc::new(from_value::<T>(v, at)?)))
}

fn parse_op<T: OperatorSpec + DeserializeOwned>(v: serde_json::Value, at: &str) -> Result<Step> {
    Ok(Step::Op(Arc::new(from_value::<T>(v, at)?)))
}

fn parse_sink<T: SinkSpec + DeserializeOwned>(v: serde_json::Value, at: &str) -> Result<Step> {
    Ok(Step::Sink(Arc::new(from_value::<T>(v, at)?)))
}

/// Step kinds by role and name, in registration order (the order error messages list them in).
/// A value, not a global: the planner is handed one (`weir_plan::kinds::builtin()` lists every
/// kind weir ships).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: Vec<Kind>,
}

impl Registry {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, role: Role, name: &'static str, parse: ParseFn) -> &mut Self {
        assert!(
            self.get(role, name).is_none(),
            "the step kind '{role}: {name}' is registered twice"
        );
        self.kinds.push(Kind { role, name, parse });
        self
    }

    /// Registers `source: NAME` with spec type `T`. Panics if it is registered already (a bug in
    /// the list of kinds).
    pub fn source<T: SourceSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.add(Role::Source, name, parse_source::<T>)
    }

    /// Registers `op: NAME` with spec type `T`. Panics if it is registered already.
    pub fn op<T: OperatorSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.add(Role::Op, name, parse_op::<T>)
    }

    /// Registers `sink: NAME` with spec type `T`. Panics if it is registered already.
    pub fn sink<T: SinkSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.add(Role::Sink, name, parse_sink::<T>)
    }

    /// The kind `role: name`.
    pub fn get(&self, role: Role, name: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.role == role && k.name == name)
    }

    /// Every kind, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.iter()
    }

    /// The names of the kinds of `role`, in registration order.
    pub fn names(&self, role: Role) -> Vec<&'static str> {
        self.kinds
            .iter()
            .filter(|k| k.role == role)
            .map(|k| k.name)
            .collect()
    }

    /// The message for an unknown kind: `unknown op kind 'filtr', expected one of: filter,
    /// select, ...; did you mean 'filter'?`. `extra` names kinds the caller accepts besides the
    /// registered ones (the YAML front end's routing steps).
    pub fn unknown(&self, role: Role, name: &str, extra: &[&str]) -> String {
        let mut names = self.names(role);
        names.extend_from_slice(extra);
        let hint = did_you_mean(name, names.iter().copied())
            .map(|s| format!("; did you mean '{s}'?"))
            .unwrap_or_default();
        format!(
            "unknown {role} kind '{name}', expected one of: {}{hint}",
            names.join(", ")
        )
    }

    /// Parses the spec of `role: name` from `options`; errors start with `at` and name the key
    /// path, or say the kind is unknown.
    pub fn parse(
        &self,
        role: Role,
        name: &str,
        options: serde_json::Value,
        at: &str,
    ) -> Result<Step> {
        match self.get(role, name) {
            Some(kind) => kind.parse(options, at),
            None => Err(Error::config(format!(
                "{at}: {}",
                self.unknown(role, name, &[])
            ))),
        }
    }
}

/// The first of a step's input schemas: for specs of one input, whose `inputs` the planner
/// guarantees to hold one (an internal error otherwise).
pub fn first_input(inputs: &[SchemaRef]) -> Result<&SchemaRef> {
    inputs
        .first()
        .ok_or_else(|| Error::internal("a step of one input was planned without one"))
}

/// Deserializes `value` into `T`; errors say where (`at`, plus the key path inside) and what was
/// expected, and suggest the closest known key or variant for a misspelled one.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| key_error(at, &e.path().to_string(), &e.into_inner().to_string()))
}

/// The error for a value that does not deserialize: `{at}: key '{path}': {message}`, with a
/// "did you mean" for a misspelled key or variant (for other deserializers than [`from_value`]'s,
/// such as the YAML front end's for job options).
pub fn key_error(at: &str, path: &str, message: &str) -> Error {
    let mut msg = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    if let Some(hint) = suggestion(&msg) {
        msg.push_str(&format!("; did you mean '{hint}'?"));
    }
    if path == "." || path.is_empty() {
        Error::config(format!("{at}: {msg}"))
    } else {
        Error::config(format!("{at}: key '{path}': {msg}"))
    }
}

/// For serde's `unknown field `x`, expected one of `a`, `b`` (or `unknown variant ...`): the
/// closest expected name.
fn suggestion(msg: &str) -> Option<String> {
    let rest = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))?;
    let (got, rest) = rest.split_once('`')?;
    let candidates = rest.split('`').skip(1).step_by(2);
    did_you_mean(got, candidates).map(str::to_string)
}

/// The candidate closest to `got` by edit distance (ignoring case), if one is close enough to be
/// a likely misspelling: at most a third of its length away, and at least one edit allowed.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let got_l = got.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != got)
        .map(|c| (strsim::damerau_levenshtein(&got_l, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count().max(got.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_names_only() {
        let keys = ["predicate", "parallelism", "name"];
        assert_eq!(did_you_mean("predicat", keys), Some("predicate"));
        assert_eq!(did_you_mean("paralelism", keys), Some("parallelism"));
        assert_eq!(did_you_mean("Name", keys), Some("name"));
        assert_eq!(did_you_mean("kafka", ["parquet", "jsonl", "csv"]), None);
        assert_eq!(
            suggestion("unknown field `colum`, expected one of `column`, `output`"),
            Some("column".to_string())
        );
        assert_eq!(
            suggestion("unknown variant `alined`, expected `aligned` or `unaligned`"),
            Some("aligned".to_string())
        );
        assert_eq!(suggestion("invalid type: string, expected u32"), None);
    }

    #[test]
    fn resources_are_found_by_type_and_name() {
        let mut r = Resources::new();
        r.insert("a", 1u32);
        r.insert("b", 2u32);
        r.insert("a", "text".to_string());
        assert_eq!(r.get::<u32>("a"), Some(&1));
        assert_eq!(r.get::<String>("a").map(String::as_str), Some("text"));
        assert_eq!(r.get::<u64>("a"), None);
        assert_eq!(r.names::<u32>(), ["a", "b"]);
        assert_eq!(r.all::<u32>(), [("a", &1), ("b", &2)]);
    }

    #[test]
    fn needs_merge_to_the_union() {
        let mut n = Need::nothing();
        n.merge(Need::Columns(["a".to_string()].into()));
        assert_eq!(
            n.plus(["b".to_string()]),
            Need::Columns(["a".to_string(), "b".to_string()].into())
        );
        n.merge(Need::All);
        assert_eq!(n, Need::All);
        assert_eq!(n.plus(["c".to_string()]), Need::All);
    }
}
