//! The registry of step kinds: maps `source: parquet`, `op: filter`, `sink: jsonl`, ... to the spec
//! types of `weir-ops`, `weir-connectors`, `weir-media`, `weir-infer`, `weir-text` and
//! `weir-vector`, and asks each for its schema and its running instances.
//!
//! Paths inside specs (models, tokenizers, label files, vector indexes, inputs and outputs) are
//! used as written: relative ones resolve against the working directory of `weir`, not against
//! the spec file. Specs that ship with weir therefore use `${WEIR_MODELS}` / `${WEIR_DATA}`.

use crate::spec::{Role, StepSpec};
use arrow::datatypes::SchemaRef;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use weir_connectors as conn;
use weir_infer as infer;
use weir_media as media;
use weir_ops as ops;
use weir_runtime::{Operator, Source, TaskInfo};
use weir_types::{Error, Result};

/// Every kind a step can be.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `source: parquet`
    ParquetSource(conn::ParquetSourceSpec),
    /// `source: jsonl`
    JsonlSource(conn::JsonlSourceSpec),
    /// `source: csv`
    CsvSource(conn::CsvSourceSpec),
    /// `source: files`
    FilesSource(conn::FilesSourceSpec),
    /// `source: text`
    TextSource(conn::TextSourceSpec),
    /// `source: values`
    ValuesSource(conn::ValuesSourceSpec),
    /// `op: filter`
    Filter(ops::FilterSpec),
    /// `op: select`
    Select(ops::SelectSpec),
    /// `op: rename`
    Rename(ops::RenameSpec),
    /// `op: with_column`
    WithColumn(ops::WithColumnSpec),
    /// `op: union`
    Union(ops::UnionSpec),
    /// `op: limit`
    Limit(ops::LimitSpec),
    /// `op: throttle`
    Throttle(ops::ThrottleSpec),
    /// `op: key_by`: routes rows by key to the next step (not a node of its own).
    KeyBy(KeyBySpec),
    /// `op: rebalance`: routes batches round robin to the next step (not a node of its own).
    Rebalance(NoOptions),
    /// `op: broadcast`: sends every batch to every instance of the next step (not a node of its own).
    Broadcast(NoOptions),
    /// `op: fetch`
    Fetch(media::FetchSpec),
    /// `op: decode_image`
    DecodeImage(media::DecodeImageSpec),
    /// `op: resize`
    Resize(media::ResizeSpec),
    /// `op: center_crop`
    CenterCrop(media::CenterCropSpec),
    /// `op: to_tensor`
    ToTensor(media::ToTensorSpec),
    /// `op: decode_audio`
    DecodeAudio(media::DecodeAudioSpec),
    /// `op: infer`
    Infer(Box<infer::InferSpec>),
    /// `op: top_k`
    TopK(infer::TopKSpec),
    /// `op: l2_normalize`
    L2Normalize(infer::L2NormalizeSpec),
    /// `op: mean_pool`
    MeanPool(infer::MeanPoolSpec),
    /// `op: vad`
    Vad(infer::VadSpec),
    /// `op: tokenize`
    Tokenize(weir_text::TokenizeSpec),
    /// `op: vector_search`
    VectorSearch(weir_vector::VectorSearchSpec),
    /// `sink: parquet`
    ParquetSink(conn::ParquetSinkSpec),
    /// `sink: jsonl`
    JsonlSink(conn::JsonlSinkSpec),
    /// `sink: console`
    ConsoleSink(conn::ConsoleSinkSpec),
    /// `sink: blackhole`
    BlackholeSink(conn::BlackholeSinkSpec),
    /// `source: kafka`
    #[cfg(feature = "kafka")]
    KafkaSource(Box<weir_kafka::KafkaSourceSpec>),
    /// `sink: kafka`
    #[cfg(feature = "kafka")]
    KafkaSink(Box<weir_kafka::KafkaSinkSpec>),
}

/// Options of `op: key_by`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBySpec {
    /// Key columns; rows with equal keys go to the same instance of the next step.
    pub keys: Vec<String>,
}

/// A kind without options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// Names of the kinds of each role, for error messages and docs.
pub fn kind_names(role: Role) -> &'static [&'static str] {
    match role {
        Role::Source => &[
            "parquet", "jsonl", "csv", "files", "text", "values", "kafka",
        ],
        Role::Op => &[
            "filter",
            "select",
            "rename",
            "with_column",
            "union",
            "limit",
            "throttle",
            "key_by",
            "rebalance",
            "broadcast",
            "fetch",
            "decode_image",
            "resize",
            "center_crop",
            "to_tensor",
            "decode_audio",
            "infer",
            "top_k",
            "l2_normalize",
            "mean_pool",
            "vad",
            "tokenize",
            "vector_search",
        ],
        Role::Sink => &["parquet", "jsonl", "console", "blackhole", "kafka"],
    }
}

