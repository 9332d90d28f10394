//! `sink: kafka`: writes every row as one message (value JSON or Arrow IPC, key and headers from
//! columns), `at_least_once` or `exactly_once`.
//!
//! **At least once.** An idempotent producer; at each barrier the sink waits until every message
//! sent so far is acknowledged by the broker, so a completed checkpoint implies its output is in
//! Kafka. A restore may write messages again.
//!
//! **Exactly once.** One transactional producer per subtask, `transactional.id` =
//! `<prefix>-<subtask>` (stable, so a restarted job fences its zombies and aborts their open
//! transactions). librdkafka cannot resume a transaction after a crash (re-initialising a
//! transactional id aborts its open transaction), so the sink keeps, in its checkpoint state, what
//! it needs to *redo* a transaction instead:
//!
//! 1. Rows go into the open transaction as they arrive (and are kept in memory: the encoded
//!    output of at most one checkpoint interval).
//! 2. At the barrier of checkpoint *c* (pre-commit) the sink waits until every message of the
//!    transaction is acknowledged, then adds to the transaction a *marker*: an offset commit of the
//!    consumer group `<prefix>-<subtask>` (offset = *c*), which becomes visible exactly when the
//!    transaction commits. The state holds *c* and the transaction's messages. Rows arriving
//!    before *c* completes wait in memory.
//! 3. When *c* completes the transaction is committed and the waiting rows start the next one.
//! 4. On restore from *c*, each old subtask's entry is taken by one new subtask, which initialises
//!    that transactional id (aborting whatever was open) and reads the marker group: an offset
//!    below *c* means *c*'s transaction never committed, so its messages are produced again in a
//!    fresh transaction with the marker, and committed. Transactional ids of this prefix that a
//!    run at a higher parallelism used (found by their marker groups) are initialised too, which
//!    aborts their open transactions. A commit that fails (broker gone, transaction timed out) is
//!    redone the same way.
//!
//! Where this differs from Flink's `KafkaSink`: Flink resumes the pre-committed transaction after
//! a crash (it re-creates the producer with the saved producer id and epoch through reflection
//! into the Java client), so its state holds only transaction ids; here the state holds the
//! transaction's messages. Flink uses a pool of transactional ids (one per checkpoint) so rows
//! after a barrier can go into the next transaction at once; here they wait in memory until the
//! checkpoint completes. KIP-939 (two-phase commit in the protocol) would remove both, but
//! librdkafka 2.12 does not offer it.

use crate::client::{WAITING, client_config, is_transport, kafka_error, unreachable};
use crate::format::{Encoder, Format};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_checkpoint::StateSnapshot;
use weir_runtime::kind::{self, JobInfo};
use weir_runtime::{AbortReason, Emitter, Operator, OperatorContext, TaskInfo};
use weir_types::{Barrier, CheckpointId, Error, Result};

/// The sink's delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every row at least once (the default).
    #[default]
    AtLeastOnce,
    /// Every row exactly once for `read_committed` readers (needs checkpoints).
    ExactlyOnce,
}

/// Options of `sink: kafka`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// `host:port[,host:port…]` of the brokers (required).
    pub bootstrap_servers: String,
    /// The topic written to (required; it must exist).
    pub topic: String,
    /// `at_least_once` (default) or `exactly_once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// `json` (default), `arrow_ipc` (one single-row IPC stream per message) or `raw` (the one
    /// Binary or Utf8 column of `value_columns`, as it is).
    #[serde(default)]
    pub format: Format,
    /// The column whose value is the message key (Utf8 or Binary; other types are written as
    /// text). Default: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Columns written into the value. Default: every column.
    #[serde(default)]
    pub value_columns: Vec<String>,
    /// Columns written as headers (the header is named after the column). Default none.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Prefix of the transactional ids and marker groups (`exactly_once`). Default
    /// `weir-<job>-<step>`. Two jobs writing at once must not share it.
    #[serde(default)]
    pub transactional_id_prefix: Option<String>,
    /// `exactly_once`: the producer's `transaction.timeout.ms`. It must be longer than the
    /// checkpoint interval and at most the broker's `transaction.max.timeout.ms`. Default: the
    /// broker's maximum, but at most three checkpoint intervals or 60 s, whichever is longer.
    #[serde(default)]
    pub transaction_timeout: Option<String>,
    /// Most bytes of messages queued in the producer before the sink waits (backpressure).
    /// Default `32MiB`.
    #[serde(default = "default_max_queued")]
    pub max_queued: String,
    /// How long to wait for the brokers at start before failing. Default `10s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// librdkafka producer properties, applied last.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_max_queued() -> String {
    "32MiB".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}

fn duration(key: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| Error::config(format!("key '{key}': invalid duration '{s}'")).with_source(e))
}

