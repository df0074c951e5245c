//! Property tests for the event decoder (`src/event/decode.rs`, `src/event/record.rs`).
//!
//! Properties:
//! - arbitrary bytes (non-UTF-8, JSON-ish, envelope-ish, huge, deeply nested) never panic, neither in
//!   `decode_event` nor in `expand_document`; every failure carries one of the stable reason codes, a
//!   decoded event satisfies the envelope invariants, and decoding is deterministic;
//! - a generated native event (random type/id/data, with or without aliases) round-trips type, id
//!   and data, and so does the same event as CloudEvents structured JSON (`data` or `data_base64`), as
//!   an SNS notification envelope, as the `body` of an SQS Lambda event and as the `Message` of an SNS
//!   Lambda event (shapes from `tests/fixtures/`);
//! - the common-shape decode answers as the general path, and so does the decode that keeps only
//!   some fields of `data`, as the whole event pruned of the others, on generated, repeated and
//!   mutated (byte-flipped) payloads, native and CloudEvents (their `specversion` first, as the
//!   SDKs write them, and in name order);
//! - payloads over `max_bytes` give `too_large`;
//! - a `DlqRecord` written as a JSON line and read back with `expand_document` gives the byte-exact
//!   payload, `attempts` incremented and the origin kept.

use base64::Engine as _;
use invalidator::event::{
    DataFields, DecodeError, DlqRecord, Expanded, Position, PositionFields, Record, decode_event,
    decode_event_keeping, decode_value, expand_document,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

const MAX: usize = 1 << 20;
const FALLBACK: &str = "fallback";
const REASONS: &[&str] = &[
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_type",
    "invalid_field",
    "invalid_envelope",
];
const SQS_FIXTURE: &str = include_str!("fixtures/sqs-event.json");
const SNS_FIXTURE: &str = include_str!("fixtures/sns-event.json");

/// Default case count, and no regression files written next to the tests.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

fn config_cases(cases: u32) -> Config {
    Config { cases, ..config() }
}

fn fallback() -> String {
    FALLBACK.to_string()
}

fn decode(bytes: &[u8]) -> Result<invalidator::event::Event, DecodeError> {
    decode_event(bytes, MAX, &fallback)
}

/// Every invariant a decode result must satisfy, whatever the input.
fn check_result(
    result: &Result<invalidator::event::Event, DecodeError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(e) => {
            prop_assert!(!e.kind.is_empty());
            prop_assert!(e.kind.len() <= 256, "type of {} bytes", e.kind.len());
            prop_assert!(!e.kind.chars().any(char::is_control), "{:?}", e.kind);
            prop_assert!(!e.id.is_empty());
            if e.id_given {
                prop_assert!(e.id.len() <= 512);
                prop_assert!(!e.id.chars().any(char::is_control), "{:?}", e.id);
            }
        }
        Err(err) => {
            prop_assert!(
                REASONS.contains(&err.reason()),
                "unknown reason {:?}",
                err.reason()
            );
            // The message must render without panicking.
            let _ = err.to_string();
        }
    }
    Ok(())
}

/// Decodes and checks; decoding twice must give the same answer (errors are permanent).
fn check_bytes(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    let first = decode_event(bytes, max, &fallback);
    check_result(&first)?;
    let second = decode_event(bytes, max, &fallback);
    prop_assert_eq!(&first, &second);
    if bytes.len() > max {
        prop_assert_eq!(
            first,
            Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: max
            })
        );
    }
    Ok(())
}

/// `expand_document` never panics, and everything it yields decodes or fails with a stable reason.
fn check_expand(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    let pos = Position::file_line("in.jsonl", 1);
    for item in expand_document(bytes.to_vec(), pos, max) {
        match item {
            Expanded::Parsed { value, record } => {
                let id = record.position.fallback_id();
                check_result(&decode_value(value, max, &|| id.clone()))?;
            }
            Expanded::Raw(record) => {
                let id = record.position.fallback_id();
                check_result(&decode_event(&record.payload, max, &|| id.clone()))?;
            }
            Expanded::Failed { error, .. } => {
                prop_assert!(REASONS.contains(&error.reason()), "{:?}", error);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Strings that are hard on a decoder: any unicode, JSON syntax, escapes, control characters.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z0-9._:-]{0,12}",
        2 => "[\\x00-\\x1f\"\\\\{}\\[\\]:,. \u{7f}\u{85}\u{2028}\u{feff}é€😀a-z]{0,16}",
        1 => Just(String::new()),
    ]
}

/// Finite numbers that survive a JSON round trip exactly (no `float_roundtrip` feature here).
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0u32..5).prop_map(|(m, e)| json!(f64::from(m) / f64::from(1u32 << e))),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid event type: non-empty, at most 256 bytes, no control characters.
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z]{1,10}\\.[a-z_]{1,12}",
        1 => any::<String>().prop_filter_map("a valid type", |s| {
            let mut t: String = s.chars().filter(|c| !c.is_control()).collect();
            while t.len() > 256 {
                t.pop();
            }
            (!t.is_empty()).then_some(t)
        }),
        1 => "[^\\x00-\\x1f\\x7f-\\x9f]{250,256}".prop_filter_map("at most 256 bytes", |mut t: String| {
            while t.len() > 256 {
                t.pop();
            }
            (!t.is_empty()).then_some(t)
        }),
    ]
}

