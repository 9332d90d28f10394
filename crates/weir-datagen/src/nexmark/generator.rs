//! The Nexmark event generator, column by column.
//!
//! It follows the reference generator of the Nexmark benchmark (the `nexmark-flink` project's
//! `NexmarkGenerator`, `PersonGenerator`, `AuctionGenerator`, `BidGenerator`, `PriceGenerator`
//! and `StringsGenerator`): the same event kinds in the same proportions (1 person, 3 auctions,
//! 46 bids in every 50 events by default), the same id arithmetic (hot sellers, hot bidders and
//! hot auctions; new auctions and people appear as they are generated), the same value
//! distributions drawn in the same order from the same random number generator
//! (`SplittableRandom`), and event time advancing by a fixed delay per event.
//!
//! Where it differs, so that every event is a pure function of (seed, event number):
//! - each event draws from its own `SplittableRandom` seeded from the seed and the event id (the
//!   reference shares one unseeded generator per split), and the 1 MiB string that `extra` columns
//!   are cut from, the hot URLs and the channel table come from the seed;
//! - there is one timeline: event *n* has event time `base_time + n × 1e6 / event_rate` µs whatever
//!   the parallelism (the reference runs one timeline per parallel split);
//! - bidders are `person id + 1000` once (the reference's `BidGenerator` adds 1000 twice).

use crate::random::{SplittableRandom, row_seed};
use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::buffer::OffsetBuffer;
use std::sync::Arc;
use weir_types::{Error, Result};

/// The first ids, as in the reference (so queries find matches even on small runs).
pub(crate) const FIRST_PERSON_ID: i64 = 1000;
pub(crate) const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i32 = 5;
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const HOT_SELLER_RATIO: i64 = 100;
const HOT_AUCTION_RATIO: i64 = 100;
const HOT_BIDDER_RATIO: i64 = 100;
const HOT_CHANNELS_RATIO: i32 = 2;
const CHANNELS_NUMBER: usize = 10_000;
const MIN_STRING_LENGTH: i32 = 3;
const REUSABLE_EXTRA_LEN: usize = 1024 * 1024;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// Streams of [`row_seed`], one per use.
const STREAM_EVENT: u64 = 0;
const STREAM_TABLES: u64 = 1;

/// The event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new person.
    Person,
    /// A new auction.
    Auction,
    /// A bid on an auction.
    Bid,
}

/// The generator's settings (the reference's `NexmarkConfiguration`, with its defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Event time of event 0, milliseconds since the epoch.
    pub base_time_ms: i64,
    /// Events per second of event time.
    pub event_rate: f64,
    /// Persons per `total` events.
    pub person_proportion: u64,
    /// Auctions per `total` events.
    pub auction_proportion: u64,
    /// Bids per `total` events.
    pub bid_proportion: u64,
    /// 1 in this many auctions is by a random seller; the others by a hot seller.
    pub hot_seller_ratio: i32,
    /// 1 in this many bids is on a random auction; the others on a hot auction.
    pub hot_auction_ratio: i32,
    /// 1 in this many bids is by a random bidder; the others by a hot bidder.
    pub hot_bidder_ratio: i32,
    /// Average bytes of a person (its `extra` fills up to it).
    pub avg_person_size: i32,
    /// Average bytes of an auction.
    pub avg_auction_size: i32,
    /// Average bytes of a bid.
    pub avg_bid_size: i32,
    /// Auctions still open that bids choose from.
    pub num_in_flight_auctions: i64,
    /// People that sellers and bidders are chosen from.
    pub num_active_people: i64,
    /// Events are shuffled within groups of this many (1: in order).
    pub out_of_order_group_size: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            seed: 0,
            base_time_ms: 1_704_067_200_000,
            event_rate: 10_000.0,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            hot_seller_ratio: 4,
            hot_auction_ratio: 2,
            hot_bidder_ratio: 4,
            avg_person_size: 200,
            avg_auction_size: 500,
            avg_bid_size: 100,
            num_in_flight_auctions: 100,
            num_active_people: 1000,
            out_of_order_group_size: 1,
        }
    }
}

impl NexmarkConfig {
    fn total(&self) -> u64 {
        self.person_proportion + self.auction_proportion + self.bid_proportion
    }

    fn inter_event_delay_us(&self) -> f64 {
        1_000_000.0 / self.event_rate
    }

