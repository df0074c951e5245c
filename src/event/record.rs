//! Records: the unit a source hands over (payload bytes + where they came from), the documents that
//! hold several of them (Lambda `SnsEvent`/`SqsEvent`), and the dead-letter record format.

use std::fmt;

use aws_lambda_events::event::{sns::SnsEvent, sqs::SqsEvent};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DecodeError;

/// Where a payload came from. Printed in logs, written to DLQ records, and used to name events that
/// carry no id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl Position {
    pub fn file_line(file: &str, line: u64) -> Self {
        Position {
            file: Some(file.to_owned()),
            line: Some(line),
            ..Position::default()
        }
    }

    pub fn with_message_id(&self, id: &str) -> Self {
        Position {
            message_id: Some(id.to_owned()),
            ..self.clone()
        }
    }

    /// The id of an event that carries none: stable for the same source position.
    pub fn fallback_id(&self) -> String {
        if let Some(id) = &self.message_id {
            return id.clone();
        }
        self.to_string()
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            sep = " ";
        } else if let Some(line) = self.line {
            write!(f, "line {line}")?;
            sep = " ";
        }
        if let Some(topic) = &self.topic {
            write!(f, "{sep}{topic}")?;
            if let Some(p) = self.partition {
                write!(f, "/{p}")?;
            }
            if let Some(o) = self.offset {
                write!(f, "@{o}")?;
            }
            sep = " ";
        }
        if let Some(id) = &self.message_id {
            write!(f, "{sep}message {id}")?;
        }
        Ok(())
    }
}

/// One payload from a source, with what is needed to dead-letter it byte-exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub payload: Vec<u8>,
    pub position: Position,
    /// How many times this payload was tried before (0 for a fresh one, N for a replayed DLQ record).
    pub attempts: u32,
    /// The first position of a payload replayed from a DLQ file.
    pub origin: Option<Position>,
    /// Only the first bytes of an over-long input line were kept.
    pub truncated: bool,
    /// What the source carried beside the payload (a Kafka key and headers, an SQS message
    /// group), kept so that a dead letter goes out as the record came in.
    pub carried: Option<Box<Carried>>,
}

/// What a source carried beside a record's payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// The Kafka message key.
    pub key: Option<Vec<u8>>,
    /// The Kafka headers, as they came.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The SQS queue or SNS topic ARN.
    pub source_arn: Option<String>,
    /// The SQS FIFO message group.
    pub group_id: Option<String>,
}

impl Record {
    pub fn new(payload: Vec<u8>, position: Position) -> Self {
        Record {
            payload,
            position,
            attempts: 0,
            origin: None,
            truncated: false,
            carried: None,
        }
    }
}

/// What one input line or document turned into.
#[derive(Debug)]
pub enum Expanded {
    /// An event payload already parsed as JSON: decode it with [`super::decode_value`].
    Parsed { value: Value, record: Record },
    /// A payload still to be decoded with [`super::decode_event`] (an SNS `Message`, an SQS body, the
    /// payload of a DLQ record).
    Raw(Record),
    /// A payload that failed before it could be decoded.
    Failed { record: Record, error: DecodeError },
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
            origin: record.origin.clone(),
            time,
            event_id: None,
            event_type: None,
            payload,
            payload_base64,
            truncated: record.truncated,
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

/// Splits one input unit (a JSON Lines line, or a whole JSON document) into the payloads it holds:
/// a Lambda `SnsEvent`/`SqsEvent` gives one per record, a DLQ record gives its original payload, a
/// JSON array gives its elements, anything else is one event.
pub fn expand_document(bytes: Vec<u8>, position: Position, max_bytes: usize) -> Vec<Expanded> {
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return vec![Expanded::Failed {
                record: Record::new(bytes, position),
                error: DecodeError::InvalidJson(e.to_string()),
            }];
        }
    };
    expand_value(value, bytes, position, max_bytes)
}