/// A producer id as written in the JSON, and the id the decoder must give for it.
#[derive(Debug, Clone)]
enum GivenId {
    Str(String),
    Int(i64),
    UInt(u64),
}

impl GivenId {
    fn json(&self) -> Value {
        match self {
            GivenId::Str(s) => Value::String(s.clone()),
            GivenId::Int(n) => json!(n),
            GivenId::UInt(n) => json!(n),
        }
    }
    fn expected(&self) -> String {
        match self {
            GivenId::Str(s) => s.clone(),
            GivenId::Int(n) => n.to_string(),
            GivenId::UInt(n) => n.to_string(),
        }
    }
}

fn given_id() -> impl Strategy<Value = GivenId> {
    prop_oneof![
        "[A-Za-z0-9-]{1,40}".prop_map(GivenId::Str),
        any::<String>().prop_filter_map("a valid id", |s| {
            let mut t: String = s.chars().filter(|c| !c.is_control()).collect();
            while t.len() > 512 {
                t.pop();
            }
            (!t.is_empty()).then_some(GivenId::Str(t))
        }),
        any::<i64>().prop_map(GivenId::Int),
        any::<u64>().prop_map(GivenId::UInt),
    ]
}

fn rfc3339() -> impl Strategy<Value = String> {
    (
        1971u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::sample::select(vec!["Z", "+01:00", "-05:30", ".123Z"]),
    )
        .prop_map(|(y, mo, d, h, mi, s, z)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{z}")
        })
}

/// One generated event, before it is written in any of the accepted shapes.
#[derive(Debug, Clone)]
struct Ev {
    kind: String,
    id: Option<GivenId>,
    data: Value,
    time: Option<String>,
    source: Option<String>,
    /// Use `event_type` instead of `type`.
    type_alias: bool,
    /// Use `event_id` instead of `id`.
    id_alias: bool,
    /// 0: `time`, 1: `occurred_at`, 2: `timestamp`.
    time_alias: usize,
}

fn arb_event() -> impl Strategy<Value = Ev> {
    (
        event_type(),
        prop::option::of(given_id()),
        arb_json(),
        prop::option::of(prop_oneof![rfc3339(), nasty_string()]),
        prop::option::of(nasty_string()),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(
            |(kind, id, data, time, source, type_alias, id_alias, time_alias)| Ev {
                kind,
                id,
                data,
                time,
                source,
                type_alias,
                id_alias,
                time_alias,
            },
        )
}

impl Ev {
    fn native(&self) -> Value {
        let mut o = Map::new();
        let t = if self.type_alias {
            "event_type"
        } else {
            "type"
        };
        o.insert(t.into(), Value::String(self.kind.clone()));
        if let Some(id) = &self.id {
            let k = if self.id_alias { "event_id" } else { "id" };
            o.insert(k.into(), id.json());
        }
        if let Some(time) = &self.time {
            let k = ["time", "occurred_at", "timestamp"][self.time_alias];
            o.insert(k.into(), Value::String(time.clone()));
        }
        if let Some(source) = &self.source {
            o.insert("source".into(), Value::String(source.clone()));
        }
        o.insert("data".into(), self.data.clone());
        Value::Object(o)
    }

    fn cloudevent(&self, base64: bool) -> Value {
        let mut o = Map::new();
        o.insert("specversion".into(), json!("1.0"));
        o.insert("type".into(), Value::String(self.kind.clone()));
        if let Some(id) = &self.id {
            o.insert("id".into(), id.json());
        }
        o.insert(
            "source".into(),
            Value::String(self.source.clone().unwrap_or_else(|| "/catalog".into())),
        );
        if let Some(time) = &self.time {
            o.insert("time".into(), Value::String(time.clone()));
        }
        o.insert("datacontenttype".into(), json!("application/json"));
        if base64 {
            let bytes = serde_json::to_vec(&self.data).unwrap();
            o.insert(
                "data_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        } else {
            o.insert("data".into(), self.data.clone());
        }
        Value::Object(o)
    }

    /// The id the decoder must give when the outer transport names the message `outer`.
    fn expected_id(&self, outer: &str) -> String {
        match &self.id {
            Some(id) => id.expected(),
            None => outer.to_string(),
        }
    }

    fn check(&self, e: &invalidator::event::Event, outer_id: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(&*e.kind, self.kind.as_str());
        prop_assert_eq!(e.id.to_string(), self.expected_id(outer_id));
        prop_assert_eq!(e.id_given, self.id.is_some());
        prop_assert_eq!(&e.data, &self.data);
        Ok(())
    }
}

fn sns_notification(message: &str, message_id: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:catalog-events",
        "Message": message,
        "Timestamp": "2026-11-22T10:00:01.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
    })
}

