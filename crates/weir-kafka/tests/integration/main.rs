//! Integration tests of `weir-kafka` against a real Apache Kafka broker (KRaft, on loopback,
//! started by the tests from the jars `scripts/setup-kafka.sh` installed), in one test binary.

mod common;
mod event_time;
mod smoke;
mod source;
