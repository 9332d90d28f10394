//! Golden pipelines: each case under `tests/golden/<case>/` runs at parallelism 1 and at 4, and
//! every output `${OUT}/<name>` must equal `expected/<name>.jsonl` exactly (rows compared as sorted
//! JSON lines, since these pipelines define no order). `UPDATE_GOLDEN=1` rewrites the files.

use weir_testkit::{check_golden, read_rows, repo_root, run_spec};

fn golden(case: &str) {
    let dir = repo_root().join("tests/golden").join(case);
    let spec = dir.join("pipeline.yaml");
    let mut expected: Vec<_> = std::fs::read_dir(dir.join("expected"))
        .expect("expected dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    expected.sort();
    assert!(!expected.is_empty(), "{case}: no expected outputs");
    let root = repo_root().display().to_string();
    for parallelism in [1, 4] {
        let out = tempfile::tempdir().expect("tempdir");
        run_spec(&spec, out.path(), parallelism, &[])
            .unwrap_or_else(|e| panic!("{case} at parallelism {parallelism}: {}", e.report()));
        for exp in &expected {
            let name = exp.file_stem().and_then(|s| s.to_str()).expect("name");
            let rows: Vec<String> = read_rows(&out.path().join(name))
                .expect("read output")
                .into_iter()
                .map(|r| {
                    r.replace(&root, "<ROOT>")
                        .replace(&out.path().display().to_string(), "<OUT>")
                })
                .collect();
            // At parallelism 4, golden files were written at parallelism 1: compare, never rewrite.
            if parallelism == 1 {
                check_golden(exp, &rows);
            } else {
                let want = std::fs::read_to_string(exp).expect("golden");
                let want: Vec<&str> = want.lines().collect();
                assert_eq!(
                    want, rows,
                    "{case}/{name} at parallelism 4 differs from parallelism 1"
                );
            }
        }
    }
}

#[test]
fn orders() {
    golden("orders");
}

#[test]
fn returns_with_dead_letters() {
    golden("returns");
}

#[test]
fn union_rename_rebalance() {
    golden("union_rename");
}
