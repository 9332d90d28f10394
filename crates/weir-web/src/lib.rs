//! Seeing a running job: the REST API, the web UI and Prometheus metrics that `weir run --http`
//! serves, and the control requests (stop, checkpoint now, scale) it accepts with a token.
//!
//! - [`Watch`] is the job as watchers see it: `weir run` attaches each run attempt to it and
//!   samples it every half second (rates, the "why is it slow" reasons of [`why`]).
//! - [`WebServer`] serves it over HTTP on a thread of its own ([`server`] has the security
//!   rules); [`api`] builds the JSON documents, [`prom`] the Prometheus metrics, [`ui`] the
//!   page.
//! - [`Client`] is the other side, for `weir status`, `weir services` and `weir scale`.
//!
//! The API is described by `openapi.yaml` next to this crate's manifest (served at
//! `/api/v1/openapi.yaml`); `docs/observability.md` is the user's guide.

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod prom;
pub mod server;
pub mod ui;
pub mod watch;
pub mod why;

pub use client::Client;
pub use server::{ApiFile, ApiFileGuard, OPENAPI_YAML, WebOptions, WebServer};
pub use watch::{Attempt, JobInfo, JobState, Watch};

/// The address `weir run` serves on unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8642";

/// A fresh token: 32 hex digits from the operating system's random source.
pub fn new_token() -> weir_types::Result<String> {
    weir_serve::control::new_token()
}