/// The Lambda fixture `fixture` (JSON) with one record per `(text, id)`: the record of the fixture
/// with its text at `text_at` and its id at `id_at` (paths of keys).
fn lambda_document(
    fixture: &str,
    text_at: &[&str],
    id_at: &[&str],
    records: &[(String, String)],
) -> Vec<u8> {
    fn at<'v>(v: &'v mut Value, path: &[&str]) -> &'v mut Value {
        path.iter().fold(v, |v, k| &mut v[*k])
    }
    let mut doc: Value = serde_json::from_str(fixture).unwrap();
    let template = doc["Records"][0].clone();
    let records: Vec<Value> = records
        .iter()
        .map(|(text, id)| {
            let mut r = template.clone();
            *at(&mut r, text_at) = Value::String(text.clone());
            *at(&mut r, id_at) = Value::String(id.clone());
            r
        })
        .collect();
    doc["Records"] = Value::Array(records);
    serde_json::to_vec(&doc).unwrap()
}

/// The SQS Lambda fixture with one record per `(body, messageId)`.
fn sqs_document(bodies: &[(String, String)]) -> Vec<u8> {
    lambda_document(SQS_FIXTURE, &["body"], &["messageId"], bodies)
}

/// The SNS Lambda fixture with one record per `(message, MessageId)`.
fn sns_document(messages: &[(String, String)]) -> Vec<u8> {
    lambda_document(
        SNS_FIXTURE,
        &["Sns", "Message"],
        &["Sns", "MessageId"],
        messages,
    )
}

/// Expands a Lambda document and decodes its records the way a source does.
fn expand_and_decode(doc: Vec<u8>) -> Vec<(Record, invalidator::event::Event)> {
    let out = expand_document(doc, Position::file_line("lambda.json", 1), MAX);
    out.into_iter()
        .map(|x| match x {
            Expanded::Raw(record) => {
                let id = record.position.fallback_id();
                let e = decode_event(&record.payload, MAX, &|| id.clone())
                    .unwrap_or_else(|err| panic!("{err}: {:?}", record));
                (record, e)
            }
            other => panic!("expected a raw record, got {other:?}"),
        })
        .collect()
}

fn message_id() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
}

/// The keys of the native envelope and of CloudEvents that the decoder reads (never copied into a
/// whole-object payload).
const ENVELOPE_KEYS: &[&str] = &[
    "type",
    "event_type",
    "id",
    "event_id",
    "time",
    "occurred_at",
    "timestamp",
    "source",
    "data",
    "specversion",
];

/// Objects built from the keys every decoder path looks at, with hostile values.
fn envelopeish() -> impl Strategy<Value = Value> {
    let mut keys = ENVELOPE_KEYS.to_vec();
    keys.extend([
        "data_base64",
        "Type",
        "Message",
        "TopicArn",
        "MessageId",
        "invalidator_dlq",
        "payload",
        "payload_base64",
        "attempts",
        "reason",
        "error",
        "Records",
        "eventSource",
        "EventSource",
        "body",
        "messageId",
        "Sns",
    ]);
    let key = prop::sample::select(keys);
    let special = prop_oneof![
        Just(json!("Notification")),
        Just(json!("1.0")),
        Just(json!("0.3")),
        Just(json!("aws:sqs")),
        Just(json!("aws:sns")),
        Just(json!("eyJhIjoxfQ==")),
        Just(json!("not base64!")),
        Just(json!("")),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!("\u{0}")),
        Just(json!("2026-11-22T10:00:00Z")),
    ];
    let leaf = prop_oneof![3 => special, 1 => arb_json()];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::btree_map(key.clone(), inner.clone(), 0..8).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            // A nested document as a JSON string (SNS `Message`, SQS `body`, DLQ `payload`).
            inner.prop_map(|v| Value::String(v.to_string())),
        ]
    })
}

fn arb_position() -> impl Strategy<Value = Position> {
    (
        prop::option::of(nasty_string()),
        prop::option::of(any::<u64>()),
        prop::option::of(nasty_string()),
        prop::option::of(any::<i32>()),
        prop::option::of(any::<i64>()),
        prop::option::of(nasty_string()),
    )
        .prop_map(|(file, line, topic, partition, offset, message_id)| {
            Position::from(PositionFields {
                file: file.map(Into::into),
                line,
                topic: topic.map(Into::into),
                partition,
                offset,
                message_id,
            })
        })
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        any::<String>().prop_map(String::into_bytes),
        arb_event().prop_map(|e| e.native().to_string().into_bytes()),
        // Invalid UTF-8 right after a valid prefix, and lone continuation bytes.
        (
            any::<String>(),
            prop::sample::select(vec![0x80u8, 0xc3, 0xed, 0xf8, 0xff])
        )
            .prop_map(|(s, b)| {
                let mut v = s.into_bytes();
                v.push(b);
                v
            }),
        Just(Vec::new()),
    ]
}

