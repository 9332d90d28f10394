//! Interval and regular joins: exact matches against a nested-loop oracle across restores at
//! another parallelism, late rows, and state that stays bounded on an unbounded stream.

use crate::common::{Step, run_inputs, sorted_table};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use proptest::prelude::*;
use std::sync::Arc;
use weir_runtime::{Emitter, ErrorPolicy, Operator, OperatorContext};
use weir_stream::{
    IntervalJoinSpec, JoinOn, JoinSpec, OnLate, Span, StreamJoin, WindowJoinSpec, WindowSpec,
};
use weir_types::Watermark;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Left: bids (auction, bts, price).
fn bids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bts", ts(), false),
        Field::new("price", DataType::Int64, false),
    ]))
}

/// Right: auctions (id, ats, seller).
fn auctions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("ats", ts(), false),
        Field::new("seller", DataType::Int64, false),
    ]))
}

fn batch(schema: SchemaRef, r: &[(Option<i64>, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter(r.iter().map(|x| x.0))) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from_iter_values(
                r.iter().map(|x| x.1),
            )),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.2))),
        ],
    )
    .expect("batch")
}

fn on() -> JoinOn {
    JoinOn {
        left_keys: vec!["auction".into()],
        right_keys: vec!["id".into()],
        left_prefix: String::new(),
        right_prefix: String::new(),
    }
}

fn interval(lower: i64, upper: i64) -> IntervalJoinSpec {
    IntervalJoinSpec {
        on: on(),
        left_time: "bts".into(),
        right_time: "ats".into(),
        lower: Span(lower),
        upper: Span(upper),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
}

/// A 1-byte memory budget in `dir` (every buffered row spills) when `spill`, else none.
fn budget(spill: bool, dir: &tempfile::TempDir) -> (Option<String>, Option<std::path::PathBuf>) {
    if spill {
        (Some("1B".into()), Some(dir.path().to_path_buf()))
    } else {
        (None, None)
    }
}

const KEYS: [Option<&[&str]>; 2] = [Some(&["auction"]), Some(&["id"])];

#[tokio::test]
async fn interval_join_matches_within_bounds_and_null_keys_match_nothing() {
    let spec = interval(-5, 0);
    let inputs = [bids_schema(), auctions_schema()];
    let f = move || spec.create(&inputs).expect("create");
    let out = run_inputs(
        &f,
        &KEYS,
        2,
        &[
            Step::Input(
                1,
                batch(
                    auctions_schema(),
                    &[(Some(1), 10, 100), (Some(2), 10, 200), (None, 10, 0)],
                ),
            ),
            Step::Input(
                0,
                batch(
                    bids_schema(),
                    &[
                        (Some(1), 10, 5),
                        (Some(1), 15, 6),
                        (Some(1), 16, 7),
                        (Some(2), 9, 8),
                        (None, 10, 1),
                    ],
                ),
            ),
            Step::Watermark(11),
            Step::Input(0, batch(bids_schema(), &[(Some(1), 11, 9)])),
            Step::Input(0, batch(bids_schema(), &[(Some(2), 3, 1)])),
        ],
    )
    .await;
    // ats within [bts - 5, bts]: bids at 10, 15 and 11 of auction 1; 16 is past, 9 is before.
    let want = "\
+---------+-------------------------+-------+----+-------------------------+--------+
| auction | bts                     | price | id | ats                     | seller |
+---------+-------------------------+-------+----+-------------------------+--------+
| 1       | 1970-01-01T00:00:00.010 | 5     | 1  | 1970-01-01T00:00:00.010 | 100    |
| 1       | 1970-01-01T00:00:00.011 | 9     | 1  | 1970-01-01T00:00:00.010 | 100    |
| 1       | 1970-01-01T00:00:00.015 | 6     | 1  | 1970-01-01T00:00:00.010 | 100    |
+---------+-------------------------+-------+----+-------------------------+--------+";
    assert_eq!(out.sorted(), want);
    assert_eq!(
        out.dead.len(),
        1,
        "the bid at 3 is behind the watermark 11: {:?}",
        out.dead
    );
    assert!(
        out.dead[0].contains("late: event time 3 ms"),
        "{}",
        out.dead[0]
    );
}

#[test]
fn join_specs_are_checked_at_plan_time() {
    let inputs = [bids_schema(), auctions_schema()];
    let e = interval(5, -5)
        .output_schema(&inputs)
        .expect_err("upper < lower");
    assert!(e.message().contains("key 'upper'"), "{e}");
    let mut s = interval(0, 5);
    s.on.right_keys = vec!["ats".into()];
    let e = s.output_schema(&inputs).expect_err("types differ");
    assert!(e.message().contains("same type"), "{e}");
    let mut same = interval(0, 5);
    same.on.right_keys = vec!["auction".into()];
    same.right_time = "bts".into();
    same.on.right_prefix = "r_".into();
    // A self-join: inputs are told apart by the port a batch came on, not by their columns.
    same.create(&[bids_schema(), bids_schema()])
        .expect("a self-join plans");
    let clash = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("ats", ts(), false),
        Field::new("price", DataType::Int64, false),
    ]));
    let e = interval(0, 5)
        .output_schema(&[bids_schema(), clash.clone()])
        .expect_err("clash");
    assert!(
        e.message().contains("'price'") && e.message().contains("right_prefix"),
        "{e}"
    );
    let mut prefixed = interval(0, 5);
    prefixed.on.right_prefix = "a_".into();
    let out = prefixed
        .output_schema(&[bids_schema(), clash])
        .expect("prefixed");
    assert_eq!(out.field(5).name(), "a_price");
    let ttl = JoinSpec {
        on: on(),
        ttl: Some(Span(10)),
        left_time: None,
        right_time: None,
        memory_budget: None,
        spill_dir: None,
    };
    assert!(
        ttl.output_schema(&inputs)
            .expect_err("ttl needs times")
            .message()
            .contains("key 'ttl'")
    );
}

