//! `source: kafka`: reads topics (by name or pattern) whose partitions are splits assigned to the
//! source's subtasks, keeps each partition's position in weir's checkpoints (union entries, so any
//! parallelism resumes from them), and commits those positions to the consumer group when a
//! checkpoint completes, so that lag tools see progress.
//!
//! Partition `p` of topic `t` belongs to subtask `(xxh3(t) + p) % parallelism`: an assignment that
//! does not move existing partitions when new ones are discovered (every
//! `partition_discovery_interval`). A partition first seen while the job runs (or one absent from
//! the restored checkpoint) is read from its beginning; the others start where `start` says.
//!
//! Each partition is also a split of event time (`<topic>/<partition>`): the source announces it
//! when assigned ([`SourceEvent::SplitStart`]), emits one [`SourceEvent::SplitBatch`] per
//! partition, and with `bounded` announces its end ([`SourceEvent::SplitEnd`]), so that a
//! `watermark:` option keeps one watermark per partition.

use crate::client::{WAITING, client_config, is_transport, kafka_error, unreachable};
use crate::format::{
    Decoder, Format, Meta, Msg, RawType, infer_json_schema, ipc_schema, raw_schema,
};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_checkpoint::StateSnapshot;
use weir_connectors::ColumnSpec;
use weir_connectors::config::declared_schema;
use weir_runtime::kind;
use weir_runtime::{AbortReason, OperatorContext, Source, SourceEvent, SplitId, TaskInfo};
use weir_types::{Barrier, CheckpointId, Error, Result};

/// Where a partition without a restored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message still kept (the default).
    #[default]
    Earliest,
    /// Only messages written after the job started.
    Latest,
    /// The first message at or after `start_timestamp`.
    Timestamp,
    /// The consumer group's committed offset (earliest where the group has none).
    Group,
}

/// Which messages of transactional producers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Only committed transactions (the default).
    #[default]
    ReadCommitted,
    /// Everything, also messages of open or aborted transactions.
    ReadUncommitted,
}

/// How a key column is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// UTF-8 text (the default); a key that is not UTF-8 becomes null and is reported.
    #[default]
    Utf8,
    /// Bytes.
    Binary,
}

/// Options of `source: kafka`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port…]` of the brokers (required).
    pub bootstrap_servers: String,
    /// Topics to read, by name. One of `topics` / `topic_pattern` is required.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression: every topic whose whole name matches is read (also topics created
    /// while the job runs, found at the next discovery).
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// The consumer group that positions are committed to when checkpoints complete, and that
    /// `start: group` reads. Default `weir-<job>-<step>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// `earliest` (default), `latest`, `timestamp` or `group`.
    #[serde(default)]
    pub start: StartFrom,
    /// With `start: timestamp`: milliseconds since the epoch or an RFC 3339 time.
    #[serde(default)]
    pub start_timestamp: Option<String>,
    /// `read_committed` (default) or `read_uncommitted`.
    #[serde(default)]
    pub isolation_level: Isolation,
    /// `json` (default), `raw` or `arrow_ipc`.
    #[serde(default)]
    pub format: Format,
    /// `json` / `arrow_ipc`: the value columns. Absent: inferred from the first
    /// `infer_schema_messages` messages of the topics at plan time.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// How many messages are sampled to infer a schema. Default 100.
    #[serde(default = "default_infer")]
    pub infer_schema_messages: usize,
    /// `raw`: the value column's name. Default `value`.
    #[serde(default = "default_value_column")]
    pub value_column: String,
    /// `raw`: `binary` (default), `utf8` or `image` (an encoded `weir.image`).
    #[serde(default)]
    pub value_type: RawType,
    /// Metadata columns added after the value columns, any of `topic`, `partition`, `offset`,
    /// `timestamp`, `key`, `headers`. Default none.
    #[serde(default)]
    pub metadata: Vec<Meta>,
    /// `utf8` (default) or `binary`: the type of the `key` column.
    #[serde(default)]
    pub key_type: KeyType,
    /// Most rows per batch. Default 1000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often new partitions (and, with `topic_pattern`, new topics) are looked for. `0s`
    /// turns discovery off. Default `10s`.
    #[serde(default = "default_discovery")]
    pub partition_discovery_interval: String,
    /// Stop once every partition has been read to the end it had when it was assigned, instead
    /// of reading forever. Default `false`.
    #[serde(default)]
    pub bounded: bool,
    /// How long to wait for the brokers at start before failing. Default `10s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// librdkafka consumer properties, applied last (for example `fetch.max.bytes`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_infer() -> usize {
    100
}
fn default_value_column() -> String {
    "value".into()
}
fn default_batch_size() -> usize {
    1000
}
fn default_discovery() -> String {
    "10s".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}

