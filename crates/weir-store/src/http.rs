//! Fetching http(s) URIs that come from data: a reqwest client whose every connection goes
//! through a resolver that refuses non-public addresses (see [`crate::address`]), whose redirects
//! are checked again (scheme, literal addresses; host names go through the same resolver), which
//! ignores proxy settings (a proxy would resolve names where weir cannot check them), and whose
//! requests have timeouts, a bounded number of retries, and a size limit enforced while the body
//! streams in.
//!
//! Every failure is an error of kind `InvalidInput` naming the URL and the cause, so the caller
//! can make it a bad row of that URL: an unreachable host never fails a job by itself.

use crate::address::AddressPolicy;
use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use weir_types::{Error, Result};

/// How [`HttpFetcher`] behaves.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Which non-public addresses may be reached.
    pub addresses: AddressPolicy,
    /// Whether plain `http://` may be used (the first request and redirects).
    pub allow_http: bool,
    /// Whether `https://` may be used.
    pub allow_https: bool,
    /// Longest time to connect.
    pub connect_timeout: Duration,
    /// Longest time for a whole attempt (connect, headers and body).
    pub timeout: Duration,
    /// Attempts after the first one, for errors a retry may cure (connect failures, timeouts,
    /// 5xx and 429 answers).
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one.
    pub backoff: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Host names answered without DNS (like curl's `--resolve`); still checked against
    /// `addresses`. For tests and pinned hosts.
    pub resolve: HashMap<String, Vec<IpAddr>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            addresses: AddressPolicy::default(),
            allow_http: true,
            allow_https: true,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            retries: 2,
            backoff: Duration::from_millis(200),
            max_redirects: 5,
            resolve: HashMap::new(),
        }
    }
}

/// The error a refused address or redirect carries through reqwest, so it is not retried.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves names and refuses any answer with an address the policy does not allow.
#[derive(Debug)]
struct GuardedResolver {
    policy: AddressPolicy,
    fixed: HashMap<String, Vec<IpAddr>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let fixed = self.fixed.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            for a in &addrs {
                if let Err(e) = policy.check(&host, a.ip()) {
                    return Err(Box::new(Refused(e.message().to_string()))
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL's scheme and, when its host is a literal address, that address.
fn check_url(url: &Url, opts: &Checks) -> std::result::Result<(), String> {
    match url.scheme() {
        "http" if opts.allow_http => {}
        "https" if opts.allow_https => {}
        other => return Err(format!("refused: scheme '{other}' of {url} is not allowed")),
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(format!("refused: {url} has no host")),
    };
    opts.addresses
        .check(&ip.to_string(), ip)
        .map_err(|e| e.message().to_string())
}

#[derive(Debug, Clone)]
struct Checks {
    addresses: AddressPolicy,
    allow_http: bool,
    allow_https: bool,
}

/// A guarded http(s) client for URIs from data.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    checks: Arc<Checks>,
    retries: u32,
    backoff: Duration,
}

impl HttpFetcher {
    /// A client with `opts`. Errors (kind `Config`) when the TLS set-up fails.
    pub fn new(opts: HttpOptions) -> Result<Self> {
        let checks = Arc::new(Checks {
            addresses: opts.addresses.clone(),
            allow_http: opts.allow_http,
            allow_https: opts.allow_https,
        });
        let max = opts.max_redirects;
        let redirect_checks = checks.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(Refused(format!("more than {max} redirects")));
            }
            match check_url(attempt.url(), &redirect_checks) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    let why = format!("redirect to {}: {why}", attempt.url());
                    attempt.error(Refused(why))
                }
            }
        });
        let resolver = GuardedResolver {
            policy: opts.addresses,
            fixed: opts
                .resolve
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .redirect(policy)
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.timeout)
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config("cannot set up the http client").with_source(e))?;
        Ok(HttpFetcher {
            client,
            checks,
            retries: opts.retries,
            backoff: opts.backoff,
        })
    }

    /// The bytes at `url` (from `offset`, `length` of them when given), at most `max` bytes.
    /// Retries what a retry may cure, at most `retries` times. Errors are of kind `InvalidInput`
    /// and name the URL, the cause and the attempts made.
    pub async fn get(
        &self,
        url: &Url,
        offset: u64,
        length: Option<u64>,
        max: u64,
    ) -> Result<Bytes> {
        if let Err(why) = check_url(url, &self.checks) {
            return Err(Error::input(why));
        }
        if length.is_some_and(|l| l > max) {
            return Err(Error::input(format!(
                "{url}: the range asked for is {} bytes, more than max_size {max} bytes",
                length.unwrap_or_default()
            )));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(url, offset, length, max).await {
                Ok(b) => return Ok(b),
                Err(Failure { message, retry }) => {
                    if !retry || attempt > self.retries {
                        let tries = if attempt > 1 {
                            format!(" (after {attempt} attempts)")
                        } else {
                            String::new()
                        };
                        return Err(Error::input(format!(
                            "cannot fetch {url}: {message}{tries}"
                        )));
                    }
                    tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt - 1)).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        offset: u64,
        length: Option<u64>,
        max: u64,
    ) -> std::result::Result<Bytes, Failure> {
        let mut req = self.client.get(url.clone());
        let ranged = offset > 0 || length.is_some();
        if ranged {
            let range = match length {
                Some(0) => return Ok(Bytes::new()),
                Some(l) => format!("bytes={offset}-{}", offset + l - 1),
                None => format!("bytes={offset}-"),
            };
            req = req.header(reqwest::header::RANGE, range);
        }
        let mut resp = req.send().await.map_err(Failure::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Failure {
                message: format!("http status {status}"),
                retry: status.is_server_error() || status.as_u16() == 429,
            });
        }
        // A server that ignores the range sends the whole object: cut it here.
        let skip = if ranged && status.as_u16() != 206 {
            offset
        } else {
            0
        };
        let limit = skip.saturating_add(length.unwrap_or(max).min(max));
        if let Some(len) = resp.content_length()
            && len.saturating_sub(skip) > max
            && length.is_none()
        {
            return Err(Failure {
                message: format!("it is {len} bytes, more than max_size {max} bytes"),
                retry: false,
            });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(Failure::from_reqwest)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > limit {
                if length.is_some() {
                    body.truncate(limit as usize);
                    break;
                }
                return Err(Failure {
                    message: format!("it is more than max_size {max} bytes"),
                    retry: false,
                });
            }
        }
        let body = body.freeze();
        Ok(if skip > 0 {
            body.slice((skip as usize).min(body.len())..)
        } else {
            body
        })
    }
}

/// One failed attempt: what went wrong and whether another attempt may succeed.
struct Failure {
    message: String,
    retry: bool,
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // The whole cause chain, without the URL reqwest repeats at the top.
        let mut parts = Vec::new();
        let mut refused = false;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cur {
            if let Some(r) = c.downcast_ref::<Refused>() {
                refused = true;
                parts.clear();
                parts.push(r.0.clone());
                break;
            }
            let text = c.to_string();
            let text = match text.split_once(" for url (") {
                Some((head, _)) => head.to_string(),
                None => text,
            };
            if parts.last() != Some(&text) {
                parts.push(text);
            }
            cur = c.source();
        }
        let retry = !refused && (e.is_timeout() || e.is_connect() || e.is_request() || e.is_body());
        let message = if e.is_timeout() && !refused {
            format!("timed out ({})", parts.join(": "))
        } else {
            parts.join(": ")
        };
        Failure { message, retry }
    }
}
