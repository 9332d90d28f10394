//! Post-processing ops for model outputs: [`TopKSpec`] (best classes with labels),
//! [`L2NormalizeSpec`] and [`MeanPoolSpec`] (sentence embeddings from token states + mask).
//! All are cheap row-wise kernels run directly in `process_batch`.

use crate::tensor::{fixed_shape_of, row_values};
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, ListArray, StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

fn column<'a>(input: &'a SchemaRef, name: &str, op: &str) -> Result<(usize, &'a Field)> {
    input.column_with_name(name).ok_or_else(|| {
        Error::schema(format!(
            "{op}: column '{name}' does not exist (columns: {})",
            input
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn append(input: &SchemaRef, fields: Vec<Field>, op: &str) -> Result<SchemaRef> {
    let mut all: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in fields {
        if let Some(i) = all.iter().position(|g| g.name() == f.name()) {
            all[i] = f;
        } else {
            all.push(f);
        }
    }
    let _ = op;
    Ok(Arc::new(Schema::new_with_metadata(
        all,
        input.metadata().clone(),
    )))
}

/// Assembles an output batch: the columns of `schema` named in `names` come from `cols` (same
/// order), the others from `batch` by name.
fn with_columns(
    batch: &RecordBatch,
    schema: &SchemaRef,
    names: &[&str],
    cols: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let mut out = Vec::with_capacity(schema.fields().len());
    for f in schema.fields().iter() {
        let c = match names.iter().position(|n| *n == f.name()) {
            Some(i) => cols.get(i).cloned(),
            None => batch.column_by_name(f.name()).cloned(),
        };
        out.push(
            c.ok_or_else(|| Error::internal(format!("output column '{}' is missing", f.name())))?,
        );
    }
    Ok(RecordBatch::try_new(schema.clone(), out)?)
}

/// Flat f32 values of row `r` of a tensor column (any numeric element type, cast to f32).
fn row_f32(col: &ArrayRef, r: usize) -> Result<(Vec<f32>, Option<Vec<usize>>)> {
    let (v, shape) = row_values(col, r)?;
    let v = arrow::compute::cast(&v, &DataType::Float32)?;
    Ok((v.as_primitive::<Float32Type>().values().to_vec(), shape))
}

fn vector_field(name: &str, dim: usize) -> Field {
    Field::new(
        name,
        DataType::new_fixed_size_list(DataType::Float32, dim as i32, false),
        false,
    )
}

fn vector_array(field: &Field, dim: usize, values: Vec<f32>) -> Result<ArrayRef> {
    let DataType::FixedSizeList(child, _) = field.data_type() else {
        return Err(Error::internal("vector field is not a fixed-size list"));
    };
    Ok(Arc::new(FixedSizeListArray::try_new(
        child.clone(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}

/// L2-normalises a fixed-shape tensor or vector column (each row divided by its Euclidean norm;
/// all-zero rows stay zero). The result is an f32 column of the same shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2NormalizeSpec {
    /// Input column (`FixedSizeList` of numbers). Required.
    pub column: String,
    /// Output column. Default: replaces `column`.
    #[serde(default)]
    pub output: Option<String>,
}

impl L2NormalizeSpec {
    fn out_name(&self) -> String {
        self.output.clone().unwrap_or_else(|| self.column.clone())
    }

    fn out_field(&self, input: &SchemaRef) -> Result<Field> {
        let (_, f) = column(input, &self.column, "l2_normalize")?;
        let DataType::FixedSizeList(child, n) = f.data_type() else {
            return Err(Error::schema(format!(
                "l2_normalize: column '{}' is {} but a fixed-size tensor or vector is needed",
                self.column,
                f.data_type()
            )));
        };
        if !child.data_type().is_numeric() {
            return Err(Error::schema(format!(
                "l2_normalize: column '{}' holds {}, not numbers",
                self.column,
                child.data_type()
            )));
        }
        match fixed_shape_of(f) {
            Some(shape) => {
                crate::tensor::fixed_shape_field(&self.out_name(), DataType::Float32, &shape)
            }
            None => Ok(vector_field(&self.out_name(), *n as usize)),
        }
    }

    /// The output schema (input columns, with the output column added or replaced).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        append(input, vec![self.out_field(input)?], "l2_normalize")
    }

    /// Creates the operator.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.output_schema(input)?;
        let field = self.out_field(input)?;
        Ok(Box::new(L2Normalize {
            spec: self.clone(),
            schema,
            field,
        }))
    }

    /// One line for plans and logs.
    pub fn describe(&self) -> String {
        format!("l2_normalize {} -> {}", self.column, self.out_name())
    }
}

impl kind::Spec for L2NormalizeSpec {
    fn describe(&self) -> String {
        L2NormalizeSpec::describe(self)
    }
}

impl kind::OperatorSpec for L2NormalizeSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        L2NormalizeSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads its column, writes the output (in place by default), passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        let output = self.output.as_deref().unwrap_or(&self.column);
        Ok(vec![out.through([output], [self.column.as_str()])])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        L2NormalizeSpec::create(self, ctx.input()?)
    }
}

struct L2Normalize {
    spec: L2NormalizeSpec,
    schema: SchemaRef,
    field: Field,
}

/// Divides `v` by its L2 norm (zero vectors unchanged).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[async_trait]
impl Operator for L2Normalize {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let col = weir_types::planned_column(&batch, &self.spec.column, "l2_normalize")?;
        let fsl = col.as_fixed_size_list();
        let dim = fsl.value_length() as usize;
        let values = arrow::compute::cast(fsl.values(), &DataType::Float32)?;
        let values = values.as_primitive::<Float32Type>();
        let start = fsl.offset() * dim;
        let mut data = values.values()[start..start + fsl.len() * dim].to_vec();
        for row in data.chunks_mut(dim.max(1)) {
            l2_normalize(row);
        }
        let arr = vector_array(&self.field, dim, data)?;
        out.emit(with_columns(
            &batch,
            &self.schema,
            &[&self.spec.out_name()],
            vec![arr],
        )?);
        Ok(())
    }
}

/// Mean over the first dimension of a per-row `[s, d]` tensor, weighted by a mask column (1 keeps
/// a position, 0 drops it), giving a vector of dimension `d` — MiniLM's sentence pooling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanPoolSpec {
    /// Per-row `[s, d]` tensor column (fixed or variable shape). Required.
    pub column: String,
    /// Mask column (list of 0/1 per position, at least `s` long). Default: no mask (plain mean).
    #[serde(default)]
    pub mask: Option<String>,
    /// Output vector column. Default `embedding`.
    #[serde(default = "default_embedding")]
    pub output: String,
    /// Vector dimension `d`. Default: the last dimension from the column's tensor metadata.
    #[serde(default)]
    pub dim: Option<usize>,
}

fn default_embedding() -> String {
    "embedding".into()
}

impl MeanPoolSpec {
    fn dim(&self, input: &SchemaRef) -> Result<usize> {
        let (_, f) = column(input, &self.column, "mean_pool")?;
        if let Some(d) = self.dim {
            return Ok(d);
        }
        let from_fixed = fixed_shape_of(f).and_then(|s| s.last().copied());
        let from_var = (f.extension_type_name() == Some("arrow.variable_shape_tensor"))
            .then(|| {
                #[derive(Deserialize)]
                struct M {
                    uniform_shape: Option<Vec<Option<usize>>>,
                }
                let m: M = serde_json::from_str(f.extension_type_metadata()?).ok()?;
                m.uniform_shape?.last().copied().flatten()
            })
            .flatten();
        from_fixed.or(from_var).ok_or_else(|| {
            Error::schema(format!(
                "mean_pool: column '{}' does not declare its last dimension; set dim",
                self.column
            ))
        })
    }

    /// The output schema (input columns plus the vector).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let d = self.dim(input)?;
        if let Some(m) = &self.mask {
            column(input, m, "mean_pool")?;
        }
        append(input, vec![vector_field(&self.output, d)], "mean_pool")
    }

    /// Creates the operator.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.output_schema(input)?;
        let dim = self.dim(input)?;
        Ok(Box::new(MeanPool {
            spec: self.clone(),
            schema,
            dim,
        }))
    }

    /// One line for plans and logs.
    pub fn describe(&self) -> String {
        format!(
            "mean_pool {} mask={} -> {}",
            self.column,
            self.mask.as_deref().unwrap_or("none"),
            self.output
        )
    }
}