fn check_whole_object_payload(
    ev: &Ev,
    extra: &std::collections::BTreeMap<String, Value>,
) -> Result<(), TestCaseError> {
    let mut obj = ev.native();
    let o = obj.as_object_mut().unwrap();
    o.remove("data");
    for (k, v) in extra {
        if !o.contains_key(k) && !ENVELOPE_KEYS.contains(&k.as_str()) {
            o.insert(k.clone(), v.clone());
        }
    }
    let original = o.clone();
    let e = decode(&serde_json::to_vec(&obj).unwrap()).unwrap();
    prop_assert_eq!(&*e.kind, ev.kind.as_str());
    prop_assert_eq!(e.id.to_string(), ev.expected_id(FALLBACK));
    let data = e.data.to_value();
    let data = data.as_object().expect("the payload is the object");
    // Every field of the object is in the payload, unchanged.
    for (k, v) in &original {
        prop_assert_eq!(data.get(k), Some(v), "field {}", k);
    }
    // Nothing is added: the payload is the object exactly as the producer wrote it.
    prop_assert_eq!(data.len(), original.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in any::<Vec<u8>>(), max in prop_oneof![Just(MAX), 0usize..64]) {
        check_bytes(&bytes, max)?;
        check_expand(&bytes, max)?;
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        check_bytes(s.as_bytes(), MAX)?;
        check_expand(s.as_bytes(), MAX)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        check_bytes(&bytes, MAX)?;
        check_expand(&bytes, MAX)?;
        check_result(&decode_value(v, MAX, &fallback))?;
    }

    #[test]
    fn envelope_like_json_never_panics(v in envelopeish(), max in prop_oneof![3 => Just(MAX), 1 => 0usize..200]) {
        let bytes = serde_json::to_vec(&v).unwrap();
        check_bytes(&bytes, max)?;
        check_expand(&bytes, max)?;
        let as_array = serde_json::to_vec(&Value::Array(vec![v.clone(), v.clone()])).unwrap();
        check_expand(&as_array, max)?;
        check_result(&decode_value(v, max, &fallback))?;
    }

    /// Generated events with a few bytes flipped, cut or spliced: JSON that is almost right.
    #[test]
    fn mutated_events_never_panic(
        ev in arb_event(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = ev.native().to_string().into_bytes();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        check_bytes(&bytes, MAX)?;
        check_expand(&bytes, MAX)?;
        bytes.truncate(cut.index(bytes.len() + 1));
        check_bytes(&bytes, MAX)?;
        check_expand(&bytes, MAX)?;
    }
}

proptest! {
    #![proptest_config(config_cases(32))]

    /// Long runs of an opening token (100k `[` and the like): recursion limits, not stack overflows.
    #[test]
    fn deep_nesting_never_panics(
        open in prop::sample::select(vec!["[", "{\"a\":", "{\"data\":", "[{\"type\":\"a\",\"data\":", "{\"Records\":", "\"", "\\"]),
        n in prop_oneof![1usize..200, 100_000usize..100_001, 1_000usize..50_000],
        close in any::<bool>(),
    ) {
        let mut s = open.repeat(n);
        if close {
            s.push('1');
            s.push_str(&"]".repeat(n));
        }
        check_bytes(s.as_bytes(), 4 * MAX)?;
        check_expand(s.as_bytes(), 4 * MAX)?;
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn native_event_round_trips(ev in arb_event()) {
        let bytes = serde_json::to_vec(&ev.native()).unwrap();
        let e = decode(&bytes).unwrap();
        ev.check(&e, FALLBACK)?;
        prop_assert_eq!(e.source.as_deref(), ev.source.as_deref());
    }

    /// Without `data`, the whole object is the payload, exactly as written.
    #[test]
    fn native_event_without_data_is_its_own_payload(
        ev in arb_event().prop_filter("string id", |e| !matches!(e.id, Some(GivenId::Int(_) | GivenId::UInt(_)))),
        extra in prop::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..4),
    ) {
        check_whole_object_payload(&ev, &extra)?;
    }

    #[test]

    fn native_event_without_data_is_its_own_payload_any_id(
        ev in arb_event(),
        extra in prop::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..4),
    ) {
        check_whole_object_payload(&ev, &extra)?;
    }

    #[test]
    fn cloudevent_round_trips(ev in arb_event(), base64 in any::<bool>()) {
        let bytes = serde_json::to_vec(&ev.cloudevent(base64)).unwrap();
        let e = decode(&bytes).unwrap();
        ev.check(&e, FALLBACK)?;
    }

    #[test]
    fn sns_notification_round_trips(ev in arb_event(), ce in any::<bool>(), mid in message_id()) {
        let inner = if ce { ev.cloudevent(false) } else { ev.native() }.to_string();
        let outer = sns_notification(&inner, &mid).to_string();
        let e = decode(outer.as_bytes()).unwrap();
        ev.check(&e, &mid)?;
    }

    /// The event as the `body` of an SQS Lambda event: raw delivery, or an SNS notification envelope.
    #[test]
    fn sqs_lambda_document_round_trips(
        evs in prop::collection::vec((arb_event(), any::<bool>(), message_id(), message_id()), 1..4),
    ) {
        let bodies: Vec<(String, String)> = evs
            .iter()
            .map(|(ev, enveloped, sqs_id, sns_id)| {
                let body = if *enveloped {
                    serde_json::to_string_pretty(&sns_notification(&ev.native().to_string(), sns_id)).unwrap()
                } else {
                    ev.native().to_string()
                };
                (body, sqs_id.clone())
            })
            .collect();
        let decoded = expand_and_decode(sqs_document(&bodies));
        prop_assert_eq!(decoded.len(), evs.len());
        for ((ev, enveloped, sqs_id, sns_id), (record, e)) in evs.iter().zip(&decoded) {
            prop_assert_eq!(record.position.message_id(), Some(sqs_id.as_str()));
            ev.check(e, if *enveloped { sns_id } else { sqs_id })?;
        }
    }

    #[test]
    fn sns_lambda_document_round_trips(
        evs in prop::collection::vec((arb_event(), any::<bool>(), message_id()), 1..4),
    ) {
        let messages: Vec<(String, String)> = evs
            .iter()
            .map(|(ev, ce, id)| {
                let m = if *ce { ev.cloudevent(false) } else { ev.native() };
                (m.to_string(), id.clone())
            })
            .collect();
        let decoded = expand_and_decode(sns_document(&messages));
        prop_assert_eq!(decoded.len(), evs.len());
        for ((ev, _, id), (record, e)) in evs.iter().zip(&decoded) {
            prop_assert_eq!(record.position.message_id(), Some(id.as_str()));
            ev.check(e, id)?;
        }
    }

    /// A document holding a JSON array of events gives each one, parsed once.
    #[test]
    fn array_document_round_trips(evs in prop::collection::vec(arb_event(), 0..5)) {
        let doc = Value::Array(evs.iter().map(Ev::native).collect());
        let out = expand_document(serde_json::to_vec(&doc).unwrap(), Position::file_line("a", 1), MAX);
        prop_assert_eq!(out.len(), evs.len());
        for (i, (ev, x)) in evs.iter().zip(out).enumerate() {
            let Expanded::Parsed { value, record } = x else {
                return Err(TestCaseError::fail(format!("{x:?}")));
            };
            let pos = record.position.fallback_id();
            prop_assert_eq!(&pos, &format!("[{i}]"));
            let e = decode_value(value, MAX, &|| pos.clone()).unwrap();
            ev.check(&e, &pos)?;
        }
    }

    #[test]
    fn over_max_bytes_is_too_large(bytes in prop::collection::vec(any::<u8>(), 1..512), max in any::<prop::sample::Index>()) {
        let max = max.index(bytes.len());
        let err = decode_event(&bytes, max, &fallback).unwrap_err();
        prop_assert_eq!(err.reason(), "too_large");
        prop_assert_eq!(err, DecodeError::TooLarge { size: bytes.len(), limit: max });
    }

    /// A valid event is too large by its size alone, and decodes again at exactly its size.
    #[test]
    fn valid_event_over_max_bytes_is_too_large(ev in arb_event(), short in 1usize..64) {
        let bytes = serde_json::to_vec(&ev.native()).unwrap();
        let max = bytes.len().saturating_sub(short);
        let err = decode_event(&bytes, max, &fallback).unwrap_err();
        prop_assert_eq!(err.reason(), "too_large");
        let e = decode_event(&bytes, bytes.len(), &fallback).unwrap();
        ev.check(&e, FALLBACK)?;
        // The same limit applies to the event inside an SNS envelope.
        let outer = sns_notification(&String::from_utf8(bytes.clone()).unwrap(), "m").to_string();
        let err = decode_event(outer.as_bytes(), max, &fallback).unwrap_err();
        prop_assert_eq!(err.reason(), "too_large");
    }

    /// DLQ line → `expand_document` → the byte-exact payload, one more attempt, the first origin.
    #[test]
    fn dlq_record_round_trips_byte_exact(
        payload in arb_payload(),
        position in arb_position(),
        origin in prop::option::of(arb_position()),
        attempts in prop_oneof![0u32..10, 0u32..u32::MAX],
        reason in prop::sample::select(REASONS.to_vec()),
        error in nasty_string(),
        time in nasty_string(),
        dlq_position in arb_position(),
    ) {
        let record = Record { payload: payload.clone().into(), position: position.clone(), attempts, origin: origin.clone().map(Box::new), truncated: false, carried: None };
        let dlq = DlqRecord::new(&record, reason, &error, time);
        prop_assert_eq!(dlq.attempts, attempts + 1);
        prop_assert_eq!(dlq.payload.is_some(), std::str::from_utf8(&payload).is_ok());
        let line = serde_json::to_vec(&dlq).unwrap();
        prop_assert!(!line.contains(&b'\n'), "a DLQ record is one line");
        let parsed: DlqRecord = serde_json::from_slice(&line).unwrap();
        prop_assert_eq!(&parsed, &dlq);

        let out = expand_document(line, dlq_position.clone(), MAX);
        prop_assert_eq!(out.len(), 1);
        let Expanded::Raw(back) = &out[0] else {
            return Err(TestCaseError::fail(format!("{out:?}")));
        };
        prop_assert_eq!(&back.payload, &payload);
        prop_assert_eq!(back.attempts, attempts + 1);
        prop_assert_eq!(back.origin.as_deref(), Some(origin.as_ref().unwrap_or(&position)));
        prop_assert_eq!(&back.position, &dlq_position);

        // Dead-lettered again: the origin is still the first position, attempts go on counting.
        let again = DlqRecord::new(back, reason, &error, "t".into());
        let out = expand_document(serde_json::to_vec(&again).unwrap(), Position::default(), MAX);
        let [Expanded::Raw(back2)] = &out[..] else {
            return Err(TestCaseError::fail(format!("{out:?}")));
        };
        prop_assert_eq!(&back2.payload, &payload);
        prop_assert_eq!(back2.attempts, attempts + 2);
        prop_assert_eq!(back2.origin.as_deref(), Some(origin.as_ref().unwrap_or(&position)));
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: the huge and the deep, which are too slow to generate 256 times.
// ---------------------------------------------------------------------------------------------

#[test]
fn deep_and_huge_inputs() {
    let cases: Vec<Vec<u8>> = vec![
        b"[".repeat(100_000),
        b"{\"a\":".repeat(100_000),
        [b"[".repeat(100_000), b"]".repeat(100_000)].concat(),
        [
            b"{\"type\":\"a\",\"data\":".repeat(50_000),
            b"1".to_vec(),
            b"}".repeat(50_000),
        ]
        .concat(),
        [b"{\"Records\":[".repeat(30_000), b"]}".repeat(30_000)].concat(),
        // A big but valid event, and a big non-UTF-8 blob.
        json!({"type": "a", "data": {"s": "x".repeat(900_000)}})
            .to_string()
            .into_bytes(),
        (0..MAX).map(|i| (i * 7 + 0x80) as u8).collect(),
    ];
    for bytes in &cases {
        for max in [MAX, 4 * MAX] {
            let r = decode_event(bytes, max, &fallback);
            if let Err(e) = &r {
                assert!(REASONS.contains(&e.reason()), "{e}");
            }
            let _ = expand_document(bytes.clone(), Position::default(), max);
        }
    }
    let big = decode_event(&cases[5], MAX, &fallback).unwrap();
    assert_eq!(big.data["s"].as_str().unwrap().len(), 900_000);
    let huge = vec![b' '; 2 * MAX];
    assert_eq!(
        decode_event(&huge, MAX, &fallback).unwrap_err().reason(),
        "too_large"
    );
}

/// SNS notifications nested in SNS notifications: bounded by the size limit, never a stack overflow.
#[test]
fn nested_sns_envelopes() {
    let mut message = json!({"type": "a", "data": {"k": 1}}).to_string();
    for depth in 0..12 {
        message = sns_notification(&message, &format!("m{depth}")).to_string();
        let r = decode_event(message.as_bytes(), MAX, &fallback);
        match r {
            Ok(e) => {
                assert_eq!(&*e.kind, "a");
                assert_eq!(e.data, json!({"k": 1}));
            }
            Err(e) => assert_eq!(e.reason(), "too_large", "{e}"),
        }
    }
}

/// Regression for the ignored property above: `{"type":"a","id":5}` without `data` must keep the
/// payload as written (`data.id == 5`), so a condition such as `data.id == 5` matches.
#[test]

fn whole_object_payload_keeps_numeric_id() {
    let e = decode(br#"{"type":"a","id":5}"#).unwrap();
    assert_eq!(&*e.id, "5");
    assert_eq!(e.data, json!({"type": "a", "id": 5}));
}

proptest! {
    #![proptest_config(config())]

    /// The DLQ round trip at the top of the `attempts` range (excluded from the property above).
    #[test]

    fn dlq_attempts_never_overflow(payload in arb_payload(), attempts in u32::MAX - 2..=u32::MAX) {
        let mut record = Record::new(payload.clone(), Position::file_line("in", 1));
        record.attempts = attempts;
        let dlq = DlqRecord::new(&record, "invalid_json", "boom", "t".into());
        prop_assert!(dlq.attempts >= attempts, "attempts went from {} to {}", attempts, dlq.attempts);
        let out = expand_document(serde_json::to_vec(&dlq).unwrap(), Position::default(), MAX);
        let [Expanded::Raw(back)] = &out[..] else {
            return Err(TestCaseError::fail(format!("{out:?}")));
        };
        prop_assert_eq!(&back.payload, &payload);
    }
}

/// Regression: a DLQ line whose `attempts` is u32::MAX (hand-edited or corrupt), replayed and
/// failing again, must be dead-lettered again (attempts saturating), not panic or restart at 0.
#[test]

fn dlq_attempts_at_u32_max() {
    let line = br#"{"invalidator_dlq":1,"reason":"invalid_json","error":"e","attempts":4294967295,"source":{},"time":"t","payload":"{"}"#;
    let out = expand_document(line.to_vec(), Position::file_line("dlq.jsonl", 1), MAX);
    let [Expanded::Raw(back)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(back.attempts, u32::MAX);
    let again = DlqRecord::new(back, "invalid_json", "e", "t".into());
    assert_eq!(again.attempts, u32::MAX);
}

// ---------------------------------------------------------------------------------------------
// The common-shape decode agrees with the general path
// ---------------------------------------------------------------------------------------------

/// What the general path makes of `bytes` (what `decode_event` did before its common-shape decode):
/// the size limit, one JSON tree, then `decode_value`.
fn general(bytes: &[u8], max: usize) -> Result<invalidator::event::Event, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: max,
        });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    decode_value(value, max, &fallback)
}

/// What `expand_document` then the unit made of one line before lines that can only be one event
/// skipped the JSON tree: parse, then the size limit for a lone event, then `decode_value`.
fn general_line(bytes: &[u8], max: usize) -> Vec<Result<invalidator::event::Event, DecodeError>> {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return vec![Err(DecodeError::InvalidJson(e.to_string()))],
    };
    match &value {
        Value::Object(o) if !o.contains_key("Records") && !o.contains_key("invalidator_dlq") => {
            if bytes.len() > max {
                return vec![Err(DecodeError::TooLarge {
                    size: bytes.len(),
                    limit: max,
                })];
            }
            vec![decode_value(value, max, &fallback)]
        }
        _ => Vec::new(), // a document or an array: not changed, not compared
    }
}

