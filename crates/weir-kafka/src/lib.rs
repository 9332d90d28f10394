//! weir's Kafka connector: `source: kafka` and `sink: kafka`, over librdkafka (the `rdkafka` crate).
//!
//! Kept in a crate of its own, behind the `kafka` cargo feature of `weir-plan` and `weir-cli`, so
//! that crates which do not need Kafka do not build librdkafka.

#![warn(missing_docs)]
