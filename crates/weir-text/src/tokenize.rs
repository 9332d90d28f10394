//! `tokenize`: turns a string column into the `input_ids`, `attention_mask` and `token_type_ids`
//! columns a transformer model takes, with a Hugging Face `tokenizer.json` loaded offline.
//!
//! The tokenizer file's own padding and truncation settings are always overridden by the spec's
//! (`max_length`, `truncation`, `padding`), so the same file gives the same columns whatever it was
//! saved with. Each batch is tokenized in one `encode_batch_fast` call (the batch encoder without
//! character offsets, which this operator does not use) on a blocking thread through
//! [`OperatorContext::spawn_cpu`]. Null text, empty text (unless `empty: keep`) and over-long text
//! under `truncation: reject` are bad rows: they go through the job's `on_error` policy and the
//! other rows of the batch go on.

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Int64Array, ListArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationParams};
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result, row_as_json};

fn default_column() -> String {
    "text".into()
}

fn default_max_length() -> usize {
    128
}

fn default_true() -> bool {
    true
}

fn default_input_ids() -> String {
    "input_ids".into()
}

fn default_attention_mask() -> String {
    "attention_mask".into()
}

fn default_token_type_ids() -> String {
    "token_type_ids".into()
}

/// What to do with a text longer than `max_length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Cut it to `max_length` tokens, keeping the special tokens (`[CLS] ... [SEP]`). The default.
    #[default]
    Truncate,
    /// Treat it as a bad row (the job's `on_error` policy decides: fail or dead-letter).
    Reject,
}

/// How rows are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// No padding: ragged `List<Int64>` columns, each row as long as its tokens; the inference
    /// operator pads per batch to the batch's longest row. The default.
    #[default]
    None,
    /// Pad every row to `max_length`: `FixedSizeList<Int64>(max_length)` columns.
    MaxLength,
}

/// What to do with empty or whitespace-only text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyText {
    /// A bad row naming the column and row. The default.
    #[default]
    Reject,
    /// Tokenize it (with special tokens this gives `[CLS] [SEP]`).
    Keep,
}

/// Names of the output columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeOutputs {
    /// The token ids. Default `input_ids`.
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    /// 1 for a real token, 0 for padding. Default `attention_mask`.
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    /// The segment ids (0 for a single text). Default `token_type_ids`.
    #[serde(default = "default_token_type_ids")]
    pub token_type_ids: String,
}

impl Default for TokenizeOutputs {
    fn default() -> Self {
        TokenizeOutputs {
            input_ids: default_input_ids(),
            attention_mask: default_attention_mask(),
            token_type_ids: default_token_type_ids(),
        }
    }
}

/// Options of a `tokenize` operator.
///
/// The output is the input's columns followed by the three output columns (named by `outputs`),
/// each `List<Int64>` (ragged, `padding: none`) or `FixedSizeList<Int64>(max_length)`
/// (`padding: max_length`). Bad rows are left out of the output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeSpec {
    /// The text column: Utf8, LargeUtf8 or Utf8View. Default `text`.
    #[serde(default = "default_column")]
    pub column: String,
    /// Path of the Hugging Face `tokenizer.json` file (relative paths are relative to the working
    /// directory). Required, no default.
    pub tokenizer: PathBuf,
    /// Most tokens per row, special tokens included. Default 128. Must leave room for at least one
    /// token besides the special tokens the tokenizer adds.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Over-long text: `truncate` (the default: cut to `max_length`, keeping `[SEP]`) or `reject`
    /// (a bad row).
    #[serde(default)]
    pub truncation: Truncation,
    /// `none` (the default: ragged rows) or `max_length` (every row padded to `max_length`).
    #[serde(default)]
    pub padding: Padding,
    /// Empty or whitespace-only text: `reject` (the default: a bad row) or `keep`.
    #[serde(default)]
    pub empty: EmptyText,
    /// Output column names. Default `input_ids`, `attention_mask`, `token_type_ids`.
    #[serde(default)]
    pub outputs: TokenizeOutputs,
    /// Whether to add the tokenizer's special tokens (`[CLS]`, `[SEP]`). Default true.
    #[serde(default = "default_true")]
    pub add_special_tokens: bool,
}

