//! Integration tests of `weir-cli`, in one test binary (one link instead of one per file).

mod cli;
mod examples;
mod grace;
mod incremental;
mod kafka;
mod object_refs;
mod restart;
mod s3_sink;
mod services;
mod stale;
mod torture;
mod web;
