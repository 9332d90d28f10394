//! `op: aggregate` over tumbling, hopping, session and column windows: exact results, late rows,
//! allowed lateness, and restore at another parallelism answering as if never stopped.

use crate::common::{Step, run, sorted_table};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_runtime::Operator;
use weir_stream::{AggregateSpec, OnLate, Span, WindowSpec};

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// Rows `(key, time ms, value)`.
pub fn rows(r: &[(&str, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.0))) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from_iter_values(
                r.iter().map(|x| x.1),
            )),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.2))),
        ],
    )
    .expect("rows")
}

fn spec(window: WindowSpec, keys: &[&str], aggs: &[&str]) -> AggregateSpec {
    AggregateSpec {
        keys: keys.iter().map(|s| s.to_string()).collect(),
        time: Some("ts".into()),
        window,
        aggregates: aggs.iter().map(|s| s.to_string()).collect(),
        allowed_lateness: Span(0),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
}

fn factory(spec: AggregateSpec) -> impl Fn() -> Box<dyn Operator> {
    move || spec.create(&schema()).expect("create")
}

fn tumbling(ms: i64) -> WindowSpec {
    WindowSpec::Tumbling {
        size: Span(ms),
        offset: Span(0),
    }
}

fn hopping(size: i64, slide: i64) -> WindowSpec {
    WindowSpec::Hopping {
        size: Span(size),
        slide: Span(slide),
        offset: Span(0),
    }
}

#[tokio::test]
async fn tumbling_counts_and_sums_per_key_when_the_watermark_passes() {
    let f = factory(spec(
        tumbling(10),
        &["k"],
        &["count(*) AS n", "sum(v) AS total"],
    ));
    let script = [
        Step::Rows(rows(&[
            ("a", 1, 1),
            ("b", 2, 10),
            ("a", 9, 2),
            ("a", 12, 4),
        ])),
        Step::Watermark(9),
        Step::Rows(rows(&[("b", 9, 20)])),
        Step::Watermark(10),
        Step::Rows(rows(&[("a", 19, 8)])),
    ];
    let out = run(&f, Some(&["k"]), 1, &script[..2]).await;
    assert_eq!(out.before_finish, 0, "nothing is complete at watermark 9");
    let out = run(&f, Some(&["k"]), 1, &script).await;
    let want = "\
+-------------------------+-------------------------+---+---+-------+
| window_start            | window_end              | k | n | total |
+-------------------------+-------------------------+---+---+-------+
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | a | 2 | 3     |
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | b | 2 | 30    |
| 1970-01-01T00:00:00.010 | 1970-01-01T00:00:00.020 | a | 2 | 12    |
+-------------------------+-------------------------+---+---+-------+";
    assert_eq!(out.sorted(), want);
    assert!(out.dead.is_empty());
}

#[tokio::test]
async fn late_rows_are_dead_letters_and_allowed_lateness_emits_again() {
    let f = factory(spec(tumbling(10), &["k"], &["count(*) AS n"]));
    let script = [
        Step::Rows(rows(&[("a", 1, 1)])),
        Step::Watermark(15),
        Step::Rows(rows(&[("a", 5, 1), ("a", 15, 1)])),
    ];
    let out = run(&f, Some(&["k"]), 1, &script).await;
    assert_eq!(out.dead.len(), 1, "{:?}", out.dead);
    assert!(
        out.dead[0].contains("late: event time 5 ms"),
        "{}",
        out.dead[0]
    );
    let mut s = spec(tumbling(10), &["k"], &["count(*) AS n"]);
    s.allowed_lateness = Span(10);
    let f = factory(s);
    let script = [
        Step::Rows(rows(&[("a", 1, 1)])),
        Step::Watermark(15),
        Step::Rows(rows(&[("a", 5, 1)])),
        Step::Watermark(19),
        Step::Watermark(20),
        Step::Rows(rows(&[("a", 6, 1)])),
    ];
    let out = run(&f, Some(&["k"]), 1, &script).await;
    let counts: Vec<i64> = out
        .batches
        .iter()
        .flat_map(|b| {
            b.column(3)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(
        counts,
        [1, 2],
        "emitted at 15, again with the late row; dropped after 20"
    );
    assert_eq!(out.dead.len(), 1);
    let mut s = spec(tumbling(10), &["k"], &["count(*) AS n"]);
    s.on_late = OnLate::Drop;
    let out = run(&factory(s), Some(&["k"]), 1, &script[..3]).await;
    assert!(out.dead.is_empty(), "on_late: drop");
}

#[tokio::test]
async fn null_event_times_are_bad_rows_not_crashes() {
    let f = factory(spec(tumbling(10), &["k"], &["count(*) AS n"]));
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec!["a", "a"])) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(vec![None, Some(3)])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .expect("batch");
    let out = run(&f, Some(&["k"]), 1, &[Step::Rows(batch)]).await;
    assert_eq!(
        out.dead,
        ["operator 'op': event-time column 'ts' is null (at row 0)"]
    );
    assert_eq!(
        out.batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        1
    );
}

#[tokio::test]
async fn sessions_merge_and_close_after_the_gap() {
    let f = factory(spec(
        WindowSpec::Session { gap: Span(5) },
        &["k"],
        &["count(*) AS n", "max(v) AS top"],
    ));
    let script = [
        Step::Rows(rows(&[("a", 1, 1), ("a", 12, 5), ("b", 3, 7)])),
        // [7, 12) touches [12, 17) and merges with it; [1, 6) stays apart.
        Step::Rows(rows(&[("a", 7, 3)])),
        Step::Watermark(8),
        Step::Watermark(30),
    ];
    let out = run(&f, Some(&["k"]), 1, &script).await;
    let want = "\
+-------------------------+-------------------------+---+---+-----+
| window_start            | window_end              | k | n | top |
+-------------------------+-------------------------+---+---+-----+
| 1970-01-01T00:00:00.001 | 1970-01-01T00:00:00.006 | a | 1 | 1   |
| 1970-01-01T00:00:00.003 | 1970-01-01T00:00:00.008 | b | 1 | 7   |
| 1970-01-01T00:00:00.007 | 1970-01-01T00:00:00.017 | a | 2 | 5   |
+-------------------------+-------------------------+---+---+-----+";
    assert_eq!(out.sorted(), want);
}

#[tokio::test]
async fn column_windows_aggregate_the_output_of_a_window() {
    // q5's second step: the largest count per window, over rows that carry their window.
    let first = spec(hopping(10, 5), &["k"], &["count(*) AS n"]);
    let out = run(
        &factory(first.clone()),
        Some(&["k"]),
        1,
        &[
            Step::Rows(rows(&[
                ("a", 1, 0),
                ("a", 2, 0),
                ("b", 3, 0),
                ("b", 7, 0),
                ("b", 8, 0),
            ])),
            Step::Watermark(100),
        ],
    )
    .await;
    let counted = out.batches.clone();
    let counted_schema = first.output_schema(&schema()).expect("schema");
    let second = AggregateSpec {
        keys: vec![],
        time: None,
        window: WindowSpec::Column {
            start: "window_start".into(),
            end: "window_end".into(),
        },
        aggregates: vec!["max(n) AS top".into()],
        allowed_lateness: Span(0),
        on_late: OnLate::Drop,
        memory_budget: None,
        spill_dir: None,
    };
    let s2 = counted_schema.clone();
    let f2 = move || second.create(&s2).expect("create");
    let mut script: Vec<Step> = counted.into_iter().map(Step::Rows).collect();
    script.push(Step::Watermark(100));
    let out = run(&f2, Some(&["window_start", "window_end"]), 2, &script).await;
    let want = "\
+-------------------------+-------------------------+-----+
| window_start            | window_end              | top |
+-------------------------+-------------------------+-----+
| 1969-12-31T23:59:59.995 | 1970-01-01T00:00:00.005 | 2   |
| 1970-01-01T00:00:00     | 1970-01-01T00:00:00.010 | 3   |
| 1970-01-01T00:00:00.005 | 1970-01-01T00:00:00.015 | 2   |
+-------------------------+-------------------------+-----+";
    assert_eq!(out.sorted(), want);
}

/// Counts, sums and maxima per key and hopping window, computed row by row.
fn oracle(events: &[(String, i64, i64)], size: i64, slide: i64) -> String {
    let mut acc: BTreeMap<(i64, String), (i64, i64, i64)> = BTreeMap::new();
    for (k, t, v) in events {
        let last = t - t.rem_euclid(slide);
        let mut start = last;
        while start > t - size {
            let e = acc.entry((start, k.clone())).or_insert((0, 0, i64::MIN));
            e.0 += 1;
            e.1 += v;
            e.2 = e.2.max(*v);
            start -= slide;
        }
    }
    let mut ks = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let (mut n, mut sum, mut max) = (Vec::new(), Vec::new(), Vec::new());
    for ((s, k), (c, t, m)) in acc {
        starts.push(s);
        ends.push(s + size);
        ks.push(k);
        n.push(c);
        sum.push(t);
        max.push(m);
    }
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts(), false),
            Field::new("window_end", ts(), false),
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
            Field::new("top", DataType::Int64, true),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(starts)),
            Arc::new(TimestampMillisecondArray::from(ends)),
            Arc::new(StringArray::from(ks)),
            Arc::new(Int64Array::from(n)),
            Arc::new(Int64Array::from(sum)),
            Arc::new(Int64Array::from(max)),
        ],
    )
    .expect("oracle");
    sorted_table(&[batch])
}