    /// The id of the `n`-th event generated (shuffled within out-of-order groups).
    pub fn event_id(&self, n: u64) -> u64 {
        let g = self.out_of_order_group_size;
        if g <= 1 {
            return n;
        }
        let base = (n / g) * g;
        base + (n.wrapping_mul(953)) % g
    }

    /// The event time (ms) of the event with id `id`.
    pub fn timestamp(&self, id: u64) -> i64 {
        self.base_time_ms + ((id as f64 * self.inter_event_delay_us()) as i64) / 1000
    }

    /// What kind the event with id `id` is.
    pub fn kind(&self, id: u64) -> EventKind {
        let rem = id % self.total();
        if rem < self.person_proportion {
            EventKind::Person
        } else if rem < self.person_proportion + self.auction_proportion {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    fn last_base0_person_id(&self, id: u64) -> i64 {
        let total = self.total();
        let epoch = (id / total) as i64;
        let mut offset = id % total;
        if offset >= self.person_proportion {
            offset = self.person_proportion - 1;
        }
        epoch * self.person_proportion as i64 + offset as i64
    }

    fn last_base0_auction_id(&self, id: u64) -> i64 {
        let total = self.total();
        let mut epoch = (id / total) as i64;
        let mut offset = (id % total) as i64;
        let (pp, ap) = (
            self.person_proportion as i64,
            self.auction_proportion as i64,
        );
        if offset < pp {
            epoch -= 1;
            offset = ap - 1;
        } else if offset >= pp + ap {
            offset = ap - 1;
        } else {
            offset -= pp;
        }
        epoch * ap + offset
    }

    fn next_base0_person_id(&self, id: u64, r: &mut SplittableRandom) -> i64 {
        let num_people = self.last_base0_person_id(id) + 1;
        let active = num_people.min(self.num_active_people);
        let n = r.next_long_below(active + PERSON_ID_LEAD);
        num_people - active + n
    }

    fn next_base0_auction_id(&self, id: u64, r: &mut SplittableRandom) -> i64 {
        let max_auction = self.last_base0_auction_id(id);
        let min_auction = (max_auction - self.num_in_flight_auctions).max(0);
        min_auction + r.next_long_below(max_auction - min_auction + 1 + AUCTION_ID_LEAD)
    }

    fn next_auction_length_ms(&self, n: u64, r: &mut SplittableRandom, timestamp: i64) -> i64 {
        let current = self.event_id(n);
        let events_for_auctions =
            (self.num_in_flight_auctions as u64 * self.total()) / self.auction_proportion.max(1);
        let future_auction = self.timestamp(current + events_for_auctions);
        let horizon = future_auction - timestamp;
        1 + r.next_long_below((horizon * 2).max(1))
    }
}

/// Tables shared by the events of one generator: made once from the seed.
#[derive(Debug)]
pub struct Tables {
    /// The string every `extra` is a slice of.
    extra: Vec<u8>,
    hot_urls: [String; 4],
    channels: Vec<(String, String)>,
}

/// `StringsGenerator.nextString(random, maxLength, special)` into `out` (trimmed of `special`
/// spaces at both ends when `special` is a space, as Java's `trim` does).
fn next_string(r: &mut SplittableRandom, max_length: i32, special: u8, out: &mut Vec<u8>) {
    let len = MIN_STRING_LENGTH + r.next_below(max_length - MIN_STRING_LENGTH);
    let start = out.len();
    for _ in 0..len {
        if r.next_below(13) == 0 {
            out.push(special);
        } else {
            out.push(b'a' + r.next_below(26) as u8);
        }
    }
    if special == b' ' {
        while out.len() > start && out[out.len() - 1] == b' ' {
            out.pop();
        }
        let lead = out[start..].iter().take_while(|&&b| b == b' ').count();
        if lead > 0 {
            out.drain(start..start + lead);
        }
    }
}

/// `StringsGenerator.nextExactString` without the reusable string: six characters per `nextInt`,
/// `'a' + rnd % 26` with Java's signed remainder (so some characters fall below `'a'`, as there).
fn exact_string(r: &mut SplittableRandom, length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(length);
    let mut rnd: i32 = 0;
    let mut n = 0;
    for _ in 0..length {
        if n == 0 {
            rnd = r.next_i32();
            n = 6;
        }
        out.push((b'a' as i32 + rnd % 26) as u8);
        rnd /= 26;
        n -= 1;
    }
    out
}

fn base_url(r: &mut SplittableRandom) -> String {
    let mut s = b"https://www.nexmark.com/".to_vec();
    for _ in 0..3 {
        next_string(r, 5, b'_', &mut s);
        s.push(b'/');
    }
    s.extend_from_slice(b"item.htm?query=1");
    String::from_utf8_lossy(&s).into_owned()
}

impl Tables {
    /// The tables for `seed`.
    pub fn new(seed: u64) -> Tables {
        let mut r = SplittableRandom::new(row_seed(seed, STREAM_TABLES, 0));
        let extra = exact_string(&mut r, REUSABLE_EXTRA_LEN);
        let hot_urls = [
            base_url(&mut r),
            base_url(&mut r),
            base_url(&mut r),
            base_url(&mut r),
        ];
        let channels = (0..CHANNELS_NUMBER)
            .map(|i| {
                let mut url = base_url(&mut r);
                if r.next_below(10) > 0 {
                    url.push_str(&format!(
                        "&channel_id={}",
                        (i as i32).reverse_bits().wrapping_abs()
                    ));
                }
                (format!("channel-{i}"), url)
            })
            .collect();
        Tables {
            extra,
            hot_urls,
            channels,
        }
    }

    /// `StringsGenerator.nextExtra`: a slice of the shared string making the event `avg` bytes
    /// on average.
    fn next_extra(&self, r: &mut SplittableRandom, current: i32, avg: i32) -> &[u8] {
        if current > avg {
            return &[];
        }
        let desired = avg - current;
        let delta = (desired as f64 * 0.2).round() as i32;
        let min = desired - delta;
        let size = (min
            + if delta == 0 {
                0
            } else {
                r.next_below(2 * delta)
            }) as usize;
        if size >= self.extra.len() / 2 {
            return &[];
        }
        let offset = r.next_below((self.extra.len() - size) as i32) as usize;
        &self.extra[offset..offset + size]
    }
}

/// `PriceGenerator.nextPrice`.
fn next_price(r: &mut SplittableRandom) -> i64 {
    (10f64.powf(r.next_f64() * 6.0) * 100.0 + 0.5).floor() as i64
}

/// A Utf8 column being built: one values buffer, one offsets buffer, no allocation per row.
#[derive(Debug, Default)]
struct Text {
    offsets: Vec<i32>,
    values: Vec<u8>,
}

impl Text {
    fn with_capacity(rows: usize, bytes: usize) -> Text {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Text {
            offsets,
            values: Vec::with_capacity(bytes),
        }
    }

    fn push(&mut self, s: &[u8]) {
        self.values.extend_from_slice(s);
        self.end_row();
    }

    fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> Result<ArrayRef> {
        let offsets = OffsetBuffer::new(self.offsets.into());
        Ok(Arc::new(StringArray::try_new(
            offsets,
            self.values.into(),
            None,
        )?))
    }
}

fn ts_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v))
}

