//! Records of a dead-letter topic read back as the records they were.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::message::BorrowedMessage;

use crate::event::{DecodeError, Expanded, Position, PositionFields, Record};
use crate::source::kafka::{Input, TopicNames};

/// The record for the engine; a dead letter as its original ([`as_original`]).
pub(super) fn original(
    m: &BorrowedMessage<'_>,
    topics: &mut TopicNames,
    max_bytes: usize,
) -> Expanded {
    let mut input = Input::from_message(m, topics, max_bytes);
    match as_original(&mut input.record) {
        Letter::No | Letter::Whole => input.into_expanded(),
        Letter::Cut(size) => Expanded::failed(
            input.record,
            DecodeError::TooLarge {
                size,
                limit: max_bytes,
            },
        ),
    }
}

/// What a record of a dead-letter topic was.
#[derive(Debug, PartialEq)]
enum Letter {
    /// Not a dead letter.
    No,
    Whole,
    /// Cut for its size: the original had this many bytes.
    Cut(usize),
}

/// Takes the `invalidator.*` headers of a dead letter off `record`, and its attempts, first
/// position and cut from them.
fn as_original(record: &mut Record) -> Letter {
    let Some(carried) = record.carried.as_mut().map(Arc::make_mut) else {
        return Letter::No;
    };
    let ours: BTreeMap<String, String> = carried
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("invalidator."))
        .map(|(k, v)| {
            let v = v.as_deref().unwrap_or_default();
            (k.clone(), String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    if !ours.contains_key("invalidator.reason") {
        return Letter::No;
    }
    carried
        .headers
        .retain(|(k, _)| !k.starts_with("invalidator."));
    if carried.key.is_none() && carried.headers.is_empty() {
        record.carried = None;
    }
    let get = |k: &str| ours.get(k).map(String::as_str);
    record.attempts = get("invalidator.attempts")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let origin = Position::from(PositionFields {
        topic: get("invalidator.source.topic").map(Into::into),
        partition: get("invalidator.source.partition").and_then(|p| p.parse().ok()),
        offset: get("invalidator.source.offset").and_then(|o| o.parse().ok()),
        file: get("invalidator.source.file").map(Into::into),
        line: get("invalidator.source.line").and_then(|l| l.parse().ok()),
        message_id: get("invalidator.source.message_id").map(str::to_owned),
    });
    if origin != Position::default() {
        record.origin = Some(Box::new(origin));
    }
    if get("invalidator.truncated") == Some("true") {
        record.truncated = true;
        let size = get("invalidator.payload_bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or(record.payload.len());
        return Letter::Cut(size);
    }
    Letter::Whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Carried;

    fn header(k: &str, v: &str) -> (String, Option<Vec<u8>>) {
        (k.to_owned(), Some(v.as_bytes().to_vec()))
    }

    fn letter(headers: Vec<(String, Option<Vec<u8>>)>) -> Record {
        let mut r = Record::new(b"{\"type\":\"x\"}".to_vec(), Position::default());
        r.carried = Some(Arc::new(Carried {
            key: Some(bytes::Bytes::from_static(b"sku-1")),
            headers,
            ..Carried::default()
        }));
        r
    }

    #[test]
    fn a_dead_letter_is_read_back_as_its_original() {
        let mut r = letter(vec![
            header("ce_type", "price.updated"),
            header("invalidator.reason", "unsafe_value"),
            header("invalidator.attempts", "3"),
            header("invalidator.source.topic", "prices"),
            header("invalidator.source.partition", "2"),
            header("invalidator.source.offset", "41"),
        ]);
        assert_eq!(as_original(&mut r), Letter::Whole);
        assert_eq!(r.attempts, 3);
        let origin = r.origin.clone().unwrap();
        assert_eq!(origin.to_string(), "prices/2@41");
        let carried = r.carried.as_deref().unwrap();
        assert_eq!(carried.headers, vec![header("ce_type", "price.updated")]);
        assert_eq!(carried.key.as_deref(), Some(&b"sku-1"[..]));
    }

    #[test]
    fn a_cut_letter_stays_dead_and_other_records_are_untouched() {
        let mut r = letter(vec![
            header("invalidator.reason", "too_large"),
            header("invalidator.truncated", "true"),
            header("invalidator.payload_bytes", "2000000"),
        ]);
        assert_eq!(as_original(&mut r), Letter::Cut(2_000_000));
        assert!(r.truncated);
        // Ours only when it says why it died: a producer's own `invalidator.` header is kept.
        let mut plain = letter(vec![header("invalidator.trace", "t")]);
        let before = plain.clone();
        assert_eq!(as_original(&mut plain), Letter::No);
        assert_eq!(plain, before);
    }
}
