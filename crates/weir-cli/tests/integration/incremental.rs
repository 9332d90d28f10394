//! Incremental checkpoints end to end: a keyed windowed aggregation over 4000 keys whose input,
//! after every key has been seen once, only touches four keys. Checkpoints taken then write only
//! the few key groups that changed and refer to earlier checkpoints for the rest; the process is
//! killed with SIGKILL once such a checkpoint is complete, resumed at another parallelism from
//! it (through retained references: `retain: 2` has retired the older checkpoints, keeping only
//! the files that the newer ones refer to), and its output equals an uninterrupted run's.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_checkpoint::Manifest;
use weir_checkpoint::store::MANIFEST_NAME;
use weir_testkit::read_rows;

const KEYS: usize = 4000;
const ROWS: usize = 24_000;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// Every key once, then a long tail over keys k0..k3 only.
fn write_input(dir: &Path) {
    let mut csv = String::from("id,customer,quantity\n");
    for i in 0..ROWS {
        let key = if i < KEYS { i } else { i % 4 };
        csv.push_str(&format!("{i},k{key},{}\n", 1 + i % 9));
    }
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    std::fs::write(dir.join("in/orders.csv"), csv).expect("write");
}

fn spec(dir: &Path, out: &str, checkpoint: bool, rate: u32) -> std::path::PathBuf {
    let ck = if checkpoint {
        format!(
            "checkpoint:\n  interval: 100ms\n  retain: 2\n  full_every: 50\n  store: {}/store\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "name: incremental
{ck}steps:
  - name: read
    source: csv
    path: {d}/in
    batch_size: 50
    schema:
      - {{name: id, type: int64}}
      - {{name: customer, type: utf8}}
      - {{name: quantity, type: int64}}
  - name: pace
    op: throttle
    rows_per_second: {rate}
  - name: timed
    op: with_column
    column: ts
    expr: \"id\"
  - name: per_customer
    op: aggregate
    keys: [customer]
    time: ts
    window: {{type: tumbling, size: 1h}}
    aggregates: [\"count(*) AS n\", \"sum(quantity) AS total\", \"max(id) AS last\"]
  - name: out
    sink: parquet
    path: {d}/{out}
",
        d = dir.display()
    );
    let p = dir.join(format!("{out}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

/// The complete manifests under `store`, oldest first (retired folders have none).
fn manifests(store: &Path) -> Vec<Manifest> {
    let mut out: Vec<Manifest> = std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join(MANIFEST_NAME)).ok())
        .filter_map(|b| Manifest::from_json(&b).ok())
        .collect();
    out.sort_by_key(|m| m.checkpoint_id);
    out
}

/// Whether `m` wrote less than a fifth of its state: the rest is referred to.
fn mostly_referred(m: &Manifest) -> bool {
    m.referred_bytes() > 4 * m.state_bytes()
}

#[test]
fn incremental_checkpoints_write_little_and_restore_exactly_at_another_parallelism() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_input(d);
    let st = weir()
        .arg("run")
        .arg(spec(d, "straight", false, 1_000_000))
        .args(["-p", "1", "--progress", "off"])
        .output()
        .expect("run");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let want = read_rows(&d.join("straight")).expect("rows");
    assert_eq!(want.len(), KEYS);

    // Paced at parallelism 2: killed once a checkpoint wrote under a fifth of its state.
    let paced = spec(d, "resumed", true, 4000);
    let store = d.join("store");
    let mut child = weir()
        .arg("run")
        .arg(&paced)
        .args(["-p", "2", "--progress", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let retired = |m: &Manifest| -> Vec<u64> {
        m.referenced_files()
            .into_iter()
            .filter(|(id, path)| {
                let folder = store.join(format!("chk-{id:010}"));
                folder.join(path).exists() && !folder.join(MANIFEST_NAME).exists()
            })
            .map(|(id, _)| id)
            .collect()
    };
    // Wait for a checkpoint that wrote under a fifth of its state and refers to a checkpoint
    // that `retain: 2` has retired (its manifest deleted, the referred files kept).
    let seen = loop {
        let all = manifests(&store);
        if let Some(m) = all
            .iter()
            .rev()
            .find(|m| mostly_referred(m) && !retired(m).is_empty())
        {
            break m.clone();
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before an incremental checkpoint referring to a retired one completed: \
             (id, written, referred) {:?}",
            all.iter()
                .map(|m| (m.checkpoint_id, m.state_bytes(), m.referred_bytes()))
                .collect::<Vec<_>>()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no incremental checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().expect("kill -9");
    let _ = child.wait();
    let latest = manifests(&store).pop().expect("a complete checkpoint");
    assert!(latest.checkpoint_id >= seen.checkpoint_id);

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
    assert!(
        err.contains(&format!(
            "resuming from checkpoint {}",
            latest.checkpoint_id
        )),
        "{err}"
    );
    assert!(err.contains("referred to in earlier checkpoints"), "{err}");
    assert!(
        err.contains("of them in earlier checkpoints it refers to"),
        "{err}"
    );
    let got = read_rows(&d.join("resumed")).expect("rows");
    assert_eq!(got.len(), want.len(), "row count differs");
    assert_eq!(got, want, "rows differ after the restore");
}
