//! `invalidator.toml` + `INVALIDATOR_*` environment overrides → a validated [`Config`].
//!
//! Loaded once at start; a bad value stops the start with the key it belongs to. Every section has
//! defaults that work against a local Redis on 127.0.0.1:6379. Secrets (passwords in URLs) are never
//! printed: use [`redact_url`] for anything logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer};

use crate::rules::{Limits, SafeValues, template::DEFAULT_SAFE_VALUE};

mod redis;

pub use self::redis::{DEFAULT_REDIS_URL, Password, RedisConfig, Topology};

/// The file read when `-c` is not given, if it exists.
pub const DEFAULT_FILE: &str = "invalidator.toml";
/// The environment prefix; `__` separates sections (`INVALIDATOR_REDIS__URL`).
pub const ENV_PREFIX: &str = "INVALIDATOR_";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub rules: RulesConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub tags: TagsConfig,
    pub dedupe: DedupeConfig,
    pub limits: LimitsConfig,
    pub cdn: BTreeMap<String, CdnConfig>,
    pub notify: NotifyConfig,
    pub sweeper: SweeperConfig,
    pub http: HttpConfig,
    pub replay: ReplayConfig,
    pub lambda: LambdaConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Directory of rule files (`--rules` overrides it).
    pub dir: PathBuf,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: PathBuf::from("rules"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `group.id`.
    pub group: String,
    pub topics: Vec<String>,
    /// Where dead letters go; absent: `<source topic>.dlq` for each source topic.
    pub dlq_topic: Option<String>,
    /// librdkafka properties, passed as they are to the consumer and the DLQ producer (SASL, TLS,
    /// `session.timeout.ms`, ...). They win over the worker's own defaults. Numbers and booleans
    /// are taken as their text; `_` in a name stands for `.` (librdkafka names have none), so that
    /// a secret can come from the environment: `INVALIDATOR_KAFKA__PROPERTIES__SASL_PASSWORD`.
    #[serde(deserialize_with = "kafka_properties")]
    pub properties: BTreeMap<String, String>,
    /// Most events in one unit of work.
    pub batch_size: usize,
    /// How long a unit may wait for more events once what the consumer had fetched is taken in
    /// (0: go at once; a backlog fills units to `batch_size` anyway).
    #[serde(deserialize_with = "duration")]
    pub batch_wait: Duration,
    /// Units of work in flight, each on its own task. A unit keeps its place until its CDN batch
    /// is accepted (up to a CloudFront `window`), so with CloudFront the worker applies at most
    /// `max_in_flight × batch_size` events per window.
    pub max_in_flight: usize,
    /// On SIGTERM/SIGINT: how long in-flight units, pending redeletes and the final commit may take.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Most keys and tags waiting for their `redelete_after`; intake waits when it is reached.
    pub max_pending_redeletes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group: "invalidator".into(),
            topics: vec!["catalog-events".into()],
            dlq_topic: None,
            properties: BTreeMap::new(),
            batch_size: 500,
            batch_wait: Duration::ZERO,
            max_in_flight: 32,
            shutdown_timeout: Duration::from_secs(30),
            max_pending_redeletes: 100_000,
        }
    }
}