impl kind::Spec for MeanPoolSpec {
    fn describe(&self) -> String {
        MeanPoolSpec::describe(self)
    }
}

impl kind::OperatorSpec for MeanPoolSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        MeanPoolSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the token embeddings (and the mask), adds the pooled column, passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        let reads = std::iter::once(self.column.as_str()).chain(self.mask.as_deref());
        Ok(vec![out.through([self.output.as_str()], reads)])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        MeanPoolSpec::create(self, ctx.input()?)
    }
}

struct MeanPool {
    spec: MeanPoolSpec,
    schema: SchemaRef,
    dim: usize,
}

/// Masked mean of the `s` rows of `values` (`[s, d]` row-major).
pub fn mean_pool(values: &[f32], d: usize, mask: Option<&[f32]>) -> Vec<f32> {
    let mut sum = vec![0f32; d];
    let mut weight = 0f32;
    for (i, tok) in values.chunks(d.max(1)).enumerate() {
        let w = mask
            .map(|m| m.get(i).copied().unwrap_or(0.0))
            .unwrap_or(1.0);
        if w != 0.0 {
            for (s, x) in sum.iter_mut().zip(tok) {
                *s += x * w;
            }
            weight += w;
        }
    }
    let weight = weight.max(1e-9);
    sum.iter_mut().for_each(|s| *s /= weight);
    sum
}

