//! Keyed state beyond a memory budget: one keyed aggregation (count, sum and a 32-byte payload per
//! key, updated once per row) run over three stores, to choose how weir's state spills.
//!
//! - `memory`: a hash map, no budget (the reference).
//! - `arrow-spill`: weir's layout (state per key group, 128 key groups); when the resident key
//!   groups exceed the budget, the least recently used ones are written to a local Arrow IPC file
//!   and dropped; a batch that touches a spilled key group reads it back whole first.
//! - `redb`: an embedded B-tree store (redb) on a local file, its page cache set to the budget;
//!   each input batch is one write transaction (get, update, insert per row), non-durable but for
//!   every 64th (`Eventual`, without which redb never reuses freed pages and its file grows
//!   without bound).
//! - `arrow-runs`: partial aggregates (mergeable, as DataFusion's accumulators are) in a hash map
//!   up to the budget; when it is full, it is sorted by (key group, key) and written as a run, an
//!   Arrow IPC file of batches of 64 Ki rows, and the map starts empty. Reading the state (a window
//!   firing) merges the runs streaming, one batch of each run in memory (DataFusion's external
//!   aggregation works so).
//!
//! The time includes reading every key's final value once at the end (what a window firing or a
//! final emit does), so stores that defer work to the read pay for it.
//! Rows come in batches of 8192 (as operators see them), grouped by key group before they are
//! applied, so a spilled key group is read once per batch, not once per row. Keys are uniform
//! random or Zipf-skewed (s = 1) over `--keys` ids, scrambled so hot keys spread over key groups.
//! Prints one JSON line: rows per second and the peak RSS (`VmHWM`).
//!
//! ```text
//! state-spill --store redb --keys 2000000 --rows 4000000 --dist uniform --budget-mib 32 --dir /tmp/s
//! ```

use anyhow::{Context, Result};
use arrow::array::{Array, FixedSizeBinaryArray, Int64Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use clap::Parser;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const KEY_GROUPS: usize = 128;
const BATCH: usize = 8192;
const PAD: usize = 32;
/// Bytes one resident entry costs in a hash map (key, count, sum, payload, table overhead).
const ENTRY_BYTES: usize = 8 + 8 + 8 + PAD + 16;

#[derive(Parser)]
struct Args {
    /// memory, arrow-spill or redb.
    #[arg(long)]
    store: String,
    #[arg(long, default_value_t = 2_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 4_000_000)]
    rows: u64,
    /// uniform or zipf.
    #[arg(long, default_value = "uniform")]
    dist: String,
    #[arg(long, default_value_t = 32)]
    budget_mib: usize,
    /// Where spilled state goes (a local directory).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Stop feeding rows after this long (a store too slow to finish reports the rows it took).
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
}

#[derive(Clone, Copy)]
struct Agg {
    count: u64,
    sum: i64,
    pad: [u8; PAD],
}

impl Agg {
    fn update(&mut self, v: i64) {
        self.count += 1;
        self.sum += v;
        self.pad[(self.count % PAD as u64) as usize] ^= v as u8;
    }

    fn to_bytes(self) -> [u8; 16 + PAD] {
        let mut b = [0u8; 16 + PAD];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..16].copy_from_slice(&self.sum.to_le_bytes());
        b[16..].copy_from_slice(&self.pad);
        b
    }

    fn from_bytes(b: &[u8]) -> Agg {
        let mut pad = [0u8; PAD];
        pad.copy_from_slice(&b[16..16 + PAD]);
        Agg {
            count: u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            sum: i64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            pad,
        }
    }
}

const EMPTY: Agg = Agg {
    count: 0,
    sum: 0,
    pad: [0; PAD],
};

/// splitmix64: the row's random numbers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn key_of(args: &Args, row: u64) -> u64 {
    let r = mix(args.seed ^ row.wrapping_mul(0x2545f4914f6cdd1d));
    let rank = match args.dist.as_str() {
        // Zipf(s = 1) by inverting the continuous approximation of its CDF.
        "zipf" => {
            let u = (r >> 11) as f64 / (1u64 << 53) as f64;
            (((args.keys as f64 + 1.0).ln() * u).exp() as u64).saturating_sub(1)
        }
        _ => r % args.keys,
    };
    // Scramble the rank so hot keys land in every key group.
    mix(rank ^ 0x5bd1e995) % (args.keys * 16)
}

