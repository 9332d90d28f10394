//! `source: datagen`: rows whose columns are described in the spec (sequences, uniform random
//! numbers in a range, random strings, timestamps at a rate), a fixed number of them or an
//! unbounded stream, optionally rate limited — what Flink's `datagen` connector does, so the same
//! synthetic stream can be described for both.
//!
//! Each value is a pure function of (seed, column, row number): a restored job produces exactly the
//! rows the interrupted one would have. Columns are generated a batch at a time into Arrow buffers,
//! with no allocation per row.

use crate::random::{GOLDEN_GAMMA, below, mix64, row_seed};
use crate::splits::{Next, RateLimit, Splits};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use weir_runtime::{OperatorContext, Source, SourceEvent, StateSnapshot, TaskInfo, kind};
use weir_types::{Barrier, Error, Result};

fn default_batch_size() -> usize {
    8192
}

/// Options of `source: datagen`.
///
/// ```yaml
/// source: datagen
/// rows: 1000000              # default: unbounded
/// rows_per_second: 50000     # default: as fast as possible
/// seed: 7
/// columns:
///   - {name: id, kind: sequence}
///   - {name: user, kind: random, type: int32, min: 1, max: 1000}
///   - {name: amount, kind: random, type: float64, min: 0, max: 100}
///   - {name: note, kind: random, type: string, length: 20, null_rate: 0.1}
///   - {name: ts, kind: timestamp, start: "2024-01-01T00:00:00Z", rate: 1000}
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatagenSourceSpec {
    /// The columns, in order. Required, at least one.
    pub columns: Vec<DatagenColumn>,
    /// How many rows in all. Default: unbounded (or the length of a bounded `sequence`).
    #[serde(default)]
    pub rows: Option<u64>,
    /// At most this many rows per second over all instances. Default: no limit.
    #[serde(default)]
    pub rows_per_second: Option<f64>,
    /// Seed of every random column. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Rows per batch. Default 8192.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Generator splits (units of work and of event time). Default: the source's parallelism when
    /// the job first starts; a restored job keeps its checkpoint's.
    #[serde(default)]
    pub splits: Option<u32>,
}

/// How a column's values are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// `start + row number`.
    Sequence,
    /// Uniform in `[min, max]` (integers), `[min, max)` (floats), a random string of `length`, a
    /// random boolean, or one of `values`.
    Random,
    /// Event time: `start + row number × interval`, optionally minus a random delay.
    Timestamp,
}

impl ColumnKind {
    fn name(self) -> &'static str {
        match self {
            ColumnKind::Sequence => "sequence",
            ColumnKind::Random => "random",
            ColumnKind::Timestamp => "timestamp",
        }
    }
}

/// One column of `source: datagen`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatagenColumn {
    /// The column's name. Required.
    pub name: String,
    /// `sequence`, `random` or `timestamp`. Required.
    pub kind: ColumnKind,
    /// The Arrow type (as in declared schemas: `int64`, `int32`, `float64`, `utf8`, `bool`,
    /// `timestamp_ms`, ...). Default: `int64`; `timestamp_ms` for `kind: timestamp`; the type of
    /// the `values` for a choice.
    #[serde(default, rename = "type")]
    pub data_type: Option<String>,
    /// `sequence`: the first value (default 0). `timestamp`: the first time, RFC 3339 or
    /// milliseconds since the epoch (default `2024-01-01T00:00:00Z`).
    #[serde(default)]
    pub start: Option<Value>,
    /// `sequence`: the last value; the source then has `end - start + 1` rows unless `rows` says
    /// fewer. Default: none.
    #[serde(default)]
    pub end: Option<i64>,
    /// `random` numbers: the smallest value. Default: the type's minimum (floats: 0).
    #[serde(default)]
    pub min: Option<serde_json::Number>,
    /// `random` numbers: the largest value (integers inclusive, floats exclusive). Default: the
    /// type's maximum (floats: 1).
    #[serde(default)]
    pub max: Option<serde_json::Number>,
    /// `random` strings: the length. Default 100 (as Flink).
    #[serde(default)]
    pub length: Option<usize>,
    /// `random` strings: lengths uniform in `1..=length` instead of exactly `length`. Default false.
    #[serde(default)]
    pub var_len: bool,
    /// `random`: pick uniformly among these values instead. Default: none.
    #[serde(default)]
    pub values: Option<Vec<Value>>,
    /// The fraction of rows that are null. Default 0.
    #[serde(default)]
    pub null_rate: f64,
    /// `timestamp`: rows per second of event time (`1000` = one row per millisecond).
    #[serde(default)]
    pub rate: Option<f64>,
    /// `timestamp`: the event time between two rows (`10ms`); instead of `rate`. Default `1ms`.
    #[serde(default)]
    pub interval: Option<String>,
    /// `timestamp`: each row's time is moved back by a random delay in `[0, max_delay]`, so rows
    /// arrive out of order by up to this much. Default `0s`.
    #[serde(default)]
    pub max_delay: Option<String>,
}

