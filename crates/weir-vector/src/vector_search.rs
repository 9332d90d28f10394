//! `vector_search`: exact k-nearest-neighbour search of an embedding column against an index of
//! vectors in a Parquet file.
//!
//! At plan time the index file's footer is read to check the index column and compare its
//! dimension with the query column's. At `open` the index's vectors are loaded into one contiguous
//! row-major `Vec<f32>` (unit-normalised once for the cosine metric) together with its id columns;
//! instances created from the same spec share one loaded copy. Each batch is then scored by brute
//! force on a blocking thread ([`OperatorContext::spawn_cpu`]) with the blocked kernel of
//! [`crate::kernel`], and every row gets a `neighbors` list of its best `k` index rows.
//!
//! Null query vectors, vectors with a null or non-finite element, vectors of the wrong length (for
//! `List<Float32>` query columns) and, for cosine, zero vectors are bad rows: they go through the
//! job's `on_error` policy and the other rows of the batch go on.

use crate::kernel::{self, Candidate};
use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, ListArray, RecordBatch, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float32Type, Schema, SchemaRef};
use async_trait::async_trait;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result, row_as_json};

fn default_embedding() -> String {
    "embedding".into()
}

fn default_k() -> usize {
    5
}

fn default_output() -> String {
    "neighbors".into()
}

/// How closeness is scored; higher is closer either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity: the dot product of the unit-normalised vectors (the default).
    #[default]
    Cosine,
    /// The raw dot product (inner product).
    Dot,
}

/// The loaded index, shared by the instances created from one spec (and its clones), with what it
/// was loaded for: a clone whose index options were changed loads its own.
#[derive(Clone, Default)]
struct SharedIndex(Arc<Mutex<Option<Loaded>>>);

/// A loaded index and what it was loaded for.
type Loaded = (IndexKey, Arc<Index>);

/// The options an [`Index`] depends on.
#[derive(Debug, Clone, PartialEq)]
struct IndexKey {
    index: PathBuf,
    index_column: String,
    id_columns: Vec<String>,
    metric: Metric,
}

impl fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loaded = self.0.lock().map(|g| g.is_some()).unwrap_or(false);
        write!(f, "SharedIndex {{ loaded: {loaded} }}")
    }
}

/// Options of a `vector_search` operator.
///
/// The output is the input's columns followed by `output`, of type
/// `List<Struct<rank: UInt32, score: Float32, <id columns...>>>`: for each row, its best
/// `min(k, index rows)` index rows in score order (rank 1 is the closest; equal scores keep index
/// file order), each with its id columns' values.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSearchSpec {
    /// The query column: `FixedSizeList<Float32>(dim)` (or the `weir.vector` extension over it),
    /// or `List<Float32>` checked row by row. Default `embedding`.
    #[serde(default = "default_embedding")]
    pub column: String,
    /// Path of the Parquet index file (relative paths are relative to the working directory).
    /// Required, no default.
    pub index: PathBuf,
    /// The index file's vector column, of the same types as `column`. Default `embedding`.
    #[serde(default = "default_embedding")]
    pub index_column: String,
    /// The index file's columns carried into each neighbour, in this order. Default: every column
    /// of the index file except `index_column`, in file order.
    #[serde(default)]
    pub id_columns: Option<Vec<String>>,
    /// Neighbours per row; at least 1. When the index has fewer rows, every index row is returned.
    /// Default 5.
    #[serde(default = "default_k")]
    pub k: usize,
    /// `cosine` (the default) or `dot`.
    #[serde(default)]
    pub metric: Metric,
    /// Name of the output column. Default `neighbors`.
    #[serde(default = "default_output")]
    pub output: String,
    #[serde(skip)]
    shared: SharedIndex,
}

/// What the index file's footer says.
#[derive(Debug, Clone)]
struct IndexLayout {
    /// The vector dimension.
    dim: usize,
    /// The id columns' fields (made nullable), in output order.
    id_fields: Vec<FieldRef>,
}

impl VectorSearchSpec {
    /// A spec with every default, for the index file at `index`.
    pub fn new(index: impl Into<PathBuf>) -> Self {
        VectorSearchSpec {
            column: default_embedding(),
            index: index.into(),
            index_column: default_embedding(),
            id_columns: None,
            k: default_k(),
            metric: Metric::default(),
            output: default_output(),
            shared: SharedIndex::default(),
        }
    }