fn expand_value(
    value: Value,
    bytes: Vec<u8>,
    position: Position,
    max_bytes: usize,
) -> Vec<Expanded> {
    match &value {
        Value::Object(obj) if obj.contains_key("Records") => {
            let record = Record::new(bytes, position);
            match expand_lambda(value, &record.position) {
                Ok(records) => records.into_iter().map(Expanded::Raw).collect(),
                Err(error) => vec![Expanded::Failed { record, error }],
            }
        }
        Value::Object(obj) if obj.contains_key(DLQ_MARKER) => {
            let parsed: Result<DlqRecord, _> = serde_json::from_value(value);
            let result = parsed
                .map_err(|e| DecodeError::InvalidEnvelope(format!("DLQ record: {e}")))
                .and_then(|dlq| {
                    let payload = dlq.payload_bytes()?;
                    Ok(Record {
                        payload,
                        position: position.clone(),
                        attempts: dlq.attempts,
                        origin: Some(dlq.origin.unwrap_or(dlq.source)),
                        truncated: false,
                        carried: None,
                    })
                });
            match result {
                Ok(record) => vec![Expanded::Raw(record)],
                Err(error) => vec![Expanded::Failed {
                    record: Record::new(bytes, position),
                    error,
                }],
            }
        }
        Value::Array(_) => {
            let Value::Array(items) = value else {
                unreachable!()
            };
            items
                .into_iter()
                .enumerate()
                .flat_map(|(i, item)| {
                    let bytes = serde_json::to_vec(&item).unwrap_or_default();
                    let pos = Position {
                        message_id: Some(format!("[{i}]")),
                        ..position.clone()
                    };
                    if bytes.len() > max_bytes {
                        return vec![Expanded::Failed {
                            error: DecodeError::TooLarge {
                                size: bytes.len(),
                                limit: max_bytes,
                            },
                            record: Record::new(bytes, pos),
                        }];
                    }
                    match item {
                        // Nested documents (a list of Lambda events) expand too.
                        Value::Object(ref o)
                            if o.contains_key("Records") || o.contains_key(DLQ_MARKER) =>
                        {
                            expand_value(item, bytes, pos, max_bytes)
                        }
                        _ => vec![Expanded::Parsed {
                            value: item,
                            record: Record::new(bytes, pos),
                        }],
                    }
                })
                .collect()
        }
        // One event: the limit applies to it (envelopes above are checked per payload).
        _ if bytes.len() > max_bytes => vec![Expanded::Failed {
            error: DecodeError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            },
            record: Record::new(bytes, position),
        }],
        _ => vec![Expanded::Parsed {
            value,
            record: Record::new(bytes, position),
        }],
    }
}

