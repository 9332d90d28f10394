//! Inference services with the real page-orientation model on ONNX Runtime: warm-up before
//! routing, load-aware routing, scaling 1 → 3 → 1 and an instance crash under continuous load
//! through the runtime (every request counted), poison inputs, hangs, errors and wrong shapes
//! (through the fault-injection stand-in `FaultyBackend`), load failures, the autoscaler.
#![allow(clippy::unwrap_used)]

use crate::common;

use arrow::record_batch::RecordBatch;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_infer::{
    Backend, BackendOptions, CallOptions, InferSpec, ModelService, OrtBackend, Tensors,
};
use weir_runtime::kind::Resources;
use weir_runtime::*;
use weir_serve::fault::{Faults, FaultyBackend};
use weir_serve::{AutoscaleSpec, InstancesSpec, Service, ServiceSpec};

const LONG: Duration = Duration::from_secs(180);

fn spec(name: &str, initial: usize, max: usize) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, orientation());
    s.instances = InstancesSpec {
        initial,
        min: 1,
        max: Some(max),
    };
    s.batch.max_size = 4;
    s
}

fn faulty(spec: ServiceSpec) -> (Arc<Service>, Arc<Faults>) {
    let faults = Faults::new();
    let inner = OrtBackend::factory(
        &spec.model,
        BackendOptions {
            cpus: 1,
            gpus: 0,
            spin: false,
        },
    );
    let svc = Service::with_backend(spec, FaultyBackend::factory(inner, faults.clone())).unwrap();
    (Arc::new(svc), faults)
}

/// The job resources in which an `infer` step calling `svc` by name finds it.
fn resources(svc: &Arc<Service>) -> Resources {
    let as_dyn: Arc<dyn ModelService> = svc.clone();
    let mut r = Resources::new();
    weir_infer::service::provide(&mut r, as_dyn);
    r
}

fn wait_ready(svc: &Service, n: usize) {
    let members = svc.members();
    wait_until(LONG, &format!("{n} ready instances"), || {
        let m = members.borrow();
        m.ready.len() == n && m.loading.is_empty() && m.draining.is_empty()
    });
}

/// The model loaded directly, to compare a service's answers with.
fn direct_model() -> OrtBackend {
    OrtBackend::load(
        &orientation(),
        &BackendOptions {
            cpus: 1,
            gpus: 0,
            spin: false,
        },
    )
    .unwrap()
}

fn first_output(t: &Tensors) -> Vec<f32> {
    let (_, t) = &t[0];
    t.data
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .unwrap()
        .values()
        .to_vec()
}

#[test]
fn instances_are_routable_only_after_load_and_warm_up_and_answer_like_the_model() {
    let (svc, faults) = faulty(spec("warm", 2, 2));
    let members = svc.members();
    assert!(members.borrow().ready.is_empty());
    svc.attach().unwrap();
    wait_ready(&svc, 2);
    // Each instance ran exactly one warm-up batch before it became ready.
    assert_eq!(faults.runs.load(Ordering::SeqCst), 2);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions::default();
    let calls: Vec<_> = (0..8).map(|i| svc.call(request(i * 2, 2), &opts)).collect();
    let answers = rt.block_on(futures::future::join_all(calls));

    let mut direct = direct_model();
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.unwrap();
        let want = direct.run(request(i as u64 * 2, 2)).unwrap();
        assert_eq!(first_output(&a), first_output(&want), "request {i}");
    }
    // Load-aware routing spread the concurrent requests over both instances.
    let served = svc.served();
    assert_eq!(served.values().sum::<u64>(), 8);
    assert_eq!(served.len(), 2, "both instances served: {served:?}");
    let st = svc.status();
    assert_eq!((st.answered, st.failed, st.deaths), (8, 0, 0));
    svc.detach();
    assert_eq!(
        svc.status().ready,
        0,
        "a per-job service stops with its last caller"
    );
}

