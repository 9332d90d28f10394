//! The restart strategy (`restart: {attempts, backoff}`): a job that fails part-way is restarted
//! inside the same process from its newest complete checkpoint, and its output is still exactly
//! once; a failure that does not go away ends the job after the allowed attempts, with the cause.
//!
//! The fault is real, not simulated: a branch of the pipeline writes to a path that is occupied by
//! a regular file, so its sink fails with an I/O error when its first row arrives (part-way through
//! the input); the test clears the path while the job waits out its backoff.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_testkit::{read_rows, repo_root};

fn spec(dir: &Path, out: &str, checkpoint: bool, backoff: &str) -> PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 50ms\n  store: {}/{out}-store\nrestart:\n  attempts: 3\n  backoff: {backoff}\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: restart
{ck}steps:
  - name: read
    source: csv
    path: {root}/examples/orders/orders.csv
    batch_size: 50
  - name: pace
    op: throttle
    rows_per_second: 2500
  - name: all
    sink: parquet
    path: {d}/{out}/all
  - name: late_rows
    input: pace
    op: filter
    predicate: \"order_id > 1200\"
  - name: late
    sink: jsonl
    path: {d}/{out}/late
",
        root = repo_root().display(),
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

fn weir(spec: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.arg("run")
        .arg(spec)
        .args(["-p", "2", "--progress", "off"]);
    c
}

fn rows(dir: &Path, out: &str) -> (Vec<String>, Vec<String>) {
    (
        read_rows(&dir.join(out).join("all")).expect("all"),
        read_rows(&dir.join(out).join("late")).expect("late"),
    )
}

/// Spawns weir with stderr streamed line by line into a channel (and kept for messages).
fn spawn(spec: &Path) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = weir(spec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn a_failed_job_restarts_from_its_checkpoint_and_output_stays_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let straight = weir(&spec(d, "straight", false, "1s"))
        .output()
        .expect("run");
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );
    let want = rows(d, "straight");
    assert_eq!(want.0.len(), 2000);
    assert_eq!(want.1.len(), 800);

    // The obstacle: a regular file where the 'late' sink wants its directory.
    std::fs::create_dir_all(d.join("crashy")).expect("mkdir");
    let obstacle = d.join("crashy/late");
    std::fs::write(&obstacle, "not a directory").expect("obstacle");
    let (mut child, lines) = spawn(&spec(d, "crashy", true, "1s"));
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cleared = false;
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if line.contains("restart 1 of 3") && !cleared {
                    std::fs::remove_file(&obstacle).expect("clear the obstacle");
                    cleared = true;
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().expect("wait");
    let log = log.join("\n");
    assert!(status.success(), "{log}");
    assert!(cleared, "the job never failed and restarted:\n{log}");
    assert!(
        log.contains("cannot create output directory"),
        "the restart names its cause:\n{log}"
    );
    assert!(
        log.contains("resuming from checkpoint"),
        "the restart resumed from a checkpoint (the failure came part-way):\n{log}"
    );
    assert!(
        !log.contains("restart 2 of 3"),
        "one restart was enough:\n{log}"
    );
    let got = rows(d, "crashy");
    assert_eq!(
        got, want,
        "output after a restart differs from a straight run"
    );
}

#[test]
fn a_failure_that_persists_ends_the_job_after_the_allowed_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("stuck")).expect("mkdir");
    std::fs::write(d.join("stuck/late"), "not a directory").expect("obstacle");
    let out = weir(&spec(d, "stuck", true, "100ms"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for attempt in 1..=3 {
        assert!(
            err.contains(&format!("restart {attempt} of 3")),
            "restart {attempt} is reported:\n{err}"
        );
    }
    assert!(!err.contains("restart 4 of 3"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        err.contains("cannot create output directory") && err.contains("late"),
        "the final error names the sink and its cause (last line: {last}):\n{err}"
    );
}
