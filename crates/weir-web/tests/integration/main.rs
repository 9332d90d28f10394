//! Integration tests of `weir-web`: a real job (a slow source, an operator that refuses some
//! rows, a sink, checkpoints into a temporary directory) watched and served over loopback HTTP.

mod common;
mod server;
