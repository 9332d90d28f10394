//! Every stateful step lets event time through: after the rows a watermark completes, it emits
//! the watermark itself, so a windowed step downstream (q5's `top_n` after an `aggregate`, q7's
//! `interval_join` after one) fires and cleans up while the stream runs, not only at its end.

use crate::windows::{rows, schema};
use arrow::array::RecordBatch;
use weir_runtime::{Emitted, Emitter, ErrorPolicy, Operator, OperatorContext};
use weir_stream::{
    AggregateSpec, IntervalJoinSpec, JoinOn, JoinSpec, OnLate, Span, TopNSpec, WindowJoinSpec,
    WindowSpec,
};
use weir_types::Watermark;

fn tumbling() -> WindowSpec {
    WindowSpec::Tumbling {
        size: Span(10),
        offset: Span(0),
    }
}

fn aggregate(window: WindowSpec) -> AggregateSpec {
    AggregateSpec {
        keys: vec!["k".into()],
        time: Some("ts".into()),
        window,
        aggregates: vec!["count(*) AS n".into()],
        allowed_lateness: Span(0),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
}

fn on() -> JoinOn {
    JoinOn {
        left_keys: vec!["k".into()],
        right_keys: vec!["k".into()],
        left_prefix: String::new(),
        right_prefix: "r_".into(),
    }
}

/// Feeds `(key, time, value)` rows at 1, 5 and 12 ms to each input, then watermarks 11 and 11
/// again; returns what each watermark made the operator emit.
async fn drive(mut op: Box<dyn Operator>, inputs: usize) -> [Vec<Emitted>; 2] {
    let mut ctx = OperatorContext::for_test("op", ErrorPolicy::Fail);
    op.open(&mut ctx).await.expect("open");
    let mut out = Emitter::default();
    for input in 0..inputs {
        ctx.set_input(input);
        op.process_batch(
            rows(&[("a", 1, 1), ("a", 5, 2), ("b", 12, 3)]),
            &mut ctx,
            &mut out,
        )
        .await
        .expect("rows");
    }
    out.take_all();
    let mut each = Vec::new();
    for _ in 0..2 {
        op.on_watermark(Watermark(11), &mut ctx, &mut out)
            .await
            .expect("watermark");
        each.push(out.take_all());
    }
    [each.remove(0), each.remove(0)]
}

/// The window `[0, 10)` is complete at watermark 11: its rows come out, then the watermark; a
/// watermark that does not advance emits nothing.
fn assert_forwarded(step: &str, [first, again]: [Vec<Emitted>; 2], rows_expected: bool) {
    let batches: Vec<&RecordBatch> = first
        .iter()
        .filter_map(|e| match e {
            Emitted::Batch(b) => Some(b),
            Emitted::Watermark(_) => None,
        })
        .collect();
    assert_eq!(
        !batches.is_empty(),
        rows_expected,
        "{step}: rows at watermark 11: {first:?}"
    );
    match first.last() {
        Some(Emitted::Watermark(Watermark(11))) => {}
        other => panic!("{step}: the last thing emitted is {other:?}, not watermark 11"),
    }
    assert!(
        again.is_empty(),
        "{step}: emitted {again:?} for the same watermark"
    );
}

#[tokio::test]
async fn windowed_steps_forward_the_watermark_after_the_rows_it_completes() {
    let s = schema();
    let both = [s.clone(), s.clone()];
    let agg = aggregate(tumbling()).create(&s).expect("aggregate");
    assert_forwarded("aggregate", drive(agg, 1).await, true);
    let session = aggregate(WindowSpec::Session { gap: Span(3) })
        .create(&s)
        .expect("session aggregate");
    assert_forwarded("session aggregate", drive(session, 1).await, true);
    let top = TopNSpec {
        keys: vec![],
        time: Some("ts".into()),
        window: tumbling(),
        order_by: vec!["v DESC".into()],
        n: 1,
        with_ties: false,
        rank_column: None,
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
    .create(&s)
    .expect("top_n");
    assert_forwarded("top_n", drive(top, 1).await, true);
    let window_join = WindowJoinSpec {
        on: on(),
        window: tumbling(),
        left_time: Some("ts".into()),
        right_time: Some("ts".into()),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
    .create(&both)
    .expect("window_join");
    assert_forwarded("window_join", drive(window_join, 2).await, true);
    // Joins emit matches as rows arrive; the watermark only expires state.
    let interval = IntervalJoinSpec {
        on: on(),
        left_time: "ts".into(),
        right_time: "ts".into(),
        lower: Span(-5),
        upper: Span(5),
        on_late: OnLate::DeadLetter,
        memory_budget: None,
        spill_dir: None,
    }
    .create(&both)
    .expect("interval_join");
    assert_forwarded("interval_join", drive(interval, 2).await, false);
    let join = JoinSpec {
        on: on(),
        ttl: Some(Span(5)),
        left_time: Some("ts".into()),
        right_time: Some("ts".into()),
        memory_budget: None,
        spill_dir: None,
    }
    .create(&both)
    .expect("join");
    assert_forwarded("join", drive(join, 2).await, false);
}