/// Columns of the bids of a batch.
#[derive(Debug)]
pub struct Bids {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: Text,
    url: Text,
    date_time: Vec<i64>,
    extra: Text,
}

/// Columns of the auctions of a batch.
#[derive(Debug)]
pub struct Auctions {
    id: Vec<i64>,
    item_name: Text,
    description: Text,
    initial_bid: Vec<i64>,
    reserve: Vec<i64>,
    date_time: Vec<i64>,
    expires: Vec<i64>,
    seller: Vec<i64>,
    category: Vec<i64>,
    extra: Text,
}

/// Columns of the persons of a batch.
#[derive(Debug)]
pub struct Persons {
    id: Vec<i64>,
    name: Text,
    email_address: Text,
    credit_card: Text,
    city: Text,
    state: Text,
    date_time: Vec<i64>,
    extra: Text,
}

impl Bids {
    /// Room for `rows` bids.
    pub fn with_capacity(rows: usize) -> Bids {
        Bids {
            auction: Vec::with_capacity(rows),
            bidder: Vec::with_capacity(rows),
            price: Vec::with_capacity(rows),
            channel: Text::with_capacity(rows, rows * 8),
            url: Text::with_capacity(rows, rows * 90),
            date_time: Vec::with_capacity(rows),
            extra: Text::with_capacity(rows, rows * 70),
        }
    }

