//! Helpers the file sinks share: hidden in-progress names, publishing by rename, and making batches
//! fit the sink's input schema.

use arrow::array::{ArrayRef, BinaryArray, LargeBinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_types::{Error, Result};

/// The hidden in-progress path of `final_path`: `dir/.name.inprogress`.
pub(crate) fn inprogress_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.inprogress"))
}

/// Creates `dir` (and its parents) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::io(format!("cannot create output directory {}", dir.display())).with_source(e)
    })
}

/// Publishes a closed in-progress file under its final name.
pub(crate) fn publish(tmp: &Path, final_path: &Path) -> Result<()> {
    std::fs::rename(tmp, final_path).map_err(|e| {
        Error::io(format!(
            "cannot rename {} to {}",
            tmp.display(),
            final_path.display()
        ))
        .with_source(e)
    })
}

/// Creates the in-progress file for `final_path`.
pub(crate) fn create_file(tmp: &Path) -> Result<std::fs::File> {
    std::fs::File::create(tmp).map_err(|e| {
        Error::io(format!("cannot create output file {}", tmp.display())).with_source(e)
    })
}

/// Gives `batch` the sink's `schema` when only metadata or nullability flags differ (the columns are
/// reused, nothing is copied).
pub(crate) fn with_schema(
    batch: RecordBatch,
    schema: &SchemaRef,
    sink: &str,
) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| {
        Error::schema(format!(
            "a batch does not fit the input schema of sink {sink}"
        ))
        .with_source(e)
    })
}

/// The schema with binary columns turned into UTF-8 ones (for text outputs).
pub(crate) fn text_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                f.as_ref().clone().with_data_type(DataType::Utf8)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn lossy(values: impl Iterator<Item = Option<impl AsRef<[u8]>>>) -> ArrayRef {
    Arc::new(
        values
            .map(|v| v.map(|b| String::from_utf8_lossy(b.as_ref()).into_owned()))
            .collect::<StringArray>(),
    )
}

/// Turns binary columns into UTF-8 columns (invalid UTF-8 replaced), so rows stay readable as text.
/// Valid UTF-8 is converted without per-value work.
pub(crate) fn binary_as_text(batch: RecordBatch, text: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields().iter().all(|f| {
        !matches!(
            f.data_type(),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        )
    }) {
        return Ok(batch);
    }
    let mut cols = Vec::with_capacity(batch.num_columns());
    for col in batch.columns() {
        let c: ArrayRef = match col.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                let opts = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                match arrow::compute::cast_with_options(col, &DataType::Utf8, &opts) {
                    Ok(c) => c,
                    Err(_) => {
                        if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
                            lossy(b.iter())
                        } else if let Some(b) = col.as_any().downcast_ref::<LargeBinaryArray>() {
                            lossy(b.iter())
                        } else {
                            let b = arrow::compute::cast(col, &DataType::Binary)?;
                            let b = b
                                .as_any()
                                .downcast_ref::<BinaryArray>()
                                .ok_or_else(|| Error::internal("binary cast gave another type"))?;
                            lossy(b.iter())
                        }
                    }
                }
            }
            _ => col.clone(),
        };
        cols.push(c);
    }
    RecordBatch::try_new(text.clone(), cols)
        .map_err(|e| Error::internal("text conversion changed the batch shape").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn binary_becomes_lossy_text() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("raw", DataType::Binary, true),
        ]));
        let raw = BinaryArray::from(vec![Some(b"ok".as_ref()), None, Some(&[0xff, b'x'][..])]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3])), Arc::new(raw)],
        )?;
        let text = text_schema(&schema);
        let out = binary_as_text(batch, &text)?;
        let s = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .map(|s| s.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>());
        assert_eq!(
            s,
            Some(vec![
                Some("ok".to_string()),
                None,
                Some("\u{fffd}x".to_string())
            ])
        );
        assert_eq!(
            inprogress_path(Path::new("/d/part-000.jsonl")),
            PathBuf::from("/d/.part-000.jsonl.inprogress")
        );
        Ok(())
    }
}
