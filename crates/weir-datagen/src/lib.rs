//! weir's generator sources: `source: datagen` (columns described in the spec, like Flink's datagen
//! connector) and `source: nexmark` (the Nexmark benchmark's persons, auctions and bids).
//!
//! Every generated value is a pure function of the seed and the row (or event) number, so the
//! sources are replayable: a checkpoint stores, per generator split, the next row number, and a
//! restored job produces exactly the rows the interrupted one would have, at any parallelism.

#![warn(missing_docs)]

pub mod datagen;
mod random;
mod splits;

pub use datagen::DatagenSourceSpec;
pub mod nexmark;

pub use nexmark::{NexmarkSourceSpec, NexmarkTable};