    /// Plan time: checks the spec against the input schema and the index file's footer (column
    /// types and dimensions) and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.plan(input)?.0)
    }

    /// Builds one running instance (called once per parallel subtask). The index is loaded at
    /// `open`, once for all instances of this spec.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let (schema, layout, item) = self.plan(input)?;
        Ok(Box::new(VectorSearch {
            spec: self.clone(),
            schema,
            layout,
            item,
            index: None,
        }))
    }

    /// One line for `weir validate`, e.g. `vector_search embedding in index.parquet (k 5, cosine)`.
    pub fn describe(&self) -> String {
        let metric = match self.metric {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
        };
        format!(
            "vector_search {} in {} column {} (k {}, {metric}) -> {}",
            self.column,
            self.index.display(),
            self.index_column,
            self.k,
            self.output
        )
    }

    fn plan(&self, input: &SchemaRef) -> Result<(SchemaRef, IndexLayout, FieldRef)> {
        if self.k == 0 {
            return Err(Error::config("vector_search k must be at least 1"));
        }
        let field = input.field_with_name(&self.column).map_err(|_| {
            Error::schema(format!(
                "vector_search column '{}' is not in the input (columns: {})",
                self.column,
                weir_types::column_names(input)
            ))
        })?;
        let query_dim = vector_dim(field.data_type()).ok_or_else(|| {
            Error::schema(format!(
                "vector_search column '{}' is {}, not a vector column (FixedSizeList<Float32> or \
                 List<Float32>)",
                self.column,
                field.data_type()
            ))
        })?;
        if input.field_with_name(&self.output).is_ok() {
            return Err(Error::schema(format!(
                "vector_search output column '{}' is already in the input; choose another name \
                 with output",
                self.output
            )));
        }
        let layout = self.read_layout()?;
        if let Some(q) = query_dim
            && q != layout.dim
        {
            return Err(Error::schema(format!(
                "vector_search column '{}' has dimension {q} but index column '{}' of {} has \
                 dimension {}",
                self.column,
                self.index_column,
                self.index.display(),
                layout.dim
            )));
        }
        let mut fields = vec![
            Arc::new(Field::new("rank", DataType::UInt32, false)),
            Arc::new(Field::new("score", DataType::Float32, false)),
        ];
        fields.extend(layout.id_fields.iter().cloned());
        let item: FieldRef = Arc::new(Field::new(
            "item",
            DataType::Struct(Fields::from(fields)),
            false,
        ));
        let mut out: Vec<FieldRef> = input.fields().iter().cloned().collect();
        out.push(Arc::new(Field::new(
            &self.output,
            DataType::List(item.clone()),
            false,
        )));
        let schema = Arc::new(Schema::new_with_metadata(out, input.metadata().clone()));
        Ok((schema, layout, item))
    }

    fn open_index(&self) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        let path = self.index.display();
        let file = File::open(&self.index).map_err(|e| {
            Error::config(format!("cannot open vector_search index file {path}")).with_source(e)
        })?;
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            Error::config(format!(
                "vector_search index file {path} is not a readable parquet file"
            ))
            .with_source(e)
        })
    }

    /// Reads the index file's footer (and, for a `List` vector column, its first vector).
    fn read_layout(&self) -> Result<IndexLayout> {
        let path = self.index.display();
        let builder = self.open_index()?;
        let schema = builder.schema().clone();
        let field = schema.field_with_name(&self.index_column).map_err(|_| {
            Error::config(format!(
                "vector_search index file {path} has no column '{}' (columns: {})",
                self.index_column,
                weir_types::column_names(&schema)
            ))
        })?;
        let dim = match vector_dim(field.data_type()) {
            None => {
                return Err(Error::config(format!(
                    "vector_search index column '{}' of {path} is {}, not a vector column \
                     (FixedSizeList<Float32> or List<Float32>)",
                    self.index_column,
                    field.data_type()
                )));
            }
            Some(Some(d)) => d,
            Some(None) => self.first_vector_len(builder)?,
        };
        if dim == 0 {
            return Err(Error::config(format!(
                "vector_search index column '{}' of {path} has dimension 0",
                self.index_column
            )));
        }
        let names: Vec<String> = match &self.id_columns {
            Some(cols) => cols.clone(),
            None => schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| *n != self.index_column)
                .collect(),
        };
        let mut id_fields = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name == "rank" || name == "score" || name == &self.index_column {
                return Err(Error::config(format!(
                    "vector_search id column '{name}' clashes with a neighbour field (rank, score) \
                     or the index column; pick other id_columns"
                )));
            }
            if names[..i].contains(name) {
                return Err(Error::config(format!(
                    "vector_search id column '{name}' is named twice"
                )));
            }
            let f = schema.field_with_name(name).map_err(|_| {
                Error::config(format!(
                    "vector_search id column '{name}' is not in index file {path} (columns: {})",
                    weir_types::column_names(&schema)
                ))
            })?;
            id_fields.push(Arc::new(f.as_ref().clone().with_nullable(true)));
        }
        Ok(IndexLayout { dim, id_fields })
    }

    fn first_vector_len(&self, builder: ParquetRecordBatchReaderBuilder<File>) -> Result<usize> {
        let path = self.index.display();
        let root = root_index(builder.schema(), &self.index_column)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(1024)
            .build()
            .map_err(|e| read_error(&self.index, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| read_error(&self.index, e))?;
            let col = batch.column(0);
            if let Some(i) = (0..col.len()).find(|&i| col.is_valid(i)) {
                return match col.data_type() {
                    DataType::List(_) => Ok(col.as_list::<i32>().value_length(i) as usize),
                    DataType::LargeList(_) => Ok(col.as_list::<i64>().value_length(i) as usize),
                    other => Err(Error::internal(format!("unexpected vector type {other}"))),
                };
            }
        }
        Err(Error::config(format!(
            "vector_search index column '{}' of {path} has no vectors, so its dimension is unknown",
            self.index_column
        )))
    }

    /// Loads the whole index (CPU and IO heavy: call on a blocking thread).
    fn load_index(&self, layout: &IndexLayout) -> Result<Index> {
        let builder = self.open_index()?;
        let schema = builder.schema().clone();
        let mut roots = vec![root_index(&schema, &self.index_column)?];
        for f in &layout.id_fields {
            roots.push(root_index(&schema, f.name())?);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let rows_hint = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|e| read_error(&self.index, e))?;
        let dim = layout.dim;
        let mut vectors: Vec<f32> = Vec::with_capacity(rows_hint.saturating_mul(dim));
        let mut ids: Vec<Vec<ArrayRef>> = vec![Vec::new(); layout.id_fields.len()];
        let mut rows = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| read_error(&self.index, e))?;
            let col = batch
                .column_by_name(&self.index_column)
                .ok_or_else(|| Error::internal("projected index column missing"))?;
            let view = VectorView::new(col.as_ref())?;
            for i in 0..col.len() {
                match view.row(i) {
                    Row::Values(v) if v.len() == dim && v.iter().all(|x| x.is_finite()) => {
                        vectors.extend_from_slice(v)
                    }
                    problem => {
                        return Err(Error::input(format!(
                            "vector_search index file {} row {}: column '{}' {}",
                            self.index.display(),
                            rows + i,
                            self.index_column,
                            problem.describe(dim)
                        )));
                    }
                }
            }
            rows += col.len();
            for (acc, f) in ids.iter_mut().zip(&layout.id_fields) {
                let c = batch
                    .column_by_name(f.name())
                    .ok_or_else(|| Error::internal("projected id column missing"))?;
                acc.push(c.clone());
            }
        }
        if u32::try_from(rows).is_err() {
            return Err(Error::config(format!(
                "vector_search index file {} has {rows} rows; at most {} are supported",
                self.index.display(),
                u32::MAX
            )));
        }
        if self.metric == Metric::Cosine {
            vectors.chunks_exact_mut(dim).for_each(kernel::normalize);
        }
        let ids = ids
            .iter()
            .zip(&layout.id_fields)
            .map(|(parts, f)| {
                if parts.is_empty() {
                    Ok(arrow::array::new_empty_array(f.data_type()))
                } else {
                    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                    Ok(arrow::compute::concat(&refs)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Index {
            dim,
            rows,
            vectors,
            ids,
        })
    }
}

impl kind::Spec for VectorSearchSpec {
    fn describe(&self) -> String {
        VectorSearchSpec::describe(self)
    }
}

impl kind::OperatorSpec for VectorSearchSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        VectorSearchSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        VectorSearchSpec::create(self, ctx.input()?)
    }
}