impl TokenizeSpec {
    /// A spec with every default, for the tokenizer file at `tokenizer`.
    pub fn new(tokenizer: impl Into<PathBuf>) -> Self {
        TokenizeSpec {
            column: default_column(),
            tokenizer: tokenizer.into(),
            max_length: default_max_length(),
            truncation: Truncation::default(),
            padding: Padding::default(),
            empty: EmptyText::default(),
            outputs: TokenizeOutputs::default(),
            add_special_tokens: true,
        }
    }

    /// Plan time: checks the spec against the input schema, loads the tokenizer file once to
    /// validate it, and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let schema = self.check_schema(input)?;
        self.load()?;
        Ok(schema)
    }

    /// Builds one running instance (called once per parallel subtask); loads the tokenizer.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.check_schema(input)?;
        let (tokenizer, config) = self.load()?;
        Ok(Box::new(Tokenize {
            tokenizer: Arc::new(tokenizer),
            config: Arc::new(config),
            schema,
        }))
    }

    /// One line for `weir validate`, e.g.
    /// `tokenize text with tokenizer.json (max_length 128, truncate, no padding)`.
    pub fn describe(&self) -> String {
        let truncation = match self.truncation {
            Truncation::Truncate => "truncate",
            Truncation::Reject => "reject over-long",
        };
        let padding = match self.padding {
            Padding::None => "no padding",
            Padding::MaxLength => "pad to max_length",
        };
        format!(
            "tokenize {} with {} (max_length {}, {truncation}, {padding})",
            self.column,
            self.tokenizer.display(),
            self.max_length
        )
    }

    fn list_type(&self) -> Result<DataType> {
        let item: FieldRef = Arc::new(Field::new("item", DataType::Int64, false));
        Ok(match self.padding {
            Padding::None => DataType::List(item),
            Padding::MaxLength => {
                let len = i32::try_from(self.max_length).map_err(|_| {
                    Error::config(format!(
                        "tokenize max_length {} is too large",
                        self.max_length
                    ))
                })?;
                DataType::FixedSizeList(item, len)
            }
        })
    }

    fn check_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if self.max_length == 0 {
            return Err(Error::config("tokenize max_length must be at least 1"));
        }
        let field = input.field_with_name(&self.column).map_err(|_| {
            Error::schema(format!(
                "tokenize column '{}' is not in the input (columns: {})",
                self.column,
                weir_types::column_names(input)
            ))
        })?;
        if !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(Error::schema(format!(
                "tokenize column '{}' is {}, not a string column",
                self.column,
                field.data_type()
            )));
        }
        let names = [
            &self.outputs.input_ids,
            &self.outputs.attention_mask,
            &self.outputs.token_type_ids,
        ];
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::config(
                    "tokenize output column names must not be empty",
                ));
            }
            if input.field_with_name(name).is_ok() {
                return Err(Error::schema(format!(
                    "tokenize output column '{name}' is already in the input; choose another name \
                     under outputs"
                )));
            }
            if names[..i].contains(name) {
                return Err(Error::config(format!(
                    "tokenize output column '{name}' is named twice under outputs"
                )));
            }
        }
        let list = self.list_type()?;
        let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
        for name in names {
            fields.push(Arc::new(Field::new(name.as_str(), list.clone(), false)));
        }
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )))
    }

    /// Loads the tokenizer file and overrides its padding and truncation with the spec's.
    fn load(&self) -> Result<(Tokenizer, Config)> {
        let path = self.tokenizer.display();
        let mut tokenizer = Tokenizer::from_file(&self.tokenizer).map_err(|e| {
            Error::config(format!("cannot load tokenizer file {path}")).with_source(e)
        })?;
        let added = if self.add_special_tokens {
            tokenizer
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false))
        } else {
            0
        };
        if self.max_length <= added {
            return Err(Error::config(format!(
                "tokenize max_length {} leaves no room for text: tokenizer {path} adds {added} \
                 special tokens",
                self.max_length
            )));
        }
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_type_id),
            None => match tokenizer
                .token_to_id("[PAD]")
                .or(tokenizer.token_to_id("<pad>"))
            {
                Some(id) => (id, 0),
                None if self.padding == Padding::MaxLength => {
                    return Err(Error::config(format!(
                        "tokenizer {path} has no padding settings and no [PAD] or <pad> token; \
                         use padding: none"
                    )));
                }
                None => (0, 0),
            },
        };
        // Under `reject` the tokenizer cuts at max_length + 1: a row that long is over-long, and
        // a text of any size costs no more than max_length + 1 ids.
        let cut_at = match self.truncation {
            Truncation::Truncate => self.max_length,
            Truncation::Reject => self.max_length.saturating_add(1),
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cut_at,
                ..TruncationParams::default()
            }))
            .map_err(|e| {
                Error::config(format!(
                    "tokenizer {path} refuses max_length {}",
                    self.max_length
                ))
                .with_source(e)
            })?;
        tokenizer.with_padding(None);
        let config = Config {
            column: self.column.clone(),
            max_length: self.max_length,
            truncation: self.truncation,
            padding: self.padding,
            empty: self.empty,
            add_special_tokens: self.add_special_tokens,
            pad_id: i64::from(pad_id),
            pad_type_id: i64::from(pad_type_id),
            list_type: self.list_type()?,
        };
        Ok((tokenizer, config))
    }
}

