//! `op: lookup_join`: enriches each row with the matching rows of a Parquet table, reloaded when
//! the file changes.
//!
//! The table is read whole into memory at `open` (on a blocking thread) and indexed by its key
//! columns (the [`Buffer`] the stream joins use). Every `reload` interval the operator looks at the
//! file's size and modification time; when they changed it reads the file again and swaps the
//! table in between two batches, so a batch is joined against one version of the table. A table
//! that cannot be read on reload keeps the previous version (with a warning); at `open` it is an
//! error. The table is not part of checkpoints: it is the file's.

use crate::buffer::Buffer;
use crate::join::SideCols;
use crate::window::{Span, names};
use arrow::array::{ArrayRef, RecordBatch, RecordBatchReader, UInt32Array};
use arrow::compute::{concat_batches, take, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// How unmatched rows are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupHow {
    /// Rows without a match are dropped.
    #[default]
    Inner,
    /// Rows without a match are kept, with nulls for the table's columns.
    Left,
}

fn default_reload() -> Span {
    Span(10_000)
}

/// Options of `op: lookup_join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupJoinSpec {
    /// The Parquet file of the table; required.
    pub table: PathBuf,
    /// Key columns of the input; required.
    pub keys: Vec<String>,
    /// Key columns of the table, as many and of the same types; default the same names as `keys`.
    #[serde(default)]
    pub table_keys: Option<Vec<String>>,
    /// Table columns to add; default every column but the table keys.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Prefix for the added columns; default none.
    #[serde(default)]
    pub prefix: String,
    /// `inner` (default: rows without a match are dropped) or `left` (kept, with nulls).
    #[serde(default)]
    pub how: LookupHow,
    /// How often to check whether the file changed; default 10s; 0 never checks.
    #[serde(default = "default_reload")]
    pub reload: Span,
}

#[derive(Debug, Clone)]
struct Plan {
    input_keys: Vec<usize>,
    table_schema: SchemaRef,
    table_keys: Vec<usize>,
    added: Vec<usize>,
    output: SchemaRef,
}

/// The file's identity for change detection.
fn stamp(path: &PathBuf) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn read_table(path: &PathBuf) -> Result<RecordBatch> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::io(format!("cannot open lookup table {}", path.display())).with_source(e)
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| {
            Error::io(format!("cannot read lookup table {}", path.display())).with_source(e)
        })?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::io(format!("cannot read lookup table {}", path.display())).with_source(e)
        })?;
    concat_batches(&schema, &batches).map_err(|e| {
        Error::internal(format!("cannot gather lookup table {}", path.display())).with_source(e)
    })
}

fn table_schema(path: &PathBuf) -> Result<SchemaRef> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::config(format!("key 'table': cannot open {}", path.display())).with_source(e)
    })?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        Error::config(format!(
            "key 'table': {} is not a Parquet file",
            path.display()
        ))
        .with_source(e)
    })?;
    Ok(b.schema().clone())
}

