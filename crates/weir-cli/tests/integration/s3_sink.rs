//! The Parquet and JSON Lines sinks writing to S3 (SeaweedFS on loopback) exactly once: a paced job with
//! checkpoints is killed with SIGKILL again and again and resumed; afterwards the objects under
//! the output prefix hold every input row exactly once, and no staged object is left.

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use weir_testkit::{read_rows, s3};

const ROWS: usize = 6_000;

fn store(env: &s3::S3Env) -> object_store::aws::AmazonS3 {
    let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(&env.bucket);
    for (k, v) in env.options() {
        b = b.with_config(k.parse().expect("option"), v);
    }
    b.build().expect("s3 store")
}

/// Downloads every object under `prefix` into `to`; returns their names.
fn download(
    rt: &tokio::runtime::Runtime,
    s: &dyn ObjectStore,
    prefix: &str,
    to: &Path,
) -> Vec<String> {
    std::fs::create_dir_all(to).expect("mkdir");
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = s.list(Some(&p)).try_collect().await.expect("list");
        let mut names = Vec::new();
        for m in metas {
            let name = m.location.filename().expect("name").to_string();
            let bytes = s
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes");
            // Hidden objects are downloaded under a visible name, so a leftover would be counted.
            std::fs::write(to.join(name.trim_start_matches('.')), bytes).expect("write");
            names.push(name);
        }
        names
    })
}

fn checkpoint_since(store: &Path, since: SystemTime) -> bool {
    std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::metadata(e.path().join("_MANIFEST"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
}

#[test]
fn kill_9s_of_a_job_writing_parquet_to_s3_leave_every_row_once() {
    kill_and_resume("parquet");
}

#[test]
fn kill_9s_of_a_job_writing_jsonl_to_s3_leave_every_row_once() {
    kill_and_resume("jsonl");
}

fn kill_and_resume(kind: &str) {
    let env = s3::s3_env();
    let prefix = s3::unique_prefix(&format!("{kind}-sink"));
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let mut csv = String::from("id,word\n");
    for i in 0..ROWS {
        csv.push_str(&format!("{i},w{}\n", i % 13));
    }
    std::fs::create_dir_all(d.join("in")).expect("mkdir");
    std::fs::write(d.join("in/a.csv"), csv).expect("write");
    let spec = d.join("s3.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: s3-sink
checkpoint: {{interval: 100ms, store: {d}/store}}
steps:
  - name: read
    source: csv
    path: {d}/in
    batch_size: 50
  - name: pace
    op: throttle
    rows_per_second: ${{RATE:-1500}}
  - name: out
    sink: {kind}
    path: s3://{bucket}/{prefix}/rows/
    storage: {opts}
",
            d = d.display(),
            bucket = env.bucket,
            opts = env.yaml_options()
        ),
    )
    .expect("spec");
    let plain = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.arg("run")
            .arg(&spec)
            .args(["--progress", "off", "--http", "off"])
            .args(args);
        c
    };
    let weir = |args: &[&str]| {
        let mut c = plain(&["--resume"]);
        c.args(args);
        c
    };
    let started = Instant::now();
    for kill in 0..5 {
        let since = SystemTime::now();
        let mut child = weir(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        while !checkpoint_since(&d.join("store"), since) {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "run {kill} ended before it could be killed"
            );
            assert!(started.elapsed() < Duration::from_secs(240), "too slow");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100 + 70 * kill));
        let ok = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let _ = child.wait();
    }
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let s = store(env);
    // The killed runs published part of the output on S3 already.
    let early = download(&rt, &s, &format!("{prefix}/rows"), &d.join("early"));
    assert!(
        early.iter().any(|n| n.starts_with("part-")),
        "nothing was published before the last run: {early:?}"
    );
    let fin = weir(&["--var", "RATE=1000000"]).output().expect("run");
    let err = String::from_utf8_lossy(&fin.stderr);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");
    let names = download(&rt, &s, &format!("{prefix}/rows"), &d.join("got"));
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("part-") && n.ends_with(&format!(".{kind}"))),
        "staged or foreign objects left: {names:?}"
    );
    let rows = read_rows(&d.join("got")).expect("rows");
    let distinct: std::collections::BTreeSet<&String> = rows.iter().collect();
    assert_eq!(distinct.len(), rows.len(), "rows duplicated");
    assert_eq!(rows.len(), ROWS, "rows lost");

    // A fresh run over the published objects is refused; --overwrite deletes them first.
    let again = plain(&["--var", "RATE=1000000"]).output().expect("run");
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to start a fresh run"), "{err}");
    assert!(err.contains("s3://"), "{err}");
    let over = plain(&["--overwrite", "--var", "RATE=1000000"])
        .output()
        .expect("run");
    assert!(
        over.status.success(),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
    download(&rt, &s, &format!("{prefix}/rows"), &d.join("over"));
    assert_eq!(
        read_rows(&d.join("over")).expect("rows"),
        rows,
        "after --overwrite"
    );
    // Clean up (best effort: the server is shared).
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix.as_str());
        let all: Vec<_> = s
            .list(Some(&p))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap_or_default();
        for l in all {
            let _ = s.delete(&l).await;
        }
    });
}
