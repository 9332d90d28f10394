//! weir's connectors: where data enters and leaves a pipeline.
//!
//! Sources read files (Parquet, JSON Lines, CSV, plain text), raw objects (a directory or an
//! object-store prefix) or rows written in the spec; sinks write Parquet or JSON Lines files, print to the console, or drop everything. Each
//! connector is configured by a *spec*, the options a YAML pipeline gives, which the planner turns
//! into running instances:
//!
//! - a source spec has `schema()` (plan time: lists the input and fixes the output schema),
//!   `create(info, schema)` (one running [`Source`](weir_runtime::Source) per subtask) and
//!   `describe()`;
//! - a sink spec has `create(info, input_schema)` (one running
//!   [`Operator`](weir_runtime::Operator) that emits nothing) and `describe()`.
//!
//! File sources split their work by file: subtask *i* of *n* reads the files whose index in the
//! sorted listing modulo *n* is *i*. File sinks write to hidden `.inprogress` files and rename them
//! when they are closed, so readers never see half-written files.

#![warn(missing_docs)]

pub mod blackhole;
pub mod config;
pub mod console;
pub mod csv;
pub mod file_source;
pub mod files;
pub mod jsonl;
mod listing;
pub mod parquet;
mod sink_util;
pub mod text;
mod two_phase;
pub use two_phase::{OutputAt, Survey};
pub mod values;

pub use blackhole::BlackholeSinkSpec;
pub use config::ColumnSpec;
pub use console::ConsoleSinkSpec;
pub use csv::CsvSourceSpec;
pub use files::FilesSourceSpec;
pub use jsonl::{JsonlSinkSpec, JsonlSourceSpec};
pub use parquet::{Compression, ParquetSinkSpec, ParquetSourceSpec};
pub use text::TextSourceSpec;
pub use values::ValuesSourceSpec;
