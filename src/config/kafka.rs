//! `[kafka]`: the consumer group the worker (`invalidator run`) joins, and the dead-letter topic.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::read::{at_least_one, byte_size, duration, non_blank};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    #[serde(deserialize_with = "non_blank")]
    pub brokers: String,
    /// `group.id`.
    #[serde(deserialize_with = "non_blank")]
    pub group: String,
    /// At least one, none blank.
    #[serde(deserialize_with = "topic_names")]
    pub topics: Vec<String>,
    /// Where dead letters go; absent: `<source topic>.dlq` for each source topic.
    pub dlq_topic: Option<String>,
    /// librdkafka properties, passed as they are to the consumer and the DLQ producer (SASL, TLS,
    /// `session.timeout.ms`, ...). They win over the worker's own defaults. Numbers and booleans
    /// are taken as their text; `_` in a name stands for `.` (librdkafka names have none), so that
    /// a secret can come from the environment: `INVALIDATOR_KAFKA__PROPERTIES__SASL_PASSWORD`.
    #[serde(deserialize_with = "kafka_properties")]
    pub properties: KafkaProperties,
    /// Most events in one unit of work.
    #[serde(deserialize_with = "at_least_one")]
    pub batch_size: NonZeroUsize,
    /// How long a unit may wait for more events once what the consumer had fetched is taken in
    /// (0: go at once; a backlog fills units to `batch_size` anyway).
    #[serde(deserialize_with = "duration")]
    pub batch_wait: Duration,
    /// Units of work in flight, each on its own task. A unit keeps its place until its CDN batch
    /// is accepted (up to a CloudFront `window`), so with CloudFront the worker applies at most
    /// `max_in_flight × batch_size` events per window.
    #[serde(deserialize_with = "at_least_one")]
    pub max_in_flight: NonZeroUsize,
    /// Most payload bytes (payload, key and headers) held by the units in flight and the batch
    /// being filled, at least `[limits] max_event_bytes` (`67108864` or `64MiB`). Also sizes
    /// librdkafka's prefetch queue ([`KafkaConfig::prefetch_kbytes`]).
    #[serde(deserialize_with = "byte_size")]
    pub max_in_flight_bytes: usize,
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
            properties: KafkaProperties::default(),
            batch_size: NonZeroUsize::new(500).unwrap(),
            batch_wait: Duration::ZERO,
            max_in_flight: NonZeroUsize::new(32).unwrap(),
            max_in_flight_bytes: 64 << 20,
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

    /// True when `topic` is one the worker consumes.
    pub fn is_source(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }

    /// The bytes at which a unit is closed before `batch_size`: an even share of
    /// `max_in_flight_bytes` among the units in flight and the batch being filled, so that a
    /// backlog of large events still spreads over `max_in_flight` units.
    pub fn unit_bytes(&self) -> usize {
        (self.max_in_flight_bytes / (self.max_in_flight.get() + 1)).max(1)
    }

    /// `queued.max.messages.kbytes` unless `[kafka.properties]` sets it: a quarter of
    /// `max_in_flight_bytes` (16 MiB by default), within librdkafka's range. librdkafka sizes
    /// `fetch.max.bytes` from it (unless set), so a fetch does not bring much more.
    pub fn prefetch_kbytes(&self) -> usize {
        (self.max_in_flight_bytes / 4 / 1024).clamp(1, 2_097_151)
    }

    pub(super) fn validate(&self, max_event_bytes: usize) -> Result<(), ConfigError> {
        if self.max_in_flight_bytes < max_event_bytes {
            return Err(ConfigError::key(
                "kafka.max_in_flight_bytes",
                format_args!(
                    "must be at least `limits.max_event_bytes` ({max_event_bytes}): one event \
                     must fit"
                ),
            ));
        }
        if self.dlq_topic.as_ref().is_some_and(|t| self.is_source(t)) {
            return Err(ConfigError::key(
                "kafka.dlq_topic",
                "is also a source topic: dead letters would be consumed again",
            ));
        }
        Ok(())
    }
}

fn topic_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let topics = Vec::<String>::deserialize(d)?;
    if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
        return Err(D::Error::custom("must list at least one topic name"));
    }
    Ok(topics)
}

