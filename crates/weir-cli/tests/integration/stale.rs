//! Stale state never duplicates output (issue F8), with the real `weir` binary and SIGKILL:
//!
//! 1. every checkpoint unusable, then `--resume`: refused (published output would be written
//!    again); `weir checkpoints list` shows the damaged checkpoints as incomplete; `--overwrite`
//!    starts over and gives every row once;
//! 2. a second run without `--resume` into the same output: refused, the output unchanged;
//! 3. a crash, then a fresh run (refused; then with `--overwrite`, killed), then `--resume`: every
//!    row once, no leftover in-progress file, no more checkpoints than `retain`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::read_rows;

const ROWS: usize = 6_000;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A paced pipeline (`rate` rows/s) from a CSV of `ROWS` distinct rows into a Parquet directory,
/// checkpointing every 100 ms into `store`, keeping 2 checkpoints.
fn setup(d: &Path) -> PathBuf {
    let mut csv = String::from("id,word\n");
    for i in 0..ROWS {
        csv.push_str(&format!("{i},w{}\n", i % 17));
    }
    std::fs::create_dir_all(d.join("in")).expect("mkdir");
    std::fs::write(d.join("in/a.csv"), csv).expect("write");
    let spec = format!(
        "name: stale
checkpoint: {{interval: 100ms, store: {d}/store, retain: 2}}
steps:
  - name: read
    source: csv
    path: {d}/in
    batch_size: 50
  - name: pace
    op: throttle
    rows_per_second: ${{RATE:-1500}}
  - name: out
    sink: parquet
    path: {d}/out
",
        d = d.display()
    );
    let p = d.join("stale.yaml");
    std::fs::write(&p, spec).expect("spec");
    p
}

fn run(spec: &Path, args: &[&str]) -> Output {
    weir()
        .arg("run")
        .arg(spec)
        .args(["--progress", "off", "--http", "off"])
        .args(args)
        .output()
        .expect("run")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The checkpoint folders of the store and whether each is complete (its manifest written).
fn checkpoints(d: &Path) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = std::fs::read_dir(d.join("store"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name() != "logs")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("_MANIFEST").is_file(),
            )
        })
        .collect();
    v.sort();
    v
}

fn part_files(d: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(d.join("out"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect()
}

/// Whether a checkpoint completed (its manifest written) at or after `since`.
fn checkpoint_since(d: &Path, since: std::time::SystemTime) -> bool {
    checkpoints(d).iter().any(|(folder, complete)| {
        *complete
            && std::fs::metadata(d.join("store").join(folder).join("_MANIFEST"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
    })
}

/// Starts the spec (with `args`), waits until this run completed a checkpoint and published a
/// file of its own, then kills it with SIGKILL. Fails if it ends on its own first.
fn crash(spec: &Path, d: &Path, args: &[&str]) {
    let before = part_files(d);
    let since = std::time::SystemTime::now();
    let mut child = weir()
        .arg("run")
        .arg(spec)
        .args(["--progress", "off", "--http", "off"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        let published = part_files(d).difference(&before).next().is_some();
        if published && checkpoint_since(d, since) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it get a little further, so the crash leaves in-progress files behind.
    std::thread::sleep(Duration::from_millis(150));
    let ok = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let _ = child.wait();
}

/// Every input row exactly once.
fn assert_exact(d: &Path) {
    let rows = read_rows(&d.join("out")).expect("rows");
    let distinct: std::collections::BTreeSet<&String> = rows.iter().collect();
    assert_eq!(distinct.len(), rows.len(), "duplicated rows");
    assert_eq!(rows.len(), ROWS, "rows lost");
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn resume_without_a_usable_checkpoint_refuses_over_published_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let spec = setup(d);
    crash(&spec, d, &[]);
    let published = read_rows(&d.join("out")).expect("rows");
    assert!(!published.is_empty());
    // Damage every state file without changing its size: only checksums can tell.
    for (folder, _) in checkpoints(d) {
        for e in std::fs::read_dir(d.join("store").join(&folder))
            .expect("ls")
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "state") {
                let mut bytes = std::fs::read(&p).expect("read");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x5a;
                std::fs::write(&p, bytes).expect("write");
            }
        }
    }
    let list = weir()
        .args(["checkpoints", "list"])
        .arg(&spec)
        .output()
        .expect("list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        !text.lines().any(|l| l.trim_end().ends_with(" complete")),
        "a damaged checkpoint is listed as complete:\n{text}"
    );
    assert!(text.contains("incomplete"), "{text}");

    let again = run(&spec, &["--resume"]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("no usable checkpoint"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(
        read_rows(&d.join("out")).expect("rows"),
        published,
        "a refused run changed the output"
    );

    let fresh = run(&spec, &["--overwrite", "--var", "RATE=1000000"]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_exact(d);
}

#[test]
fn a_second_run_without_resume_refuses_and_leaves_the_output_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let spec = setup(d);
    let first = run(&spec, &["--var", "RATE=1000000"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_exact(d);
    let before = read_rows(&d.join("out")).expect("rows");

    let second = run(&spec, &["--var", "RATE=1000000"]);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to start a fresh run"), "{err}");
    assert!(err.contains("sink 'out'"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(read_rows(&d.join("out")).expect("rows"), before);

    // --overwrite clears output and checkpoints, and the rerun is exact again.
    let third = run(&spec, &["--overwrite", "--var", "RATE=1000000"]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_exact(d);
}

#[test]
fn crash_then_a_fresh_run_then_resume_gives_every_row_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let spec = setup(d);
    crash(&spec, d, &[]);

    // A fresh run over the crashed one's output and checkpoints is refused...
    let fresh = run(&spec, &[]);
    let err = stderr(&fresh);
    assert_eq!(fresh.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to start a fresh run"), "{err}");
    assert!(err.contains("checkpoint store"), "{err}");

    // ... unless told to overwrite; that one is killed too, after it published some output.
    crash(&spec, d, &["--overwrite"]);
    // Resuming continues the second run, from its checkpoint: every row once.
    let fin = run(&spec, &["--resume", "--var", "RATE=1000000"]);
    let err = stderr(&fin);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    assert_exact(d);
    assert!(
        hidden_files(&d.join("out")).is_empty(),
        "stale in-progress files left: {:?}",
        hidden_files(&d.join("out"))
    );
    let kept = checkpoints(d);
    assert!(
        kept.len() <= 2,
        "checkpoint.retain is 2 but {} checkpoints are kept after the crashes: {kept:?}",
        kept.len()
    );
    // Published names carry the run that wrote them.
    let names: Vec<String> = std::fs::read_dir(d.join("out"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("part-") && n.split('-').count() == 5),
        "{names:?}"
    );
}