impl kind::Spec for TokenizeSpec {
    fn describe(&self) -> String {
        TokenizeSpec::describe(self)
    }
}

impl kind::OperatorSpec for TokenizeSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        TokenizeSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the text column, adds the three token columns, passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        let o = &self.outputs;
        Ok(vec![out.through(
            [
                o.input_ids.as_str(),
                o.attention_mask.as_str(),
                o.token_type_ids.as_str(),
            ],
            [self.column.as_str()],
        )])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        TokenizeSpec::create(self, ctx.input()?)
    }
}

/// What the running operator needs besides the tokenizer.
#[derive(Debug)]
struct Config {
    column: String,
    max_length: usize,
    truncation: Truncation,
    padding: Padding,
    empty: EmptyText,
    add_special_tokens: bool,
    pad_id: i64,
    pad_type_id: i64,
    list_type: DataType,
}

/// A running `tokenize`.
#[derive(Debug)]
pub struct Tokenize {
    tokenizer: Arc<Tokenizer>,
    config: Arc<Config>,
    schema: SchemaRef,
}

/// The result of tokenizing one batch's text column.
struct Tokenized {
    /// Input rows that were tokenized, ascending.
    kept: Vec<u32>,
    /// One output column each, `kept.len()` rows.
    ids: ArrayRef,
    mask: ArrayRef,
    types: ArrayRef,
    /// Bad rows, ascending by row.
    failures: Vec<(usize, Error)>,
}

fn strings<'a>(array: &'a dyn Array, column: &str) -> Result<Vec<Option<&'a str>>> {
    match array.data_type() {
        DataType::Utf8 => Ok(array.as_string::<i32>().iter().collect()),
        DataType::LargeUtf8 => Ok(array.as_string::<i64>().iter().collect()),
        DataType::Utf8View => Ok(array.as_string_view().iter().collect()),
        other => Err(Error::schema(format!(
            "tokenize column '{column}' is {other}, not a string column"
        ))),
    }
}

