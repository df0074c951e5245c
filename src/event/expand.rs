//! Document expansion: one input unit (a JSON Lines line, a whole JSON document) → the payloads it
//! holds. A Lambda `SnsEvent`/`SqsEvent` gives one per record, a dead-letter record its original
//! payload, a JSON array its elements, anything else is one event.
//!
//! Pure, like all of `event/`: no I/O, no clock. It splits and checks sizes; decoding an event is
//! [`super::decode`]'s, and the record types are [`super::record`]'s.

use std::sync::Arc;

use aws_lambda_events::event::{sns::SnsEvent, sqs::SqsEvent};
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use super::DecodeError;
use super::binary::binary_envelope;
use super::position::Position;
use super::record::{DLQ_MARKER, DlqKafka, DlqRecord, Record};

/// What one input line or document turned into.
#[derive(Debug)]
pub enum Expanded {
    /// An event payload already parsed as JSON: decode it with [`super::decode_value`].
    Parsed { value: Value, record: Record },
    /// A payload still to be decoded with [`super::decode_event`] (an SNS `Message`, an SQS body, the
    /// payload of a DLQ record).
    Raw(Record),
    /// A payload that failed before it could be decoded. The error is boxed (it is rare): an
    /// `Expanded` is moved whole through a unit, and this keeps it within 128 bytes.
    Failed {
        record: Record,
        error: Box<DecodeError>,
    },
}

impl Expanded {
    pub fn failed(record: Record, error: DecodeError) -> Self {
        Expanded::Failed {
            record,
            error: Box::new(error),
        }
    }
}

/// Splits one input unit (a JSON Lines line, or a whole JSON document) into the payloads it holds:
/// a Lambda `SnsEvent`/`SqsEvent` gives one per record, a DLQ record gives its original payload, a
/// JSON array gives its elements, anything else is one event.
pub fn expand_document(
    bytes: impl Into<Bytes>,
    position: Position,
    max_bytes: usize,
) -> Vec<Expanded> {
    let mut out = Vec::new();
    expand_into(bytes.into(), position, max_bytes, &mut out);
    out
}

/// [`expand_document`], appending to `out`: a line of one event costs no vector of its own.
pub fn expand_into(bytes: Bytes, position: Position, max_bytes: usize, out: &mut Vec<Expanded>) {
    if one_event(&bytes, max_bytes) {
        // Decoded from its bytes by the unit ([`super::decode_event`]), without a JSON tree here.
        out.push(Expanded::Raw(Record::new(bytes, position)));
    } else {
        out.extend(expand_parsed(bytes, position, max_bytes));
    }
}

/// [`expand_document`] of what may be more than one event: parsed, then taken apart by its shape.
fn expand_parsed(bytes: Bytes, position: Position, max_bytes: usize) -> Vec<Expanded> {
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return vec![Expanded::failed(
                Record::new(bytes, position),
                DecodeError::InvalidJson(e.to_string()),
            )];
        }
    };
    expand_value(value, bytes, position, max_bytes)
}

/// True when `bytes` can only be one event (or not JSON at all), which [`super::decode_event`]
/// decodes with the same result as this module would: an object within the size limit, without
/// the key of a Lambda document (`Records`) or of a dead-letter record. Those keys would appear
/// literally: with no `\u` escape anywhere, a key cannot spell them otherwise. Anything else goes
/// the general way.
fn one_event(bytes: &[u8], max_bytes: usize) -> bool {
    let starts_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    starts_object && bytes.len() <= max_bytes && NOT_ONE_EVENT.find(bytes).is_none()
}

/// What [`one_event`] looks for, all in one pass over the bytes (SIMD where the CPU has it: one
/// `memmem` pass per pattern was 4.4% of a plain replay's instructions, this is 3.0%); built once.
static NOT_ONE_EVENT: std::sync::LazyLock<aho_corasick::packed::Searcher> =
    std::sync::LazyLock::new(|| {
        aho_corasick::packed::Searcher::new([&b"\\u"[..], b"\"Records\"", DLQ_KEY])
            .expect("three short patterns are well within the packed searcher's limits")
    });

/// The key of a dead-letter record, quoted.
const DLQ_KEY: &[u8] = b"\"invalidator_dlq\"";

/// `value`, parsed from `bytes`, by its shape.
fn expand_value(value: Value, bytes: Bytes, position: Position, max_bytes: usize) -> Vec<Expanded> {
    match value {
        Value::Object(ref obj) if obj.contains_key("Records") => {
            expand_records(value, bytes, position)
        }
        Value::Object(ref obj) if obj.contains_key(DLQ_MARKER) => {
            expand_dlq(value, bytes, position, max_bytes)
        }
        Value::Array(items) => expand_array(items, &bytes, &position, max_bytes),
        // One event: the limit applies to it (envelopes above are checked per payload).
        _ if bytes.len() > max_bytes => vec![too_large(bytes, position, max_bytes)],
        _ => vec![Expanded::Parsed {
            value,
            record: Record::new(bytes, position),
        }],
    }
}

