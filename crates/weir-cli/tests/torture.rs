//! Recovery equivalence under real crashes: a golden pipeline runs (a) straight at parallelism 1,
//! (b) at parallelism 2 with checkpoints while the `weir` process is killed with SIGKILL at least 20
//! times at seeded random instants and resumed each time, and (c) is finished after a restore at
//! parallelism 3. The outputs — rows and dead letters — must be identical: nothing lost, nothing
//! duplicated. `WEIR_SOAK_KILLS=N` raises the number of kills for a long soak run by hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::read_rows;

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

fn spec(dir: &Path, out: &str, checkpoint: bool, rate: u32) -> std::path::PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 50ms\n  store: {}/store\n",
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

#[test]
fn twenty_kill_9s_and_a_rescale_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_input(d);

    // (a) Straight, parallelism 1, no checkpoints, no pacing.
    let straight = spec(d, "straight", false, 1_000_000);
    let st = weir()
        .arg("run")
        .arg(&straight)
        .args(["-p", "1", "--progress", "off"])
        .output()
        .expect("run");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let want = outputs(d, "straight");
    assert!(
        want.0.len() > ROWS / 2 && !want.1.is_empty(),
        "the straight run produced rows and dead letters"
    );

    // (b) Parallelism 2 with checkpoints, killed again and again.
    let kills_wanted: usize = std::env::var("WEIR_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let paced = spec(d, "crashy", true, 1500);
    let mut seed: u64 = 7;
    let mut kills = 0;
    let started = Instant::now();
    while kills < kills_wanted {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the soak took too long ({kills} kills)"
        );
        let mut child = weir()
            .arg("run")
            .arg(&paced)
            .args(["-p", "2", "--progress", "off", "--resume"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(150 + (seed >> 33) % 350);
        std::thread::sleep(after);
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
    let err = String::from_utf8_lossy(&fin.stderr);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    // The crashes made progress: the last run resumed past rows the killed runs had read.
    let skipped: u64 = err
        .lines()
        .filter_map(|l| l.split("skipped ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.replace(',', "").parse::<u64>().ok())
        .sum();
    assert!(
        skipped > 1000,
        "the killed runs made too little progress:\n{err}"
    );
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
