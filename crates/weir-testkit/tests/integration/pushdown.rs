//! Projection pushdown: a Parquet source whose consumers read only some of its columns reads only
//! those, and the results are exactly those of the same pipeline over a source that reads every
//! column (the CSV the Parquet file was written from). A files source emits only the listing
//! columns its consumers read (and reads no file when they do not read `bytes`); the operators
//! that add columns (decode, infer, top_k...) pass the needs of their consumers through.

use std::path::Path;
use weir_plan::{PlanOptions, plan_str};
use weir_testkit::{read_rows, run_spec};

/// The steps after the source: filter, with_column, rename, key_by, select, sink.
const CHAIN: &str = r#"
  - name: big
    op: filter
    predicate: "amount * quantity > 1000 AND category <> 'garden'"
  - name: enrich
    op: with_column
    column: total
    expr: "round(amount * quantity, 2)"
  - name: named
    op: rename
    columns: { city: town }
  - op: key_by
    keys: [town]
  - name: shape
    op: select
    columns: ["order_id", "upper(town) AS town", "total"]
  - name: out
    sink: jsonl
    path: ${OUT}/out
"#;

fn write(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("write spec");
    p
}

/// Writes the orders CSV as Parquet under `work/pq/orders`; returns `work/pq`.
fn orders_as_parquet(work: &Path) -> std::path::PathBuf {
    let to_parquet = write(
        work,
        "to_parquet.yaml",
        "name: to-parquet\nsteps:\n  - source: csv\n    path: ${ROOT}/examples/orders/orders.csv\n  - sink: parquet\n    path: ${OUT}/orders\n",
    );
    let pq = work.join("pq");
    run_spec(&to_parquet, &pq, 1, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
    pq
}

#[test]
fn parquet_source_reads_only_needed_columns_and_results_are_unchanged() {
    let work = tempfile::tempdir().expect("tempdir");
    // 1. The orders CSV as Parquet (a sink reads every column: no pushdown here).
    let pq = orders_as_parquet(work.path());

    // 2. The plan reads only the columns the chain uses.
    let pq_spec = format!(
        "name: pushdown\nsteps:\n  - name: orders\n    source: parquet\n    path: {}\n{CHAIN}",
        pq.join("orders").display()
    );
    let opts = PlanOptions {
        vars: [("OUT".to_string(), "/tmp/unused".to_string())].into(),
        ..PlanOptions::default()
    };
    let plan =
        plan_str(&pq_spec, "pushdown.yaml", &opts).unwrap_or_else(|e| panic!("{}", e.report()));
    let source = &plan.steps[0];
    let read: Vec<&str> = source
        .schema
        .as_ref()
        .expect("source schema")
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        read,
        ["order_id", "city", "category", "amount", "quantity"],
        "columns read by the parquet source"
    );
    assert!(
        source
            .description
            .contains("reads only order_id, city, category, amount, quantity"),
        "{}",
        source.description
    );

    // 3. Same rows as the pipeline over the CSV (which reads every column), at two parallelisms.
    let csv_spec = write(
        work.path(),
        "csv.yaml",
        &format!(
            "name: full\nsteps:\n  - name: orders\n    source: csv\n    path: ${{ROOT}}/examples/orders/orders.csv\n{CHAIN}"
        ),
    );
    let pq_spec = write(work.path(), "pq.yaml", &pq_spec);
    let run = |spec: &Path, parallelism: u32| {
        let out = tempfile::tempdir().expect("tempdir");
        run_spec(spec, out.path(), parallelism, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
        read_rows(&out.path().join("out")).expect("rows")
    };
    let want = run(&csv_spec, 1);
    assert!(want.len() > 100, "the chain keeps rows: {}", want.len());
    for parallelism in [1, 3] {
        assert_eq!(
            run(&pq_spec, parallelism),
            want,
            "parallelism {parallelism}"
        );
    }
}

#[test]
fn a_sink_after_the_source_reads_every_column() {
    let work = tempfile::tempdir().expect("tempdir");
    let pq = orders_as_parquet(work.path());
    // One branch selects a column, the other writes everything: the union of needs is all.
    let spec = format!(
        "name: both\nsteps:\n  - name: orders\n    source: parquet\n    path: {}\n  - name: ids\n    op: select\n    columns: [order_id]\n  - name: ids_out\n    sink: blackhole\n  - name: all_out\n    input: orders\n    sink: blackhole\n",
        pq.join("orders").display()
    );
    let plan = plan_str(&spec, "both.yaml", &PlanOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(
        plan.steps[0]
            .schema
            .as_ref()
            .expect("schema")
            .fields()
            .len(),
        7
    );
    assert!(!plan.steps[0].description.contains("reads only"));
}

#[test]
fn a_files_source_emits_only_the_listing_columns_its_consumers_read() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut want = Vec::new();
    for (name, len) in [("a.txt", 3usize), ("b.txt", 10), ("c.txt", 0)] {
        std::fs::write(dir.join(name), vec![b'x'; len]).expect("write");
        want.push(format!(
            "{{\"uri\":\"file://{}\",\"size\":{len}}}",
            dir.join(name).display()
        ));
    }
    let spec = format!(
        "name: listing\nsteps:\n  - name: files\n    source: files\n    url: {}\n  - op: select\n    columns: [uri, size]\n  - name: out\n    sink: jsonl\n    path: ${{OUT}}/out\n",
        dir.display()
    );
    let opts = PlanOptions {
        vars: [("OUT".to_string(), "/tmp/unused".to_string())].into(),
        ..PlanOptions::default()
    };
    let plan = plan_str(&spec, "listing.yaml", &opts).unwrap_or_else(|e| panic!("{}", e.report()));
    assert!(
        plan.steps[0].description.contains("reads only uri, size"),
        "{}",
        plan.steps[0].description
    );
    let spec = write(work.path(), "listing.yaml", &spec);
    let out = work.path().join("run");
    run_spec(&spec, &out, 2, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
    let mut rows = read_rows(&out.join("out")).expect("rows");
    rows.sort();
    assert_eq!(rows, want);
}