/// The default start of `kind: timestamp`: 2024-01-01T00:00:00Z.
const DEFAULT_START_NS: i128 = 1_704_067_200_000_000_000;

/// How one column is made, checked.
#[derive(Debug, Clone)]
enum Gen {
    /// `start + row`, as integers (cast to the column type).
    SeqInt { start: i64 },
    /// `start + row` as decimal text.
    SeqText { start: i64 },
    /// Uniform integers `min + [0, span)`; `span == 0` is the whole 64-bit range.
    Int { min: i64, span: u64 },
    /// Uniform floats in `[min, min + width)`.
    Float { min: f64, width: f64 },
    /// Fair coin.
    Bool,
    /// Random hexadecimal text (as Flink's datagen), `len` long or `1..=len` with `var_len`.
    Text { len: usize, var_len: bool },
    /// One of these values, uniformly.
    Choice { values: ArrayRef },
    /// Nanoseconds `start + row × step − [0, delay]`, in `unit`.
    Time {
        start: i128,
        step: i128,
        delay: u64,
        unit: TimeUnit,
    },
}

#[derive(Debug, Clone)]
struct ColumnGen {
    field: Field,
    kind: Gen,
    /// Seed of the value stream.
    stream: u64,
    /// Seed of the null stream.
    nulls: u64,
    null_rate: f64,
}

fn number_i64(key: &str, n: &serde_json::Number) -> Result<i64> {
    n.as_i64().ok_or_else(|| {
        Error::config(format!(
            "key '{key}': expected an integer that fits 64 bits, found {n}"
        ))
    })
}

fn int_range(t: &DataType) -> Option<(i64, i64)> {
    Some(match t {
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        DataType::Int64 => (i64::MIN, i64::MAX),
        DataType::UInt8 => (0, u8::MAX as i64),
        DataType::UInt16 => (0, u16::MAX as i64),
        DataType::UInt32 => (0, u32::MAX as i64),
        DataType::UInt64 => (0, i64::MAX),
        _ => return None,
    })
}

fn parse_start_ns(key: &str, v: &Option<Value>) -> Result<i128> {
    match v {
        None => Ok(DEFAULT_START_NS),
        Some(Value::Number(n)) => Ok(number_i64(key, n)? as i128 * 1_000_000),
        Some(Value::String(s)) => {
            let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| {
                Error::config(format!(
                    "key '{key}': expected an RFC 3339 time like 2024-01-01T00:00:00Z, found '{s}'"
                ))
                .with_source(e)
            })?;
            let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| {
                Error::config(format!("key '{key}': times before 1970 are not supported"))
                    .with_source(e)
            })?;
            Ok(d.as_nanos() as i128)
        }
        Some(other) => Err(Error::config(format!(
            "key '{key}': expected an RFC 3339 time or milliseconds, found {other}"
        ))),
    }
}

fn parse_duration_ns(key: &str, s: &str) -> Result<i128> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        Error::config(format!(
            "key '{key}': expected a duration like 10ms, found '{s}'"
        ))
        .with_source(e)
    })?;
    Ok(d.as_nanos() as i128)
}