/// The records of a Lambda SNS or SQS event document.
fn expand_lambda(value: Value, position: &Position) -> Result<Vec<Record>, DecodeError> {
    let first = value
        .get("Records")
        .and_then(Value::as_array)
        .and_then(|r| r.first());
    let source = first.and_then(|r| {
        r.get("eventSource")
            .or_else(|| r.get("EventSource"))
            .and_then(Value::as_str)
    });
    match source {
        None if first.is_none() => Ok(Vec::new()),
        Some("aws:sqs") => {
            let event: SqsEvent = serde_json::from_value(value)
                .map_err(|e| DecodeError::InvalidEnvelope(format!("SQS event: {e}")))?;
            event
                .records
                .into_iter()
                .map(|r| {
                    let id = r.message_id.unwrap_or_default();
                    let body = r.body.ok_or_else(|| {
                        DecodeError::InvalidEnvelope(format!("SQS record {id} has no body"))
                    })?;
                    Ok(Record::new(
                        body.into_bytes(),
                        position.with_message_id(&id),
                    ))
                })
                .collect()
        }
        Some("aws:sns") => {
            let event: SnsEvent = serde_json::from_value(value)
                .map_err(|e| DecodeError::InvalidEnvelope(format!("SNS event: {e}")))?;
            Ok(event
                .records
                .into_iter()
                .map(|r| {
                    Record::new(
                        r.sns.message.into_bytes(),
                        position.with_message_id(&r.sns.message_id),
                    )
                })
                .collect())
        }
        other => Err(DecodeError::InvalidEnvelope(format!(
            "a `Records` document must be a Lambda SNS or SQS event, found event source {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn pos() -> Position {
        Position::file_line("in.jsonl", 3)
    }

    #[test]
    fn plain_event_is_parsed_once() {
        let out = expand_document(br#"{"type":"a"}"#.to_vec(), pos(), MAX);
        assert!(
            matches!(&out[..], [Expanded::Parsed { record, .. }] if record.payload == br#"{"type":"a"}"#)
        );
    }

    #[test]
    fn sqs_event_document() {
        let doc = include_str!("../../tests/fixtures/sqs-event.json");
        let out = expand_document(doc.as_bytes().to_vec(), pos(), MAX);
        assert_eq!(out.len(), 3);
        let Expanded::Raw(r) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            r.position.message_id.as_deref(),
            Some("059f36b4-87a3-44ab-83d2-661975830a7d")
        );
        assert_eq!(r.position.file.as_deref(), Some("in.jsonl"));
    }

    #[test]
    fn sns_event_document() {
        let doc = include_str!("../../tests/fixtures/sns-event.json");
        let out = expand_document(doc.as_bytes().to_vec(), pos(), MAX);
        assert_eq!(out.len(), 1);
        let Expanded::Raw(r) = &out[0] else {
            panic!("{out:?}")
        };
        let e = crate::event::decode_event(&r.payload, MAX, &|| "x".into()).unwrap();
        assert_eq!(e.kind, "price.updated");
    }

    #[test]
    fn unknown_records_document_fails() {
        let out = expand_document(
            br#"{"Records":[{"eventSource":"aws:s3"}]}"#.to_vec(),
            pos(),
            MAX,
        );
        assert!(matches!(
            &out[..],
            [Expanded::Failed {
                error: DecodeError::InvalidEnvelope(_),
                ..
            }]
        ));
    }

    #[test]
    fn dlq_record_round_trip_utf8_and_binary() {
        for payload in [b"{\"type\":\"a\"".to_vec(), vec![0xff, 0xfe, b'{']] {
            let mut rec = Record::new(payload.clone(), Position::file_line("x", 9));
            rec.attempts = 1;
            let dlq = DlqRecord::new(&rec, "invalid_json", "boom", "2026-11-22T00:00:00Z".into());
            assert_eq!(dlq.attempts, 2);
            let line = serde_json::to_vec(&dlq).unwrap();
            let out = expand_document(line, Position::file_line("dlq.jsonl", 1), MAX);
            let [Expanded::Raw(back)] = &out[..] else {
                panic!("{out:?}")
            };
            assert_eq!(back.payload, payload);
            assert_eq!(back.attempts, 2);
            assert_eq!(back.origin, Some(Position::file_line("x", 9)));
            assert_eq!(back.position, Position::file_line("dlq.jsonl", 1));
        }
    }

    #[test]
    fn array_document() {
        let out = expand_document(br#"[{"type":"a"},{"type":"b"}]"#.to_vec(), pos(), MAX);
        assert_eq!(out.len(), 2);
        let Expanded::Parsed { record, .. } = &out[1] else {
            panic!()
        };
        assert_eq!(record.position.message_id.as_deref(), Some("[1]"));
    }

    #[test]
    fn position_display_and_fallback() {
        assert_eq!(Position::file_line("a.jsonl", 4).to_string(), "a.jsonl:4");
        let k = Position {
            topic: Some("t".into()),
            partition: Some(2),
            offset: Some(10),
            ..Position::default()
        };
        assert_eq!(k.fallback_id(), "t/2@10");
        assert_eq!(pos().with_message_id("m").fallback_id(), "m");
    }
}