fn duration(key: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| Error::config(format!("key '{key}': invalid duration '{s}'")).with_source(e))
}

impl KafkaSourceSpec {
    /// The consumer group of step `step` of job `job` (`None`: a job without a name, as in
    /// tests that drive the source by hand): `group_id`, else `weir-<job>-<step>`.
    pub fn group(&self, job: Option<&str>, step: &str) -> String {
        match (&self.group_id, job) {
            (Some(g), _) => g.clone(),
            (None, Some(job)) => format!("weir-{job}-{step}"),
            (None, None) => format!("weir-{step}"),
        }
    }

    fn check(&self) -> Result<()> {
        if self.topics.is_empty() == self.topic_pattern.is_none() {
            return Err(Error::config(
                "give exactly one of 'topics' (a list of names) and 'topic_pattern' (a regular expression)",
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config("key 'batch_size': expected at least 1"));
        }
        if self.start == StartFrom::Timestamp && self.start_timestamp.is_none() {
            return Err(Error::config(
                "key 'start_timestamp': required with 'start: timestamp'",
            ));
        }
        if let Some(p) = &self.topic_pattern {
            pattern(p)?;
        }
        duration(
            "partition_discovery_interval",
            &self.partition_discovery_interval,
        )?;
        duration("connect_timeout", &self.connect_timeout)?;
        Ok(())
    }

    fn consumer_config(&self, group: &str) -> rdkafka::ClientConfig {
        let mut c = client_config(&self.bootstrap_servers, &BTreeMap::new());
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "isolation.level",
                match self.isolation_level {
                    Isolation::ReadCommitted => "read_committed",
                    Isolation::ReadUncommitted => "read_uncommitted",
                },
            )
            .set(
                "enable.partition.eof",
                if self.bounded { "true" } else { "false" },
            )
            // Bound what librdkafka prefetches while the job is backpressured.
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Plan time: the output schema (value columns, then metadata columns). Reads sample
    /// messages from the broker only when the schema must be inferred (assigning partitions to
    /// a consumer that joins no group and commits nothing).
    pub fn schema(&self) -> Result<SchemaRef> {
        self.check()?;
        let payload = match self.format {
            Format::Raw => {
                if self.schema.is_some() {
                    return Err(Error::config(
                        "key 'schema': format raw has one column ('value_column', typed by 'value_type')",
                    ));
                }
                raw_schema(&self.value_column, self.value_type)
            }
            Format::Json | Format::ArrowIpc => match &self.schema {
                Some(cols) => declared_schema(cols)
                    .map_err(|e| Error::config("key 'schema'").with_source(e))?,
                None => {
                    let samples = self.sample()?;
                    if self.format == Format::Json {
                        infer_json_schema(&samples)?
                    } else {
                        let first = samples.first().ok_or_else(|| {
                            Error::config(
                                "the topics hold no message to read the Arrow schema from; declare 'schema'",
                            )
                        })?;
                        ipc_schema(first).map_err(|e| {
                            Error::config(
                                "the first message of the topics is not an Arrow IPC stream",
                            )
                            .with_source(e)
                        })?
                    }
                }
            },
        };
        Ok(self.decoder(payload)?.schema())
    }

    fn decoder(&self, payload: SchemaRef) -> Result<Decoder> {
        Decoder::new(
            self.format,
            self.value_type,
            payload,
            self.metadata.clone(),
            self.key_type == KeyType::Binary,
        )
    }

    /// Reads up to `infer_schema_messages` values from the beginning of the topics.
    fn sample(&self) -> Result<Vec<Vec<u8>>> {
        let timeout = duration("connect_timeout", &self.connect_timeout)?;
        let consumer: BaseConsumer = self
            .consumer_config(&format!("{}-schema", self.group(None, "kafka")))
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| kafka_error("creating a Kafka consumer", e))?;
        let md = consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| unreachable(&self.bootstrap_servers, timeout, e))?;
        let parts = self.partitions(&md)?;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &parts {
            tpl.add_partition_offset(t, *p, Offset::Beginning)
                .map_err(|e| kafka_error("assigning partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        let mut out = Vec::new();
        let mut eofs = 0;
        let started = Instant::now();
        while out.len() < self.infer_schema_messages
            && eofs < parts.len()
            && started.elapsed() < timeout
        {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
                _ => {}
            }
        }
        Ok(out)
    }

    /// The (topic, partition)s of the topics this source reads, from `md`. A named topic that
    /// does not exist is an error.
    fn partitions(&self, md: &Metadata) -> Result<Vec<(String, i32)>> {
        let re = self.topic_pattern.as_deref().map(pattern).transpose()?;
        let mut out = Vec::new();
        for name in &self.topics {
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                .ok_or_else(|| {
                    Error::config(format!(
                        "key 'topics': topic '{name}' does not exist on '{}'",
                        self.bootstrap_servers
                    ))
                })?;
            out.extend(t.partitions().iter().map(|p| (name.clone(), p.id())));
        }
        if let Some(re) = re {
            for t in md.topics() {
                if t.error().is_none() && !t.name().starts_with("__") && re.is_match(t.name()) {
                    out.extend(
                        t.partitions()
                            .iter()
                            .map(|p| (t.name().to_string(), p.id())),
                    );
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// One running instance of a job without a name (the consumer group defaults to
    /// `weir-<step>`).
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        self.create_in(info, schema, None)
    }

    /// One running instance, for subtask `info` of job `job`, emitting `schema`.
    fn create_in(
        &self,
        info: &TaskInfo,
        schema: SchemaRef,
        job: Option<&str>,
    ) -> Result<Box<dyn Source>> {
        self.check()?;
        let payload_cols = schema.fields().len() - self.metadata.len();
        let payload = Arc::new(schema.project(&(0..payload_cols).collect::<Vec<_>>())?);
        Ok(Box::new(KafkaSource {
            spec: self.clone(),
            group: self.group(job, &info.node),
            decoder: self.decoder(payload)?,
            subtask: info.subtask,
            parallelism: info.parallelism,
            consumer: None,
            positions: BTreeMap::new(),
            ends: BTreeMap::new(),
            done: BTreeSet::new(),
            restored: None,
            to_commit: BTreeMap::new(),
            discovery: duration(
                "partition_discovery_interval",
                &self.partition_discovery_interval,
            )?,
            last_discovery: Instant::now(),
            topics: BTreeMap::new(),
            splits: BTreeMap::new(),
            starts: VecDeque::new(),
            pending: VecDeque::new(),
            ended: BTreeSet::new(),
        }))
    }

    /// A one-line description for `weir validate`.
    pub fn describe(&self) -> String {
        let what = match &self.topic_pattern {
            Some(p) => format!("topics matching /{p}/"),
            None => self.topics.join(", "),
        };
        format!(
            "kafka {what} at {} ({:?}, from {:?}{})",
            self.bootstrap_servers,
            self.format,
            self.start,
            if self.bounded { ", bounded" } else { "" }
        )
        .to_lowercase()
    }
}

impl kind::Spec for KafkaSourceSpec {
    fn describe(&self) -> String {
        KafkaSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for KafkaSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        KafkaSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        let job = kind::JobInfo::of(ctx.resources()).map(|j| j.name.as_str());
        self.create_in(ctx.info(), ctx.output()?.clone(), job)
    }
}

fn pattern(p: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
        Error::config(format!(
            "key 'topic_pattern': invalid regular expression '{p}'"
        ))
        .with_source(e)
    })
}

/// The subtask that reads partition `p` of `topic` at `parallelism`.
pub fn owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64(topic.as_bytes());
    (h.wrapping_add(partition as u64) % parallelism as u64) as u32
}

/// A (topic, partition).
type Tp = (String, i32);

/// The key of a partition's union entry; the payload is the next offset to read (i64, little
/// endian).
#[derive(Debug, Serialize, Deserialize)]
struct PositionKey {
    topic: String,
    partition: i32,
}

/// A running `source: kafka` subtask.
pub struct KafkaSource {
    spec: KafkaSourceSpec,
    /// The consumer group positions are committed to.
    group: String,
    decoder: Decoder,
    subtask: u32,
    parallelism: u32,
    consumer: Option<Arc<StreamConsumer>>,
    /// Next offset to read per owned partition (a raw Kafka offset: -2 = from the beginning).
    positions: BTreeMap<(String, i32), i64>,
    /// `bounded`: the high watermark of each partition when it was assigned.
    ends: BTreeMap<(String, i32), i64>,
    /// `bounded`: partitions read to their end.
    done: BTreeSet<(String, i32)>,
    /// Positions from the restored checkpoint (of every old subtask).
    restored: Option<BTreeMap<(String, i32), i64>>,
    /// Positions to commit to the group per checkpoint, until it completes.
    to_commit: BTreeMap<CheckpointId, Vec<(Tp, i64)>>,
    discovery: Duration,
    last_discovery: Instant,
    topics: BTreeMap<String, Arc<str>>,
    /// The split id of each owned partition (`<topic>/<partition>`).
    splits: BTreeMap<Tp, SplitId>,
    /// Partitions assigned but not yet announced with [`SourceEvent::SplitStart`].
    starts: VecDeque<SplitId>,
    /// Messages read from the consumer but not yet emitted, one group per partition, in the
    /// order read. Positions move only when a group is emitted, so a checkpoint taken while
    /// groups wait here does not skip them.
    pending: VecDeque<Vec<Msg>>,
    /// `bounded`: partitions announced ended with [`SourceEvent::SplitEnd`].
    ended: BTreeSet<Tp>,
}

impl KafkaSource {
    fn consumer(&self) -> Result<&Arc<StreamConsumer>> {
        self.consumer
            .as_ref()
            .ok_or_else(|| Error::internal("kafka source used before open"))
    }