/// Nested loops over everything sent: pairs with equal non-null keys and the time condition.
fn oracle(
    left: &[(Option<i64>, i64, i64)],
    right: &[(Option<i64>, i64, i64)],
    lower: Option<(i64, i64)>,
) -> String {
    let mut l_rows = Vec::new();
    let mut r_rows = Vec::new();
    for l in left {
        for r in right {
            let time_ok = lower.is_none_or(|(lo, up)| r.1 - l.1 >= lo && r.1 - l.1 <= up);
            if l.0.is_some() && l.0 == r.0 && time_ok {
                l_rows.push(*l);
                r_rows.push(*r);
            }
        }
    }
    let l = batch(bids_schema(), &l_rows);
    let r = batch(auctions_schema(), &r_rows);
    let mut fields: Vec<Field> = bids_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        auctions_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone()),
    );
    let mut cols = l.columns().to_vec();
    cols.extend(r.columns().iter().cloned());
    let joined = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("joined");
    sorted_table(&[joined])
}

type Row = (Option<i64>, i64, i64);

/// Batches for both sides with times at or after the watermark, watermarks, rescales.
fn arb_join_script() -> impl Strategy<Value = Vec<(bool, Vec<Row>, Option<u32>)>> {
    let row = (
        proptest::option::weighted(0.95, 0i64..6),
        0i64..25,
        0i64..100,
    );
    proptest::collection::vec(
        (
            any::<bool>(),
            proptest::collection::vec(row, 1..6),
            proptest::option::weighted(0.25, 1u32..=4),
        ),
        1..16,
    )
}

