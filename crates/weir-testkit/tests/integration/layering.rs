//! The workspace's layering, as ARCHITECTURE.md states it: the weir crates form tiers, and a
//! crate's dependencies (normal ones) are only on crates of lower tiers, never on a sibling of
//! its own tier (so no cycle can form, not even through a future dev-dependency turned normal,
//! and siblings stay independent of each other); a crate not in the list fails until it is
//! placed, and no crate of the engine depends on Python (`pyo3`): only the Python package's
//! native module, `weir-python`, at the top, which nothing depends on.

use std::path::Path;
use weir_testkit::repo_root;

/// Bottom to top: a crate may depend only on crates of the tiers before its own.
const TIERS: &[&[&str]] = &[
    // The vocabulary: messages, errors, key groups.
    &["weir-types"],
    // The one URL -> object store resolver.
    &["weir-store"],
    // The checkpoint protocol and store.
    &["weir-checkpoint"],
    // The runtime, and keyed state (which needs no runtime).
    &["weir-runtime", "weir-state"],
    // Step kinds over the runtime: relational, stateful, connectors, media, inference, text,
    // vectors.
    &[
        "weir-ops",
        "weir-stream",
        "weir-connectors",
        "weir-media",
        "weir-infer",
        "weir-text",
        "weir-vector",
    ],
    // What builds on one of those: generator and Kafka connectors (on the connectors' file and
    // two-phase machinery), inference services (on weir-infer's pool and contract).
    &["weir-datagen", "weir-kafka", "weir-serve"],
    // Planning every kind; the job seen from outside.
    &["weir-plan", "weir-web"],
    // Running specs in tests; the binary; the Python package's native module.
    &["weir-testkit", "weir-cli", "weir-python"],
];

/// The one crate that may depend on pyo3: the Python package's native module.
const PYTHON: &str = "weir-python";

/// The tier of a weir crate, `None` for a crate outside weir.
fn tier(name: &str) -> Option<usize> {
    TIERS.iter().position(|t| t.contains(&name))
}

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
fn weir_crates_depend_only_on_lower_tiers_and_never_on_python() {
    let crates = repo_root().join("crates");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/").flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(level) = tier(&name) else {
            panic!(
                "crate {name} is not placed in the layering (tests/integration/layering.rs, ARCHITECTURE.md)"
            );
        };
        for dep in dependencies(&manifest) {
            assert!(
                name == PYTHON || !dep.starts_with("pyo3"),
                "{name} depends on {dep}: the engine never depends on Python"
            );
            if let Some(dep_level) = tier(&dep) {
                assert!(
                    dep_level < level,
                    "{name} (tier {level}) depends on {dep} (tier {dep_level}): a crate depends only on lower tiers, never on a sibling"
                );
            }
        }
        seen.push(name);
    }
    assert!(seen.len() >= 10, "found only {seen:?}");
    for t in TIERS.iter().flat_map(|t| t.iter()) {
        assert!(
            seen.iter().any(|s| s == t),
            "{t} is in the tiers but not in crates/"
        );
    }
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