/// What `expand_document` and the unit make of one line now.
fn line(bytes: &[u8], max: usize) -> Vec<Result<invalidator::event::Event, DecodeError>> {
    expand_document(bytes.to_vec(), Position::default(), max)
        .into_iter()
        .map(|item| match item {
            Expanded::Parsed { value, .. } => decode_value(value, max, &fallback),
            Expanded::Raw(record) => decode_event(&record.payload, max, &fallback),
            Expanded::Failed { error, .. } => Err(*error),
        })
        .collect()
}

fn agree(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    let whole = general(bytes, max);
    prop_assert_eq!(decode_event(bytes, max, &fallback), whole.clone());
    // Keeping some fields of `data` (what the rules read) is the whole event, pruned.
    for keep in [vec![], vec!["", "a", "b"], vec!["product_id", "sku"]] {
        let fields = DataFields::only(keep.into_iter().map(str::to_owned));
        let pruned = whole.clone().map(|mut e| {
            e.data = fields.keep(e.data.to_value());
            e
        });
        prop_assert_eq!(decode_event_keeping(bytes, max, &fields, &fallback), pruned);
    }
    let before = general_line(bytes, max);
    if !before.is_empty() {
        prop_assert_eq!(line(bytes, max), before);
    }
    Ok(())
}

