//! Integration tests of `weir-runtime`, in one test binary (one link instead of one per file).

mod checkpoint;
mod interfaces;
mod runtime;