/// A Lambda SNS or SQS event document: its records, each still to be decoded.
fn expand_records(value: Value, bytes: Bytes, position: Position) -> Vec<Expanded> {
    let record = Record::new(bytes, position);
    match expand_lambda(value, &record.position) {
        Ok(records) => records.into_iter().map(Expanded::Raw).collect(),
        Err(error) => vec![Expanded::failed(record, error)],
    }
}

/// A dead-letter record: its original payload, with its attempts, first position, and the Kafka
/// key and headers it came with (a CloudEvents binary-mode event is rebuilt from them).
fn expand_dlq(value: Value, bytes: Bytes, position: Position, max_bytes: usize) -> Vec<Expanded> {
    let parsed: Result<DlqRecord, _> = serde_json::from_value(value);
    let result = parsed
        .map_err(|e| DecodeError::InvalidEnvelope(format!("DLQ record: {e}")))
        .and_then(|dlq| {
            let payload = dlq.payload_bytes()?;
            let carried = dlq.kafka.as_ref().map(DlqKafka::carried).transpose()?;
            Ok(Record {
                payload: payload.into(),
                position: position.clone(),
                attempts: dlq.attempts,
                origin: Some(Box::new(dlq.origin.unwrap_or(dlq.source))),
                truncated: false,
                carried: carried.map(Arc::new),
            })
        });
    let record = match result {
        Ok(record) => record,
        Err(error) => {
            return vec![Expanded::failed(Record::new(bytes, position), error)];
        }
    };
    let headers = record.carried.as_deref().map(|c| &c.headers[..]);
    match headers.and_then(|h| binary_envelope(h, &record.payload, max_bytes)) {
        None => vec![Expanded::Raw(record)],
        Some(Ok(value)) => vec![Expanded::Parsed { value, record }],
        Some(Err(error)) => vec![Expanded::failed(record, error)],
    }
}

