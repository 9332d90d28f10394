//! Integration tests of `weir-infer`, in one test binary (one link instead of one per file).

mod checkpoint;
mod common;
mod infer;
mod pool;
mod text_and_runtime;
