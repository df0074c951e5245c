//! Records: the unit a source hands over (payload bytes + where they came from, what it carried
//! beside them), and the dead-letter record format.
//!
//! Pure, like all of `event/`: no I/O, no clock (a dead letter's time is given by the caller).
//! Splitting documents into records is [`super::expand`]'s.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::DecodeError;

/// Where a payload came from, field by field: what DLQ records hold (`source`, `origin`), and
/// how any position is built. A [`Position`] holds the same, compactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// Where a payload came from. Printed in logs, written to DLQ records (as [`PositionFields`]),
/// and used to name events that carry no id.
///
/// Compact: every record carries one through each step of a unit, and the positions of files,
/// Kafka messages and SQS or SNS messages (all but a few records) take 32 bytes here, not the 96
/// of their fields (moving records was a tenth of a plain replay's time). Any other combination
/// (an element of a Lambda document in a file, a DLQ record's origin) is boxed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PositionFields", into = "PositionFields")]
pub struct Position(Place);

/// The shapes of [`Position`]; each set of fields has exactly one (see `From<PositionFields>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Place {
    #[default]
    Nowhere,
    File {
        file: Arc<str>,
        line: Option<u64>,
    },
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// An SQS or SNS message, by its id.
    Message(Box<str>),
    Other(Box<PositionFields>),
}

impl From<PositionFields> for Position {
    fn from(f: PositionFields) -> Self {
        Position(match f {
            PositionFields {
                file: None,
                line: None,
                topic: None,
                partition: None,
                offset: None,
                message_id: None,
            } => Place::Nowhere,
            PositionFields {
                file: Some(file),
                line,
                topic: None,
                partition: None,
                offset: None,
                message_id: None,
            } => Place::File { file, line },
            PositionFields {
                file: None,
                line: None,
                topic: Some(topic),
                partition: Some(partition),
                offset: Some(offset),
                message_id: None,
            } => Place::Kafka {
                topic,
                partition,
                offset,
            },
            PositionFields {
                file: None,
                line: None,
                topic: None,
                partition: None,
                offset: None,
                message_id: Some(id),
            } => Place::Message(id.into()),
            other => Place::Other(Box::new(other)),
        })
    }
}

impl From<Position> for PositionFields {
    fn from(p: Position) -> Self {
        p.fields()
    }
}

impl Position {
    /// A file's line. Records of one file share its name (`Arc<str>`).
    pub fn file_line(file: impl Into<Arc<str>>, line: u64) -> Self {
        Position(Place::File {
            file: file.into(),
            line: Some(line),
        })
    }

    /// A whole input, named without a line.
    pub fn named(file: impl Into<Arc<str>>) -> Self {
        Position(Place::File {
            file: file.into(),
            line: None,
        })
    }

    /// A Kafka message. Records of one topic share its name.
    pub fn kafka(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Position(Place::Kafka {
            topic: topic.into(),
            partition,
            offset,
        })
    }

    /// An SQS or SNS message.
    pub fn message(id: &str) -> Self {
        Position(Place::Message(id.into()))
    }

    pub fn with_message_id(&self, id: &str) -> Self {
        PositionFields {
            message_id: Some(id.to_owned()),
            ..self.fields()
        }
        .into()
    }

    /// Every field, as DLQ records write them.
    pub fn fields(&self) -> PositionFields {
        match &self.0 {
            Place::Nowhere => PositionFields::default(),
            Place::File { file, line } => PositionFields {
                file: Some(file.clone()),
                line: *line,
                ..PositionFields::default()
            },
            Place::Kafka {
                topic,
                partition,
                offset,
            } => PositionFields {
                topic: Some(topic.clone()),
                partition: Some(*partition),
                offset: Some(*offset),
                ..PositionFields::default()
            },
            Place::Message(id) => PositionFields {
                message_id: Some(id.to_string()),
                ..PositionFields::default()
            },
            Place::Other(f) => (**f).clone(),
        }
    }

