//! The vocabulary every other weir crate speaks: the one [`Message`] type that travels on channels,
//! ids, the error shape, key groups and dead-letter rows.
//!
//! Invariant: this crate does no IO and has no async code; it depends on Arrow and little else.

#![warn(missing_docs)]

pub mod batch;
pub mod dead_letter;
pub mod error;
pub mod key_group;
pub mod message;
pub mod multimodal;

pub use batch::{column_names, planned_column};
pub use dead_letter::{DeadLetter, dead_letter_batch, dead_letter_schema, row_as_json};
pub use error::{Error, ErrorDomain, ErrorKind, Result};
pub use key_group::{KeyGroupRange, hash_keys};
pub use message::{Barrier, BarrierKind, CheckpointId, Message, Watermark, WatermarkStatus};
