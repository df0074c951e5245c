//! CloudEvents binary content mode over Kafka: the event's attributes in `ce_*` headers, its `data`
//! the payload. Read by the worker and by `replay` (a DLQ record keeps the headers it came with).
//!
//! Pure, like all of `event/`.

use serde_json::{Map, Value};

use super::DecodeError;

/// CloudEvents binary content mode: `ce_specversion` and `ce_type` headers make the message an event
/// whose attributes are the `ce_*` headers and whose `data` is the payload. `None` when the message
/// is not in binary mode (the payload is then the whole event).
pub fn binary_envelope(
    headers: &[(String, Option<Vec<u8>>)],
    payload: &[u8],
    max_bytes: usize,
) -> Option<Result<Value, DecodeError>> {
    let has = |k: &str| headers.iter().any(|(h, _)| h == k);
    if !(has("ce_specversion") && has("ce_type")) {
        return None;
    }
    Some((|| {
        if payload.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: max_bytes,
            });
        }
        let mut envelope = Map::new();
        for (k, v) in headers {
            let Some(name) = k.strip_prefix("ce_") else {
                continue;
            };
            let v = v.as_deref().unwrap_or_default();
            let v = std::str::from_utf8(v)
                .map_err(|_| DecodeError::InvalidEnvelope(format!("header {k} is not UTF-8")))?;
            envelope.insert(name.to_owned(), Value::String(v.to_owned()));
        }
        let data: Value = serde_json::from_slice(payload)
            .map_err(|e| DecodeError::InvalidJson(format!("CloudEvents binary data: {e}")))?;
        envelope.insert("data".into(), data);
        Ok(Value::Object(envelope))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn cloudevents_binary_mode_builds_the_envelope_from_headers() {
        let h = headers(&[
            ("ce_specversion", "1.0"),
            ("ce_type", "price.updated"),
            ("ce_id", "e-1"),
            ("ce_source", "pricing"),
            ("traceparent", "x"),
        ]);
        let v = binary_envelope(&h, br#"{"sku":"A1"}"#, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(v["type"], "price.updated");
        assert_eq!(v["id"], "e-1");
        assert_eq!(v["data"]["sku"], "A1");
        assert!(v.get("traceparent").is_none());
        let e = crate::event::decode_value(v, 1024, &|| "fallback".into()).unwrap();
        assert_eq!(&*e.kind, "price.updated");
        assert_eq!(&*e.id, "e-1");
        assert_eq!(e.data["sku"], "A1");
    }

    #[test]
    fn binary_mode_failures_are_permanent_decode_errors() {
        let h = headers(&[("ce_specversion", "1.0"), ("ce_type", "price.updated")]);
        let e = binary_envelope(&h, b"not json", 1024).unwrap().unwrap_err();
        assert_eq!(e.reason(), "invalid_json");
        let e = binary_envelope(&h, &[b'1'; 100], 10).unwrap().unwrap_err();
        assert_eq!(e.reason(), "too_large");
        assert!(binary_envelope(&headers(&[("ce_id", "x")]), b"{}", 10).is_none());
    }
}
