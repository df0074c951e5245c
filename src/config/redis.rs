//! `[redis]`: where the caches live (one server or endpoint, Sentinel, Cluster) and how writes are
//! made safe across failovers (`wait_replicas`, `failover_rewind`). Exactly one of `url`,
//! `sentinels` and `cluster` names the servers; every error names its key.
//!
//! The URLs and counts stay text and `usize` (tests and tools build this section by hand), but are
//! checked as they are read, like the typed values of the other sections.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::read::{byte_size, duration, opt_non_blank, usize_at_least_one};
use super::types::redact_url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL of a single Redis or of a primary endpoint (ElastiCache,
    /// Memorystore, a proxy). When none of `url`, `cluster` and `sentinels` is set:
    /// `redis://127.0.0.1:6379/0`. Read it through [`RedisConfig::topology`].
    #[serde(deserialize_with = "redis_url")]
    pub url: Option<String>,
    /// Redis Cluster seed nodes, instead of `url`.
    #[serde(deserialize_with = "redis_urls")]
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel nodes, instead of `url` (with `sentinel_master`). Credentials in these URLs
    /// are the sentinels' own; `rediss://` means TLS to the sentinels and to the data nodes.
    #[serde(deserialize_with = "redis_urls")]
    pub sentinels: Option<Vec<String>>,
    /// The name the sentinels monitor the primary under.
    #[serde(deserialize_with = "opt_non_blank")]
    pub sentinel_master: Option<String>,
    /// ACL user of the data nodes found through the sentinels.
    pub username: Option<String>,
    /// Password of the data nodes found through the sentinels (best from the environment:
    /// `INVALIDATOR_REDIS__PASSWORD`).
    pub password: Option<Password>,
    /// Database of the data nodes found through the sentinels.
    pub db: i64,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub response_timeout: Duration,
    /// How long Redis may stay unavailable (attempts included) before `replay` and `sweep` give
    /// up (exit 3).
    #[serde(deserialize_with = "duration")]
    pub retry_for: Duration,
    /// Keys per `UNLINK` command.
    #[serde(deserialize_with = "usize_at_least_one")]
    pub keys_per_command: usize,
    /// `COUNT` hint of `SCAN`/`SSCAN`.
    #[serde(deserialize_with = "usize_at_least_one")]
    pub scan_count: usize,
    /// Replicas that must confirm a unit's writes (`WAIT`) before it is acknowledged; 0: off.
    pub wait_replicas: u32,
    /// How long one `WAIT` waits; fewer replicas by then is an outage (the unit is applied again).
    #[serde(deserialize_with = "duration")]
    pub wait_timeout: Duration,
    /// When the primary behind a connection changes, the invalidations of this last stretch of
    /// time are applied again on the new one; 0s: off.
    #[serde(deserialize_with = "duration")]
    pub failover_rewind: Duration,
    /// Memory cap of the rewind window (bytes of keys and tags kept: `67108864` or `64MiB`).
    #[serde(deserialize_with = "byte_size")]
    pub failover_rewind_max_bytes: usize,
    /// Connections per Redis node; a unit of work writes (and `WAIT`s) on one of them.
    #[serde(deserialize_with = "usize_at_least_one")]
    pub connections: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: None,
            sentinels: None,
            sentinel_master: None,
            username: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(30),
            keys_per_command: 256,
            scan_count: 1000,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            failover_rewind: Duration::from_secs(30),
            failover_rewind_max_bytes: 64 << 20,
            connections: 4,
        }
    }
}

/// The URL used when `[redis]` names no server.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Where the caches live: exactly one of `[redis] url`, `sentinels` or `cluster` (checked when the
/// configuration is loaded).
#[derive(Debug, Clone, PartialEq)]
pub enum Topology<'a> {
    Single {
        url: &'a str,
    },
    Sentinel {
        sentinels: &'a [String],
        master: &'a str,
    },
    Cluster {
        seeds: &'a [String],
    },
}

