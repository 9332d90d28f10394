//! URIs that come from data rows are hostile: [`DataPolicy`] decides what such a URI may name
//! before anything is read.
//!
//! - `file://` URIs and plain paths are refused unless roots are declared; then the path is
//!   percent-decoded, `..` is resolved, and the result (and, when it exists, the file it resolves
//!   to through symbolic links) must lie under one of the roots.
//! - `s3://` URIs are allowed (any bucket the credentials reach) unless `s3://` roots are
//!   declared; then the bucket and key prefix must match one of them.
//! - `http(s)://` URIs are allowed; the addresses they reach are checked by [`crate::http`]
//!   after DNS resolution and on every redirect.
//! - Every other scheme is refused.

use object_store::path::Path as ObjectPath;
use std::path::{Component, Path, PathBuf};
use url::Url;
use weir_types::{Error, Result};

/// The schemes a data URI may use besides `file`, by default.
pub const DEFAULT_SCHEMES: &[&str] = &["s3", "http", "https"];

/// What a data URI names, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataTarget {
    /// A local file (absolute, `..` resolved).
    Local(PathBuf),
    /// An object in an S3 bucket.
    Object {
        /// The bucket.
        bucket: String,
        /// The key.
        path: ObjectPath,
    },
    /// An http(s) URL.
    Http(Url),
}

/// What URIs from data may name: allowed schemes and roots.
#[derive(Debug, Clone, Default)]
pub struct DataPolicy {
    schemes: Vec<String>,
    file_roots: Vec<PathBuf>,
    object_roots: Vec<(String, ObjectPath)>,
}

