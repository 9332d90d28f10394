//! A whole pipeline spec with a `services:` section: the photos' page orientation with the model
//! as a service (two instances, unordered results) gives the same labels and scores as the model
//! run inline.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn photos() -> PathBuf {
    let dir = std::env::var_os("WEIR_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weir/data"))
        .join("photos");
    assert!(
        dir.is_dir(),
        "photos not found at {}: run scripts/setup-models.sh",
        dir.display()
    );
    dir
}

/// uri → scores, from a JSON Lines output.
fn scores(path: &Path) -> BTreeMap<String, Vec<f64>> {
    weir_testkit::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let uri = v["uri"].as_str().unwrap().to_string();
            let s = v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (uri, s)
        })
        .collect()
}

#[test]
fn a_service_in_the_spec_answers_like_the_inline_model() {
    let model = common::orientation().display().to_string();
    let url = format!("steps.0.url={}", photos().display());
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs");
    let out = tempfile::tempdir().unwrap();

    let set_service = format!("services.0.model={model}");
    let (report, services) = weir_testkit::run_spec_with_services(
        &specs.join("orientation-service.yaml"),
        out.path(),
        1,
        &[&set_service, &url],
    )
    .unwrap();
    let node = report
        .nodes
        .iter()
        .find(|n| n.name == "orientation")
        .unwrap();
    assert_eq!(node.totals.dead_letters, 0);

    let set_inline = format!("steps.orientation.model={model}");
    weir_testkit::run_spec(
        &specs.join("orientation-inline.yaml"),
        out.path(),
        1,
        &[&set_inline, &url],
    )
    .unwrap();

    let service = scores(&out.path().join("service.jsonl"));
    let inline = scores(&out.path().join("inline.jsonl"));
    assert!(inline.len() > 50, "{} photos", inline.len());
    assert_eq!(
        service.keys().collect::<Vec<_>>(),
        inline.keys().collect::<Vec<_>>()
    );
    for (uri, a) in &service {
        let b = &inline[uri];
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{uri}: {a:?} vs {b:?}");
        }
    }
    // The per-job service stopped with the job.
    let svc = services
        .iter()
        .find(|s| s.name() == "orientation-yaml-test")
        .unwrap();
    assert_eq!(svc.status().ready, 0);
    assert!(svc.status().answered > 0);
}