impl KafkaConfig {
    /// The DLQ topic of events read from `topic`.
    pub fn dlq_topic_for(&self, topic: &str) -> String {
        match &self.dlq_topic {
            Some(t) => t.clone(),
            None => format!("{topic}.dlq"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TagMode {
    /// `SADD {prefix}{tag} {key}` by writers; invalidation `SSCAN`+`UNLINK`+`SREM`.
    #[default]
    Set,
    /// `INCR {prefix}{tag}`; readers compare versions.
    Version,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    pub mode: TagMode,
    pub prefix: String,
}

impl Default for TagsConfig {
    fn default() -> Self {
        TagsConfig {
            mode: TagMode::Set,
            prefix: "tag:".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Absent: no dedupe.
    #[serde(deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// Prefix of the Redis keys that remember event ids.
    pub prefix: String,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: None,
            prefix: "invalidator:seen:".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_event_bytes: usize,
    pub max_fanout: usize,
    pub max_cascade_depth: u32,
    /// Regex every value taken from an event must match.
    pub safe_value: String,
    /// Dead-letter events no rule matches (`no_rule`) instead of counting them as skipped.
    pub dead_letter_unmatched: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: 1 << 20,
            max_fanout: 1000,
            max_cascade_depth: 4,
            safe_value: DEFAULT_SAFE_VALUE.into(),
            dead_letter_unmatched: false,
        }
    }
}

/// A CDN target, named by `[cdn.NAME]` and referenced by rules' `purge: - target: NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CdnConfig {
    /// CloudFront invalidations, batched per distribution (see `apply::cdn::cloudfront`).
    Cloudfront {
        distribution_id: String,
        /// How long paths are gathered, from the first one, before one `CreateInvalidation`.
        #[serde(default = "one_second", deserialize_with = "duration")]
        window: Duration,
        /// Most paths in one request (CloudFront: 3,000 paths in progress per distribution).
        #[serde(default = "default_max_paths")]
        max_paths: usize,
        /// Most wildcard paths in one request (CloudFront: 15 wildcard paths in progress).
        #[serde(default = "default_max_wildcards")]
        max_wildcards: usize,
        /// More than this many sibling paths under one parent in a batch become `parent/*`.
        #[serde(default)]
        collapse_threshold: Option<usize>,
        /// An emulator's URL (tests); absent: the real CloudFront endpoint.
        #[serde(default)]
        endpoint_url: Option<String>,
        /// Longest wait for one `CreateInvalidation` answer (then retried unchanged).
        #[serde(default = "ten_seconds", deserialize_with = "duration")]
        timeout: Duration,
        /// How long a batch is retried (throttling, outage) before its events' units fail with
        /// "CDN unavailable" (the worker then retries the unit; replay stops with exit status 3).
        #[serde(default = "thirty_seconds", deserialize_with = "duration")]
        retry_for: Duration,
    },
    /// HTTP `PURGE` (or another method) of each path on every cache node.
    Http {
        urls: Vec<String>,
        #[serde(default = "purge_method")]
        method: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default = "five_seconds", deserialize_with = "duration")]
        timeout: Duration,
        /// Give up on a node after this long of failures (then the run reports an outage).
        #[serde(default = "thirty_seconds", deserialize_with = "duration")]
        retry_for: Duration,
        /// Requests in flight per target.
        #[serde(default = "default_concurrency")]
        concurrency: usize,
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

/// `[notify]`: `invalidation.completed` notices for cache warmers (SNS and/or Kafka).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// SNS topic; its region is taken from the ARN unless `region` is set.
    pub sns_topic_arn: Option<String>,
    /// Kafka topic, written with the `[kafka]` brokers and properties.
    pub kafka_topic: Option<String>,
    /// An SNS emulator's URL (tests); absent: the real SNS endpoint.
    pub endpoint_url: Option<String>,
    /// SNS region, when it must differ from the one in the ARN.
    pub region: Option<String>,
    /// How long one unit's notices are retried before they are dropped (and counted): notices are
    /// a warming hint, they never hold back acknowledgement longer than this.
    #[serde(deserialize_with = "duration")]
    pub retry_for: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sns_topic_arn: None,
            kafka_topic: None,
            endpoint_url: None,
            region: None,
            retry_for: Duration::from_secs(5),
        }
    }
}

