//! The Kafka clients' configuration, shared by the consumer (`source::kafka`), the dead-letter
//! topic (`dead_letter::kafka`) and the completion notices (`apply::notify::kafka`): our defaults
//! first, then the user's `[kafka.properties]`, which win. The two producers are [`Producer`]s.

mod producer;

pub use producer::Producer;

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::KafkaConfig;

/// Defaults the worker sets before the user's `[kafka.properties]` (which win).
pub(crate) fn consumer_defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    let mut defaults = vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("group.id", config.group.clone()),
        // We store offsets ourselves, only for events that are done; librdkafka commits what
        // was stored, every second and when partitions are revoked.
        ("enable.auto.offset.store", "false".into()),
        ("enable.auto.commit", "true".into()),
        ("auto.commit.interval.ms", "1000".into()),
        // A new group starts from the oldest event: an invalidation missed is a stale cache.
        ("auto.offset.reset", "earliest".into()),
        ("statistics.interval.ms", "5000".into()),
        ("client.id", "invalidator".into()),
    ];
    defaults.extend(prefetch_defaults(config));
    defaults
}

/// librdkafka's prefetch, for every consumer (the worker's and `replay --from-kafka`'s).
pub(crate) fn prefetch_defaults(config: &KafkaConfig) -> [(&'static str, String); 2] {
    [
        // Bounded prefetch, from `max_in_flight_bytes` (librdkafka's default is 64 MiB per
        // consumer). librdkafka derives `fetch.max.bytes` from it unless that is set.
        (
            "queued.max.messages.kbytes",
            config.prefetch_kbytes().to_string(),
        ),
        // Once that queue is full, librdkafka waits this long before it looks again (its default,
        // 1 s, left a worker draining a backlog idle for most of each second: the queue empties
        // in a fraction of it). Looking again costs a check, not a request.
        ("fetch.queue.backoff.ms", "50".into()),
    ]
}

pub(crate) fn producer_defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("acks", "all".into()),
        ("linger.ms", "5".into()),
        ("message.timeout.ms", "30000".into()),
        ("client.id", "invalidator-dlq".into()),
    ]
}

/// Properties that make sense only for a consumer; not passed to the DLQ producer.
fn consumer_only(key: &str) -> bool {
    key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("max.poll.")
        || key.starts_with("partition.assignment.")
        || matches!(
            key,
            "isolation.level"
                | "check.crcs"
                | "enable.partition.eof"
                | "consume.callback.max.messages"
        )
}

/// A producer with the worker's producer defaults, `overrides`, then the user's
/// `[kafka.properties]` (those that make sense for a producer). Used by the DLQ topic and the
/// completion notices.
pub fn producer(
    config: &KafkaConfig,
    overrides: &[(&'static str, String)],
) -> Result<Producer, ClientError> {
    let mut defaults = producer_defaults(config);
    defaults.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    defaults.extend(overrides.iter().cloned());
    Producer::new(&client_config(defaults, &config.properties, |k| {
        !consumer_only(k)
    }))
}

/// librdkafka's log lines as tracing events, at the matching level.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
    }
}

/// Failures to build the Kafka clients (bad properties): a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("config key `kafka.properties`: {0}")]
pub struct ClientError(pub(crate) String);

pub(crate) fn client_config(
    defaults: Vec<(&'static str, String)>,
    properties: &BTreeMap<String, String>,
    keep: impl Fn(&str) -> bool,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(k, v);
    }
    for (k, v) in properties {
        if keep(k) {
            c.set(k, v);
        }
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_only_properties_are_not_given_to_the_producer() {
        assert!(consumer_only("session.timeout.ms"));
        assert!(consumer_only("group.instance.id"));
        assert!(!consumer_only("security.protocol"));
        assert!(!consumer_only("sasl.password"));
    }

    /// The consumer's value of `key` under the configuration `toml`.
    fn consumer_property(toml: &str, key: &str) -> Option<String> {
        let config = crate::config::Config::from_toml(toml).unwrap().kafka;
        let c = client_config(consumer_defaults(&config), &config.properties, |_| true);
        c.get(key).map(str::to_owned)
    }

    #[test]
    fn the_prefetch_follows_the_budget_unless_the_user_sets_it() {
        let queued = |toml: &str| consumer_property(toml, "queued.max.messages.kbytes");
        assert_eq!(queued("").as_deref(), Some("16384"));
        assert_eq!(
            queued("[kafka]\nmax_in_flight_bytes = \"8MiB\"").as_deref(),
            Some("2048")
        );
        assert_eq!(
            queued(
                "[kafka]\nmax_in_flight_bytes = \"8MiB\"\n[kafka.properties]\n\
                 \"queued.max.messages.kbytes\" = 100\n"
            )
            .as_deref(),
            Some("100")
        );
    }

    #[test]
    fn a_full_prefetch_queue_is_looked_at_again_soon_unless_the_user_says_otherwise() {
        let backoff = |toml: &str| consumer_property(toml, "fetch.queue.backoff.ms");
        assert_eq!(backoff("").as_deref(), Some("50"));
        let set = "[kafka.properties]\n\"fetch.queue.backoff.ms\" = 1000\n";
        assert_eq!(backoff(set).as_deref(), Some("1000"));
    }
}