/// Tokenizes every row of `column` (CPU-heavy: runs on a blocking thread).
fn tokenize_column(tokenizer: &Tokenizer, config: &Config, column: &ArrayRef) -> Result<Tokenized> {
    let name = config.column.as_str();
    let texts = strings(column.as_ref(), name)?;
    let mut failures = Vec::new();
    let mut rows = Vec::with_capacity(texts.len());
    let mut inputs = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        match text {
            None => failures.push((
                i,
                Error::input(format!(
                    "column '{name}' row {i} is null; tokenize needs text"
                )),
            )),
            Some(t) if config.empty == EmptyText::Reject && t.trim().is_empty() => failures.push((
                i,
                Error::input(format!(
                    "column '{name}' row {i} is empty or whitespace only (empty: reject)"
                )),
            )),
            Some(t) => {
                rows.push(i);
                inputs.push(*t);
            }
        }
    }
    let add = config.add_special_tokens;
    let encodings: Vec<Option<Encoding>> = match tokenizer.encode_batch_fast(inputs.clone(), add) {
        Ok(all) => all.into_iter().map(Some).collect(),
        // Find the rows that fail; the others go on.
        Err(_) => rows
            .iter()
            .zip(&inputs)
            .map(|(&i, text)| match tokenizer.encode_fast(*text, add) {
                Ok(e) => Some(e),
                Err(e) => {
                    failures.push((
                        i,
                        Error::input(format!("cannot tokenize column '{name}' row {i}"))
                            .with_source(e),
                    ));
                    None
                }
            })
            .collect(),
    };
    let mut kept = Vec::with_capacity(rows.len());
    let mut good = Vec::with_capacity(rows.len());
    for (&i, encoding) in rows.iter().zip(&encodings) {
        let Some(encoding) = encoding else { continue };
        if config.truncation == Truncation::Reject && encoding.len() > config.max_length {
            failures.push((
                i,
                Error::input(format!(
                    "column '{name}' row {i} is longer than max_length {} tokens (truncation: \
                     reject)",
                    config.max_length
                )),
            ));
            continue;
        }
        let row = u32::try_from(i)
            .map_err(|_| Error::input(format!("batch of {} rows is too large", texts.len())))?;
        kept.push(row);
        good.push(encoding);
    }
    failures.sort_by_key(|(i, _)| *i);
    let (ids, mask, types) = match config.padding {
        Padding::None => ragged(&good, config)?,
        Padding::MaxLength => padded(&good, config)?,
    };
    Ok(Tokenized {
        kept,
        ids,
        mask,
        types,
        failures,
    })
}

fn item_field(config: &Config) -> Result<FieldRef> {
    match &config.list_type {
        DataType::List(f) | DataType::FixedSizeList(f, _) => Ok(f.clone()),
        other => Err(Error::internal(format!(
            "tokenize output type {other} is not a list"
        ))),
    }
}

/// `List<Int64>` columns, each row as long as its tokens.
fn ragged(encodings: &[&Encoding], config: &Config) -> Result<(ArrayRef, ArrayRef, ArrayRef)> {
    let total: usize = encodings.iter().map(|e| e.len()).sum();
    if i32::try_from(total).is_err() {
        return Err(Error::input(format!(
            "a batch of {} rows gives {total} tokens, more than a List column holds; use smaller \
             batches",
            encodings.len()
        )));
    }
    let mut ids = Vec::with_capacity(total);
    let mut mask = Vec::with_capacity(total);
    let mut types = Vec::with_capacity(total);
    let mut lengths = Vec::with_capacity(encodings.len());
    for e in encodings {
        ids.extend(e.get_ids().iter().map(|&v| i64::from(v)));
        mask.extend(e.get_attention_mask().iter().map(|&v| i64::from(v)));
        types.extend(e.get_type_ids().iter().map(|&v| i64::from(v)));
        lengths.push(e.len());
    }
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths);
    let item = item_field(config)?;
    let list = |values: Vec<i64>| -> Result<ArrayRef> {
        Ok(Arc::new(ListArray::try_new(
            item.clone(),
            offsets.clone(),
            Arc::new(Int64Array::from(values)),
            None,
        )?))
    };
    Ok((list(ids)?, list(mask)?, list(types)?))
}