fn key_group(key: u64) -> usize {
    (mix(key) % KEY_GROUPS as u64) as usize
}

trait Store {
    /// Applies `rows` (key, value), grouped by key group.
    fn apply(&mut self, groups: &[Vec<(u64, i64)>]) -> Result<()>;
    /// (keys, sum of counts), to check that every store computed the same.
    fn check(&mut self) -> Result<(u64, u64)>;
}

struct Memory(HashMap<u64, Agg>);

impl Store for Memory {
    fn apply(&mut self, groups: &[Vec<(u64, i64)>]) -> Result<()> {
        for rows in groups {
            for &(k, v) in rows {
                self.0.entry(k).or_insert(EMPTY).update(v);
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(u64, u64)> {
        Ok((self.0.len() as u64, self.0.values().map(|a| a.count).sum()))
    }
}

enum Group {
    Resident(HashMap<u64, Agg>),
    Spilled(PathBuf),
}

struct ArrowSpill {
    groups: Vec<Group>,
    /// Last use of each key group (batch number), for LRU eviction.
    used: Vec<u64>,
    budget: usize,
    dir: PathBuf,
    tick: u64,
    spills: u64,
    reloads: u64,
}

impl ArrowSpill {
    fn resident_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| match g {
                Group::Resident(m) => m.capacity() * ENTRY_BYTES,
                Group::Spilled(_) => 0,
            })
            .sum()
    }

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::UInt64, false),
            Field::new("count", DataType::UInt64, false),
            Field::new("sum", DataType::Int64, false),
            Field::new("pad", DataType::FixedSizeBinary(PAD as i32), false),
        ]))
    }

    fn spill(&mut self, kg: usize) -> Result<()> {
        let Group::Resident(m) = &self.groups[kg] else {
            return Ok(());
        };
        let keys: UInt64Array = m.keys().copied().collect();
        let counts: UInt64Array = m.values().map(|a| a.count).collect();
        let sums: Int64Array = m.values().map(|a| a.sum).collect();
        let pads = FixedSizeBinaryArray::try_from_iter(m.values().map(|a| a.pad))?;
        let batch = RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(keys),
                Arc::new(counts),
                Arc::new(sums),
                Arc::new(pads),
            ],
        )?;
        let path = self.dir.join(format!("kg-{kg}.arrow"));
        let file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &Self::schema())?;
        w.write(&batch)?;
        w.finish()?;
        self.groups[kg] = Group::Spilled(path);
        self.spills += 1;
        Ok(())
    }

    fn load(&mut self, kg: usize) -> Result<()> {
        let Group::Spilled(path) = &self.groups[kg] else {
            return Ok(());
        };
        let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
        let mut m = HashMap::new();
        for batch in FileReader::try_new(std::io::BufReader::new(file), None)? {
            let batch = batch?;
            let col = |i: usize| batch.column(i).clone();
            let keys = col(0);
            let keys = keys
                .as_any()
                .downcast_ref::<UInt64Array>()
                .context("keys")?;
            let counts = col(1);
            let counts = counts
                .as_any()
                .downcast_ref::<UInt64Array>()
                .context("counts")?;
            let sums = col(2);
            let sums = sums.as_any().downcast_ref::<Int64Array>().context("sums")?;
            let pads = col(3);
            let pads = pads
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .context("pads")?;
            m.reserve(keys.len());
            for i in 0..keys.len() {
                let mut pad = [0u8; PAD];
                pad.copy_from_slice(pads.value(i));
                m.insert(
                    keys.value(i),
                    Agg {
                        count: counts.value(i),
                        sum: sums.value(i),
                        pad,
                    },
                );
            }
        }
        self.groups[kg] = Group::Resident(m);
        self.reloads += 1;
        Ok(())
    }

    /// Spills least recently used key groups (not `keep`) until under the budget.
    fn evict(&mut self, keep: usize) -> Result<()> {
        while self.resident_bytes() > self.budget {
            let victim = (0..KEY_GROUPS)
                .filter(|&kg| kg != keep && matches!(self.groups[kg], Group::Resident(_)))
                .min_by_key(|&kg| self.used[kg]);
            match victim {
                Some(kg) => self.spill(kg)?,
                None => break,
            }
        }
        Ok(())
    }
}

