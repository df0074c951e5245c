//! Dead letters: one record shape, [`DeadLetter`], and one trait, [`DeadLetterSink`], with a file
//! (`replay`), a Kafka topic (the worker) and an SQS queue (the Lambda, in `invalidator-lambda`).
//!
//! Every sink writes the same fields: the payload byte for byte (and what the source carried
//! beside it: a Kafka key and headers), the reason code, the error (cut to [`MAX_ERROR_BYTES`]),
//! the number of attempts, where the payload came from (and first came from, for a redriven one),
//! the time, and the event's id and type when it decoded. A file holds them as a JSON record
//! ([`crate::event::DlqRecord`]); a topic or a queue as `invalidator.*` headers or attributes
//! named by [`DeadLetter::fields`].
//!
//! A letter counts as written only when the sink says so: synced to disk, acknowledged by the
//! brokers, listed as successful by SQS. Until then its record is not acknowledged.

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::borrow::Cow;
use std::future::Future;

use crate::engine::{Item, Outcome};
use crate::event::{DlqRecord, Record};

/// Error texts are cut to this many bytes (at a character boundary): a decode error can quote the
/// input, and a Kafka header or SQS attribute has no room for an event.
pub const MAX_ERROR_BYTES: usize = 1024;

/// A record on its way to the dead-letter queue.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub record: &'a Record,
    /// A short stable code (`invalid_json`, `unsafe_value`, ...).
    pub reason: &'a str,
    /// What went wrong, at most [`MAX_ERROR_BYTES`].
    pub error: &'a str,
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// RFC 3339 time of the dead-lettering.
    pub time: &'a str,
}

impl<'a> DeadLetter<'a> {
    pub fn new(record: &'a Record, reason: &'a str, error: &'a str, time: &'a str) -> Self {
        DeadLetter {
            record,
            reason,
            error: cut(error, MAX_ERROR_BYTES),
            event_id: None,
            event_type: None,
            time,
        }
    }

    /// The dead letters of a unit's items, in order.
    pub fn of(items: &'a [Item], time: &'a str) -> Vec<DeadLetter<'a>> {
        items
            .iter()
            .filter_map(|item| {
                let Outcome::DeadLettered { reason, error } = &item.outcome else {
                    return None;
                };
                let mut letter = DeadLetter::new(&item.record, reason, error, time);
                if let Some((id, kind)) = &item.event {
                    letter.event_id = Some(id);
                    letter.event_type = Some(kind);
                }
                Some(letter)
            })
            .collect()
    }

    /// Tries so far, this one included.
    pub fn attempts(&self) -> u32 {
        self.record.attempts.saturating_add(1)
    }

    /// The record of a dead-letter file.
    pub fn to_record(&self) -> DlqRecord {
        let mut r = DlqRecord::new(self.record, self.reason, self.error, self.time.to_owned());
        r.event_id = self.event_id.map(str::to_owned);
        r.event_type = self.event_type.map(str::to_owned);
        r
    }

    /// The metadata as `invalidator.*` name and value pairs (Kafka headers, SQS attributes), in
    /// a fixed order, without empty values.
    pub fn fields(&self) -> Vec<(&'static str, Cow<'a, str>)> {
        let p = &self.record.position;
        let carried = self.record.carried.as_deref();
        let mut out: Vec<(&'static str, Option<Cow<'a, str>>)> = vec![
            ("invalidator.reason", Some(self.reason.into())),
            ("invalidator.error", Some(self.error.into())),
            (
                "invalidator.attempts",
                Some(self.attempts().to_string().into()),
            ),
            ("invalidator.time", Some(self.time.into())),
            ("invalidator.event_id", self.event_id.map(Cow::from)),
            ("invalidator.event_type", self.event_type.map(Cow::from)),
            (
                "invalidator.source.message_id",
                p.message_id().map(Cow::from),
            ),
            (
                "invalidator.source.arn",
                carried.and_then(|c| c.source_arn.as_deref()).map(Cow::from),
            ),
            (
                "invalidator.source.topic",
                p.topic().map(|t| Cow::from(&**t)),
            ),
            (
                "invalidator.source.partition",
                p.partition().map(|n| n.to_string().into()),
            ),
            (
                "invalidator.source.offset",
                p.offset().map(|n| n.to_string().into()),
            ),
            ("invalidator.source.file", p.file().map(|f| Cow::from(&**f))),
            (
                "invalidator.source.line",
                p.line().map(|n| n.to_string().into()),
            ),
            (
                "invalidator.origin",
                self.record.origin.as_ref().map(|o| o.to_string().into()),
            ),
        ];
        if self.record.truncated {
            out.push(("invalidator.truncated", Some("true".into())));
        }
        out.into_iter()
            .filter_map(|(k, v)| Some((k, v.filter(|v| !v.is_empty())?)))
            .collect()
    }
}

/// Where dead letters go.
pub trait DeadLetterSink: Send + Sync {
    /// Writes every letter durably; returns the indexes of those that were not, with the error.
    fn send(&self, letters: &[DeadLetter<'_>])
    -> impl Future<Output = Vec<(usize, String)>> + Send;
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Carried, Position};

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aéb", 3), "aé");
    }

    #[test]
    fn every_sink_gets_the_same_fields() {
        let mut record = Record::new(b"{bad".to_vec(), Position::kafka("events", 2, 41));
        record.attempts = 2;
        record.origin = Some(Box::new(Position::file_line("old.jsonl", 7)));
        record.carried = Some(std::sync::Arc::new(Carried {
            source_arn: Some("arn:aws:sqs:eu-west-1:1:q".into()),
            ..Carried::default()
        }));
        let long = "é".repeat(MAX_ERROR_BYTES);
        let mut l = DeadLetter::new(&record, "invalid_json", &long, "2026-11-29T00:00:00Z");
        l.event_id = Some("");
        assert_eq!(l.error.len(), MAX_ERROR_BYTES, "the error is bounded");
        let names: Vec<&str> = l.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "invalidator.reason",
                "invalidator.error",
                "invalidator.attempts",
                "invalidator.time",
                "invalidator.source.arn",
                "invalidator.source.topic",
                "invalidator.source.partition",
                "invalidator.source.offset",
                "invalidator.origin",
            ],
            "empty values are left out"
        );
        let fields = l.fields();
        assert_eq!(fields[2].1, "3");
        assert_eq!(fields[8].1, "old.jsonl:7");
        let r = l.to_record();
        assert_eq!((r.attempts, r.reason.as_str()), (3, "invalid_json"));
        assert_eq!(r.payload.as_deref(), Some("{bad"));
    }
}