/// `[kafka.properties]`: name → value. `Debug` shows the value of no property whose name says it
/// holds a secret (`sasl.password`, `ssl.key.pem`, `sasl.jaas.config`, ...): `***` instead.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SECRET: &[&str] = &[
            "password",
            "secret",
            "key",
            "jaas",
            "token",
            "credential",
            "pem",
            "sasl.username",
        ];
        let shown = self.0.iter().map(|(k, v)| {
            let secret = SECRET.iter().any(|s| k.contains(s));
            (k, if secret { "***" } else { v.as_str() })
        });
        f.debug_map().entries(shown).finish()
    }
}

fn kafka_properties<'de, D: Deserializer<'de>>(d: D) -> Result<KafkaProperties, D::Error> {
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
        .collect::<BTreeMap<_, _>>()
        .into())
}

impl From<BTreeMap<String, String>> for KafkaProperties {
    fn from(m: BTreeMap<String, String>) -> Self {
        KafkaProperties(m)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

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
    fn secrets_in_kafka_properties_are_never_printed() {
        let c = Config::from_toml(
            "[kafka.properties]\n\"sasl.password\" = \"pw-s3cr3t\"\n\"ssl.key.pem\" = \"-----PEM-s3cr3t\"\n\
             \"sasl.jaas.config\" = \"user=u password=jaas-s3cr3t\"\n\"session.timeout.ms\" = 6000\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("\"sasl.password\": \"***\""), "{shown}");
        assert!(
            shown.contains("\"session.timeout.ms\": \"6000\""),
            "{shown}"
        );
    }

    #[test]
    fn the_byte_budget_takes_sizes_and_sizes_the_units_and_the_prefetch() {
        let d = Config::from_toml("").unwrap().kafka;
        assert_eq!(d.max_in_flight_bytes, 64 << 20);
        // The default prefetch stays what it was before the budget: 16 MiB.
        assert_eq!(d.prefetch_kbytes(), 16384);
        assert_eq!(d.unit_bytes(), (64 << 20) / 33);
        let c = Config::from_toml(
            "[limits]\nmax_event_bytes = \"1KiB\"\n[kafka]\nmax_in_flight_bytes = \"2KiB\"\n\
             max_in_flight = 1\n",
        )
        .unwrap()
        .kafka;
        assert_eq!(c.max_in_flight_bytes, 2048);
        assert_eq!(c.unit_bytes(), 1024);
        assert_eq!(c.prefetch_kbytes(), 1);
        let big = Config::from_toml("[kafka]\nmax_in_flight_bytes = \"64GiB\"\n").unwrap();
        assert_eq!(big.kafka.prefetch_kbytes(), 2_097_151);
    }

    #[test]
    fn kafka_errors_name_the_key() {
        for (toml, msg) in [
            (
                "topics = []",
                "config key `kafka.topics`: must list at least one topic name",
            ),
            (
                "topics = [\" \"]",
                "config key `kafka.topics`: must list at least one topic name",
            ),
            (
                "brokers = \" \"",
                "config key `kafka.brokers`: must not be empty",
            ),
            (
                "group = \"\"",
                "config key `kafka.group`: must not be empty",
            ),
            (
                "batch_size = 0",
                "config key `kafka.batch_size`: must be at least 1",
            ),
            (
                "max_in_flight = 0",
                "config key `kafka.max_in_flight`: must be at least 1",
            ),
            (
                "max_in_flight_bytes = \"512KiB\"",
                "config key `kafka.max_in_flight_bytes`: must be at least `limits.max_event_bytes` (1048576)",
            ),
            (
                "max_in_flight_bytes = \"a lot\"",
                "config key `kafka.max_in_flight_bytes`: `a lot` is not a size",
            ),
            (
                "dlq_topic = \"catalog-events\"",
                "config key `kafka.dlq_topic`: is also a source topic",
            ),
        ] {
            let e = Config::from_toml(&format!("[kafka]\n{toml}"))
                .unwrap_err()
                .0;
            assert!(e.starts_with(msg), "{toml}: {e}");
        }
    }
}
