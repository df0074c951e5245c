//! Bytes → [`Event`]: the native envelope with its aliases, CloudEvents 1.0 structured JSON, SNS
//! notification envelopes, SQS bodies (raw or SNS-enveloped), whole Lambda `SnsEvent`/`SqsEvent`
//! documents, and our own dead-letter records.
//!
//! Everything here is pure: no I/O, no clock, no randomness. Every failure is a [`DecodeError`], which is
//! permanent by construction (the same bytes always fail the same way) and carries a stable reason code
//! for the dead-letter queue.
//!
//! - `decode`: one payload → one [`Event`] ([`decode_event`], [`decode_value`]); `common`, the
//!   common shape read as borrowed fields; `scan`, the same read by hand for most events;
//! - `shared`: the strings of event types and sources that repeat, made once a thread;
//! - `fields`: the fields of `data` the rules read ([`DataFields`]), the only ones decoded;
//! - `data`: an event's `data` ([`Data`]): the kept fields of an object, or a value whole;
//! - `expand`: one input unit (a line, a document) → the payloads it holds ([`expand_document`]);
//! - `record`: [`Record`], [`Carried`], and the dead-letter format [`DlqRecord`];
//! - `position`: where a record came from ([`Position`], compact; [`PositionFields`], as written);
//! - `binary`: a CloudEvents binary-mode event from Kafka headers ([`binary_envelope`]).

mod binary;
mod common;
mod data;
pub(crate) mod decode;
mod expand;
mod fields;
mod position;
mod record;
mod scan;
mod shared;

pub use binary::binary_envelope;
pub use data::Data;
pub use decode::{
    DecodeError, decode_event, decode_event_keeping, decode_value, decode_value_keeping,
};
pub use expand::{Expanded, expand_document, expand_into};
pub use fields::DataFields;
pub use position::{Position, PositionFields};
pub use record::{Carried, DlqRecord, Record};

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

/// One change event, decoded and validated. `data` is what templates and conditions read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The producer's id, or one derived from the source position when the producer gave none.
    /// Shared, like `kind`, with every rule hit of the event's plan: a hit costs a pointer.
    pub id: Arc<str>,
    /// True when `id` came from the producer (only such ids take part in dedupe).
    #[serde(skip)]
    pub id_given: bool,
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<OffsetDateTime>,
    /// Shared with the events it cascades to: a child costs a pointer, not a copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    pub data: Data,
}

impl Event {
    /// An event built by the engine itself (a cascade), not decoded from bytes.
    pub fn derived(id: String, kind: Arc<str>, parent: &Event, data: Value) -> Self {
        Event {
            id: id.into(),
            id_given: false,
            kind,
            time: parent.time,
            source: parent.source.clone(),
            data: data.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cascaded_event_shares_its_parent_source() {
        let parent = Event {
            id: "e".into(),
            id_given: true,
            kind: "category.changed".into(),
            time: None,
            source: Some("s".repeat(1024).into()),
            data: Value::Null.into(),
        };
        // A fan-out of 1,000 children holds one source, not 1,000 copies of it.
        let children: Vec<Event> = (0..1000)
            .map(|i| {
                Event::derived(
                    format!("e/{i}"),
                    "page.changed".into(),
                    &parent,
                    Value::Null,
                )
            })
            .collect();
        let shared = parent.source.as_ref().unwrap();
        assert!(
            children
                .iter()
                .all(|c| Arc::ptr_eq(c.source.as_ref().unwrap(), shared))
        );
        assert_eq!(Arc::strong_count(shared), 1001);
    }
}
