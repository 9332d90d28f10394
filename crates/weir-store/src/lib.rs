//! weir-store: the one way from a URL to an object store, with one credential policy, and the
//! guarded way to read URIs that come from data.
//!
//! - [`location`]: [`resolve`] turns a configured location (local path, `file://`,
//!   `s3://bucket/prefix`) into a [`Location`]; S3 is configured by the credential policy
//!   described there (defaults, then `AWS_*` environment variables, then explicit
//!   [`StorageOptions`]). The `files` source, the file sinks, `fetch` and the checkpoint store all
//!   go through it.
//! - [`data`]: [`DataPolicy`], what a URI read from a data row may name (schemes, local and S3
//!   roots with `..` and percent-encoded escapes resolved before the check).
//! - [`http`]: [`HttpFetcher`], an http(s) client for such URIs whose address checks happen after
//!   DNS resolution and on every redirect, with timeouts, bounded retries and a size limit.
//! - [`address`]: which addresses are public, and the allow-list.
//! - [`uri`]: lossless `file://` and `s3://` URIs for any file or object name.
//!
//! This crate sits at the bottom of weir's layering (just above `weir-types`) so that the
//! checkpoint store can use it too.

pub mod address;
pub mod data;
pub mod http;
pub mod location;
pub mod uri;

pub use address::{AddressPolicy, non_public_class};
pub use data::{DEFAULT_SCHEMES, DataPolicy, DataTarget};
pub use http::{HttpFetcher, HttpOptions};
pub use location::{Location, StorageOptions, StoreLocation, resolve, s3};
pub use uri::{file_path, file_uri, object_uri};