/// A JSON array: each element is an event (position `[i]`), or a nested document expanded in turn.
/// Each element's record holds its bytes as they are in the input (`array`), so that its dead
/// letter is byte-exact.
fn expand_array(
    items: Vec<Value>,
    array: &[u8],
    position: &Position,
    max_bytes: usize,
) -> Vec<Expanded> {
    let raw: Vec<&RawValue> = serde_json::from_slice(array).unwrap_or_default();
    items
        .into_iter()
        .enumerate()
        .flat_map(|(i, item)| {
            let bytes = Bytes::from(match raw.get(i) {
                Some(r) => r.get().as_bytes().to_vec(),
                // Parsed once already: this does not happen; re-serialize rather than lose it.
                None => serde_json::to_vec(&item).unwrap_or_default(),
            });
            let pos = position.with_message_id(&format!("[{i}]"));
            if bytes.len() > max_bytes {
                return vec![too_large(bytes, pos, max_bytes)];
            }
            match item {
                // Nested documents (a list of Lambda events) expand too.
                Value::Object(ref o) if o.contains_key("Records") || o.contains_key(DLQ_MARKER) => {
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

/// A payload over `limit` bytes.
fn too_large(bytes: Bytes, position: Position, limit: usize) -> Expanded {
    let error = DecodeError::TooLarge {
        size: bytes.len(),
        limit,
    };
    Expanded::failed(Record::new(bytes, position), error)
}

/// The records of a Lambda SNS or SQS event document. `Records` that is not a list is a broken
/// envelope, not an empty one: the document is dead-lettered, not dropped unseen.
fn expand_lambda(value: Value, position: &Position) -> Result<Vec<Record>, DecodeError> {
    let Some(records) = value.get("Records").and_then(Value::as_array) else {
        return Err(DecodeError::InvalidEnvelope(
            "`Records` must be a list of Lambda SNS or SQS records".into(),
        ));
    };
    let first = records.first();
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
        // One event: left to the unit's decode, which reads it once.
        let out = expand_document(br#"{"type":"a"}"#.to_vec(), pos(), MAX);
        assert!(
            matches!(&out[..], [Expanded::Raw(record)] if record.payload[..] == br#"{"type":"a"}"#[..])
        );
        // One event that the general way parses: not parsed again.
        let out = expand_document(br#"{"type":"a","note":"\u00e9"}"#.to_vec(), pos(), MAX);
        assert!(matches!(&out[..], [Expanded::Parsed { .. }]), "{out:?}");
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
            r.position.message_id(),
            Some("059f36b4-87a3-44ab-83d2-661975830a7d")
        );
        assert_eq!(r.position.file().map(|f| &**f), Some("in.jsonl"));
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
        assert_eq!(&*e.kind, "price.updated");
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
            [Expanded::Failed { error, .. }] if matches!(**error, DecodeError::InvalidEnvelope(_))
        ));
    }

    /// Regression (found by tests/hostile_replay.rs): a document whose `Records` was not a list
    /// gave no record at all, so replay neither counted nor dead-lettered it.
    #[test]
    fn records_that_are_not_a_list_are_a_broken_envelope_not_nothing() {
        for doc in [
            r#"{"Records":null}"#,
            r#"{"Records":5}"#,
            r#"{"Records":{"type":"a"}}"#,
        ] {
            let out = expand_document(doc.as_bytes().to_vec(), pos(), MAX);
            assert!(
                matches!(
                    &out[..],
                    [Expanded::Failed { error, record }]
                        if matches!(**error, DecodeError::InvalidEnvelope(_))
                            && record.payload == doc.as_bytes()
                ),
                "{doc}: {out:?}"
            );
        }
        // An empty list is an empty batch.
        assert!(expand_document(br#"{"Records":[]}"#.to_vec(), pos(), MAX).is_empty());
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
            assert_eq!(back.origin.as_deref(), Some(&Position::file_line("x", 9)));
            assert_eq!(back.position, Position::file_line("dlq.jsonl", 1));
        }
    }

    #[test]
    fn a_dlq_record_keeps_the_kafka_key_and_headers_and_rebuilds_a_binary_mode_event() {
        let mut rec = Record::new(br#"{"sku":"A1"}"#.to_vec(), Position::default());
        let headers: Vec<(String, Option<Vec<u8>>)> = vec![
            ("ce_specversion".into(), Some(b"1.0".to_vec())),
            ("ce_type".into(), Some(b"price.updated".to_vec())),
            ("trace".into(), Some(vec![0xff, 0x00])),
            ("empty".into(), None),
        ];
        rec.carried = Some(Arc::new(crate::event::Carried {
            key: Some(bytes::Bytes::from_static(b"sku-A1")),
            headers: headers.clone(),
            ..Default::default()
        }));
        let dlq = DlqRecord::new(&rec, "no_rule", "none", "2026-11-30T00:00:00Z".into());
        let line = serde_json::to_vec(&dlq).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(r#"{"name":"ce_type","value":"price.updated"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"name":"trace","value_base64":"/wA="}"#),
            "{text}"
        );
        assert!(text.contains(r#"{"name":"empty"}"#), "{text}");
        let out = expand_document(line, Position::file_line("dlq.jsonl", 1), MAX);
        let [Expanded::Parsed { value, record }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(value["type"], "price.updated");
        assert_eq!(value["data"]["sku"], "A1");
        let carried = record.carried.as_deref().unwrap();
        assert_eq!(carried.key.as_deref(), Some(&b"sku-A1"[..]));
        assert_eq!(carried.headers, headers);
        assert_eq!(record.payload[..], br#"{"sku":"A1"}"#[..]);
    }

    /// Records are moved whole through a unit, as `Expanded`: within 128 bytes they are copied
    /// inline, not through `memcpy`.
    #[test]
    fn an_expanded_record_stays_within_128_bytes() {
        assert!(std::mem::size_of::<Expanded>() <= 128);
    }

    #[test]
    fn the_dlq_key_is_the_marker_quoted() {
        assert_eq!(DLQ_KEY, format!("\"{DLQ_MARKER}\"").as_bytes());
    }

    #[test]
    fn a_line_that_can_only_be_one_event_skips_the_tree() {
        let one = |s: &str| {
            matches!(
                &expand_document(s.as_bytes().to_vec(), pos(), MAX)[..],
                [Expanded::Raw(_)]
            )
        };
        assert!(
            !one(r#" {"type":"a","data":{"Records":1}}"#),
            "the key spelled out anywhere: the general way"
        );
        assert!(one(r#"{"type":"a","data":{}}"#));
        assert!(!one(r#"{"Rec\u006frds":[]}"#), "an escape: the general way");
        assert!(
            !one(r#"{"type":"a","data":{"invalidator_dlq":1}}"#),
            "the dead-letter key anywhere: the general way"
        );
        assert!(!one(r#"[{"type":"a"}]"#));
    }

    #[test]
    fn array_elements_keep_their_input_bytes() {
        let doc = b"[ {\"type\" : \"a\",\"n\":1.50} ,\n{\"type\":\"b\",\"s\":\"\\u00e9\"}]";
        let out = expand_document(doc.to_vec(), pos(), MAX);
        let payloads: Vec<&[u8]> = out
            .iter()
            .map(|e| match e {
                Expanded::Parsed { record, .. } => &record.payload[..],
                other => panic!("{other:?}"),
            })
            .collect();
        // As written: spaces, `1.50` and the `\u00e9` escape kept, not re-serialized.
        assert_eq!(payloads[0], br#"{"type" : "a","n":1.50}"#);
        assert_eq!(payloads[1], br#"{"type":"b","s":"\u00e9"}"#);
    }

    #[test]
    fn array_document() {
        let out = expand_document(br#"[{"type":"a"},{"type":"b"}]"#.to_vec(), pos(), MAX);
        assert_eq!(out.len(), 2);
        let Expanded::Parsed { record, .. } = &out[1] else {
            panic!()
        };
        assert_eq!(record.position.message_id(), Some("[1]"));
    }
}
