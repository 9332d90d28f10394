//! Stateful steps from YAML: windowed aggregation, top-N and joins planned from a spec, run at
//! several parallelisms with the same results, and window specs that are wrong fail at plan time
//! naming the key.

use std::path::Path;
use weir_plan::{PlanOptions, plan_str};
use weir_testkit::{read_rows, run_spec};

/// Bids as inline rows: auction, bidder, price, event time (ms).
const BIDS: &str = r#"
  - name: bids
    source: values
    rows:
      - {auction: 1, bidder: 10, price: 5, ts: 1000}
      - {auction: 2, bidder: 11, price: 7, ts: 1500}
      - {auction: 1, bidder: 12, price: 9, ts: 2500}
      - {auction: 1, bidder: 10, price: 4, ts: 9000}
      - {auction: 3, bidder: 13, price: 8, ts: 10500}
      - {auction: 2, bidder: 11, price: 1, ts: 11000}
      - {auction: 3, bidder: 14, price: 3, ts: 19999}
      - {auction: 1, bidder: 15, price: 6, ts: 20000}
"#;

fn write(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("write spec");
    p
}

/// Runs `steps` after the bids at parallelism 1 and 3; both must give `want` (sorted rows).
fn check(steps: &str, want: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write(
        dir.path(),
        "spec.yaml",
        &format!("name: streaming\nsteps:{BIDS}{steps}  - sink: jsonl\n    path: ${{OUT}}/out\n"),
    );
    for p in [1, 3] {
        let out = dir.path().join(format!("p{p}"));
        run_spec(&spec, &out, p, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
        let rows = read_rows(&out.join("out")).expect("rows");
        assert_eq!(rows, want, "at parallelism {p}");
    }
}

#[test]
fn tumbling_aggregate_from_yaml() {
    check(
        r#"
  - name: per_auction
    op: aggregate
    keys: [auction]
    time: ts
    window: {type: tumbling, size: 10s}
    aggregates: ["count(*) AS bids", "max(price) AS top", "avg(price) AS mean"]
"#,
        &[
            r#"{"window_start":0,"window_end":10000,"auction":1,"bids":3,"top":9,"mean":6.0}"#,
            r#"{"window_start":0,"window_end":10000,"auction":2,"bids":1,"top":7,"mean":7.0}"#,
            r#"{"window_start":10000,"window_end":20000,"auction":2,"bids":1,"top":1,"mean":1.0}"#,
            r#"{"window_start":10000,"window_end":20000,"auction":3,"bids":2,"top":8,"mean":5.5}"#,
            r#"{"window_start":20000,"window_end":30000,"auction":1,"bids":1,"top":6,"mean":6.0}"#,
        ],
    );
}

#[test]
fn hot_auctions_hopping_count_then_top_n_with_ties() {
    // Nexmark q5's shape: bids per auction per hopping window, then the auctions with the most.
    check(
        r#"
  - name: counts
    op: aggregate
    keys: [auction]
    time: ts
    window: {type: hopping, size: 10s, slide: 5s}
    aggregates: ["count(*) AS bids"]
  - name: hottest
    op: top_n
    window: {type: column}
    order_by: [bids DESC]
    n: 1
    with_ties: true
  - op: select
    columns: [window_start, auction, bids]
"#,
        &[
            r#"{"window_start":-5000,"auction":1,"bids":2}"#,
            r#"{"window_start":0,"auction":1,"bids":3}"#,
            r#"{"window_start":10000,"auction":3,"bids":2}"#,
            r#"{"window_start":15000,"auction":1,"bids":1}"#,
            r#"{"window_start":15000,"auction":3,"bids":1}"#,
            r#"{"window_start":20000,"auction":1,"bids":1}"#,
            r#"{"window_start":5000,"auction":1,"bids":1}"#,
            r#"{"window_start":5000,"auction":2,"bids":1}"#,
            r#"{"window_start":5000,"auction":3,"bids":1}"#,
        ],
    );
}

#[test]
fn interval_join_of_bids_and_auctions_from_yaml() {
    check(
        r#"
  - name: auctions
    source: values
    rows:
      - {id: 1, seller: 100, opened: 0}
      - {id: 2, seller: 200, opened: 9000}
      - {id: 3, seller: 300, opened: 30000}
  - name: early_bids
    op: interval_join
    inputs: [bids, auctions]
    left_keys: [auction]
    right_keys: [id]
    left_time: ts
    right_time: opened
    lower: -5s
    upper: 0s
  - op: select
    columns: [auction, bidder, seller]
"#,
        &[
            r#"{"auction":1,"bidder":10,"seller":100}"#,
            r#"{"auction":1,"bidder":12,"seller":100}"#,
            r#"{"auction":2,"bidder":11,"seller":200}"#,
        ],
    );
}

#[test]
fn new_sellers_window_join_of_two_aggregates_from_yaml() {
    // Nexmark q8's shape: people who opened an auction in the window they registered in.
    check(
        r#"
  - name: people
    source: values
    rows:
      - {id: 10, name: ann, ts: 500}
      - {id: 11, name: bob, ts: 1500}
      - {id: 12, name: cy, ts: 12000}
  - name: new_people
    op: aggregate
    input: people
    keys: [id, name]
    time: ts
    window: {type: tumbling, size: 10s}
    aggregates: []
  - name: sellers
    op: aggregate
    input: bids
    keys: [bidder]
    time: ts
    window: {type: tumbling, size: 10s}
    aggregates: ["count(*) AS n"]
  - name: joined
    op: window_join
    inputs: [new_people, sellers]
    left_keys: [id]
    right_keys: [bidder]
    window: {type: column}
  - op: select
    columns: [id, name, window_start, n]
"#,
        &[
            r#"{"id":10,"name":"ann","window_start":0,"n":2}"#,
            r#"{"id":11,"name":"bob","window_start":0,"n":1}"#,
        ],
    );
}

#[test]
fn bad_window_specs_fail_at_plan_time_naming_the_key() {
    let cases = [
        (
            "{type: tumbling, size: 0s}",
            "key 'window.size': must be greater than 0",
        ),
        (
            "{type: hopping, size: 10s, slide: 3s}",
            "key 'window.slide': must divide 'window.size'",
        ),
        (
            "{type: session, gap: -1}",
            "key 'window.gap': must be greater than 0",
        ),
        ("{type: tumbling, size: 10s, slid: 1s}", "slid"),
    ];
    for (window, want) in cases {
        let yaml = format!(
            "name: bad\nsteps:{BIDS}  - op: aggregate\n    keys: [auction]\n    time: ts\n    window: {window}\n    aggregates: [\"count(*)\"]\n  - sink: blackhole\n"
        );
        let e = plan_str(&yaml, "bad.yaml", &PlanOptions::default()).expect_err(window);
        assert!(e.report().contains(want), "{window}: {}", e.report());
    }
}
