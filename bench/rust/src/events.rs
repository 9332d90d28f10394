//! The synthetic `events` table used by the benchmarks: its schema, a
//! deterministic batch generator and a Parquet writer.
//!
//! | column     | type              | values                                          |
//! |------------|-------------------|-------------------------------------------------|
//! | `id`       | Int64             | 0, 1, 2, … (row number)                         |
//! | `user_id`  | Int64             | uniform in `0..100_000`                          |
//! | `category` | Utf8              | uniform over [`CATEGORIES`] (8 short strings)    |
//! | `amount`   | Float64           | uniform in `[0, 1000)`                           |
//! | `quantity` | Int32             | uniform in `1..=20`                              |
//! | `ts`       | Timestamp(ms)     | 2024-01-01T00:00Z + 10 ms per row + 0..10 ms jitter |
//! | `note`     | Utf8, nullable    | 10 % null, else 15..=25 lowercase letters        |

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::prng::SplitMix64;

/// The values of `category`; each is equally likely.
pub const CATEGORIES: [&str; 8] = [
    "books", "games", "music", "garden", "toys", "food", "tools", "sports",
];

/// Number of distinct `user_id`s.
pub const USERS: u64 = 100_000;

/// 2024-01-01T00:00:00Z in epoch milliseconds.
pub const TS_START_MS: i64 = 1_704_067_200_000;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 1_000_000;

/// Rows per generated Arrow batch (only affects the writer, not the file layout).
pub const GEN_BATCH_ROWS: usize = 65_536;

/// The Arrow schema of the events table.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("quantity", DataType::Int32, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("note", DataType::Utf8, true),
    ]))
}

/// Produces the events table batch by batch. The rows depend only on the seed
/// and the row index, so the same `(seed, rows)` always gives the same file.
#[derive(Debug)]
pub struct EventGenerator {
    rng: SplitMix64,
    next_id: i64,
    remaining: u64,
    schema: SchemaRef,
}

impl EventGenerator {
    /// A generator of `rows` rows seeded with `seed`.
    pub fn new(seed: u64, rows: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            next_id: 0,
            remaining: rows,
            schema: schema(),
        }
    }

    /// The next batch of at most `max_rows` rows, or `None` when done.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<RecordBatch>, ArrowError> {
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(max_rows);
        if n == 0 {
            return Ok(None);
        }
        let mut id = Vec::with_capacity(n);
        let mut user_id = Vec::with_capacity(n);
        let mut category = StringBuilder::with_capacity(n, n * 6);
        let mut amount = Vec::with_capacity(n);
        let mut quantity = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut note = StringBuilder::with_capacity(n, n * 20);
        let mut letters = String::with_capacity(32);
        for _ in 0..n {
            let row = self.next_id;
            self.next_id += 1;
            id.push(row);
            user_id.push(self.rng.below(USERS) as i64);
            let cat = self.rng.below(CATEGORIES.len() as u64) as usize;
            category.append_value(CATEGORIES[cat]);
            amount.push(self.rng.unit_f64() * 1000.0);
            quantity.push(1 + self.rng.below(20) as i32);
            ts.push(TS_START_MS + row * 10 + self.rng.below(10) as i64);
            if self.rng.below(10) == 0 {
                note.append_null();
            } else {
                letters.clear();
                let len = 15 + self.rng.below(11);
                let mut bits = self.rng.next_u64();
                for i in 0..len {
                    if i % 12 == 11 {
                        bits = self.rng.next_u64();
                    }
                    letters.push(char::from(b'a' + (bits % 26) as u8));
                    bits /= 26;
                }
                note.append_value(&letters);
            }
        }
        self.remaining -= n as u64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Int64Array::from(user_id)),
            Arc::new(category.finish()),
            Arc::new(Float64Array::from(amount)),
            Arc::new(Int32Array::from(quantity)),
            Arc::new(TimestampMillisecondArray::from(ts)),
            Arc::new(note.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map(Some)
    }
}

/// Writer settings for generated files: snappy, [`ROW_GROUP_ROWS`] rows per
/// row group, everything else parquet-rs's defaults (dictionary encoding on,
/// page statistics).
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Writes `rows` generated rows to a Parquet file at `path`; returns the
/// number of row groups written.
pub fn write_parquet(path: &Path, seed: u64, rows: u64) -> Result<usize, ParquetError> {
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(writer_properties()))?;
    let mut generator = EventGenerator::new(seed, rows);
    while let Some(batch) = generator.next_batch(GEN_BATCH_ROWS)? {
        writer.write(&batch)?;
    }
    let metadata = writer.close()?;
    Ok(metadata.num_row_groups())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;

    fn collect(seed: u64, rows: u64, batch: usize) -> Vec<RecordBatch> {
        let mut g = EventGenerator::new(seed, rows);
        let mut out = Vec::new();
        while let Some(b) = g.next_batch(batch).expect("generate") {
            out.push(b);
        }
        out
    }

    #[test]
    fn deterministic_and_sized() {
        let a = collect(7, 10_000, 4096);
        let b = collect(7, 10_000, 4096);
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|b| b.num_rows()).sum::<usize>(), 10_000);
        assert_ne!(a, collect(8, 10_000, 4096));
    }

    #[test]
    fn value_ranges() {
        let batches = collect(1, 50_000, 50_000);
        let b = &batches[0];
        let amount = b.column(3).as_primitive::<Float64Type>();
        assert!(amount.values().iter().all(|v| (0.0..1000.0).contains(v)));
        let note = b.column(6).as_string::<i32>();
        let nulls = note.null_count() as f64 / note.len() as f64;
        assert!((0.08..0.12).contains(&nulls), "null share {nulls}");
        let cat = b.column(2).as_string::<i32>();
        assert!(cat.iter().flatten().all(|c| CATEGORIES.contains(&c)));
    }
}