impl Store for ArrowSpill {
    fn apply(&mut self, groups: &[Vec<(u64, i64)>]) -> Result<()> {
        self.tick += 1;
        for (kg, rows) in groups.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            self.load(kg)?;
            self.used[kg] = self.tick;
            if let Group::Resident(m) = &mut self.groups[kg] {
                for &(k, v) in rows {
                    m.entry(k).or_insert(EMPTY).update(v);
                }
            }
            self.evict(kg)?;
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(u64, u64)> {
        let (mut keys, mut count) = (0, 0);
        for kg in 0..KEY_GROUPS {
            self.load(kg)?;
            if let Group::Resident(m) = &self.groups[kg] {
                keys += m.len() as u64;
                count += m.values().map(|a| a.count).sum::<u64>();
            }
            self.spill(kg)?;
        }
        Ok((keys, count))
    }
}

/// Rows per batch of a spilled run.
const RUN_BATCH: usize = 64 * 1024;

struct ArrowRuns {
    map: HashMap<u64, Agg>,
    budget: usize,
    dir: PathBuf,
    runs: Vec<PathBuf>,
}

impl ArrowRuns {
    fn spill(&mut self) -> Result<()> {
        let mut rows: Vec<(u64, Agg)> = self.map.drain().collect();
        rows.sort_unstable_by_key(|(k, _)| (key_group(*k), *k));
        let path = self.dir.join(format!("run-{}.arrow", self.runs.len()));
        let file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        let schema = ArrowSpill::schema();
        let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &schema)?;
        for chunk in rows.chunks(RUN_BATCH) {
            let keys: UInt64Array = chunk.iter().map(|(k, _)| *k).collect();
            let counts: UInt64Array = chunk.iter().map(|(_, a)| a.count).collect();
            let sums: Int64Array = chunk.iter().map(|(_, a)| a.sum).collect();
            let pads = FixedSizeBinaryArray::try_from_iter(chunk.iter().map(|(_, a)| a.pad))?;
            w.write(&RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(keys),
                    Arc::new(counts),
                    Arc::new(sums),
                    Arc::new(pads),
                ],
            )?)?;
        }
        w.finish()?;
        self.runs.push(path);
        self.map = HashMap::new();
        Ok(())
    }
}

/// A cursor over one sorted run, one batch in memory.
struct RunCursor {
    reader: FileReader<std::io::BufReader<std::fs::File>>,
    batch: Option<RecordBatch>,
    row: usize,
}

impl RunCursor {
    fn head(&mut self) -> Result<Option<(usize, u64, u64)>> {
        loop {
            if let Some(b) = &self.batch
                && self.row < b.num_rows()
            {
                let keys = b.column(0).as_any().downcast_ref::<UInt64Array>();
                let counts = b.column(1).as_any().downcast_ref::<UInt64Array>();
                let (Some(keys), Some(counts)) = (keys, counts) else {
                    anyhow::bail!("a run has unexpected columns");
                };
                let k = keys.value(self.row);
                return Ok(Some((key_group(k), k, counts.value(self.row))));
            }
            match self.reader.next() {
                Some(b) => {
                    self.batch = Some(b?);
                    self.row = 0;
                }
                None => return Ok(None),
            }
        }
    }
}

impl Store for ArrowRuns {
    fn apply(&mut self, groups: &[Vec<(u64, i64)>]) -> Result<()> {
        for rows in groups {
            for &(k, v) in rows {
                self.map.entry(k).or_insert(EMPTY).update(v);
            }
        }
        if self.map.capacity() * ENTRY_BYTES > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(u64, u64)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if !self.map.is_empty() {
            self.spill()?;
        }
        let mut cursors = Vec::new();
        for p in &self.runs {
            let f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
            cursors.push(RunCursor {
                reader: FileReader::try_new(std::io::BufReader::new(f), None)?,
                batch: None,
                row: 0,
            });
        }
        let mut heap = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some((kg, k, n)) = c.head()? {
                heap.push(Reverse((kg, k, i, n)));
            }
        }
        let (mut keys, mut count, mut last) = (0u64, 0u64, None);
        while let Some(Reverse((kg, k, i, n))) = heap.pop() {
            if last != Some((kg, k)) {
                keys += 1;
                last = Some((kg, k));
            }
            count += n;
            cursors[i].row += 1;
            if let Some((kg, k, n)) = cursors[i].head()? {
                heap.push(Reverse((kg, k, i, n)));
            }
        }
        Ok((keys, count))
    }
}

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("state");

