//! weir's runtime: it owns the loop. It plans a [`JobGraph`] into chained tasks, wires them with
//! byte-bounded channels, calls the [`Operator`] and [`Source`] hooks, aligns barriers, forwards
//! watermarks and end-of-stream, routes dead letters and keeps per-operator [`metrics`].
//!
//! Invariants: only this crate spawns tasks; operators never see raw channel messages, never align
//! barriers and never forward control messages; every spawned task is owned (a `JoinSet` or a
//! handle that aborts on drop), none is detached.
//!
//! # Example
//!
//! A source of three rows, a chained operator that doubles them, and a sink that keeps them:
//!
//! ```
//! use arrow::array::{Int64Array, ArrayRef};
//! use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
//! use arrow::record_batch::RecordBatch;
//! use async_trait::async_trait;
//! use std::sync::{Arc, Mutex};
//! use weir_runtime::*;
//!
//! struct Numbers { done: bool }
//! #[async_trait]
//! impl Source for Numbers {
//!     fn schema(&self) -> SchemaRef {
//!         Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
//!     }
//!     async fn next(&mut self, _ctx: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
//!         if std::mem::replace(&mut self.done, true) {
//!             return Ok(SourceEvent::Finished);
//!         }
//!         let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
//!         Ok(SourceEvent::Batch(RecordBatch::try_new(self.schema(), vec![col])?))
//!     }
//! }
//!
//! struct Double;
//! #[async_trait]
//! impl Operator for Double {
//!     async fn process_batch(&mut self, b: RecordBatch, _: &mut OperatorContext, out: &mut Emitter)
//!         -> weir_types::Result<()> {
//!         let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
//!         let doubled: ArrayRef = Arc::new(Int64Array::from_iter_values(n.values().iter().map(|v| v * 2)));
//!         out.emit(RecordBatch::try_new(b.schema(), vec![doubled])?);
//!         Ok(())
//!     }
//! }
//!
//! struct Keep(Arc<Mutex<Vec<i64>>>);
//! #[async_trait]
//! impl Operator for Keep {
//!     async fn process_batch(&mut self, b: RecordBatch, _: &mut OperatorContext, _: &mut Emitter)
//!         -> weir_types::Result<()> {
//!         let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
//!         self.0.lock().unwrap().extend(n.values().iter());
//!         Ok(())
//!     }
//! }
//!
//! let kept = Arc::new(Mutex::new(Vec::new()));
//! let mut g = JobGraph::new(JobConfig::default());
//! let src = g.add_source("numbers", 1, |_| Ok(Box::new(Numbers { done: false })));
//! let dbl = g.add_operator("double", 1, |_| Ok(Box::new(Double)));
//! let k = kept.clone();
//! let sink = g.add_sink("keep", 1, move |_| Ok(Box::new(Keep(k.clone()))));
//! g.connect(src, dbl, Partitioning::Forward);
//! g.connect(dbl, sink, Partitioning::Forward);
//! let report = Runtime::new(1)?.run(g)?;
//! assert_eq!(*kept.lock().unwrap(), vec![2, 4, 6]);
//! assert_eq!(report.nodes[1].totals.rows_out, 3);
//! # Ok::<(), weir_types::Error>(())
//! ```

#![warn(missing_docs)]

pub mod channel;
pub mod checkpointing;
pub mod fault;
pub mod graph;
mod inflight;
pub mod input;
pub mod job;
pub mod kind;
pub mod metrics;
pub mod operator;
pub mod partition;
pub mod physical;
pub mod source;
mod task;
pub mod watermark;

pub use checkpointing::{CheckpointSetup, CheckpointStats};
pub use graph::{Edge, JobConfig, JobGraph, Node, NodeId, NodeKind, Partitioning};
pub use job::{JobHandle, JobReport, Runtime};
pub use metrics::{MetricsRegistry, MetricsSnapshot, NodeMetrics, NodeRole, OperatorMetrics};
pub use operator::{
    CpuTask, Emitted, Emitter, ErrorPolicy, IoTask, Operator, OperatorContext, Relabel, TaskInfo,
};
pub use source::{Source, SourceEvent};
/// Cancelled when a stop of the job is requested.
pub use tokio_util::sync::CancellationToken as StopToken;
pub use watermark::{Progress, WatermarkMerge};
pub use weir_checkpoint::AbortReason;
pub use weir_checkpoint::{LogStore, StateKey, StateSnapshot, UnionKey};
pub use weir_types::{Watermark, WatermarkStatus};
