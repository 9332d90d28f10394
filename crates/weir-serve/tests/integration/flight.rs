//! Out-of-process instances: `weir-serve-model` processes (the server of `weir serve-model`)
//! speaking Arrow Flight over loopback, running the real page-orientation model. `kill -9` of an
//! instance process under load: its requests are re-dispatched and a replacement starts; SIGTERM:
//! the instance finishes what it holds, refuses new work, exits, and nothing is lost. With the
//! slower ResNet-50 model a request is provably in flight when SIGTERM arrives: within the grace
//! period it is answered by the preempted instance; past it, it is handed back and answered by
//! the replacement.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_infer::{CallOptions, ModelService};
use weir_serve::flight::process_factory;
use weir_serve::{InstancesSpec, Service, ServiceSpec};

const LONG: Duration = Duration::from_secs(180);

fn remote(name: &str, n: usize) -> (Service, Arc<Mutex<Vec<u32>>>) {
    let model = orientation();
    let mut spec = ServiceSpec::new(name, &model);
    spec.instances = InstancesSpec {
        initial: n,
        min: 1,
        max: Some(n),
    };
    let pids = Arc::new(Mutex::new(Vec::new()));
    let factory = process_factory(
        instance_command(env!("CARGO_BIN_EXE_weir-serve-model")),
        model,
        1,
        pids.clone(),
    );
    (Service::with_backend(spec, factory).unwrap(), pids)
}

fn wait_ready(svc: &Service, n: usize) {
    let members = svc.members();
    wait_until(LONG, &format!("{n} ready instances"), || {
        let m = members.borrow();
        m.ready.len() == n && m.loading.is_empty() && m.draining.is_empty()
    });
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Sends `n` requests of 4 rows concurrently (at most 8 at a time) while `during` runs on
/// another thread once the first answers are in; every request must be answered, right-shaped.
fn load(svc: &Service, n: u64, during: impl FnOnce() + Send) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions {
        timeout: Duration::from_secs(60),
        ..CallOptions::default()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_until(LONG, "first answers", || svc.status().answered >= 4);
            during();
        });
        let answers = rt.block_on(async {
            use futures::StreamExt;
            futures::stream::iter((0..n).map(|i| svc.call(request(i * 4, 4), &opts)))
                .buffered(8)
                .collect::<Vec<_>>()
                .await
        });
        assert_eq!(answers.len() as u64, n);
        for (i, a) in answers.into_iter().enumerate() {
            let a = a.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(a[0].1.shape, vec![4, 4], "request {i}");
        }
    });
}

#[test]
fn kill_9_of_an_instance_process_re_dispatches_and_replaces_it() {
    let (svc, pids) = remote("flight-kill", 2);
    svc.attach().unwrap();
    wait_ready(&svc, 2);
    let first = pids.lock().unwrap()[0];
    load(&svc, 60, || signal(first, "-9"));
    let st = svc.status();
    assert_eq!((st.deaths, st.failed, st.answered), (1, 0, 60), "{st}");
    wait_ready(&svc, 2);
    assert_eq!(pids.lock().unwrap().len(), 3, "one replacement process");
    assert!(!alive(first));
    svc.detach();
}

#[test]
fn sigterm_drains_the_instance_which_exits_and_nothing_is_lost() {
    let (svc, pids) = remote("flight-term", 1);
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    let first = pids.lock().unwrap()[0];
    load(&svc, 40, || signal(first, "-TERM"));
    wait_until(LONG, "the preempted process to exit", || !alive(first));
    let st = svc.status();
    assert_eq!((st.failed, st.answered), (0, 40), "{st}");
    assert_eq!(st.deaths, 1, "the preempted instance was replaced: {st}");
    wait_ready(&svc, 1);
    svc.detach();
    // Per-job service stopped: its processes are killed.
    for pid in pids.lock().unwrap().iter() {
        wait_until(LONG, "instance processes to end", || !alive(*pid));
    }
}

/// The real ResNet-50 classifier (`opennsfw`): slow enough (tens of milliseconds a row) that a
/// large request is still running when the instance gets its SIGTERM.
fn resnet() -> std::path::PathBuf {
    let model = orientation()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("opennsfw/open-nsfw.onnx");
    assert!(
        model.is_file(),
        "model not found at {}: run scripts/setup-models.sh",
        model.display()
    );
    model
}

