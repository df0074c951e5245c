//! The texts of the hostile input: valid events in every accepted shape, events dead-lettered by
//! construction (with the reasons they may get), Lambda and dead-letter documents, blank lines.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::input::{Expect, MAX_EVENT_BYTES};

pub const SAMPLES: &str = include_str!("../../samples/events.jsonl");
pub const SQS_FIXTURE: &str = include_str!("../fixtures/sqs-event.json");
pub const SNS_FIXTURE: &str = include_str!("../fixtures/sns-event.json");
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

pub const INVALID_JSON: &[&str] = &["invalid_json"];
pub const TEMPLATE: &[&str] = &["template_error", "unsafe_value"];

pub const VALID_SHAPES: u8 = 10;
pub const BLANKS: &[(&str, bool)] = &[
    ("", false),
    (" ", false),
    ("\t \t", false),
    ("\r", false),
    (" \r", false),
    ("\x0c", false),
    ("\x0b", true),
    ("\u{a0}", true),
    ("\0", true),
];
pub const SCALARS: &[&str] = &[
    "1",
    "\"k.changed\"",
    "null",
    "true",
    "[]",
    "-0.0e+5",
    "[{\"type\":\"k.changed\",\"data\":{\"n\":1}}]",
];
pub const SEPARATORS: &[&str] = &[",", " , ", ",\t", "\r,\r", ", \t"];
pub const DEEP: usize = 10;
/// Lambda and dead-letter documents: 5 holding events, then the broken ones.
pub const ENVELOPES: usize = 5 + BROKEN_ENVELOPES.len();
/// Broken envelopes, and whether they are a dead letter (an empty batch is no record).
pub const BROKEN_ENVELOPES: &[(&str, &str, bool)] = &[
    (
        "a broken dead letter",
        r#"{"invalidator_dlq":1,"reason":5}"#,
        true,
    ),
    ("no Records", r#"{"Records":[]}"#, false),
    (
        "Records of S3",
        r#"{"Records":[{"eventSource":"aws:s3"}]}"#,
        true,
    ),
    (
        "an SQS record without body",
        r#"{"Records":[{"eventSource":"aws:sqs","messageId":"m"}]}"#,
        true,
    ),
    ("Records not a list", r#"{"Records":null}"#, true),
    (
        "Records an object",
        r#"{"Records":{"type":"k.changed","id":"r","data":{"n":1}}}"#,
        true,
    ),
];
pub const BAD_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
];

/// The id of the `k`th valid event as written by `shape` (shape 7 writes an integer).
pub fn valid_id(shape: u8, k: u64) -> Value {
    match shape {
        7 => json!(7_000_000 + k),
        9 => json!(format!("valid-{k:05}-é€😀")),
        _ => json!(format!("valid-{k:05}")),
    }
}

/// A valid `k.changed` event for `n` in one of the accepted shapes.
pub fn valid(shape: u8, id: &Value, n: u64) -> String {
    let ns = n.to_string();
    match shape {
        0 => json!({"type": "k.changed", "id": id, "data": {"n": ns}}).to_string(),
        1 => json!({"event_type": "k.changed", "event_id": id,
            "occurred_at": "2026-03-02T08:00:00Z", "data": {"n": n}})
        .to_string(),
        // No `data`: the whole object is the payload.
        2 => json!({"type": "k.changed", "id": id, "n": ns}).to_string(),
        3 => json!({"specversion": "1.0", "type": "k.changed", "id": id, "source": "/fuzz",
            "data": {"n": ns}})
        .to_string(),
        4 => json!({"specversion": "1.0", "type": "k.changed", "id": id, "source": "/fuzz",
            "data_base64": base64::engine::general_purpose::STANDARD
                .encode(json!({"n": ns}).to_string())})
        .to_string(),
        // Odd fields that are not the rules' business: a time that is not one, NULs and emoji
        // escaped, numbers at the edge of f64.
        5 => format!(
            r#"{{"type":"k.changed","id":{id},"time":5,"source":null,"x":[null,{{"\u0000":"\u0000"}}],"data":{{"n":"{ns}","o":{{"d":[1.5e300,-0,"\ud83d\ude00"]}}}}}}"#
        ),
        6 => json!({"Type": "Notification", "MessageId": format!("sns-{n}"),
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": valid(0, id, n)})
        .to_string(),
        // JSON whitespace (tab, CR) inside the object.
        8 => format!(
            "{{ \"type\" :\t\"k.changed\" ,\r\"id\" : {id} , \"data\" : {{ \"n\" : {n} }} }}"
        ),
        _ => valid(0, id, n),
    }
}

/// Events that are dead-lettered whatever the shape around them, with the reasons they may get.
/// `{id}` is replaced by a unique id, `{n}` by a number, `{xN}` by N times `x` (one more than the
/// longest type, id, source or value accepted).
pub const ODD: &[(&str, &[&str])] = &[
    (
        r#"{"type":5,"id":{id},"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"","id":{id},"data":{"n":"{n}"}}"#,
        &["missing_type"],
    ),
    (r#"{"id":{id},"data":{"n":"{n}"}}"#, &["missing_type"]),
    (r#"{}"#, &["missing_type"]),
    (
        r#"{"type":"k.changed\u0007","id":{id},"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":1.5,"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":[{id}],"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":"","data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":"a\nb","data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"source":3,"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"specversion":"0.3","type":"k.changed","id":{id},"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"specversion":"1.0","type":"k.changed","id":{id},"data_base64":"!!"}"#,
        &["invalid_field"],
    ),
    (
        r#"{"specversion":"1.0","type":"k.changed","id":{id},"data_base64":"bm90IGpzb24="}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":"{x513}","data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"{x257}","id":{id},"data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"source":"{x1025}","data":{"n":"{n}"}}"#,
        &["invalid_field"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":true}}"#,
        TEMPLATE,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":1.5}}"#,
        TEMPLATE,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":null}}"#,
        TEMPLATE,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":{"a":1}}}"#,
        TEMPLATE,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":[1]}}"#,
        TEMPLATE,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":123456789012345678901234567890}}"#,
        TEMPLATE,
    ),
    (r#"{"type":"k.changed","id":{id},"data":"{n}"}"#, TEMPLATE),
    (r#"{"type":"k.changed","id":{id},"data":null}"#, TEMPLATE),
    (r#"{"type":"k.changed","id":{id}}"#, TEMPLATE),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"*"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"{n}*"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"[a]"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"a b"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"../x"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":""}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"{n}\r\nUNLINK x"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"é"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"{x129}"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":"\u0000"}}"#,
        &["unsafe_value"],
    ),
    (
        r#"{"Type":"Notification","TopicArn":"a","MessageId":{id},"Message":5}"#,
        &["invalid_envelope"],
    ),
    (
        r#"{"Type":"Notification","TopicArn":"a","MessageId":{id},"Message":"{n"}"#,
        INVALID_JSON,
    ),
    (
        r#"{"type":"k.changed","id":{id},"x":"\ud800","data":{"n":"{n}"}}"#,
        INVALID_JSON,
    ),
    (
        r#"{"type":"k.changed","id":{id},"data":{"n":1e400}}"#,
        INVALID_JSON,
    ),
];

/// `ODD[i]` with a unique id and `n`.
pub fn odd(i: usize, k: u64) -> (String, &'static [&'static str]) {
    let (text, reasons) = ODD[i];
    let mut text = text
        .replace("{id}", &format!("\"odd-{k:05}\""))
        .replace("{n}", &k.to_string());
    for len in [129, 257, 513, 1025] {
        text = text.replace(&format!("{{x{len}}}"), &"x".repeat(len));
    }
    (text, reasons)
}

/// A valid event of exactly `MAX_EVENT_BYTES + delta` bytes (padded in an unused field).
pub fn sized(delta: i64, id: &Value, n: u64) -> (String, Expect) {
    let target = (MAX_EVENT_BYTES as i64 + delta) as usize;
    let bare = json!({"type": "k.changed", "id": id, "data": {"n": n, "pad": ""}}).to_string();
    let pad = "p".repeat(target - bare.len());
    let text = json!({"type": "k.changed", "id": id, "data": {"n": n, "pad": pad}}).to_string();
    assert_eq!(text.len(), target);
    let expect = if delta <= 0 {
        Expect::Applied(n)
    } else {
        Expect::Dead(&["too_large"])
    };
    (text, expect)
}

/// A one-line Lambda document from `fixture` with one record per `(id, text)`, the text put at
/// `text_at` and the id at `id_at` (paths of keys in the fixture's first record).
pub fn lambda(
    fixture: &str,
    id_at: &[&str],
    text_at: &[&str],
    records: &[(String, String)],
) -> String {
    fn at<'v>(mut v: &'v mut Value, path: &[&str]) -> &'v mut Value {
        for p in path {
            v = &mut v[*p];
        }
        v
    }
    let mut doc: Value = serde_json::from_str(fixture).expect("fixture");
    let template = doc["Records"][0].clone();
    let out: Vec<Value> = records
        .iter()
        .map(|(id, text)| {
            let mut r = template.clone();
            *at(&mut r, id_at) = json!(id);
            *at(&mut r, text_at) = json!(text);
            r
        })
        .collect();
    doc["Records"] = Value::Array(out);
    doc.to_string()
}

/// A dead-letter record (format 1) of `payload`, tried twice before.
pub fn dlq_record(payload: &[u8]) -> String {
    let mut rec = json!({"invalidator_dlq": 1, "reason": "template_error", "error": "e",
        "attempts": 2, "source": {"file": "old.jsonl", "line": 9},
        "time": "2026-03-03T09:00:10Z"});
    match std::str::from_utf8(payload) {
        Ok(s) => rec["payload"] = json!(s),
        Err(_) => {
            rec["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(payload))
        }
    }
    rec.to_string()
}
