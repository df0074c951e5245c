//! HTTP purge: `PURGE` (or the configured method) of each path on every cache node, in parallel, with
//! a timeout per request and retries with backoff for connection errors, timeouts, 5xx and 429.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{self, StreamExt};
use reqwest::{Client, Method, StatusCode};

use super::CdnError;

pub struct HttpPurger {
    name: String,
    client: Client,
    urls: Vec<String>,
    method: Method,
    retry_for: Duration,
    concurrency: usize,
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
        urls: &[String],
        method: &str,
        headers: &BTreeMap<String, String>,
        timeout: Duration,
        retry_for: Duration,
        concurrency: usize,
    ) -> Result<HttpPurger, String> {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            let name_ = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("cdn.{name}.headers: `{k}`: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("cdn.{name}.headers.{k}: {e}"))?;
            map.insert(name_, value);
        }
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(map)
            .build()
            .map_err(|e| format!("cdn.{name}: {e}"))?;
        Ok(HttpPurger {
            name: name.to_owned(),
            client,
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            method: Method::from_bytes(method.as_bytes())
                .map_err(|e| format!("cdn.{name}.method: {e}"))?,
            retry_for,
            concurrency,
        })
    }

    /// Purges `paths` on every node. Per path: `Ok` when every node accepted it, `Err` with the
    /// refusal otherwise. An unreachable node (after retries) fails the whole call.
    pub async fn purge<'a>(
        &self,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Result<(), String>>, CdnError> {
        let paths: Vec<&str> = paths.collect();
        let requests: Vec<(usize, String)> = paths
            .iter()
            .enumerate()
            .flat_map(|(i, p)| self.urls.iter().map(move |u| (i, format!("{u}{p}"))))
            .collect();
        let results: Vec<(usize, Result<(), Failure>)> = stream::iter(requests)
            .map(|(i, url)| async move { (i, self.send_with_retry(&url).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
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
        Ok(out)
    }

    async fn send_with_retry(&self, url: &str) -> Result<(), Failure> {
        (|| self.send(url))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times()
                    .with_total_delay(Some(self.retry_for)),
            )
            .when(|f| matches!(f, Failure::Transient(_)))
            .notify(|f, d| {
                if let Failure::Transient(m) = f {
                    tracing::warn!(target_name = %self.name, %url, error = %m, retry_in = ?d, "purge failed, retrying");
                }
            })
            .await
    }

    async fn send(&self, url: &str) -> Result<(), Failure> {
        let response = self
            .client
            .request(self.method.clone(), url)
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("{} {url}: {e}", self.method)))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(Failure::Transient(format!(
                "{} {url}: HTTP {status}",
                self.method
            )))
        } else {
            Err(Failure::Rejected(format!(
                "{} {url}: HTTP {status}",
                self.method
            )))
        }
    }
}
