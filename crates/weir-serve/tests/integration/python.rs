//! Bring your own framework: `python/weir_instance.py` (a `pyarrow.flight` server running the
//! same model with Python onnxruntime, set up by `scripts/setup-python-instance.sh`) as the
//! instances of a service. Its answers equal the in-process ONNX Runtime's for the same
//! request; as the instances of a YAML-declared service (`placement: process`, `command:`) the
//! photos' orientation equals the inline model's; a request that does not fit the model is a
//! clear non-retryable error; `kill -9` of a Python instance under load loses nothing.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_infer::{Backend, BackendOptions, CallOptions, ModelService, OrtBackend};
use weir_serve::flight::process_factory;
use weir_serve::{InstancesSpec, Service, ServiceSpec};

const LONG: Duration = Duration::from_secs(180);

/// The venv's python and the instance script; fails with the fix when the venv is missing.
fn python_instance() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = std::env::var_os("WEIR_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".weir"))
        .join("venv-instance/bin/python");
    assert!(
        venv.is_file(),
        "python instance environment not found at {}: run scripts/setup-python-instance.sh",
        venv.display()
    );
    let script = root.join("python/weir_instance.py");
    assert!(script.is_file(), "{} is missing", script.display());
    vec![venv.display().to_string(), script.display().to_string()]
}

fn python_service(name: &str, n: usize) -> (Service, Arc<Mutex<Vec<u32>>>) {
    let model = orientation();
    let mut spec = ServiceSpec::new(name, &model);
    spec.instances = InstancesSpec {
        initial: n,
        min: 1,
        max: Some(n),
    };
    let pids = Arc::new(Mutex::new(Vec::new()));
    let factory = process_factory(python_instance(), model, 1, pids.clone());
    (Service::with_backend(spec, factory).unwrap(), pids)
}

fn wait_ready(svc: &Service, n: usize) {
    let members = svc.members();
    wait_until(LONG, &format!("{n} ready python instances"), || {
        let m = members.borrow();
        m.ready.len() == n && m.loading.is_empty()
    });
}

fn values(t: &weir_infer::HostTensor) -> Vec<f32> {
    t.data
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .unwrap()
        .values()
        .to_vec()
}

#[test]
fn a_python_instance_answers_like_the_in_process_model_and_survives_kill_9() {
    let model = orientation();
    let (svc, pids) = python_service("python-direct", 2);
    svc.attach().unwrap();
    wait_ready(&svc, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions {
        timeout: Duration::from_secs(60),
        ..CallOptions::default()
    };

    // Same answers as ONNX Runtime in this process.
    let mut local = OrtBackend::load(
        &model,
        &BackendOptions {
            cpus: 1,
            gpus: 0,
            spin: false,
        },
    )
    .unwrap();
    let want = local.run(request(0, 5)).unwrap();
    let got = rt.block_on(svc.call(request(0, 5), &opts)).unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(got[0].0, want[0].0);
    assert_eq!(got[0].1.shape, vec![5, 4]);
    for (a, b) in values(&got[0].1).iter().zip(values(&want[0].1)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    // A request that does not fit the model: a clear error, not retried, the service stays up.
    let wrong = vec![(
        "x".to_string(),
        weir_infer::HostTensor::try_new(
            vec![1, 3, 224, 224],
            Arc::new(arrow::array::Int64Array::from(vec![0i64; 3 * 224 * 224])),
        )
        .unwrap(),
    )];
    let e = rt.block_on(svc.call(wrong, &opts)).unwrap_err();
    assert!(!e.kind().is_retryable(), "{e}");
    assert!(
        e.to_string().contains("the model wants tensor(float)"),
        "{e}"
    );

    // kill -9 of a Python instance under load: re-dispatched, replaced, nothing lost.
    let victim = pids.lock().unwrap()[0];
    let answers = std::thread::scope(|s| {
        s.spawn(|| {
            wait_until(LONG, "first answers", || svc.status().answered >= 6);
            let ok = std::process::Command::new("kill")
                .args(["-9", &victim.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        });
        rt.block_on(async {
            use futures::StreamExt;
            futures::stream::iter((0..40u64).map(|i| svc.call(request(i * 4, 4), &opts)))
                .buffered(6)
                .collect::<Vec<_>>()
                .await
        })
    });
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(a[0].1.shape, vec![4, 4]);
    }
    let st = svc.status();
    assert_eq!((st.deaths, st.failed), (1, 1), "{st}"); // the one failure is the wrong request
    wait_ready(&svc, 2);
    svc.detach();
}

fn scores(path: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    weir_testkit::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let s = v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (v["uri"].as_str().unwrap().to_string(), s)
        })
        .collect()
}

#[test]
fn python_instances_declared_in_yaml_classify_like_the_inline_model() {
    let model = orientation().display().to_string();
    let photos = std::env::var_os("WEIR_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weir/data"))
        .join("photos");
    let url = format!("steps.0.url={}", photos.display());
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs");
    let out = tempfile::tempdir().unwrap();
    let command = format!("services.0.command=[{}]", python_instance().join(", "));
    let (_, services) = weir_testkit::run_spec_with_services(
        &specs.join("orientation-service.yaml"),
        out.path(),
        1,
        &[
            &format!("services.0.model={model}"),
            "services.0.name=orientation-python",
            "services.0.placement=process",
            &command,
            "steps.orientation.service=orientation-python",
            &url,
        ],
    )
    .unwrap();
    weir_testkit::run_spec(
        &specs.join("orientation-inline.yaml"),
        out.path(),
        1,
        &[&format!("steps.orientation.model={model}"), &url],
    )
    .unwrap();
    let python = scores(&out.path().join("service.jsonl"));
    let inline = scores(&out.path().join("inline.jsonl"));
    assert!(inline.len() > 50, "{} photos", inline.len());
    assert_eq!(
        python.keys().collect::<Vec<_>>(),
        inline.keys().collect::<Vec<_>>()
    );
    for (uri, a) in &python {
        for (x, y) in a.iter().zip(&inline[uri]) {
            assert!((x - y).abs() < 1e-4, "{uri}: {a:?} vs {:?}", inline[uri]);
        }
    }
    let svc = services
        .iter()
        .find(|s| s.name() == "orientation-python")
        .unwrap();
    let st = svc.status();
    assert!(st.answered > 0 && st.processes.len() == 2, "{st}");
}
