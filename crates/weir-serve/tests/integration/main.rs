//! Integration tests of `weir-serve`, in one test binary (one link instead of one per file).

mod common;
mod flight;
mod python;
mod serve;
mod yaml;