impl KafkaSinkSpec {
    /// The prefix of the transactional ids of step `step` of job `job` (`None`: a job without
    /// a name): `transactional_id_prefix`, else `weir-<job>-<step>`.
    pub fn prefix(&self, job: Option<&str>, step: &str) -> String {
        match (&self.transactional_id_prefix, job) {
            (Some(p), _) => p.clone(),
            (None, Some(job)) => format!("weir-{job}-{step}"),
            (None, None) => format!("weir-{step}"),
        }
    }

    /// Plan time: checks the options against the input schema and the job's checkpoint
    /// interval (`None`: the job does not checkpoint).
    pub fn check(&self, input: &SchemaRef, checkpoint_interval: Option<Duration>) -> Result<()> {
        Encoder::new(self.format, input, &self.value_columns)?;
        for (key, cols) in [
            ("key", self.key.iter().cloned().collect::<Vec<_>>()),
            ("headers", self.headers.clone()),
        ] {
            for c in cols {
                if input.column_with_name(&c).is_none() {
                    return Err(Error::schema(format!(
                        "key '{key}': column '{c}' is not in the input"
                    )));
                }
            }
        }
        if self.delivery == Delivery::ExactlyOnce && checkpoint_interval.is_none() {
            return Err(Error::config(
                "key 'delivery': exactly_once commits a transaction per checkpoint; give the job a 'checkpoint' section",
            ));
        }
        max_queued_kib(&self.max_queued)?;
        duration("connect_timeout", &self.connect_timeout)?;
        if let Some(t) = &self.transaction_timeout {
            duration("transaction_timeout", t)?;
        }
        Ok(())
    }

    /// One running instance: subtask `info` of job `job`, reading rows of `input`.
    pub fn create(
        &self,
        info: &TaskInfo,
        input: SchemaRef,
        job: Option<&JobInfo>,
    ) -> Result<Box<dyn Operator>> {
        let interval = job.and_then(|j| j.checkpoint_interval);
        self.check(&input, interval)?;
        let key = self.key.as_ref().map(|k| input.index_of(k)).transpose()?;
        let headers = self
            .headers
            .iter()
            .map(|h| Ok((h.clone(), input.index_of(h)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(KafkaSink {
            spec: self.clone(),
            prefix: self.prefix(job.map(|j| j.name.as_str()), &info.node),
            checkpoint_interval: interval,
            encoder: Encoder::new(self.format, &input, &self.value_columns)?,
            key,
            headers,
            subtask: info.subtask,
            parallelism: info.parallelism,
            producer: None,
            marker: None,
            pending: VecDeque::new(),
            txn_timeout: Duration::from_secs(60),
            in_txn: false,
            current: Vec::new(),
            prepared: None,
            waiting: Vec::new(),
        }))
    }

    /// A one-line description for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "kafka topic {} at {} ({}, {})",
            self.topic,
            self.bootstrap_servers,
            match self.format {
                Format::ArrowIpc => "arrow_ipc",
                Format::Raw => "raw",
                Format::Json => "json",
            },
            match self.delivery {
                Delivery::AtLeastOnce => "at least once",
                Delivery::ExactlyOnce => "exactly once",
            }
        )
    }
}

impl kind::Spec for KafkaSinkSpec {
    fn describe(&self) -> String {
        KafkaSinkSpec::describe(self)
    }
}

impl kind::SinkSpec for KafkaSinkSpec {
    fn check_inputs(&self, inputs: &[SchemaRef], ctx: &kind::PlanContext<'_>) -> Result<()> {
        let interval = JobInfo::of(ctx.resources).and_then(|j| j.checkpoint_interval);
        for input in inputs {
            self.check(input, interval)?;
        }
        Ok(())
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        KafkaSinkSpec::create(
            self,
            ctx.info(),
            ctx.input()?.clone(),
            JobInfo::of(ctx.resources()),
        )
    }
}

fn max_queued_kib(s: &str) -> Result<u64> {
    let b = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| Error::config(format!("key 'max_queued': invalid size '{s}': {e}")))?;
    Ok((b.as_u64() / 1024).max(1))
}

/// One message, as the sink keeps it (in memory and, for `exactly_once`, in its checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a subtask's `exactly_once` state holds: its transactional id's number, the checkpoint and
/// the messages of the transaction pre-committed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnEntry {
    /// `n` of the transactional id `<prefix>-<n>`.
    pub id: u32,
    /// The checkpoint whose transaction this is.
    pub checkpoint: CheckpointId,
    /// Its messages.
    pub recs: Vec<Rec>,
}