/// Batches of `(key, time, value)` and, after each, maybe a rescale to that parallelism.
pub type Script = (Vec<Vec<(String, i64, i64)>>, Vec<Option<u32>>);

/// A script of in-order-enough events (never behind the watermark), watermarks after batches,
/// and rescales at random points.
pub fn arb_script() -> impl Strategy<Value = Script> {
    let batch = proptest::collection::vec(("[a-e]", 0i64..40, -20i64..20), 1..8);
    proptest::collection::vec(batch, 1..12).prop_flat_map(|batches| {
        let n = batches.len();
        (
            Just(batches),
            proptest::collection::vec(proptest::option::weighted(0.3, 1u32..=4), n),
        )
    })
}

pub fn to_steps(
    batches: &[Vec<(String, i64, i64)>],
    rescales: &[Option<u32>],
) -> (Vec<Step>, Vec<(String, i64, i64)>) {
    let mut steps = Vec::new();
    let mut events = Vec::new();
    let mut base = 0;
    for (b, r) in batches.iter().zip(rescales) {
        let shifted: Vec<(String, i64, i64)> = b
            .iter()
            .map(|(k, t, v)| (k.clone(), base + t, *v))
            .collect();
        let refs: Vec<(&str, i64, i64)> = shifted
            .iter()
            .map(|(k, t, v)| (k.as_str(), *t, *v))
            .collect();
        steps.push(Step::Rows(rows(&refs)));
        events.extend(shifted);
        base += 20;
        // Every later event is at least `base`: the watermark may say so.
        steps.push(Step::Watermark(base));
        if let Some(p) = r {
            steps.push(Step::Rescale(*p));
        }
    }
    (steps, events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn hopping_windows_match_the_oracle_across_rescales((batches, rescales) in arb_script(), p in 1u32..=3) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, events) = to_steps(&batches, &rescales);
        let s = spec(hopping(30, 10), &["k"], &["count(*) AS n", "sum(v) AS total", "max(v) AS top"]);
        let out = rt.block_on(run(&factory(s), Some(&["k"]), p, &steps));
        prop_assert!(out.dead.is_empty(), "{:?}", out.dead);
        prop_assert_eq!(out.sorted(), oracle(&events, 30, 10));
    }

    #[test]
    fn tumbling_and_sessions_restore_as_if_never_stopped((batches, rescales) in arb_script(), p in 1u32..=3) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, events) = to_steps(&batches, &rescales);
        let straight_steps: Vec<Step> = steps.iter().filter(|s| !matches!(s, Step::Rescale(_))).cloned().collect();
        for window in [tumbling(15), WindowSpec::Session { gap: Span(4) }] {
            let s = spec(window, &["k"], &["count(*) AS n", "sum(v) AS total", "count(DISTINCT v) AS d"]);
            let f = factory(s);
            let straight = rt.block_on(run(&f, Some(&["k"]), 1, &straight_steps));
            let rescaled = rt.block_on(run(&f, Some(&["k"]), p, &steps));
            prop_assert_eq!(straight.sorted(), rescaled.sorted());
            let rows: usize = straight.batches.iter().map(RecordBatch::num_rows).sum();
            prop_assert!(rows > 0 || events.is_empty());
        }
    }
}

