//! weir's Kafka connector: `source: kafka` and `sink: kafka`, over librdkafka (the `rdkafka` crate).
//!
//! Kept in a crate of its own, behind the `kafka` cargo feature of `weir-plan` and `weir-cli`, so
//! that crates which do not need Kafka do not build librdkafka.

#![warn(missing_docs)]

mod client;
pub mod format;
pub mod sink;
pub mod source;

pub use format::{Format, Meta, RawType};
pub use sink::{Delivery, KafkaSink, KafkaSinkSpec};
pub use source::{KafkaSource, KafkaSourceSpec};
