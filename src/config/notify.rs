//! `[notify]`: `invalidation.completed` notices for cache warmers (SNS and/or Kafka).

use std::time::Duration;

use serde::Deserialize;

use super::read::{duration, opt_non_blank};
use super::types::{HttpUrl, SnsTopicArn};
use super::{ConfigError, KafkaConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// SNS topic; its region is taken from the ARN unless `region` is set.
    pub sns_topic_arn: Option<SnsTopicArn>,
    /// Kafka topic, written with the `[kafka]` brokers and properties.
    #[serde(deserialize_with = "opt_non_blank")]
    pub kafka_topic: Option<String>,
    /// An SNS emulator's URL (tests); absent: the real SNS endpoint.
    pub endpoint_url: Option<HttpUrl>,
    /// SNS region, when it must differ from the one in the ARN.
    #[serde(deserialize_with = "opt_non_blank")]
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

    pub(super) fn validate(&self, kafka: &KafkaConfig) -> Result<(), ConfigError> {
        if self
            .kafka_topic
            .as_ref()
            .is_some_and(|t| kafka.is_source(t))
        {
            return Err(ConfigError::key(
                "notify.kafka_topic",
                "is also a source topic: notices would be consumed as events",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn notify_region_comes_from_the_arn() {
        let c = Config::from_toml(
            "[notify]\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:inv\"\nkafka_topic = \"invalidations\"",
        )
        .unwrap();
        assert!(c.notify.enabled());
        assert_eq!(
            c.notify.sns_topic_arn.as_ref().unwrap().region(),
            "us-east-1"
        );
        assert!(c.needs_aws());
        assert!(!Config::from_toml("").unwrap().needs_aws());
    }

    #[test]
    fn notify_errors_name_the_key() {
        for (text, msg) in [
            (
                "sns_topic_arn = \"topic\"",
                "config key `notify.sns_topic_arn`: `topic` is not an SNS topic ARN",
            ),
            (
                "kafka_topic = \"catalog-events\"",
                "config key `notify.kafka_topic`: is also a source topic",
            ),
            (
                "kafka_topic = \" \"",
                "config key `notify.kafka_topic`: must not be empty",
            ),
            (
                "endpoint_url = \"nope\"",
                "config key `notify.endpoint_url`: `nope` is not an http:// or https:// URL",
            ),
            (
                "region = \"\"",
                "config key `notify.region`: must not be empty",
            ),
            (
                "retry_for = \"x\"",
                "config key `notify.retry_for`: `x` is not a duration",
            ),
            ("topic = \"x\"", "topic"),
        ] {
            let e = Config::from_toml(&format!("[notify]\n{text}"))
                .unwrap_err()
                .0;
            assert!(
                e.starts_with(msg) || (msg == "topic" && e.contains(msg)),
                "{text}: {e}"
            );
        }
    }
}
