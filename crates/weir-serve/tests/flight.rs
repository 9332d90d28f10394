//! Out-of-process instances: `weir-serve-model` processes (the server of `weir serve-model`)
//! speaking Arrow Flight over loopback, running the real page-orientation model. `kill -9` of an
//! instance process under load: its requests are re-dispatched and a replacement starts; SIGTERM:
//! the instance finishes what it holds, refuses new work, exits, and nothing is lost.
#![allow(clippy::unwrap_used)]

mod common;

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
        vec![env!("CARGO_BIN_EXE_weir-serve-model").to_string()],
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