impl TxnEntry {
    /// Encodes the entry (little-endian lengths).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.checkpoint.to_le_bytes());
        out.extend_from_slice(&(self.recs.len() as u64).to_le_bytes());
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        };
        for r in &self.recs {
            match &r.key {
                Some(k) => {
                    out.push(1);
                    bytes(&mut out, k);
                }
                None => out.push(0),
            }
            bytes(&mut out, &r.value);
            out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
            for (k, v) in &r.headers {
                bytes(&mut out, k.as_bytes());
                bytes(&mut out, v);
            }
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) wrote; a corrupt entry is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<TxnEntry> {
        let corrupt = || Error::io("a kafka sink's transaction state is corrupt");
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = b
                .get(pos..pos.checked_add(n).ok_or_else(corrupt)?)
                .ok_or_else(corrupt)?;
            pos += n;
            Ok(s)
        };
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        let id = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
        let checkpoint = u64_(take(8)?);
        let n = u64_(take(8)?) as usize;
        let mut recs = Vec::with_capacity(n.min(b.len()));
        for _ in 0..n {
            let key = match take(1)?[0] {
                0 => None,
                _ => {
                    let len = u64_(take(8)?) as usize;
                    Some(take(len)?.to_vec())
                }
            };
            let len = u64_(take(8)?) as usize;
            let value = take(len)?.to_vec();
            let h = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
            let mut headers = Vec::new();
            for _ in 0..h {
                let len = u64_(take(8)?) as usize;
                let k = String::from_utf8(take(len)?.to_vec()).map_err(|_| corrupt())?;
                let len = u64_(take(8)?) as usize;
                headers.push((k, take(len)?.to_vec()));
            }
            recs.push(Rec {
                key,
                value,
                headers,
            });
        }
        Ok(TxnEntry {
            id,
            checkpoint,
            recs,
        })
    }
}

const TXN_ENTRY: &str = "kafka-txn";
/// How long the sink keeps retrying a transaction step while the broker cannot be reached.
const GIVE_UP: Duration = Duration::from_secs(600);

/// A running `sink: kafka` subtask.
pub struct KafkaSink {
    spec: KafkaSinkSpec,
    /// Prefix of the transactional ids and marker groups.
    prefix: String,
    /// The job's checkpoint interval (`None`: it does not checkpoint).
    checkpoint_interval: Option<Duration>,
    encoder: Encoder,
    key: Option<usize>,
    headers: Vec<(String, usize)>,
    subtask: u32,
    parallelism: u32,
    producer: Option<Arc<FutureProducer>>,
    /// `exactly_once`: a consumer of the marker group `<prefix>-<subtask>` (for its metadata).
    marker: Option<Arc<BaseConsumer>>,
    /// Deliveries not yet acknowledged, oldest first.
    pending: VecDeque<DeliveryFuture>,
    txn_timeout: Duration,
    /// `exactly_once`: a transaction is open.
    in_txn: bool,
    /// `exactly_once`: the messages of the open transaction.
    current: Vec<Rec>,
    /// `exactly_once`: the open transaction was pre-committed for this checkpoint.
    prepared: Option<CheckpointId>,
    /// `exactly_once`: rows that arrived after the barrier of `prepared`, not produced yet.
    waiting: Vec<Rec>,
}

fn text_or_bytes(col: &dyn Array, row: usize) -> Result<Option<Vec<u8>>> {
    if col.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(row).as_bytes().to_vec(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(row).as_bytes().to_vec(),
        DataType::Binary => col.as_binary::<i32>().value(row).to_vec(),
        DataType::LargeBinary => col.as_binary::<i64>().value(row).to_vec(),
        _ => {
            let s = arrow::compute::cast(&col.slice(row, 1), &DataType::Utf8)?;
            s.as_string::<i32>().value(0).as_bytes().to_vec()
        }
    }))
}

