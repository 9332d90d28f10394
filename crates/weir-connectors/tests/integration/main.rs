//! Integration tests of `weir-connectors`, in one test binary (one link instead of one per file).

mod connectors;
mod exactly_once;
mod files;
