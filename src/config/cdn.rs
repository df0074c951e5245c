//! `[cdn.NAME]`: the CDN targets rules purge paths on (`purge: - target: NAME`).
//!
//! A target is read as one flat table ([`RawCdn`]), each key with its own type, so that an error
//! names the key (`cdn.edge.urls`); `kind` then picks the keys that belong to it. (A `kind`-tagged
//! enum would buffer the table and name only `cdn.edge`.)

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::read::{at_least_one, duration, opt_at_least_one, opt_duration, positive_duration};
use super::types::{DistributionId, HttpHeaders, HttpMethod, HttpUrl};

/// A CDN target, named by `[cdn.NAME]` and referenced by rules' `purge: - target: NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawCdn")]
pub enum CdnConfig {
    /// CloudFront invalidations, batched per distribution (see `apply::cdn::cloudfront`).
    Cloudfront {
        distribution_id: DistributionId,
        /// How long paths are gathered, from the first one, before one `CreateInvalidation`
        /// (at most 5m).
        window: Duration,
        /// Most paths in one request, 1 to 3000 (CloudFront: 3,000 paths in progress per
        /// distribution).
        max_paths: usize,
        /// Most wildcard paths in one request, 1 to 15 (CloudFront: 15 wildcard paths in
        /// progress).
        max_wildcards: usize,
        /// More than this many sibling paths under one parent in a batch become `parent/*`.
        collapse_threshold: Option<NonZeroUsize>,
        /// An emulator's URL (tests); absent: the real CloudFront endpoint.
        endpoint_url: Option<HttpUrl>,
        /// Longest wait for one `CreateInvalidation` answer (then retried unchanged; more than 0s).
        timeout: Duration,
        /// How long a batch is retried (throttling, outage) before its events' units fail with
        /// "CDN unavailable" (the worker then retries the unit; replay stops with exit status 3).
        retry_for: Duration,
    },
    /// HTTP `PURGE` (or another method) of each path on every cache node.
    Http {
        /// At least one.
        urls: Vec<HttpUrl>,
        method: HttpMethod,
        headers: HttpHeaders,
        /// Longest wait for one request (more than 0s).
        timeout: Duration,
        /// Give up on a node after this long of failures (then the run reports an outage).
        retry_for: Duration,
        /// Requests in flight per target.
        concurrency: NonZeroUsize,
    },
    /// Paths are planned, logged and counted, and sent nowhere (development, staging, dry runs).
    Log {},
}

impl CdnConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CdnConfig::Cloudfront { .. } => "cloudfront",
            CdnConfig::Http { .. } => "http",
            CdnConfig::Log {} => "log",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Cloudfront,
    Http,
    Log,
}

/// Every key of every kind, each checked by its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdn {
    kind: Kind,
    distribution_id: Option<DistributionId>,
    #[serde(default, deserialize_with = "window")]
    window: Option<Duration>,
    #[serde(default, deserialize_with = "max_paths")]
    max_paths: Option<usize>,
    #[serde(default, deserialize_with = "max_wildcards")]
    max_wildcards: Option<usize>,
    #[serde(default, deserialize_with = "opt_at_least_one")]
    collapse_threshold: Option<NonZeroUsize>,
    endpoint_url: Option<HttpUrl>,
    #[serde(default, deserialize_with = "timeout")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    retry_for: Option<Duration>,
    #[serde(default, deserialize_with = "node_urls")]
    urls: Option<Vec<HttpUrl>>,
    method: Option<HttpMethod>,
    headers: Option<HttpHeaders>,
    #[serde(default, deserialize_with = "opt_concurrency")]
    concurrency: Option<NonZeroUsize>,
}