impl Kind {
    /// Fills in the options that depend on the job (Kafka's group and transactional id
    /// defaults, and the checkpoint interval an exactly-once sink must fit in).
    #[allow(unused_variables)]
    pub fn bind_job(
        &mut self,
        job: &str,
        step: &str,
        checkpoint_interval: Option<std::time::Duration>,
    ) {
        match self {
            #[cfg(feature = "kafka")]
            Kind::KafkaSource(s) => s.bind_job(job, step),
            #[cfg(feature = "kafka")]
            Kind::KafkaSink(s) => s.bind_job(job, step, checkpoint_interval),
            _ => {}
        }
    }

    /// Parses a step's options into its kind.
    pub fn parse(step: &StepSpec) -> Result<Kind> {
        Ok(match (step.role, step.kind.as_str()) {
            (Role::Source, "parquet") => Kind::ParquetSource(step.options()?),
            (Role::Source, "jsonl") => Kind::JsonlSource(step.options()?),
            (Role::Source, "csv") => Kind::CsvSource(step.options()?),
            (Role::Source, "files") => Kind::FilesSource(step.options()?),
            (Role::Source, "text") => Kind::TextSource(step.options()?),
            (Role::Source, "values") => Kind::ValuesSource(step.options()?),
            (Role::Op, "filter") => Kind::Filter(step.options()?),
            (Role::Op, "select") => Kind::Select(step.options()?),
            (Role::Op, "rename") => Kind::Rename(step.options()?),
            (Role::Op, "with_column") => Kind::WithColumn(step.options()?),
            (Role::Op, "union") => Kind::Union(step.options()?),
            (Role::Op, "limit") => Kind::Limit(step.options()?),
            (Role::Op, "throttle") => Kind::Throttle(step.options()?),
            (Role::Op, "key_by") => Kind::KeyBy(step.options()?),
            (Role::Op, "rebalance") => Kind::Rebalance(step.options()?),
            (Role::Op, "broadcast") => Kind::Broadcast(step.options()?),
            (Role::Op, "fetch") => Kind::Fetch(step.options()?),
            (Role::Op, "decode_image") => Kind::DecodeImage(step.options()?),
            (Role::Op, "resize") => Kind::Resize(step.options()?),
            (Role::Op, "center_crop") => Kind::CenterCrop(step.options()?),
            (Role::Op, "to_tensor") => Kind::ToTensor(step.options()?),
            (Role::Op, "decode_audio") => Kind::DecodeAudio(step.options()?),
            (Role::Op, "infer") => Kind::Infer(Box::new(step.options()?)),
            (Role::Op, "top_k") => Kind::TopK(step.options()?),
            (Role::Op, "l2_normalize") => Kind::L2Normalize(step.options()?),
            (Role::Op, "mean_pool") => Kind::MeanPool(step.options()?),
            (Role::Op, "vad") => Kind::Vad(step.options()?),
            (Role::Op, "tokenize") => Kind::Tokenize(step.options()?),
            (Role::Op, "vector_search") => Kind::VectorSearch(step.options()?),
            (Role::Sink, "parquet") => Kind::ParquetSink(step.options()?),
            (Role::Sink, "jsonl") => Kind::JsonlSink(step.options()?),
            (Role::Sink, "console") => Kind::ConsoleSink(step.options()?),
            (Role::Sink, "blackhole") => Kind::BlackholeSink(step.options()?),
            #[cfg(feature = "kafka")]
            (Role::Source, "kafka") => Kind::KafkaSource(Box::new(step.options()?)),
            #[cfg(feature = "kafka")]
            (Role::Sink, "kafka") => Kind::KafkaSink(Box::new(step.options()?)),
            #[cfg(not(feature = "kafka"))]
            (_, "kafka") => {
                return Err(Error::config(format!(
                    "steps[{}]: kind 'kafka' is not in this build of weir (build it with the cargo feature 'kafka')",
                    step.index
                )));
            }
            (role, other) => {
                return Err(Error::config(format!(
                    "steps[{}]: key '{}': unknown {} kind '{other}', expected one of: {}",
                    step.index,
                    role.key(),
                    role.key(),
                    kind_names(role).join(", ")
                )));
            }
        })
    }