    /// The columns, in the order of [`super::bid_schema`].
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Int64Array::from(self.auction)),
            Arc::new(Int64Array::from(self.bidder)),
            Arc::new(Int64Array::from(self.price)),
            self.channel.finish()?,
            self.url.finish()?,
            ts_array(self.date_time),
            self.extra.finish()?,
        ])
    }
}

impl Auctions {
    /// Room for `rows` auctions.
    pub fn with_capacity(rows: usize) -> Auctions {
        Auctions {
            id: Vec::with_capacity(rows),
            item_name: Text::with_capacity(rows, rows * 12),
            description: Text::with_capacity(rows, rows * 50),
            initial_bid: Vec::with_capacity(rows),
            reserve: Vec::with_capacity(rows),
            date_time: Vec::with_capacity(rows),
            expires: Vec::with_capacity(rows),
            seller: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            extra: Text::with_capacity(rows, rows * 400),
        }
    }

    /// The columns, in the order of [`super::auction_schema`].
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Int64Array::from(self.id)),
            self.item_name.finish()?,
            self.description.finish()?,
            Arc::new(Int64Array::from(self.initial_bid)),
            Arc::new(Int64Array::from(self.reserve)),
            ts_array(self.date_time),
            ts_array(self.expires),
            Arc::new(Int64Array::from(self.seller)),
            Arc::new(Int64Array::from(self.category)),
            self.extra.finish()?,
        ])
    }
}

impl Persons {
    /// Room for `rows` persons.
    pub fn with_capacity(rows: usize) -> Persons {
        Persons {
            id: Vec::with_capacity(rows),
            name: Text::with_capacity(rows, rows * 12),
            email_address: Text::with_capacity(rows, rows * 12),
            credit_card: Text::with_capacity(rows, rows * 19),
            city: Text::with_capacity(rows, rows * 8),
            state: Text::with_capacity(rows, rows * 2),
            date_time: Vec::with_capacity(rows),
            extra: Text::with_capacity(rows, rows * 150),
        }
    }

    /// The columns, in the order of [`super::person_schema`].
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Int64Array::from(self.id)),
            self.name.finish()?,
            self.email_address.finish()?,
            self.credit_card.finish()?,
            self.city.finish()?,
            self.state.finish()?,
            ts_array(self.date_time),
            self.extra.finish()?,
        ])
    }
}

/// Makes events into column builders.
#[derive(Debug)]
pub struct Generator {
    config: NexmarkConfig,
    tables: Arc<Tables>,
    /// Scratch for strings that are trimmed or measured before they are stored.
    scratch: Vec<u8>,
}

impl Generator {
    /// A generator for `config` over `tables` (made with the same seed).
    pub fn new(config: NexmarkConfig, tables: Arc<Tables>) -> Result<Generator> {
        if config.total() == 0 || config.auction_proportion == 0 || config.person_proportion == 0 {
            return Err(Error::config(
                "the Nexmark proportions need at least one person and one auction",
            ));
        }
        Ok(Generator {
            config,
            tables,
            scratch: Vec::with_capacity(256),
        })
    }

    /// The settings.
    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    fn random(&self, id: u64) -> SplittableRandom {
        SplittableRandom::new(row_seed(self.config.seed, STREAM_EVENT, id))
    }