fn read_error(path: &Path, e: impl Into<weir_types::error::BoxError>) -> Error {
    Error::io(format!(
        "cannot read vector_search index file {}",
        path.display()
    ))
    .with_source(e)
}

fn root_index(schema: &Schema, name: &str) -> Result<usize> {
    schema
        .index_of(name)
        .map_err(|_| Error::internal(format!("index column '{name}' vanished")))
}

/// `Some(Some(dim))` for `FixedSizeList<Float32>(dim)`, `Some(None)` for `List<Float32>` and
/// `LargeList<Float32>` (dimension per row), `None` for anything else.
fn vector_dim(t: &DataType) -> Option<Option<usize>> {
    match t {
        DataType::FixedSizeList(f, d) if f.data_type() == &DataType::Float32 => {
            usize::try_from(*d).ok().map(Some)
        }
        DataType::List(f) | DataType::LargeList(f) if f.data_type() == &DataType::Float32 => {
            Some(None)
        }
        _ => None,
    }
}

/// One row of a vector column.
enum Row<'a> {
    Null,
    NullElement,
    Values(&'a [f32]),
}

impl Row<'_> {
    /// What is wrong with a row that is not a good vector of `dim` finite values.
    fn describe(&self, dim: usize) -> String {
        match self {
            Row::Null => "is null".into(),
            Row::NullElement => "has a null element".into(),
            Row::Values(v) if v.len() != dim => {
                format!("has {} values, expected dimension {dim}", v.len())
            }
            Row::Values(_) => "has a NaN or infinite value".into(),
        }
    }
}

