//! `source: kafka` against the broker, driven through its hooks: a topic pattern, JSON with a
//! declared schema, metadata columns, a bad message as a dead letter naming its offset, positions
//! restored at another parallelism, positions committed to the group on completion, `start:
//! latest`, and Arrow IPC values written by the sink's encoder.

use crate::common::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use weir_checkpoint::StateSnapshot;
use weir_kafka::KafkaSourceSpec;
use weir_runtime::{ErrorPolicy, OperatorContext, Source, SourceEvent, TaskInfo};
use weir_types::{Barrier, BarrierKind};

async fn produce(bootstrap: &str, topic: &str, msgs: &[(i32, String, Vec<u8>)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for (partition, key, value) in msgs {
        p.send(
            FutureRecord::to(topic)
                .partition(*partition)
                .key(key.as_str())
                .payload(value.as_slice()),
            Duration::from_secs(10),
        )
        .await
        .expect("send");
    }
}

fn spec(yaml: &str) -> KafkaSourceSpec {
    serde_norway::from_str(yaml).expect("spec")
}

fn info(subtask: u32, parallelism: u32) -> TaskInfo {
    TaskInfo {
        node: "src".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
    }
}

/// Runs one subtask until it finishes (bounded); returns its batches, dead letters and state.
async fn drain(
    spec: &KafkaSourceSpec,
    subtask: u32,
    parallelism: u32,
    restored: Option<StateSnapshot>,
) -> (
    Vec<RecordBatch>,
    Vec<String>,
    StateSnapshot,
    Box<dyn Source>,
    OperatorContext,
) {
    let schema = spec.schema().expect("schema");
    let mut src = spec
        .create(&info(subtask, parallelism), schema)
        .expect("create");
    let mut ctx = OperatorContext::for_test("src", ErrorPolicy::DeadLetter)
        .with_restored_state(restored, true);
    src.open(&mut ctx).await.expect("open");
    let mut out = Vec::new();
    let mut dead = Vec::new();
    for _ in 0..2000 {
        match src.next(&mut ctx).await.expect("next") {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch { batch: b, .. } => out.push(b),
            SourceEvent::Idle(_) | SourceEvent::SplitStart(_) | SourceEvent::SplitEnd(_) => {}
            SourceEvent::Finished => break,
        }
        dead.extend(
            ctx.take_dead_letters()
                .into_iter()
                .map(|d| format!("{:?} {:?}", d.input, d.position)),
        );
    }
    let barrier = Barrier {
        checkpoint_id: 7,
        kind: BarrierKind::Aligned,
        triggered_at_ms: 0,
    };
    let state = src.snapshot(&barrier, &mut ctx).await.expect("snapshot");
    (out, dead, state, src, ctx)
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_survive_a_restore_at_another_parallelism_and_reach_the_group() {
    let b = Broker::shared().bootstrap();
    let topic = unique_topic("src-json");
    create_topic(&b, &topic, 3).await;
    let mut msgs: Vec<(i32, String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                i % 3,
                format!("k{i}"),
                format!("{{\"id\": {i}}}").into_bytes(),
            )
        })
        .collect();
    msgs.push((1, "bad".into(), b"{not json".to_vec()));
    produce(&b, &topic, &msgs).await;
    let group = unique_topic("grp");
    let s = spec(&format!(
        "bootstrap_servers: {b}\ntopic_pattern: \"{topic}\"\ngroup_id: {group}\nschema: [{{name: id, type: int64}}]\nmetadata: [partition, offset, key]\nbounded: true\n"
    ));
    let schema = s.schema().expect("schema");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "partition", "offset", "key"]);

    let (out, dead, state, mut src, mut ctx) = drain(&s, 0, 1, None).await;
    assert_eq!(ids(&out), (0..12).collect::<Vec<_>>());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains(&format!("kafka topic {topic} partition 1"))
            && dead[0].contains("offset 4"),
        "{dead:?}"
    );
    let keys: Vec<String> = out
        .iter()
        .flat_map(|b| {
            let k = b.column(3).as_string::<i32>();
            (0..k.len())
                .map(|i| k.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(keys.contains(&"k5".to_string()));

    // Completion commits the checkpoint's positions to the group.
    src.notify_checkpoint_complete(7, &mut ctx)
        .await
        .expect("notify");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", &group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    let offs: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(
        offs,
        vec![Offset::Offset(4), Offset::Offset(5), Offset::Offset(4)]
    );

    // More input, then a restore at parallelism 2: only the new messages are read, once.
    let more: Vec<(i32, String, Vec<u8>)> = (12..18)
        .map(|i| {
            (
                i % 3,
                format!("k{i}"),
                format!("{{\"id\": {i}}}").into_bytes(),
            )
        })
        .collect();
    produce(&b, &topic, &more).await;
    let mut got = Vec::new();
    for sub in 0..2 {
        let (out, dead, _, _, _) = drain(&s, sub, 2, Some(state.clone())).await;
        assert!(dead.is_empty());
        got.extend(ids(&out));
    }
    got.sort();
    assert_eq!(got, (12..18).collect::<Vec<_>>());

    // A fresh start from `latest` reads nothing that was there before.
    let latest = spec(&format!(
        "bootstrap_servers: {b}\ntopics: [{topic}]\nstart: latest\nschema: [{{name: id, type: int64}}]\nbounded: true\n"
    ));
    let (out, _, _, _, _) = drain(&latest, 0, 1, None).await;
    assert!(ids(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_ipc_values_are_read_with_the_schema_of_the_first_message() {
    let b = Broker::shared().bootstrap();
    let topic = unique_topic("src-ipc");
    create_topic(&b, &topic, 1).await;
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])),
            std::sync::Arc::new(arrow::array::StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
            ])),
        ],
    )
    .expect("batch");
    let values = weir_kafka::format::Encoder::new(weir_kafka::Format::ArrowIpc, &schema, &[])
        .expect("encoder")
        .encode(&batch)
        .expect("encode");
    let msgs: Vec<(i32, String, Vec<u8>)> = values
        .into_iter()
        .map(|v| (0, "k".to_string(), v))
        .collect();
    produce(&b, &topic, &msgs).await;
    let s = spec(&format!(
        "bootstrap_servers: {b}\ntopics: [{topic}]\nformat: arrow_ipc\nbounded: true\n"
    ));
    assert_eq!(s.schema().expect("schema"), schema);
    let (out, dead, _, _, _) = drain(&s, 0, 1, None).await;
    assert!(dead.is_empty());
    assert_eq!(ids(&out), vec![1, 2, 3]);
}
