//! Values that are valid by construction. Each is parsed once, when the configuration is read, and
//! its `Deserialize` refuses what it cannot hold; figment puts the key in front of the message
//! (`config key `cdn.edge.urls`: ...`). Nothing downstream parses or checks them again. Values
//! kept in std types (counts, durations, byte sizes, names) are checked by the readers of `read`.
//!
//! Secrets never reach a log through these types: [`HttpUrl`] shows a password as `***`.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Reads a value through its `FromStr` (whose error is the message), for the types below.
fn from_text<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    String::deserialize(d)?.parse().map_err(D::Error::custom)
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_text(d)
            }
        }
    )*};
}

deserialize_from_str!(HttpUrl, SnsTopicArn, HttpMethod, DistributionId);

/// An `http://` or `https://` URL. `Display` and `Debug` show a password as `***`;
/// [`HttpUrl::as_str`] is the text as written, for the clients that connect to it.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    url: reqwest::Url,
}

impl HttpUrl {
    /// The URL as written (password included): give it to clients, never to logs.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL (password included).
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<HttpUrl, String> {
        match reqwest::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(HttpUrl {
                text: text.to_owned(),
                url,
            }),
            Ok(url) if url.password().is_some() => Err(format!(
                "`{}` is not an http:// or https:// URL",
                redacted(url)
            )),
            _ => Err(format!(
                "`{}` is not an http:// or https:// URL",
                mask_userinfo(text)
            )),
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.url.password().is_some() {
            f.write_str(&redacted(self.url.clone()))
        } else {
            f.write_str(&self.text)
        }
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

fn redacted(mut url: reqwest::Url) -> String {
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// `text` with whatever stands between `://` and the `@` of its authority as `***`: an error about
/// a URL that does not even parse must not print the password in it.
fn mask_userinfo(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

/// A URL with its password replaced by `***` (`<invalid URL>` if it is not one), for the Redis
/// URLs, which stay text.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => redacted(u),
        Err(_) => "<invalid URL>".into(),
    }
}

/// An SNS topic ARN, `arn:PARTITION:sns:REGION:ACCOUNT:NAME`.
#[derive(Clone, PartialEq, Eq)]
pub struct SnsTopicArn {
    text: String,
    region: Range<usize>,
}

impl SnsTopicArn {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The region the topic lives in.
    pub fn region(&self) -> &str {
        &self.text[self.region.clone()]
    }

    /// A FIFO topic (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.text.ends_with(".fifo")
    }
}

impl FromStr for SnsTopicArn {
    type Err = String;

    fn from_str(text: &str) -> Result<SnsTopicArn, String> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["arn", partition, "sns", region, account, name]
                if partition.starts_with("aws")
                    && !region.is_empty()
                    && !account.is_empty()
                    && !name.is_empty() =>
            {
                let start = "arn:".len() + partition.len() + ":sns:".len();
                Ok(SnsTopicArn {
                    text: text.to_owned(),
                    region: start..start + region.len(),
                })
            }
            _ => Err(format!(
                "`{text}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
            )),
        }
    }
}

impl fmt::Display for SnsTopicArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SnsTopicArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// An HTTP method (`PURGE`, `BAN`, `DELETE`, ...): any token HTTP allows.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpMethod(reqwest::Method);

impl HttpMethod {
    /// `PURGE`, the default of HTTP purge targets.
    pub fn purge() -> HttpMethod {
        "PURGE".parse().expect("PURGE is an HTTP method token")
    }

    pub fn as_method(&self) -> &reqwest::Method {
        &self.0
    }
}

impl FromStr for HttpMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<HttpMethod, String> {
        reqwest::Method::from_bytes(text.as_bytes())
            .map(HttpMethod)
            .map_err(|_| format!("`{text}` is not an HTTP method"))
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

/// A CloudFront distribution id: letters and digits (`E2EXAMPLE`).
#[derive(Clone, PartialEq, Eq)]
pub struct DistributionId(String);

impl DistributionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DistributionId {
    type Err = String;

    fn from_str(text: &str) -> Result<DistributionId, String> {
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "`{text}` is not a CloudFront distribution id (letters and digits, e.g. E2EXAMPLE)"
            ));
        }
        Ok(DistributionId(text.to_owned()))
    }
}

impl fmt::Display for DistributionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DistributionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Request headers (names and values checked). `Debug` shows the names only: values are often
/// tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HttpHeaders(HeaderMap);

impl HttpHeaders {
    pub fn as_map(&self) -> &HeaderMap {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HttpHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        let mut map = HeaderMap::new();
        for (k, v) in raw {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| D::Error::custom(format!("`{k}` is not a header name")))?;
            let value = HeaderValue::from_str(&v)
                .map_err(|_| D::Error::custom(format!("`{k}`: not a header value")))?;
            map.insert(name, value);
        }
        Ok(HttpHeaders(map))
    }
}

impl fmt::Debug for HttpHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unparsable_url_is_quoted_without_its_password() {
        let e = "ht!tp://user:pw-s3cret@cache node:80/x"
            .parse::<HttpUrl>()
            .unwrap_err();
        assert!(!e.contains("pw-s3cret"), "{e}");
        assert!(e.contains("ht!tp://***@cache node:80/x"), "{e}");
        assert_eq!(mask_userinfo("no-scheme-here"), "no-scheme-here");
    }

    use super::*;

    #[test]
    fn urls_hide_their_password() {
        let u: HttpUrl = "https://user:secret@cache.example:8443/x".parse().unwrap();
        assert_eq!(u.to_string(), "https://user:***@cache.example:8443/x");
        assert!(!format!("{u:?}").contains("secret"));
        assert_eq!(u.as_str(), "https://user:secret@cache.example:8443/x");
        let u: HttpUrl = "http://127.0.0.1:5055".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:5055", "as written");
        let e = "ftp://u:pw@x".parse::<HttpUrl>().unwrap_err();
        assert_eq!(e, "`ftp://u:***@x/` is not an http:// or https:// URL");
        assert!("nope".parse::<HttpUrl>().is_err());
        assert_eq!(
            redact_url("redis://user:secret@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn arns_know_their_region() {
        let a: SnsTopicArn = "arn:aws:sns:eu-west-1:123456789012:inv.fifo"
            .parse()
            .unwrap();
        assert_eq!(a.region(), "eu-west-1");
        assert!(a.is_fifo());
        let a: SnsTopicArn = "arn:aws-cn:sns:cn-north-1:1:t".parse().unwrap();
        assert_eq!(a.region(), "cn-north-1");
        for bad in ["arn:aws:sqs:eu-west-1:1:q", "arn:aws:sns::1:t", "topic"] {
            assert!(bad.parse::<SnsTopicArn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn methods_and_ids() {
        assert_eq!(HttpMethod::purge().as_method().as_str(), "PURGE");
        assert!("BAN".parse::<HttpMethod>().is_ok());
        assert!("PUR GE".parse::<HttpMethod>().is_err());
        assert!("E2EXAMPLE".parse::<DistributionId>().is_ok());
        assert!("E 1".parse::<DistributionId>().is_err());
        assert!("".parse::<DistributionId>().is_err());
    }
}