    /// A one-line description for `weir validate`.
    pub fn describe(&self) -> String {
        match self {
            Kind::ParquetSource(s) => s.describe(),
            Kind::JsonlSource(s) => s.describe(),
            Kind::CsvSource(s) => s.describe(),
            Kind::FilesSource(s) => s.describe(),
            Kind::TextSource(s) => s.describe(),
            Kind::ValuesSource(s) => s.describe(),
            Kind::Filter(s) => s.describe(),
            Kind::Select(s) => s.describe(),
            Kind::Rename(s) => s.describe(),
            Kind::WithColumn(s) => s.describe(),
            Kind::Union(s) => s.describe(),
            Kind::Limit(s) => s.describe(),
            Kind::Throttle(s) => s.describe(),
            Kind::KeyBy(k) => format!("key_by {}", k.keys.join(", ")),
            Kind::Rebalance(_) => "rebalance".into(),
            Kind::Broadcast(_) => "broadcast".into(),
            Kind::Fetch(s) => s.describe(),
            Kind::DecodeImage(s) => s.describe(),
            Kind::Resize(s) => s.describe(),
            Kind::CenterCrop(s) => s.describe(),
            Kind::ToTensor(s) => s.describe(),
            Kind::DecodeAudio(s) => s.describe(),
            Kind::Infer(s) => s.describe(),
            Kind::TopK(s) => s.describe(),
            Kind::L2Normalize(s) => s.describe(),
            Kind::MeanPool(s) => s.describe(),
            Kind::Vad(s) => s.describe(),
            Kind::Tokenize(s) => s.describe(),
            Kind::VectorSearch(s) => s.describe(),
            Kind::ParquetSink(s) => s.describe(),
            Kind::JsonlSink(s) => s.describe(),
            Kind::ConsoleSink(s) => s.describe(),
            Kind::BlackholeSink(s) => s.describe(),
            #[cfg(feature = "kafka")]
            Kind::KafkaSource(s) => s.describe(),
            #[cfg(feature = "kafka")]
            Kind::KafkaSink(s) => s.describe(),
        }
    }

    /// For sources: the schema of their output (plan time; may list and read file footers).
    pub fn source_schema(&self) -> Result<SchemaRef> {
        match self {
            Kind::ParquetSource(s) => s.schema(),
            Kind::JsonlSource(s) => s.schema(),
            Kind::CsvSource(s) => s.schema(),
            Kind::FilesSource(s) => s.schema(),
            Kind::TextSource(s) => s.schema(),
            Kind::ValuesSource(s) => s.schema(),
            #[cfg(feature = "kafka")]
            Kind::KafkaSource(s) => s.schema(),
            _ => Err(Error::internal("source_schema called on a non-source")),
        }
    }

    /// For operators: the output schema given the input schemas (plan time).
    pub fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let first = inputs
            .first()
            .ok_or_else(|| Error::internal("operator without input"))?;
        match self {
            Kind::Filter(s) => s.output_schema(first),
            Kind::Select(s) => s.output_schema(first),
            Kind::Rename(s) => s.output_schema(first),
            Kind::WithColumn(s) => s.output_schema(first),
            Kind::Union(s) => s.output_schema_union(inputs),
            Kind::Limit(s) => s.output_schema(first),
            Kind::Throttle(s) => s.output_schema(first),
            Kind::KeyBy(k) => {
                for key in &k.keys {
                    if first.column_with_name(key).is_none() {
                        let names: Vec<_> =
                            first.fields().iter().map(|f| f.name().as_str()).collect();
                        return Err(Error::schema(format!(
                            "key column '{key}' is not in the input; available: {}",
                            names.join(", ")
                        )));
                    }
                }
                Ok(first.clone())
            }
            Kind::Rebalance(_) | Kind::Broadcast(_) => Ok(first.clone()),
            Kind::Fetch(s) => s.output_schema(first),
            Kind::DecodeImage(s) => s.output_schema(first),
            Kind::Resize(s) => s.output_schema(first),
            Kind::CenterCrop(s) => s.output_schema(first),
            Kind::ToTensor(s) => s.output_schema(first),
            Kind::DecodeAudio(s) => s.output_schema(first),
            Kind::Infer(s) => s.output_schema(first),
            Kind::TopK(s) => s.output_schema(first),
            Kind::L2Normalize(s) => s.output_schema(first),
            Kind::MeanPool(s) => s.output_schema(first),
            Kind::Vad(s) => s.output_schema(first),
            Kind::Tokenize(s) => s.output_schema(first),
            Kind::VectorSearch(s) => s.output_schema(first),
            _ => Err(Error::internal("output_schema called on a source or sink")),
        }
    }

    /// Whether the step must run with parallelism 1 whatever is asked.
    pub fn single_instance(&self) -> bool {
        matches!(self, Kind::Limit(_) | Kind::ConsoleSink(_))
    }

    /// A factory of running sources.
    pub fn source_factory(
        &self,
        schema: SchemaRef,
    ) -> Result<impl Fn(&TaskInfo) -> Result<Box<dyn Source>> + Send + Sync + 'static> {
        let kind = Arc::new(self.clone());
        Ok(move |info: &TaskInfo| -> Result<Box<dyn Source>> {
            match kind.as_ref() {
                Kind::ParquetSource(s) => s.create(info, schema.clone()),
                Kind::JsonlSource(s) => s.create(info, schema.clone()),
                Kind::CsvSource(s) => s.create(info, schema.clone()),
                Kind::FilesSource(s) => s.create(info, schema.clone()),
                Kind::TextSource(s) => s.create(info, schema.clone()),
                Kind::ValuesSource(s) => s.create(info, schema.clone()),
                #[cfg(feature = "kafka")]
                Kind::KafkaSource(s) => s.create(info, schema.clone()),
                _ => Err(Error::internal("source factory of a non-source")),
            }
        })
    }

    /// A factory of running operators or sinks, given the (first) input schema.
    pub fn operator_factory(
        &self,
        input: SchemaRef,
    ) -> Result<impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static> {
        let kind = Arc::new(self.clone());
        Ok(move |info: &TaskInfo| -> Result<Box<dyn Operator>> {
            match kind.as_ref() {
                Kind::Filter(s) => s.create(&input),
                Kind::Select(s) => s.create(&input),
                Kind::Rename(s) => s.create(&input),
                Kind::WithColumn(s) => s.create(&input),
                Kind::Union(s) => s.create(&input),
                Kind::Limit(s) => s.create(&input),
                Kind::Throttle(s) => s.create(&input),
                Kind::Fetch(s) => s.create(&input),
                Kind::DecodeImage(s) => s.create(&input),
                Kind::Resize(s) => s.create(&input),
                Kind::CenterCrop(s) => s.create(&input),
                Kind::ToTensor(s) => s.create(&input),
                Kind::DecodeAudio(s) => s.create(&input),
                Kind::Infer(s) => s.create(&input),
                Kind::TopK(s) => s.create(&input),
                Kind::L2Normalize(s) => s.create(&input),
                Kind::MeanPool(s) => s.create(&input),
                Kind::Vad(s) => s.create(&input),
                Kind::Tokenize(s) => s.create(&input),
                Kind::VectorSearch(s) => s.create(&input),
                Kind::ParquetSink(s) => s.create(info, input.clone()),
                Kind::JsonlSink(s) => s.create(info, input.clone()),
                Kind::ConsoleSink(s) => s.create(info, input.clone()),
                Kind::BlackholeSink(s) => s.create(info, input.clone()),
                #[cfg(feature = "kafka")]
                Kind::KafkaSink(s) => s.create(info, input.clone()),
                _ => Err(Error::internal(
                    "operator factory of a source or a routing step",
                )),
            }
        })
    }
}