fn steps_of(script: &[(bool, Vec<Row>, Option<u32>)]) -> (Vec<Step>, Vec<Row>, Vec<Row>) {
    let (mut steps, mut left, mut right) = (Vec::new(), Vec::new(), Vec::new());
    let mut base = 0;
    for (is_left, rows, rescale) in script {
        let shifted: Vec<Row> = rows.iter().map(|(k, t, v)| (*k, base + t, *v)).collect();
        if *is_left {
            steps.push(Step::Input(0, batch(bids_schema(), &shifted)));
            left.extend(shifted);
        } else {
            steps.push(Step::Input(1, batch(auctions_schema(), &shifted)));
            right.extend(shifted);
        }
        base += 10;
        steps.push(Step::Watermark(base));
        if let Some(p) = rescale {
            steps.push(Step::Rescale(*p));
        }
    }
    (steps, left, right)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn interval_join_matches_the_oracle_across_rescales(script in arb_join_script(), p in 1u32..=3, lower in -30i64..10, width in 0i64..30, spill in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, left, right) = steps_of(&script);
        let dir = tempfile::tempdir().expect("dir");
        let mut spec = interval(lower, lower + width);
        (spec.memory_budget, spec.spill_dir) = budget(spill, &dir);
        let inputs = [bids_schema(), auctions_schema()];
        let f = move || spec.create(&inputs).expect("create");
        let out = rt.block_on(run_inputs(&f, &KEYS, p, &steps));
        prop_assert!(out.dead.is_empty(), "{:?}", out.dead);
        let got = if out.batches.is_empty() { oracle(&[], &[], None) } else { out.sorted() };
        prop_assert_eq!(got, oracle(&left, &right, Some((lower, lower + width))));
    }

    #[test]
    fn regular_join_matches_the_oracle_across_rescales(script in arb_join_script(), p in 1u32..=3, spill in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, left, right) = steps_of(&script);
        let dir = tempfile::tempdir().expect("dir");
        let (memory_budget, spill_dir) = budget(spill, &dir);
        let spec = JoinSpec { on: on(), ttl: None, left_time: None, right_time: None, memory_budget, spill_dir };
        let inputs = [bids_schema(), auctions_schema()];
        let f = move || spec.create(&inputs).expect("create");
        let out = rt.block_on(run_inputs(&f, &KEYS, p, &steps));
        let got = if out.batches.is_empty() { oracle(&[], &[], None) } else { out.sorted() };
        prop_assert_eq!(got, oracle(&left, &right, None));
    }
}

/// Regular join with a TTL (event time): a pair matches when its later row arrives while the
/// earlier row's time is at most `ttl` behind the watermark; the script's watermark before batch
/// `j` is `10 * j`. Checked across rescales, so expiry and restore agree.
fn ttl_oracle(script: &[(bool, Vec<Row>, Option<u32>)], ttl: i64) -> String {
    let mut seen: Vec<(usize, bool, Row)> = Vec::new();
    let (mut l_rows, mut r_rows) = (Vec::new(), Vec::new());
    let mut base = 0;
    for (j, (is_left, rows, _)) in script.iter().enumerate() {
        let w = if j == 0 { i64::MIN } else { base };
        for (k, t, v) in rows {
            let row = (*k, base + t, *v);
            for (_, _, e) in seen
                .iter()
                .filter(|(i, side, _)| *i < j && *side != *is_left)
            {
                if row.0.is_some() && row.0 == e.0 && e.1 >= w.saturating_sub(ttl) {
                    let (l, r) = if *is_left { (row, *e) } else { (*e, row) };
                    l_rows.push(l);
                    r_rows.push(r);
                }
            }
        }
        for (k, t, v) in rows {
            seen.push((j, *is_left, (*k, base + t, *v)));
        }
        base += 10;
    }
    let l = batch(bids_schema(), &l_rows);
    let r = batch(auctions_schema(), &r_rows);
    let mut fields: Vec<Field> = bids_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        auctions_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone()),
    );
    let mut cols = l.columns().to_vec();
    cols.extend(r.columns().iter().cloned());
    let joined = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("joined");
    sorted_table(&[joined])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn regular_join_with_a_ttl_matches_the_oracle_across_rescales(script in arb_join_script(), p in 1u32..=3, ttl in 1i64..40, spill in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, _, _) = steps_of(&script);
        let dir = tempfile::tempdir().expect("dir");
        let (memory_budget, spill_dir) = budget(spill, &dir);
        let spec = JoinSpec {
            on: on(),
            ttl: Some(Span(ttl)),
            left_time: Some("bts".into()),
            right_time: Some("ats".into()),
            memory_budget,
            spill_dir,
        };
        let inputs = [bids_schema(), auctions_schema()];
        let f = move || spec.create(&inputs).expect("create");
        let out = rt.block_on(run_inputs(&f, &KEYS, p, &steps));
        prop_assert!(out.dead.is_empty(), "{:?}", out.dead);
        let got = if out.batches.is_empty() { ttl_oracle(&[], ttl) } else { out.sorted() };
        prop_assert_eq!(got, ttl_oracle(&script, ttl));
    }
}