impl NotifyConfig {
    pub fn enabled(&self) -> bool {
        self.sns_topic_arn.is_some() || self.kafka_topic.is_some()
    }
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_max_paths() -> usize {
    3000
}
fn default_max_wildcards() -> usize {
    15
}
fn purge_method() -> String {
    "PURGE".into()
}
fn default_concurrency() -> usize {
    32
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperConfig {
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            interval: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Events per unit of work (planned, coalesced and applied together).
    pub batch_size: usize,
    /// Units of work applied concurrently.
    pub max_in_flight: usize,
    /// Most keys and tags waiting for their `redelete_after`; intake waits when it is reached.
    pub max_pending_redeletes: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            batch_size: 1000,
            max_in_flight: 4,
            max_pending_redeletes: 100_000,
        }
    }
}

/// The AWS Lambda adapter (`invalidator-lambda`); ignored by the other modes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaConfig {
    /// SQS queue URL that receives poison messages (payload as the body, reason and metadata as
    /// message attributes). Absent: see the Lambda section of the README.
    pub dlq_url: Option<String>,
    /// Longest an invocation waits for the `redelete_after`s of its events before it returns (the
    /// sandbox is frozen after that); later ones are run at that point, early rather than never.
    #[serde(deserialize_with = "duration")]
    pub max_redelete_wait: Duration,
    /// Time kept free before the invocation deadline: work still running then is abandoned and
    /// reported as a transient failure, so the answer reaches Lambda before it times out.
    #[serde(deserialize_with = "duration")]
    pub deadline_margin: Duration,
    /// CloudWatch namespace of the metrics written as EMF.
    pub metrics_namespace: String,
}

