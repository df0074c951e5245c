//! One payload → one [`Event`]. Accepts the native envelope (`type`/`event_type`, `id`/`event_id`,
//! `time`/`occurred_at`/`timestamp`, `source`, `data`), CloudEvents 1.0 structured JSON (including
//! `data_base64`), and an SNS notification envelope whose `Message` is one of those.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Event;
use super::common::decode_common;
use super::data::Data;
use super::fields::DataFields;

/// Longest accepted event type.
const MAX_TYPE_LEN: usize = 256;
/// Longest accepted event id.
const MAX_ID_LEN: usize = 512;
/// Longest accepted `source` (a producer name or URI): it travels in every completion notice and
/// every cascaded event, so it is bounded like the id.
const MAX_SOURCE_LEN: usize = 1024;

/// A valid event type: not empty, at most [`MAX_TYPE_LEN`] bytes, no control character.
pub(super) fn valid_type(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TYPE_LEN && !has_control(s)
}

/// A valid event id: not empty, at most [`MAX_ID_LEN`] bytes, no control character.
pub(super) fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !has_control(s)
}

/// Whether `s` has a control character ([`char::is_control`]: U+0000-U+001F, U+007F-U+009F),
/// read as bytes for the usual text: the first range and U+007F are those bytes themselves, and
/// U+0080-U+009F are written 0xC2 0x80-0x9F, so text without any of those bytes, or 0xC2, has
/// none; text with 0xC2 is read as characters.
fn has_control(s: &str) -> bool {
    let suspect = s
        .bytes()
        .fold(false, |any, b| any | (b < 0x20) | (b == 0x7f) | (b == 0xc2));
    suspect && s.chars().any(char::is_control)
}

/// A valid `source`: at most [`MAX_SOURCE_LEN`] bytes.
pub(super) fn valid_source(s: &str) -> bool {
    s.len() <= MAX_SOURCE_LEN
}

/// Why a payload is not an event. Permanent: the same bytes always fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("an event must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("the event has no `type` (or `event_type`)")]
    MissingType,
    #[error("field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("envelope: {0}")]
    InvalidEnvelope(String),
}

impl DecodeError {
    /// The stable reason code written to the dead-letter queue.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::MissingType => "missing_type",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::InvalidEnvelope(_) => "invalid_envelope",
        }
    }
}

/// Decodes one payload. `fallback_id` names the event when the producer gave no id.
pub fn decode_event(
    bytes: &[u8],
    max_bytes: usize,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    decode_event_keeping(bytes, max_bytes, &DataFields::All, fallback_id)
}

/// [`decode_event`], keeping only `fields` of `data` (what the rules read): the event is the one
/// [`decode_event`] gives with its `data` passed through [`DataFields::keep`], and every payload
/// refused there is refused here with the same error.
pub fn decode_event_keeping(
    bytes: &[u8],
    max_bytes: usize,
    fields: &DataFields,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    // Checked once here, the text is not checked again string by string while parsing.
    let text = simdutf8::basic::from_utf8(bytes).ok();
    if let Some(event) = text.and_then(|t| decode_common(t, fields, fallback_id)) {
        return Ok(event);
    }
    let value: Value = match text {
        Some(t) => serde_json::from_str(t),
        None => serde_json::from_slice(bytes),
    }
    .map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    decode_value_keeping(value, max_bytes, fields, fallback_id)
}

/// Decodes an already parsed payload (see [`decode_event`]).
pub fn decode_value(
    value: Value,
    max_bytes: usize,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    decode_value_keeping(value, max_bytes, &DataFields::All, fallback_id)
}

