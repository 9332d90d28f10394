//! Every step of every pipeline the repository ships (examples, benchmarks, golden tests) parses
//! into its registered kind, serialises to a value, and parses from that value into the same spec;
//! every shipped pipeline goes through the logical graph's JSON form to the same plan.

use std::path::{Path, PathBuf};
use weir_plan::kinds::{ROUTING, builtin};
use weir_plan::{LogicalGraph, PlanOptions, plan_graph, yaml_graph};
use weir_testkit::repo_root;

/// The shipped pipeline specs: `*.yaml` under examples/, bench/ and tests/golden/.
pub fn shipped_specs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for d in ["examples", "bench", "tests/golden"] {
        walk(&repo_root().join(d), &mut out);
    }
    out.sort();
    assert!(out.len() >= 15, "found only {out:?}");
    out
}

/// The spec (parsed) with every `${NAME}` given a value of its own (`/NAME`); a `${NAME:-default}`
/// keeps its default (which may be a number where a path would not parse).
pub fn with_vars(path: &Path) -> weir_plan::spec::Value {
    let text = std::fs::read_to_string(path).expect("read spec");
    let mut vars = std::collections::HashMap::new();
    for part in text.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if part[name.len()..].starts_with(":-") {
            continue;
        }
        vars.insert(name.clone(), format!("/{name}"));
    }
    weir_plan::spec::substitute(&text, &path.display().to_string(), &vars).expect("substitute")
}

#[test]
fn every_shipped_step_serialises_to_a_value_that_parses_back_to_the_same_spec() {
    let registry = builtin();
    let mut steps = 0;
    for path in shipped_specs() {
        let value = with_vars(&path);
        let spec = weir_plan::spec::parse_value(value, &path.display().to_string(), &[])
            .unwrap_or_else(|e| panic!("{}", e.report()));
        for step in &spec.steps {
            if ROUTING.contains(&step.kind.as_str()) {
                continue;
            }
            let at = format!("{}: {}", path.display(), step.locator());
            let first = registry
                .parse(
                    step.role,
                    &step.kind,
                    step.options_json().expect("json"),
                    &at,
                )
                .unwrap_or_else(|e| panic!("{}", e.report()));
            let value = first.to_value().expect("to value");
            let again = registry
                .parse(step.role, &step.kind, value.clone(), &at)
                .unwrap_or_else(|e| panic!("{at}: {value} does not parse back: {}", e.report()));
            assert_eq!(format!("{first:?}"), format!("{again:?}"), "{at}");
            assert_eq!(again.to_value().expect("to value"), value, "{at}");
            steps += 1;
        }
    }
    assert!(steps > 60, "only {steps} steps");
}

/// Values for every `${NAME}` of a shipped spec without a default of its own: the set-up's models
/// and data (and photos for `IMAGES`), the repository root, `out` for outputs, `/NAME` for the rest.
fn plan_vars(path: &Path, out: &Path) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read spec");
    let mut vars = std::collections::HashMap::new();
    for part in text.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if part[name.len()..].starts_with(":-") {
            continue; // the spec's own default
        }
        let value = match name.as_str() {
            "IMAGES" => weir_testkit::setup::data_dir()
                .join("photos")
                .display()
                .to_string(),
            "WEIR_MODELS" => weir_testkit::setup::models_dir().display().to_string(),
            "WEIR_DATA" => weir_testkit::setup::data_dir().display().to_string(),
            "ROOT" => repo_root().display().to_string(),
            "OUT" | "OUT_DIR" => out.display().to_string(),
            _ => format!("/{name}"),
        };
        vars.insert(name, value);
    }
    vars
}

/// Issue 12's test of the logical graph: for every shipped pipeline, YAML → graph → JSON → graph
/// gives the same graph, and planning both gives the same plan (the planned graph with its
/// schemas and rewrites, and the physical plan: tasks, chains, edges, parallelism). A pipeline
/// that cannot be planned here (a missing input) must fail the same way from both.
#[test]
fn every_shipped_pipeline_through_json_gives_the_same_physical_plan() {
    let registry = builtin();
    let out = tempfile::tempdir().expect("tmp");
    let (mut planned, mut failed) = (Vec::new(), Vec::new());
    for path in shipped_specs() {
        let origin = path.display().to_string();
        let opts = PlanOptions {
            vars: plan_vars(&path, out.path()),
            ..PlanOptions::default()
        };
        let text = std::fs::read_to_string(&path).expect("read spec");
        let graph = yaml_graph(&registry, &text, &origin, &opts)
            .unwrap_or_else(|e| panic!("{}", e.report()));
        let json = graph.to_json().expect("to json");
        let again = LogicalGraph::from_json(&json, &origin)
            .unwrap_or_else(|e| panic!("{origin}: {}", e.report()));
        assert_eq!(again, graph, "{origin}");
        match (
            plan_graph(&registry, &graph, &origin),
            plan_graph(&registry, &again, &origin),
        ) {
            (Ok(a), Ok(b)) => {
                let a = a.explain_json().expect("explain");
                assert_eq!(a, b.explain_json().expect("explain"), "{origin}");
                let v: serde_json::Value = serde_json::from_str(&a).expect("json");
                assert!(
                    v["physical"]["tasks"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty()),
                    "{origin}: {a}"
                );
                planned.push(origin);
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.report(), b.report(), "{origin}");
                failed.push(format!("{origin}: {}", a.report()));
            }
            (a, b) => panic!(
                "{origin}: planned from YAML: {:?}; from JSON: {:?}",
                a.map(|_| ()).map_err(|e| e.report()),
                b.map(|_| ()).map_err(|e| e.report())
            ),
        }
    }
    // Those not planned here read inputs made by the benchmarks' set-up or another pipeline, or
    // paths relative to the repository root (tests run in the crate's directory).
    for f in &failed {
        assert!(
            f.contains("does not exist") || f.contains("cannot open"),
            "{f}"
        );
    }
    assert!(planned.len() >= 7, "planned {planned:?}; failed {failed:?}");
}
