//! The console sink: prints the first rows as tables, for trying a pipeline out.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::io::Write;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext, TaskInfo};
use weir_types::{Error, Result};

fn default_max_rows() -> usize {
    20
}

/// Prints batches to standard output as tables, up to `max_rows` rows per subtask, then one line
/// with the number of rows not printed.
///
/// ```yaml
/// sink: { type: console, max_rows: 50 }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkSpec {
    /// Most rows printed per subtask (default 20).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

impl Default for ConsoleSinkSpec {
    fn default() -> Self {
        ConsoleSinkSpec {
            max_rows: default_max_rows(),
        }
    }
}

impl ConsoleSinkSpec {
    /// One running instance for subtask `info.subtask`.
    pub fn create(&self, info: &TaskInfo, _input: SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ConsoleSink {
            node: info.node.clone(),
            max_rows: self.max_rows,
            printed: 0,
            rest: 0,
            out: Box::new(std::io::stdout()),
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!("console sink (first {} rows)", self.max_rows)
    }
}

impl kind::Spec for ConsoleSinkSpec {
    fn describe(&self) -> String {
        ConsoleSinkSpec::describe(self)
    }

    /// The console is one.
    fn single_instance(&self) -> bool {
        true
    }
}

impl kind::SinkSpec for ConsoleSinkSpec {
    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        ConsoleSinkSpec::create(self, ctx.info(), ctx.input()?.clone())
    }
}

/// Prints to `out` (standard output, or a buffer in tests).
struct ConsoleSink {
    node: String,
    max_rows: usize,
    printed: usize,
    rest: u64,
    out: Box<dyn Write + Send>,
}

impl ConsoleSink {
    fn write(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}")
            .and_then(|_| self.out.flush())
            .map_err(|e| {
                Error::io(format!("cannot print the output of {}", self.node)).with_source(e)
            })
    }
}

#[async_trait]
impl Operator for ConsoleSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        let room = self.max_rows.saturating_sub(self.printed);
        let shown = batch.num_rows().min(room);
        self.rest += (batch.num_rows() - shown) as u64;
        if shown > 0 {
            let table = arrow::util::pretty::pretty_format_batches(&[batch.slice(0, shown)])?;
            self.printed += shown;
            self.write(&table.to_string())?;
        }
        Ok(())
    }

    async fn finish(&mut self, _ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        if self.rest > 0 {
            let line = format!("... and {} more rows", self.rest);
            self.write(&line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::{Arc, Mutex};
    use weir_runtime::ErrorPolicy;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn prints_at_most_max_rows() -> Result<()> {
        let buf = Shared::default();
        let mut sink = ConsoleSink {
            node: "show".into(),
            max_rows: 3,
            printed: 0,
            rest: 0,
            out: Box::new(buf.clone()),
        };
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let mut ctx = OperatorContext::for_test("show", ErrorPolicy::Fail);
        let mut out = Emitter::default();
        for _ in 0..2 {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![10, 20]))],
            )?;
            sink.process_batch(b, &mut ctx, &mut out).await?;
        }
        sink.finish(&mut ctx, &mut out).await?;
        let text = String::from_utf8_lossy(&buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .to_string();
        assert_eq!(text.matches("| 10 |").count(), 2, "{text}");
        assert_eq!(text.matches("| 20 |").count(), 1, "{text}");
        assert!(text.contains("... and 1 more rows"), "{text}");
        Ok(())
    }
}
