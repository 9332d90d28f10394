//! Event time of `source: kafka` against the broker: each partition is a split with its own
//! watermark (run through the runtime's `EventTimeSource`, as a `watermark:` option is), so
//! partitions whose event times lie far apart make no row late; and a partition that stops
//! receiving messages does not hold event time back once it has been silent for `idle_timeout`.

use crate::common::*;
use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_kafka::KafkaSourceSpec;
use weir_runtime::event_time::event_times_ms;
use weir_runtime::*;
use weir_types::{Error, Result};

/// Produces JSON events `{"id": i, "ts": t}` to the given partitions, one message each.
fn produce(bootstrap: &str, topic: &str, events: &[(i32, i64, i64)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    for (partition, id, ts) in events {
        let value = format!("{{\"id\": {id}, \"ts\": {ts}}}");
        loop {
            match p.send(
                BaseRecord::<(), _>::to(topic)
                    .partition(*partition)
                    .payload(&value),
            ) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(20));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn topic_with(partitions: i32, prefix: &str) -> (String, String) {
    let b = Broker::shared().bootstrap();
    let topic = unique_topic(prefix);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(create_topic(&b, &topic, partitions));
    (b, topic)
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A row: its event time (ms) and partition.
    Row(i64, i32),
    Watermark(i64),
}

/// Records rows (event time, partition) and watermarks, in order.
struct Probe {
    log: Arc<Mutex<Vec<Seen>>>,
}

#[async_trait]
impl Operator for Probe {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        let times = event_times_ms(b.column(1))?;
        let parts = b.column(2).as_primitive::<Int32Type>();
        let mut log = self.log.lock().map_err(|_| Error::internal("lock"))?;
        log.extend((0..times.len()).map(|i| Seen::Row(times.value(i), parts.value(i))));
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        w: Watermark,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> Result<()> {
        self.log
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .push(Seen::Watermark(w.0));
        Ok(())
    }
}

/// Turns every `SplitBatch` into a plain `Batch`: the source as if it did not name its
/// partitions (the control that shows the test can tell the difference).
struct Unsplit(Box<dyn Source>);

#[async_trait]
impl Source for Unsplit {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.0.open(ctx).await
    }
    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        Ok(match self.0.next(ctx).await? {
            SourceEvent::SplitBatch { batch, .. } => SourceEvent::Batch(batch),
            SourceEvent::SplitStart(_) | SourceEvent::SplitEnd(_) => {
                SourceEvent::Idle(Duration::ZERO)
            }
            other => other,
        })
    }
}

/// A job: the Kafka source `yaml` at parallelism 1 with `watermark`, into a probe.
fn job(yaml: &str, watermark: &str, split: bool, log: Arc<Mutex<Vec<Seen>>>) -> JobGraph {
    let spec: KafkaSourceSpec = serde_norway::from_str(yaml).expect("kafka spec");
    let schema = spec.schema().expect("schema");
    let wm: WatermarkSpec = serde_norway::from_str(watermark).expect("watermark spec");
    let config = wm.check(&schema).expect("watermark config");
    let mut g = JobGraph::new(JobConfig::default());
    let s = g.add_source("events", 1, move |info| {
        let mut inner = spec.create(info, schema.clone())?;
        if !split {
            inner = Box::new(Unsplit(inner));
        }
        Ok(Box::new(EventTimeSource::new(inner, config.clone())) as Box<dyn Source>)
    });
    let probe = g.add_sink("probe", 1, move |_| {
        Ok(Box::new(Probe { log: log.clone() }))
    });
    g.connect(s, probe, Partitioning::Forward);
    g
}

/// Rows behind the watermark that preceded them.
fn late(seen: &[Seen]) -> usize {
    let mut current = i64::MIN;
    seen.iter()
        .filter(|s| match s {
            Seen::Watermark(w) => {
                current = *w;
                false
            }
            Seen::Row(t, _) => *t < current,
        })
        .count()
}

#[test]
fn each_partition_keeps_its_own_watermark() {
    // Two partitions, each in event-time order, a day apart: partition 0 at 1.7e12 ms + i,
    // partition 1 a day later. Small fetches make the consumer alternate between them.
    let (b, topic) = topic_with(2, "et-split");
    let base = 1_700_000_000_000i64;
    let n = 600;
    let mut events = Vec::new();
    for i in 0..n {
        events.push((0, i, base + i));
        events.push((1, n + i, base + 86_400_000 + i));
    }
    produce(&b, &topic, &events);
    let yaml = format!(
        "bootstrap_servers: {b}\ntopics: [{topic}]\nschema: [{{name: id, type: int64}}, {{name: ts, type: int64}}]\nmetadata: [partition]\nbatch_size: 16\nbounded: true\nproperties: {{max.partition.fetch.bytes: \"600\"}}\n"
    );
    let wm = "column: ts\n";

    let log = Arc::new(Mutex::new(Vec::new()));
    let report = Runtime::new(2)
        .expect("runtime")
        .run(job(&yaml, wm, true, log.clone()))
        .expect("run");
    assert!(!report.stopped_early);
    let seen = log.lock().expect("lock").clone();
    let rows = seen.iter().filter(|s| matches!(s, Seen::Row(..))).count();
    assert_eq!(rows, 2 * n as usize);
    let marks: Vec<i64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Watermark(w) => Some(*w),
            Seen::Row(..) => None,
        })
        .collect();
    assert!(marks.len() > 10, "too few watermarks: {marks:?}");
    assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
    assert_eq!(
        late(&seen),
        0,
        "a partition's rows were late because of the other's"
    );
    // While partition 0 is still being read the watermark stays within its time, not the other
    // partition's a day later.
    let last_of_0 = seen
        .iter()
        .rposition(|s| matches!(s, Seen::Row(_, 0)))
        .expect("rows of partition 0");
    let before: Vec<i64> = seen[..last_of_0]
        .iter()
        .filter_map(|s| match s {
            Seen::Watermark(w) => Some(*w),
            Seen::Row(..) => None,
        })
        .collect();
    assert!(before.iter().all(|w| *w < base + n), "{before:?}");

    // The control: the same input with the partitions not told apart makes rows late, so the
    // reads do alternate between the partitions. How the client interleaves its fetches is up to
    // it and to the machine's load (a busy machine once saw it read one partition whole first),
    // so it gets three tries.
    let alternated = (0..3).any(|_| {
        let log = Arc::new(Mutex::new(Vec::new()));
        Runtime::new(2)
            .expect("runtime")
            .run(job(&yaml, wm, false, log.clone()))
            .expect("run");
        let seen = log.lock().expect("lock").clone();
        late(&seen) > 0
    });
    assert!(
        alternated,
        "the consumer did not alternate between partitions in three runs"
    );
}

