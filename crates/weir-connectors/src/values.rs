//! Inline rows: a source whose rows are written in the pipeline spec itself, for queries, small
//! lookup tables and examples (`--set steps.query.rows.0.text="..."` changes one from the command
//! line).

use crate::config::{ColumnSpec, declared_schema};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{OperatorContext, Source, SourceEvent, StateSnapshot, TaskInfo};
use weir_types::{Barrier, Error, Result};

/// Emits the rows given in the spec, once, from its first instance.
///
/// ```yaml
/// source: values
/// rows:
///   - {text: "a man is eating food", id: 1}
///   - {text: "a plane is taking off", id: 2}
/// ```
///
/// Each row is a mapping of column to value, read like a JSON Lines row: the schema is declared
/// with `schema`, or inferred from all the rows (numbers with a fraction are `Float64`, other
/// numbers `Int64`, text `Utf8`, lists and mappings nested types).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuesSourceSpec {
    /// The rows. Required, at least one.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The declared schema (default none: inferred from the rows).
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
}

impl ValuesSourceSpec {
    /// Plan time: the declared or inferred schema; checks the rows fit it.
    pub fn schema(&self) -> Result<SchemaRef> {
        if self.rows.is_empty() {
            return Err(Error::config("key 'rows': expected at least one row"));
        }
        let schema = match &self.schema {
            Some(cols) => declared_schema(cols)?,
            None => {
                let values = self
                    .rows
                    .iter()
                    .map(|r| Ok(serde_json::Value::Object(r.clone())));
                Arc::new(
                    arrow::json::reader::infer_json_schema_from_iterator(values).map_err(|e| {
                        Error::config("key 'rows': cannot infer a schema").with_source(e)
                    })?,
                )
            }
        };
        self.batch(&schema)?;
        Ok(schema)
    }

    /// The rows as one batch of `schema`.
    fn batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(self.rows.len().max(1))
            .build_decoder()?;
        decoder.serialize(&self.rows).map_err(|e| {
            Error::config("key 'rows': the rows do not fit the schema").with_source(e)
        })?;
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
    }

    /// One running instance; only subtask 0 emits the rows.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let batch = if info.subtask == 0 {
            Some(self.batch(&schema)?)
        } else {
            None
        };
        Ok(Box::new(ValuesSource {
            schema,
            batch,
            emitted: false,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!("values source ({} rows)", self.rows.len())
    }
}

impl kind::Spec for ValuesSourceSpec {
    fn describe(&self) -> String {
        ValuesSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for ValuesSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        ValuesSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        ValuesSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

/// The key of the values source's union state entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum ValuesKey {
    /// The rows were emitted.
    Emitted,
}

/// A running values source. Its checkpointed state is one union entry, present once the rows
/// were emitted, so a restored job does not emit them again.
struct ValuesSource {
    schema: SchemaRef,
    batch: Option<RecordBatch>,
    emitted: bool,
}

#[async_trait]
impl Source for ValuesSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        // Restored from a checkpoint taken after the rows went out: they are not emitted again.
        if ctx.restored_state().is_some_and(|s| {
            s.unions::<ValuesKey>()
                .any(|e| matches!(e, Ok((ValuesKey::Emitted, _))))
        }) {
            self.batch = None;
            self.emitted = true;
        }
        Ok(())
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        match self.batch.take() {
            Some(b) => {
                self.emitted = true;
                ctx.metrics().add_progress(b.num_rows() as u64);
                Ok(SourceEvent::Batch(b))
            }
            None => Ok(SourceEvent::Finished),
        }
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        if ctx.info().subtask == 0 && self.emitted {
            snap.push_union(&ValuesKey::Emitted, b"true".to_vec())?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn infers_and_declares_schemas() -> Result<()> {
        let spec: ValuesSourceSpec = serde_json::from_str(
            r#"{"rows": [{"text": "a", "id": 1}, {"text": "b", "id": 2, "score": 0.5}]}"#,
        )
        .map_err(|e| Error::config("json").with_source(e))?;
        let schema = spec.schema()?;
        assert_eq!(
            schema
                .field_with_name("id")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::Int64)
        );
        assert_eq!(spec.batch(&schema)?.num_rows(), 2);
        let declared: ValuesSourceSpec = serde_json::from_str(
            r#"{"rows": [{"text": "a", "id": 1}], "schema": [{"name": "id", "type": "int32"}]}"#,
        )
        .map_err(|e| Error::config("json").with_source(e))?;
        assert_eq!(declared.schema()?.fields().len(), 1);
        let empty: ValuesSourceSpec = serde_json::from_str(r#"{"rows": []}"#)
            .map_err(|e| Error::config("json").with_source(e))?;
        assert!(empty.schema().is_err());
        let bad: ValuesSourceSpec = serde_json::from_str(
            r#"{"rows": [{"id": "x"}], "schema": [{"name": "id", "type": "int32"}]}"#,
        )
        .map_err(|e| Error::config("json").with_source(e))?;
        assert!(bad.schema().is_err());
        Ok(())
    }
}