/// `cloud` (a CloudEvent as a JSON object) written with its `specversion` first, as the
/// CloudEvents SDKs write it (a `Value` writes its members in name order).
fn specversion_first(cloud: &Value) -> Vec<u8> {
    let Value::Object(o) = cloud else {
        unreachable!("a CloudEvent is an object")
    };
    let mut members = vec![format!("\"specversion\":{}", o["specversion"])];
    members.extend(
        o.iter()
            .filter(|(k, _)| *k != "specversion")
            .map(|(k, v)| format!("{}:{v}", json!(k))),
    );
    format!("{{{}}}", members.join(",")).into_bytes()
}

/// A CloudEvent as text, its version (a readable one mostly) first, then members in any order,
/// some twice: its attributes, the native names (extensions in a CloudEvent), the names that
/// make it another shape, and extensions with any value.
fn cloud_with_repeats() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![
        6 => Just("\"1.0\"".to_owned()),
        1 => prop::sample::select(vec!["\"1.1\"", "\"0.3\"", "1", "null", "\"1\\u002e0\""])
            .prop_map(str::to_owned),
    ];
    let field = prop_oneof![
        2 => event_type().prop_map(|v| format!("\"type\":{}", json!(v))),
        1 => (
            prop::sample::select(vec!["event_type", "event_id", "occurred_at", "timestamp", "id"]),
            nasty_string(),
        )
            .prop_map(|(k, v)| format!("{k:?}:{}", json!(v))),
        1 => rfc3339().prop_map(|v| format!("\"time\":{}", json!(v))),
        1 => nasty_string().prop_map(|v| format!("\"source\":{}", json!(v))),
        2 => arb_json().prop_map(|v| format!("\"data\":{v}")),
        1 => (
            prop::sample::select(vec![
                "specversion", "data_base64", "Type", "Message", "TopicArn", "datacontenttype",
                "subject", "Records",
            ]),
            prop_oneof![Just(json!("Notification")), Just(json!("eyJhIjoxfQ==")), arb_json()],
        )
            .prop_map(|(k, v)| format!("{k:?}:{v}")),
        1 => (nasty_string(), arb_json()).prop_map(|(k, v)| format!("{}:{v}", json!(k))),
        1 => Just("\"id\":null".to_owned()),
        1 => Just("\"id\":7".to_owned()),
    ];
    (version, prop::collection::vec(field, 0..8)).prop_map(|(version, f)| {
        let mut members = vec![format!("\"specversion\":{version}")];
        members.extend(f);
        format!("{{{}}}", members.join(",")).into_bytes()
    })
}