/// Which columns of a step's output its consumers read: the currency of projection pushdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Every column (a sink, or an operator that does not say what it reads).
    All,
    /// Only these.
    Columns(BTreeSet<String>),
}

impl Need {
    /// Adds what another consumer reads.
    pub(crate) fn merge(&mut self, other: Need) {
        match (&mut *self, other) {
            (Need::All, _) => {}
            (_, Need::All) => *self = Need::All,
            (Need::Columns(a), Need::Columns(b)) => a.extend(b),
        }
    }

    fn plus(&self, more: BTreeSet<String>) -> Need {
        match self {
            Need::All => Need::All,
            Need::Columns(c) => Need::Columns(c.iter().cloned().chain(more).collect()),
        }
    }
}

impl Kind {
    /// Plan time, for projection pushdown: the columns of `input` this step reads when its
    /// consumers read `out` of its output. Kinds that do not know answer [`Need::All`].
    pub(crate) fn input_need(&self, input: &SchemaRef, out: &Need) -> Result<Need> {
        Ok(match self {
            Kind::Filter(s) => out.plus(s.required_columns(input)?),
            Kind::Select(s) => Need::Columns(s.required_columns(input)?),
            Kind::WithColumn(s) => match out {
                Need::All => Need::All,
                Need::Columns(c) => {
                    let mut c = c.clone();
                    c.remove(&s.name);
                    c.extend(s.required_columns(input)?);
                    Need::Columns(c)
                }
            },
            Kind::Rename(s) => match out {
                Need::All => Need::All,
                Need::Columns(c) => Need::Columns(
                    c.iter()
                        .map(|name| {
                            s.columns
                                .iter()
                                .find(|(_, new)| *new == name)
                                .map_or_else(|| name.clone(), |(old, _)| old.clone())
                        })
                        .collect(),
                ),
            },
            Kind::KeyBy(k) => out.plus(k.keys.iter().cloned().collect()),
            Kind::Limit(_) | Kind::Throttle(_) | Kind::Rebalance(_) | Kind::Broadcast(_) => {
                out.clone()
            }
            _ => Need::All,
        })
    }

    /// Whether this source reads only the columns of the schema it is built with (so the planner
    /// may hand it a projection).
    pub(crate) fn projects(&self) -> bool {
        matches!(self, Kind::ParquetSource(_))
    }
}
