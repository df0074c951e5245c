//! HTTP purge: `PURGE` (or the configured method, with the configured headers) of each path on
//! every cache node, in parallel (at most `concurrency` requests at once), with a timeout per
//! request and retries with exponential backoff and jitter for `retry_for`.
//!
//! How answers are read:
//! - 2xx, and 404 (nothing cached under that path): accepted;
//! - connection errors, timeouts, 5xx, 408, 429: retried; still failing after `retry_for`, the
//!   node is unavailable (an outage for the whole unit);
//! - 401, 403, 405, 407: the node does not let us purge at all (an ACL, a missing `PURGE`
//!   handler, a token): a configuration outage, retried the same way, never blamed on the events;
//! - any other 4xx (400, 414, ...): that path is refused; its events dead-letter (`cdn_rejected`);
//! - redirects: only a 307 or 308 to the node's own origin (scheme, host and port) is followed, at
//!   most three times. A purge (and its headers, such as a token) is never sent to a host that is
//!   not configured, and a 301/302/303, which would turn the purge into a `GET` that "succeeds"
//!   without purging, is not followed: either is a configuration outage, like a 403.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::Retryable;
use futures::stream::{self, StreamExt};
use reqwest::header::{HeaderValue, LOCATION};
use reqwest::redirect::Policy;
use reqwest::{Client, Method, StatusCode, Url};

use super::{CdnError, CdnStats, Counters};
use crate::config::{HttpHeaders, HttpMethod, HttpUrl};
use crate::telemetry;

pub struct HttpPurger {
    name: String,
    client: Client,
    nodes: Vec<Node>,
    method: Method,
    retry_for: Duration,
    concurrency: usize,
    counters: Counters,
}

/// A cache node: the base URL requests go to, and the same with its password as `***`, the only
/// form that logs, errors (and so `/readyz` and dead letters) show.
struct Node {
    base: String,
    shown: String,
}

/// One request: the URL sent, and the URL shown.
struct Request {
    url: String,
    shown: String,
}

/// One request's failure.
enum Failure {
    /// Retrying can help (connection, timeout, 5xx, 429).
    Transient(String),
    /// The node refused this path.
    Rejected(String),
}