fn budgeted(
    window: WindowSpec,
    aggs: &[&str],
    budget: &str,
    dir: &std::path::Path,
) -> AggregateSpec {
    AggregateSpec {
        memory_budget: Some(budget.into()),
        spill_dir: Some(dir.to_path_buf()),
        ..spec(window, &["k"], aggs)
    }
}

fn spill_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("spill dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("weir-spill-"))
        })
        .count()
}

/// Many keys over a small budget: the state is spilled while the windows are open, the answers
/// are those of the same step without a budget, and the spill files are gone when the windows
/// have fired.
#[tokio::test]
async fn state_over_the_memory_budget_spills_to_disk_and_answers_the_same() {
    use weir_runtime::Emitter;
    use weir_types::Watermark;
    let dir = tempfile::tempdir().expect("dir");
    let aggs = ["count(*) AS n", "sum(v) AS total", "count(DISTINCT v) AS d"];
    let keys: Vec<String> = (0..3000).map(|i| format!("key-{i:05}")).collect();
    let mut batches = Vec::new();
    for b in 0..20i64 {
        let r: Vec<(&str, i64, i64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    k.as_str(),
                    b * 50 + (i as i64 % 50),
                    (i as i64 * 7 + b) % 13,
                )
            })
            .collect();
        batches.push(rows(&r));
    }
    // Sessions of 40 ms: each key's rows are 50 ms apart, so every row is a session of its own,
    // closed (and its spilled rows read back) as the watermark passes.
    for window in [
        tumbling(400),
        hopping(400, 100),
        WindowSpec::Session { gap: Span(40) },
    ] {
        let mut outputs = Vec::new();
        for budget in [None, Some("64KiB")] {
            let s = match budget {
                Some(b) => budgeted(window.clone(), &aggs, b, dir.path()),
                None => spec(window.clone(), &["k"], &aggs),
            };
            let mut op = s.create(&schema()).expect("create");
            let mut ctx = crate::common::context("agg", 1, 0, None);
            op.open(&mut ctx).await.expect("open");
            let mut out = Vec::new();
            let mut most_files = 0;
            for (i, b) in batches.iter().enumerate() {
                let mut e = Emitter::default();
                op.process_batch(b.clone(), &mut ctx, &mut e)
                    .await
                    .expect("process");
                out.extend(e.take());
                most_files = most_files.max(spill_files(dir.path()));
                if i % 4 == 3 {
                    let mut e = Emitter::default();
                    op.on_watermark(Watermark((i as i64 + 1) * 50 - 200), &mut ctx, &mut e)
                        .await
                        .expect("watermark");
                    out.extend(e.take());
                }
            }
            let mut e = Emitter::default();
            op.finish(&mut ctx, &mut e).await.expect("finish");
            out.extend(e.take());
            assert!(ctx.take_dead_letters().is_empty());
            if budget.is_some() {
                assert!(most_files > 0, "a 64 KiB budget must spill this state");
            } else {
                assert_eq!(most_files, 0);
            }
            drop(op);
            assert_eq!(spill_files(dir.path()), 0, "spill files are deleted");
            outputs.push(sorted_table(&out));
        }
        assert!(outputs[0].lines().count() > 3000, "{}", outputs[0].len());
        assert_eq!(outputs[0], outputs[1], "{window:?}");
    }
}

