//! CSV: a source reading delimited text files, with a header or not, with a declared schema or one
//! inferred from the first rows of the first file.
//!
//! Records are split here (quotes may span lines) so that every row keeps its line number; a batch
//! of records is decoded by Arrow's CSV decoder at once, and only when that fails is it decoded row
//! by row to find the bad rows and, for each, the column that does not parse.

use crate::config::{ColumnSpec, de_delimiter, default_poll_interval};
use crate::file_source::{
    BadRow, Chunk, FileFormat, FilePosition, FileReader, FileSource, FileSourceOptions, LineReader,
    ListedFile, MAX_CHUNK_BYTES, ReadPosition, conform,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind;
use weir_runtime::{Source, TaskInfo};
use weir_types::{Error, Result};

const EXTENSIONS: &[&str] = &["csv", "tsv"];

/// Rows read from the first file to infer a schema.
const INFER_ROWS: usize = 1000;

fn default_batch_size() -> usize {
    8192
}

fn default_true() -> bool {
    true
}

fn default_delimiter() -> u8 {
    b','
}

/// Reads CSV files.
///
/// ```yaml
/// source:
///   type: csv
///   path: "data/*.csv"
///   delimiter: ";"
///   schema: [{name: id, type: int64}, {name: amount, type: float64}]
/// ```
///
/// With a header, columns are matched by name (a file may order them differently or have extra
/// columns; a missing column is an error for that file). Without one, they are matched by position
/// and inferred columns are named `column_1`, `column_2`, ... Empty fields are null.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceSpec {
    /// One file, a glob (`data/*.csv`) or a directory (all its `.csv` and `.tsv` files, sorted by
    /// name). Required.
    pub path: String,
    /// Keep polling for files that appear later (default `false`).
    #[serde(default)]
    pub continuous: bool,
    /// How often to list the input again in continuous mode (default `"1s"`).
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "crate::config::de_duration",
        serialize_with = "crate::config::ser_duration"
    )]
    pub poll_interval: Duration,
    /// Rows per batch (default 8192).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Whether the first line of each file names the columns (default `true`).
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// The field delimiter, one ASCII character (default `","`; `"\t"` for tabs).
    #[serde(
        default = "default_delimiter",
        deserialize_with = "de_delimiter",
        serialize_with = "crate::config::ser_delimiter"
    )]
    pub delimiter: u8,
    /// The declared schema (default none: inferred from the first 1000 rows of the first file).
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
}

impl CsvSourceSpec {
    /// A spec reading `path` with every other option at its default.
    pub fn new(path: impl Into<String>) -> Self {
        CsvSourceSpec {
            path: path.into(),
            continuous: false,
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            has_header: true,
            delimiter: b',',
            schema: None,
        }
    }

    /// Plan time: the declared schema, or the one inferred from the first rows of the first file. A
    /// missing path is an error naming it (also with a declared schema, unless continuous).
    pub fn schema(&self) -> Result<SchemaRef> {
        let infer = |first: &ListedFile| -> Result<SchemaRef> {
            let name = first.name();
            let f = std::fs::File::open(&first.path)
                .map_err(|e| Error::io(format!("cannot open csv file {name}")).with_source(e))?;
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(self.has_header)
                .with_delimiter(self.delimiter)
                .infer_schema(BufReader::new(f), Some(INFER_ROWS))
                .map_err(|e| {
                    Error::config(format!(
                    "cannot infer the schema of csv file {name}; fix the file or declare a schema"
                ))
                .with_source(e)
                })?;
            if schema.fields().is_empty() {
                return Err(Error::config(format!(
                    "cannot infer the schema of csv file {name}: it is empty; declare a schema"
                )));
            }
            Ok(Arc::new(schema))
        };
        crate::file_source::declared_or_inferred(
            &self.path,
            EXTENSIONS,
            self.continuous,
            self.schema.as_deref(),
            infer,
        )
    }

    /// One running instance for subtask `info.subtask` of `info.parallelism`.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let opts = FileSourceOptions {
            path: self.path.clone(),
            extensions: EXTENSIONS,
            continuous: self.continuous,
            poll_interval: self.poll_interval,
            batch_size: self.batch_size,
        };
        let format = CsvFormat {
            has_header: self.has_header,
            delimiter: self.delimiter,
        };
        Ok(Box::new(FileSource::new(
            opts,
            Arc::new(format),
            schema,
            info,
        )?))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let mode = crate::file_source::describe_mode(self.continuous, self.poll_interval);
        let header = if self.has_header {
            "header"
        } else {
            "no header"
        };
        let schema = crate::file_source::describe_schema(self.schema.is_some());
        format!(
            "csv source {} ({mode}, {header}, delimiter {:?}, {schema}, batches of {} rows)",
            self.path,
            char::from(self.delimiter),
            self.batch_size
        )
    }
}

