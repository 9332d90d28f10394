//! The Nexmark queries of `examples/nexmark/`, each checked against an independent computation:
//! the generated events are dumped to Parquet (`examples/nexmark/events.yaml`), DuckDB computes
//! the query over the dump (`tests/nexmark/check.py`, the benchmark's SQL) and the answers must
//! be equal as multisets of rows. Queries run at parallelism 1 and 2 (the generator's splits, and
//! so the order of rows, differ; the answer must not).

use std::path::Path;
use std::process::Command;
use weir_testkit::{repo_root, run_spec, run_spec_with_vars, setup};

/// The stream every query is checked on: 200 000 events (4 000 persons, 12 000 auctions, 184 000
/// bids) at 2 000 events per second of event time, so 100 s: ten 10 s tumbling windows, about 50
/// hopping windows of q5, and auctions, sellers and bids that meet in the joins.
const VARS: [(&str, &str); 2] = [("EVENTS", "200000"), ("EVENT_RATE", "2000")];

/// Dumps the events the queries read (`examples/nexmark/events.yaml` with [`VARS`]) to `dir`.
fn dump_events(dir: &Path) {
    let spec = repo_root().join("examples/nexmark/events.yaml");
    run_spec_with_vars(&spec, dir, 2, &VARS)
        .unwrap_or_else(|e| panic!("dumping the events: {}", e.report()));
}

/// Runs `examples/nexmark/{query}.yaml` at parallelism 1 and 2 and checks each answer against
/// DuckDB's; the answer must have at least `min_rows` rows (so windows closed and joins matched).
fn check(query: &str, min_rows: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("events");
    dump_events(&events);
    for parallelism in [1, 2] {
        let out = tmp.path().join(format!("p{parallelism}"));
        let spec = repo_root().join(format!("examples/nexmark/{query}.yaml"));
        run_spec_with_vars(&spec, &out, parallelism, &VARS)
            .unwrap_or_else(|e| panic!("{query} at parallelism {parallelism}: {}", e.report()));
        let result = Command::new(setup::duckdb_python())
            .arg(repo_root().join("tests/nexmark/check.py"))
            .arg(query)
            .arg(&events)
            .arg(out.join(query))
            .arg(min_rows.to_string())
            .output()
            .expect("run check.py");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(
            result.status.success(),
            "{query} at parallelism {parallelism} differs from DuckDB's answer:\n{said}"
        );
    }
}

#[test]
fn q0_pass_through() {
    check("q0", 180_000);
}

#[test]
fn q1_currency_conversion() {
    check("q1", 180_000);
}

#[test]
fn q2_selection() {
    check("q2", 1000);
}

/// A row whose event-time column is null or not a time becomes a dead letter naming the column;
/// the job goes on and the other rows arrive.
#[test]
fn rows_without_event_time_are_dead_letters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = tmp.path().join("spec.yaml");
    let out = tmp.path().join("out");
    std::fs::write(
        &spec,
        r#"
name: event-time-bad-rows
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: ${OUT}/dead.jsonl
steps:
  - name: events
    source: values
    rows:
      - {id: 1, ts: "2024-01-01T00:00:01Z"}
      - {id: 2, ts: null}
      - {id: 3, ts: "not a time"}
      - {id: 4, ts: "2024-01-01T00:00:02Z"}
    watermark: {column: ts}
  - sink: jsonl
    path: ${OUT}/rows
"#,
    )
    .expect("write spec");
    run_spec(&spec, &out, 1, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
    let rows = weir_testkit::read_rows(&out.join("rows")).expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains(r#""id":1"#) && rows[1].contains(r#""id":4"#),
        "{rows:?}"
    );
    let dead = weir_testkit::read_rows(&out.join("dead.jsonl")).expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let all = dead.join("\n");
    assert!(all.contains("event-time column 'ts' is null"), "{all}");
    assert!(
        all.contains("cannot read 'not a time' as a timestamp"),
        "{all}"
    );
}

/// Nexmark q3: a regular join of auctions in category 10 with their sellers in OR, ID or CA.
#[test]
fn q3_local_item_suggestion() {
    check("q3", 500);
}