impl HttpPurger {
    pub fn new(
        name: &str,
        urls: &[HttpUrl],
        method: &HttpMethod,
        headers: &HttpHeaders,
        timeout: Duration,
        retry_for: Duration,
        concurrency: NonZeroUsize,
    ) -> Result<HttpPurger, String> {
        let client = Client::builder()
            .redirect(same_origin_redirects())
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers.as_map().clone())
            .build()
            .map_err(|e| format!("cdn.{name}: {e}"))?;
        Ok(HttpPurger {
            name: name.to_owned(),
            client,
            nodes: urls
                .iter()
                .map(|u| Node {
                    base: u.as_str().trim_end_matches('/').to_owned(),
                    shown: u.to_string().trim_end_matches('/').to_owned(),
                })
                .collect(),
            method: method.as_method().clone(),
            retry_for,
            concurrency: concurrency.get(),
            counters: Counters::default(),
        })
    }

    pub fn stats(&self) -> CdnStats {
        self.counters.stats("http")
    }

    /// Purges `paths` on every node. Per path: `Ok` when every node accepted it, `Err` with the
    /// refusal otherwise. An unreachable node (after retries) fails the whole call.
    pub async fn purge<'a>(
        &self,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Result<(), String>>, CdnError> {
        let paths: Vec<&str> = paths.collect();
        let requests: Vec<(usize, Request)> = paths
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                self.nodes.iter().map(move |n| {
                    let url = format!("{}{p}", n.base);
                    let shown = format!("{}{p}", n.shown);
                    (i, Request { url, shown })
                })
            })
            .collect();
        let results: Vec<(usize, Result<(), Failure>)> = stream::iter(requests)
            .map(|(i, r)| async move { (i, self.send_with_retry(&r).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        self.counters
            .paths_requested
            .fetch_add(paths.len() as u64, Ordering::Relaxed);
        let mut out: Vec<Result<(), String>> = vec![Ok(()); paths.len()];
        for (i, r) in results {
            match r {
                Ok(()) => {}
                Err(Failure::Rejected(m)) => out[i] = Err(m),
                Err(Failure::Transient(m)) => {
                    return Err(CdnError::Unavailable {
                        target: self.name.clone(),
                        message: m,
                    });
                }
            }
        }
        let sent = out.iter().filter(|r| r.is_ok()).count() as u64;
        let rejected = out.len() as u64 - sent;
        self.counters.paths_sent.fetch_add(sent, Ordering::Relaxed);
        self.counters
            .rejected
            .fetch_add(rejected, Ordering::Relaxed);
        telemetry::cdn_paths_sent(&self.name, sent);
        Ok(out)
    }

    async fn send_with_retry(&self, r: &Request) -> Result<(), Failure> {
        (|| self.send(r))
            .retry(
                crate::backoff::jittered(Duration::from_millis(50), Duration::from_secs(5))
                    .with_total_delay(Some(self.retry_for)),
            )
            .when(|f| matches!(f, Failure::Transient(_)))
            .notify(|f, d| {
                if let Failure::Transient(m) = f {
                    tracing::warn!(target_name = %self.name, url = %r.shown, error = %m, retry_in = ?d, "purge failed, retrying");
                }
            })
            .await
    }

    async fn send(&self, r: &Request) -> Result<(), Failure> {
        let result = self
            .client
            .request(self.method.clone(), &r.url)
            .send()
            .await;
        let url = &r.shown;
        let (status, location) = match result {
            Ok(r) => (r.status(), r.headers().get(LOCATION).cloned()),
            Err(e) => {
                self.count("failed");
                // reqwest's message would name the URL as sent, password included.
                let e = e.without_url();
                return Err(Failure::Transient(format!("{} {url}: {e}", self.method)));
            }
        };
        let message = || format!("{} {url}: HTTP {status}", self.method);
        match classify(status) {
            Class::Accepted => {
                self.count("accepted");
                Ok(())
            }
            Class::Throttled => {
                self.count("throttled");
                self.counters.throttles.fetch_add(1, Ordering::Relaxed);
                telemetry::cdn_throttle(&self.name, status.as_str());
                Err(Failure::Transient(message()))
            }
            Class::Transient => {
                self.count("failed");
                Err(Failure::Transient(message()))
            }
            Class::NotAllowed => {
                self.count("refused");
                Err(Failure::Transient(format!(
                    "{}: the node does not allow this purge (check `method`, `headers` and its ACL)",
                    message()
                )))
            }
            Class::Redirected => {
                self.count("refused");
                Err(Failure::Transient(format!(
                    "{}: redirected to {}; a purge follows only a 307 or 308 to the node's own origin (configure the URL the node answers on)",
                    message(),
                    origin_of(&r.url, location.as_ref())
                )))
            }
            Class::Rejected => {
                self.count("rejected");
                Err(Failure::Rejected(message()))
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        telemetry::cdn_request(&self.name, outcome);
        let c = match outcome {
            "accepted" => &self.counters.requests,
            "rejected" | "throttled" => return,
            _ => &self.counters.failed_attempts,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, PartialEq)]
enum Class {
    Accepted,
    Throttled,
    Transient,
    NotAllowed,
    Redirected,
    Rejected,
}

fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 | 404 => Class::Accepted,
        300..=399 => Class::Redirected,
        429 => Class::Throttled,
        408 | 500..=599 => Class::Transient,
        401 | 403 | 405 | 407 => Class::NotAllowed,
        _ => Class::Rejected,
    }
}

/// Follows a redirect only when it keeps the method (307, 308) and the origin of the request
/// (so never to another host, never from https to http), at most three times.
fn same_origin_redirects() -> Policy {
    Policy::custom(|attempt| {
        let keeps_method = matches!(attempt.status().as_u16(), 307 | 308);
        let first = attempt.previous().first();
        let same = first.is_some_and(|f| f.origin() == attempt.url().origin());
        if keeps_method && same && attempt.previous().len() <= 3 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Where a redirect pointed, as `scheme://host:port` only (no credentials, no path).
fn origin_of(request: &str, location: Option<&HeaderValue>) -> String {
    let target = location
        .and_then(|l| l.to_str().ok())
        .and_then(|l| Url::parse(request).ok()?.join(l).ok());
    match target {
        Some(u) => u.origin().ascii_serialization(),
        None => "an unreadable location".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let c = |n: u16| classify(StatusCode::from_u16(n).unwrap());
        assert_eq!(c(200), Class::Accepted);
        assert_eq!(c(204), Class::Accepted);
        assert_eq!(c(404), Class::Accepted);
        assert_eq!(c(429), Class::Throttled);
        assert_eq!(c(503), Class::Transient);
        assert_eq!(c(408), Class::Transient);
        assert_eq!(c(405), Class::NotAllowed);
        assert_eq!(c(403), Class::NotAllowed);
        assert_eq!(c(400), Class::Rejected);
        assert_eq!(c(414), Class::Rejected);
        assert_eq!(c(301), Class::Redirected);
        assert_eq!(c(308), Class::Redirected);
    }
}
