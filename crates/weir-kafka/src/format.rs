//! Message formats: turning Kafka messages into Arrow rows (the source) and rows into message
//! values (the sink). JSON (one object per message), raw bytes (one payload per message, as
//! Binary, UTF-8 text or an encoded `weir.image`) and Arrow IPC (one IPC stream per message).

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder,
    StringArray, StringBuilder, StructArray, StructBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_types::multimodal::{image_encoded_fields, image_field};
use weir_types::{Error, Result};

/// How message values are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per message (the default).
    #[default]
    Json,
    /// The value as it is: one payload per message (the sink writes one Binary or Utf8 column).
    Raw,
    /// An Arrow IPC stream per message (any number of rows).
    ArrowIpc,
}

/// How a raw value is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawType {
    /// Binary (the default; `decode_audio` reads audio files from such a column).
    #[default]
    Binary,
    /// UTF-8 text; a value that is not UTF-8 is a bad row.
    Utf8,
    /// An encoded `weir.image` (`struct<bytes, format>`), what `decode_image` reads.
    Image,
}

/// A metadata column the source can add to every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Meta {
    /// `topic: Utf8`
    Topic,
    /// `partition: Int32`
    Partition,
    /// `offset: Int64`
    Offset,
    /// `timestamp: Timestamp(ms, UTC)` (nullable)
    Timestamp,
    /// `key: Utf8` (nullable; see `key_type`)
    Key,
    /// `headers: List<Struct<key: Utf8, value: Binary>>`
    Headers,
}

impl Meta {
    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Meta::Topic => "topic",
            Meta::Partition => "partition",
            Meta::Offset => "offset",
            Meta::Timestamp => "timestamp",
            Meta::Key => "key",
            Meta::Headers => "headers",
        }
    }

    fn field(self, key_binary: bool) -> Field {
        match self {
            Meta::Topic => Field::new("topic", DataType::Utf8, false),
            Meta::Partition => Field::new("partition", DataType::Int32, false),
            Meta::Offset => Field::new("offset", DataType::Int64, false),
            Meta::Timestamp => Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Meta::Key if key_binary => Field::new("key", DataType::Binary, true),
            Meta::Key => Field::new("key", DataType::Utf8, true),
            Meta::Headers => Field::new(
                "headers",
                DataType::List(Arc::new(Field::new(
                    "item",
                    DataType::Struct(header_fields()),
                    true,
                ))),
                true,
            ),
        }
    }
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Binary, true),
    ])
}

/// One message as read, owned.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in ms, when the message has one.
    pub timestamp: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Value.
    pub value: Option<Vec<u8>>,
}