    /// Looks for partitions this subtask should read and is not reading yet, resolves where each
    /// starts and assigns them. `first`: at open (then `start` applies to partitions without a
    /// restored position, and an unreachable broker or a missing topic is an error).
    async fn discover(&mut self, ctx: &OperatorContext, first: bool) -> Result<()> {
        self.last_discovery = Instant::now();
        let consumer = self.consumer()?.clone();
        let spec = self.spec.clone();
        let timeout = duration("connect_timeout", &spec.connect_timeout)?;
        let known: BTreeSet<(String, i32)> = self.positions.keys().cloned().collect();
        let restored = self.restored.clone();
        let (subtask, parallelism) = (self.subtask, self.parallelism);
        let found = ctx
            .spawn_cpu(move || -> Result<Vec<(Tp, i64, Option<i64>)>> {
                let md = match consumer.fetch_metadata(None, timeout) {
                    Ok(md) => md,
                    Err(e) if first => {
                        return Err(unreachable(&spec.bootstrap_servers, timeout, e));
                    }
                    Err(e) => return Err(kafka_error("looking for new partitions", e)),
                };
                let mut new: Vec<(String, i32)> = spec
                    .partitions(&md)?
                    .into_iter()
                    .filter(|(t, p)| {
                        owner(t, *p, parallelism) == subtask && !known.contains(&(t.clone(), *p))
                    })
                    .collect();
                new.sort();
                let mut out = Vec::new();
                for tp in new {
                    let restored_at = restored.as_ref().and_then(|r| r.get(&tp)).copied();
                    let start = match restored_at {
                        Some(o) => o,
                        // Partitions that appear while the job runs, or after a restore, are
                        // read from the beginning: nothing written to them is skipped.
                        None if !first || restored.is_some() => {
                            Offset::Beginning.to_raw().unwrap_or(-2)
                        }
                        None => resolve_start(&consumer, &spec, &tp, timeout)?,
                    };
                    let end = if spec.bounded {
                        Some(
                            consumer
                                .fetch_watermarks(&tp.0, tp.1, timeout)
                                .map_err(|e| {
                                    kafka_error(format!("reading the end of {}/{}", tp.0, tp.1), e)
                                })?
                                .1,
                        )
                    } else {
                        None
                    };
                    out.push((tp, start, end));
                }
                Ok(out)
            })
            .await??;
        if found.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), start, end) in &found {
            tpl.add_partition_offset(t, *p, Offset::from_raw(*start))
                .map_err(|e| kafka_error("assigning partitions", e))?;
            self.positions.insert((t.clone(), *p), *start);
            let split: SplitId = Arc::from(format!("{t}/{p}"));
            self.splits.insert((t.clone(), *p), split.clone());
            self.starts.push_back(split);
            self.topics
                .entry(t.clone())
                .or_insert_with(|| Arc::from(t.as_str()));
            if let Some(end) = end {
                self.ends.insert((t.clone(), *p), *end);
                if *start >= 0 && start >= end || *end == 0 {
                    self.done.insert((t.clone(), *p));
                }
            }
        }
        self.consumer()?
            .incremental_assign(&tpl)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        tracing::info!(
            node = ctx.name(),
            subtask = self.subtask,
            "kafka: reading {} more partition(s): {}",
            found.len(),
            found
                .iter()
                .map(|((t, p), o, _)| format!("{t}/{p}@{o}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    fn msg(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Msg {
        let topic = self
            .topics
            .entry(m.topic().to_string())
            .or_insert_with(|| Arc::from(m.topic()))
            .clone();
        Msg {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// Emits the messages of one partition, read in order: moves its position past them,
    /// decodes them and reports those that do not decode as bad rows.
    fn emit(&mut self, msgs: Vec<Msg>, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        let Some(first) = msgs.first() else {
            return Ok(SourceEvent::Idle(Duration::ZERO));
        };
        let tp = (first.topic.to_string(), first.partition);
        let bytes: usize = msgs
            .iter()
            .map(|m| m.value.as_ref().map_or(0, Vec::len))
            .sum();
        ctx.metrics().add_progress(bytes as u64);
        if let Some(last) = msgs.last() {
            self.positions.insert(tp.clone(), last.offset + 1);
            if let Some(end) = self.ends.get(&tp)
                && last.offset + 1 >= *end
            {
                self.done.insert(tp.clone());
            }
        }
        let (batch, bad) = self.decoder.decode(&msgs)?;
        for b in bad {
            let m = &msgs[b.index];
            ctx.bad_row(
                b.error,
                Some(format!("kafka topic {} partition {}", m.topic, m.partition)),
                Some(format!("offset {}", m.offset)),
                m.value.clone(),
            )?;
        }
        let split = self
            .splits
            .entry(tp)
            .or_insert_with_key(|(t, p)| Arc::from(format!("{t}/{p}")))
            .clone();
        Ok(match batch {
            Some(batch) => SourceEvent::SplitBatch { split, batch },
            None => SourceEvent::Idle(Duration::ZERO),
        })
    }

    /// `bounded`: marks partitions whose position reached their end.
    fn check_ends(&mut self) {
        let Some(c) = &self.consumer else { return };
        let Ok(pos) = c.position() else { return };
        for e in pos.elements() {
            let tp = (e.topic().to_string(), e.partition());
            if let (Some(end), Offset::Offset(o)) = (self.ends.get(&tp), e.offset())
                && o >= *end
            {
                self.done.insert(tp);
            }
        }
    }
}

/// The first offset to read of `tp` under `spec.start` (at a job's first start).
fn resolve_start(
    consumer: &StreamConsumer,
    spec: &KafkaSourceSpec,
    tp: &(String, i32),
    timeout: Duration,
) -> Result<i64> {
    let beginning = Offset::Beginning.to_raw().unwrap_or(-2);
    let err = |e| kafka_error(format!("finding where {}/{} starts", tp.0, tp.1), e);
    Ok(match spec.start {
        StartFrom::Earliest => beginning,
        StartFrom::Latest => {
            consumer
                .fetch_watermarks(&tp.0, tp.1, timeout)
                .map_err(err)?
                .1
        }
        StartFrom::Timestamp => {
            let ts = parse_timestamp(spec.start_timestamp.as_deref().unwrap_or_default())?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(ts))
                .map_err(err)?;
            let got = consumer.offsets_for_times(tpl, timeout).map_err(err)?;
            match got.elements().first().map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => {
                    consumer
                        .fetch_watermarks(&tp.0, tp.1, timeout)
                        .map_err(err)?
                        .1
                }
            }
        }
        StartFrom::Group => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            let got = consumer.committed_offsets(tpl, timeout).map_err(err)?;
            match got.elements().first().map(|e| e.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => o,
                _ => beginning,
            }
        }
    })
}

fn parse_timestamp(s: &str) -> Result<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s.trim())
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|e| {
            Error::config(format!(
                "key 'start_timestamp': expected milliseconds since the epoch or an RFC 3339 time, found '{s}'"
            ))
            .with_source(e)
        })
}

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if let Some(state) = ctx.restored_state() {
            let mut r = BTreeMap::new();
            for entry in state.unions::<PositionKey>() {
                let (k, bytes) = entry?;
                let off = bytes.try_into().map(i64::from_le_bytes).map_err(|_| {
                    Error::io(format!(
                        "the restored position of {}/{} is corrupt ({} bytes)",
                        k.topic,
                        k.partition,
                        bytes.len()
                    ))
                })?;
                r.insert((k.topic, k.partition), off);
            }
            self.restored = Some(r);
        }
        let consumer: StreamConsumer = self
            .spec
            .consumer_config(&self.group)
            .create()
            .map_err(|e| kafka_error("creating a Kafka consumer", e))?;
        self.consumer = Some(Arc::new(consumer));
        self.discover(ctx, true).await
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if !self.discovery.is_zero()
            && self.last_discovery.elapsed() >= self.discovery
            && let Err(e) = self.discover(ctx, false).await
        {
            tracing::warn!(
                node = ctx.name(),
                "kafka: partition discovery failed: {}",
                e.report()
            );
        }
        // Newly assigned partitions first: each holds event time back from now on.
        if let Some(split) = self.starts.pop_front() {
            return Ok(SourceEvent::SplitStart(split));
        }
        if let Some(group) = self.pending.pop_front() {
            return self.emit(group, ctx);
        }
        if self.spec.bounded {
            // Nothing of a partition waits any more: a partition read to its end ends its split.
            let newly_ended = self
                .done
                .iter()
                .find(|tp| !self.ended.contains(*tp))
                .cloned();
            if let Some(tp) = newly_ended {
                self.ended.insert(tp.clone());
                if let Some(split) = self.splits.get(&tp) {
                    return Ok(SourceEvent::SplitEnd(split.clone()));
                }
            }
            if self.done.len() >= self.positions.len() {
                return Ok(SourceEvent::Finished);
            }
        }
        if self.positions.is_empty() {
            return Ok(SourceEvent::Idle(Duration::from_millis(200)));
        }
        let consumer = self.consumer()?.clone();
        let mut msgs = Vec::new();
        let mut eof = false;
        let deadline = Duration::from_millis(50);
        let started = Instant::now();
        while msgs.len() < self.spec.batch_size {
            let got = if msgs.is_empty() {
                let left = deadline.saturating_sub(started.elapsed());
                tokio::time::timeout(left, consumer.recv()).await.ok()
            } else {
                consumer.recv().now_or_never()
            };
            match got {
                None => break,
                Some(Ok(m)) => {
                    ctx.metrics().set_waiting(None);
                    let msg = self.msg(&m);
                    msgs.push(msg);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                    eof = true;
                }
                Some(Err(e)) if is_transport(&e) => {
                    ctx.metrics().set_waiting(Some(WAITING));
                    tracing::warn!(node = ctx.name(), "kafka: {e}; retrying");
                    break;
                }
                Some(Err(e)) => return Err(kafka_error("reading from Kafka", e)),
            }
        }
        if eof {
            self.check_ends();
        }
        // One batch per partition (a split), each partition's messages in the order read.
        let mut groups: Vec<Vec<Msg>> = Vec::new();
        for m in msgs {
            match groups
                .iter_mut()
                .find(|g| g[0].partition == m.partition && g[0].topic == m.topic)
            {
                Some(g) => g.push(m),
                None => groups.push(vec![m]),
            }
        }
        self.pending.extend(groups);
        match self.pending.pop_front() {
            Some(group) => self.emit(group, ctx),
            None => Ok(SourceEvent::Idle(Duration::ZERO)),
        }
    }

    async fn snapshot(
        &mut self,
        barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut s = StateSnapshot::new();
        let mut commit = Vec::new();
        for ((t, p), off) in &self.positions {
            let key = PositionKey {
                topic: t.clone(),
                partition: *p,
            };
            s.push_union(&key, off.to_le_bytes().to_vec())?;
            if *off >= 0 {
                commit.push(((t.clone(), *p), *off));
            }
        }
        self.to_commit.insert(barrier.checkpoint_id, commit);
        Ok(s)
    }

    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        let mut latest = None;
        while let Some((&first, _)) = self.to_commit.first_key_value() {
            if first > id {
                break;
            }
            latest = self.to_commit.pop_first().map(|(_, v)| v);
        }
        let Some(offsets) = latest else { return Ok(()) };
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| kafka_error("committing positions", e))?;
        }
        // The group only mirrors weir's checkpoint for lag tools: a failed commit is not fatal.
        if let Err(e) = self.consumer()?.commit(&tpl, CommitMode::Async) {
            tracing::warn!(
                node = ctx.name(),
                "kafka: committing positions of checkpoint {id} to the group failed: {e}"
            );
        }
        Ok(())
    }

    async fn notify_checkpoint_aborted(
        &mut self,
        id: CheckpointId,
        _reason: &AbortReason,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        // Its positions never reach the group; a later checkpoint's newer ones will.
        self.to_commit.remove(&id);
        Ok(())
    }

    async fn close(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        // The consumer stays: the final checkpoint's completion still commits positions.
        if let Some(c) = &self.consumer {
            c.unassign()
                .map_err(|e| kafka_error("releasing partitions", e))?;
        }
        Ok(())
    }
}
