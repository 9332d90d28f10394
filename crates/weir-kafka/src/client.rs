//! What the source and the sink share: client settings, error wording, and the "waiting for Kafka"
//! status that the progress display shows while the broker cannot be reached.

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::BTreeMap;
use std::time::Duration;
use weir_types::{Error, ErrorKind};

/// A client configuration for `bootstrap`, with the user's `properties` applied last.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // Loopback tests and most deployments: do not wait long between reconnection attempts.
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "3");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Whether `e` means the broker could not be reached (worth waiting for), not a refusal.
pub fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::TimedOutQueue
                | RDKafkaErrorCode::MessageTimedOut
        )
    )
}

/// An error of the Kafka client, as weir reports it.
pub fn kafka_error(what: impl Into<String>, e: KafkaError) -> Error {
    Error::new(ErrorKind::External, what).with_source(e)
}

/// The error for a broker that did not answer at start.
pub fn unreachable(bootstrap: &str, timeout: Duration, e: KafkaError) -> Error {
    Error::config(format!(
        "key 'bootstrap_servers': no Kafka broker answered at '{bootstrap}' within {} (check the address and that the broker runs)",
        humantime::format_duration(timeout)
    ))
    .with_source(e)
}

/// The progress status while the broker cannot be reached.
pub const WAITING: &str = "waiting for Kafka";
