//! weir's vector operators. For now one: [`vector_search`], exact (brute-force) k-nearest-neighbour
//! search of an embedding column against an index of vectors read from a Parquet file.
//!
//! Like every weir operator, the spec ([`VectorSearchSpec`]) offers the three calls the planner
//! uses: `output_schema` (plan-time checks, including the query and index dimensions), `create`
//! (one running instance per parallel subtask) and `describe` (one line for `weir validate`).
//!
//! Vector columns are `FixedSizeList<Float32>(dim)` (which is also the storage of the `weir.vector`
//! extension type, so both are accepted) or, with a per-row length check, `List<Float32>`.

#![warn(missing_docs)]

pub mod kernel;
pub mod vector_search;

pub use vector_search::{Metric, VectorSearch, VectorSearchSpec};
