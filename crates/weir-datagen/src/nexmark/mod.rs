//! `source: nexmark`: the Nexmark benchmark's online auction events (persons, auctions and bids),
//! one table per source step, generated as the reference generator does (see [`generator`]).
//!
//! Several `nexmark` sources with the same seed and settings describe the same event stream: a
//! `table: bid` source and a `table: auction` source emit the bids and the auctions of one
//! auction house, so joins between them find their matches.

pub mod generator;

use crate::splits::{Next, RateLimit, Splits};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use generator::{Auctions, Bids, EventKind, Generator, NexmarkConfig, Persons, Tables};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use weir_runtime::{OperatorContext, Source, SourceEvent, StateSnapshot, TaskInfo, kind};
use weir_types::{Barrier, Error, Result};

/// Which of the three event kinds a source emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NexmarkTable {
    /// `id, name, email_address, credit_card, city, state, date_time, extra`.
    Person,
    /// `id, item_name, description, initial_bid, reserve, date_time, expires, seller, category,
    /// extra`.
    Auction,
    /// `auction, bidder, price, channel, url, date_time, extra`.
    Bid,
}

impl NexmarkTable {
    fn kind(self) -> EventKind {
        match self {
            NexmarkTable::Person => EventKind::Person,
            NexmarkTable::Auction => EventKind::Auction,
            NexmarkTable::Bid => EventKind::Bid,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NexmarkTable::Person => "person",
            NexmarkTable::Auction => "auction",
            NexmarkTable::Bid => "bid",
        }
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// The schema of `table: person`.
pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("date_time", ts(), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// The schema of `table: auction`.
pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("date_time", ts(), false),
        Field::new("expires", ts(), false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// The schema of `table: bid`.
pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("date_time", ts(), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

fn default_batch_size() -> usize {
    8192
}
fn default_event_rate() -> f64 {
    10_000.0
}
fn default_base_time() -> Value {
    Value::String("2024-01-01T00:00:00Z".into())
}
fn one() -> u64 {
    1
}
fn three() -> u64 {
    3
}
fn forty_six() -> u64 {
    46
}
fn two_i() -> i32 {
    2
}
fn four_i() -> i32 {
    4
}
fn size_person() -> i32 {
    200
}
fn size_auction() -> i32 {
    500
}
fn size_bid() -> i32 {
    100
}
fn in_flight() -> i64 {
    100
}
fn active_people() -> i64 {
    1000
}

/// Options of `source: nexmark`.
///
/// ```yaml
/// source: nexmark
/// table: bid                 # person | auction | bid; required
/// events: 10000000           # events of all kinds; default unbounded
/// event_rate: 10000          # events per second of event time
/// seed: 0
/// watermark: {column: date_time, max_out_of_orderness: 4s}
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkSourceSpec {
    /// Which events to emit. Required.
    pub table: NexmarkTable,
    /// How many events (of all three kinds) the stream has; this source emits its table's share.
    /// Default: unbounded.
    #[serde(default)]
    pub events: Option<u64>,
    /// Events per second of event time (the reference's `first-event.rate`). Default 10 000.
    #[serde(default = "default_event_rate")]
    pub event_rate: f64,
    /// At most this many events (of all kinds) per second of wall-clock time over all instances.
    /// Default: as fast as possible.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    /// Event time of the first event: RFC 3339 or milliseconds since the epoch. Default
    /// `2024-01-01T00:00:00Z`.
    #[serde(default = "default_base_time")]
    pub base_time: Value,
    /// Seed of every random draw. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Most rows per batch. Default 8192.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Generator splits. Default: the source's parallelism when the job first starts.
    #[serde(default)]
    pub splits: Option<u32>,
    /// Persons per `person + auction + bid` events. Default 1.
    #[serde(default = "one")]
    pub person_proportion: u64,
    /// Auctions per `person + auction + bid` events. Default 3.
    #[serde(default = "three")]
    pub auction_proportion: u64,
    /// Bids per `person + auction + bid` events. Default 46.
    #[serde(default = "forty_six")]
    pub bid_proportion: u64,
    /// 1 in this many auctions has a random seller, the others a hot one. Default 4.
    #[serde(default = "four_i")]
    pub hot_seller_ratio: i32,
    /// 1 in this many bids is on a random auction, the others on a hot one. Default 2.
    #[serde(default = "two_i")]
    pub hot_auction_ratio: i32,
    /// 1 in this many bids has a random bidder, the others a hot one. Default 4.
    #[serde(default = "four_i")]
    pub hot_bidder_ratio: i32,
    /// Average size of a person in bytes (`extra` makes it up). Default 200.
    #[serde(default = "size_person")]
    pub avg_person_size: i32,
    /// Average size of an auction in bytes. Default 500.
    #[serde(default = "size_auction")]
    pub avg_auction_size: i32,
    /// Average size of a bid in bytes. Default 100.
    #[serde(default = "size_bid")]
    pub avg_bid_size: i32,
    /// Open auctions that bids are spread over. Default 100.
    #[serde(default = "in_flight")]
    pub num_in_flight_auctions: i64,
    /// People that sellers and bidders are drawn from. Default 1000.
    #[serde(default = "active_people")]
    pub num_active_people: i64,
    /// Events are shuffled within groups of this many consecutive events (1: in order). Default 1.
    #[serde(default = "one")]
    pub out_of_order_group_size: u64,
}

fn base_time_ms(v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            Error::config(format!("key 'base_time': expected milliseconds, found {n}"))
        }),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| {
                Error::config(format!(
                    "key 'base_time': expected an RFC 3339 time like 2024-01-01T00:00:00Z, found '{s}'"
                ))
                .with_source(e)
            })?;
            let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| {
                Error::config("key 'base_time': times before 1970 are not supported").with_source(e)
            })?;
            Ok(d.as_millis() as i64)
        }
        other => Err(Error::config(format!(
            "key 'base_time': expected an RFC 3339 time or milliseconds, found {other}"
        ))),
    }
}

