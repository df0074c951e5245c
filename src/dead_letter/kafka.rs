//! The dead-letter topic of the worker (`[kafka] dlq_topic`, default `<topic>.dlq`): the original
//! key, payload (byte for byte) and headers, with [`DeadLetter::fields`] added as headers. A letter
//! is written when the brokers acknowledged it (`acks=all`).
//!
//! A letter too large for the producer or the broker (`MSG_SIZE_TOO_LARGE`, a refusal for good) is
//! written again cut: the first [`CUT_PAYLOAD_BYTES`] of the payload, without the original headers,
//! with `invalidator.truncated`, the whole payload's size and SHA-256. So one record can never
//! stall its partition, and what is kept still identifies it. Such a cut is logged at ERROR and
//! counted in `invalidator_dlq_truncated_total`. The producer's `message.max.bytes` leaves room
//! for the largest event and its headers, so only a broker's lower limit (or huge headers) cuts.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};

use super::{DeadLetter, DeadLetterSink};
use crate::config::KafkaConfig;
use crate::kafka_client::{ClientError, Producer, producer};
use crate::telemetry;

/// How much of the payload a dead letter refused whole for its size keeps.
pub const CUT_PAYLOAD_BYTES: usize = 16 * 1024;

/// Room for the headers beside the largest event: ours (about 2 KiB, the error cut to 1 KiB) and
/// the original ones.
const HEADER_ROOM: usize = 64 * 1024;

pub struct KafkaDeadLetters {
    producer: Producer,
    config: KafkaConfig,
}

impl KafkaDeadLetters {
    /// A producer whose `message.max.bytes` takes an event of `max_event_bytes` with its headers
    /// (unless `[kafka.properties]` sets it).
    pub fn new(config: &KafkaConfig, max_event_bytes: usize) -> Result<Self, ClientError> {
        let max = (max_event_bytes + HEADER_ROOM).max(1_000_000).to_string();
        Ok(KafkaDeadLetters {
            producer: producer(config, &[("message.max.bytes", max)])?,
            config: config.clone(),
        })
    }

    /// Sends one letter, whole or cut; the broker's answer, or why it was not sent.
    async fn send_one(&self, l: &DeadLetter<'_>, topic: &str, cut: bool) -> Result<(), KafkaError> {
        let carried = l.record.carried.as_deref();
        let original = match carried {
            Some(c) if !cut => &c.headers[..],
            _ => &[],
        };
        let mut fields = l.fields();
        let payload = &l.record.payload;
        let kept = if cut {
            let hash = Sha256::digest(payload);
            fields.push(("invalidator.truncated", "true".into()));
            fields.push((
                "invalidator.payload_bytes",
                payload.len().to_string().into(),
            ));
            fields.push(("invalidator.payload_sha256", format!("{hash:x}").into()));
            &payload[..payload.len().min(CUT_PAYLOAD_BYTES)]
        } else {
            &payload[..]
        };
        let mut headers = OwnedHeaders::new_with_capacity(original.len() + fields.len());
        for (key, value) in original {
            let value = value.as_deref();
            headers = headers.insert(Header { key, value });
        }
        for (key, value) in &fields {
            let value = Some(value.as_bytes());
            headers = headers.insert(Header { key, value });
        }
        let key = carried.and_then(|c| c.key.as_deref());
        let queue_timeout = Duration::from_secs(5);
        self.producer
            .send(topic, key, kept, Some(headers), queue_timeout)
            .await
    }

    /// Sends one letter whole, or cut when it is too large to go whole.
    async fn send_whole_or_cut(&self, l: &DeadLetter<'_>, topic: &str) -> Result<(), String> {
        let error = match self.send_one(l, topic, false).await {
            Ok(()) => return Ok(()),
            Err(e) if too_large(&e) => e,
            Err(e) => return Err(e.to_string()),
        };
        tracing::error!(position = %l.record.position, bytes = l.record.payload.len(), %error,
            "dead letter too large for the DLQ topic: written cut, with the size and SHA-256 of the whole");
        self.send_one(l, topic, true)
            .await
            .map_err(|e| format!("{error}; cut, still: {e}"))?;
        telemetry::dlq_truncated();
        Ok(())
    }
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, String)> {
        let topics: Vec<String> = letters
            .iter()
            .map(|l| {
                let source = l.record.position.topic().map_or("", |t| t);
                self.config.dlq_topic_for(source)
            })
            .collect();
        let sends = letters
            .iter()
            .zip(&topics)
            .map(|(l, topic)| self.send_whole_or_cut(l, topic));
        join_all(sends)
            .await
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.err()?)))
            .collect()
    }
}
