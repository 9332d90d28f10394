//! Dead-letter rows: what is written instead of failing the job when `on_error: dead_letter` is set.
//!
//! A dead letter keeps the raw input, where it came from, which operator refused it and why, so the
//! row can be inspected and replayed.

use arrow::array::{ArrayRef, BinaryBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::{Arc, LazyLock};

/// One refused input row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The operator that refused the row.
    pub operator: String,
    /// The input it came from (a file path or URI), if known.
    pub input: Option<String>,
    /// Where in that input (`line 17`, `row 3`, `byte 1024`), if known.
    pub position: Option<String>,
    /// The error, with its cause chain.
    pub error: String,
    /// The raw input (a line of text, a row rendered as JSON, the bytes of a file), if available.
    pub raw: Option<Vec<u8>>,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("operator", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, true),
        Field::new("position", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, true),
    ]))
});

/// The schema of the dead-letter output.
pub fn dead_letter_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Row `i` of `batch` as one JSON object (no trailing newline), for a dead letter's `raw`; `None`
/// when a column's type cannot be written as JSON.
pub fn row_as_json(batch: &RecordBatch, i: usize) -> Option<Vec<u8>> {
    let row = batch.slice(i, 1);
    let mut buf = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
        writer.write(&row).ok()?;
        writer.finish().ok()?;
    }
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Some(buf)
}

/// Builds a batch of the dead-letter schema.
pub fn dead_letter_batch(rows: &[DeadLetter]) -> RecordBatch {
    let mut op = StringBuilder::new();
    let mut input = StringBuilder::new();
    let mut pos = StringBuilder::new();
    let mut err = StringBuilder::new();
    let mut raw = BinaryBuilder::new();
    for r in rows {
        op.append_value(&r.operator);
        input.append_option(r.input.as_deref());
        pos.append_option(r.position.as_deref());
        err.append_value(&r.error);
        raw.append_option(r.raw.as_deref());
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(op.finish()),
        Arc::new(input.finish()),
        Arc::new(pos.finish()),
        Arc::new(err.finish()),
        Arc::new(raw.finish()),
    ];
    RecordBatch::try_new(dead_letter_schema(), cols)
        .expect("dead-letter columns match their schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn row_as_json_renders_one_object() {
        let b = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
        ])
        .expect("batch");
        assert_eq!(row_as_json(&b, 1), Some(br#"{"id":2,"name":"b"}"#.to_vec()));
    }

    #[test]
    fn builds_a_batch() {
        let rows = vec![DeadLetter {
            operator: "read".into(),
            input: Some("a.jsonl".into()),
            position: Some("line 3".into()),
            error: "invalid json".into(),
            raw: Some(b"{oops".to_vec()),
        }];
        let b = dead_letter_batch(&rows);
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), dead_letter_schema());
    }
}
