//! Records: the unit a source hands over (payload bytes + where they came from, what it carried
//! beside them), and the dead-letter record format.
//!
//! Pure, like all of `event/`: no I/O, no clock (a dead letter's time is given by the caller).
//! Splitting documents into records is [`super::expand`]'s.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::DecodeError;
use super::position::Position;

/// One payload from a source, with what is needed to dead-letter it byte-exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Shared: a unit tried again hands the engine the same bytes, not a copy, and a worker's
    /// unit holds its payloads once (what `max_in_flight_bytes` counts), not twice.
    pub payload: Bytes,
    pub position: Position,
    /// How many times this payload was tried before (0 for a fresh one, N for a replayed DLQ record).
    pub attempts: u32,
    /// The first position of a payload replayed from a DLQ file. Boxed: it is rare, and a record
    /// is moved several times on its way through a unit (its size was most of a plain replay's
    /// `memcpy`).
    pub origin: Option<Box<Position>>,
    /// Only the first bytes of an over-long input line were kept.
    pub truncated: bool,
    /// What the source carried beside the payload (a Kafka key and headers, an SQS message
    /// group), kept so that a dead letter goes out as the record came in. Shared, like the
    /// payload: a unit retried copies the rest of its records, not these.
    pub carried: Option<Arc<Carried>>,
}

/// What a source carried beside a record's payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// The Kafka message key (the worker keeps it in the payload's buffer: one allocation a
    /// message for both).
    pub key: Option<Bytes>,
    /// The Kafka headers, as they came.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The SQS queue or SNS topic ARN.
    pub source_arn: Option<String>,
    /// The SQS FIFO message group.
    pub group_id: Option<String>,
}

impl Record {
    pub fn new(payload: impl Into<Bytes>, position: Position) -> Self {
        Record {
            payload: payload.into(),
            position,
            attempts: 0,
            origin: None,
            truncated: false,
            carried: None,
        }
    }
}

/// The marker field of a dead-letter record.
pub const DLQ_MARKER: &str = "invalidator_dlq";

/// One line of a dead-letter file. `payload` holds the original bytes when they are UTF-8,
/// `payload_base64` otherwise; either way they are byte-exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqRecord {
    /// Format version (1).
    pub invalidator_dlq: u32,
    pub reason: String,
    pub error: String,
    pub attempts: u32,
    pub source: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Position>,
    /// RFC 3339 time of the dead-lettering.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The payload was cut at the size limit (only for `too_large`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The Kafka key and headers the payload came with (a CloudEvents binary-mode event's
    /// attributes are headers: without them the payload is only its `data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<DlqKafka>,
}

/// The Kafka key and headers of a dead letter, byte-exact: UTF-8 as text, other bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqKafka {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<DlqBytes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<DlqHeader>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqHeader {
    pub name: String,
    /// Absent for a header without a value.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub value: Option<DlqBytes>,
}

/// Bytes as `value` (UTF-8) or `value_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqBytes {
    Value(String),
    ValueBase64(String),
}

impl DlqBytes {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => DlqBytes::Value(s.to_owned()),
            Err(_) => {
                DlqBytes::ValueBase64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, DecodeError> {
        match self {
            DlqBytes::Value(s) => Ok(s.as_bytes().to_vec()),
            DlqBytes::ValueBase64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| DecodeError::InvalidEnvelope(format!("DLQ kafka value_base64: {e}"))),
        }
    }
}

impl DlqKafka {
    /// What `carried` holds of Kafka's, if anything.
    fn of(carried: &Carried) -> Option<Self> {
        if carried.key.is_none() && carried.headers.is_empty() {
            return None;
        }
        Some(DlqKafka {
            key: carried.key.as_deref().map(DlqBytes::new),
            headers: carried
                .headers
                .iter()
                .map(|(name, value)| DlqHeader {
                    name: name.clone(),
                    value: value.as_deref().map(DlqBytes::new),
                })
                .collect(),
        })
    }

    /// Back to what the record carried.
    pub fn carried(&self) -> Result<Carried, DecodeError> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for h in &self.headers {
            headers.push((
                h.name.clone(),
                h.value.as_ref().map(DlqBytes::bytes).transpose()?,
            ));
        }
        Ok(Carried {
            key: self
                .key
                .as_ref()
                .map(DlqBytes::bytes)
                .transpose()?
                .map(Bytes::from),
            headers,
            ..Carried::default()
        })
    }
}

impl DlqRecord {
    /// Builds the record for a payload that failed `attempts` times in all.
    pub fn new(record: &Record, reason: &str, error: &str, time: String) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(&record.payload) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
            ),
        };
        DlqRecord {
            invalidator_dlq: 1,
            reason: reason.to_owned(),
            error: error.to_owned(),
            attempts: record.attempts.saturating_add(1),
            source: record.position.clone(),
            origin: record.origin.as_deref().cloned(),
            time,
            event_id: None,
            event_type: None,
            payload,
            payload_base64,
            truncated: record.truncated,
            kafka: record.carried.as_deref().and_then(DlqKafka::of),
        }
    }

    /// The original bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DecodeError> {
        match (&self.payload, &self.payload_base64) {
            (Some(p), _) => Ok(p.as_bytes().to_vec()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| DecodeError::InvalidEnvelope(format!("DLQ payload_base64: {e}"))),
            (None, None) => Err(DecodeError::InvalidEnvelope(
                "DLQ record without payload".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record is moved whole through each step of a unit: it stays small.
    #[test]
    fn a_record_stays_small() {
        assert!(std::mem::size_of::<Record>() <= 104);
    }
}
