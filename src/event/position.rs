//! Where a payload came from ([`Position`]), and the fields a dead-letter record writes of it
//! ([`PositionFields`]).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    }
}
