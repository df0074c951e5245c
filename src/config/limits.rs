//! `[limits]` and `[dedupe]`: what planning allows, and how event ids are kept in Redis.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::read::{at_least_one, byte_size, opt_duration, safe_values};
use crate::rules::SafeValues;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event read, at least 64 bytes (`1048576` or `1MiB`).
    #[serde(deserialize_with = "event_bytes")]
    pub max_event_bytes: usize,
    #[serde(deserialize_with = "at_least_one")]
    pub max_fanout: NonZeroUsize,
    pub max_cascade_depth: u32,
    /// Regex every value taken from an event must match (`safe_value`), compiled.
    #[serde(deserialize_with = "safe_values")]
    pub safe_value: SafeValues,
    /// Dead-letter events no rule matches (`no_rule`) instead of counting them as skipped.
    pub dead_letter_unmatched: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: 1 << 20,
            max_fanout: NonZeroUsize::new(1000).unwrap(),
            max_cascade_depth: 4,
            safe_value: SafeValues::default(),
            dead_letter_unmatched: false,
        }
    }
}

fn event_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = byte_size(d)?;
    if n < 64 {
        return Err(D::Error::custom("must be at least 64"));
    }
    Ok(n)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Absent: no dedupe.
    #[serde(deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// Prefix of the Redis keys that remember event ids (not empty when `window` is set).
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

impl DedupeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_some() && self.prefix.is_empty() {
            return Err(ConfigError::key("dedupe.prefix", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn limits_errors_name_the_key() {
        for (toml, msg) in [
            (
                "[limits]\nmax_fanout = 0",
                "config key `limits.max_fanout`: must be at least 1",
            ),
            (
                "[limits]\nmax_event_bytes = 63",
                "config key `limits.max_event_bytes`: must be at least 64",
            ),
            (
                "[limits]\nmax_event_bytes = \"1 lot\"",
                "config key `limits.max_event_bytes`: `1 lot` is not a size",
            ),
            (
                "[limits]\nsafe_value = \"(\"",
                "config key `limits.safe_value`: not a regex",
            ),
            (
                "[tags]\nprefix = \"\"",
                "config key `tags.prefix`: must not be empty",
            ),
            (
                "[dedupe]\nwindow = \"1m\"\nprefix = \"\"",
                "config key `dedupe.prefix`: must not be empty",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err().0;
            assert!(e.starts_with(msg), "{toml}: {e}");
        }
        // No window, no prefix needed.
        Config::from_toml("[dedupe]\nprefix = \"\"").unwrap();
    }

    #[test]
    fn sizes_take_units() {
        let c =
            Config::from_toml("[limits]\nmax_event_bytes = \"64KiB\"\nsafe_value = \"^[0-9]+$\"")
                .unwrap();
        assert_eq!(c.limits.max_event_bytes, 64 << 10);
        let l = c.rule_limits();
        assert!(l.safe.is_safe("42") && !l.safe.is_safe("a"));
    }
}
