//! Where `scripts/setup-models.sh` put what the tests need (ONNX Runtime, the models, the data):
//! the paths it writes to `.weir/env.sh` when they are in the environment, else the repository's
//! `.weir/`. Every lookup panics with the fix when the file is not there.
//!
//! Uses only `std`, so that `weir-infer`'s tests can include this file by path: a dependency on
//! `weir-testkit` would link the whole engine into them.

use std::path::PathBuf;

/// The set-up's home: `$WEIR_HOME`, or the repository's `.weir`.
fn home() -> PathBuf {
    std::env::var_os("WEIR_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.weir"))
}

/// `$var`, or `default` (under the set-up's home); it must exist.
fn located(var: &str, default: impl FnOnce(PathBuf) -> PathBuf) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default(home()));
    assert!(
        p.exists(),
        "{var}={} is missing: run scripts/setup-models.sh",
        p.display()
    );
    p
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, or the one `libonnxruntime.so.*` the set-up put
/// in `.weir/lib` (whatever its version).
pub fn ort_library() -> PathBuf {
    located("ORT_DYLIB_PATH", |home| {
        let lib = home.join("lib");
        std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
            })
            .unwrap_or_else(|| lib.join("libonnxruntime.so"))
    })
}

/// The models: `$WEIR_MODELS`, or `.weir/models`.
pub fn models_dir() -> PathBuf {
    located("WEIR_MODELS", |home| home.join("models"))
}

/// The data (photos, text, speech): `$WEIR_DATA`, or `.weir/data`.
pub fn data_dir() -> PathBuf {
    located("WEIR_DATA", |home| home.join("data"))
}

/// The Python interpreter of the DuckDB venv (`scripts/setup-duckdb.sh`), which computes the
/// reference answers of the Nexmark query checks.
pub fn duckdb_python() -> PathBuf {
    let p = home().join("venv-duckdb/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-duckdb.sh",
        p.display()
    );
    p
}
