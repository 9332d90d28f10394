//! URIs that survive any name. A local file becomes `file:///abs/path` and an object
//! `s3://bucket/key`, percent-encoded, so that a name with spaces, `#`, `?`, `%`, control
//! characters or bytes that are not UTF-8 gives one URI that decodes back to the same file or
//! object (`a%20b.jpg` is written `a%2520b.jpg`, and decodes to `a%20b.jpg`, not `a b.jpg`).

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::path::{Path, PathBuf};
use url::Url;
use weir_types::{Error, Result};

/// Bytes encoded in one path segment of an object URI: controls, space, everything with a meaning
/// in a URL (`#`, `?`, `%`, `/`, ...).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'[')
    .add(b']');

/// The `file://` URI of an absolute local path, percent-encoded byte by byte (lossless also for
/// names that are not UTF-8). Errors (kind `InvalidInput`) for a relative path.
pub fn file_uri(path: &Path) -> Result<String> {
    Url::from_file_path(path).map(String::from).map_err(|()| {
        Error::input(format!(
            "cannot make a file uri of '{}': not an absolute path",
            path.display()
        ))
    })
}

/// The local path of a `file://` URI, percent-decoded byte by byte (the inverse of
/// [`file_uri`]). Errors (kind `InvalidInput`) when the URI names another host.
pub fn file_path(url: &Url) -> Result<PathBuf> {
    url.to_file_path()
        .map_err(|()| Error::input(format!("'{url}' is not a local file uri")))
}

/// The URI of object `key` (a `/`-separated object-store path) under `base` (`s3://bucket`):
/// every segment percent-encoded, so that [`object_store::path::Path::from_url_path`] of the
/// URI's path gives `key` back.
pub fn object_uri(base: &str, key: &str) -> String {
    let mut out = String::with_capacity(base.len() + key.len() + 8);
    out.push_str(base.trim_end_matches('/'));
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.extend(utf8_percent_encode(segment, SEGMENT));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn file_uris_round_trip_any_name() {
        let names: Vec<&[u8]> = vec![
            b"a b.jpg",
            b"a%20b.jpg",
            b"x#y.jpg",
            b"q?.jpg",
            b"slash%2Fname.jpg",
            b"tab\there.jpg",
            b"new\nline.jpg",
            b"\xff\xfe-latin1.jpg",
            "\u{00fc}ber.jpg".as_bytes(),
        ];
        for n in names {
            let p = Path::new("/srv/data").join(std::ffi::OsStr::from_bytes(n));
            let uri = file_uri(&p).expect("uri");
            assert!(
                !uri.contains(['\t', '\n', ' ', '#', '?']),
                "{uri} is not encoded"
            );
            let back = file_path(&Url::parse(&uri).expect("parse")).expect("path");
            assert_eq!(back, p, "{uri}");
        }
        assert_eq!(
            file_uri(Path::new("/d/a%20b.jpg")).expect("uri"),
            "file:///d/a%2520b.jpg"
        );
        assert!(file_uri(Path::new("rel/a")).is_err());
    }

    #[test]
    fn object_uris_round_trip() {
        for key in ["a/b c.jpg", "x/a%20b.jpg", "x/h#1?.jpg", "u/\u{00fc}ber"] {
            let uri = object_uri("s3://bucket", key);
            let url = Url::parse(&uri).expect("parse");
            assert_eq!(url.host_str(), Some("bucket"));
            let path = object_store::path::Path::from_url_path(url.path()).expect("path");
            assert_eq!(path.as_ref(), key, "{uri}");
        }
    }
}