impl Default for LambdaConfig {
    fn default() -> Self {
        LambdaConfig {
            dlq_url: None,
            max_redelete_wait: Duration::from_secs(1),
            deadline_margin: Duration::from_secs(1),
            metrics_namespace: "invalidator".into(),
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads `path` (or `invalidator.toml` if it exists, when `path` is `None`) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_FILE))
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let config: Config = figment.extract().map_err(|e| {
            ConfigError(
                e.into_iter()
                    .map(|e| describe(&e))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (tests, embedded defaults), without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| {
                ConfigError(
                    e.into_iter()
                        .map(|e| describe(&e))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError(format!("config key `{key}`: {msg}")));
        self.redis.validate()?;
        if self.limits.max_fanout == 0 {
            return bad("limits.max_fanout", "must be at least 1".into());
        }
        if self.limits.max_event_bytes < 64 {
            return bad("limits.max_event_bytes", "must be at least 64".into());
        }
        if let Err(e) = SafeValues::new(&self.limits.safe_value) {
            return bad("limits.safe_value", format!("not a regex: {e}"));
        }
        if self.tags.prefix.is_empty() {
            return bad("tags.prefix", "must not be empty".into());
        }
        if self.dedupe.window.is_some() && self.dedupe.prefix.is_empty() {
            return bad("dedupe.prefix", "must not be empty".into());
        }
        if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty()) {
            return bad("kafka.topics", "must list at least one topic name".into());
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must not be empty".into());
        }
        if self.kafka.group.trim().is_empty() {
            return bad("kafka.group", "must not be empty".into());
        }
        if self
            .kafka
            .dlq_topic
            .as_ref()
            .is_some_and(|t| self.kafka.topics.contains(t))
        {
            return bad(
                "kafka.dlq_topic",
                "is also a source topic: dead letters would be consumed again".into(),
            );
        }
        if self.kafka.batch_size == 0 {
            return bad("kafka.batch_size", "must be at least 1".into());
        }
        if self.kafka.max_in_flight == 0 {
            return bad("kafka.max_in_flight", "must be at least 1".into());
        }
        if let Some(url) = &self.lambda.dlq_url
            && reqwest::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            return bad(
                "lambda.dlq_url",
                format!(
                    "`{url}` is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
                ),
            );
        }
        if self.lambda.metrics_namespace.trim().is_empty() {
            return bad("lambda.metrics_namespace", "must not be empty".into());
        }
        if self.replay.batch_size == 0 {
            return bad("replay.batch_size", "must be at least 1".into());
        }
        if self.replay.max_in_flight == 0 {
            return bad("replay.max_in_flight", "must be at least 1".into());
        }
        for (name, cdn) in &self.cdn {
            match cdn {
                CdnConfig::Cloudfront {
                    distribution_id,
                    window,
                    max_paths,
                    max_wildcards,
                    collapse_threshold,
                    endpoint_url,
                    timeout,
                    ..
                } => {
                    let key = |k: &str| format!("cdn.{name}.{k}");
                    if distribution_id.is_empty()
                        || !distribution_id.chars().all(|c| c.is_ascii_alphanumeric())
                    {
                        return bad(
                            &key("distribution_id"),
                            format!(
                                "`{distribution_id}` is not a CloudFront distribution id (letters and digits, e.g. E2EXAMPLE)"
                            ),
                        );
                    }
                    if *window > Duration::from_secs(300) {
                        return bad(&key("window"), "must be at most 5m".into());
                    }
                    if !(1..=3000).contains(max_paths) {
                        return bad(
                            &key("max_paths"),
                            "must be between 1 and 3000 (CloudFront allows 3,000 paths in progress per distribution)".into(),
                        );
                    }
                    if !(1..=15).contains(max_wildcards) {
                        return bad(
                            &key("max_wildcards"),
                            "must be between 1 and 15 (CloudFront allows 15 wildcard paths in progress per distribution)".into(),
                        );
                    }
                    if *collapse_threshold == Some(0) {
                        return bad(&key("collapse_threshold"), "must be at least 1".into());
                    }
                    if let Some(u) = endpoint_url {
                        check_http_url(&key("endpoint_url"), u)?;
                    }
                    if timeout.is_zero() {
                        return bad(&key("timeout"), "must be more than 0s".into());
                    }
                }
                CdnConfig::Http {
                    urls,
                    method,
                    concurrency,
                    ..
                } => {
                    if urls.is_empty() {
                        return bad(&format!("cdn.{name}.urls"), "lists no cache node".into());
                    }
                    for u in urls {
                        if reqwest::Url::parse(u)
                            .map(|u| !matches!(u.scheme(), "http" | "https"))
                            .unwrap_or(true)
                        {
                            return bad(
                                &format!("cdn.{name}.urls"),
                                format!("`{u}` is not an http:// or https:// URL"),
                            );
                        }
                    }
                    if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
                        return bad(
                            &format!("cdn.{name}.method"),
                            format!("`{method}` is not an HTTP method"),
                        );
                    }
                    if *concurrency == 0 {
                        return bad(
                            &format!("cdn.{name}.concurrency"),
                            "must be at least 1".into(),
                        );
                    }
                }
                CdnConfig::Log {} => {}
            }
        }
        let n = &self.notify;
        if let Some(arn) = &n.sns_topic_arn
            && sns_region(arn).is_none()
        {
            return bad(
                "notify.sns_topic_arn",
                format!("`{arn}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
            );
        }
        if let Some(t) = &n.kafka_topic {
            if t.trim().is_empty() {
                return bad("notify.kafka_topic", "must not be empty".into());
            }
            if self.kafka.topics.contains(t) {
                return bad(
                    "notify.kafka_topic",
                    "is also a source topic: notices would be consumed as events".into(),
                );
            }
        }
        if let Some(u) = &n.endpoint_url {
            check_http_url("notify.endpoint_url", u)?;
        }
        if n.region.as_ref().is_some_and(|r| r.trim().is_empty()) {
            return bad("notify.region", "must not be empty".into());
        }
        Ok(())
    }

    /// True when a CloudFront target or an SNS topic needs the AWS configuration.
    pub fn needs_aws(&self) -> bool {
        self.notify.sns_topic_arn.is_some()
            || self
                .cdn
                .values()
                .any(|c| matches!(c, CdnConfig::Cloudfront { .. }))
    }

    /// The planning limits of this configuration.
    pub fn rule_limits(&self) -> Limits {
        Limits {
            max_fanout: self.limits.max_fanout,
            max_cascade_depth: self.limits.max_cascade_depth,
            safe: SafeValues::new(&self.limits.safe_value).expect("validated at load"),
        }
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if reqwest::Url::parse(url)
        .map(|u| !matches!(u.scheme(), "http" | "https"))
        .unwrap_or(true)
    {
        return Err(ConfigError(format!(
            "config key `{key}`: `{url}` is not an http:// or https:// URL"
        )));
    }
    Ok(())
}

/// The region of an SNS topic ARN (`arn:PARTITION:sns:REGION:ACCOUNT:NAME`).
pub fn sns_region(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, "sns", region, account, name]
            if partition.starts_with("aws")
                && !region.is_empty()
                && !account.is_empty()
                && !name.is_empty() =>
        {
            Some(region)
        }
        _ => None,
    }
}