/// Runs an unbounded source over `topic` (2 partitions) while partition 0 gets a message every
/// 10 ms of event time for about 3 s and partition 1 got one message at the start and nothing
/// after; returns the watermarks seen before the job was asked to stop.
fn watermarks_while_one_partition_is_silent(
    b: &str,
    topic: &str,
    watermark: &str,
) -> (Vec<i64>, i64) {
    let base = 1_700_000_000_000i64;
    produce(b, topic, &[(1, 0, base)]);
    let yaml = format!(
        "bootstrap_servers: {b}\ntopics: [{topic}]\nschema: [{{name: id, type: int64}}, {{name: ts, type: int64}}]\nmetadata: [partition]\nbatch_size: 50\n"
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let runtime = Runtime::new(2).expect("runtime");
    let handle = runtime
        .start(job(&yaml, watermark, true, log.clone()))
        .expect("start");
    let started = Instant::now();
    let mut i = 1;
    while started.elapsed() < Duration::from_secs(3) {
        produce(b, topic, &[(0, i, base + 1000 + i * 10)]);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<i64> = log
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|s| match s {
            Seen::Watermark(w) => Some(*w),
            Seen::Row(..) => None,
        })
        .collect();
    handle.stop();
    runtime.block_on(handle.wait()).expect("job");
    (before, base)
}

#[test]
fn a_silent_partition_does_not_hold_event_time_back_after_idle_timeout() {
    // Without idle_timeout the silent partition holds the watermark at its one message.
    let (b, topic) = topic_with(2, "et-idle");
    let (marks, base) = watermarks_while_one_partition_is_silent(&b, &topic, "column: ts\n");
    assert!(
        marks.iter().all(|w| *w <= base),
        "the silent partition did not hold time back: {marks:?}"
    );
    // With it, partition 0 alone moves event time on while partition 1 is silent.
    let (b, topic) = topic_with(2, "et-idle");
    let (marks, base) =
        watermarks_while_one_partition_is_silent(&b, &topic, "column: ts\nidle_timeout: 300ms\n");
    let ahead = marks.iter().filter(|w| **w > base + 1000).count();
    assert!(
        ahead > 10,
        "only {ahead} watermarks past the silent partition's time: {marks:?}"
    );
}