/// Row access to a vector column without copying.
struct VectorView<'a> {
    array: &'a dyn Array,
    values: &'a Float32Array,
    offsets: Offsets<'a>,
}

enum Offsets<'a> {
    Fixed(usize),
    Small(&'a [i32]),
    Large(&'a [i64]),
}

impl<'a> VectorView<'a> {
    fn new(array: &'a dyn Array) -> Result<Self> {
        let (values, offsets) = match array.data_type() {
            DataType::FixedSizeList(_, _) => {
                let l = array.as_fixed_size_list();
                (l.values(), Offsets::Fixed(l.value_length() as usize))
            }
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                (l.values(), Offsets::Small(l.value_offsets()))
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (l.values(), Offsets::Large(l.value_offsets()))
            }
            other => {
                return Err(Error::schema(format!(
                    "{other} is not a vector column (FixedSizeList<Float32> or List<Float32>)"
                )));
            }
        };
        let values = values.as_primitive_opt::<Float32Type>().ok_or_else(|| {
            Error::schema(format!(
                "{} is not a vector column of Float32",
                array.data_type()
            ))
        })?;
        Ok(VectorView {
            array,
            values,
            offsets,
        })
    }

    fn row(&self, i: usize) -> Row<'a> {
        if self.array.is_null(i) {
            return Row::Null;
        }
        let (start, end) = match self.offsets {
            // A sliced `FixedSizeListArray` slices its values too: row i starts at i * dim.
            Offsets::Fixed(d) => (i * d, (i + 1) * d),
            Offsets::Small(o) => (o[i] as usize, o[i + 1] as usize),
            Offsets::Large(o) => (o[i] as usize, o[i + 1] as usize),
        };
        let values: &'a Float32Array = self.values;
        if values.null_count() > 0 && (start..end).any(|j| values.is_null(j)) {
            return Row::NullElement;
        }
        match values.values().get(start..end) {
            Some(v) => Row::Values(v),
            None => Row::NullElement,
        }
    }
}

/// The loaded index.
struct Index {
    dim: usize,
    rows: usize,
    /// `rows × dim`, row-major; unit rows for cosine.
    vectors: Vec<f32>,
    /// One array of `rows` values per id column.
    ids: Vec<ArrayRef>,
}

/// A running `vector_search`.
pub struct VectorSearch {
    spec: VectorSearchSpec,
    schema: SchemaRef,
    layout: IndexLayout,
    item: FieldRef,
    index: Option<Arc<Index>>,
}

impl fmt::Debug for VectorSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorSearch")
            .field("spec", &self.spec)
            .field("dim", &self.layout.dim)
            .field("index_rows", &self.index.as_ref().map(|i| i.rows))
            .finish()
    }
}

/// The result of searching one batch.
struct Searched {
    kept: Vec<u32>,
    neighbors: ArrayRef,
    failures: Vec<(usize, Error)>,
}

fn search_column(
    index: &Index,
    column: &ArrayRef,
    name: &str,
    k: usize,
    metric: Metric,
    item: &FieldRef,
) -> Result<Searched> {
    let view = VectorView::new(column.as_ref())?;
    let dim = index.dim;
    let mut failures = Vec::new();
    let mut kept = Vec::with_capacity(column.len());
    let mut normalized: Vec<Vec<f32>> = Vec::new();
    let mut queries: Vec<&[f32]> = Vec::with_capacity(column.len());
    for i in 0..column.len() {
        let row = view.row(i);
        match row {
            Row::Values(v) if v.len() == dim && v.iter().all(|x| x.is_finite()) => {
                if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
                    failures.push((
                        i,
                        Error::input(format!(
                            "column '{name}' row {i} is a zero vector; cosine similarity is \
                             undefined for it"
                        )),
                    ));
                    continue;
                }
                let row_no = u32::try_from(i).map_err(|_| {
                    Error::input(format!("batch of {} rows is too large", column.len()))
                })?;
                kept.push(row_no);
                if metric == Metric::Cosine {
                    let mut n = v.to_vec();
                    kernel::normalize(&mut n);
                    normalized.push(n);
                } else {
                    queries.push(v);
                }
            }
            problem => failures.push((
                i,
                Error::input(format!("column '{name}' row {i} {}", problem.describe(dim))),
            )),
        }
    }
    if metric == Metric::Cosine {
        queries = normalized.iter().map(Vec::as_slice).collect();
    }
    let results = kernel::search(&queries, &index.vectors, dim, k);
    let neighbors = build_neighbors(index, &results, item)?;
    Ok(Searched {
        kept,
        neighbors,
        failures,
    })
}