impl Msg {
    /// `topic/partition@offset`, how bad rows are located.
    pub fn position(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// A message that could not be decoded.
#[derive(Debug)]
pub struct BadMessage {
    /// Index in the input slice.
    pub index: usize,
    /// Why.
    pub error: Error,
}

/// Turns messages into rows of a fixed schema.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: Format,
    raw_type: RawType,
    /// The payload columns (without metadata).
    payload: SchemaRef,
    meta: Vec<Meta>,
    key_binary: bool,
    schema: SchemaRef,
}

impl Decoder {
    /// A decoder producing `payload` columns followed by `meta` columns. For `Format::Raw`,
    /// `payload` must be [`raw_schema`].
    pub fn new(
        format: Format,
        raw_type: RawType,
        payload: SchemaRef,
        meta: Vec<Meta>,
        key_binary: bool,
    ) -> Result<Self> {
        let mut fields: Vec<Field> = payload
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for m in &meta {
            if fields.iter().any(|f| f.name() == m.name()) {
                return Err(Error::config(format!(
                    "key 'metadata': column '{}' is also a column of the message values; rename it with `select`/`rename` upstream of the producer or leave it out of 'metadata'",
                    m.name()
                )));
            }
            fields.push(m.field(key_binary));
        }
        Ok(Decoder {
            format,
            raw_type,
            payload,
            meta,
            key_binary,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Decodes `msgs` into one batch; messages that do not decode are returned as bad.
    pub fn decode(&self, msgs: &[Msg]) -> Result<(Option<RecordBatch>, Vec<BadMessage>)> {
        let mut bad = Vec::new();
        // Rows per kept message (IPC messages may carry several rows, or none).
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(msgs.len());
        let payload: Vec<ArrayRef> = match self.format {
            Format::Json => self.decode_json(msgs, &mut kept, &mut bad)?,
            Format::Raw => self.decode_raw(msgs, &mut kept, &mut bad)?,
            Format::ArrowIpc => self.decode_ipc(msgs, &mut kept, &mut bad)?,
        };
        let rows: usize = kept.iter().map(|k| k.1).sum();
        if rows == 0 {
            return Ok((None, bad));
        }
        let mut columns = payload;
        for m in &self.meta {
            columns.push(self.meta_column(*m, msgs, &kept, rows, &mut bad)?);
        }
        if !bad.is_empty() && self.meta.contains(&Meta::Key) && !self.key_binary {
            // A key that is not UTF-8 was found while building the key column: drop those rows.
            // (Handled inside meta_column by substituting nulls; reported as bad there.)
        }
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok((Some(batch), bad))
    }

    fn decode_json(
        &self,
        msgs: &[Msg],
        kept: &mut Vec<(usize, usize)>,
        bad: &mut Vec<BadMessage>,
    ) -> Result<Vec<ArrayRef>> {
        let mut good = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let v = m.value.as_deref().unwrap_or_default();
            let starts_object = v
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{');
            let check = if !starts_object {
                Err(Error::input("the message value is not a JSON object"))
            } else {
                serde_json::from_slice::<serde::de::IgnoredAny>(v)
                    .map(|_| ())
                    .map_err(|e| Error::input("the message value is not valid JSON").with_source(e))
            };
            match check {
                Ok(()) => good.push(i),
                Err(error) => bad.push(BadMessage { index: i, error }),
            }
        }
        let try_all = json_batch(&self.payload, good.iter().map(|&i| msg_value(&msgs[i])));
        let batch = match try_all {
            Ok(b) => {
                kept.extend(good.iter().map(|&i| (i, 1)));
                b
            }
            Err(_) => {
                // Find the messages whose values do not fit the schema, one at a time.
                let mut fit = Vec::new();
                for &i in &good {
                    match json_batch(&self.payload, std::iter::once(msg_value(&msgs[i]))) {
                        Ok(_) => fit.push(i),
                        Err(error) => bad.push(BadMessage { index: i, error }),
                    }
                }
                kept.extend(fit.iter().map(|&i| (i, 1)));
                json_batch(&self.payload, fit.iter().map(|&i| msg_value(&msgs[i])))?
            }
        };
        bad.sort_by_key(|b| b.index);
        Ok(batch.columns().to_vec())
    }

    fn decode_raw(
        &self,
        msgs: &[Msg],
        kept: &mut Vec<(usize, usize)>,
        bad: &mut Vec<BadMessage>,
    ) -> Result<Vec<ArrayRef>> {
        let column: ArrayRef = match self.raw_type {
            RawType::Binary | RawType::Image => {
                let mut b = BinaryBuilder::with_capacity(
                    msgs.len(),
                    msgs.iter()
                        .map(|m| m.value.as_ref().map_or(0, Vec::len))
                        .sum(),
                );
                for (i, m) in msgs.iter().enumerate() {
                    match &m.value {
                        Some(v) => b.append_value(v),
                        None if self.raw_type == RawType::Image => {
                            bad.push(BadMessage {
                                index: i,
                                error: Error::input("the message has no value (a tombstone)"),
                            });
                            continue;
                        }
                        None => b.append_null(),
                    }
                    kept.push((i, 1));
                }
                let bytes = b.finish();
                if self.raw_type == RawType::Image {
                    let n = bytes.len();
                    let format = Arc::new(StringArray::new_null(n)) as ArrayRef;
                    Arc::new(StructArray::try_new(
                        image_encoded_fields(),
                        vec![Arc::new(bytes) as ArrayRef, format],
                        None,
                    )?)
                } else {
                    Arc::new(bytes)
                }
            }
            RawType::Utf8 => {
                let mut b = StringBuilder::new();
                for (i, m) in msgs.iter().enumerate() {
                    match m.value.as_deref().map(std::str::from_utf8) {
                        Some(Ok(s)) => b.append_value(s),
                        None => b.append_null(),
                        Some(Err(e)) => {
                            bad.push(BadMessage {
                                index: i,
                                error: Error::input("the message value is not UTF-8")
                                    .with_source(e),
                            });
                            continue;
                        }
                    }
                    kept.push((i, 1));
                }
                Arc::new(b.finish())
            }
        };
        Ok(vec![column])
    }

    fn decode_ipc(
        &self,
        msgs: &[Msg],
        kept: &mut Vec<(usize, usize)>,
        bad: &mut Vec<BadMessage>,
    ) -> Result<Vec<ArrayRef>> {
        let mut batches = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            match ipc_batches(m.value.as_deref().unwrap_or_default(), &self.payload) {
                Ok(bs) => {
                    let rows = bs.iter().map(RecordBatch::num_rows).sum();
                    batches.extend(bs);
                    kept.push((i, rows));
                }
                Err(error) => bad.push(BadMessage { index: i, error }),
            }
        }
        let all = arrow::compute::concat_batches(&self.payload, &batches)?;
        Ok(all.columns().to_vec())
    }

    fn meta_column(
        &self,
        m: Meta,
        msgs: &[Msg],
        kept: &[(usize, usize)],
        rows: usize,
        bad: &mut Vec<BadMessage>,
    ) -> Result<ArrayRef> {
        let each = kept
            .iter()
            .flat_map(|&(i, n)| std::iter::repeat_n(&msgs[i], n));
        Ok(match m {
            Meta::Topic => Arc::new(StringArray::from_iter_values(each.map(|m| &*m.topic))),
            Meta::Partition => {
                let mut b = Int32Builder::with_capacity(rows);
                each.for_each(|m| b.append_value(m.partition));
                Arc::new(b.finish())
            }
            Meta::Offset => {
                let mut b = Int64Builder::with_capacity(rows);
                each.for_each(|m| b.append_value(m.offset));
                Arc::new(b.finish())
            }
            Meta::Timestamp => {
                let mut b = TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC");
                each.for_each(|m| b.append_option(m.timestamp));
                Arc::new(b.finish())
            }
            Meta::Key if self.key_binary => {
                Arc::new(BinaryArray::from_iter(each.map(|m| m.key.as_deref())))
            }
            Meta::Key => {
                let mut b = StringBuilder::with_capacity(rows, 16 * rows);
                for m in each {
                    match m.key.as_deref().map(std::str::from_utf8) {
                        None => b.append_null(),
                        Some(Ok(s)) => b.append_value(s),
                        Some(Err(_)) => {
                            // Kept as a row (its value decoded); the key becomes null and the
                            // message is reported so that the loss is visible.
                            b.append_null();
                            if let Some(index) = msgs.iter().position(|x| std::ptr::eq(x, m)) {
                                bad.push(BadMessage {
                                    index,
                                    error: Error::input(
                                        "the message key is not UTF-8 (set key_type: binary); the row was kept with a null key",
                                    ),
                                });
                            }
                        }
                    }
                }
                Arc::new(b.finish())
            }
            Meta::Headers => {
                let mut b = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0));
                for m in each {
                    let s = b.values();
                    for (k, v) in &m.headers {
                        s.field_builder::<StringBuilder>(0)
                            .ok_or_else(|| Error::internal("header key builder"))?
                            .append_value(k);
                        s.field_builder::<BinaryBuilder>(1)
                            .ok_or_else(|| Error::internal("header value builder"))?
                            .append_option(v.as_deref());
                        s.append(true);
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        })
    }
}

fn msg_value(m: &Msg) -> &[u8] {
    m.value.as_deref().unwrap_or_default()
}

/// The payload schema of `format: raw`: one column `name` typed by `raw_type`.
pub fn raw_schema(name: &str, raw_type: RawType) -> SchemaRef {
    let field = match raw_type {
        RawType::Binary => Field::new(name, DataType::Binary, true),
        RawType::Utf8 => Field::new(name, DataType::Utf8, true),
        RawType::Image => image_field(name, true),
    };
    Arc::new(Schema::new(vec![field]))
}

/// Decodes JSON objects (one per value) into one batch of `schema`.
fn json_batch<'a>(
    schema: &SchemaRef,
    values: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(values.len() + 2)
        .build_decoder()?;
    let mut n = 0;
    for v in values {
        let mut off = 0;
        while off < v.len() {
            let used = decoder.decode(&v[off..])?;
            if used == 0 {
                return Err(Error::input("the JSON decoder made no progress"));
            }
            off += used;
        }
        decoder.decode(b"\n")?;
        n += 1;
        if decoder.len() != n {
            return Err(Error::input(
                "a message value holds more or less than one JSON object",
            ));
        }
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// Reads every batch of the IPC stream in `bytes`, which must have `schema`'s columns.
fn ipc_batches(bytes: &[u8], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| Error::input("the message value is not an Arrow IPC stream").with_source(e))?;
    let theirs = reader.schema();
    if theirs.fields().len() != schema.fields().len()
        || theirs
            .fields()
            .iter()
            .zip(schema.fields())
            .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
    {
        return Err(Error::input(format!(
            "the message's Arrow schema ({theirs}) differs from the source's ({schema})"
        )));
    }
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| Error::input("a truncated Arrow IPC stream").with_source(e))?;
        out.push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
    }
    Ok(out)
}

/// The schema of the first Arrow IPC stream among `values`.
pub fn ipc_schema(value: &[u8]) -> Result<SchemaRef> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(value), None)
        .map_err(|e| Error::input("the message value is not an Arrow IPC stream").with_source(e))?;
    Ok(reader.schema())
}

