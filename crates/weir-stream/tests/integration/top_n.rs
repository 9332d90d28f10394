//! `op: top_n`: the first rows per window, directly over time windows and over the output of an
//! aggregate (Nexmark q5's shape: hopping counts, then the largest count per window with ties),
//! against a row-by-row oracle and across restores at another parallelism.

use crate::common::{Step, run, sorted_table};
use crate::windows::{Script, arb_script, rows, schema, to_steps};
use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_stream::{AggregateSpec, OnLate, Span, TopNSpec, WindowSpec};

fn top(window: WindowSpec, keys: &[&str], order: &[&str], n: usize, ties: bool) -> TopNSpec {
    TopNSpec {
        keys: keys.iter().map(|s| s.to_string()).collect(),
        time: Some("ts".into()),
        window,
        order_by: order.iter().map(|s| s.to_string()).collect(),
        n,
        with_ties: ties,
        rank_column: Some("rank".into()),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
}

#[tokio::test]
async fn top_two_values_per_key_and_tumbling_window() {
    let s = top(
        WindowSpec::Tumbling {
            size: Span(10),
            offset: Span(0),
        },
        &["k"],
        &["v DESC"],
        2,
        false,
    );
    let f = move || s.create(&schema()).expect("create");
    let out = run(
        &f,
        Some(&["k"]),
        2,
        &[
            Step::Rows(rows(&[
                ("a", 1, 5),
                ("a", 2, 9),
                ("a", 3, 7),
                ("b", 4, 1),
                ("a", 12, 3),
            ])),
            Step::Watermark(10),
            Step::Rows(rows(&[("a", 5, 100)])),
        ],
    )
    .await;
    assert_eq!(out.dead.len(), 1, "the row for an emitted window is late");
    let want = "\
+-------------------------+-------------------------+---+-------------------------+---+------+
| window_start            | window_end              | k | ts                      | v | rank |
+-------------------------+-------------------------+---+-------------------------+---+------+
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | a | 1970-01-01T00:00:00.002 | 9 | 1    |
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | a | 1970-01-01T00:00:00.003 | 7 | 2    |
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | b | 1970-01-01T00:00:00.004 | 1 | 1    |
| 1970-01-01T00:00:00.010 | 1970-01-01T00:00:00.020 | a | 1970-01-01T00:00:00.012 | 3 | 1    |
+-------------------------+-------------------------+---+-------------------------+---+------+";
    assert_eq!(out.sorted(), want);
}

/// q5 computed row by row: per hopping window the keys with the most rows (all tied ones).
fn q5_oracle(events: &[(String, i64, i64)], size: i64, slide: i64) -> String {
    let mut counts: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for (k, t, _) in events {
        let mut start = t - t.rem_euclid(slide);
        while start > t - size {
            *counts
                .entry(start)
                .or_default()
                .entry(k.clone())
                .or_default() += 1;
            start -= slide;
        }
    }
    let (mut starts, mut ends, mut keys, mut ns) = (vec![], vec![], vec![], vec![]);
    for (s, per_key) in counts {
        let max = per_key.values().copied().max().unwrap_or(0);
        for (k, n) in per_key {
            if n == max {
                starts.push(s);
                ends.push(s + size);
                keys.push(k);
                ns.push(n);
            }
        }
    }
    let len = ns.len();
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts(), false),
            Field::new("window_end", ts(), false),
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("rank", DataType::UInt64, false),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(starts)) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(ends)),
            Arc::new(StringArray::from(keys)),
            Arc::new(Int64Array::from(ns)),
            Arc::new(UInt64Array::from(vec![1; len])),
        ],
    )
    .expect("oracle");
    sorted_table(&[batch])
}

/// Runs q5's two steps: the counts first (all of them), then the ranking over their output.
async fn q5(steps: &[Step], p: u32, spill: Option<&std::path::Path>) -> crate::common::Output {
    let counts = AggregateSpec {
        keys: vec!["k".into()],
        time: Some("ts".into()),
        window: WindowSpec::Hopping {
            size: Span(30),
            slide: Span(10),
            offset: Span(0),
        },
        aggregates: vec!["count(*) AS n".into()],
        allowed_lateness: Span(0),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    };
    let counts_schema = counts.output_schema(&schema()).expect("schema");
    let c = counts.clone();
    let first = run(
        &move || c.create(&schema()).expect("create"),
        Some(&["k"]),
        p,
        steps,
    )
    .await;
    // The ranking sees the counts in the order they came, with the watermarks in between.
    let mut second_steps: Vec<Step> = first.batches.iter().cloned().map(Step::Rows).collect();
    for s in steps {
        if let Step::Rescale(p) = s {
            second_steps.push(Step::Rescale(*p));
        }
    }
    second_steps.push(Step::Watermark(i64::MAX));
    let mut ranking = top(
        WindowSpec::Column {
            start: "window_start".into(),
            end: "window_end".into(),
        },
        &[],
        &["n DESC"],
        1,
        true,
    );
    ranking.time = None;
    if let Some(dir) = spill {
        ranking.memory_budget = Some("1B".into());
        ranking.spill_dir = Some(dir.to_path_buf());
    }
    let f = move || ranking.create(&counts_schema).expect("create");
    run(&f, Some(&["window_start", "window_end"]), p, &second_steps).await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn hot_items_match_the_oracle_across_rescales((batches, rescales) in arb_script(), p in 1u32..=3, spill in any::<bool>()) {
        let (batches, rescales): Script = (batches, rescales);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, events) = to_steps(&batches, &rescales);
        let dir = tempfile::tempdir().expect("dir");
        let out = rt.block_on(q5(&steps, p, spill.then_some(dir.path())));
        prop_assert!(out.dead.is_empty(), "{:?}", out.dead);
        prop_assert_eq!(out.sorted(), q5_oracle(&events, 30, 10));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Candidates spilled under a 1-byte budget (every window spills, and is ranked one key-group
    /// range at a time) give the same rows as candidates kept in memory, across restores.
    #[test]
    fn top_n_over_its_memory_budget_answers_the_same((batches, rescales) in arb_script(), p in 1u32..=3, n in 1usize..3, ties in any::<bool>()) {
        let (batches, rescales): Script = (batches, rescales);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, _) = to_steps(&batches, &rescales);
        let hopping = WindowSpec::Hopping { size: Span(30), slide: Span(10), offset: Span(0) };
        let free = top(hopping.clone(), &["k"], &["v DESC", "ts"], n, ties);
        let dir = tempfile::tempdir().expect("dir");
        let mut tight = free.clone();
        tight.memory_budget = Some("1B".into());
        tight.spill_dir = Some(dir.path().to_path_buf());
        let a = rt.block_on(run(&move || free.create(&schema()).expect("create"), Some(&["k"]), p, &steps));
        let b = rt.block_on(run(&move || tight.create(&schema()).expect("create"), Some(&["k"]), p, &steps));
        prop_assert!(a.dead.is_empty(), "{:?}", a.dead);
        prop_assert_eq!(&a.dead, &b.dead);
        prop_assert_eq!(a.sorted(), b.sorted());
        let left = std::fs::read_dir(dir.path()).expect("dir").count();
        prop_assert_eq!(left, 0, "every spill file is deleted once its window is emitted");
    }
}