fn build_neighbors(index: &Index, results: &[Vec<Candidate>], item: &FieldRef) -> Result<ArrayRef> {
    let total: usize = results.iter().map(Vec::len).sum();
    if i32::try_from(total).is_err() {
        return Err(Error::input(format!(
            "a batch of {} rows gives {total} neighbours, more than a List column holds; use \
             smaller batches or a smaller k",
            results.len()
        )));
    }
    let mut ranks = Vec::with_capacity(total);
    let mut scores = Vec::with_capacity(total);
    let mut rows = Vec::with_capacity(total);
    for r in results {
        for (rank, c) in (1u32..).zip(r) {
            ranks.push(rank);
            scores.push(c.score);
            rows.push(c.row);
        }
    }
    let rows = UInt32Array::from(rows);
    let mut children: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(ranks)),
        Arc::new(Float32Array::from(scores)),
    ];
    for id in &index.ids {
        children.push(arrow::compute::take(id.as_ref(), &rows, None)?);
    }
    let DataType::Struct(fields) = item.data_type() else {
        return Err(Error::internal("vector_search item type is not a struct"));
    };
    let structs = StructArray::try_new(fields.clone(), children, None)?;
    let offsets = OffsetBuffer::<i32>::from_lengths(results.iter().map(Vec::len));
    Ok(Arc::new(ListArray::try_new(
        item.clone(),
        offsets,
        Arc::new(structs),
        None,
    )?))
}