#[async_trait]
impl Operator for MeanPool {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let col = weir_types::planned_column(&batch, &self.spec.column, "mean_pool")?;
        let mask = match &self.spec.mask {
            Some(m) => Some(weir_types::planned_column(&batch, m, "mean_pool")?),
            None => None,
        };
        let d = self.dim;
        let mut data = Vec::with_capacity(batch.num_rows() * d);
        let mut keep = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let (v, _) = row_f32(&col, r)?;
            let m = match &mask {
                Some(m) => Some(row_f32(m, r)?.0),
                None => None,
            };
            if v.len() % d.max(1) != 0 {
                ctx.bad_row(
                    Error::input(format!(
                        "mean_pool: column '{}' row {r} has {} values, not a multiple of {d}",
                        self.spec.column,
                        v.len()
                    )),
                    Some(self.spec.column.clone()),
                    Some(format!("row {r}")),
                    None,
                )?;
                keep.push(false);
                continue;
            }
            keep.push(true);
            data.extend(mean_pool(&v, d, m.as_deref()));
        }
        let batch = if keep.iter().all(|k| *k) {
            batch
        } else {
            arrow::compute::filter_record_batch(&batch, &arrow::array::BooleanArray::from(keep))?
        };
        let field = vector_field(&self.spec.output, d);
        let arr = vector_array(&field, d, data)?;
        out.emit(with_columns(
            &batch,
            &self.schema,
            &[&self.spec.output],
            vec![arr],
        )?);
        Ok(())
    }
}

/// The `k` best classes of a score column, with labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopKSpec {
    /// Score column (fixed-size tensor or vector of numbers per row). Required.
    pub column: String,
    /// How many classes. Default 1 (then the outputs are scalars; above 1, lists best first).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Labels: a file with one label per line, or `metadata:KEY` to read them (one per line)
    /// from the custom metadata of `model`. Default: the class index as text.
    #[serde(default)]
    pub labels: Option<String>,
    /// Model whose metadata holds the labels (for `labels: metadata:KEY`). Default none.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Label column. Default `label`.
    #[serde(default = "default_label")]
    pub output_label: String,
    /// Score column. Default `score`.
    #[serde(default = "default_score")]
    pub output_score: String,
}

fn default_k() -> usize {
    1
}
fn default_label() -> String {
    "label".into()
}
fn default_score() -> String {
    "score".into()
}

