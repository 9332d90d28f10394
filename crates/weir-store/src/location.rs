//! The resolver: one way from a configured location (a local path, a `file://` URL or an
//! `s3://bucket/prefix` URL) to where weir lists, reads and writes, used by the `files` source,
//! the file sinks, `fetch` and the checkpoint store alike.
//!
//! # Credential policy
//!
//! An `s3://` location is configured in this order, later wins:
//!
//! 1. object_store's defaults (region `us-east-1`, virtual-hosted requests off for custom
//!    endpoints, ...);
//! 2. the `AWS_*` environment variables of the weir process (`AWS_ENDPOINT`, `AWS_REGION`,
//!    `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, ...),
//!    and, when no keys are given, the instance, container or web-identity credentials the
//!    environment points to;
//! 3. the explicit [`StorageOptions`] of the step (or of `checkpoint:`): object_store
//!    configuration keys such as `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`.
//!
//! Nothing else is read: no configuration file, no other variable. Secrets belong in the
//! environment (or in the spec through `${VAR}`), never in the spec's text.

use crate::uri::object_uri;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use weir_types::{Error, Result};

/// Explicit object-store options: object_store configuration keys and values (`aws_endpoint`,
/// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, ...). They win
/// over the environment (see the module docs). Default: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl StorageOptions {
    /// Options from key/value pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        StorageOptions(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Where a configured location points.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local directory or file (the path as given; relative paths stay relative to the working
    /// directory).
    Local(PathBuf),
    /// A prefix of an object store.
    Store(StoreLocation),
}

/// A prefix of an object store, with the handles to reach it.
#[derive(Clone)]
pub struct StoreLocation {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The same store, for multipart uploads (create, put parts, complete later).
    pub multipart: Arc<dyn MultipartStore>,
    /// The prefix inside the store (empty for the whole bucket).
    pub prefix: ObjectPath,
    /// The URI of the store's root, `s3://bucket`.
    pub base: String,
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLocation")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .field("base", &self.base)
            .finish()
    }
}

impl StoreLocation {
    /// The URI of the object at `path` (percent-encoded, see [`object_uri`]).
    pub fn uri(&self, path: &ObjectPath) -> String {
        object_uri(&self.base, path.as_ref())
    }

    /// The object `name` directly under the prefix.
    pub fn child(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }
}

/// Resolves `location`: a local path (relative or absolute), `file:///abs/path`, or
/// `s3://bucket/prefix` configured by the credential policy (module docs) with `options`.
///
/// Errors (kind `Config`) on an unparsable URL, an unsupported scheme, a bucket-less `s3://`,
/// an unknown option key, or an S3 configuration that does not build.
pub fn resolve(location: &str, options: &StorageOptions) -> Result<Location> {
    let location = location.trim();
    if !location.contains("://") {
        return Ok(Location::Local(PathBuf::from(location)));
    }
    let url = url::Url::parse(location)
        .map_err(|e| Error::config(format!("invalid location '{location}'")).with_source(e))?;
    match url.scheme() {
        "file" => url.to_file_path().map(Location::Local).map_err(|()| {
            Error::config(format!(
                "location '{location}' is not a local absolute path (file:///abs/dir)"
            ))
        }),
        "s3" | "s3a" => {
            let bucket = url.host_str().unwrap_or_default();
            if bucket.is_empty() {
                return Err(Error::config(format!(
                    "location '{location}' names no bucket"
                )));
            }
            let s3 = s3(bucket, options)?;
            let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| {
                Error::config(format!("invalid object path in '{location}'")).with_source(e)
            })?;
            Ok(Location::Store(StoreLocation {
                store: s3.clone(),
                multipart: s3,
                prefix,
                base: format!("s3://{bucket}"),
            }))
        }
        other => Err(Error::config(format!(
            "location '{location}': scheme '{other}' is not supported (use a local path, file:// or s3://)"
        ))),
    }
}

/// An S3 client for `bucket`, configured by the credential policy (module docs) with `options`.
pub fn s3(bucket: &str, options: &StorageOptions) -> Result<Arc<AmazonS3>> {
    // A request that hangs fails after a minute (object_store then retries it), unless the
    // environment or the options say otherwise.
    let mut builder = AmazonS3Builder::new()
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s");
    // The environment, as `AmazonS3Builder::from_env` reads it.
    for (k, v) in std::env::vars_os() {
        if let (Some(k), Some(v)) = (k.to_str(), v.to_str())
            && k.starts_with("AWS_")
            && let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(key, v);
        }
    }
    for (k, v) in &options.0 {
        let key: AmazonS3ConfigKey = k.parse().map_err(|e| {
            Error::config(format!(
                "unknown object-store option '{k}' (use object_store's keys, such as aws_endpoint, aws_region, aws_access_key_id, aws_allow_http)"
            ))
            .with_source(e)
        })?;
        builder = builder.with_config(key, v);
    }
    let s3 = builder.with_bucket_name(bucket).build().map_err(|e| {
        Error::config(format!("cannot configure access to s3://{bucket}")).with_source(e)
    })?;
    Ok(Arc::new(s3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_files_and_s3() {
        assert!(matches!(
            resolve("out/x", &StorageOptions::default()),
            Ok(Location::Local(p)) if p == std::path::Path::new("out/x")
        ));
        assert!(matches!(
            resolve("file:///tmp/a%20b", &StorageOptions::default()),
            Ok(Location::Local(p)) if p == std::path::Path::new("/tmp/a b")
        ));
        let opts = StorageOptions::from_pairs([
            ("aws_endpoint", "http://127.0.0.1:1"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "k"),
            ("aws_secret_access_key", "s"),
        ]);
        let Ok(Location::Store(s)) = resolve("s3://bucket/some/prefix/", &opts) else {
            panic!("s3 location");
        };
        assert_eq!(s.prefix.as_ref(), "some/prefix");
        assert_eq!(s.base, "s3://bucket");
        assert_eq!(
            s.uri(&s.child("a b.jpg")),
            "s3://bucket/some/prefix/a%20b.jpg"
        );
        for bad in ["s3:///nobucket", "gopher://x/y", "http://x/y"] {
            let e = resolve(bad, &opts).expect_err(bad);
            assert_eq!(e.kind(), weir_types::ErrorKind::Config, "{bad}");
        }
        let e = resolve(
            "s3://b/p",
            &StorageOptions::from_pairs([("aws_endpoitn", "x")]),
        )
        .expect_err("typo");
        assert!(e.message().contains("aws_endpoitn"), "{e}");
    }
}