/// The database and the batches applied (every 64th commit is `Eventual`, not `None`: redb
/// reuses the pages freed by non-durable commits only after a durable one).
struct Redb(redb::Database, u64);

impl Store for Redb {
    fn apply(&mut self, groups: &[Vec<(u64, i64)>]) -> Result<()> {
        use redb::ReadableTable;
        let mut tx = self.0.begin_write()?;
        self.1 += 1;
        tx.set_durability(if self.1.is_multiple_of(64) {
            redb::Durability::Eventual
        } else {
            redb::Durability::None
        });
        {
            let mut t = tx.open_table(TABLE)?;
            for rows in groups {
                for &(k, v) in rows {
                    let mut a = match t.get(k)? {
                        Some(b) => Agg::from_bytes(b.value()),
                        None => EMPTY,
                    };
                    a.update(v);
                    t.insert(k, &a.to_bytes()[..])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn check(&mut self) -> Result<(u64, u64)> {
        use redb::{ReadableTable, ReadableTableMetadata};
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut count = 0;
        for e in t.iter()? {
            count += Agg::from_bytes(e?.1.value()).count;
        }
        Ok((t.len()?, count))
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let budget = args.budget_mib << 20;
    let mut store: Box<dyn Store> = match args.store.as_str() {
        "memory" => Box::new(Memory(HashMap::new())),
        "arrow-spill" => Box::new(ArrowSpill {
            groups: (0..KEY_GROUPS)
                .map(|_| Group::Resident(HashMap::new()))
                .collect(),
            used: vec![0; KEY_GROUPS],
            budget,
            dir: args.dir.clone(),
            tick: 0,
            spills: 0,
            reloads: 0,
        }),
        "redb" => {
            let path = args.dir.join("state.redb");
            let _ = std::fs::remove_file(&path);
            Box::new(Redb(
                redb::Builder::new().set_cache_size(budget).create(&path)?,
                0,
            ))
        }
        "arrow-runs" => Box::new(ArrowRuns {
            map: HashMap::new(),
            budget,
            dir: args.dir.clone(),
            runs: Vec::new(),
        }),
        other => anyhow::bail!("unknown store '{other}' (memory, arrow-spill, arrow-runs, redb)"),
    };
    let started = Instant::now();
    let mut groups: Vec<Vec<(u64, i64)>> = vec![Vec::new(); KEY_GROUPS];
    let mut row = 0;
    while row < args.rows && started.elapsed().as_secs_f64() < args.max_seconds {
        for g in &mut groups {
            g.clear();
        }
        let end = (row + BATCH as u64).min(args.rows);
        for r in row..end {
            let k = key_of(&args, r);
            groups[key_group(k)].push((k, (r % 100) as i64));
        }
        store.apply(&groups)?;
        row = end;
    }
    let (keys, counted) = store.check()?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(counted == row, "counted {counted} rows of {row}");
    println!(
        "{{\"store\":\"{}\",\"dist\":\"{}\",\"keys_drawn_from\":{},\"distinct_keys\":{keys},\"rows\":{},\"budget_mib\":{},\"seconds\":{secs:.2},\"rows_per_s\":{:.0},\"peak_rss_mib\":{:.0},\"spill_dir_mib\":{:.0},\"state_in_memory_mib\":{:.0}}}",
        args.store,
        args.dist,
        args.keys,
        row,
        args.budget_mib,
        row as f64 / secs,
        peak_rss_kib() as f64 / 1024.0,
        dir_bytes(&args.dir) as f64 / (1 << 20) as f64,
        (keys as usize * ENTRY_BYTES) as f64 / (1 << 20) as f64,
    );
    Ok(())
}
