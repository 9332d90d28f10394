//! The `infer` node's spec ([`InferSpec`]) as the planner reads it, its plan-time checks and the
//! output schema.

use crate::backend::{BackendFactory, BackendOptions, OrtBackend};
use crate::model::{ModelInfo, model_name};
use crate::service::CallOptions;
use crate::tensor::{ColumnTensor, InputBinding, Layout, OutputBinding};
use arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind::{self, Resources};
use weir_types::{Error, Result};

/// Parses a humantime duration (`10ms`, `1s`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Serializes a duration as the text [`duration`] reads (`10ms`, `1s`).
pub(crate) fn ser_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// How rows are grouped into model batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Largest batch (rows per model run). Default 32.
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// Longest time a row waits for its batch to fill before a smaller batch is run. Default `10ms`.
    #[serde(
        default = "default_max_wait",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub max_wait: Duration,
    /// Whether the batch size adapts to measured throughput and latency (else always
    /// `max_size`). Default true.
    #[serde(default = "default_true")]
    pub adaptive: bool,
    /// p95 model run time of one batch the adaptive batch size must stay within (queueing at a
    /// busy instance is not counted: it depends on the load, not on the batch size). Default
    /// `500ms`.
    #[serde(
        default = "default_budget",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub latency_budget: Duration,
}

fn default_max_size() -> usize {
    32
}
fn default_max_wait() -> Duration {
    Duration::from_millis(10)
}
fn default_true() -> bool {
    true
}
fn default_budget() -> Duration {
    Duration::from_millis(500)
}
fn default_one() -> usize {
    1
}
fn default_in_flight() -> usize {
    2
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retries() -> u32 {
    2
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_size: default_max_size(),
            max_wait: default_max_wait(),
            adaptive: true,
            latency_budget: default_budget(),
        }
    }
}

/// Runs an ONNX model on tensor columns. See the field docs for defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferSpec {
    /// Path of the `.onnx` model file, run inline (instances of the operator's own). Required
    /// unless `service` is given; the two exclude each other.
    #[serde(default)]
    pub model: PathBuf,
    /// Name of a model service declared in the spec's `services:` section: the rows are sent to
    /// its instances instead of running the model inline. Default: none (inline).
    #[serde(default)]
    pub service: Option<String>,
    /// Longest wait for one attempt of a call (to the step's own instances or to a service)
    /// before it is abandoned and retried. Default `60s`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// Further attempts of a call after a timeout or a retryable error. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one. Default `100ms`.
    #[serde(
        default = "default_backoff",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub backoff: Duration,
    /// Whether output batches keep the input order (`true`), or each input batch is emitted as
    /// soon as all its rows are answered (`false`). Default true.
    #[serde(default = "default_true")]
    pub ordered: bool,
    /// Model input name → column. Default: a model with a single input binds it to column
    /// `tensor`; a model with several inputs binds each to the column of the same name.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Model output name → new column. Default: every model output, in a column named after it.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Intra-op threads per instance. Default 1.
    #[serde(default = "default_one")]
    pub cpus: usize,
    /// Model instances (each an OS thread with its own session, in the step's own pool).
    /// Default 1.
    #[serde(default = "default_one")]
    pub instances: usize,
    /// Whether ONNX Runtime's intra-op threads spin while they wait for work (its own default,
    /// and weir's). Spinning keeps the threads ready between the model's parallel sections;
    /// off, they sleep, which costs a wake-up each time but leaves the cores to other work while
    /// the model waits (several instances or services sharing few cores). Default on.
    #[serde(default = "default_true")]
    pub spin: bool,
    /// GPUs per instance (CUDA execution provider); 0 runs on CPU. Default 0.
    #[serde(default)]
    pub gpus: usize,
    /// Batching. Defaults: see [`BatchSpec`].
    #[serde(default)]
    pub batch: BatchSpec,
    /// Batches in flight per instance (so the next batch is prepared while one runs); with
    /// `service`, requests in flight to the service from each instance of the operator. Default 2.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Value ragged rows are padded with. Default 0.
    #[serde(default)]
    pub pad_value: f64,
    /// Whether ragged rows are grouped by length (within a window of 4 × `batch.max_size` rows)
    /// before batching; output order is unchanged. Default: true when an input is ragged.
    #[serde(default)]
    pub sort_by_length: Option<bool>,
    /// Whether model outputs are kept in the results log (keyed by input and model identity),
    /// so that a restore from a checkpoint answers the requests it re-issues, and the rows its
    /// sources replay, from the log instead of running the model again. The log lives in the
    /// job's checkpoint store (`<store>/logs/<node>/`), so a restore in another directory or on
    /// another machine finds it. Default: on when the job takes checkpoints; `true` without
    /// checkpoints is an error. See `results_log.rs` for the layout and clean-up.
    #[serde(default)]
    pub results_log: Option<bool>,
}

