//! Plain text: a source reading text files as one row per line, or one row per record where
//! records are separated by a line holding only a separator (`%` in fortune files) or by blank
//! lines (paragraphs). For corpora that are neither JSON Lines nor CSV.
//!
//! Each row carries the text, the file's URI and the number of the line the record starts on, so
//! a result can always be traced back to its input. Bytes that are not valid UTF-8 are replaced
//! (U+FFFD) rather than failing the file.

use crate::config::default_poll_interval;
use crate::file_source::{
    Chunk, FileFormat, FilePosition, FileReader, FileSource, FileSourceOptions, LineReader,
    ListedFile, MAX_CHUNK_BYTES, ReadPosition,
};
use arrow::array::{ArrayRef, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind;
use weir_runtime::{Source, TaskInfo};
use weir_types::{Error, Result};

const EXTENSIONS: &[&str] = &["txt", "text"];

fn default_batch_size() -> usize {
    1024
}

fn default_true() -> bool {
    true
}

/// Reads plain-text files.
///
/// ```yaml
/// source: text
/// path: ${WEIR_DATA}/text/      # a file, a glob or a directory (its .txt / .text files)
/// separator: "%"                # fortune files: records end at a line holding only "%"
/// ```
///
/// The output schema is `text: Utf8 (not null), uri: Utf8 (not null), line: UInt64 (not null)`:
/// the record's text (its lines joined with `\n`, without the trailing newline), the file as a
/// `file:///abs/path` URI, and the 1-based number of the record's first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSourceSpec {
    /// One file, a glob (`texts/*.txt`) or a directory (all its `.txt` and `.text` files, sorted by
    /// name). Required.
    pub path: String,
    /// How the text is cut into rows. Default none: one row per line. A string: records are the
    /// runs of lines between lines equal to it (after trimming surrounding whitespace), e.g. `"%"`
    /// for fortune files; `""` cuts at blank lines (paragraphs).
    #[serde(default)]
    pub separator: Option<String>,
    /// Leave out rows whose text is empty or only whitespace (default `true`).
    #[serde(default = "default_true")]
    pub skip_empty: bool,
    /// Remove leading and trailing whitespace from every row's text (default `false`).
    #[serde(default)]
    pub trim: bool,
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
    /// Rows per batch (default 1024).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

/// The output schema of the text source.
pub fn text_source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("uri", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
    ]))
}

impl TextSourceSpec {
    /// A spec reading `path` one row per line, with every other option at its default.
    pub fn new(path: impl Into<String>) -> Self {
        TextSourceSpec {
            path: path.into(),
            separator: None,
            skip_empty: true,
            trim: false,
            continuous: false,
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
        }
    }

    /// Plan time: checks the options (a bounded source's path must exist) and returns the fixed
    /// schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        if self.batch_size == 0 {
            return Err(Error::config("batch_size must be at least 1"));
        }
        if !self.continuous {
            crate::file_source::list_files(&self.path, EXTENSIONS)?;
        }
        Ok(text_source_schema())
    }

    /// One running instance for subtask `info.subtask` of `info.parallelism`.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        if schema.fields() != text_source_schema().fields() {
            return Err(Error::schema(
                "the text source can only produce its own schema (text, uri, line)",
            ));
        }
        let opts = FileSourceOptions {
            path: self.path.clone(),
            extensions: EXTENSIONS,
            continuous: self.continuous,
            poll_interval: self.poll_interval,
            batch_size: self.batch_size,
        };
        let format = TextFormat {
            separator: self.separator.as_ref().map(|s| s.trim().to_string()),
            skip_empty: self.skip_empty,
            trim: self.trim,
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
        let unit = match self.separator.as_deref().map(str::trim) {
            None => "one row per line".to_string(),
            Some("") => "one row per paragraph".to_string(),
            Some(s) => format!("records separated by '{s}' lines"),
        };
        let mode = crate::file_source::describe_mode(self.continuous, self.poll_interval);
        format!(
            "text source {} ({unit}, {mode}, batches of {} rows)",
            self.path, self.batch_size
        )
    }
}

impl kind::Spec for TextSourceSpec {
    fn describe(&self) -> String {
        TextSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for TextSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        TextSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        TextSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

struct TextFormat {
    separator: Option<String>,
    skip_empty: bool,
    trim: bool,
}

impl FileFormat for TextFormat {
    fn name(&self) -> &'static str {
        "text"
    }

    fn open(
        &self,
        file: &ListedFile,
        _schema: &SchemaRef,
        batch_size: usize,
        start: Option<&FilePosition>,
    ) -> Result<Box<dyn FileReader>> {
        let f = std::fs::File::open(&file.path).map_err(|e| {
            Error::io(format!("cannot open text file {}", file.name())).with_source(e)
        })?;
        let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, f));
        if let Some(start) = start {
            lines.resume(start.at, &file.name())?;
        }
        let abs = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        Ok(Box::new(TextReader {
            name: file.name(),
            uri: format!("file://{}", abs.display()),
            lines,
            separator: self.separator.clone(),
            skip_empty: self.skip_empty,
            trim: self.trim,
            batch_size,
            pending: None,
        }))
    }
}

/// A record being gathered: its first line number and its text so far.
struct Pending {
    line: u64,
    text: String,
    /// The byte offset of its first line (where to resume when a checkpoint falls inside it).
    offset: u64,
}

struct TextReader {
    name: String,
    uri: String,
    lines: LineReader<BufReader<std::fs::File>>,
    separator: Option<String>,
    skip_empty: bool,
    trim: bool,
    batch_size: usize,
    pending: Option<Pending>,
}