impl TopKSpec {
    /// Reads the labels the spec names (none: `None`).
    pub fn load_labels(&self) -> Result<Option<Vec<String>>> {
        let Some(l) = &self.labels else {
            return Ok(None);
        };
        let text = if let Some(key) = l.strip_prefix("metadata:") {
            let model = self.model.as_ref().ok_or_else(|| {
                Error::config(format!(
                    "top_k: labels '{l}' read model metadata but no model is set"
                ))
            })?;
            let info = crate::model::ModelInfo::load(model)?;
            info.metadata.get(key).cloned().ok_or_else(|| {
                Error::config(format!(
                    "top_k: model {} has no metadata key '{key}' (keys: {})",
                    info.file_name(),
                    info.metadata.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?
        } else {
            std::fs::read_to_string(l).map_err(|e| {
                Error::io(format!("top_k: cannot read labels file {l}")).with_source(e)
            })?
        };
        Ok(Some(text.lines().map(|s| s.trim().to_string()).collect()))
    }

    fn fields(&self) -> Vec<Field> {
        if self.k <= 1 {
            vec![
                Field::new(&self.output_label, DataType::Utf8, false),
                Field::new(&self.output_score, DataType::Float32, false),
            ]
        } else {
            vec![
                Field::new_list(
                    &self.output_label,
                    Field::new_list_field(DataType::Utf8, false),
                    false,
                ),
                Field::new_list(
                    &self.output_score,
                    Field::new_list_field(DataType::Float32, false),
                    false,
                ),
            ]
        }
    }

    /// The output schema (input columns plus label and score).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let (_, f) = column(input, &self.column, "top_k")?;
        if !matches!(f.data_type(), DataType::FixedSizeList(c, _) if c.data_type().is_numeric()) {
            return Err(Error::schema(format!(
                "top_k: column '{}' is {} but a fixed-size tensor of scores is needed",
                self.column,
                f.data_type()
            )));
        }
        if self.k == 0 {
            return Err(Error::config("top_k: k must be at least 1"));
        }
        append(input, self.fields(), "top_k")
    }

    /// Creates the operator (reads the labels now).
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.output_schema(input)?;
        let labels = self.load_labels()?;
        Ok(Box::new(TopK {
            spec: self.clone(),
            schema,
            labels,
        }))
    }

    /// One line for plans and logs.
    pub fn describe(&self) -> String {
        format!(
            "top_k {} k={} -> {}, {}",
            self.column, self.k, self.output_label, self.output_score
        )
    }
}

impl kind::Spec for TopKSpec {
    fn describe(&self) -> String {
        TopKSpec::describe(self)
    }
}

impl kind::OperatorSpec for TopKSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        TopKSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the scores, adds the label and score columns, passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.through(
            [self.output_label.as_str(), self.output_score.as_str()],
            [self.column.as_str()],
        )])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        TopKSpec::create(self, ctx.input()?)
    }
}

struct TopK {
    spec: TopKSpec,
    schema: SchemaRef,
    labels: Option<Vec<String>>,
}

/// Indices of the `k` largest scores, best first (ties: lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    idx.truncate(k);
    idx
}

#[async_trait]
impl Operator for TopK {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let col = weir_types::planned_column(&batch, &self.spec.column, "top_k")?;
        let mut labels = Vec::new();
        let mut scores = Vec::new();
        let mut offsets = vec![0i32];
        for r in 0..batch.num_rows() {
            let (v, _) = row_f32(&col, r)?;
            for i in top_k(&v, self.spec.k) {
                let label = self
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(i).cloned())
                    .unwrap_or_else(|| i.to_string());
                labels.push(label);
                scores.push(v[i]);
            }
            offsets.push(labels.len() as i32);
        }
        let labels = StringArray::from(labels);
        let scores = Float32Array::from(scores);
        let cols: Vec<ArrayRef> = if self.spec.k <= 1 {
            vec![Arc::new(labels), Arc::new(scores)]
        } else {
            let f = self.spec.fields();
            let item = |f: &Field| match f.data_type() {
                DataType::List(i) => Ok(i.clone()),
                _ => Err(Error::internal("top_k list field")),
            };
            let offs = OffsetBuffer::new(offsets.into());
            vec![
                Arc::new(ListArray::try_new(
                    item(&f[0])?,
                    offs.clone(),
                    Arc::new(labels),
                    None,
                )?),
                Arc::new(ListArray::try_new(
                    item(&f[1])?,
                    offs,
                    Arc::new(scores),
                    None,
                )?),
            ]
        };
        out.emit(with_columns(
            &batch,
            &self.schema,
            &[&self.spec.output_label, &self.spec.output_score],
            cols,
        )?);
        Ok(())
    }
}