#[test]
fn a_bad_memory_budget_is_a_plan_time_error_naming_the_key() {
    let dir = std::path::Path::new(".");
    for (budget, says) in [
        ("lots", "'lots' is not a size"),
        ("0B", "more than 0 bytes"),
    ] {
        let err = budgeted(tumbling(10), &["count(*) AS n"], budget, dir)
            .output_schema(&schema())
            .expect_err("bad budget");
        let text = err.to_string();
        assert!(
            text.contains("memory_budget") && text.contains(says),
            "{text}"
        );
    }
    let err = AggregateSpec {
        spill_dir: Some(dir.to_path_buf()),
        ..spec(tumbling(10), &["k"], &["count(*) AS n"])
    }
    .output_schema(&schema())
    .expect_err("spill_dir alone");
    assert!(err.to_string().contains("spill_dir"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A budget so small that every batch spills: across rescales (snapshots holding spilled
    /// runs), the answers are those of the step without a budget, for tumbling, hopping and
    /// session windows.
    #[test]
    fn spilled_state_restores_as_if_never_stopped((batches, rescales) in arb_script(), p in 1u32..=3) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("dir");
        let (steps, _) = to_steps(&batches, &rescales);
        let aggs = ["count(*) AS n", "sum(v) AS total", "count(DISTINCT v) AS d"];
        for window in [tumbling(15), hopping(30, 10), WindowSpec::Session { gap: Span(5) }] {
            let plain = spec(window.clone(), &["k"], &aggs);
            let spilled = budgeted(window, &aggs, "1B", dir.path());
            let want = rt.block_on(run(&factory(plain), Some(&["k"]), p, &steps));
            let got = rt.block_on(run(&factory(spilled), Some(&["k"]), p, &steps));
            prop_assert!(got.dead.is_empty(), "{:?}", got.dead);
            prop_assert_eq!(want.sorted(), got.sorted());
        }
        prop_assert_eq!(spill_files(dir.path()), 0);
    }
}