/// Runs source → infer (calling `service`) → keep in the runtime while `scenario` runs on this
/// thread; stops the source when the scenario returns and checks that every row came out once,
/// in order, and the job (which has no restart strategy) succeeded.
fn under_load(
    service: &str,
    resources: Resources,
    max_in_flight: usize,
    scenario: impl FnOnce(),
) -> (JobReport, Vec<RecordBatch>) {
    let stop = Arc::new(AtomicBool::new(false));
    let emitted = Arc::new(AtomicU64::new(0));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let schema = image_batch(0, 1, &[], 0.0).schema();
    let mut infer = InferSpec::with_service(service);
    infer.batch.max_size = 4;
    infer.max_in_flight = max_in_flight;
    infer.timeout = Duration::from_secs(60);

    let mut g = JobGraph::new(JobConfig::default());
    let (st, em) = (stop.clone(), emitted.clone());
    let src = g.add_source("images", 1, move |_| {
        Ok(Box::new(Images {
            rows: 4,
            next: 0,
            pause: Duration::from_millis(5),
            stop: st.clone(),
            emitted: em.clone(),
            poison: Vec::new(),
            marker: 0.0,
        }))
    });
    let inf = g.add_operator("infer", 1, move |_| infer.create_in(&schema, &resources));
    let k = kept.clone();
    let sink = g.add_sink("keep", 1, move |_| Ok(Box::new(Keep(k.clone()))));
    g.connect(src, inf, Partitioning::Forward);
    g.connect(inf, sink, Partitioning::Forward);

    let rt = Runtime::new(2).unwrap();
    let handle = rt.start(g).unwrap();
    scenario();
    stop.store(true, Ordering::SeqCst);
    let report = rt.block_on(handle.wait()).expect("the job never fails");
    let out = kept.lock().unwrap().clone();
    let n = emitted.load(Ordering::SeqCst);
    let got = ids(&out);
    assert_eq!(got.len() as u64, n, "every row answered exactly once");
    assert_eq!(
        got,
        (0..n).collect::<Vec<u64>>(),
        "none lost, none twice, in order"
    );
    let infer = report.nodes.iter().find(|n| n.name == "infer").unwrap();
    assert_eq!(infer.totals.rows_out, n);
    assert_eq!(infer.totals.dead_letters, 0);
    (report, out)
}

#[test]
fn scale_1_3_1_under_continuous_load() {
    let svc = Arc::new(Service::new(spec("scale-131", 1, 3)).unwrap());
    let res = resources(&svc);
    let members = svc.members();
    let s = svc.clone();
    under_load("scale-131", res, 6, move || {
        wait_until(LONG, "first answers", || s.status().answered >= 10);
        s.scale(3).unwrap();
        wait_until(LONG, "3 ready instances", || {
            members.borrow().ready.len() == 3
        });
        // Least-outstanding routing under continuous load reaches every ready instance (how
        // soon depends on the batch sizes the caller's controller picks, so wait for it).
        wait_until(LONG, "answers from 3 instances", || s.served().len() == 3);
        s.scale(1).unwrap();
        wait_until(LONG, "back to 1 instance", || {
            let m = members.borrow();
            m.ready.len() == 1 && m.draining.is_empty()
        });
        let a = s.status().answered;
        wait_until(LONG, "answers after scale-in", || {
            s.status().answered >= a + 10
        });
    });
    let served = svc.served();
    assert_eq!(
        served.len(),
        3,
        "three instances served requests: {served:?}"
    );
    let st = svc.status();
    assert_eq!((st.failed, st.deaths), (0, 0), "{st}");
    assert_eq!(st.ready, 0, "the per-job service stopped with the job");
}

#[test]
fn an_instance_crash_under_load_re_dispatches_and_replaces_it() {
    let (svc, faults) = faulty(spec("crash", 2, 2));
    let res = resources(&svc);
    let members = svc.members();
    let s = svc.clone();
    under_load("crash", res, 4, move || {
        wait_until(LONG, "2 ready instances", || {
            members.borrow().ready.len() == 2
        });
        wait_until(LONG, "first answers", || s.status().answered >= 10);
        // Fault-injection stand-in for a crash: the next run panics and its thread ends.
        faults.panic_next.store(1, Ordering::SeqCst);
        wait_until(LONG, "the crash", || s.status().deaths == 1);
        wait_until(LONG, "a replacement", || {
            let m = members.borrow();
            m.ready.len() == 2 && m.loading.is_empty()
        });
        let a = s.status().answered;
        wait_until(LONG, "answers after the crash", || {
            s.status().answered >= a + 10
        });
    });
    let st = svc.status();
    assert_eq!((st.deaths, st.failed), (1, 0), "{st}");
    assert!(
        svc.served().len() >= 3,
        "the replacement served: {:?}",
        svc.served()
    );
}

