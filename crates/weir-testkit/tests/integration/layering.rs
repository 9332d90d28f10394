//! The workspace's layering, as ARCHITECTURE.md states it: dependencies between weir crates only
//! point down the list below (so no cycle can form, not even through a future dev-dependency
//! turned normal), a crate not in the list fails until it is placed, and no crate of the engine
//! depends on Python (`pyo3`).

use std::path::Path;
use weir_testkit::repo_root;

/// Bottom to top: a crate may depend only on crates before it.
const LAYERS: &[&str] = &[
    "weir-types",
    "weir-store",
    "weir-checkpoint",
    "weir-state",
    "weir-runtime",
    "weir-ops",
    "weir-stream",
    "weir-connectors",
    "weir-kafka",
    "weir-datagen",
    "weir-media",
    "weir-infer",
    "weir-text",
    "weir-vector",
    "weir-serve",
    "weir-plan",
    "weir-web",
    "weir-testkit",
    "weir-cli",
];

/// The crate names listed under `[dependencies]` (normal dependencies only) of a manifest.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest.display()));
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_string());
            }
        }
    }
    deps
}

#[test]
fn weir_crates_depend_only_downwards_and_never_on_python() {
    let crates = repo_root().join("crates");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/").flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(level) = LAYERS.iter().position(|l| *l == name) else {
            panic!(
                "crate {name} is not placed in the layering (tests/integration/layering.rs, ARCHITECTURE.md)"
            );
        };
        for dep in dependencies(&manifest) {
            assert!(
                !dep.starts_with("pyo3"),
                "{name} depends on {dep}: the engine never depends on Python"
            );
            if let Some(dep_level) = LAYERS.iter().position(|l| *l == dep) {
                assert!(
                    dep_level < level,
                    "{name} depends on {dep}, which is not below it in the layering"
                );
            }
        }
        seen.push(name);
    }
    assert!(seen.len() >= 10, "found only {seen:?}");
}

#[test]
fn the_manifest_reader_sees_normal_dependencies_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("Cargo.toml");
    std::fs::write(
        &p,
        "[package]\nname = \"x\"\n\n[dependencies]\nweir-types = { workspace = true }\narrow = \"59\"\n\n[dev-dependencies]\nweir-plan = { workspace = true }\n",
    )
    .expect("write");
    assert_eq!(dependencies(&p), ["weir-types", "arrow"]);
}