impl DataPolicy {
    /// A policy allowing `schemes` (among `s3`, `http`, `https`; `file` is allowed by declaring
    /// local roots) under `roots`: local directories (paths or `file://` URLs, which must exist)
    /// and `s3://bucket/prefix` URLs.
    ///
    /// Errors (kind `Config`) on an unknown scheme, `file` in `schemes`, or a root that does not
    /// exist or cannot be parsed.
    pub fn new<S: AsRef<str>, R: AsRef<str>>(schemes: &[S], roots: &[R]) -> Result<Self> {
        let mut policy = DataPolicy::default();
        for s in schemes {
            let s = s.as_ref().to_ascii_lowercase();
            match s.as_str() {
                "s3" | "http" | "https" => policy.schemes.push(s),
                "file" => {
                    return Err(Error::config(
                        "the file scheme is not enabled by allow_schemes: declare the local directories URIs may name in 'roots'",
                    ));
                }
                other => {
                    return Err(Error::config(format!(
                        "scheme '{other}' is not supported (s3, http, https; local files through roots)"
                    )));
                }
            }
        }
        for r in roots {
            let r = r.as_ref().trim();
            if let Some(rest) = r.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::config(format!("root '{r}' names no bucket")));
                }
                let prefix = ObjectPath::parse(prefix.trim_end_matches('/')).map_err(|e| {
                    Error::config(format!("invalid object prefix in root '{r}'")).with_source(e)
                })?;
                policy.object_roots.push((bucket.to_string(), prefix));
                continue;
            }
            let path = if r.contains("://") {
                let url = Url::parse(r)
                    .map_err(|e| Error::config(format!("invalid root '{r}'")).with_source(e))?;
                if url.scheme() != "file" {
                    return Err(Error::config(format!(
                        "root '{r}': roots are local directories or s3://bucket/prefix"
                    )));
                }
                crate::uri::file_path(&url).map_err(|e| Error::config(e.message().to_string()))?
            } else {
                PathBuf::from(r)
            };
            let canonical = std::fs::canonicalize(&path).map_err(|e| {
                Error::config(format!("root '{r}' does not exist or cannot be read")).with_source(e)
            })?;
            policy.file_roots.push(canonical);
        }
        Ok(policy)
    }

    /// Whether http(s) URIs are allowed at all.
    pub fn allows_http(&self) -> bool {
        self.schemes.iter().any(|s| s == "http" || s == "https")
    }

    /// Whether `scheme` (lowercase) is allowed.
    pub fn allows_scheme(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s == scheme)
    }

    /// What `uri` names, or why it is refused (kind `InvalidInput`, naming the URI).
    pub fn locate(&self, uri: &str) -> Result<DataTarget> {
        if !uri.contains("://") {
            return self.local(uri, Path::new(uri));
        }
        let url = Url::parse(uri).map_err(|e| Error::input(format!("invalid uri '{uri}': {e}")))?;
        let scheme = url.scheme().to_ascii_lowercase();
        match scheme.as_str() {
            "file" => {
                let path = crate::uri::file_path(&url)?;
                self.local(uri, &path)
            }
            "s3" | "s3a" if self.allows_scheme("s3") => {
                let bucket = url.host_str().unwrap_or_default().to_string();
                if bucket.is_empty() {
                    return Err(Error::input(format!("uri '{uri}' names no bucket")));
                }
                let path = ObjectPath::from_url_path(url.path()).map_err(|e| {
                    Error::input(format!("invalid object path in '{uri}'")).with_source(e)
                })?;
                if !self.object_roots.is_empty()
                    && !self
                        .object_roots
                        .iter()
                        .any(|(b, p)| *b == bucket && path.prefix_matches(p))
                {
                    return Err(Error::input(format!(
                        "refused: '{uri}' is outside the declared roots"
                    )));
                }
                Ok(DataTarget::Object { bucket, path })
            }
            "http" | "https" if self.allows_scheme(&scheme) => Ok(DataTarget::Http(url)),
            _ => Err(Error::input(format!(
                "refused: scheme '{scheme}' of '{uri}' is not allowed (allowed: {}{})",
                self.schemes.join(", "),
                if self.file_roots.is_empty() {
                    ""
                } else {
                    ", file under the roots"
                }
            ))),
        }
    }

    fn local(&self, uri: &str, path: &Path) -> Result<DataTarget> {
        if self.file_roots.is_empty() {
            return Err(Error::input(format!(
                "refused: '{uri}' names a local file, and local files are read from data only under declared roots"
            )));
        }
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("cannot read the working directory").with_source(e))?
                .join(path)
        };
        let lexical = normalize(&abs);
        let outside = || {
            Error::input(format!(
                "refused: '{uri}' is outside the declared roots ({})",
                self.file_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if !self.under_root(&lexical) {
            return Err(outside());
        }
        // Through symbolic links, too: the file it resolves to must be under a root.
        match std::fs::canonicalize(&lexical) {
            Ok(real) if self.under_root(&real) => Ok(DataTarget::Local(real)),
            Ok(_) => Err(outside()),
            Err(_) => Ok(DataTarget::Local(lexical)),
        }
    }

    fn under_root(&self, p: &Path) -> bool {
        self.file_roots.iter().any(|r| p.starts_with(r))
    }
}

/// `p` with `.` dropped and `..` applied, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(x) => out.push(x.as_os_str()),
            Component::RootDir => out.push(Component::RootDir.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_are_off_by_default_and_confined_to_roots() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("srv");
        std::fs::create_dir_all(root.join("photos")).expect("mkdir");
        std::fs::write(root.join("photos/a b.jpg"), "x").expect("write");
        std::fs::write(dir.path().join("secret"), "s").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("photos/link"))
            .expect("symlink");
        let off = DataPolicy::new(DEFAULT_SCHEMES, &[] as &[&str]).expect("policy");
        let e = off.locate("file:///etc/shadow").expect_err("off");
        assert!(e.message().contains("refused"), "{e}");
        assert!(off.locate("/etc/passwd").is_err());
        assert!(off.locate("etc/passwd").is_err());

        let root_s = root.display().to_string();
        let on = DataPolicy::new(DEFAULT_SCHEMES, &[root_s.as_str()]).expect("policy");
        let canon = std::fs::canonicalize(&root).expect("canon");
        let r = canon.display();
        assert_eq!(
            on.locate(&format!("file://{r}/photos/a%20b.jpg"))
                .expect("ok"),
            DataTarget::Local(canon.join("photos/a b.jpg"))
        );
        for hostile in [
            "file:///etc/shadow".to_string(),
            format!("file://{r}/../secret"),
            format!("file://{r}/photos/%2e%2e/%2e%2e/secret"),
            format!("file://{r}/photos/..%2F..%2Fsecret"),
            format!("{r}/photos/../../secret"),
            format!("file://{r}/photos/link"),
            format!("file://{r}2/x"),
        ] {
            let e = on.locate(&hostile).expect_err(&hostile);
            assert!(
                e.message().contains("outside the declared roots"),
                "{hostile}: {e}"
            );
        }
        assert!(matches!(
            on.locate("gopher://x/y"),
            Err(e) if e.message().contains("scheme 'gopher'")
        ));
        assert!(DataPolicy::new(&["file"], &[] as &[&str]).is_err());
        assert!(DataPolicy::new(DEFAULT_SCHEMES, &["/surely/not/here"]).is_err());
    }

    #[test]
    fn s3_roots() {
        let p = DataPolicy::new(&["s3"], &["s3://photos/2024/"]).expect("policy");
        assert!(matches!(
            p.locate("s3://photos/2024/a%20b.jpg"),
            Ok(DataTarget::Object { bucket, path }) if bucket == "photos" && path.as_ref() == "2024/a b.jpg"
        ));
        assert!(p.locate("s3://photos/2023/a.jpg").is_err());
        assert!(p.locate("s3://other/2024/a.jpg").is_err());
        assert!(p.locate("s3://photos/2024/../secret").is_err());
        assert!(
            p.locate("https://example.com/x").is_err(),
            "https not allowed"
        );
    }
}