/// Drives an operator by hand: open, every batch, finish; returns output and dead letters.
async fn drive(
    op: &mut dyn Operator,
    batches: Vec<RecordBatch>,
) -> (Vec<RecordBatch>, Vec<weir_types::DeadLetter>) {
    let mut ctx = OperatorContext::for_test("infer", ErrorPolicy::DeadLetter);
    let mut out = Emitter::default();
    op.open(&mut ctx).await.unwrap();
    let mut emitted = Vec::new();
    let mut dead = Vec::new();
    for b in batches {
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        emitted.extend(out.take());
        dead.extend(ctx.take_dead_letters());
    }
    op.finish(&mut ctx, &mut out).await.unwrap();
    emitted.extend(out.take());
    dead.extend(ctx.take_dead_letters());
    (emitted, dead)
}

#[test]
fn a_poison_row_goes_to_the_dead_letter_output_after_max_deaths() {
    let (svc, faults) = faulty(spec("poison", 2, 2));
    let res = resources(&svc);
    *faults.poison.lock().unwrap() = Some(12345.0);
    let schema = image_batch(0, 1, &[], 0.0).schema();
    let mut infer = InferSpec::with_service("poison");
    infer.batch.max_size = 4;
    infer.batch.adaptive = false;
    let mut op = infer.create_in(&schema, &res).unwrap();
    let batches: Vec<_> = (0..3)
        .map(|i| image_batch(i * 4, 4, &[5], 12345.0))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, dead) = rt.block_on(drive(op.as_mut(), batches));
    let mut want: Vec<u64> = (0..12).collect();
    want.retain(|i| *i != 5);
    assert_eq!(ids(&out), want);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let e = &dead[0].error;
    assert!(
        e.contains("running on 3 instances that died") && e.contains("poison row"),
        "{e}"
    );
    assert_eq!(dead[0].position.as_deref(), Some("row 1"));
    // Three deaths with the row in its batch, three more alone; each instance was replaced.
    assert_eq!(svc.status().deaths, 6);
}

#[test]
fn a_hung_instance_times_out_is_replaced_and_the_call_retried() {
    let (svc, faults) = faulty(spec("hang", 1, 1));
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    faults.hang_for(Duration::from_secs(8));
    faults.hang_next.store(1, Ordering::SeqCst);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions {
        timeout: Duration::from_secs(3),
        retries: 2,
        backoff: Duration::from_millis(20),
    };
    let out = rt.block_on(svc.call(request(0, 2), &opts)).unwrap();
    assert_eq!(out[0].1.shape, vec![2, 4]);
    let st = svc.status();
    assert!(st.retries >= 1 && st.deaths == 1, "{st}");
    assert!(svc.served().keys().all(|id| *id != 0), "instance 0 hung");
    svc.detach();
}

#[test]
fn errors_are_retried_then_reported_and_the_service_stays_usable() {
    let (svc, faults) = faulty(spec("errors", 1, 1));
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    faults.error_next.store(1000, Ordering::SeqCst);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions {
        timeout: Duration::from_secs(30),
        retries: 2,
        backoff: Duration::from_millis(10),
    };
    let e = rt
        .block_on(svc.call(request(0, 1), &opts))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fault injection: the model failed") && e.contains("gave up after 3 attempts"),
        "{e}"
    );
    faults.error_next.store(0, Ordering::SeqCst);
    rt.block_on(svc.call(request(0, 1), &opts)).unwrap();
    let st = svc.status();
    assert_eq!((st.retries, st.failed, st.deaths), (2, 1, 0), "{st}");
    svc.detach();
}

#[test]
fn a_wrong_shape_becomes_dead_letter_rows_with_a_clear_message() {
    let (svc, faults) = faulty(spec("shape", 1, 1));
    let res = resources(&svc);
    // Attached (and warmed up) before the fault is switched on, so the warm-up batch is right.
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    faults.wrong_shape_next.store(1000, Ordering::SeqCst);
    let schema = image_batch(0, 1, &[], 0.0).schema();
    let mut op = InferSpec::with_service("shape")
        .create_in(&schema, &res)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, dead) = rt.block_on(drive(op.as_mut(), vec![image_batch(0, 3, &[], 0.0)]));
    assert!(ids(&out).is_empty());
    assert_eq!(dead.len(), 3, "{dead:?}");
    for d in &dead {
        assert!(
            d.error.contains("wrong shape [2, 4] for a batch of 1 rows"),
            "{}",
            d.error
        );
    }
    // Not retried: a wrong shape is not a transient failure.
    assert_eq!(svc.status().retries, 0);
    svc.detach();
}