/// A native event as text with its fields in a given order, some of them twice (under a name or
/// an alias), the way no `Value` can write it.
fn with_repeats() -> impl Strategy<Value = Vec<u8>> {
    let field =
        prop_oneof![
            (
                prop::sample::select(vec!["type", "event_type"]),
                event_type()
            )
                .prop_map(|(k, v)| format!("{:?}:{}", k, json!(v))),
            (prop::sample::select(vec!["id", "event_id"]), nasty_string())
                .prop_map(|(k, v)| format!("{:?}:{}", k, json!(v))),
            (
                prop::sample::select(vec!["time", "occurred_at", "timestamp"]),
                rfc3339()
            )
                .prop_map(|(k, v)| format!("{:?}:{}", k, json!(v))),
            nasty_string().prop_map(|v| format!("\"source\":{}", json!(v))),
            arb_json().prop_map(|v| format!("\"data\":{v}")),
            Just("\"id\":null".to_owned()),
            // Control characters that JSON lets through unescaped (DEL, C1), in each checked field.
            prop::sample::select(vec!["type", "id", "source"])
                .prop_flat_map(|k| prop::sample::select(vec!["\u{7f}", "\u{85}", "\u{9f}"])
                    .prop_map(move |c| format!("{k:?}:\"a{c}b\""))),
            Just("\"id\":7".to_owned()),
            Just("\"typ\\u0065\":\"a\"".to_owned()),
            Just("\"extra\":1".to_owned()),
        ];
    prop::collection::vec(field, 0..8).prop_map(|f| format!("{{{}}}", f.join(",")).into_bytes())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_common_shape_decodes_as_the_general_path_on_generated_events(ev in arb_event()) {
        agree(ev.native().to_string().as_bytes(), MAX)?;
        agree(ev.cloudevent(false).to_string().as_bytes(), MAX)?;
        agree(&specversion_first(&ev.cloudevent(false)), MAX)?;
        agree(&specversion_first(&ev.cloudevent(true)), MAX)?;
    }

    #[test]
    fn the_common_shape_decodes_as_the_general_path_on_envelope_like_json(
        v in envelopeish(),
        max in prop_oneof![3 => Just(MAX), 1 => 0usize..200],
    ) {
        agree(&serde_json::to_vec(&v).unwrap(), max)?;
    }

    #[test]
    fn the_common_shape_decodes_as_the_general_path_with_repeated_fields(
        bytes in with_repeats(),
        max in prop_oneof![3 => Just(MAX), 1 => 0usize..200],
    ) {
        agree(&bytes, max)?;
    }

    #[test]
    fn the_common_shape_decodes_as_the_general_path_on_cloudevents_with_repeated_fields(
        bytes in cloud_with_repeats(),
        max in prop_oneof![3 => Just(MAX), 1 => 0usize..200],
    ) {
        agree(&bytes, max)?;
    }

    #[test]
    fn the_common_shape_decodes_as_the_general_path_on_mutated_events(
        ev in arb_event(),
        cloud in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = if cloud {
            specversion_first(&ev.cloudevent(false))
        } else {
            ev.native().to_string().into_bytes()
        };
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        agree(&bytes, MAX)?;
    }
}

