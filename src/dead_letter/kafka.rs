//! The dead-letter topic of the worker (`[kafka] dlq_topic`, default `<topic>.dlq`): the original
//! key, payload (byte for byte) and headers, with [`DeadLetter::fields`] added as headers. A letter
//! is written when the brokers acknowledged it (`acks=all`).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{DeadLetter, DeadLetterSink};
use crate::config::KafkaConfig;
use crate::kafka_client::{ClientError, producer};

pub struct KafkaDeadLetters {
    producer: FutureProducer,
    config: KafkaConfig,
}

impl KafkaDeadLetters {
    pub fn new(config: &KafkaConfig) -> Result<KafkaDeadLetters, ClientError> {
        Ok(KafkaDeadLetters {
            producer: producer(config, &[])?,
            config: config.clone(),
        })
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, String)> {
        let topics: Vec<String> = letters
            .iter()
            .map(|l| {
                let source = l.record.position.topic.as_deref().unwrap_or_default();
                self.config.dlq_topic_for(source)
            })
            .collect();
        let mut pending = Vec::with_capacity(letters.len());
        for (i, (l, topic)) in letters.iter().zip(&topics).enumerate() {
            let carried = l.record.carried.as_deref();
            let original = carried.map_or(&[][..], |c| &c.headers[..]);
            let fields = l.fields();
            let mut headers = OwnedHeaders::new_with_capacity(original.len() + fields.len());
            for (key, value) in original {
                let value = value.as_deref();
                headers = headers.insert(Header { key, value });
            }
            for (key, value) in &fields {
                let value = Some(value.as_bytes());
                headers = headers.insert(Header { key, value });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(l.record.payload.as_slice())
                .headers(headers);
            if let Some(k) = carried.and_then(|c| c.key.as_deref()) {
                record = record.key(k);
            }
            pending.push((i, self.producer.send(record, Duration::from_secs(5))));
        }
        let mut failed = Vec::new();
        for (i, delivery) in pending {
            if let Err((e, _)) = delivery.await {
                failed.push((i, e.to_string()));
            }
        }
        failed
    }
}
