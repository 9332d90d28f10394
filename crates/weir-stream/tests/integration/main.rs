//! Integration tests of weir-stream's operators, driven through their hooks as the runtime
//! drives them, straight and across snapshot / restore at another parallelism.

mod common;
mod joins;
mod lookup;
mod top_n;
mod watermarks;
mod windows;
