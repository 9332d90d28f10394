//! A real S3-compatible server for tests: SeaweedFS (`weed mini`) on 127.0.0.1, from
//! `WEIR_TEST_S3_ENDPOINT` (with `WEIR_TEST_S3_BUCKET`, `WEIR_TEST_S3_ACCESS_KEY_ID`,
//! `WEIR_TEST_S3_SECRET_ACCESS_KEY`; defaults `test`, `weirtest`, `weirtestsecret`), or started by
//! `scripts/start-seaweedfs.sh` when the endpoint is unset. It never skips: if no server can be
//! had, the test fails and says what to run.
//!
//! Included by path (`#[path]`) by the S3 tests of `weir-checkpoint` and `weir-infer`; uses only
//! `std`, `object_store` and `tokio`.
#![allow(dead_code)]

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub secret: String,
}

fn env_or(vars: &BTreeMap<String, String>, name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .or_else(|| vars.get(name).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The server to use: from the environment, or started by `scripts/start-seaweedfs.sh`.
pub fn s3_env() -> &'static S3Env {
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

pub fn unique_prefix(test: &str) -> String {
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
pub fn s3_client() -> Arc<dyn ObjectStore> {
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
pub async fn wait_ready(s3: &Arc<dyn ObjectStore>) {
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
pub fn server_log_tail() -> String {
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