impl LookupJoinSpec {
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        let table = table_schema(&self.table)?;
        let table_key_names = self.table_keys.clone().unwrap_or_else(|| self.keys.clone());
        let on = crate::join::JoinOn {
            left_keys: self.keys.clone(),
            right_keys: table_key_names.clone(),
            left_prefix: String::new(),
            right_prefix: self.prefix.clone(),
        };
        let (l, r): (SideCols, SideCols) = on
            .sides(&[input.clone(), table.clone()], (None, None))
            .map_err(|e| {
                Error::config(
                    e.message()
                        .replace("right_keys", "table_keys")
                        .replace("left_keys", "keys"),
                )
            })?;
        let added: Vec<usize> = match &self.columns {
            Some(cols) => cols
                .iter()
                .map(|c| {
                    table.index_of(c).map_err(|_| {
                        Error::schema(format!(
                            "key 'columns': '{c}' is not a column of {}; available: {}",
                            self.table.display(),
                            names(&table)
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            None => (0..table.fields().len())
                .filter(|i| !r.key_idx.contains(i))
                .collect(),
        };
        let skip: Vec<usize> = (0..table.fields().len())
            .filter(|i| !added.contains(i))
            .collect();
        let left = input.clone();
        let mut out = on.output(vec![], &left, &table, &skip)?;
        if self.how == LookupHow::Left {
            let fields: Vec<Field> = out
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let f = f.as_ref().clone();
                    if i >= left.fields().len() {
                        f.with_nullable(true)
                    } else {
                        f
                    }
                })
                .collect();
            out = Arc::new(Schema::new(fields));
        }
        Ok(Plan {
            input_keys: l.key_idx,
            table_schema: table,
            table_keys: r.key_idx,
            added,
            output: out,
        })
    }

    /// Plan time (reads the table's footer): the input's columns, then the added table columns.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.plan(input)?.output)
    }

    /// Builds one running instance.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let plan = self.plan(input)?;
        Ok(Box::new(LookupJoin {
            probe: Buffer::new(input.clone(), plan.input_keys.clone(), None)?,
            plan,
            path: self.table.clone(),
            how: self.how,
            reload: (self.reload.0 > 0)
                .then(|| std::time::Duration::from_millis(self.reload.0 as u64)),
            table: None,
            stamp: None,
            checked: Instant::now(),
            reloads: 0,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "lookup join on {} in {}",
            self.keys.join(", "),
            self.table.display()
        )
    }
}

/// The loaded table and its index.
struct Table {
    rows: RecordBatch,
    index: Buffer,
}

/// A running `op: lookup_join`.
pub struct LookupJoin {
    plan: Plan,
    probe: Buffer,
    path: PathBuf,
    how: LookupHow,
    reload: Option<std::time::Duration>,
    table: Option<Table>,
    stamp: Option<(u64, SystemTime)>,
    checked: Instant,
    reloads: u64,
}

impl std::fmt::Debug for LookupJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupJoin")
            .field("table", &self.path)
            .field("reloads", &self.reloads)
            .finish()
    }
}

impl LookupJoin {
    /// How many times the table was read again after a change.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    async fn load(&mut self, ctx: &OperatorContext) -> Result<Table> {
        let path = self.path.clone();
        let rows = ctx.spawn_cpu(move || read_table(&path)).await??;
        let rows = RecordBatch::try_new(self.plan.table_schema.clone(), rows.columns().to_vec())
            .map_err(|e| {
                Error::io(format!(
                    "lookup table {} changed its columns; expected {}",
                    self.path.display(),
                    self.plan.table_schema
                ))
                .with_source(e)
            })?;
        let mut index = Buffer::new(
            self.plan.table_schema.clone(),
            self.plan.table_keys.clone(),
            None,
        )?;
        index.push(rows.clone(), None)?;
        Ok(Table { rows, index })
    }

    async fn maybe_reload(&mut self, ctx: &OperatorContext) {
        let Some(every) = self.reload else {
            return;
        };
        if self.checked.elapsed() < every {
            return;
        }
        self.checked = Instant::now();
        let now = stamp(&self.path);
        if now.is_none() || now == self.stamp {
            return;
        }
        match self.load(ctx).await {
            Ok(t) => {
                self.table = Some(t);
                self.stamp = now;
                self.reloads += 1;
                tracing::info!(table = %self.path.display(), "lookup table reloaded");
            }
            Err(e) => tracing::warn!(
                table = %self.path.display(),
                "lookup table changed but cannot be read; keeping the previous version: {}",
                e.report()
            ),
        }
    }
}

#[async_trait]
impl Operator for LookupJoin {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.stamp = stamp(&self.path);
        self.table = Some(self.load(ctx).await?);
        self.checked = Instant::now();
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        self.maybe_reload(ctx).await;
        let Some(table) = &self.table else {
            return Err(Error::internal("lookup join used before open"));
        };
        let (keys, valid) = self.probe.keys_of(&batch)?;
        let mut matched = vec![false; batch.num_rows()];
        let (mut li, mut ri): (Vec<u32>, Vec<Option<u32>>) = (Vec::new(), Vec::new());
        table.index.probe(&keys, &valid, |r, id| {
            matched[r] = true;
            li.push(r as u32);
            ri.push(Some(id as u32));
        });
        if self.how == LookupHow::Left {
            for (r, m) in matched.iter().enumerate() {
                if !m {
                    li.push(r as u32);
                    ri.push(None);
                }
            }
        }
        if li.is_empty() {
            return Ok(());
        }
        let left = take_record_batch(&batch, &UInt32Array::from(li))
            .map_err(|e| Error::internal("take").with_source(e))?;
        let ri = UInt32Array::from(ri);
        let mut cols: Vec<ArrayRef> = left.columns().to_vec();
        for &c in &self.plan.added {
            cols.push(
                take(table.rows.column(c).as_ref(), &ri, None)
                    .map_err(|e| Error::internal("take").with_source(e))?,
            );
        }
        out.emit(
            RecordBatch::try_new(self.plan.output.clone(), cols)
                .map_err(|e| Error::internal("cannot build enriched rows").with_source(e))?,
        );
        Ok(())
    }
}