/// [`decode_value`], keeping only `fields` of `data` (see [`decode_event_keeping`]).
pub fn decode_value_keeping(
    value: Value,
    max_bytes: usize,
    fields: &DataFields,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotAnObject(kind_name(&value)));
    };
    if is_sns_notification(&obj) {
        let message = match obj.remove("Message") {
            Some(Value::String(m)) => m,
            _ => {
                return Err(DecodeError::InvalidEnvelope(
                    "SNS notification without a string `Message`".into(),
                ));
            }
        };
        let message_id = obj
            .get("MessageId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = message_id.unwrap_or_else(fallback_id);
        return decode_event_keeping(message.as_bytes(), max_bytes, fields, &|| id.clone());
    }
    let mut event = if obj.contains_key("specversion") {
        decode_cloudevent(obj, fallback_id)?
    } else {
        decode_native(obj, fallback_id)?
    };
    event.data = match event.data {
        Data::Whole(data) => fields.keep(data),
        kept => kept,
    };
    Ok(event)
}

/// An SNS notification as delivered to SQS (or an HTTP endpoint) without raw message delivery.
fn is_sns_notification(obj: &Map<String, Value>) -> bool {
    obj.get("Type").and_then(Value::as_str) == Some("Notification")
        && obj.contains_key("Message")
        && obj.contains_key("TopicArn")
}

fn decode_native(
    mut obj: Map<String, Value>,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    let kind = take_type(&mut obj, &["type", "event_type"])?;
    let id = take_id(&mut obj, &["id", "event_id"])?;
    let time = take_time(&obj, &["time", "occurred_at", "timestamp"]);
    let source = take_source(&obj)?;
    let data = match obj.remove("data") {
        Some(data) => data,
        // The whole object is the payload, as the producer wrote it.
        None => Value::Object(obj),
    };
    Ok(finish(kind, id, time, source, data.into(), fallback_id))
}

/// A CloudEvents `specversion` this decoder reads (1.x); both readers of a CloudEvent ask here.
pub(super) fn readable_specversion(v: &str) -> bool {
    v.starts_with("1.")
}

