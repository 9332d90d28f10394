//! The Nexmark queries of `examples/nexmark/`, each checked against an independent computation:
//! the generated events are dumped to Parquet (`examples/nexmark/events.yaml`), DuckDB computes
//! the query over the dump (`tests/nexmark/check.py`, the benchmark's SQL) and the answers must
//! be equal as multisets of rows. Queries run at parallelism 1 and 2 (the generator's splits, and
//! so the order of rows, differ; the answer must not).

use std::path::Path;
use std::process::Command;
use weir_testkit::{repo_root, run_spec, setup};

/// Dumps the events the examples generate by default (100 000 events: 2 000 persons, 6 000
/// auctions, 92 000 bids over 10 s of event time) to `dir`.
fn dump_events(dir: &Path) {
    let spec = repo_root().join("examples/nexmark/events.yaml");
    run_spec(&spec, dir, 2, &[]).unwrap_or_else(|e| panic!("dumping the events: {}", e.report()));
}

fn check(query: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("events");
    dump_events(&events);
    for parallelism in [1, 2] {
        let out = tmp.path().join(format!("p{parallelism}"));
        let spec = repo_root().join(format!("examples/nexmark/{query}.yaml"));
        run_spec(&spec, &out, parallelism, &[])
            .unwrap_or_else(|e| panic!("{query} at parallelism {parallelism}: {}", e.report()));
        let result = Command::new(setup::duckdb_python())
            .arg(repo_root().join("tests/nexmark/check.py"))
            .arg(query)
            .arg(&events)
            .arg(out.join(query))
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
    check("q0");
}

#[test]
fn q1_currency_conversion() {
    check("q1");
}

#[test]
fn q2_selection() {
    check("q2");
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
