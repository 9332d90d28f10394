//! The client side of the API, for `weir status`, `weir services` and `weir scale`: finds a
//! running job through its API file and calls it with its token.

use crate::server::{ApiFile, ErrorBody};
use serde::de::DeserializeOwned;
use std::time::Duration;
use weir_types::{Error, Result};

/// A connection to one job's API.
#[derive(Debug)]
pub struct Client {
    file: ApiFile,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for the job `file` describes.
    pub fn new(file: ApiFile) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::internal("cannot make an HTTP client").with_source(e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start a tokio runtime").with_source(e))?;
        Ok(Client { file, http, rt })
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.file.job
    }

    /// `GET path` (for example `/api/v1/overview`), decoded.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, None)
    }

    /// `POST path` with a JSON body, decoded.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.file.url);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.file.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let (status, text) = self
            .rt
            .block_on(async {
                let resp = req.send().await?;
                let status = resp.status();
                resp.text().await.map(|t| (status, t))
            })
            .map_err(|e| {
                Error::external(format!(
                    "cannot reach job '{}' at {url} (has it ended?)",
                    self.file.job
                ))
                .with_source(e)
            })?;
        if !status.is_success() {
            let said = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            let e = format!("{method} {path}: {status}: {said}");
            return Err(if status.is_client_error() {
                Error::config(e)
            } else {
                Error::external(e)
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            Error::external(format!(
                "{method} {path}: the answer is not what weir expects"
            ))
            .with_source(e)
        })
    }
}
