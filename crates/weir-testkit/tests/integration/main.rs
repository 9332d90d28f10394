//! Integration tests of `weir-testkit`, in one test binary (one link instead of one per file).

mod fusion;
mod golden;
mod layering;
mod pushdown;
mod specs;