/// Infers a JSON schema from sample values (objects); values that are not objects are skipped.
pub fn infer_json_schema(values: &[Vec<u8>]) -> Result<SchemaRef> {
    let mut text = Vec::new();
    for v in values {
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(v).is_ok() {
            text.extend_from_slice(v);
            text.push(b'\n');
        }
    }
    let (schema, n) =
        arrow::json::reader::infer_json_schema_from_seekable(std::io::Cursor::new(text), None)?;
    if n == 0 || schema.fields().is_empty() {
        return Err(Error::config(
            "no JSON object among the sampled messages to infer a schema from; declare 'schema'",
        ));
    }
    Ok(Arc::new(schema))
}

/// Encodes rows into message values (the sink).
#[derive(Debug, Clone)]
pub struct Encoder {
    format: Format,
    /// Indices of the columns written into the value.
    value_columns: Vec<usize>,
    value_schema: SchemaRef,
}

impl Encoder {
    /// Writes the columns `value_columns` of `input` (all when empty) as `format`.
    pub fn new(format: Format, input: &SchemaRef, value_columns: &[String]) -> Result<Self> {
        let idx: Vec<usize> = if value_columns.is_empty() {
            (0..input.fields().len()).collect()
        } else {
            value_columns
                .iter()
                .map(|c| {
                    input.index_of(c).map_err(|_| {
                        Error::schema(format!(
                            "key 'value_columns': column '{c}' is not in the input"
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        let value_schema = Arc::new(input.project(&idx)?);
        if format == Format::Raw {
            let ok = value_schema.fields().len() == 1
                && matches!(
                    value_schema.field(0).data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::Utf8 | DataType::LargeUtf8
                );
            if !ok {
                return Err(Error::schema(
                    "format raw writes one Binary or Utf8 column as the value: name it in 'value_columns'",
                ));
            }
        }
        Ok(Encoder {
            format,
            value_columns: idx,
            value_schema,
        })
    }

    /// One value per row of `batch` (for IPC: one single-row stream per row).
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let projected = RecordBatch::try_new(
            self.value_schema.clone(),
            self.value_columns
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect(),
        )?;
        match self.format {
            Format::Json => {
                let mut buf = Vec::with_capacity(64 * batch.num_rows());
                {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                    w.write(&projected)?;
                    w.finish()?;
                }
                let mut out: Vec<Vec<u8>> =
                    buf.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                out.truncate(batch.num_rows());
                if out.len() != batch.num_rows() {
                    return Err(Error::internal(
                        "the JSON writer wrote fewer lines than rows",
                    ));
                }
                Ok(out)
            }
            Format::Raw => {
                let col = projected.column(0);
                (0..col.len())
                    .map(|r| {
                        Ok(match col.data_type() {
                            DataType::Utf8 => col.as_string::<i32>().value(r).as_bytes().to_vec(),
                            DataType::LargeUtf8 => {
                                col.as_string::<i64>().value(r).as_bytes().to_vec()
                            }
                            DataType::LargeBinary => col.as_binary::<i64>().value(r).to_vec(),
                            _ => col.as_binary::<i32>().value(r).to_vec(),
                        })
                    })
                    .collect()
            }
            Format::ArrowIpc => (0..projected.num_rows())
                .map(|r| {
                    let mut buf = Vec::new();
                    let mut w =
                        arrow::ipc::writer::StreamWriter::try_new(&mut buf, &self.value_schema)?;
                    w.write(&projected.slice(r, 1))?;
                    w.finish()?;
                    drop(w);
                    Ok(buf)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(offset: i64, value: &str) -> Msg {
        Msg {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: Some(1000 + offset),
            key: Some(format!("k{offset}").into_bytes()),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn json_rows_line_up_with_their_messages_and_bad_ones_are_named() {
        let payload = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let d = Decoder::new(
            Format::Json,
            RawType::Binary,
            payload,
            vec![Meta::Offset, Meta::Key, Meta::Headers],
            false,
        )
        .expect("decoder");
        let msgs = vec![
            msg(0, r#"{"n": 1}"#),
            msg(1, "not json"),
            msg(2, r#"{"n": "x"}"#),
            msg(3, r#"{"n": 4} {"n": 5}"#),
            msg(4, r#"{"n": 5, "extra": true}"#),
        ];
        let (batch, bad) = d.decode(&msgs).expect("decode");
        let batch = batch.expect("rows");
        let rows =
            String::from_utf8(weir_types::row_as_json(&batch, 0).expect("row")).expect("utf8");
        assert!(
            rows.contains("\"n\":1") && rows.contains("\"offset\":0"),
            "{rows}"
        );
        assert_eq!(batch.num_rows(), 2);
        let offsets = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("offsets");
        assert_eq!(offsets.values().to_vec(), vec![0, 4]);
        let bad: Vec<i64> = bad.iter().map(|b| msgs[b.index].offset).collect();
        assert_eq!(bad, vec![1, 2, 3]);
    }

    #[test]
    fn ipc_round_trips_through_the_encoder() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
            ],
        )
        .expect("batch");
        let values = Encoder::new(Format::ArrowIpc, &schema, &[])
            .expect("enc")
            .encode(&batch)
            .expect("encode");
        assert_eq!(values.len(), 2);
        let msgs: Vec<Msg> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| Msg {
                value: Some(v),
                ..msg(i as i64, "")
            })
            .collect();
        let d = Decoder::new(
            Format::ArrowIpc,
            RawType::Binary,
            schema,
            vec![Meta::Partition],
            false,
        )
        .expect("decoder");
        let (got, bad) = d.decode(&msgs).expect("decode");
        assert!(bad.is_empty());
        let got = got.expect("rows");
        assert_eq!(got.num_rows(), 2);
        assert_eq!(got.column(0).as_ref(), batch.column(0).as_ref());
        let json = Encoder::new(Format::Json, &batch.schema(), &["a".into()])
            .expect("enc")
            .encode(&batch)
            .expect("json");
        assert_eq!(json, vec![br#"{"a":1}"#.to_vec(), br#"{"a":2}"#.to_vec()]);
    }
}
