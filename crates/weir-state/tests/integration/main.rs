//! Integration tests of weir-state: keyed state restored at another parallelism answers as if the
//! job had never stopped.

mod rescale;