/// One figment error as `config key `a.b`: message (in FILE)`.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e.metadata.as_ref().map(|m| match &m.source {
        Some(s) => format!(" (from {s})"),
        None => format!(" (from {})", m.name),
    });
    let kind = e.kind.to_string();
    if key.is_empty() {
        format!("config: {kind}{}", source.unwrap_or_default())
    } else {
        format!("config key `{key}`: {kind}{}", source.unwrap_or_default())
    }
}

/// A URL with its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<invalid URL>".into(),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration such as 30s, 500ms or 10m: {e}"
        ))
    })
}

fn kafka_properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Text::String(s) => s,
                Text::Int(i) => i.to_string(),
                Text::Float(f) => f.to_string(),
                Text::Bool(b) => b.to_string(),
            };
            (k.replace('_', "."), v)
        })
        .collect())
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_local_redis() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.redis.topology(),
            Topology::Single {
                url: "redis://127.0.0.1:6379/0"
            }
        );
        assert_eq!(c.tags.mode, TagMode::Set);
        assert_eq!(c.limits.max_fanout, 1000);
        assert!(c.dedupe.window.is_none());
        assert_eq!(c.http.listen, "127.0.0.1:9464");
    }

    #[test]
    fn spec_example_parses() {
        let c = Config::from_toml(
            r#"
[redis]
url = "redis://127.0.0.1:6379/0"
[kafka]
brokers = "127.0.0.1:9092"
group = "invalidator"
topics = ["catalog-events"]
dlq_topic = "catalog-events.dlq"
[kafka.properties]
"session.timeout.ms" = "6000"
[tags]
mode = "version"
prefix = "tag:"
[dedupe]
window = "10m"
[limits]
max_event_bytes = 1048576
max_fanout = 1000
max_cascade_depth = 4
[cdn.catalog-cdn]
kind = "cloudfront"
distribution_id = "E2EXAMPLE"
window = "1s"
max_paths = 3000
collapse_threshold = 50
[cdn.edge]
kind = "http"
urls = ["http://10.0.0.5:6081", "http://10.0.0.6:6081"]
method = "PURGE"
[notify]
sns_topic_arn = "arn:aws:sns:us-east-1:123456789012:invalidations"
kafka_topic = "invalidations"
[sweeper]
interval = "5m"
[http]
listen = "127.0.0.1:9464"
"#,
        )
        .unwrap();
        assert_eq!(c.dedupe.window, Some(Duration::from_secs(600)));
        assert_eq!(c.tags.mode, TagMode::Version);
        assert!(matches!(&c.cdn["edge"], CdnConfig::Http { urls, .. } if urls.len() == 2));
        assert!(matches!(
            &c.cdn["catalog-cdn"],
            CdnConfig::Cloudfront { max_paths: 3000, max_wildcards: 15, collapse_threshold: Some(50), window, .. }
                if *window == Duration::from_secs(1)
        ));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[limits]\nmax_fanout = \"many\"")
            .unwrap_err()
            .0;
        assert!(e.contains("limits.max_fanout"), "{e}");
        let e = Config::from_toml("[redis]\nurll = \"x\"").unwrap_err().0;
        assert!(e.contains("urll"), "{e}");
        let e = Config::from_toml("[dedupe]\nwindow = \"soon\"")
            .unwrap_err()
            .0;
        assert!(e.contains("dedupe.window"), "{e}");
        let e = Config::from_toml("[redis]\nurl = \"http://x\"")
            .unwrap_err()
            .0;
        assert!(e.contains("redis.url"), "{e}");
        let e = Config::from_toml("[cdn.x]\nkind = \"http\"\nurls = []")
            .unwrap_err()
            .0;
        assert!(e.contains("cdn.x.urls"), "{e}");
        let e = Config::from_toml("[lambda]\ndlq_url = \"my-queue\"")
            .unwrap_err()
            .0;
        assert!(e.contains("lambda.dlq_url"), "{e}");
        let e = Config::from_toml("[lambda]\nmax_redelete_wait = \"soon\"")
            .unwrap_err()
            .0;
        assert!(e.contains("lambda.max_redelete_wait"), "{e}");
        let cf = |extra: &str| {
            Config::from_toml(&format!(
                "[cdn.x]\nkind = \"cloudfront\"\ndistribution_id = \"E1\"\n{extra}"
            ))
        };
        assert!(cf("").is_ok());
        for (extra, key) in [
            ("max_paths = 3001", "cdn.x.max_paths"),
            ("max_paths = 0", "cdn.x.max_paths"),
            ("max_wildcards = 16", "cdn.x.max_wildcards"),
            ("collapse_threshold = 0", "cdn.x.collapse_threshold"),
            ("window = \"10m\"", "cdn.x.window"),
            // Parse errors inside a `kind`-tagged table name the table (serde buffers it).
            (
                "window = \"soon\"",
                "config key `cdn.x`: `soon` is not a duration",
            ),
            ("endpoint_url = \"ftp://x\"", "cdn.x.endpoint_url"),
            ("timeout = \"0s\"", "cdn.x.timeout"),
            (
                "retry_for = \"never\"",
                "config key `cdn.x`: `never` is not a duration",
            ),
        ] {
            let e = cf(extra).unwrap_err().0;
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = Config::from_toml("[cdn.x]\nkind = \"cloudfront\"\ndistribution_id = \"E 1\"")
            .unwrap_err()
            .0;
        assert!(e.contains("cdn.x.distribution_id"), "{e}");
        for (text, key) in [
            ("sns_topic_arn = \"topic\"", "notify.sns_topic_arn"),
            ("kafka_topic = \"catalog-events\"", "notify.kafka_topic"),
            ("endpoint_url = \"nope\"", "notify.endpoint_url"),
            ("retry_for = \"x\"", "notify.retry_for"),
            ("topic = \"x\"", "topic"),
        ] {
            let e = Config::from_toml(&format!("[notify]\n{text}"))
                .unwrap_err()
                .0;
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn notify_region_comes_from_the_arn() {
        assert_eq!(
            sns_region("arn:aws:sns:eu-west-1:123456789012:invalidations"),
            Some("eu-west-1")
        );
        assert_eq!(sns_region("arn:aws:sqs:eu-west-1:1:q"), None);
        let c = Config::from_toml(
            "[notify]\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:inv\"\nkafka_topic = \"invalidations\"",
        )
        .unwrap();
        assert!(c.notify.enabled());
        assert!(c.needs_aws());
        assert!(!Config::from_toml("").unwrap().needs_aws());
    }

    #[test]
    fn kafka_properties_take_numbers_and_underscored_names() {
        let c = Config::from_toml(
            "[kafka.properties]\n\"session.timeout.ms\" = 6000\nsasl_password = \"s\"\n\
             \"enable.idempotence\" = true\n",
        )
        .unwrap();
        let p = &c.kafka.properties;
        assert_eq!(p["session.timeout.ms"], "6000");
        assert_eq!(p["sasl.password"], "s");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