/// `FixedSizeList<Int64>(max_length)` columns, padded on the right.
fn padded(encodings: &[&Encoding], config: &Config) -> Result<(ArrayRef, ArrayRef, ArrayRef)> {
    let width = config.max_length;
    let total = encodings.len() * width;
    let mut ids = Vec::with_capacity(total);
    let mut mask = Vec::with_capacity(total);
    let mut types = Vec::with_capacity(total);
    for e in encodings {
        let n = e.len().min(width);
        ids.extend(e.get_ids()[..n].iter().map(|&v| i64::from(v)));
        mask.extend(e.get_attention_mask()[..n].iter().map(|&v| i64::from(v)));
        types.extend(e.get_type_ids()[..n].iter().map(|&v| i64::from(v)));
        ids.resize(ids.len() + width - n, config.pad_id);
        mask.resize(mask.len() + width - n, 0);
        types.resize(types.len() + width - n, config.pad_type_id);
    }
    let item = item_field(config)?;
    let size = i32::try_from(width)
        .map_err(|_| Error::config(format!("tokenize max_length {width} is too large")))?;
    let list = |values: Vec<i64>| -> Result<ArrayRef> {
        Ok(Arc::new(FixedSizeListArray::try_new(
            item.clone(),
            size,
            Arc::new(Int64Array::from(values)),
            None,
        )?))
    };
    Ok((list(ids)?, list(mask)?, list(types)?))
}

#[async_trait]
impl Operator for Tokenize {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let index = batch.schema().index_of(&self.config.column).map_err(|_| {
            Error::schema(format!(
                "tokenize column '{}' is not in the batch",
                self.config.column
            ))
        })?;
        let column = batch.column(index).clone();
        let tokenizer = self.tokenizer.clone();
        let config = self.config.clone();
        let tokenized = ctx
            .spawn_cpu(move || tokenize_column(&tokenizer, &config, &column))
            .await??;
        for (i, error) in tokenized.failures {
            ctx.bad_row(
                error,
                None,
                Some(format!("row {i} of batch")),
                row_as_json(&batch, i),
            )?;
        }
        let kept = if tokenized.kept.len() == batch.num_rows() {
            batch
        } else {
            let indices = UInt32Array::from(tokenized.kept);
            arrow::compute::take_record_batch(&batch, &indices)?
        };
        let mut columns = kept.columns().to_vec();
        columns.extend([tokenized.ids, tokenized.mask, tokenized.types]);
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{LargeStringArray, StringArray, StringViewArray};
    use std::path::Path;
    use std::time::Instant;
    use weir_runtime::ErrorPolicy;
    use weir_types::ErrorKind;

