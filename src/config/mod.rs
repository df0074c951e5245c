//! `invalidator.toml` + `INVALIDATOR_*` environment overrides → a validated [`Config`].
//!
//! Loaded once at start; a bad value stops the start with the key it belongs to. Every key is read
//! into a type that holds only valid values (URLs, ARNs, counts of at least 1, durations, byte
//! sizes, the compiled `safe_value`: see `types`), so nothing downstream parses or checks a value
//! again; [`Config::validate`] is left with the checks across keys. One file per section. Every
//! section has defaults that work against a local Redis on 127.0.0.1:6379. Secrets (passwords in
//! URLs) are never printed: [`HttpUrl`] shows them as `***`, [`redact_url`] does it for Redis URLs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::rules::Limits;

mod cdn;
mod kafka;
mod limits;
mod modes;
mod notify;
mod read;
mod redis;
mod tags;
mod types;

pub use self::cdn::CdnConfig;
pub use self::kafka::KafkaConfig;
pub use self::limits::{DedupeConfig, LimitsConfig};
pub use self::modes::{HttpConfig, LambdaConfig, ReplayConfig, SweeperConfig};
pub use self::notify::NotifyConfig;
pub use self::redis::{DEFAULT_REDIS_URL, Password, RedisConfig, Topology};
pub use self::tags::{LayoutName, NEXTJS_IMPLICIT, NextJs, TagLayout, TagsConfig};
pub use self::types::{DistributionId, HttpHeaders, HttpMethod, HttpUrl, SnsTopicArn, redact_url};

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

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// `config key `KEY`: MESSAGE`, the form of every error about one key.
    pub(crate) fn key(key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("config key `{key}`: {message}"))
    }
}

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
        Config::extract(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Parses a TOML string (tests, embedded defaults), without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::extract(Figment::new().merge(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| {
            let all: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
            ConfigError(all.join("\n"))
        })?;
        config.tags.resolve()?;
        config.validate()?;
        Ok(config)
    }

    /// The checks across keys (each key's own are made by its type as it is read).
    fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        self.kafka.validate(self.limits.max_event_bytes)?;
        self.dedupe.validate()?;
        self.notify.validate(&self.kafka)
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
            max_fanout: self.limits.max_fanout.get(),
            max_cascade_depth: self.limits.max_cascade_depth,
            safe: self.limits.safe_value.clone(),
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(c.tags.layout(), &TagLayout::set("tag:"));
        assert_eq!(c.limits.max_fanout.get(), 1000);
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
        assert_eq!(c.tags.layout(), &TagLayout::version("tag:"));
        assert!(matches!(&c.cdn["edge"], CdnConfig::Http { urls, .. } if urls.len() == 2));
        assert!(matches!(
            &c.cdn["catalog-cdn"],
            CdnConfig::Cloudfront { max_paths: 3000, max_wildcards: 15, collapse_threshold: Some(t), window, .. }
                if *window == Duration::from_secs(1) && t.get() == 50
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
        let e = Config::from_toml("[sweeper]\ninterval = \"0s\"")
            .unwrap_err()
            .0;
        assert!(
            e.contains("sweeper.interval") && e.contains("more than 0s"),
            "{e}"
        );
        let e = Config::from_toml("[dedupe]\nwindow = \"soon\"")
            .unwrap_err()
            .0;
        assert!(e.contains("dedupe.window"), "{e}");
        let e = Config::from_toml("[redis]\nurl = \"http://x\"")
            .unwrap_err()
            .0;
        assert!(e.contains("redis.url"), "{e}");
        let e = Config::from_toml("[lambda]\ndlq_url = \"my-queue\"")
            .unwrap_err()
            .0;
        assert!(e.contains("lambda.dlq_url"), "{e}");
        let e = Config::from_toml("[lambda]\nmax_redelete_wait = \"soon\"")
            .unwrap_err()
            .0;
        assert!(e.contains("lambda.max_redelete_wait"), "{e}");
        for (toml, msg) in [
            (
                "[lambda]\nmetrics_namespace = \" \"",
                "config key `lambda.metrics_namespace`: must not be empty",
            ),
            (
                "[replay]\nbatch_size = 0",
                "config key `replay.batch_size`: must be at least 1",
            ),
            (
                "[replay]\nmax_in_flight = 0",
                "config key `replay.max_in_flight`: must be at least 1",
            ),
            (
                "[lambda]\ndlq_url = \"my-queue\"",
                "config key `lambda.dlq_url`: `my-queue` is not an SQS queue URL",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err().0;
            assert!(e.starts_with(msg), "{toml}: {e}");
        }
    }
}