#[test]
fn instances_that_cannot_load_fail_calls_with_the_reason() {
    let spec = spec("noload", 1, 1);
    let factory: weir_infer::BackendFactory = Arc::new(|i| {
        Err(weir_types::Error::config(format!(
            "fault injection: instance {i} cannot load"
        )))
    });
    let svc = Service::with_backend(spec, factory).unwrap();
    svc.attach().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(svc.call(request(0, 1), &CallOptions::default()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 instances failed to load in a row") && e.contains("cannot load"),
        "{e}"
    );
    svc.detach();
}

#[test]
fn the_autoscaler_scales_out_on_queue_depth_and_back_in_when_idle() {
    let mut s = spec("auto", 1, 3);
    s.autoscale = Some(AutoscaleSpec {
        interval: Duration::from_millis(100),
        cooldown: Duration::ZERO,
        ..AutoscaleSpec::default()
    });
    let svc = Service::new(s).unwrap();
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    let members = svc.members();
    let seen_max = Arc::new(AtomicU64::new(1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let calls: Vec<_> = (0..40)
        .map(|i| svc.call(request(i, 4), &CallOptions::default()))
        .collect();
    let watcher = {
        let mut m = members.clone();
        let seen = seen_max.clone();
        rt.spawn(async move {
            while m.changed().await.is_ok() {
                let n = m.borrow().ready.len() as u64;
                seen.fetch_max(n, Ordering::SeqCst);
            }
        })
    };
    for r in rt.block_on(futures::future::join_all(calls)) {
        r.unwrap();
    }
    assert!(
        seen_max.load(Ordering::SeqCst) >= 2,
        "scaled out under a deep queue"
    );
    wait_until(LONG, "scale-in when idle", || {
        let m = members.borrow();
        m.target == 1 && m.ready.len() == 1 && m.draining.is_empty()
    });
    svc.detach();
    watcher.abort();
}

/// Requests that wait in the queue while the instance is busy, from several callers, are run as
/// one model batch (up to `batch.max_size` rows) and each caller gets exactly its own rows back;
/// a merged batch holding a poison row is retried request by request, so only the poisoned
/// request fails and the others are answered.
#[test]
fn queued_requests_from_several_callers_merge_into_one_batch_and_a_poison_fails_alone() {
    let mut s = spec("merge", 1, 1);
    s.batch.max_size = 8;
    s.max_deaths = 2;
    let (svc, faults) = faulty(s);
    svc.attach().unwrap();
    wait_ready(&svc, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CallOptions {
        timeout: Duration::from_secs(60),
        retries: 0,
        backoff: Duration::from_millis(10),
    };
    let mut direct = direct_model();

    // The first request hangs a little, so the next ones (one row each) queue behind it.
    faults.hang_for(Duration::from_millis(600));
    faults.hang_next.store(1, Ordering::SeqCst);
    faults.batch_rows.lock().unwrap().clear();
    let calls: Vec<_> = (0..6).map(|i| svc.call(request(i, 1), &opts)).collect();
    let answers = rt.block_on(futures::future::join_all(calls));
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.unwrap();
        assert_eq!(a[0].1.shape, vec![1, 4], "request {i} got its own row only");
        let want = direct.run(request(i as u64, 1)).unwrap();
        assert_eq!(first_output(&a), first_output(&want), "request {i}");
    }
    let seen = faults.batch_rows.lock().unwrap().clone();
    assert!(
        seen.iter().any(|&n| n >= 3),
        "queued requests were merged: batches of {seen:?} rows"
    );
    assert_eq!(
        seen.iter().sum::<usize>(),
        6,
        "every row ran once: {seen:?}"
    );
    assert_eq!(svc.status().answered, 6);

    // Row 13 is poison: its request fails alone, the requests merged with it are answered.
    *faults.poison.lock().unwrap() = Some(common::row_values(13)[0]);
    faults.hang_next.store(1, Ordering::SeqCst);
    let calls: Vec<_> = (10..16).map(|i| svc.call(request(i, 1), &opts)).collect();
    let answers = rt.block_on(futures::future::join_all(calls));
    for (i, a) in (10..16).zip(answers) {
        if i == 13 {
            let e = a.unwrap_err().to_string();
            assert!(e.contains("poison row"), "{e}");
        } else {
            let want = direct.run(request(i, 1)).unwrap();
            assert_eq!(
                first_output(&a.unwrap()),
                first_output(&want),
                "request {i}"
            );
        }
    }
    svc.detach();
}