impl kind::Spec for NexmarkSourceSpec {
    fn describe(&self) -> String {
        NexmarkSourceSpec::describe(self)
    }
}

impl kind::SourceSpec for NexmarkSourceSpec {
    fn schema(&self, _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        NexmarkSourceSpec::schema(self)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Source>> {
        NexmarkSourceSpec::create(self, ctx.info(), ctx.output()?.clone())
    }
}

impl NexmarkSourceSpec {
    /// The generator settings, checked; errors name the key.
    pub fn config(&self) -> Result<NexmarkConfig> {
        let positive = |key: &str, v: i64| -> Result<()> {
            if v <= 0 {
                return Err(Error::config(format!(
                    "key '{key}': expected at least 1, found {v}"
                )));
            }
            Ok(())
        };
        if !(self.event_rate.is_finite() && self.event_rate > 0.0) {
            return Err(Error::config(format!(
                "key 'event_rate': expected events per second above 0, found {}",
                self.event_rate
            )));
        }
        if let Some(r) = self.events_per_second
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::config(format!(
                "key 'events_per_second': expected a number above 0, found {r}"
            )));
        }
        positive("batch_size", self.batch_size as i64)?;
        positive("splits", self.splits.unwrap_or(1) as i64)?;
        positive("person_proportion", self.person_proportion as i64)?;
        positive("auction_proportion", self.auction_proportion as i64)?;
        positive("hot_seller_ratio", self.hot_seller_ratio as i64)?;
        positive("hot_auction_ratio", self.hot_auction_ratio as i64)?;
        positive("hot_bidder_ratio", self.hot_bidder_ratio as i64)?;
        positive("num_in_flight_auctions", self.num_in_flight_auctions)?;
        positive("num_active_people", self.num_active_people)?;
        positive(
            "out_of_order_group_size",
            self.out_of_order_group_size as i64,
        )?;
        for (key, v) in [
            ("avg_person_size", self.avg_person_size),
            ("avg_auction_size", self.avg_auction_size),
            ("avg_bid_size", self.avg_bid_size),
        ] {
            if v < 0 {
                return Err(Error::config(format!(
                    "key '{key}': expected bytes, found {v}"
                )));
            }
        }
        let total = self.person_proportion + self.auction_proportion + self.bid_proportion;
        if self.table == NexmarkTable::Bid && self.bid_proportion == 0 {
            return Err(Error::config(
                "key 'bid_proportion': a bid table needs bids (found 0)",
            ));
        }
        if total > 1_000_000 {
            return Err(Error::config(format!(
                "key 'bid_proportion': the proportions add up to {total}; keep them small"
            )));
        }
        Ok(NexmarkConfig {
            seed: self.seed,
            base_time_ms: base_time_ms(&self.base_time)?,
            event_rate: self.event_rate,
            person_proportion: self.person_proportion,
            auction_proportion: self.auction_proportion,
            bid_proportion: self.bid_proportion,
            hot_seller_ratio: self.hot_seller_ratio,
            hot_auction_ratio: self.hot_auction_ratio,
            hot_bidder_ratio: self.hot_bidder_ratio,
            avg_person_size: self.avg_person_size,
            avg_auction_size: self.avg_auction_size,
            avg_bid_size: self.avg_bid_size,
            num_in_flight_auctions: self.num_in_flight_auctions,
            num_active_people: self.num_active_people,
            out_of_order_group_size: self.out_of_order_group_size,
        })
    }

    /// Plan time: checks the options and returns the table's schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        self.config()?;
        Ok(match self.table {
            NexmarkTable::Person => person_schema(),
            NexmarkTable::Auction => auction_schema(),
            NexmarkTable::Bid => bid_schema(),
        })
    }

    /// One running instance.
    pub fn create(&self, info: &TaskInfo, schema: SchemaRef) -> Result<Box<dyn Source>> {
        let config = self.config()?;
        let total = config.person_proportion + config.auction_proportion + config.bid_proportion;
        let share = match self.table {
            NexmarkTable::Person => config.person_proportion,
            NexmarkTable::Auction => config.auction_proportion,
            NexmarkTable::Bid => config.bid_proportion,
        };
        let tables = Arc::new(Tables::new(config.seed));
        Ok(Box::new(NexmarkSource {
            schema,
            table: self.table,
            generator: Generator::new(config, tables)?,
            info: info.clone(),
            default_splits: self.splits.unwrap_or(info.parallelism),
            // Event numbers to look at per batch, so that about `batch_size` rows come out.
            events_per_batch: (self.batch_size as u64 * total).div_ceil(share.max(1)),
            events: self.events,
            rate: self
                .events_per_second
                .map(|r| r / info.parallelism.max(1) as f64),
            splits: None,
            limit: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let events = match self.events {
            Some(n) => format!("{n} events"),
            None => "unbounded".into(),
        };
        format!(
            "nexmark {} source ({events}, {} events/s of event time, seed {})",
            self.table.name(),
            self.event_rate,
            self.seed
        )
    }
}

/// A running Nexmark instance.
struct NexmarkSource {
    schema: SchemaRef,
    table: NexmarkTable,
    generator: Generator,
    info: TaskInfo,
    default_splits: u32,
    events_per_batch: u64,
    events: Option<u64>,
    rate: Option<f64>,
    splits: Option<Splits>,
    limit: Option<RateLimit>,
}

impl NexmarkSource {
    /// The rows of this table among the events `first, first + stride, …` (`n` of them).
    fn rows(&mut self, first: u64, stride: u64, n: u64) -> Result<RecordBatch> {
        let config = self.generator.config().clone();
        let want = self.table.kind();
        let numbers = (0..n)
            .map(|k| first + k * stride)
            .filter(|&e| config.kind(config.event_id(e)) == want);
        let columns = match self.table {
            NexmarkTable::Bid => {
                let mut b = Bids::with_capacity(n as usize);
                for e in numbers {
                    self.generator.bid(e, &mut b);
                }
                b.finish()?
            }
            NexmarkTable::Auction => {
                let mut a = Auctions::with_capacity(
                    (n * config.auction_proportion / config_total(&config)) as usize + 1,
                );
                for e in numbers {
                    self.generator.auction(e, &mut a);
                }
                a.finish()?
            }
            NexmarkTable::Person => {
                let mut p = Persons::with_capacity(
                    (n * config.person_proportion / config_total(&config)) as usize + 1,
                );
                for e in numbers {
                    self.generator.person(e, &mut p);
                }
                p.finish()?
            }
        };
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn config_total(c: &NexmarkConfig) -> u64 {
    (c.person_proportion + c.auction_proportion + c.bid_proportion).max(1)
}

#[async_trait]
impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let splits = Splits::assign(
            &self.info,
            ctx.restored_state(),
            self.default_splits,
            self.events,
        )?;
        if let Some(total) = splits.remaining_all() {
            ctx.metrics().set_total(total);
        }
        self.splits = Some(splits);
        self.limit = self.rate.map(RateLimit::new);
        Ok(())
    }

    async fn next(&mut self, ctx: &mut OperatorContext) -> Result<SourceEvent> {
        let Some(splits) = self.splits.as_mut() else {
            return Err(Error::internal("nexmark: next before open"));
        };
        let i = match splits.next_split() {
            None => return Ok(SourceEvent::Finished),
            Some(Next::Start(i)) => return Ok(SourceEvent::SplitStart(splits.owned[i].id.clone())),
            Some(Next::End(i)) => return Ok(SourceEvent::SplitEnd(splits.owned[i].id.clone())),
            Some(Next::Rows(i)) => i,
        };
        let mut n = self.events_per_batch;
        if let Some(left) = splits.remaining(i) {
            n = n.min(left);
        }
        if let Some(limit) = &mut self.limit {
            match limit.allow(n, tokio::time::Instant::now()) {
                Ok(k) => n = k,
                Err(wait) => return Ok(SourceEvent::Idle(wait)),
            }
            limit.take(n);
        }
        let stride = splits.total as u64;
        let first = splits.owned[i].next;
        let split = splits.owned[i].id.clone();
        splits.owned[i].next = first + n * stride;
        let batch = self.rows(first, stride, n)?;
        ctx.metrics().add_progress(n);
        Ok(SourceEvent::SplitBatch { split, batch })
    }

    async fn snapshot(
        &mut self,
        _barrier: &Barrier,
        _ctx: &mut OperatorContext,
    ) -> Result<StateSnapshot> {
        let mut snap = StateSnapshot::new();
        if let Some(s) = &self.splits {
            s.snapshot(&mut snap)?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> NexmarkSourceSpec {
        serde_norway::from_str(yaml).expect("spec")
    }

    #[test]
    fn options_are_checked_naming_the_key() {
        for (yaml, key) in [
            ("table: bid\nevent_rate: 0", "event_rate"),
            ("table: bid\nbid_proportion: 0", "bid_proportion"),
            ("table: bid\nbase_time: tomorrow", "base_time"),
            ("table: person\nnum_active_people: 0", "num_active_people"),
            ("table: auction\nsplits: 0", "splits"),
        ] {
            let e = spec(yaml).schema().expect_err(yaml);
            assert!(e.report().contains(key), "{yaml}: {}", e.report());
        }
        assert!(serde_norway::from_str::<NexmarkSourceSpec>("table: bids").is_err());
        assert_eq!(spec("table: bid").schema().expect("bid").fields().len(), 7);
    }
}