    pub fn file(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Place::File { file, .. } => Some(file),
            Place::Other(f) => f.file.as_ref(),
            Place::Nowhere | Place::Kafka { .. } | Place::Message(_) => None,
        }
    }

    pub fn line(&self) -> Option<u64> {
        match &self.0 {
            Place::File { line, .. } => *line,
            Place::Other(f) => f.line,
            Place::Nowhere | Place::Kafka { .. } | Place::Message(_) => None,
        }
    }

    pub fn topic(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Place::Kafka { topic, .. } => Some(topic),
            Place::Other(f) => f.topic.as_ref(),
            Place::Nowhere | Place::File { .. } | Place::Message(_) => None,
        }
    }

    pub fn partition(&self) -> Option<i32> {
        match &self.0 {
            Place::Kafka { partition, .. } => Some(*partition),
            Place::Other(f) => f.partition,
            Place::Nowhere | Place::File { .. } | Place::Message(_) => None,
        }
    }

    pub fn offset(&self) -> Option<i64> {
        match &self.0 {
            Place::Kafka { offset, .. } => Some(*offset),
            Place::Other(f) => f.offset,
            Place::Nowhere | Place::File { .. } | Place::Message(_) => None,
        }
    }

    pub fn message_id(&self) -> Option<&str> {
        match &self.0 {
            Place::Message(id) => Some(id),
            Place::Other(f) => f.message_id.as_deref(),
            Place::Nowhere | Place::File { .. } | Place::Kafka { .. } => None,
        }
    }

    /// The id of an event that carries none: stable for the same source position.
    pub fn fallback_id(&self) -> String {
        match self.message_id() {
            Some(id) => id.to_owned(),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = self.file() {
            write!(f, "{file}")?;
            if let Some(line) = self.line() {
                write!(f, ":{line}")?;
            }
            sep = " ";
        } else if let Some(line) = self.line() {
            write!(f, "line {line}")?;
            sep = " ";
        }
        if let Some(topic) = self.topic() {
            write!(f, "{sep}{topic}")?;
            if let Some(p) = self.partition() {
                write!(f, "/{p}")?;
            }
            if let Some(o) = self.offset() {
                write!(f, "@{o}")?;
            }
            sep = " ";
        }
        if let Some(id) = self.message_id() {
            write!(f, "{sep}message {id}")?;
        }
        Ok(())
    }
}

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
            key: self.key.as_ref().map(DlqBytes::bytes).transpose()?,
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

    #[test]
    fn position_display_and_fallback() {
        assert_eq!(Position::file_line("a.jsonl", 4).to_string(), "a.jsonl:4");
        let k = Position::kafka("t", 2, 10);
        assert_eq!(k.fallback_id(), "t/2@10");
        assert_eq!(
            Position::file_line("in.jsonl", 3)
                .with_message_id("m")
                .fallback_id(),
            "m"
        );
    }

    /// Every combination of fields comes back as it went in, through the one shape it has; the
    /// shapes of files and Kafka messages stay small.
    #[test]
    fn positions_hold_any_fields_and_the_usual_ones_compactly() {
        let mut seen = Vec::new();
        for bits in 0..64u32 {
            let on = |bit: u32| bits & (1 << bit) != 0;
            let fields = PositionFields {
                file: on(0).then(|| "f".into()),
                line: on(1).then_some(7),
                topic: on(2).then(|| "t".into()),
                partition: on(3).then_some(2),
                offset: on(4).then_some(-1),
                message_id: on(5).then(|| "m".into()),
            };
            let position = Position::from(fields.clone());
            assert_eq!(position.fields(), fields);
            assert_eq!(
                (position.line(), position.partition(), position.offset()),
                (fields.line, fields.partition, fields.offset)
            );
            assert_eq!(position.message_id(), fields.message_id.as_deref());
            let json = serde_json::to_string(&position).unwrap();
            assert_eq!(json, serde_json::to_string(&fields).unwrap());
            assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), position);
            assert!(!seen.contains(&position), "{fields:?}");
            seen.push(position);
        }
        assert_eq!(
            Position::file_line("f", 7),
            PositionFields {
                file: Some("f".into()),
                line: Some(7),
                ..PositionFields::default()
            }
            .into()
        );
        assert_eq!(
            Position::kafka("t", 2, -1).fields(),
            PositionFields {
                topic: Some("t".into()),
                partition: Some(2),
                offset: Some(-1),
                ..PositionFields::default()
            }
        );
        assert_eq!(Position::message("m").message_id(), Some("m"));
        assert!(std::mem::size_of::<Position>() <= 40);
        assert!(std::mem::size_of::<Record>() <= 104);
    }
}