/// Nexmark q4: the closing price of each auction (a join and a per-auction maximum), averaged per
/// category (five categories).
#[test]
fn q4_average_price_per_category() {
    check("q4", 5);
}

/// Nexmark q5: a hopping count per auction, then the top auctions of each window (with ties).
#[test]
fn q5_hot_items() {
    check("q5", 45);
}

/// Nexmark q7: the maximum price of each tumbling window, joined back to its bids (interval join).
#[test]
fn q7_highest_bid() {
    check("q7", 10);
}

/// Nexmark q8: a window join of the distinct people and sellers per tumbling window.
#[test]
fn q8_new_users() {
    check("q8", 500);
}

/// A window of size ≤ 0, a hop that does not divide the size (weir builds hopping windows from
/// panes of one slide) or a session gap ≤ 0 fails planning, before anything runs, with an error
/// naming the step and the key; in every step that takes a window.
#[test]
fn bad_windows_are_plan_errors_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let windowed = |window: &str| {
        [
            format!(
                "  - name: windowed\n    op: aggregate\n    input: events\n    keys: [k]\n    \
                 time: ts\n    window: {window}\n    aggregates: [\"count(*) AS n\"]\n"
            ),
            format!(
                "  - name: windowed\n    op: top_n\n    input: events\n    time: ts\n    \
                 window: {window}\n    order_by: [v DESC]\n    n: 1\n"
            ),
            format!(
                "  - name: windowed\n    op: window_join\n    inputs: [events, events]\n    \
                 left_keys: [k]\n    right_keys: [k]\n    left_time: ts\n    right_time: ts\n    \
                 right_prefix: r_\n    window: {window}\n"
            ),
        ]
    };
    let cases = [
        (
            "{type: tumbling, size: 0s}",
            "key 'window.size': must be greater than 0",
        ),
        (
            "{type: tumbling, size: -10s}",
            "key 'window.size': must be greater than 0",
        ),
        (
            "{type: hopping, size: 0s, slide: 2s}",
            "key 'window.size': must be greater than 0",
        ),
        (
            "{type: hopping, size: 10s, slide: 0s}",
            "key 'window.slide': must be greater than 0",
        ),
        (
            "{type: hopping, size: 10s, slide: 3s}",
            "key 'window.slide': must divide 'window.size' evenly",
        ),
    ];
    for (window, want) in cases {
        for step in windowed(window) {
            let spec = tmp.path().join("spec.yaml");
            std::fs::write(
                &spec,
                format!(
                    "name: bad-window\nsteps:\n  - name: events\n    source: values\n    rows:\n      \
                     - {{k: 1, v: 2, ts: 5}}\n{step}  - sink: jsonl\n    path: ${{OUT}}/rows\n"
                ),
            )
            .expect("write spec");
            let opts = weir_plan::PlanOptions {
                parallelism: Some(1),
                overrides: Vec::new(),
                vars: [("OUT".to_string(), tmp.path().display().to_string())].into(),
            };
            let e = match weir_plan::plan_file(&spec, &opts) {
                Ok(_) => panic!("{window} planned in:\n{step}"),
                Err(e) => e.report(),
            };
            assert!(
                e.contains("'windowed'") && e.contains(want),
                "{window} in:\n{step}\nsays: {e}"
            );
        }
    }
    // Session windows (aggregate only): a gap of zero.
    let spec = tmp.path().join("session.yaml");
    std::fs::write(
        &spec,
        "name: bad-session\nsteps:\n  - name: events\n    source: values\n    rows:\n      \
         - {k: 1, ts: 5}\n  - name: windowed\n    op: aggregate\n    keys: [k]\n    time: ts\n    \
         window: {type: session, gap: 0ms}\n    aggregates: [\"count(*) AS n\"]\n  \
         - sink: blackhole\n",
    )
    .expect("write spec");
    let e = match weir_plan::plan_file(&spec, &weir_plan::PlanOptions::default()) {
        Ok(_) => panic!("a session gap of 0 plans"),
        Err(e) => e.report(),
    };
    assert!(
        e.contains("'windowed'") && e.contains("key 'window.gap'"),
        "{e}"
    );
}
