//! Notices to a Kafka topic, through the `[kafka]` brokers and properties: key = event id, value =
//! the notice. librdkafka retries a delivery until `message.timeout.ms`, set to `[notify]
//! retry_for`; what is not acknowledged by then is dropped (and logged).

use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::{Notice, NoticeReport};
use crate::config::KafkaConfig;
use crate::kafka_client::{Producer, producer};

pub struct KafkaSink {
    producer: Producer,
    topic: String,
}

impl KafkaSink {
    pub fn new(
        config: &KafkaConfig,
        topic: &str,
        retry_for: Duration,
    ) -> Result<KafkaSink, String> {
        let timeout_ms = retry_for.as_millis().max(1).to_string();
        let producer = producer(
            config,
            &[
                ("client.id", "invalidator-notify".into()),
                ("message.timeout.ms", timeout_ms),
                ("acks", "1".into()),
            ],
        )
        .map_err(|e| format!("notify.kafka_topic: {e}"))?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_owned(),
        })
    }

    pub async fn publish(&self, notices: &[Notice], deadline: Instant) -> NoticeReport {
        let queue_timeout = deadline.saturating_duration_since(Instant::now());
        let deliveries = notices.iter().map(|n| {
            let (key, payload) = (Some(n.event_id.as_bytes()), n.json.as_bytes());
            self.producer
                .send(&self.topic, key, payload, None, queue_timeout)
        });
        let mut report = NoticeReport::default();
        let mut first_error = None;
        for r in join_all(deliveries).await {
            match r {
                Ok(_) => report.sent += 1,
                Err(e) => {
                    report.dropped += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            tracing::warn!(topic = %self.topic, dropped = report.dropped, error = %e,
                "Kafka notices dropped after retrying (they are a warming hint; invalidation is done)");
        }
        report
    }
}