impl TextReader {
    /// Pushes a finished record unless it is to be skipped.
    fn finish(&self, record: Pending, rows: &mut Vec<(u64, String)>) {
        let text = if self.trim {
            record.text.trim().to_string()
        } else {
            record.text
        };
        if self.skip_empty && text.trim().is_empty() {
            return;
        }
        rows.push((record.line, text));
    }
}

impl FileReader for TextReader {
    fn position(&self) -> ReadPosition {
        // A record still being gathered was not emitted: resume at its first line.
        match &self.pending {
            Some(p) => ReadPosition {
                offset: p.offset,
                line: p.line.saturating_sub(1),
            },
            None => self.lines.position(),
        }
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.lines.eof && self.pending.is_none() {
            return Ok(None);
        }
        let mut rows: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0u64;
        let mut gathered = 0usize;
        let mut buf = Vec::new();
        while rows.len() < self.batch_size && gathered < MAX_CHUNK_BYTES {
            buf.clear();
            let n = self.lines.read_line(&mut buf).map_err(|e| {
                Error::io(format!("cannot read text file {}", self.name)).with_source(e)
            })?;
            if n == 0 {
                if let Some(p) = self.pending.take() {
                    self.finish(p, &mut rows);
                }
                break;
            }
            bytes += n as u64;
            gathered += n;
            let raw = String::from_utf8_lossy(&buf);
            let line = raw.strip_suffix('\n').unwrap_or(&raw);
            let line = line.strip_suffix('\r').unwrap_or(line);
            let number = self.lines.line;
            match &self.separator {
                None => self.finish(
                    Pending {
                        line: number,
                        text: line.to_string(),
                        offset: 0,
                    },
                    &mut rows,
                ),
                Some(sep) if line.trim() == sep.as_str() => {
                    if let Some(p) = self.pending.take() {
                        self.finish(p, &mut rows);
                    }
                }
                Some(_) => match &mut self.pending {
                    Some(p) => {
                        p.text.push('\n');
                        p.text.push_str(line);
                    }
                    None => {
                        self.pending = Some(Pending {
                            line: number,
                            text: line.to_string(),
                            offset: self.lines.offset - n as u64,
                        })
                    }
                },
            }
        }
        let batch = if rows.is_empty() {
            None
        } else {
            let mut text = StringBuilder::new();
            let mut uri = StringBuilder::new();
            let mut line = UInt64Builder::new();
            for (n, t) in rows {
                text.append_value(t);
                uri.append_value(&self.uri);
                line.append_value(n);
            }
            let cols: Vec<ArrayRef> = vec![
                Arc::new(text.finish()),
                Arc::new(uri.finish()),
                Arc::new(line.finish()),
            ];
            Some(RecordBatch::try_new(text_source_schema(), cols)?)
        };
        Ok(Some(Chunk {
            batch,
            bad_rows: Vec::new(),
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt64Type;

    fn read_all(content: &str, spec: &TextSourceSpec) -> Result<Vec<(u64, String)>> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir").with_source(e))?;
        let path = dir.path().join("t.txt");
        std::fs::write(&path, content).map_err(|e| Error::io("write").with_source(e))?;
        let format = TextFormat {
            separator: spec.separator.clone(),
            skip_empty: spec.skip_empty,
            trim: spec.trim,
        };
        let file = ListedFile {
            path: path.clone(),
            size: content.len() as u64,
        };
        let mut reader = format.open(&file, &text_source_schema(), 2, None)?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            if let Some(b) = chunk.batch {
                assert!(b.num_rows() <= 2);
                let text = b.column(0).as_string::<i32>();
                let line = b.column(2).as_primitive::<UInt64Type>();
                let uri = b.column(1).as_string::<i32>();
                for i in 0..b.num_rows() {
                    assert!(
                        uri.value(i).starts_with("file:///") && uri.value(i).ends_with("t.txt")
                    );
                    out.push((line.value(i), text.value(i).to_string()));
                }
                assert_eq!(text.null_count(), 0);
            }
        }
        Ok(out)
    }

    #[test]
    fn lines_records_and_paragraphs() -> Result<()> {
        let mut spec = TextSourceSpec::new("unused");
        let lines = read_all("a\r\n\nb\nc", &spec)?;
        assert_eq!(
            lines,
            vec![(1, "a".into()), (3, "b".into()), (4, "c".into())]
        );
        spec.separator = Some("%".into());
        let fortunes = read_all("one\ntwo\n%\nthree\n%\n%\n  \nfour\n", &spec)?;
        assert_eq!(
            fortunes,
            vec![
                (1, "one\ntwo".into()),
                (4, "three".into()),
                (7, "  \nfour".into())
            ]
        );
        spec.trim = true;
        let trimmed = read_all("x\n%\n  \nfour  \n", &spec)?;
        assert_eq!(trimmed, vec![(1, "x".into()), (3, "four".into())]);
        spec.separator = Some(String::new());
        spec.trim = false;
        let paragraphs = read_all("p1 a\np1 b\n\n\np2\n", &spec)?;
        assert_eq!(paragraphs, vec![(1, "p1 a\np1 b".into()), (5, "p2".into())]);
        spec.skip_empty = false;
        spec.separator = None;
        let all = read_all("a\n\n", &spec)?;
        assert_eq!(all, vec![(1, "a".into()), (2, String::new())]);
        Ok(())
    }

    #[test]
    fn spec_checks_path_and_options() {
        let spec: std::result::Result<TextSourceSpec, _> =
            serde_json::from_str(r#"{"path": "x", "seperator": "%"}"#);
        assert!(spec.is_err());
        let missing = TextSourceSpec::new("/no/such/dir");
        let e = missing
            .schema()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/no/such/dir"), "{e}");
    }
}
