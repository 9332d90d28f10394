//! The broker starts, takes a transaction, and a read_committed consumer sees only committed records.

use crate::common::*;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::{Duration, Instant};

fn read_all(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_topic("g"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_hides_aborted_transactions() {
    let broker = Broker::shared();
    let topic = unique_topic("smoke");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", unique_topic("tx"))
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30)).expect("init");
    for (value, commit) in [("aborted", false), ("committed", true)] {
        p.begin_transaction().expect("begin");
        p.send(BaseRecord::<(), str>::to(&topic).payload(value))
            .expect("send");
        p.flush(Duration::from_secs(30)).expect("flush");
        if commit {
            p.commit_transaction(Duration::from_secs(30))
                .expect("commit");
        } else {
            p.abort_transaction(Duration::from_secs(30)).expect("abort");
        }
    }
    assert_eq!(
        read_all(&broker.bootstrap(), &topic, "read_committed"),
        vec!["committed"]
    );
    assert_eq!(
        read_all(&broker.bootstrap(), &topic, "read_uncommitted"),
        vec!["aborted", "committed"]
    );
}