    /// Appends the bid of event `n` (whose id must be a bid) to `out`.
    pub fn bid(&mut self, n: u64, out: &mut Bids) {
        let c = &self.config;
        let id = c.event_id(n);
        let timestamp = c.timestamp(id);
        let mut r = self.random(id);
        let auction = if r.next_below(c.hot_auction_ratio) > 0 {
            (c.last_base0_auction_id(id) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            c.next_base0_auction_id(id, &mut r)
        } + FIRST_AUCTION_ID;
        let bidder = if r.next_below(c.hot_bidder_ratio) > 0 {
            (c.last_base0_person_id(id) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            c.next_base0_person_id(id, &mut r)
        } + FIRST_PERSON_ID;
        let price = next_price(&mut r);
        let t = &self.tables;
        if r.next_below(HOT_CHANNELS_RATIO) > 0 {
            let i = r.next_below(HOT_CHANNELS.len() as i32) as usize;
            out.channel.push(HOT_CHANNELS[i].as_bytes());
            out.url.push(t.hot_urls[i].as_bytes());
        } else {
            let (channel, url) = &t.channels[r.next_below(CHANNELS_NUMBER as i32) as usize];
            out.channel.push(channel.as_bytes());
            out.url.push(url.as_bytes());
        }
        out.extra.push(t.next_extra(&mut r, 32, c.avg_bid_size));
        out.auction.push(auction);
        out.bidder.push(bidder);
        out.price.push(price);
        out.date_time.push(timestamp);
    }

    /// Appends the auction of event `n` (whose id must be an auction) to `out`.
    pub fn auction(&mut self, n: u64, out: &mut Auctions) {
        let c = &self.config;
        let id = c.event_id(n);
        let timestamp = c.timestamp(id);
        let mut r = self.random(id);
        let auction_id = c.last_base0_auction_id(id) + FIRST_AUCTION_ID;
        let seller = if r.next_below(c.hot_seller_ratio) > 0 {
            (c.last_base0_person_id(id) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            c.next_base0_person_id(id, &mut r)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + r.next_below(NUM_CATEGORIES) as i64;
        let initial_bid = next_price(&mut r);
        let expires = timestamp + c.next_auction_length_ms(n, &mut r, timestamp);
        let name_start = out.item_name.values.len();
        next_string(&mut r, 20, b' ', &mut out.item_name.values);
        let name_len = out.item_name.values.len() - name_start;
        out.item_name.end_row();
        let desc_start = out.description.values.len();
        next_string(&mut r, 100, b' ', &mut out.description.values);
        let desc_len = out.description.values.len() - desc_start;
        out.description.end_row();
        let reserve = initial_bid + next_price(&mut r);
        let current = 8 + name_len as i32 + desc_len as i32 + 8 + 8 + 8 + 8 + 8;
        out.extra
            .push(self.tables.next_extra(&mut r, current, c.avg_auction_size));
        out.id.push(auction_id);
        out.initial_bid.push(initial_bid);
        out.reserve.push(reserve);
        out.date_time.push(timestamp);
        out.expires.push(expires);
        out.seller.push(seller);
        out.category.push(category);
    }

    /// Appends the person of event `n` (whose id must be a person) to `out`.
    pub fn person(&mut self, n: u64, out: &mut Persons) {
        let c = &self.config;
        let id = c.event_id(n);
        let timestamp = c.timestamp(id);
        let mut r = self.random(id);
        let person_id = c.last_base0_person_id(id) + FIRST_PERSON_ID;
        let first = FIRST_NAMES[r.next_below(FIRST_NAMES.len() as i32) as usize];
        let last = LAST_NAMES[r.next_below(LAST_NAMES.len() as i32) as usize];
        let name_len = first.len() + 1 + last.len();
        out.name.values.extend_from_slice(first.as_bytes());
        out.name.values.push(b' ');
        out.name.values.extend_from_slice(last.as_bytes());
        out.name.end_row();
        let s = &mut self.scratch;
        s.clear();
        next_string(&mut r, 7, b' ', s);
        s.push(b'@');
        next_string(&mut r, 5, b' ', s);
        s.extend_from_slice(b".com");
        let email_len = s.len();
        out.email_address.push(s);
        let card_start = out.credit_card.values.len();
        for i in 0..4 {
            if i > 0 {
                out.credit_card.values.push(b' ');
            }
            let v = r.next_below(10_000) as u16;
            out.credit_card.values.extend_from_slice(&[
                b'0' + (v / 1000) as u8,
                b'0' + (v / 100 % 10) as u8,
                b'0' + (v / 10 % 10) as u8,
                b'0' + (v % 10) as u8,
            ]);
        }
        let card_len = out.credit_card.values.len() - card_start;
        out.credit_card.end_row();
        let city = US_CITIES[r.next_below(US_CITIES.len() as i32) as usize];
        let state = US_STATES[r.next_below(US_STATES.len() as i32) as usize];
        out.city.push(city.as_bytes());
        out.state.push(state.as_bytes());
        let current = (8 + name_len + email_len + card_len + city.len() + state.len()) as i32;
        out.extra
            .push(self.tables.next_extra(&mut r, current, c.avg_person_size));
        out.id.push(person_id);
        out.date_time.push(timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn generator() -> Generator {
        let config = NexmarkConfig::default();
        Generator::new(config, Arc::new(Tables::new(0))).expect("generator")
    }

    #[test]
    fn kinds_follow_the_proportions() {
        let c = NexmarkConfig::default();
        let mut counts = [0; 3];
        for id in 0..50_000 {
            counts[c.kind(id) as usize] += 1;
        }
        assert_eq!(counts, [1_000, 3_000, 46_000]);
        assert_eq!(c.kind(0), EventKind::Person);
        assert_eq!(c.kind(1), EventKind::Auction);
        assert_eq!(c.kind(4), EventKind::Bid);
    }

    #[test]
    fn event_time_advances_at_the_event_rate() {
        let c = NexmarkConfig::default();
        // 10 000 events per second: 10 per millisecond.
        assert_eq!(c.timestamp(0), c.base_time_ms);
        assert_eq!(c.timestamp(9), c.base_time_ms);
        assert_eq!(c.timestamp(10), c.base_time_ms + 1);
        assert_eq!(c.timestamp(10_000), c.base_time_ms + 1_000);
    }

    #[test]
    fn ids_are_dense_and_bids_point_at_existing_things() -> Result<()> {
        let mut g = generator();
        let c = g.config().clone();
        let (mut persons, mut auctions, mut bids) = (
            Persons::with_capacity(100),
            Auctions::with_capacity(300),
            Bids::with_capacity(5000),
        );
        for n in 0..5_000 {
            match c.kind(c.event_id(n)) {
                EventKind::Person => g.person(n, &mut persons),
                EventKind::Auction => g.auction(n, &mut auctions),
                EventKind::Bid => g.bid(n, &mut bids),
            }
        }
        let p = persons.finish()?;
        let a = auctions.finish()?;
        let b = bids.finish()?;
        let pid = p[0].as_primitive::<Int64Type>();
        assert_eq!(pid.values().to_vec(), (1000..1100).collect::<Vec<_>>());
        let aid = a[0].as_primitive::<Int64Type>();
        assert_eq!(aid.values().to_vec(), (1000..1300).collect::<Vec<_>>());
        let seller = a[7].as_primitive::<Int64Type>();
        assert!(seller.values().iter().all(|s| (1000..1110).contains(s)));
        let category = a[8].as_primitive::<Int64Type>();
        assert!(category.values().iter().all(|c| (10..15).contains(c)));
        let auction = b[0].as_primitive::<Int64Type>();
        assert!(auction.values().iter().all(|x| (1000..1310).contains(x)));
        let price = b[2].as_primitive::<Int64Type>();
        assert!(
            price
                .values()
                .iter()
                .all(|x| (100..=100_000_000).contains(x))
        );
        // Half the bids go to hot auctions: multiples of 100 above the first id.
        let hot = auction
            .values()
            .iter()
            .filter(|a| (*a - 1000) % 100 == 0)
            .count();
        assert!(hot * 2 > auction.len(), "{hot} of {}", auction.len());
        // Extras fill a bid up to about 100 bytes: 68 ± 14 characters.
        let extra = b[6].as_string::<i32>();
        assert!(extra.iter().flatten().all(|e| (54..82).contains(&e.len())));
        let email = p[2].as_string::<i32>();
        assert!(
            email
                .iter()
                .flatten()
                .all(|e| e.ends_with(".com") && e.contains('@'))
        );
        let card = p[3].as_string::<i32>();
        assert!(card.iter().flatten().all(|c| c.len() == 19));
        assert_eq!(b[5].null_count(), 0);
        Ok(())
    }

    #[test]
    fn an_event_is_the_same_whoever_makes_it() -> Result<()> {
        let mut a = generator();
        let mut b = generator();
        let mut x = Bids::with_capacity(2);
        let mut y = Bids::with_capacity(1);
        a.bid(4, &mut x);
        a.bid(7, &mut x);
        b.bid(7, &mut y);
        let (x, y) = (x.finish()?, y.finish()?);
        for (cx, cy) in x.iter().zip(&y) {
            assert_eq!(cx.slice(1, 1).as_ref(), cy.as_ref());
        }
        Ok(())
    }

    #[test]
    fn next_string_trims_like_java() {
        let mut out = Vec::new();
        for seed in 0..200 {
            out.clear();
            next_string(&mut SplittableRandom::new(seed), 20, b' ', &mut out);
            assert!(out.len() <= 19);
            assert!(out.first() != Some(&b' ') && out.last() != Some(&b' '));
        }
    }
}
