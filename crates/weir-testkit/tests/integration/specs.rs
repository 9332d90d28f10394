//! Every step of every pipeline the repository ships (examples, benchmarks, golden tests) parses
//! into its registered kind, serialises to a value, and parses from that value into the same spec.

use std::path::{Path, PathBuf};
use weir_plan::kinds::{ROUTING, builtin};
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

/// The spec's text with every `${NAME}` given a value of its own (`/NAME`).
pub fn with_vars(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read spec");
    let mut vars = std::collections::HashMap::new();
    for part in text.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        vars.insert(name.clone(), format!("/{name}"));
    }
    weir_plan::spec::substitute(&text, &path.display().to_string(), &vars).expect("substitute")
}

#[test]
fn every_shipped_step_serialises_to_a_value_that_parses_back_to_the_same_spec() {
    let registry = builtin();
    let mut steps = 0;
    for path in shipped_specs() {
        let text = with_vars(&path);
        // Parsing registers the services a spec declares: leave them out here.
        let no_services = ["services=[]".to_string()];
        let spec = weir_plan::spec::parse(&text, &path.display().to_string(), &no_services)
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
