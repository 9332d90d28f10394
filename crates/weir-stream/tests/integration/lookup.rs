//! `op: lookup_join` against a real Parquet file: inner and left joins, and a reload when the
//! file is replaced while the operator runs.

use crate::windows::{rows, schema};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;
use weir_runtime::{Emitter, ErrorPolicy, Operator, OperatorContext};
use weir_stream::{LookupHow, LookupJoinSpec, Span};

/// Writes the table (k, label, weight) as Parquet at `path` (via a temporary file and a rename,
/// as a producer replacing a table would).
fn write_table(path: &Path, rows: &[(&str, &str, i64)]) {
    let batch = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "label",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ),
        (
            "weight",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ),
    ])
    .expect("table");
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    std::fs::rename(&tmp, path).expect("rename");
}

fn spec(path: &Path, how: LookupHow) -> LookupJoinSpec {
    LookupJoinSpec {
        table: path.to_path_buf(),
        keys: vec!["k".into()],
        table_keys: None,
        columns: Some(vec!["label".into()]),
        prefix: "t_".into(),
        how,
        reload: Span(1),
    }
}

async fn join(op: &mut Box<dyn Operator>, ctx: &mut OperatorContext, b: RecordBatch) -> String {
    let mut out = Emitter::default();
    op.process_batch(b, ctx, &mut out).await.expect("process");
    let got = out.take();
    let mut lines: Vec<String> = pretty_format_batches(&got)
        .expect("pretty")
        .to_string()
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines.join("\n")
}

#[tokio::test]
async fn rows_are_enriched_and_a_replaced_table_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labels.parquet");
    write_table(
        &path,
        &[("a", "apple", 1), ("b", "banana", 2), ("b", "berry", 3)],
    );
    let s = spec(&path, LookupHow::Inner);
    let out_schema = s.output_schema(&schema()).expect("schema");
    assert_eq!(out_schema.field(3).name(), "t_label");
    let mut op = s.create(&schema()).expect("create");
    let mut ctx = OperatorContext::for_test("lookup", ErrorPolicy::Fail);
    op.open(&mut ctx).await.expect("open");
    let got = join(
        &mut op,
        &mut ctx,
        rows(&[("a", 1, 10), ("b", 2, 20), ("c", 3, 30)]),
    )
    .await;
    assert_eq!(
        got,
        "| a | 1970-01-01T00:00:00.001 | 10 | apple |\n| b | 1970-01-01T00:00:00.002 | 20 | banana |\n| b | 1970-01-01T00:00:00.002 | 20 | berry |"
    );
    write_table(&path, &[("c", "cherry", 1)]);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let got = join(&mut op, &mut ctx, rows(&[("a", 1, 10), ("c", 3, 30)])).await;
    assert_eq!(got, "| c | 1970-01-01T00:00:00.003 | 30 | cherry |");
    // A broken replacement keeps the previous table.
    std::fs::write(&path, b"not parquet").expect("break");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let got = join(&mut op, &mut ctx, rows(&[("c", 3, 30)])).await;
    assert_eq!(got, "| c | 1970-01-01T00:00:00.003 | 30 | cherry |");

    let mut left = spec(&path.with_file_name("left.parquet"), LookupHow::Left);
    write_table(&left.table, &[("a", "apple", 1)]);
    left.columns = None;
    let mut op = left.create(&schema()).expect("create");
    op.open(&mut ctx).await.expect("open");
    let got = join(&mut op, &mut ctx, rows(&[("a", 1, 10), ("z", 2, 20)])).await;
    assert_eq!(
        got,
        "| a | 1970-01-01T00:00:00.001 | 10 | apple | 1 |\n| z | 1970-01-01T00:00:00.002 | 20 | | |"
    );
    let missing = spec(&dir.path().join("nope.parquet"), LookupHow::Inner);
    let e = missing.output_schema(&schema()).expect_err("missing table");
    assert!(e.message().contains("key 'table'"), "{e}");
}