    const MAN_EATING: [i64; 8] = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102];

    fn models_dir() -> PathBuf {
        std::env::var_os("WEIR_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weir/models"))
    }

    fn tokenizer_path() -> PathBuf {
        let p = models_dir().join("minilm-tokenizer/tokenizer.json");
        assert!(
            p.is_file(),
            "MiniLM tokenizer missing at {}: run scripts/setup-models.sh",
            p.display()
        );
        p
    }

    fn spec() -> TokenizeSpec {
        TokenizeSpec::new(tokenizer_path())
    }

    fn text_batch(texts: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let ids = Int64Array::from_iter_values(0..texts.len() as i64);
        RecordBatch::try_new(
            schema,
            vec![Arc::new(ids), Arc::new(StringArray::from(texts))],
        )
        .expect("test batch")
    }

    /// Runs one batch through a fresh instance; returns the output rows and the context.
    async fn run(
        spec: &TokenizeSpec,
        batch: RecordBatch,
        policy: ErrorPolicy,
    ) -> (Result<Vec<RecordBatch>>, OperatorContext) {
        let mut ctx = OperatorContext::for_test("tok", policy);
        let mut op = spec.create(&batch.schema()).expect("create");
        let mut out = Emitter::default();
        let r = match op.open(&mut ctx).await {
            Ok(()) => op.process_batch(batch, &mut ctx, &mut out).await,
            Err(e) => Err(e),
        };
        (r.map(|()| out.take()), ctx)
    }

    fn list_rows(col: &ArrayRef) -> Vec<Vec<i64>> {
        let to_vec = |a: ArrayRef| {
            a.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        match col.data_type() {
            DataType::List(_) => col.as_list::<i32>().iter().flatten().map(to_vec).collect(),
            DataType::FixedSizeList(_, _) => col
                .as_fixed_size_list()
                .iter()
                .flatten()
                .map(to_vec)
                .collect(),
            other => panic!("not a list: {other}"),
        }
    }

    #[tokio::test]
    async fn known_ids_for_the_minilm_tokenizer() {
        let b = text_batch(vec![Some("A man is eating food."), Some("Hello")]);
        let (out, _) = run(&spec(), b, ErrorPolicy::Fail).await;
        let out = out.expect("tokenize");
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.num_columns(), 5);
        let ids = list_rows(o.column_by_name("input_ids").expect("ids"));
        assert_eq!(ids[0], MAN_EATING.to_vec());
        assert_eq!(ids[1].len(), 3, "hello is one token: {:?}", ids[1]);
        let mask = list_rows(o.column_by_name("attention_mask").expect("mask"));
        assert_eq!(mask[0], vec![1; 8]);
        let types = list_rows(o.column_by_name("token_type_ids").expect("types"));
        assert_eq!(types[0], vec![0; 8]);
        assert_eq!(
            o.schema()
                .field_with_name("input_ids")
                .expect("f")
                .data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::Int64, false)))
        );
    }

    #[tokio::test]
    async fn other_string_types_and_column_names() {
        let mut s = spec();
        s.column = "body".into();
        s.outputs.input_ids = "ids".into();
        for col in [
            Arc::new(LargeStringArray::from(vec!["A man is eating food."])) as ArrayRef,
            Arc::new(StringViewArray::from(vec!["A man is eating food."])) as ArrayRef,
        ] {
            let schema = Arc::new(Schema::new(vec![Field::new(
                "body",
                col.data_type().clone(),
                false,
            )]));
            let b = RecordBatch::try_new(schema, vec![col]).expect("batch");
            let (out, _) = run(&s, b, ErrorPolicy::Fail).await;
            let out = out.expect("tokenize");
            assert_eq!(
                list_rows(out[0].column_by_name("ids").expect("ids"))[0],
                MAN_EATING.to_vec()
            );
        }
    }

    #[tokio::test]
    async fn truncation_keeps_sep_and_reject_makes_bad_rows() {
        let long = "word ".repeat(50);
        let mut s = spec();
        s.max_length = 8;
        let b = text_batch(vec![Some(&long), Some("A man is eating food.")]);
        let (out, _) = run(&s, b.clone(), ErrorPolicy::Fail).await;
        let ids = list_rows(
            out.expect("truncate")[0]
                .column_by_name("input_ids")
                .expect("ids"),
        );
        assert_eq!(ids[0].len(), 8);
        assert_eq!(ids[0][0], 101);
        assert_eq!(ids[0][7], 102);
        assert_eq!(ids[1], MAN_EATING.to_vec(), "exactly max_length is not cut");

        s.truncation = Truncation::Reject;
        let (out, _) = run(&s, b.clone(), ErrorPolicy::Fail).await;
        let err = out.expect_err("reject under fail");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("column 'text' row 0"), "{err}");
        assert!(err.to_string().contains("max_length 8"), "{err}");

        let (out, mut ctx) = run(&s, b, ErrorPolicy::DeadLetter).await;
        let out = out.expect("dead letter");
        assert_eq!(out[0].num_rows(), 1);
        assert_eq!(
            list_rows(out[0].column_by_name("input_ids").expect("ids"))[0],
            MAN_EATING.to_vec()
        );
        let dead = ctx.take_dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].position.as_deref(), Some("row 0 of batch"));
    }

    #[tokio::test]
    async fn empty_and_null_text_are_dead_letters() {
        let b = text_batch(vec![
            Some("A man is eating food."),
            Some("   \t"),
            None,
            Some(""),
        ]);
        let (out, mut ctx) = run(&spec(), b.clone(), ErrorPolicy::DeadLetter).await;
        let out = out.expect("dead letter");
        assert_eq!(out[0].num_rows(), 1);
        let ids = out[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![0]);
        let dead = ctx.take_dead_letters();
        let positions: Vec<_> = dead
            .iter()
            .map(|d| d.position.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            positions,
            ["row 1 of batch", "row 2 of batch", "row 3 of batch"]
        );
        assert!(
            dead[0].error.contains("column 'text' row 1 is empty"),
            "{}",
            dead[0].error
        );
        assert!(dead[1].error.contains("row 2 is null"), "{}", dead[1].error);
        let raw = String::from_utf8(dead[0].raw.clone().unwrap_or_default()).expect("utf8");
        assert!(raw.contains("\"id\":1"), "{raw}");

        let (out, _) = run(&spec(), b.clone(), ErrorPolicy::Fail).await;
        assert!(out.expect_err("fail").to_string().contains("row 1"));

        let mut keep = spec();
        keep.empty = EmptyText::Keep;
        let (out, mut ctx) = run(&keep, b, ErrorPolicy::DeadLetter).await;
        let out = out.expect("keep");
        assert_eq!(out[0].num_rows(), 3, "only the null row is refused");
        let ids = list_rows(out[0].column_by_name("input_ids").expect("ids"));
        assert_eq!(ids[1], vec![101, 102]);
        assert_eq!(ctx.take_dead_letters().len(), 1);
    }

    #[tokio::test]
    async fn padding_to_max_length() {
        let mut s = spec();
        s.padding = Padding::MaxLength;
        s.max_length = 12;
        let b = text_batch(vec![Some("A man is eating food."), Some("Hello")]);
        let schema = s.output_schema(&b.schema()).expect("schema");
        assert_eq!(
            schema.field_with_name("input_ids").expect("f").data_type(),
            &DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Int64, false)), 12)
        );
        let (out, _) = run(&s, b, ErrorPolicy::Fail).await;
        let out = out.expect("tokenize");
        assert_eq!(out[0].schema(), schema);
        let ids = list_rows(out[0].column_by_name("input_ids").expect("ids"));
        let mut want = MAN_EATING.to_vec();
        want.extend([0; 4]);
        assert_eq!(ids[0], want);
        assert_eq!(ids[1].len(), 12);
        let mask = list_rows(out[0].column_by_name("attention_mask").expect("mask"));
        assert_eq!(mask[0], [vec![1; 8], vec![0; 4]].concat());
        assert_eq!(mask[1], [vec![1; 3], vec![0; 9]].concat());
    }

    #[tokio::test]
    async fn file_padding_is_overridden() {
        // The MiniLM file pads to 128 and truncates at 128; the spec's settings win.
        let mut s = spec();
        s.max_length = 256;
        let long = "word ".repeat(200);
        let b = text_batch(vec![Some(&long), Some("Hello")]);
        let (out, _) = run(&s, b, ErrorPolicy::Fail).await;
        let ids = list_rows(
            out.expect("tokenize")[0]
                .column_by_name("input_ids")
                .expect("ids"),
        );
        assert_eq!(ids[0].len(), 202);
        assert_eq!(ids[1].len(), 3);
    }

    #[test]
    fn plan_time_checks() {
        let schema = text_batch(vec![Some("x")]).schema();
        let mut s = spec();
        s.column = "nope".into();
        let e = s.output_schema(&schema).expect_err("missing column");
        assert!(e.to_string().contains("'nope'"), "{e}");

        let mut s = spec();
        s.column = "id".into();
        assert!(
            s.output_schema(&schema)
                .expect_err("int")
                .to_string()
                .contains("not a string")
        );

        let mut s = spec();
        s.outputs.attention_mask = "id".into();
        assert!(
            s.output_schema(&schema)
                .expect_err("dup")
                .to_string()
                .contains("already")
        );

        let mut s = spec();
        s.max_length = 2;
        let e = s.output_schema(&schema).expect_err("too short");
        assert!(e.to_string().contains("adds 2 special tokens"), "{e}");

        let mut s = spec();
        s.tokenizer = PathBuf::from("/nonexistent/tokenizer.json");
        let e = s.output_schema(&schema).expect_err("no file");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
    }

    #[test]
    fn spec_from_json_with_defaults_and_unknown_fields() {
        let s: TokenizeSpec = serde_json::from_str(r#"{"tokenizer": "t.json"}"#).expect("defaults");
        assert_eq!(s.column, "text");
        assert_eq!(s.max_length, 128);
        assert_eq!(s.truncation, Truncation::Truncate);
        assert_eq!(s.padding, Padding::None);
        assert_eq!(s.empty, EmptyText::Reject);
        assert_eq!(s.outputs, TokenizeOutputs::default());
        assert!(s.add_special_tokens);
        let s: TokenizeSpec = serde_json::from_str(
            r#"{"tokenizer": "t.json", "truncation": "reject", "padding": "max_length",
                "empty": "keep", "outputs": {"input_ids": "ids"}}"#,
        )
        .expect("options");
        assert_eq!(s.outputs.input_ids, "ids");
        assert_eq!(s.outputs.token_type_ids, "token_type_ids");
        assert!(
            serde_json::from_str::<TokenizeSpec>(r#"{"tokenizer": "t", "maxlen": 3}"#).is_err()
        );
        assert!(s.describe().contains("pad to max_length"));
    }

    fn fortunes_dir() -> PathBuf {
        let data = std::env::var_os("WEIR_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weir/data"));
        let dir = data.join("text");
        assert!(
            dir.join("fortunes.txt").is_file(),
            "fortunes corpus missing at {}: run scripts/setup-models.sh",
            dir.display()
        );
        dir
    }

    /// Quotations of the fortunes corpus (entries separated by `%` lines).
    fn fortunes(limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(fortunes_dir())
            .expect("read corpus dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        for f in files {
            let text =
                String::from_utf8_lossy(&std::fs::read(&f).expect("read corpus")).into_owned();
            for entry in text.split("\n%\n") {
                let entry = entry.trim();
                if !entry.is_empty() && entry != "%" {
                    out.push(entry.to_string());
                }
                if out.len() >= limit {
                    return out;
                }
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fortunes_corpus_tokenizes_without_error() {
        let texts = fortunes(600);
        assert_eq!(texts.len(), 600, "too few fortunes");
        let spec = spec();
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let mut op = spec.create(&schema).expect("create");
        let mut ctx = OperatorContext::for_test("tok", ErrorPolicy::Fail);
        op.open(&mut ctx).await.expect("open");
        let start = Instant::now();
        let mut rows = 0;
        let mut tokens = 0;
        for chunk in texts.chunks(256) {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from_iter_values(chunk))],
            )
            .expect("batch");
            let mut out = Emitter::default();
            op.process_batch(b, &mut ctx, &mut out)
                .await
                .expect("tokenize");
            for o in out.take() {
                rows += o.num_rows();
                let ids = o.column_by_name("input_ids").expect("ids").as_list::<i32>();
                tokens += ids.values().len();
                for row in ids.iter().flatten() {
                    let row = row.as_primitive::<arrow::datatypes::Int64Type>();
                    assert!(row.len() <= 128 && row.len() >= 3);
                    assert_eq!(row.value(0), 101);
                    assert_eq!(row.value(row.len() - 1), 102);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(rows, texts.len());
        // Unoptimised test build; `cargo run --release -p weir-text --example tokenize_throughput`
        // measures the optimised operator.
        println!(
            "tokenized {rows} fortunes ({tokens} tokens) in {secs:.3} s: {:.0} sentences/s \
             (test profile)",
            rows as f64 / secs
        );
    }
}