#[async_trait]
impl Operator for VectorSearch {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let key = IndexKey {
            index: self.spec.index.clone(),
            index_column: self.spec.index_column.clone(),
            id_columns: self
                .layout
                .id_fields
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            metric: self.spec.metric,
        };
        let cached = self
            .spec
            .shared
            .0
            .lock()
            .map_err(|_| Error::internal("vector_search index cache poisoned"))?
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, index)| index.clone());
        let index = match cached {
            Some(index) => index,
            None => {
                let spec = self.spec.clone();
                let layout = self.layout.clone();
                let loaded = Arc::new(ctx.spawn_cpu(move || spec.load_index(&layout)).await??);
                let mut slot = self
                    .spec
                    .shared
                    .0
                    .lock()
                    .map_err(|_| Error::internal("vector_search index cache poisoned"))?;
                // Another instance may have loaded it meanwhile; keep one copy.
                match slot.as_ref() {
                    Some((k, index)) if *k == key => index.clone(),
                    _ => {
                        *slot = Some((key, loaded.clone()));
                        loaded
                    }
                }
            }
        };
        self.index = Some(index);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let index = self
            .index
            .clone()
            .ok_or_else(|| Error::internal("vector_search got a batch before open"))?;
        let col = batch.schema().index_of(&self.spec.column).map_err(|_| {
            Error::schema(format!(
                "vector_search column '{}' is not in the batch",
                self.spec.column
            ))
        })?;
        let column = batch.column(col).clone();
        let (name, k, metric, item) = (
            self.spec.column.clone(),
            self.spec.k,
            self.spec.metric,
            self.item.clone(),
        );
        let searched = ctx
            .spawn_cpu(move || search_column(&index, &column, &name, k, metric, &item))
            .await??;
        for (i, error) in searched.failures {
            ctx.bad_row(
                error,
                None,
                Some(format!("row {i} of batch")),
                row_as_json(&batch, i),
            )?;
        }
        let kept = if searched.kept.len() == batch.num_rows() {
            batch
        } else {
            arrow::compute::take_record_batch(&batch, &UInt32Array::from(searched.kept))?
        };
        let mut columns = kept.columns().to_vec();
        columns.push(searched.neighbors);
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeListArray, Int64Array, StringArray};
    use arrow::datatypes::Int64Type;
    use parquet::arrow::ArrowWriter;
    use weir_runtime::ErrorPolicy;
    use weir_types::ErrorKind;

    fn fixed(rows: &[Option<Vec<f32>>], dim: i32) -> ArrayRef {
        Arc::new(
            FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
                rows.iter().map(|r| {
                    r.as_ref()
                        .map(|v| v.iter().copied().map(Some).collect::<Vec<_>>())
                }),
                dim,
            ),
        )
    }

    fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(
            schema.clone(),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .expect("index batch");
        let mut w = ArrowWriter::try_new(File::create(path).expect("create"), schema, None)
            .expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    /// Four 2-d vectors whose cosine and dot orders differ for the query [1, 0.1].
    fn tiny_index(dir: &Path) -> PathBuf {
        let path = dir.join("index.parquet");
        let vectors = [
            Some(vec![1.0, 0.0]),
            Some(vec![0.0, 1.0]),
            Some(vec![10.0, 10.0]),
            Some(vec![-1.0, 0.0]),
        ];
        write_parquet(
            &path,
            vec![
                ("doc", Arc::new(StringArray::from(vec!["a", "b", "c", "d"]))),
                ("embedding", fixed(&vectors, 2)),
                ("n", Arc::new(Int64Array::from(vec![10, 20, 30, 40]))),
            ],
        );
        path
    }

    fn queries(rows: &[Option<Vec<f32>>], dim: i32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("q", DataType::Int64, false),
            Field::new(
                "embedding",
                DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
                fixed(rows, dim),
            ],
        )
        .expect("query batch")
    }

    async fn run(
        spec: &VectorSearchSpec,
        batch: RecordBatch,
        policy: ErrorPolicy,
    ) -> (Result<Vec<RecordBatch>>, OperatorContext) {
        let mut ctx = OperatorContext::for_test("vs", policy);
        let mut op = spec.create(&batch.schema()).expect("create");
        let mut out = Emitter::default();
        let r = match op.open(&mut ctx).await {
            Ok(()) => op.process_batch(batch, &mut ctx, &mut out).await,
            Err(e) => Err(e),
        };
        (r.map(|()| out.take()), ctx)
    }

    /// (rank, score, doc, n) per neighbour, per row.
    fn neighbors(batch: &RecordBatch) -> Vec<Vec<(u32, f32, String, i64)>> {
        let list = batch
            .column_by_name("neighbors")
            .expect("neighbors")
            .as_list::<i32>();
        list.iter()
            .map(|row| {
                let row = row.expect("row");
                let s = row.as_struct();
                let rank = s
                    .column_by_name("rank")
                    .expect("rank")
                    .as_primitive::<arrow::datatypes::UInt32Type>();
                let score = s
                    .column_by_name("score")
                    .expect("score")
                    .as_primitive::<Float32Type>();
                let doc = s.column_by_name("doc").expect("doc").as_string::<i32>();
                let n = s
                    .column_by_name("n")
                    .expect("n")
                    .as_primitive::<Int64Type>();
                (0..s.len())
                    .map(|i| {
                        (
                            rank.value(i),
                            score.value(i),
                            doc.value(i).to_string(),
                            n.value(i),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn docs(row: &[(u32, f32, String, i64)]) -> Vec<&str> {
        row.iter().map(|r| r.2.as_str()).collect()
    }

    #[tokio::test]
    async fn exact_neighbours_cosine_and_dot_differ() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = VectorSearchSpec::new(tiny_index(dir.path()));
        spec.k = 3;
        let b = queries(&[Some(vec![1.0, 0.1]), Some(vec![-2.0, 0.0])], 2);
        let (out, _) = run(&spec, b.clone(), ErrorPolicy::Fail).await;
        let out = out.expect("cosine");
        let n = neighbors(&out[0]);
        assert_eq!(docs(&n[0]), ["a", "c", "b"]);
        assert_eq!(n[0].iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        let want = 1.0 / (1.01f32).sqrt();
        assert!((n[0][0].1 - want).abs() < 1e-5, "{}", n[0][0].1);
        assert_eq!(n[0][0].3, 10);
        assert_eq!(docs(&n[1]), ["d", "b", "c"]);
        assert!((n[1][0].1 - 1.0).abs() < 1e-6);
        assert!((n[1][2].1 + 0.5f32.sqrt()).abs() < 1e-5, "{}", n[1][2].1);

        spec.metric = Metric::Dot;
        let (out, _) = run(&spec, b, ErrorPolicy::Fail).await;
        let n = neighbors(&out.expect("dot")[0]);
        assert_eq!(docs(&n[0]), ["c", "a", "b"]);
        assert!((n[0][0].1 - 11.0).abs() < 1e-5);
        assert!((n[0][1].1 - 1.0).abs() < 1e-6);
        assert_eq!(docs(&n[1]), ["d", "b", "a"]);
        assert!((n[1][0].1 - 2.0).abs() < 1e-6);
    }

    #[tokio::test]
    async fn k_larger_than_the_index_returns_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = VectorSearchSpec::new(tiny_index(dir.path()));
        spec.k = 100;
        let b = queries(&[Some(vec![1.0, 0.1])], 2);
        let (out, _) = run(&spec, b, ErrorPolicy::Fail).await;
        let n = neighbors(&out.expect("search")[0]);
        assert_eq!(docs(&n[0]), ["a", "c", "b", "d"]);
        assert_eq!(n[0][3].0, 4);
    }

    #[tokio::test]
    async fn weir_vector_extension_columns_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = VectorSearchSpec::new(tiny_index(dir.path()));
        let col = fixed(&[Some(vec![0.0, 3.0])], 2);
        let field = Field::new("embedding", col.data_type().clone(), true).with_metadata(
            [
                (
                    "ARROW:extension:name".to_string(),
                    "weir.vector".to_string(),
                ),
                (
                    "ARROW:extension:metadata".to_string(),
                    r#"{"dim":2}"#.to_string(),
                ),
            ]
            .into(),
        );
        let b = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![col]).expect("b");
        let (out, _) = run(&spec, b, ErrorPolicy::Fail).await;
        let out = out.expect("search");
        let meta = out[0].schema().field(0).metadata().clone();
        assert_eq!(
            meta.get("ARROW:extension:name").map(String::as_str),
            Some("weir.vector")
        );
        assert_eq!(docs(&neighbors(&out[0])[0])[0], "b");
    }

    #[test]
    fn dimension_mismatch_names_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = VectorSearchSpec::new(tiny_index(dir.path()));
        let e = spec
            .output_schema(&queries(&[Some(vec![1.0, 2.0, 3.0])], 3).schema())
            .expect_err("mismatch");
        assert_eq!(e.kind(), ErrorKind::Schema);
        let msg = e.to_string();
        assert!(msg.contains("column 'embedding' has dimension 3"), "{msg}");
        assert!(msg.contains("has dimension 2"), "{msg}");
    }

    #[test]
    fn plan_time_schema_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = tiny_index(dir.path());
        let input = queries(&[Some(vec![1.0, 0.0])], 2).schema();
        let schema = VectorSearchSpec::new(&path)
            .output_schema(&input)
            .expect("schema");
        let DataType::List(item) = schema.field_with_name("neighbors").expect("f").data_type()
        else {
            panic!("not a list");
        };
        let DataType::Struct(fields) = item.data_type() else {
            panic!("not a struct");
        };
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["rank", "score", "doc", "n"]);
        assert_eq!(fields[0].data_type(), &DataType::UInt32);
        assert_eq!(fields[1].data_type(), &DataType::Float32);

        let mut s = VectorSearchSpec::new(&path);
        s.id_columns = Some(vec!["n".into()]);
        let schema = s.output_schema(&input).expect("schema");
        let DataType::List(item) = schema.field_with_name("neighbors").expect("f").data_type()
        else {
            panic!("not a list");
        };
        assert!(matches!(item.data_type(), DataType::Struct(f) if f.len() == 3));

        s.id_columns = Some(vec!["nope".into()]);
        assert!(
            s.output_schema(&input)
                .expect_err("id")
                .to_string()
                .contains("'nope'")
        );
        let mut s = VectorSearchSpec::new(&path);
        s.k = 0;
        assert_eq!(
            s.output_schema(&input).expect_err("k").kind(),
            ErrorKind::Config
        );
        let mut s = VectorSearchSpec::new(&path);
        s.index_column = "doc".into();
        assert!(
            s.output_schema(&input)
                .expect_err("type")
                .to_string()
                .contains("not a vector")
        );
        let mut s = VectorSearchSpec::new(&path);
        s.column = "q".into();
        assert!(
            s.output_schema(&input)
                .expect_err("query")
                .to_string()
                .contains("not a vector")
        );
        let s = VectorSearchSpec::new(dir.path().join("missing.parquet"));
        let e = s.output_schema(&input).expect_err("missing");
        assert!(e.to_string().contains("missing.parquet"), "{e}");
    }

    #[tokio::test]
    async fn bad_query_rows_are_dead_letters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = VectorSearchSpec::new(tiny_index(dir.path()));
        let b = queries(
            &[
                Some(vec![1.0, 0.0]),
                None,
                Some(vec![f32::NAN, 0.0]),
                Some(vec![0.0, 0.0]),
            ],
            2,
        );
        let (out, mut ctx) = run(&spec, b.clone(), ErrorPolicy::DeadLetter).await;
        let out = out.expect("dead letter");
        assert_eq!(out[0].num_rows(), 1);
        let dead = ctx.take_dead_letters();
        let errors: Vec<&str> = dead.iter().map(|d| d.error.as_str()).collect();
        assert_eq!(dead.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("column 'embedding' row 1 is null"),
            "{errors:?}"
        );
        assert!(errors[1].contains("row 2 has a NaN"), "{errors:?}");
        assert!(errors[2].contains("row 3 is a zero vector"), "{errors:?}");
        let (out, _) = run(&spec, b, ErrorPolicy::Fail).await;
        assert_eq!(out.expect_err("fail").kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn list_columns_are_checked_per_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("list.parquet");
        let list = |rows: Vec<Option<Vec<Option<f32>>>>| -> ArrayRef {
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(rows))
        };
        write_parquet(
            &path,
            vec![
                (
                    "embedding",
                    list(vec![
                        Some(vec![Some(0.0), Some(1.0)]),
                        Some(vec![Some(1.0), Some(0.0)]),
                    ]),
                ),
                ("doc", Arc::new(StringArray::from(vec!["up", "right"]))),
                ("n", Arc::new(Int64Array::from(vec![1, 2]))),
            ],
        );
        let spec = VectorSearchSpec::new(&path);
        let q = list(vec![
            Some(vec![Some(0.1), Some(2.0)]),
            Some(vec![Some(1.0)]),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "embedding",
            q.data_type().clone(),
            true,
        )]));
        let b = RecordBatch::try_new(schema, vec![q]).expect("batch");
        let (out, mut ctx) = run(&spec, b, ErrorPolicy::DeadLetter).await;
        let n = neighbors(&out.expect("search")[0]);
        assert_eq!(docs(&n[0]), ["up", "right"]);
        let dead = ctx.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .error
                .contains("row 1 has 1 values, expected dimension 2"),
            "{}",
            dead[0].error
        );
    }

    #[tokio::test]
    async fn instances_of_one_spec_share_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = VectorSearchSpec::new(tiny_index(dir.path()));
        let schema = queries(&[], 2).schema();
        let mut ctx = OperatorContext::for_test("vs", ErrorPolicy::Fail);
        let mut a = spec.create(&schema).expect("a");
        a.open(&mut ctx).await.expect("open a");
        let first = spec
            .shared
            .0
            .lock()
            .expect("lock")
            .clone()
            .expect("loaded")
            .1;
        let mut b = spec.create(&schema).expect("b");
        b.open(&mut ctx).await.expect("open b");
        let second = spec
            .shared
            .0
            .lock()
            .expect("lock")
            .clone()
            .expect("loaded")
            .1;
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.rows, 4);
        assert_eq!(first.vectors.len(), 8);
        // A clone with another metric needs other vectors: it loads its own copy.
        let mut dot = spec.clone();
        dot.metric = Metric::Dot;
        let mut c = dot.create(&schema).expect("c");
        c.open(&mut ctx).await.expect("open c");
        let third = spec
            .shared
            .0
            .lock()
            .expect("lock")
            .clone()
            .expect("loaded")
            .1;
        assert!(!Arc::ptr_eq(&first, &third));
        assert_eq!(third.vectors[4..6], [10.0, 10.0]);
    }

    #[test]
    fn spec_from_json() {
        let s: VectorSearchSpec =
            serde_json::from_str(r#"{"index": "i.parquet"}"#).expect("defaults");
        assert_eq!(s.column, "embedding");
        assert_eq!(s.index_column, "embedding");
        assert_eq!(s.id_columns, None);
        assert_eq!(s.k, 5);
        assert_eq!(s.metric, Metric::Cosine);
        assert_eq!(s.output, "neighbors");
        let s: VectorSearchSpec =
            serde_json::from_str(r#"{"index": "i", "metric": "dot", "k": 2, "id_columns": ["x"]}"#)
                .expect("options");
        assert_eq!(s.metric, Metric::Dot);
        assert!(s.describe().contains("k 2, dot"));
        assert!(
            serde_json::from_str::<VectorSearchSpec>(r#"{"index": "i", "shared": 1}"#).is_err()
        );
        assert!(serde_json::from_str::<VectorSearchSpec>(r#"{"index": "i", "top_k": 1}"#).is_err());
    }
}