/// Sends `rows` as auctions to the right input, then as bids to the left.
async fn feed_both(
    join: &mut StreamJoin,
    ctx: &mut OperatorContext,
    out: &mut Emitter,
    rows: &[Row],
) {
    ctx.set_input(1);
    join.process_batch(batch(auctions_schema(), rows), ctx, out)
        .await
        .expect("right");
    ctx.set_input(0);
    join.process_batch(batch(bids_schema(), rows), ctx, out)
        .await
        .expect("left");
}

/// An unbounded stream (simulated: 2000 batches, time always moving on): the interval join's
/// buffers stay within what the bounds need, where a join without bounds would grow forever.
#[tokio::test]
async fn interval_join_state_stays_bounded_on_an_unbounded_stream() {
    let inputs = [bids_schema(), auctions_schema()];
    let mut join = interval(-100, 50).build(&inputs).expect("build");
    let mut ctx = OperatorContext::for_test("join", ErrorPolicy::Fail);
    join.open(&mut ctx).await.expect("open");
    let mut out = Emitter::default();
    let mut emitted = 0;
    let mut most = [0usize; 2];
    for i in 0..2000i64 {
        let t = i * 10;
        let rows: Vec<Row> = (0..10).map(|k| (Some(k), t + k, k)).collect();
        feed_both(&mut join, &mut ctx, &mut out, &rows).await;
        join.on_watermark(Watermark(t), &mut ctx, &mut out)
            .await
            .expect("watermark");
        emitted += out.take().iter().map(RecordBatch::num_rows).sum::<usize>();
        let b = join.buffered_rows();
        most = [most[0].max(b[0]), most[1].max(b[1])];
    }
    // Left rows live 50 ms past their time, right rows 100 ms: 5 and 10 batches of 10 rows, plus
    // the batch that straddles the watermark.
    assert!(most[0] <= 70 && most[1] <= 120, "buffers grew to {most:?}");
    assert!(
        emitted > 2000 * 10,
        "each bid matches its auction and earlier ones: {emitted}"
    );
}