fn decode_cloudevent(
    mut obj: Map<String, Value>,
    fallback_id: &dyn Fn() -> String,
) -> Result<Event, DecodeError> {
    match obj.get("specversion").and_then(Value::as_str) {
        Some(v) if readable_specversion(v) => {}
        other => {
            return Err(DecodeError::InvalidField {
                field: "specversion",
                reason: format!("unsupported CloudEvents version {other:?}, expected 1.x"),
            });
        }
    }
    let kind = take_type(&mut obj, &["type"])?;
    let id = take_id(&mut obj, &["id"])?;
    let time = take_time(&obj, &["time"]);
    let source = take_source(&obj)?;
    let data = if let Some(data) = obj.remove("data") {
        data
    } else if let Some(encoded) = obj.remove("data_base64") {
        let Value::String(encoded) = encoded else {
            return Err(DecodeError::InvalidField {
                field: "data_base64",
                reason: "must be a string".into(),
            });
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| DecodeError::InvalidField {
                field: "data_base64",
                reason: e.to_string(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| DecodeError::InvalidField {
            field: "data_base64",
            reason: format!("not JSON: {e}"),
        })?
    } else {
        Value::Object(Map::new())
    };
    Ok(finish(kind, id, time, source, data.into(), fallback_id))
}

pub(super) fn finish(
    kind: Arc<str>,
    id: Option<Arc<str>>,
    time: Option<OffsetDateTime>,
    source: Option<Arc<str>>,
    data: Data,
    fallback_id: &dyn Fn() -> String,
) -> Event {
    let id_given = id.is_some();
    Event {
        id: id.unwrap_or_else(|| fallback_id().into()),
        id_given,
        kind,
        time,
        source,
        data,
    }
}

/// The event type, checked, as the shared string the event keeps (one copy out of the map).
fn take_type(obj: &mut Map<String, Value>, names: &[&str]) -> Result<Arc<str>, DecodeError> {
    let Some(value) = names.iter().find_map(|n| obj.get(*n)) else {
        return Err(DecodeError::MissingType);
    };
    match value {
        Value::String(s) if s.is_empty() => Err(DecodeError::MissingType),
        Value::String(s) if !valid_type(s) => Err(DecodeError::InvalidField {
            field: "type",
            reason: format!("must be at most {MAX_TYPE_LEN} bytes without control characters"),
        }),
        Value::String(s) => Ok(super::shared::event_type(s)),
        other => Err(DecodeError::InvalidField {
            field: "type",
            reason: format!("must be a string, found {}", kind_name(other)),
        }),
    }
}

/// The producer's id (a string, or an integer as its text), checked, as the shared string the
/// event keeps.
fn take_id(obj: &mut Map<String, Value>, names: &[&str]) -> Result<Option<Arc<str>>, DecodeError> {
    let Some(value) = names.iter().find_map(|n| obj.get(*n)) else {
        return Ok(None);
    };
    let id: Cow<'_, str> = match value {
        Value::Null => return Ok(None),
        Value::String(s) => Cow::Borrowed(s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
        other => {
            return Err(DecodeError::InvalidField {
                field: "id",
                reason: format!("must be a string or an integer, found {}", kind_name(other)),
            });
        }
    };
    if !valid_id(&id) {
        return Err(DecodeError::InvalidField {
            field: "id",
            reason: format!("must be 1 to {MAX_ID_LEN} bytes without control characters"),
        });
    }
    Ok(Some(Arc::from(&*id)))
}

/// The event time is only used for the freshness metric: an unreadable time must not stop an
/// invalidation, so it is dropped (the event is still applied).
fn take_time(obj: &Map<String, Value>, names: &[&str]) -> Option<OffsetDateTime> {
    let value = names.iter().find_map(|n| obj.get(*n))?;
    match value {
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok(),
        _ => None,
    }
}

/// `source`, at most [`MAX_SOURCE_LEN`] bytes, as the string its cascaded events share.
fn take_source(obj: &Map<String, Value>) -> Result<Option<Arc<str>>, DecodeError> {
    match obj.get("source") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !valid_source(s) => Err(DecodeError::InvalidField {
            field: "source",
            reason: format!("must be at most {MAX_SOURCE_LEN} bytes"),
        }),
        Some(Value::String(s)) => Ok(Some(super::shared::source(s))),
        Some(other) => Err(DecodeError::InvalidField {
            field: "source",
            reason: format!("must be a string, found {}", kind_name(other)),
        }),
    }
}

pub(crate) fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn decode(s: &str) -> Result<Event, DecodeError> {
        decode_event(s.as_bytes(), MAX, &|| "fallback".into())
    }

    #[test]
    fn source_is_bounded_like_the_id() {
        let event =
            |source: &str| format!(r#"{{"type":"a","id":"e","source":"{source}","data":{{}}}}"#);
        let ok = "s".repeat(MAX_SOURCE_LEN);
        assert_eq!(
            decode(&event(&ok)).unwrap().source.as_deref(),
            Some(ok.as_str())
        );
        let long = decode(&event(&"s".repeat(MAX_SOURCE_LEN + 1))).unwrap_err();
        assert_eq!(long.reason(), "invalid_field");
        assert!(long.to_string().contains("source"), "{long}");
    }

    #[test]
    fn native_with_data() {
        let e = decode(r#"{"type":"price.updated","id":"e1","time":"2026-11-22T10:00:00Z","source":"pricing","data":{"product_id":42}}"#).unwrap();
        assert_eq!(&*e.kind, "price.updated");
        assert_eq!(&*e.id, "e1");
        assert!(e.id_given);
        assert_eq!(e.source.as_deref(), Some("pricing"));
        assert_eq!(e.time.unwrap().unix_timestamp(), 1_795_341_600);
        assert_eq!(e.data, json!({"product_id": 42}));
    }

    #[test]
    fn native_aliases_and_whole_object_payload() {
        let e = decode(r#"{"event_type":"inventory.changed","event_id":7,"occurred_at":"2026-11-22T10:00:00+01:00","sku":"A-1"}"#).unwrap();
        assert_eq!(&*e.kind, "inventory.changed");
        assert_eq!(&*e.id, "7");
        assert!(e.time.is_some());
        assert_eq!(e.data["sku"], "A-1");
        assert_eq!(
            e.data["event_type"], "inventory.changed",
            "the payload is the object as written"
        );
    }

    #[test]
    fn missing_id_uses_fallback() {
        let e = decode(r#"{"type":"a"}"#).unwrap();
        assert_eq!(&*e.id, "fallback");
        assert!(!e.id_given);
    }

    #[test]
    fn unreadable_time_is_dropped_not_fatal() {
        let e = decode(r#"{"type":"a","time":"yesterday"}"#).unwrap();
        assert_eq!(e.time, None);
    }

    #[test]
    fn control_characters_are_found_as_bytes_as_they_are_as_characters() {
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            for s in [
                format!("{c}"),
                format!("ab{c}"),
                format!("{c}\u{a0}x"),
                format!("\u{c2}{c}"),
            ] {
                assert_eq!(has_control(&s), s.chars().any(char::is_control), "{s:?}");
            }
        }
    }

    #[test]
    fn cloudevents_structured() {
        let e = decode(r#"{"specversion":"1.0","id":"ce-1","source":"/pricing","type":"price.updated","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{"product_id":"p1"}}"#).unwrap();
        assert_eq!(&*e.kind, "price.updated");
        assert_eq!(&*e.id, "ce-1");
        assert_eq!(e.data, json!({"product_id": "p1"}));
    }

    #[test]
    fn cloudevents_data_base64() {
        let e = decode(r#"{"specversion":"1.0","id":"ce-2","source":"s","type":"t","data_base64":"eyJhIjoxfQ=="}"#).unwrap();
        assert_eq!(e.data, json!({"a": 1}));
    }

    #[test]
    fn cloudevents_bad_version() {
        let err = decode(r#"{"specversion":"0.3","id":"x","type":"t"}"#).unwrap_err();
        assert_eq!(err.reason(), "invalid_field");
    }

    #[test]
    fn sns_envelope_in_sqs_body() {
        let inner = r#"{"type":"review.updated","data":{"product_id":9}}"#;
        let body = json!({"Type":"Notification","MessageId":"m-1","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":inner}).to_string();
        let e = decode(&body).unwrap();
        assert_eq!(&*e.kind, "review.updated");
        assert_eq!(&*e.id, "m-1", "SNS MessageId names an event without id");
    }

    #[test]
    fn errors_have_stable_reasons() {
        assert_eq!(decode("{").unwrap_err().reason(), "invalid_json");
        assert_eq!(decode("[1]").unwrap_err().reason(), "not_an_object");
        assert_eq!(
            decode(r#"{"data":{}}"#).unwrap_err().reason(),
            "missing_type"
        );
        assert_eq!(
            decode(r#"{"type":""}"#).unwrap_err().reason(),
            "missing_type"
        );
        assert_eq!(
            decode(r#"{"type":5}"#).unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(
            decode(r#"{"type":"a","id":1.5}"#).unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(
            decode(r#"{"type":"a","source":3}"#).unwrap_err().reason(),
            "invalid_field"
        );
        assert_eq!(
            decode(r#"{"Type":"Notification","TopicArn":"x","Message":5}"#)
                .unwrap_err()
                .reason(),
            "invalid_envelope"
        );
        let err = decode_event(b"{\"type\":\"a\"}", 5, &|| "x".into()).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 12, limit: 5 });
    }

    /// Regression: the common-shape decode read a struct from a JSON array too (serde's sequence
    /// form of a struct), so `["a","e",null,null,{}]` from Kafka was an event of type `a`.
    #[test]
    fn an_array_in_the_order_of_the_fields_is_not_an_event() {
        let err = decode(r#"["price.updated","e",null,null,{"product_id":1}]"#).unwrap_err();
        assert_eq!(err.reason(), "not_an_object");
    }

    #[test]
    fn non_utf8_is_invalid_json() {
        let err = decode_event(b"{\"type\":\"\xff\"}", MAX, &|| "x".into()).unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
    }

    #[test]
    fn deep_json_is_rejected_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode(&deep).unwrap_err().reason(), "invalid_json");
    }
}