impl DatagenColumn {
    fn check(&self, i: usize, seed: u64) -> Result<ColumnGen> {
        let key = |k: &str| format!("columns[{i}].{k}");
        let unexpected = |k: &str, set: bool| -> Result<()> {
            if set {
                return Err(Error::config(format!(
                    "key '{}': not an option of kind {} (column '{}')",
                    key(k),
                    self.kind.name(),
                    self.name
                )));
            }
            Ok(())
        };
        if !(0.0..=1.0).contains(&self.null_rate) {
            return Err(Error::config(format!(
                "key '{}': expected a fraction in [0, 1], found {}",
                key("null_rate"),
                self.null_rate
            )));
        }
        let declared = self
            .data_type
            .as_deref()
            .map(weir_connectors::config::parse_type)
            .transpose()
            .map_err(|e| Error::config(format!("key '{}'", key("type"))).with_source(e))?;
        let wrong_type = |t: &DataType| {
            Error::config(format!(
                "key '{}': kind {} cannot make {t} values (column '{}')",
                key("type"),
                self.kind.name(),
                self.name
            ))
        };
        let (data_type, make) = match self.kind {
            ColumnKind::Sequence => {
                unexpected("min", self.min.is_some())?;
                unexpected("max", self.max.is_some())?;
                unexpected("length", self.length.is_some())?;
                unexpected("values", self.values.is_some())?;
                unexpected("rate", self.rate.is_some())?;
                unexpected("interval", self.interval.is_some())?;
                unexpected("max_delay", self.max_delay.is_some())?;
                let start = match &self.start {
                    None => 0,
                    Some(Value::Number(n)) => number_i64(&key("start"), n)?,
                    Some(other) => {
                        return Err(Error::config(format!(
                            "key '{}': expected an integer, found {other}",
                            key("start")
                        )));
                    }
                };
                if let Some(end) = self.end
                    && end < start
                {
                    return Err(Error::config(format!(
                        "key '{}': {end} is below start {start}",
                        key("end")
                    )));
                }
                let t = declared.unwrap_or(DataType::Int64);
                let make = match &t {
                    DataType::Utf8 => Gen::SeqText { start },
                    t if int_range(t).is_some()
                        || matches!(t, DataType::Float32 | DataType::Float64) =>
                    {
                        Gen::SeqInt { start }
                    }
                    t => return Err(wrong_type(t)),
                };
                (t, make)
            }
            ColumnKind::Random => {
                unexpected("start", self.start.is_some())?;
                unexpected("end", self.end.is_some())?;
                unexpected("rate", self.rate.is_some())?;
                unexpected("interval", self.interval.is_some())?;
                unexpected("max_delay", self.max_delay.is_some())?;
                if let Some(values) = &self.values {
                    unexpected("min", self.min.is_some())?;
                    unexpected("max", self.max.is_some())?;
                    unexpected("length", self.length.is_some())?;
                    let array = choice_values(values, declared.as_ref()).map_err(|e| {
                        Error::config(format!("key '{}'", key("values"))).with_source(e)
                    })?;
                    (array.data_type().clone(), Gen::Choice { values: array })
                } else {
                    let t = declared.unwrap_or(DataType::Int64);
                    let numeric = int_range(&t).is_some()
                        || matches!(t, DataType::Float32 | DataType::Float64);
                    if !numeric {
                        unexpected("min", self.min.is_some())?;
                        unexpected("max", self.max.is_some())?;
                    }
                    if t != DataType::Utf8 {
                        unexpected("length", self.length.is_some())?;
                    }
                    let make = if let Some((lo, hi)) = int_range(&t) {
                        let min = self
                            .min
                            .as_ref()
                            .map(|n| number_i64(&key("min"), n))
                            .transpose()?
                            .unwrap_or(lo);
                        let max = self
                            .max
                            .as_ref()
                            .map(|n| number_i64(&key("max"), n))
                            .transpose()?
                            .unwrap_or(hi);
                        if min < lo || max > hi || min > max {
                            return Err(Error::config(format!(
                                "key '{}': [{min}, {max}] is empty or outside the range of {t} [{lo}, {hi}]",
                                key("min")
                            )));
                        }
                        Gen::Int {
                            min,
                            span: (max as i128 - min as i128 + 1) as u64,
                        }
                    } else {
                        match &t {
                            DataType::Float32 | DataType::Float64 => {
                                let min = self.min.as_ref().and_then(|n| n.as_f64()).unwrap_or(0.0);
                                let max = self.max.as_ref().and_then(|n| n.as_f64()).unwrap_or(1.0);
                                if !(min.is_finite() && max.is_finite() && min < max) {
                                    return Err(Error::config(format!(
                                        "key '{}': [{min}, {max}) is empty",
                                        key("min")
                                    )));
                                }
                                Gen::Float {
                                    min,
                                    width: max - min,
                                }
                            }
                            DataType::Boolean => Gen::Bool,
                            DataType::Utf8 => {
                                let len = self.length.unwrap_or(100);
                                if len == 0 && self.var_len {
                                    return Err(Error::config(format!(
                                        "key '{}': must be at least 1 with var_len",
                                        key("length")
                                    )));
                                }
                                Gen::Text {
                                    len,
                                    var_len: self.var_len,
                                }
                            }
                            t => return Err(wrong_type(t)),
                        }
                    };
                    (t, make)
                }
            }
            ColumnKind::Timestamp => {
                unexpected("end", self.end.is_some())?;
                unexpected("min", self.min.is_some())?;
                unexpected("max", self.max.is_some())?;
                unexpected("length", self.length.is_some())?;
                unexpected("values", self.values.is_some())?;
                let t = declared.unwrap_or(DataType::Timestamp(
                    TimeUnit::Millisecond,
                    Some(Arc::from("UTC")),
                ));
                let unit = match &t {
                    DataType::Timestamp(u, _) => *u,
                    DataType::Int64 => TimeUnit::Millisecond,
                    t => return Err(wrong_type(t)),
                };
                let start = parse_start_ns(&key("start"), &self.start)?;
                let step = match (&self.rate, &self.interval) {
                    (Some(_), Some(_)) => {
                        return Err(Error::config(format!(
                            "key '{}': give either rate or interval",
                            key("rate")
                        )));
                    }
                    (Some(r), None) => {
                        if !(r.is_finite() && *r > 0.0) {
                            return Err(Error::config(format!(
                                "key '{}': expected rows per second above 0, found {r}",
                                key("rate")
                            )));
                        }
                        (1e9 / r).round() as i128
                    }
                    (None, Some(iv)) => parse_duration_ns(&key("interval"), iv)?,
                    (None, None) => 1_000_000,
                };
                let delay = match &self.max_delay {
                    None => 0,
                    Some(d) => {
                        parse_duration_ns(&key("max_delay"), d)?.min(u64::MAX as i128 - 1) as u64
                    }
                };
                (
                    t,
                    Gen::Time {
                        start,
                        step,
                        delay,
                        unit,
                    },
                )
            }
        };
        Ok(ColumnGen {
            field: Field::new(&self.name, data_type, self.null_rate > 0.0),
            kind: make,
            stream: row_seed(seed, i as u64, 0),
            nulls: row_seed(seed, (i as u64) | (1 << 32), 0),
            null_rate: self.null_rate,
        })
    }
}