/// The same stream with and without a memory budget: the budget is kept (rows spill to the
/// directory, state in memory stays near the budget), the output is the same, and the spill
/// files go away as the watermark drops their rows.
#[tokio::test]
async fn interval_join_over_its_memory_budget_spills_rows_and_joins_the_same() {
    async fn run(spill_dir: Option<&std::path::Path>) -> (Vec<Vec<i64>>, usize, [usize; 2], usize) {
        let mut spec = interval(-100, 50);
        if let Some(d) = spill_dir {
            spec.memory_budget = Some("16KiB".into());
            spec.spill_dir = Some(d.to_path_buf());
        }
        let mut join = spec
            .build(&[bids_schema(), auctions_schema()])
            .expect("build");
        let mut ctx = OperatorContext::for_test("join", ErrorPolicy::Fail);
        join.open(&mut ctx).await.expect("open");
        let mut out = Emitter::default();
        let mut batches = Vec::new();
        let (mut most_bytes, mut spilled) = (0, [0usize; 2]);
        for i in 0..200i64 {
            let t = i * 10;
            let rows: Vec<Row> = (0..40).map(|k| (Some(k % 13), t + k % 10, k)).collect();
            feed_both(&mut join, &mut ctx, &mut out, &rows).await;
            most_bytes = most_bytes.max(join.row_bytes());
            let s = join.spilled_rows();
            spilled = [spilled[0].max(s[0]), spilled[1].max(s[1])];
            join.on_watermark(Watermark(t), &mut ctx, &mut out)
                .await
                .expect("watermark");
            batches.extend(out.take());
        }
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        // Every output row as its six integers (timestamps as milliseconds), sorted.
        let mut lines: Vec<Vec<i64>> = Vec::with_capacity(rows);
        for b in &batches {
            let cols: Vec<Int64Array> = b
                .columns()
                .iter()
                .map(|c| {
                    let c = arrow::compute::cast(c, &DataType::Int64).expect("cast");
                    c.as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("i64")
                        .clone()
                })
                .collect();
            for r in 0..b.num_rows() {
                lines.push(cols.iter().map(|c| c.value(r)).collect());
            }
        }
        lines.sort_unstable();
        (lines, rows, spilled, most_bytes)
    }
    let dir = tempfile::tempdir().expect("dir");
    let (free, free_rows, none, free_bytes) = run(None).await;
    let (tight, tight_rows, spilled, tight_bytes) = run(Some(dir.path())).await;
    assert_eq!(none, [0, 0]);
    assert!(free_rows > 10_000, "{free_rows}");
    assert_eq!(tight_rows, free_rows);
    assert!(free == tight, "the same rows with and without spilling");
    assert!(
        spilled[0] > 0 && spilled[1] > 0,
        "both sides spilled: {spilled:?}"
    );
    // Rows in memory: within the budget plus the batch that passed it (about 1.5 KiB per side).
    assert!(
        tight_bytes <= 16 * 1024 + 4096 && free_bytes > 2 * tight_bytes,
        "rows in memory: {tight_bytes} bytes with the budget, {free_bytes} without"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(
        left.len() < 10,
        "spill files of expired rows are deleted: {} left",
        left.len()
    );
}

/// Window join oracle: pairs with equal keys in the same tumbling window of `size`.
fn window_oracle(left: &[Row], right: &[Row], size: i64) -> String {
    let mut pairs: Vec<(i64, Row, Row)> = Vec::new();
    for l in left {
        for r in right {
            let (ls, rs) = (l.1 - l.1.rem_euclid(size), r.1 - r.1.rem_euclid(size));
            if l.0.is_some() && l.0 == r.0 && ls == rs {
                pairs.push((ls, *l, *r));
            }
        }
    }
    let l = batch(
        bids_schema(),
        &pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
    );
    let r = batch(
        auctions_schema(),
        &pairs.iter().map(|p| p.2).collect::<Vec<_>>(),
    );
    let mut fields = vec![
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
    ];
    fields.extend(bids_schema().fields().iter().map(|f| f.as_ref().clone()));
    fields.extend(
        auctions_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone()),
    );
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            pairs.iter().map(|p| p.0),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            pairs.iter().map(|p| p.0 + size),
        )),
    ];
    cols.extend(l.columns().iter().cloned());
    cols.extend(r.columns().iter().cloned());
    sorted_table(&[RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("joined")])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn window_join_matches_the_oracle_across_rescales(script in arb_join_script(), p in 1u32..=3, spill in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (steps, left, right) = steps_of(&script);
        let dir = tempfile::tempdir().expect("dir");
        let (memory_budget, spill_dir) = budget(spill, &dir);
        let spec = WindowJoinSpec {
            on: on(),
            window: WindowSpec::Tumbling { size: Span(15), offset: Span(0) },
            left_time: Some("bts".into()),
            right_time: Some("ats".into()),
            on_late: OnLate::DeadLetter,
            memory_budget,
            spill_dir,
        };
        let inputs = [bids_schema(), auctions_schema()];
        let f = move || spec.create(&inputs).expect("create");
        let out = rt.block_on(run_inputs(&f, &KEYS, p, &steps));
        prop_assert!(out.dead.is_empty(), "{:?}", out.dead);
        let want = window_oracle(&left, &right, 15);
        let got = if out.batches.is_empty() { window_oracle(&[], &[], 15) } else { out.sorted() };
        prop_assert_eq!(got, want);
    }
}
