//! Benchmark helpers shared by the binaries in `src/bin`: the deterministic
//! event generator ([`events`]) and the filter + project workload
//! ([`filter_project`]) that the hand-written arrow-rs baseline runs and that
//! `bench/filter/pipeline.yaml` asks weir to run; and the parts the hand-written AI baselines
//! (`images-loop`, `text-loop`) share ([`ai`]).

pub mod ai;
pub mod events;
pub mod filter_project;
pub mod prng;