/// The values of a random choice as one array (of the declared type, else inferred).
fn choice_values(values: &[Value], declared: Option<&DataType>) -> Result<ArrayRef> {
    if values.is_empty() {
        return Err(Error::config("expected at least one value"));
    }
    let rows: Vec<serde_json::Map<String, Value>> = values
        .iter()
        .map(|v| {
            let mut m = serde_json::Map::new();
            m.insert("v".into(), v.clone());
            m
        })
        .collect();
    let t = match declared {
        Some(t) => t.clone(),
        None => {
            let inferred = arrow::json::reader::infer_json_schema_from_iterator(
                rows.iter().map(|r| Ok(Value::Object(r.clone()))),
            )?;
            inferred.field(0).data_type().clone()
        }
    };
    let schema = Arc::new(Schema::new(vec![Field::new("v", t, true)]));
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(rows.len())
        .build_decoder()?;
    decoder.serialize(&rows)?;
    let batch = decoder
        .flush()?
        .ok_or_else(|| Error::config("expected at least one value"))?;
    Ok(batch.column(0).clone())
}

/// A checked spec, shared by the instances.
#[derive(Debug)]
struct Compiled {
    schema: SchemaRef,
    columns: Vec<ColumnGen>,
    rows: Option<u64>,
}

impl kind::Spec for DatagenSourceSpec {
    fn describe(&self) -> String {
        DatagenSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for DatagenSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        DatagenSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        DatagenSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

impl DatagenSourceSpec {
    fn compile(&self) -> Result<Compiled> {
        if self.columns.is_empty() {
            return Err(Error::config("key 'columns': expected at least one column"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("key 'batch_size': expected at least 1"));
        }
        if let Some(r) = self.rows_per_second
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::config(format!(
                "key 'rows_per_second': expected a number above 0, found {r}"
            )));
        }
        if self.splits == Some(0) {
            return Err(Error::config("key 'splits': expected at least 1"));
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        let mut rows = self.rows;
        for (i, c) in self.columns.iter().enumerate() {
            if self.columns[..i].iter().any(|o| o.name == c.name) {
                return Err(Error::config(format!(
                    "key 'columns[{i}].name': column '{}' is named twice",
                    c.name
                )));
            }
            let g = c.check(i, self.seed)?;
            if let (Gen::SeqInt { start } | Gen::SeqText { start }, Some(end)) = (&g.kind, c.end) {
                let n = (end as i128 - *start as i128 + 1) as u64;
                rows = Some(rows.map_or(n, |r| r.min(n)));
            }
            columns.push(g);
        }
        let schema = Arc::new(Schema::new(
            columns.iter().map(|c| c.field.clone()).collect::<Vec<_>>(),
        ));
        Ok(Compiled {
            schema,
            columns,
            rows,
        })
    }

    /// Plan time: checks every column and returns the output schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        Ok(self.compile()?.schema)
    }

    /// One running instance (subtask `info.subtask` runs splits `s` with `s mod p == subtask`).
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let compiled = self.compile()?;
        if compiled.schema != schema {
            return Err(Error::internal("datagen planned with another schema"));
        }
        Ok(Box::new(DatagenSource {
            compiled: Arc::new(compiled),
            info: info.clone(),
            default_splits: self.splits.unwrap_or(info.parallelism),
            batch_size: self.batch_size,
            rate: self
                .rows_per_second
                .map(|r| r / info.parallelism.max(1) as f64),
            splits: None,
            limit: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let rows = match self.rows {
            Some(n) => format!("{n} rows"),
            None => "unbounded".into(),
        };
        let rate = self
            .rows_per_second
            .map(|r| format!(", at most {r} rows/s"))
            .unwrap_or_default();
        format!(
            "datagen source ({} columns, {rows}{rate}, seed {})",
            self.columns.len(),
            self.seed
        )
    }
}

/// The bits of row `row` in the value stream `stream` (SplittableRandom's `nextLong` at step
/// `row + 1`).
#[inline]
fn bits(stream: u64, row: u64) -> u64 {
    mix64(stream.wrapping_add(row.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

#[inline]
fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl ColumnGen {
    /// The values of rows `first, first + stride, …` (`n` of them).
    fn make(&self, first: u64, stride: u64, n: usize) -> Result<ArrayRef> {
        let rows = (0..n as u64).map(move |k| first + k * stride);
        let nulls = (self.null_rate > 0.0).then(|| {
            NullBuffer::from_iter(
                rows.clone()
                    .map(|r| unit_f64(bits(self.nulls, r)) >= self.null_rate),
            )
        });
        let array: ArrayRef = match &self.kind {
            Gen::SeqInt { start } => Arc::new(Int64Array::new(
                rows.map(|r| start.wrapping_add(r as i64)).collect(),
                nulls,
            )),
            Gen::SeqText { start } => {
                let mut offsets = Vec::with_capacity(n + 1);
                let mut values = Vec::with_capacity(n * 8);
                offsets.push(0i32);
                for r in rows {
                    use std::io::Write;
                    write!(values, "{}", start.wrapping_add(r as i64))
                        .map_err(|e| Error::internal("writing a number").with_source(e))?;
                    offsets.push(values.len() as i32);
                }
                Arc::new(StringArray::try_new(
                    OffsetBuffer::new(offsets.into()),
                    values.into(),
                    nulls,
                )?)
            }
            Gen::Int { min, span } => Arc::new(Int64Array::new(
                rows.map(|r| min.wrapping_add(below(bits(self.stream, r), *span) as i64))
                    .collect(),
                nulls,
            )),
            Gen::Float { min, width } => Arc::new(Float64Array::new(
                rows.map(|r| min + unit_f64(bits(self.stream, r)) * width)
                    .collect(),
                nulls,
            )),
            Gen::Bool => Arc::new(BooleanArray::new(
                rows.map(|r| bits(self.stream, r) >> 63 == 1).collect(),
                nulls,
            )),
            Gen::Text { len, var_len } => {
                let mut offsets = Vec::with_capacity(n + 1);
                let mut values = Vec::with_capacity(n * len);
                offsets.push(0i32);
                for r in rows {
                    let mut x = bits(self.stream, r);
                    let l = if *var_len {
                        1 + below(x, *len as u64) as usize
                    } else {
                        *len
                    };
                    // Sixteen hexadecimal digits per 64 random bits.
                    let mut word = 0u64;
                    for i in 0..l {
                        if i % 16 == 0 {
                            x = mix64(x.wrapping_add(GOLDEN_GAMMA));
                            word = x;
                        }
                        values.push(HEX[(word & 15) as usize]);
                        word >>= 4;
                    }
                    offsets.push(values.len() as i32);
                }
                Arc::new(StringArray::try_new(
                    OffsetBuffer::new(offsets.into()),
                    values.into(),
                    nulls,
                )?)
            }
            Gen::Choice { values } => {
                let k = values.len() as u64;
                let idx = UInt32Array::new(
                    rows.map(|r| below(bits(self.stream, r), k) as u32)
                        .collect(),
                    nulls,
                );
                arrow::compute::take(values.as_ref(), &idx, None)?
            }
            Gen::Time {
                start,
                step,
                delay,
                unit,
            } => {
                let per = match unit {
                    TimeUnit::Second => 1_000_000_000i128,
                    TimeUnit::Millisecond => 1_000_000,
                    TimeUnit::Microsecond => 1_000,
                    TimeUnit::Nanosecond => 1,
                };
                let values: Vec<i64> = rows
                    .map(|r| {
                        let mut ns = start + r as i128 * step;
                        if *delay > 0 {
                            ns -= below(bits(self.stream, r), delay + 1) as i128;
                        }
                        ns.div_euclid(per) as i64
                    })
                    .collect();
                let raw = Int64Array::new(values.into(), nulls);
                return Ok(arrow::compute::cast(&raw, self.field.data_type())?);
            }
        };
        if array.data_type() == self.field.data_type() {
            Ok(array)
        } else {
            Ok(arrow::compute::cast(&array, self.field.data_type())?)
        }
    }
}

/// A running datagen instance.
struct DatagenSource {
    compiled: Arc<Compiled>,
    info: TaskInfo,
    default_splits: u32,
    batch_size: usize,
    rate: Option<f64>,
    splits: Option<Splits>,
    limit: Option<RateLimit>,
}

#[async_trait]
impl Source for DatagenSource {
    fn schema(&self) -> SchemaRef {
        self.compiled.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let splits = Splits::assign(
            &self.info,
            ctx.restored_state(),
            self.default_splits,
            self.compiled.rows,
        )?;
        if let Some(total) = splits.remaining_all() {
            ctx.metrics().set_total(total);
        }
        self.splits = Some(splits);
        self.limit = self.rate.map(RateLimit::new);
        Ok(())
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        let Some(splits) = self.splits.as_mut() else {
            return Err(Error::internal("datagen: next before open"));
        };
        let i = match splits.next_split() {
            None => return Ok(SourceEvent::Finished),
            Some(Next::Start(i)) => return Ok(SourceEvent::SplitStart(splits.owned[i].id.clone())),
            Some(Next::End(i)) => return Ok(SourceEvent::SplitEnd(splits.owned[i].id.clone())),
            Some(Next::Rows(i)) => i,
        };
        let mut want = self.batch_size as u64;
        if let Some(left) = splits.remaining(i) {
            want = want.min(left);
        }
        if let Some(limit) = &mut self.limit {
            match limit.allow(want, tokio::time::Instant::now()) {
                Ok(n) => want = n,
                Err(wait) => return Ok(SourceEvent::Idle(wait)),
            }
            limit.take(want);
        }
        let stride = splits.total as u64;
        let split = &mut splits.owned[i];
        let first = split.next;
        let n = want as usize;
        let mut columns = Vec::with_capacity(self.compiled.columns.len());
        for c in &self.compiled.columns {
            columns.push(c.make(first, stride, n)?);
        }
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        let batch =
            RecordBatch::try_new_with_options(self.compiled.schema.clone(), columns, &options)?;
        split.next = first + want * stride;
        ctx.metrics().add_progress(want);
        Ok(SourceEvent::SplitBatch {
            split: split.id.clone(),
            batch,
        })
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        if let Some(s) = &self.splits {
            s.snapshot(&mut snap)?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, TimestampMillisecondType};

    fn spec(yaml: &str) -> DatagenSourceSpec {
        serde_norway::from_str(yaml).expect("spec")
    }

    fn rows(spec: &DatagenSourceSpec, first: u64, stride: u64, n: usize) -> RecordBatch {
        let c = spec.compile().expect("compiles");
        let cols = c
            .columns
            .iter()
            .map(|g| g.make(first, stride, n).expect("values"))
            .collect();
        RecordBatch::try_new(c.schema.clone(), cols).expect("batch")
    }

    const ALL: &str = r#"
rows: 100
seed: 3
columns:
  - {name: id, kind: sequence, start: 10}
  - {name: user, kind: random, type: int32, min: 5, max: 9}
  - {name: amount, kind: random, type: float64, min: 10, max: 20}
  - {name: code, kind: random, type: string, length: 20}
  - {name: word, kind: random, type: string, length: 8, var_len: true, null_rate: 0.5}
  - {name: cat, kind: random, values: [books, games, toys]}
  - {name: ts, kind: timestamp, start: "2024-01-01T00:00:00Z", rate: 100, max_delay: 5ms}
"#;

    #[test]
    fn columns_follow_their_spec() {
        let s = spec(ALL);
        let b = rows(&s, 0, 1, 1000);
        let id = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(id.value(0), 10);
        assert_eq!(id.value(999), 1009);
        let user = b.column(1).as_primitive::<Int32Type>();
        assert!(user.values().iter().all(|v| (5..=9).contains(v)));
        for v in 5..=9 {
            assert!(user.values().contains(&v), "{v} never drawn");
        }
        let amount = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        assert!(amount.values().iter().all(|v| (10.0..20.0).contains(v)));
        let code = b.column(3).as_string::<i32>();
        assert!(
            code.iter()
                .flatten()
                .all(|c| c.len() == 20 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let word = b.column(4).as_string::<i32>();
        let nulls = word.null_count();
        assert!((400..600).contains(&nulls), "{nulls} nulls of 1000");
        assert!(word.iter().flatten().all(|w| (1..=8).contains(&w.len())));
        let cat = b.column(5).as_string::<i32>();
        assert!(
            cat.iter()
                .flatten()
                .all(|c| ["books", "games", "toys"].contains(&c))
        );
        let ts = b.column(6).as_primitive::<TimestampMillisecondType>();
        let start = 1_704_067_200_000i64;
        for (r, t) in ts.values().iter().enumerate() {
            let exact = start + r as i64 * 10;
            assert!((exact - 5..=exact).contains(t), "row {r}: {t}");
        }
    }

    #[test]
    fn rows_depend_only_on_seed_and_row_number() {
        let s = spec(ALL);
        let all = rows(&s, 0, 1, 30);
        // Every third row, starting at row 2: the rows of split 2 of 3.
        let split = rows(&s, 2, 3, 10);
        for k in 0..10 {
            assert_eq!(
                split.slice(k, 1),
                all.slice(2 + 3 * k, 1),
                "row {}",
                2 + 3 * k
            );
        }
        let mut other = spec(ALL);
        other.seed = 4;
        assert_ne!(rows(&other, 0, 1, 30).column(1), all.column(1));
    }

    #[test]
    fn a_bounded_sequence_bounds_the_rows() -> Result<()> {
        let s = spec("columns: [{name: n, kind: sequence, start: 5, end: 14}]");
        assert_eq!(s.compile()?.rows, Some(10));
        let s = spec("rows: 3\ncolumns: [{name: n, kind: sequence, start: 5, end: 14}]");
        assert_eq!(s.compile()?.rows, Some(3));
        Ok(())
    }

    #[test]
    fn bad_columns_are_refused_naming_the_key() {
        let cases = [
            ("columns: []", "columns"),
            (
                "columns: [{name: a, kind: random, min: 5, max: 1}]",
                "columns[0].min",
            ),
            (
                "columns: [{name: a, kind: random, type: int8, max: 1000}]",
                "columns[0].min",
            ),
            (
                "columns: [{name: a, kind: sequence, length: 3}]",
                "columns[0].length",
            ),
            (
                "columns: [{name: a, kind: timestamp, rate: 0}]",
                "columns[0].rate",
            ),
            (
                "columns: [{name: a, kind: timestamp, start: yesterday}]",
                "columns[0].start",
            ),
            (
                "columns: [{name: a, kind: random, type: binary}]",
                "columns[0].type",
            ),
            (
                "columns: [{name: a, kind: random, null_rate: 2}]",
                "columns[0].null_rate",
            ),
            (
                "columns: [{name: a, kind: sequence}, {name: a, kind: sequence}]",
                "columns[1].name",
            ),
            (
                "rows_per_second: 0\ncolumns: [{name: a, kind: sequence}]",
                "rows_per_second",
            ),
        ];
        for (yaml, key) in cases {
            let e = spec(yaml).schema().expect_err(yaml);
            assert!(e.report().contains(key), "{yaml}: {}", e.report());
        }
    }
}