impl RedisConfig {
    /// A configuration of one Redis at `url` (tests, tools).
    pub fn single(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: Some(url.into()),
            ..RedisConfig::default()
        }
    }

    pub fn topology(&self) -> Topology<'_> {
        match (&self.cluster, &self.sentinels, &self.sentinel_master) {
            (Some(seeds), _, _) => Topology::Cluster { seeds },
            (None, Some(sentinels), Some(master)) => Topology::Sentinel { sentinels, master },
            _ => Topology::Single {
                url: self.url.as_deref().unwrap_or(DEFAULT_REDIS_URL),
            },
        }
    }

    /// The checks across keys: one way to name the servers, what goes with `sentinels`, and the
    /// settings that `wait_replicas` and `failover_rewind` need.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_servers()?;
        self.validate_safety()
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        let set = [
            ("url", self.url.is_some()),
            ("cluster", self.cluster.is_some()),
            ("sentinels", self.sentinels.is_some()),
        ];
        let chosen: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect();
        if chosen.len() > 1 {
            return bad(
                chosen[1],
                format!(
                    "set together with `redis.{}`: name the servers one way only (url, cluster or sentinels)",
                    chosen[0]
                ),
            );
        }
        if self.sentinels.is_some() != self.sentinel_master.is_some() {
            return match self.sentinels {
                Some(_) => bad(
                    "sentinel_master",
                    "missing: `sentinels` needs the name the sentinels monitor the primary under"
                        .into(),
                ),
                None => bad(
                    "sentinels",
                    "missing: `sentinel_master` needs the sentinels to ask".into(),
                ),
            };
        }
        if self.sentinels.is_none()
            && let Some(key) = [
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("db", self.db != 0),
            ]
            .iter()
            .find_map(|(k, on)| on.then_some(*k))
        {
            return bad(
                key,
                "only for the data nodes found through `sentinels`; put credentials and the database in the URL".into(),
            );
        }
        Ok(())
    }

    fn validate_safety(&self) -> Result<(), ConfigError> {
        if self.wait_replicas > 0 {
            if self.wait_timeout.is_zero() {
                return bad(
                    "wait_timeout",
                    "must be more than 0 (WAIT 0 would wait forever)".into(),
                );
            }
            if self.wait_timeout >= self.response_timeout {
                return bad(
                    "wait_timeout",
                    format!(
                        "must be shorter than `redis.response_timeout` ({}), or every WAIT that runs its course reads as a lost connection",
                        humantime::format_duration(self.response_timeout)
                    ),
                );
            }
        }
        if !self.failover_rewind.is_zero() && self.failover_rewind_max_bytes == 0 {
            return bad(
                "failover_rewind_max_bytes",
                "must be more than 0 (or turn the rewind off with failover_rewind = \"0s\")".into(),
            );
        }
        Ok(())
    }
}

fn bad(key: &str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError::key(&format!("redis.{key}"), message))
}

/// A `redis://` or `rediss://` URL (the message shows no password).
fn check_redis_url<E: serde::de::Error>(url: &str) -> Result<(), E> {
    match redis::Client::open(url) {
        Ok(_) => Ok(()),
        Err(_) => Err(E::custom(format!(
            "`{}` is not a redis:// or rediss:// URL",
            redact_url(url)
        ))),
    }
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    check_redis_url::<D::Error>(&url)?;
    Ok(Some(url))
}

/// At least one node, each a Redis URL.
fn redis_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    if urls.is_empty() {
        return Err(D::Error::custom("lists no node"));
    }
    urls.iter()
        .try_for_each(|u| check_redis_url::<D::Error>(u))?;
    Ok(Some(urls))
}

/// A password: read from the configuration, never printed (`Debug` shows `***`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn redis_topologies() {
        let c = Config::from_toml(
            "[redis]\nsentinels = [\"redis://s1:26379\", \"redis://s2:26379\"]\nsentinel_master = \"catalog\"\npassword = \"pw\"",
        )
        .unwrap();
        assert!(matches!(
            c.redis.topology(),
            Topology::Sentinel { master: "catalog", sentinels } if sentinels.len() == 2
        ));
        assert!(
            !format!("{c:?}").contains("pw\""),
            "the password is never printed"
        );
        let c = Config::from_toml("[redis]\ncluster = [\"redis://a:7001\"]").unwrap();
        assert!(matches!(c.redis.topology(), Topology::Cluster { .. }));
        assert_eq!(c.redis.wait_replicas, 0);
        assert_eq!(c.redis.failover_rewind, Duration::from_secs(30));
        assert_eq!(c.redis.failover_rewind_max_bytes, 64 << 20);
    }

    #[test]
    fn redis_errors_name_the_key() {
        let err = |toml: &str| {
            Config::from_toml(&format!("[redis]\n{toml}"))
                .unwrap_err()
                .0
        };
        for (toml, key) in [
            // Both: never fall back to one of them silently.
            (
                "url = \"redis://a\"\nsentinels = [\"redis://s:26379\"]\nsentinel_master = \"m\"",
                "redis.sentinels",
            ),
            (
                "url = \"redis://a\"\ncluster = [\"redis://c:7001\"]",
                "redis.cluster",
            ),
            ("sentinels = [\"redis://s:26379\"]", "redis.sentinel_master"),
            ("sentinel_master = \"m\"", "redis.sentinels"),
            ("sentinels = []\nsentinel_master = \"m\"", "redis.sentinels"),
            (
                "sentinels = [\"http://s\"]\nsentinel_master = \"m\"",
                "redis.sentinels",
            ),
            ("cluster = []", "redis.cluster"),
            ("password = \"x\"", "redis.password"),
            (
                "wait_replicas = 1\nwait_timeout = \"0s\"",
                "redis.wait_timeout",
            ),
            (
                "wait_replicas = 1\nwait_timeout = \"10s\"",
                "redis.wait_timeout",
            ),
            ("wait_replicas = -1", "redis.wait_replicas"),
            ("failover_rewind = \"soon\"", "redis.failover_rewind"),
            (
                "failover_rewind_max_bytes = 0",
                "redis.failover_rewind_max_bytes",
            ),
            ("connections = 0", "redis.connections"),
        ] {
            let e = err(toml);
            assert!(e.contains(key), "{toml}: {e}");
        }
        // Off is fine without a cap.
        Config::from_toml("[redis]\nfailover_rewind = \"0s\"\nfailover_rewind_max_bytes = 0")
            .unwrap();
    }
}