impl KafkaSink {
    fn tid(&self, n: u32) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn producer_config(&self, tid: Option<&str>) -> Result<rdkafka::ClientConfig> {
        let mut c = client_config(&self.spec.bootstrap_servers, &BTreeMap::new());
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // Keys go to the partitions Kafka's Java clients pick for them.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set(
                "queue.buffering.max.kbytes",
                max_queued_kib(&self.spec.max_queued)?.to_string(),
            );
        if let Some(tid) = tid {
            let ms = self.txn_timeout.as_millis().to_string();
            c.set("transactional.id", tid)
                .set("transaction.timeout.ms", &ms)
                .set("message.timeout.ms", &ms);
        } else {
            c.set("message.timeout.ms", "300000");
        }
        for (k, v) in &self.spec.properties {
            c.set(k, v);
        }
        Ok(c)
    }

    fn producer(&self) -> Result<&Arc<FutureProducer>> {
        self.producer
            .as_ref()
            .ok_or_else(|| Error::internal("kafka sink used before open"))
    }

    /// Encodes a batch into messages.
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<Rec>> {
        let values = self.encoder.encode(batch)?;
        let mut out = Vec::with_capacity(values.len());
        for (row, value) in values.into_iter().enumerate() {
            let key = match self.key {
                Some(k) => text_or_bytes(batch.column(k).as_ref(), row)?,
                None => None,
            };
            let mut headers = Vec::with_capacity(self.headers.len());
            for (name, i) in &self.headers {
                if let Some(v) = text_or_bytes(batch.column(*i).as_ref(), row)? {
                    headers.push((name.clone(), v));
                }
            }
            out.push(Rec {
                key,
                value,
                headers,
            });
        }
        Ok(out)
    }

    /// Hands `recs` to the producer, waiting (backpressure) while its queue is full.
    async fn produce(&mut self, recs: &[Rec], ctx: &OperatorContext) -> Result<()> {
        let producer = self.producer()?.clone();
        let topic = self.spec.topic.clone();
        for r in recs {
            let mut blocked: Option<Instant> = None;
            loop {
                let mut rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&topic).payload(r.value.as_slice());
                if let Some(k) = &r.key {
                    rec = rec.key(k.as_slice());
                }
                if !r.headers.is_empty() {
                    let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
                    for (k, v) in &r.headers {
                        h = h.insert(Header {
                            key: k,
                            value: Some(v),
                        });
                    }
                    rec = rec.headers(h);
                }
                match producer.send_result(rec) {
                    Ok(f) => {
                        self.pending.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        let since = *blocked.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(2) {
                            ctx.metrics().set_waiting(Some(WAITING));
                        }
                        match self.pending.pop_front() {
                            Some(f) => check_delivery(f.await)?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => return Err(kafka_error("sending a message to Kafka", e)),
                }
            }
            if blocked.is_some() {
                ctx.metrics().set_waiting(None);
            }
        }
        // Reap what has been acknowledged already, so errors surface early.
        while let Some(f) = self.pending.front_mut() {
            match f.now_or_never() {
                Some(r) => {
                    self.pending.pop_front();
                    check_delivery(r)?;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Waits until every message handed to the producer is acknowledged.
    async fn drain(&mut self, ctx: &OperatorContext) -> Result<()> {
        let started = Instant::now();
        while let Some(f) = self.pending.pop_front() {
            let mut f = f;
            loop {
                match tokio::time::timeout(Duration::from_secs(2), &mut f).await {
                    Ok(r) => {
                        check_delivery(r)?;
                        break;
                    }
                    Err(_) => {
                        ctx.metrics().set_waiting(Some(WAITING));
                        tracing::warn!(
                            node = ctx.name(),
                            "kafka: waiting for Kafka to acknowledge messages ({:.0}s)",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
        ctx.metrics().set_waiting(None);
        Ok(())
    }

    /// Runs a blocking transaction call of the producer on a blocking thread; while it takes
    /// longer than 2 s (the broker is unreachable or slow) the step reports `waiting for Kafka`.
    async fn txn_call<T: Send + 'static>(
        ctx: &OperatorContext,
        producer: &Arc<FutureProducer>,
        f: impl FnOnce(&FutureProducer) -> std::result::Result<T, KafkaError> + Send + 'static,
    ) -> Result<std::result::Result<T, KafkaError>> {
        let p = producer.clone();
        let call = ctx.spawn_cpu(move || f(&p));
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => r,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                ctx.metrics().set_waiting(Some(WAITING));
                let r = call.await;
                ctx.metrics().set_waiting(None);
                r
            }
        }
    }

    /// Checks the brokers, the topic and (for `exactly_once`) the transaction timeouts.
    async fn preflight(&mut self, ctx: &OperatorContext) -> Result<()> {
        let timeout = duration("connect_timeout", &self.spec.connect_timeout)?;
        let cfg = client_config(&self.spec.bootstrap_servers, &self.spec.properties);
        let probe: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_error("creating a Kafka client", e))?;
        let probe = Arc::new(probe);
        let p = probe.clone();
        let topic = self.spec.topic.clone();
        let md = ctx
            .spawn_cpu(move || p.fetch_metadata(None, timeout))
            .await?
            .map_err(|e| unreachable(&self.spec.bootstrap_servers, timeout, e))?;
        let found = md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !found {
            return Err(Error::config(format!(
                "key 'topic': topic '{topic}' does not exist on '{}'",
                self.spec.bootstrap_servers
            )));
        }
        if self.spec.delivery == Delivery::ExactlyOnce {
            let interval = self.checkpoint_interval.ok_or_else(|| {
                Error::config("key 'delivery': exactly_once needs the job to checkpoint")
            })?;
            let broker = md.brokers().first().map_or(1, |b| b.id());
            let admin: AdminClient<DefaultClientContext> = cfg
                .create()
                .map_err(|e| kafka_error("creating a Kafka admin client", e))?;
            let got = admin
                .describe_configs(
                    &[ResourceSpecifier::Broker(broker)],
                    &AdminOptions::new().request_timeout(Some(timeout)),
                )
                .await
                .map_err(|e| kafka_error("reading the broker's configuration", e))?;
            let max_ms: Option<u64> = got
                .into_iter()
                .flatten()
                .find_map(|r| {
                    r.get("transaction.max.timeout.ms")
                        .and_then(|e| e.value.clone())
                })
                .and_then(|v| v.parse().ok());
            let max = Duration::from_millis(max_ms.unwrap_or(900_000));
            if max <= interval {
                return Err(Error::config(format!(
                    "key 'delivery': exactly_once keeps a transaction open for a checkpoint interval ({}), but the broker's transaction.max.timeout.ms is {} ms: raise transaction.max.timeout.ms on the broker or shorten checkpoint.interval",
                    humantime::format_duration(interval),
                    max.as_millis()
                )));
            }
            self.txn_timeout = match &self.spec.transaction_timeout {
                Some(t) => {
                    let t = duration("transaction_timeout", t)?;
                    if t <= interval {
                        return Err(Error::config(format!(
                            "key 'transaction_timeout': {} is not longer than checkpoint.interval ({})",
                            humantime::format_duration(t),
                            humantime::format_duration(interval)
                        )));
                    }
                    if t > max {
                        return Err(Error::config(format!(
                            "key 'transaction_timeout': {} is above the broker's transaction.max.timeout.ms ({} ms)",
                            humantime::format_duration(t),
                            max.as_millis()
                        )));
                    }
                    t
                }
                None => max.min((interval * 3).max(Duration::from_secs(60))),
            };
        }
        Ok(())
    }

    /// A transactional producer for id `n`, initialised (which aborts whatever that id had open
    /// and fences older producers), and a consumer of its marker group. Waits while the broker
    /// cannot be reached.
    async fn init_id(
        &self,
        n: u32,
        ctx: &OperatorContext,
    ) -> Result<(Arc<FutureProducer>, Arc<BaseConsumer>)> {
        let tid = self.tid(n);
        let started = Instant::now();
        loop {
            let producer: FutureProducer = self
                .producer_config(Some(&tid))?
                .create()
                .map_err(|e| kafka_error("creating a transactional producer", e))?;
            let producer = Arc::new(producer);
            let t = self.txn_timeout.min(Duration::from_secs(30));
            match Self::txn_call(ctx, &producer, move |p| p.init_transactions(t)).await? {
                Ok(()) => {
                    ctx.metrics().set_waiting(None);
                    let mut cfg =
                        client_config(&self.spec.bootstrap_servers, &self.spec.properties);
                    cfg.set("group.id", &tid)
                        .set("isolation.level", "read_committed")
                        .set("enable.auto.commit", "false");
                    let marker: BaseConsumer = cfg
                        .create()
                        .map_err(|e| kafka_error("creating the marker group's consumer", e))?;
                    return Ok((producer, Arc::new(marker)));
                }
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::InvalidTransactionTimeout) =>
                {
                    return Err(Error::config(format!(
                        "key 'transaction_timeout': the broker refused transaction.timeout.ms = {} ms (above its transaction.max.timeout.ms)",
                        self.txn_timeout.as_millis()
                    ))
                    .with_source(e));
                }
                Err(e) if started.elapsed() < GIVE_UP => {
                    ctx.metrics().set_waiting(Some(WAITING));
                    tracing::warn!(
                        node = ctx.name(),
                        "kafka: initialising transactional id {tid}: {e}; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(kafka_error(
                        format!("initialising transactional id {tid}"),
                        e,
                    ));
                }
            }
        }
    }

    /// The checkpoint id of the last transaction committed under marker group `<prefix>-<n>`
    /// (`None` when the group has none).
    async fn marker_of(
        &self,
        marker: &Arc<BaseConsumer>,
        ctx: &OperatorContext,
    ) -> Result<Option<u64>> {
        let started = Instant::now();
        loop {
            let m = marker.clone();
            let topic = self.spec.topic.clone();
            let got = ctx
                .spawn_cpu(move || {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, 0);
                    m.committed_offsets(tpl, Duration::from_secs(10))
                })
                .await?;
            match got {
                Ok(tpl) => {
                    return Ok(match tpl.elements().first().map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
                        _ => None,
                    });
                }
                Err(e) if started.elapsed() < GIVE_UP => {
                    ctx.metrics().set_waiting(Some(WAITING));
                    tracing::warn!(
                        node = ctx.name(),
                        "kafka: reading a marker group: {e}; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(kafka_error("reading a marker group", e)),
            }
        }
    }

    /// Adds the marker (offset `checkpoint` of the marker group) to the open transaction.
    async fn send_marker(
        &self,
        producer: &Arc<FutureProducer>,
        marker: &Arc<BaseConsumer>,
        checkpoint: CheckpointId,
        ctx: &OperatorContext,
    ) -> std::result::Result<(), KafkaError> {
        let Some(meta) = marker.group_metadata() else {
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidGroupId,
            ));
        };
        let topic = self.spec.topic.clone();
        let t = self.txn_timeout.min(Duration::from_secs(30));
        let r = Self::txn_call(ctx, producer, move |p| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(checkpoint as i64))?;
            p.send_offsets_to_transaction(&tpl, &meta, t)
        })
        .await;
        match r {
            Ok(r) => r,
            Err(_) => Err(KafkaError::Canceled),
        }
    }

    /// Makes sure the transaction of `checkpoint` with `recs` is committed under id `n`: if the
    /// marker group says it is not, produces `recs` again in a fresh transaction with the marker
    /// and commits it. Retries (re-initialising the id) until it succeeds or [`GIVE_UP`] passes.
    /// Returns the producer and marker consumer of id `n`, with no transaction open.
    async fn redo(
        &mut self,
        n: u32,
        checkpoint: CheckpointId,
        recs: &[Rec],
        ctx: &OperatorContext,
    ) -> Result<(Arc<FutureProducer>, Arc<BaseConsumer>)> {
        let started = Instant::now();
        loop {
            let (producer, marker) = self.init_id(n, ctx).await?;
            let have = self.marker_of(&marker, ctx).await?;
            if have == Some(checkpoint) {
                return Ok((producer, marker));
            }
            // A marker past `checkpoint` (a restore from an older checkpoint than the newest):
            // those messages are in Kafka already; only the marker is set back.
            let recs = if have.is_some_and(|h| h > checkpoint) {
                &[][..]
            } else {
                recs
            };
            tracing::info!(
                node = ctx.name(),
                "kafka: transactional id {} writes the {} message(s) of checkpoint {checkpoint} again (marker {have:?})",
                self.tid(n),
                recs.len()
            );
            let attempt: Result<std::result::Result<(), KafkaError>> = async {
                if let Err(e) = Self::txn_call(ctx, &producer, |p| p.begin_transaction()).await? {
                    return Ok(Err(e));
                }
                let saved = self.producer.replace(producer.clone());
                let produced = async {
                    self.produce(recs, ctx).await?;
                    self.drain(ctx).await
                }
                .await;
                self.producer = saved;
                if let Err(e) = produced {
                    self.pending.clear();
                    tracing::warn!(node = ctx.name(), "kafka: {}", e.report());
                    return Ok(Err(KafkaError::Canceled));
                }
                if let Err(e) = self.send_marker(&producer, &marker, checkpoint, ctx).await {
                    return Ok(Err(e));
                }
                let t = self.txn_timeout.min(Duration::from_secs(60));
                Self::txn_call(ctx, &producer, move |p| p.commit_transaction(t)).await
            }
            .await;
            match attempt? {
                Ok(()) => {
                    ctx.metrics().set_waiting(None);
                    return Ok((producer, marker));
                }
                Err(e) if started.elapsed() < GIVE_UP => {
                    ctx.metrics().set_waiting(Some(WAITING));
                    tracing::warn!(
                        node = ctx.name(),
                        "kafka: redoing checkpoint {checkpoint}'s transaction: {e}; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(kafka_error(
                        format!("committing checkpoint {checkpoint}'s transaction"),
                        e,
                    ));
                }
            }
        }
    }

    /// `exactly_once` at open: settles the restored transactions and lingering ids, then leaves
    /// this subtask's own producer ready, with no transaction open.
    async fn recover(&mut self, ctx: &OperatorContext) -> Result<()> {
        let mut entries: Vec<TxnEntry> = Vec::new();
        let mut restored_id: u64 = 0;
        if let Some(state) = ctx.restored_state() {
            for entry in state.unions::<String>() {
                let (name, bytes) = entry?;
                if name == TXN_ENTRY {
                    let e = TxnEntry::decode(bytes)?;
                    restored_id = restored_id.max(e.checkpoint);
                    entries.push(e);
                }
            }
        }
        let p = self.parallelism;
        let mine: Vec<TxnEntry> = entries
            .iter()
            .filter(|e| e.id % p == self.subtask)
            .cloned()
            .collect();
        // Ids a run at a higher parallelism may have used: their marker groups exist.
        let prefix = format!("{}-", self.prefix);
        let cfg = client_config(&self.spec.bootstrap_servers, &self.spec.properties);
        let lister: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_error("creating a Kafka client", e))?;
        let lister = Arc::new(lister);
        let started = Instant::now();
        let groups = loop {
            let l = lister.clone();
            let got = ctx
                .spawn_cpu(move || {
                    l.fetch_group_list(None, Duration::from_secs(10)).map(|g| {
                        g.groups()
                            .iter()
                            .map(|g| g.name().to_string())
                            .collect::<Vec<_>>()
                    })
                })
                .await?;
            match got {
                Ok(g) => break g,
                // A broker that just started loads its group coordinator for a moment.
                Err(e) if started.elapsed() < GIVE_UP => {
                    ctx.metrics().set_waiting(Some(WAITING));
                    tracing::warn!(
                        node = ctx.name(),
                        "kafka: listing consumer groups: {e}; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(kafka_error("listing consumer groups", e)),
            }
        };
        ctx.metrics().set_waiting(None);
        let lingering: Vec<u32> = groups
            .iter()
            .filter_map(|g| g.strip_prefix(&prefix)?.parse::<u32>().ok())
            .filter(|n| *n >= p && n % p == self.subtask && !entries.iter().any(|e| e.id == *n))
            .collect();
        for n in lingering {
            tracing::info!(
                node = ctx.name(),
                "kafka: aborting whatever transactional id {} left open",
                self.tid(n)
            );
            self.init_id(n, ctx).await?;
        }
        let me = self.subtask;
        for e in mine.iter().filter(|e| e.id != me) {
            self.redo(e.id, e.checkpoint, &e.recs, ctx).await?;
        }
        let own = mine.iter().find(|e| e.id == self.subtask).cloned();
        // The own id: its restored transaction, or (none restored) a marker reset to the restored
        // checkpoint (0 on a fresh start), so that an old marker from an earlier run is never
        // taken for a commit of this run's checkpoints.
        let (checkpoint, recs) = match own {
            Some(e) => (e.checkpoint, e.recs),
            None => (restored_id, Vec::new()),
        };
        let (producer, marker) = self.redo(self.subtask, checkpoint, &recs, ctx).await?;
        self.producer = Some(producer);
        self.marker = Some(marker);
        Ok(())
    }

    async fn begin(&mut self, ctx: &OperatorContext) -> Result<()> {
        if !self.in_txn {
            let producer = self.producer()?.clone();
            Self::txn_call(ctx, &producer, |p| p.begin_transaction())
                .await?
                .map_err(|e| kafka_error("beginning a transaction", e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// `exactly_once`: sends `recs` in the open transaction (begun if none is), keeping them with
    /// the transaction's messages; if sending fails, the transaction is started again with all of
    /// them.
    async fn produce_in_txn(&mut self, recs: Vec<Rec>, ctx: &OperatorContext) -> Result<()> {
        self.begin(ctx).await?;
        let r = self.produce(&recs, ctx).await;
        self.current.extend(recs);
        if let Err(e) = r {
            tracing::warn!(
                node = ctx.name(),
                "kafka: {}; restarting the transaction",
                e.report()
            );
            self.restart_txn(ctx).await?;
        }
        Ok(())
    }

    /// `exactly_once`: the open transaction failed; start it again (new producer epoch) with the
    /// messages it held.
    async fn restart_txn(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.pending.clear();
        let (producer, marker) = self.init_id(self.subtask, ctx).await?;
        self.producer = Some(producer);
        self.marker = Some(marker);
        self.in_txn = false;
        self.begin(ctx).await?;
        let recs = std::mem::take(&mut self.current);
        self.produce(&recs, ctx).await?;
        self.current = recs;
        Ok(())
    }
}

fn check_delivery(
    r: std::result::Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(kafka_error("Kafka did not take a message", e)),
        Err(_) => Err(Error::external(
            "the Kafka producer was closed before a delivery report",
        )),
    }
}

#[async_trait]
impl Operator for KafkaSink {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.preflight(ctx).await?;
        match self.spec.delivery {
            Delivery::AtLeastOnce => {
                let p: FutureProducer = self
                    .producer_config(None)?
                    .create()
                    .map_err(|e| kafka_error("creating a Kafka producer", e))?;
                self.producer = Some(Arc::new(p));
                Ok(())
            }
            Delivery::ExactlyOnce => {
                if !ctx.checkpointing() {
                    return Err(Error::config(
                        "key 'delivery': exactly_once needs the job to checkpoint",
                    ));
                }
                self.recover(ctx).await
            }
        }
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        let recs = self.encode(&batch)?;
        match self.spec.delivery {
            Delivery::AtLeastOnce => self.produce(&recs, ctx).await,
            Delivery::ExactlyOnce if self.prepared.is_some() => {
                self.waiting.extend(recs);
                Ok(())
            }
            Delivery::ExactlyOnce => self.produce_in_txn(recs, ctx).await,
        }
    }

    async fn snapshot(
        &mut self,
        barrier: &Barrier,
        ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<StateSnapshot> {
        let mut state = StateSnapshot::new();
        match self.spec.delivery {
            Delivery::AtLeastOnce => self.drain(ctx).await?,
            Delivery::ExactlyOnce => {
                let c = barrier.checkpoint_id;
                // The checkpoint of the prepared transaction did not complete (it was aborted):
                // the transaction stays open and takes the rows that waited, for checkpoint `c`.
                if self.prepared.is_some() && !self.waiting.is_empty() {
                    let recs = std::mem::take(&mut self.waiting);
                    self.begin(ctx).await?;
                    self.produce(&recs, ctx).await?;
                    self.current.extend(recs);
                }
                if self.in_txn {
                    let mut tries = 0;
                    loop {
                        let drained = self.drain(ctx).await;
                        let marked =
                            match drained {
                                Ok(()) => {
                                    let producer = self.producer()?.clone();
                                    let marker = self.marker.clone().ok_or_else(|| {
                                        Error::internal("kafka sink without marker")
                                    })?;
                                    self.send_marker(&producer, &marker, c, ctx).await.map_err(
                                        |e| kafka_error("adding the marker to the transaction", e),
                                    )
                                }
                                Err(e) => Err(e),
                            };
                        match marked {
                            Ok(()) => break,
                            Err(e) if tries < 5 => {
                                tries += 1;
                                tracing::warn!(
                                    node = ctx.name(),
                                    "kafka: pre-commit of checkpoint {c}: {}; restarting the transaction",
                                    e.report()
                                );
                                self.restart_txn(ctx).await?;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    self.prepared = Some(c);
                }
                state.push_union(
                    TXN_ENTRY,
                    TxnEntry {
                        id: self.subtask,
                        checkpoint: c,
                        recs: self.current.clone(),
                    }
                    .encode(),
                )?;
            }
        }
        Ok(state)
    }

    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        let Some(prepared) = self.prepared else {
            return Ok(());
        };
        if prepared > id {
            return Ok(());
        }
        let producer = self.producer()?.clone();
        let t = self.txn_timeout.min(Duration::from_secs(60));
        let committed = Self::txn_call(ctx, &producer, move |p| p.commit_transaction(t)).await?;
        if let Err(e) = committed {
            let retriable =
                matches!(&e, KafkaError::Transaction(r) if r.is_retriable()) || is_transport(&e);
            tracing::warn!(
                node = ctx.name(),
                "kafka: committing checkpoint {prepared}'s transaction failed ({e}{}); redoing it",
                if retriable { ", retriable" } else { "" }
            );
            let recs = std::mem::take(&mut self.current);
            let (producer, marker) = self.redo(self.subtask, prepared, &recs, ctx).await?;
            self.producer = Some(producer);
            self.marker = Some(marker);
        }
        self.in_txn = false;
        self.prepared = None;
        self.current.clear();
        let recs = std::mem::take(&mut self.waiting);
        if !recs.is_empty() {
            self.produce_in_txn(recs, ctx).await?;
        }
        Ok(())
    }

    async fn notify_checkpoint_aborted(
        &mut self,
        id: CheckpointId,
        reason: &AbortReason,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        // A subsumed checkpoint's transaction is committed by the completion notified next.
        if self.prepared != Some(id) || matches!(reason, AbortReason::Subsumed { .. }) {
            return Ok(());
        }
        // The pre-committed transaction stays open: the rows that waited for `id` to complete
        // go into it now, and the next checkpoint's barrier pre-commits all of them (its marker
        // replaces this one's).
        tracing::info!(
            node = ctx.name(),
            "kafka: checkpoint {id} was aborted ({reason}); its transaction stays open for the next one"
        );
        self.prepared = None;
        let recs = std::mem::take(&mut self.waiting);
        if !recs.is_empty() {
            self.begin(ctx).await?;
            let r = self.produce(&recs, ctx).await;
            self.current.extend(recs);
            if let Err(e) = r {
                tracing::warn!(
                    node = ctx.name(),
                    "kafka: {}; restarting the transaction",
                    e.report()
                );
                self.restart_txn(ctx).await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, ctx: &mut OperatorContext, _out: &mut Emitter) -> Result<()> {
        if self.spec.delivery == Delivery::AtLeastOnce || !ctx.checkpointing() {
            self.drain(ctx).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_entries_round_trip_and_corruption_is_an_error() {
        let e = TxnEntry {
            id: 3,
            checkpoint: 42,
            recs: vec![
                Rec {
                    key: Some(b"k".to_vec()),
                    value: b"{\"a\":1}".to_vec(),
                    headers: vec![("h".into(), b"v".to_vec())],
                },
                Rec {
                    key: None,
                    value: Vec::new(),
                    headers: Vec::new(),
                },
            ],
        };
        let b = e.encode();
        assert_eq!(TxnEntry::decode(&b).expect("decode"), e);
        for cut in [0, 5, b.len() - 1] {
            assert!(TxnEntry::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(max_queued_kib("32MiB").expect("size"), 32 * 1024);
        assert_eq!(max_queued_kib("4096").expect("size"), 4);
        assert!(max_queued_kib("lots").is_err());
    }
}