/// What planning an [`InferSpec`] against an input schema found.
#[derive(Debug, Clone)]
pub struct InferPlan {
    /// The model's metadata.
    pub info: ModelInfo,
    /// Bound inputs.
    pub inputs: Vec<InputBinding>,
    /// Bound outputs, in output column order.
    pub outputs: Vec<OutputBinding>,
    /// The operator's output schema.
    pub schema: SchemaRef,
    /// Whether rows are grouped by length.
    pub sort_by_length: bool,
}

impl InferSpec {
    /// A spec with every default for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        InferSpec {
            model: model.into(),
            service: None,
            timeout: default_timeout(),
            retries: default_retries(),
            backoff: default_backoff(),
            ordered: true,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            cpus: 1,
            instances: 1,
            spin: true,
            gpus: 0,
            batch: BatchSpec::default(),
            max_in_flight: 2,
            pad_value: 0.0,
            sort_by_length: None,
            results_log: None,
        }
    }

    /// A spec with every default calling the service `name`.
    pub fn with_service(name: impl Into<String>) -> Self {
        let mut spec = InferSpec::new(PathBuf::new());
        spec.service = Some(name.into());
        spec
    }

    fn name(&self) -> String {
        match &self.service {
            Some(s) => format!("service '{s}'"),
            None => model_name(&self.model),
        }
    }

    /// The options of calls to the service.
    pub fn call_options(&self) -> CallOptions {
        CallOptions {
            timeout: self.timeout,
            retries: self.retries,
            backoff: self.backoff,
        }
    }

    /// Checks the spec's numbers.
    fn validate(&self) -> Result<()> {
        let name = self.name();
        for (what, v) in [
            ("cpus", self.cpus),
            ("instances", self.instances),
            ("batch.max_size", self.batch.max_size),
            ("max_in_flight", self.max_in_flight),
        ] {
            if v == 0 {
                return Err(Error::config(format!(
                    "infer {name}: {what} must be at least 1"
                )));
            }
        }
        match (&self.service, self.model.as_os_str().is_empty()) {
            (Some(s), false) => Err(Error::config(format!(
                "infer: give either model ({}) or service ({s}), not both",
                self.model.display()
            ))),
            (None, true) => Err(Error::config("infer: key 'model' or 'service' is required")),
            _ if self.timeout.is_zero() => Err(Error::config(format!(
                "infer {name}: timeout must be more than 0"
            ))),
            _ => Ok(()),
        }
    }

    /// Plan time: loads the model's metadata (one session), checks every bound input column's
    /// dtype and per-row shape against the model input, and works out the output columns.
    pub fn plan(&self, input: &SchemaRef) -> Result<InferPlan> {
        self.plan_in(input, &Resources::new())
    }

    /// [`plan`](InferSpec::plan) with the job's `resources`, where a step with `service` finds the
    /// service (its declaration at plan time, the running service when the job starts).
    pub fn plan_in(&self, input: &SchemaRef, resources: &Resources) -> Result<InferPlan> {
        self.validate()?;
        if let Some(name) = &self.service {
            let info = crate::service::service_info(resources, name)?;
            return self.plan_with(info, input);
        }
        if self.gpus > 0 {
            // Opening a session with the devices checks that they exist; fail at plan time.
            crate::backend::open_session(
                &self.model,
                1,
                self.gpus,
                false,
                crate::backend::SessionUse::Metadata,
            )?;
        }
        let info = ModelInfo::load(&self.model)?;
        self.plan_with(info, input)
    }

    fn plan_with(&self, info: ModelInfo, input: &SchemaRef) -> Result<InferPlan> {
        let model = info.file_name();
        let names: Vec<&str> = info.inputs.iter().map(|t| t.name.as_str()).collect();
        let mut bound: BTreeMap<String, String> = self.inputs.clone();
        if bound.is_empty() {
            if info.inputs.len() == 1 {
                bound.insert(info.inputs[0].name.clone(), "tensor".into());
            } else {
                for t in &info.inputs {
                    bound.insert(t.name.clone(), t.name.clone());
                }
            }
        }
        for k in bound.keys() {
            if info.input(k).is_none() {
                return Err(Error::config(format!(
                    "infer: model {model} has no input '{k}' (its inputs: {})",
                    names.join(", ")
                )));
            }
        }
        let mut inputs = Vec::new();
        for t in &info.inputs {
            let Some(column) = bound.get(&t.name) else {
                return Err(Error::config(format!(
                    "infer: model input '{}' of {model} is not bound to a column: add it to inputs",
                    t.name
                )));
            };
            let expects = format!(
                "model input '{}' of {model} expects {}",
                t.name,
                t.describe_row()
            );
            let (index, field) = input.column_with_name(column).ok_or_else(|| {
                Error::schema(format!(
                    "infer: column '{column}' does not exist but {expects} from it (columns: {})",
                    input
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if !t.is_batched() {
                return Err(Error::schema(format!(
                    "infer: model input '{}' of {model} has shape {} with a fixed first dimension; weir stacks rows along a dynamic batch dimension",
                    t.name,
                    crate::model::format_shape(&t.shape, Some(&t.symbols))
                )));
            }
            if t.row_shape().iter().skip(1).any(|d| d.is_none()) {
                return Err(Error::schema(format!(
                    "infer: model input '{}' of {model} ({}) has a dynamic dimension after the first per-row one; only the first per-row dimension may vary",
                    t.name,
                    t.describe_row()
                )));
            }
            let col = ColumnTensor::of_field(field).ok_or_else(|| {
                Error::schema(format!(
                    "infer: column '{column}' is {} but {expects}",
                    field.data_type()
                ))
            })?;
            let mismatch = || {
                Error::schema(format!(
                    "infer: column '{column}' is {} but {expects}",
                    col.describe()
                ))
            };
            if col.element != t.element {
                return Err(mismatch());
            }
            match &col.layout {
                Layout::Fixed { shape, declared } => {
                    let row = t.row_shape();
                    if *declared {
                        let ok = shape.len() == row.len()
                            && shape
                                .iter()
                                .zip(row)
                                .all(|(a, b)| b.is_none_or(|b| b == *a));
                        if !ok {
                            return Err(mismatch());
                        }
                    } else {
                        let n: usize = shape.iter().product();
                        let fixed: usize = row.iter().map(|d| d.unwrap_or(1)).product();
                        let ok = if row.iter().any(|d| d.is_none()) {
                            fixed > 0 && n.is_multiple_of(fixed)
                        } else {
                            n == fixed
                        };
                        if !ok {
                            return Err(mismatch());
                        }
                    }
                }
                Layout::List => {}
                Layout::VariableShape => {}
            }
            inputs.push(InputBinding {
                input: t.name.clone(),
                column: column.clone(),
                index,
                tensor: col,
                row_shape: t.row_shape().to_vec(),
                symbol: t.row_symbols().first().cloned().flatten(),
                element: t.element.clone(),
                pad_value: self.pad_value,
            });
        }
        let out_names: Vec<&str> = info.outputs.iter().map(|t| t.name.as_str()).collect();
        let mut bound_out: Vec<(String, String)> = self.outputs.clone().into_iter().collect();
        if bound_out.is_empty() {
            bound_out = info
                .outputs
                .iter()
                .map(|t| (t.name.clone(), t.name.clone()))
                .collect();
        }
        let mut outputs = Vec::new();
        for (o, column) in bound_out {
            let t = info.output(&o).ok_or_else(|| {
                Error::config(format!(
                    "infer: model {model} has no output '{o}' (its outputs: {})",
                    out_names.join(", ")
                ))
            })?;
            if input.column_with_name(&column).is_some()
                || outputs.iter().any(|b: &OutputBinding| b.column == column)
            {
                return Err(Error::schema(format!(
                    "infer: output column '{column}' for model output '{o}' of {model} already exists; choose another name in outputs"
                )));
            }
            outputs.push(OutputBinding::new(t, &column, &model)?);
        }
        let mut fields: Vec<_> = input.fields().iter().cloned().collect();
        fields.extend(outputs.iter().map(|o| o.field.clone()));
        let schema = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        let ragged = inputs.iter().any(|b| b.ragged());
        Ok(InferPlan {
            info,
            inputs,
            outputs,
            schema,
            sort_by_length: ragged && self.sort_by_length.unwrap_or(true),
        })
    }

    /// Plan time: loads the model's metadata, checks the bound input columns (a mismatch names
    /// both sides) and returns the output schema: input columns plus one per bound model output.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.plan(input)?.schema)
    }

    /// Creates the operator with ONNX Runtime instances (loaded when the operator opens).
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn weir_runtime::Operator>> {
        self.create_in(input, &Resources::new())
    }

    /// Creates the operator: calling the service of the job's `resources` named by `service`, or
    /// with ONNX Runtime instances of its own (loaded when the operator opens).
    pub fn create_in(
        &self,
        input: &SchemaRef,
        resources: &Resources,
    ) -> Result<Box<dyn weir_runtime::Operator>> {
        let plan = self.plan_in(input, resources)?;
        if let Some(name) = &self.service {
            return Ok(Box::new(crate::operator::InferOperator::with_service(
                self.clone(),
                plan,
                crate::service::service(resources, name)?,
            )));
        }
        let factory = OrtBackend::factory(
            &self.model,
            BackendOptions {
                cpus: self.cpus,
                gpus: self.gpus,
                spin: self.spin,
            },
        );
        Ok(Box::new(crate::operator::InferOperator::new(
            self.clone(),
            plan,
            factory,
        )?))
    }

    /// Creates the operator with backends from `factory` (for other backends and fault
    /// injection); the model file is still read for its metadata.
    pub fn create_with_backend(
        &self,
        input: &SchemaRef,
        factory: BackendFactory,
    ) -> Result<crate::operator::InferOperator> {
        let plan = self.plan(input)?;
        crate::operator::InferOperator::new(self.clone(), plan, factory)
    }

    /// One line for plans and logs.
    pub fn describe(&self) -> String {
        let map = |m: &BTreeMap<String, String>, arrow: &str| {
            if m.is_empty() {
                "default".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}{arrow}{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        if let Some(s) = &self.service {
            return format!(
                "infer service={s} inputs={} outputs={} batch<={} wait={:?}{} in_flight={} timeout={:?} retries={} backoff={:?}{}",
                map(&self.inputs, "<-"),
                map(&self.outputs, "->"),
                self.batch.max_size,
                self.batch.max_wait,
                if self.batch.adaptive { " adaptive" } else { "" },
                self.max_in_flight,
                self.timeout,
                self.retries,
                self.backoff,
                if self.ordered { "" } else { " unordered" }
            );
        }
        format!(
            "infer model={} inputs={} outputs={} instances={} cpus={} gpus={} batch<={} wait={:?}{} budget={:?} in_flight={}",
            self.name(),
            map(&self.inputs, "<-"),
            map(&self.outputs, "->"),
            self.instances,
            self.cpus,
            self.gpus,
            self.batch.max_size,
            self.batch.max_wait,
            if self.batch.adaptive { " adaptive" } else { "" },
            self.batch.latency_budget,
            self.max_in_flight
        )
    }
}

impl kind::Spec for InferSpec {
    fn describe(&self) -> String {
        InferSpec::describe(self)
    }
}

impl kind::OperatorSpec for InferSpec {
    fn output_schema(
        &self,
        inputs: &[SchemaRef],
        ctx: &kind::PlanContext<'_>,
    ) -> Result<SchemaRef> {
        Ok(self
            .plan_in(kind::first_input(inputs)?, ctx.resources)?
            .schema)
    }

    /// Reads the columns bound to the model's inputs, adds the output columns, passes the rest
    /// through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.through(
            self.outputs.values().map(String::as_str),
            self.inputs.values().map(String::as_str),
        )])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn weir_runtime::Operator>> {
        self.create_in(ctx.input()?, ctx.resources())
    }
}