impl kind::Spec for CsvSourceSpec {
    fn describe(&self) -> String {
        CsvSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for CsvSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        CsvSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        CsvSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

struct CsvFormat {
    has_header: bool,
    delimiter: u8,
}

impl FileFormat for CsvFormat {
    fn name(&self) -> &'static str {
        "csv"
    }

    fn open(
        &self,
        file: &ListedFile,
        schema: &SchemaRef,
        batch_size: usize,
        start: Option<&FilePosition>,
    ) -> Result<Box<dyn FileReader>> {
        let name = file.name();
        let f = std::fs::File::open(&file.path)
            .map_err(|e| Error::io(format!("cannot open csv file {name}")).with_source(e))?;
        let mut records = RecordReader {
            lines: LineReader::new(BufReader::with_capacity(1 << 20, f)),
            delimiter: self.delimiter,
        };
        let mut header_bytes = 0;
        let (file_schema, positions) = if self.has_header {
            let mut buf = Vec::new();
            let Some(rec) = records
                .read(&mut buf)
                .map_err(|e| Error::io(format!("cannot read csv file {name}")).with_source(e))?
            else {
                // An empty file: nothing to read.
                return Ok(Box::new(EmptyReader));
            };
            header_bytes = rec.bytes;
            let header = split_fields(&buf, self.delimiter);
            let fields: Vec<Field> = header
                .iter()
                .map(|h| match schema.field_with_name(h) {
                    Ok(f) => f.clone(),
                    Err(_) => Field::new(h, DataType::Utf8, true),
                })
                .collect();
            let file_schema = Schema::new(fields);
            let positions = schema
                .fields()
                .iter()
                .map(|f| {
                    header.iter().position(|h| h == f.name()).ok_or_else(|| {
                        Error::input(format!(
                            "file {name} has no column '{}' (the planned schema has it as {})",
                            f.name(),
                            f.data_type()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (Arc::new(file_schema), positions)
        } else {
            (schema.clone(), (0..schema.fields().len()).collect())
        };
        if let Some(start) = start
            && start.at.offset > records.lines.offset
        {
            // The header (if any) is read above; the progress of the skipped part is reported by
            // the source.
            records.lines.resume(start.at, &name)?;
            header_bytes = 0;
        }
        Ok(Box::new(CsvReader {
            name,
            records,
            file_schema,
            positions,
            schema: schema.clone(),
            batch_size,
            pending_bytes: header_bytes,
        }))
    }
}

struct EmptyReader;

impl FileReader for EmptyReader {
    fn position(&self) -> ReadPosition {
        ReadPosition::default()
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        Ok(None)
    }
}

/// Where a record starts and how many fields it has.
struct RecordInfo {
    line: u64,
    fields: usize,
    bytes: u64,
}

/// Splits a file into records, following quotes across lines.
struct RecordReader {
    lines: LineReader<BufReader<std::fs::File>>,
    delimiter: u8,
}

impl RecordReader {
    /// Appends the next non-blank record to `buf` (ending with a newline); `None` at the end.
    fn read(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<RecordInfo>> {
        let mut skipped = 0u64;
        loop {
            let start = buf.len();
            let mut in_quotes = false;
            let mut fields = 1;
            let mut bytes = 0u64;
            let mut line = 0;
            loop {
                let from = buf.len();
                let n = self.lines.read_line(buf)?;
                if n == 0 {
                    break;
                }
                if line == 0 {
                    line = self.lines.line;
                }
                bytes += n as u64;
                for b in &buf[from..] {
                    if *b == b'"' {
                        in_quotes = !in_quotes;
                    } else if *b == self.delimiter && !in_quotes {
                        fields += 1;
                    }
                }
                if !in_quotes {
                    break;
                }
            }
            if bytes == 0 {
                return Ok(None);
            }
            if buf[start..].iter().all(|b| *b == b'\n' || *b == b'\r') {
                buf.truncate(start);
                skipped += bytes;
                continue;
            }
            if buf.last() != Some(&b'\n') {
                buf.push(b'\n');
            }
            return Ok(Some(RecordInfo {
                line,
                fields,
                bytes: bytes + skipped,
            }));
        }
    }
}

/// Splits one record into its (unquoted) fields.
fn split_fields(record: &[u8], delimiter: u8) -> Vec<String> {
    let mut record = record;
    while let Some(r) = record
        .strip_suffix(b"\n")
        .or_else(|| record.strip_suffix(b"\r"))
    {
        record = r;
    }
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < record.len() {
        let b = record[i];
        if in_quotes {
            if b == b'"' {
                if record.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == delimiter {
            fields.push(String::from_utf8_lossy(&cur).into_owned());
            cur.clear();
        } else {
            cur.push(b);
        }
        i += 1;
    }
    fields.push(String::from_utf8_lossy(&cur).into_owned());
    fields
}

struct CsvReader {
    name: String,
    records: RecordReader,
    file_schema: SchemaRef,
    positions: Vec<usize>,
    schema: SchemaRef,
    batch_size: usize,
    /// Bytes read but not yet reported (the header).
    pending_bytes: u64,
}

/// Decodes `buf` (whole records) with `schema`.
fn decode(
    schema: &SchemaRef,
    delimiter: u8,
    rows: usize,
    buf: &[u8],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_delimiter(delimiter)
        .with_batch_size(rows.max(1))
        .build_decoder();
    let mut batches = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let n = decoder.decode(&buf[off..])?;
        off += n;
        if n == 0 {
            match decoder.flush()? {
                Some(b) => batches.push(b),
                None => break,
            }
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema.clone())),
        1 => Ok(batches.remove(0)),
        _ => arrow::compute::concat_batches(schema, &batches),
    }
}

impl CsvReader {
    /// Explains why one record does not decode: finds the first column whose value does not parse.
    fn explain(&self, record: &[u8], error: arrow::error::ArrowError) -> Error {
        let values = split_fields(record, self.records.delimiter);
        let as_text: Vec<Field> = self
            .file_schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect();
        for (j, f) in self.file_schema.fields().iter().enumerate() {
            if f.data_type() == &DataType::Utf8 && f.is_nullable() {
                continue;
            }
            let mut fields = as_text.clone();
            fields[j] = f.as_ref().clone();
            let schema = Arc::new(Schema::new(fields));
            if let Err(e) = decode(&schema, self.records.delimiter, 1, record) {
                let value = values.get(j).map(String::as_str).unwrap_or_default();
                let msg = if value.is_empty() && !f.is_nullable() {
                    format!("column '{}' is empty but may not be null", f.name())
                } else {
                    format!(
                        "cannot parse '{value}' as {} in column '{}'",
                        f.data_type(),
                        f.name()
                    )
                };
                return Error::input(msg).with_source(e);
            }
        }
        Error::input(format!("cannot decode csv row: {error}")).with_source(error)
    }
}

impl FileReader for CsvReader {
    fn position(&self) -> ReadPosition {
        self.records.lines.position()
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.records.lines.eof {
            return Ok(None);
        }
        let ncols = self.file_schema.fields().len();
        let mut buf = Vec::new();
        let mut spans: Vec<(u64, usize, usize)> = Vec::new();
        let mut bad_rows = Vec::new();
        let mut bytes = std::mem::take(&mut self.pending_bytes);
        while spans.len() < self.batch_size && buf.len() < MAX_CHUNK_BYTES {
            let start = buf.len();
            let Some(rec) = self.records.read(&mut buf).map_err(|e| {
                Error::io(format!("cannot read csv file {}", self.name)).with_source(e)
            })?
            else {
                break;
            };
            bytes += rec.bytes;
            if rec.fields != ncols {
                let raw = buf[start..].strip_suffix(b"\n").unwrap_or(&buf[start..]);
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw).to_vec();
                bad_rows.push(BadRow {
                    error: Error::input(format!("expected {ncols} fields, found {}", rec.fields)),
                    position: format!("line {}", rec.line),
                    raw: Some(raw),
                });
                buf.truncate(start);
                continue;
            }
            spans.push((rec.line, start, buf.len()));
        }
        if spans.is_empty() {
            return Ok(Some(Chunk {
                batch: None,
                bad_rows,
                bytes,
            }));
        }
        let delimiter = self.records.delimiter;
        let decoded = match decode(&self.file_schema, delimiter, spans.len(), &buf) {
            Ok(b) => Some(b),
            Err(_) => {
                let mut good = Vec::new();
                for (line, start, end) in &spans {
                    let record = &buf[*start..*end];
                    match decode(&self.file_schema, delimiter, 1, record) {
                        Ok(b) => good.push(b),
                        Err(e) => {
                            let raw = record.strip_suffix(b"\n").unwrap_or(record);
                            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                            bad_rows.push(BadRow {
                                error: self.explain(record, e),
                                position: format!("line {line}"),
                                raw: Some(raw.to_vec()),
                            });
                        }
                    }
                }
                if good.is_empty() {
                    None
                } else {
                    Some(arrow::compute::concat_batches(&self.file_schema, &good)?)
                }
            }
        };
        let batch = match decoded {
            Some(b) => Some(conform(&self.name, &b, &self.positions, &self.schema)?),
            None => None,
        };
        Ok(Some(Chunk {
            batch,
            bad_rows,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(
            split_fields(b"a,\"b,c\",\"say \"\"hi\"\"\"\r\n", b','),
            ["a", "b,c", "say \"hi\""]
        );
        assert_eq!(split_fields(b"x;;y\n", b';'), ["x", "", "y"]);
    }
}