/// Every check of the general path, one case each, where JSON lets the value through unescaped:
/// the common-shape decode must refuse what the general path refuses (and leave it the reason).
#[test]
fn the_common_shape_keeps_every_check_of_the_general_path() {
    let long = |n: usize| "x".repeat(n);
    let cases = [
        ("type", "a\u{7f}b".to_owned()),
        ("type", "a\u{85}b".to_owned()),
        ("type", String::new()),
        ("type", long(257)),
        ("event_type", "a\u{9f}".to_owned()),
        ("id", "a\u{7f}b".to_owned()),
        ("id", String::new()),
        ("id", long(513)),
        ("event_id", "\u{85}".to_owned()),
        ("source", long(1025)),
        ("time", "not a time".to_owned()),
        ("timestamp", "2026-11-30T08:00:00+01:00".to_owned()),
    ];
    for (field, value) in cases {
        let mut fields = vec![
            ("type", "price.updated".to_owned()),
            ("id", "e-1".to_owned()),
            ("source", "pricing".to_owned()),
        ];
        let base = field.trim_start_matches("event_");
        fields.retain(|(k, _)| *k != base);
        fields.push((field, value));
        let text: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k:?}:{}", json!(v)))
            .collect();
        let bytes = format!("{{{},\"data\":{{\"sku\":\"1\"}}}}", text.join(","));
        let got = decode_event(bytes.as_bytes(), MAX, &fallback);
        assert_eq!(got, general(bytes.as_bytes(), MAX), "{bytes}");
    }
}