/// A request of `n` images for the classifier (`input:0`, NHWC).
fn resnet_request(n: usize) -> weir_infer::Tensors {
    let values: Vec<f32> = (0..n * 224 * 224 * 3)
        .map(|i| ((i * 7919) % 255) as f32 - 120.0)
        .collect();
    vec![(
        "input:0".to_string(),
        weir_infer::HostTensor::try_new(
            vec![n, 224, 224, 3],
            Arc::new(arrow::array::Float32Array::from(values)),
        )
        .unwrap(),
    )]
}

const SLOW_ROWS: usize = 96;

/// CPU time (clock ticks, user + system) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Fields after the command: state is the first; utime and stime are the 12th and 13th.
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum()
}

/// Waits until the idle instance process `pid` has used CPU for a request: it counts a request
/// in flight from the moment it starts receiving it, and the model then needs over a second.
fn wait_busy(pid: u32) {
    let idle = cpu_ticks(pid);
    wait_until(LONG, "the instance to work on the request", || {
        cpu_ticks(pid) >= idle + 10
    });
}

#[test]
fn sigterm_with_a_request_in_flight_finishes_it_within_the_grace_period_then_exits() {
    use std::io::BufRead;
    use weir_infer::Backend;
    let model = resnet();
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir-serve-model"))
        .env("ORT_DYLIB_PATH", ort_lib())
        .args(["--grace", "60s", "--port", "0", "--model"])
        .arg(&model)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let info = weir_infer::ModelInfo::load(&model).unwrap();
    let mut slow = weir_serve::flight::FlightBackend::connect(&addr, info.clone(), None).unwrap();
    let mut late = weir_serve::flight::FlightBackend::connect(&addr, info, None).unwrap();

    std::thread::scope(|s| {
        let running = s.spawn(move || slow.run(resnet_request(SLOW_ROWS)));
        // The instance is working on the request, which takes it over a second: preempt now.
        wait_busy(pid);
        signal(pid, "-TERM");
        wait_until(LONG, "the shutdown notice", || {
            std::fs::read_to_string(&err_path)
                .unwrap()
                .contains("shutting down")
        });
        // New work is refused while the held request finishes.
        let refused = late.run(resnet_request(1)).unwrap_err().to_string();
        assert!(refused.contains("shutting down"), "{refused}");
        let out = running
            .join()
            .unwrap()
            .expect("the held request is answered");
        assert_eq!(out[0].1.shape, vec![SLOW_ROWS, 2]);
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(err.contains("1 requests in flight"), "{err}");
    assert!(err.contains("(0 requests handed back)"), "{err}");
}

#[test]
fn sigterm_with_a_request_longer_than_the_grace_period_hands_it_back_to_another_instance() {
    let model = resnet();
    let mut spec = ServiceSpec::new("flight-grace", &model);
    spec.instances = InstancesSpec {
        initial: 1,
        min: 1,
        max: Some(1),
    };
    let pids = Arc::new(Mutex::new(Vec::new()));
    let factory = process_factory(
        [
            instance_command(env!("CARGO_BIN_EXE_weir-serve-model")),
            vec!["--grace".into(), "100ms".into()],
        ]
        .concat(),
        model,
        1,
        pids.clone(),
    );
    let svc = Service::with_backend(spec, factory).unwrap();
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    let first = pids.lock().unwrap()[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let call = svc.call(
        resnet_request(SLOW_ROWS),
        &CallOptions {
            timeout: Duration::from_secs(120),
            ..CallOptions::default()
        },
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_until(LONG, "the request to be sent", || {
                svc.status().in_flight == 1
            });
            wait_busy(first);
            signal(first, "-TERM");
        });
        let out = rt.block_on(call).expect("answered by the replacement");
        assert_eq!(out[0].1.shape, vec![SLOW_ROWS, 2]);
    });
    wait_until(LONG, "the preempted process to exit", || !alive(first));
    let st = svc.status();
    assert_eq!((st.answered, st.failed, st.deaths), (1, 0, 1), "{st}");
    assert_eq!(pids.lock().unwrap().len(), 2, "one replacement process");
    svc.detach();
}