impl RawCdn {
    /// The keys set, by name.
    fn set(&self) -> [(&'static str, bool); 12] {
        [
            ("distribution_id", self.distribution_id.is_some()),
            ("window", self.window.is_some()),
            ("max_paths", self.max_paths.is_some()),
            ("max_wildcards", self.max_wildcards.is_some()),
            ("collapse_threshold", self.collapse_threshold.is_some()),
            ("endpoint_url", self.endpoint_url.is_some()),
            ("timeout", self.timeout.is_some()),
            ("retry_for", self.retry_for.is_some()),
            ("urls", self.urls.is_some()),
            ("method", self.method.is_some()),
            ("headers", self.headers.is_some()),
            ("concurrency", self.concurrency.is_some()),
        ]
    }

    /// The first key set that `kind` does not take, as serde words it.
    fn foreign_key(&self, kind: &str, keys: &[&str]) -> Result<(), String> {
        match self.set().iter().find(|(k, on)| *on && !keys.contains(k)) {
            None => Ok(()),
            Some((k, _)) if keys.is_empty() => Err(format!(
                "unknown field `{k}`: a `{kind}` target takes no key but `kind`"
            )),
            Some((k, _)) => Err(format!(
                "unknown field `{k}` for kind `{kind}`, expected one of {}",
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

const CLOUDFRONT_KEYS: &[&str] = &[
    "distribution_id",
    "window",
    "max_paths",
    "max_wildcards",
    "collapse_threshold",
    "endpoint_url",
    "timeout",
    "retry_for",
];
const HTTP_KEYS: &[&str] = &[
    "urls",
    "method",
    "headers",
    "timeout",
    "retry_for",
    "concurrency",
];

impl TryFrom<RawCdn> for CdnConfig {
    type Error = String;

    fn try_from(raw: RawCdn) -> Result<CdnConfig, String> {
        let secs = Duration::from_secs;
        Ok(match raw.kind {
            Kind::Cloudfront => {
                raw.foreign_key("cloudfront", CLOUDFRONT_KEYS)?;
                CdnConfig::Cloudfront {
                    distribution_id: raw
                        .distribution_id
                        .ok_or("missing field `distribution_id`")?,
                    window: raw.window.unwrap_or(secs(1)),
                    max_paths: raw.max_paths.unwrap_or(3000),
                    max_wildcards: raw.max_wildcards.unwrap_or(15),
                    collapse_threshold: raw.collapse_threshold,
                    endpoint_url: raw.endpoint_url,
                    timeout: raw.timeout.unwrap_or(secs(10)),
                    retry_for: raw.retry_for.unwrap_or(secs(30)),
                }
            }
            Kind::Http => {
                raw.foreign_key("http", HTTP_KEYS)?;
                CdnConfig::Http {
                    urls: raw.urls.ok_or("missing field `urls`")?,
                    method: raw.method.unwrap_or_else(HttpMethod::purge),
                    headers: raw.headers.unwrap_or_default(),
                    timeout: raw.timeout.unwrap_or(secs(5)),
                    retry_for: raw.retry_for.unwrap_or(secs(30)),
                    concurrency: raw.concurrency.unwrap_or(NonZeroUsize::new(32).unwrap()),
                }
            }
            Kind::Log => {
                raw.foreign_key("log", &[])?;
                CdnConfig::Log {}
            }
        })
    }
}

fn window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let t = duration(d)?;
    if t > Duration::from_secs(300) {
        return Err(D::Error::custom("must be at most 5m"));
    }
    Ok(Some(t))
}

fn max_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = usize::deserialize(d)?;
    if !(1..=3000).contains(&n) {
        return Err(D::Error::custom(
            "must be between 1 and 3000 (CloudFront allows 3,000 paths in progress per distribution)",
        ));
    }
    Ok(Some(n))
}

fn max_wildcards<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = usize::deserialize(d)?;
    if !(1..=15).contains(&n) {
        return Err(D::Error::custom(
            "must be between 1 and 15 (CloudFront allows 15 wildcard paths in progress per distribution)",
        ));
    }
    Ok(Some(n))
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    positive_duration(d).map(Some)
}

fn node_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<HttpUrl>>, D::Error> {
    let urls = Vec::<HttpUrl>::deserialize(d)?;
    if urls.is_empty() {
        return Err(D::Error::custom("lists no cache node"));
    }
    Ok(Some(urls))
}

fn opt_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    at_least_one(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn cloudfront_errors_name_the_key() {
        let cf = |extra: &str| {
            Config::from_toml(&format!(
                "[cdn.x]\nkind = \"cloudfront\"\ndistribution_id = \"E1\"\n{extra}"
            ))
        };
        assert!(cf("").is_ok());
        for (extra, key) in [
            (
                "max_paths = 3001",
                "config key `cdn.x.max_paths`: must be between 1 and 3000",
            ),
            ("max_paths = 0", "config key `cdn.x.max_paths`"),
            (
                "max_wildcards = 16",
                "config key `cdn.x.max_wildcards`: must be between 1 and 15",
            ),
            (
                "collapse_threshold = 0",
                "config key `cdn.x.collapse_threshold`: must be at least 1",
            ),
            (
                "window = \"10m\"",
                "config key `cdn.x.window`: must be at most 5m",
            ),
            // Read as a flat table, a target names the key of a bad value too.
            (
                "window = \"soon\"",
                "config key `cdn.x.window`: `soon` is not a duration",
            ),
            (
                "endpoint_url = \"ftp://x\"",
                "config key `cdn.x.endpoint_url`: `ftp://x` is not an http:// or https:// URL",
            ),
            (
                "timeout = \"0s\"",
                "config key `cdn.x.timeout`: must be more than 0s",
            ),
            (
                "retry_for = \"never\"",
                "config key `cdn.x.retry_for`: `never` is not a duration",
            ),
            (
                "urls = [\"http://a\"]",
                "config key `cdn.x`: unknown field `urls` for kind `cloudfront`, expected one of `distribution_id`",
            ),
            (
                "colapse_threshold = 1",
                "config key `cdn.x.colapse_threshold`: unknown field",
            ),
        ] {
            let e = cf(extra).unwrap_err().0;
            assert!(e.starts_with(key) || e.contains(key), "{extra}: {e}");
        }
        let e = Config::from_toml("[cdn.x]\nkind = \"cloudfront\"\ndistribution_id = \"E 1\"")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with(
                "config key `cdn.x.distribution_id`: `E 1` is not a CloudFront distribution id"
            ),
            "{e}"
        );
        let e = Config::from_toml("[cdn.x]\nkind = \"cloudfront\"")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("config key `cdn.x`: missing field `distribution_id`"),
            "{e}"
        );
    }

    #[test]
    fn http_targets() {
        let c = Config::from_toml(
            "[cdn.edge]\nkind = \"http\"\nurls = [\"http://u:pw@10.0.0.5:6081\"]\n\
             [cdn.edge.headers]\nX-Purge-Token = \"s3cret\"\n[cdn.dev]\nkind = \"log\"",
        )
        .unwrap();
        let CdnConfig::Http {
            urls,
            method,
            headers,
            timeout,
            retry_for,
            concurrency,
        } = &c.cdn["edge"]
        else {
            panic!("{:?}", c.cdn["edge"]);
        };
        assert_eq!(urls[0].to_string(), "http://u:***@10.0.0.5:6081/");
        assert_eq!(method.as_method().as_str(), "PURGE");
        assert_eq!(headers.as_map()["x-purge-token"], "s3cret");
        assert_eq!(
            (*timeout, *retry_for),
            (Duration::from_secs(5), Duration::from_secs(30))
        );
        assert_eq!(concurrency.get(), 32);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert_eq!(c.cdn["dev"].kind(), "log");
    }

    #[test]
    fn http_errors_name_the_key() {
        let http = |extra: &str| {
            Config::from_toml(&format!("[cdn.x]\nkind = \"http\"\n{extra}"))
                .unwrap_err()
                .0
        };
        for (extra, key) in [
            ("urls = []", "config key `cdn.x.urls`: lists no cache node"),
            (
                "urls = [\"10.0.0.5\"]",
                "config key `cdn.x.urls.0`: `10.0.0.5` is not an http:// or https:// URL",
            ),
            (
                "urls = [\"http://a\"]\nmethod = \"PUR GE\"",
                "config key `cdn.x.method`: `PUR GE` is not an HTTP method",
            ),
            (
                "urls = [\"http://a\"]\nconcurrency = 0",
                "config key `cdn.x.concurrency`: must be at least 1",
            ),
            (
                "urls = [\"http://a\"]\nheaders = { \"a b\" = \"1\" }",
                "config key `cdn.x.headers`: `a b` is not a header name",
            ),
            (
                "urls = [\"http://a\"]\nwindow = \"1s\"",
                "config key `cdn.x`: unknown field `window` for kind `http`",
            ),
            ("", "config key `cdn.x`: missing field `urls`"),
            ("kind2 = 1", "config key `cdn.x.kind2`: unknown field"),
        ] {
            let e = http(extra);
            assert!(e.starts_with(key) || e.contains(key), "{extra}: {e}");
        }
        let e = Config::from_toml("[cdn.x]\nkind = \"log\"\nurls = [\"http://a\"]")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("config key `cdn.x`: unknown field `urls`: a `log` target"),
            "{e}"
        );
        let e = Config::from_toml("[cdn.x]\nkind = \"fastly\"")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("config key `cdn.x.kind`: unknown variant: found `fastly`"),
            "{e}"
        );
    }
}
