//! The dead-letter file of `invalidator replay --dlq`: a record for every line that cannot be
//! applied, with its line number, its reason and its payload byte for byte, and a file that replays
//! back as it is once the rules are fixed (the records then say where they came from first). The
//! binary against the real local Redis.
//!
//! Rules, configurations and inputs are fixtures of `tests/fixtures/dead_letters/`.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{World, conn, fixture_bytes, fixture_lines, read_jsonl};
use serde_json::Value;

/// Deletes `P:k:{n}` for every `k.changed` event.
const K_RULES: &str = "rules/delete_k.yaml";

/// The payload of a dead letter: `payload` (text) or `payload_base64` (any other bytes).
fn payload(rec: &Value) -> Vec<u8> {
    if let Some(p) = rec["payload"].as_str() {
        p.as_bytes().to_vec()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(
                rec["payload_base64"]
                    .as_str()
                    .expect("payload or payload_base64"),
            )
            .unwrap()
    }
}

/// `malformed.jsonl`: an event (line 1), a line cut short (2), an event without `type` (3), one
/// whose id is not UTF-8 (4), an event (5), and one without `n` (6): a template error under
/// `delete_k.yaml`, applied under the fixed rules `delete_k_or_m.yaml`.
#[test]
fn replay_dead_letters_malformed_lines_with_their_line_numbers_and_dlq_replays_back() {
    let w = World::new();
    w.rules_fixture("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2", "P:k:3", "P:k:4"]);
    let bytes = fixture_bytes("dead_letters/malformed.jsonl");
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let input = w.input_fixture("dead_letters/malformed.jsonl");
    let dlq = w.dlq_path();
    let r = w.replay(&input);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 6);
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("dead-lettered"), 4);
    assert!(!w.exists(&mut c, "P:k:1"));
    assert!(!w.exists(&mut c, "P:k:2"));
    assert!(w.exists(&mut c, "P:k:3"));
    assert!(w.exists(&mut c, "P:k:4"));

    let recs = read_jsonl(&dlq);
    let by_line: BTreeMap<u64, &Value> = recs
        .iter()
        .map(|r| (r["source"]["line"].as_u64().expect("source.line"), r))
        .collect();
    assert_eq!(
        by_line.keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4, 6]
    );
    assert_eq!(by_line[&2]["reason"], "invalid_json");
    assert_eq!(by_line[&3]["reason"], "missing_type");
    assert!(
        by_line[&4]["reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{}",
        by_line[&4]
    );
    assert_eq!(by_line[&6]["reason"], "template_error");
    for (line, rec) in &by_line {
        assert_eq!(rec["attempts"], 1);
        assert!(
            rec["source"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("malformed.jsonl")),
            "{rec}"
        );
        assert_eq!(
            payload(rec),
            lines[*line as usize - 1],
            "byte-exact payload, line {line}"
        );
    }

    // Fixed rules: `m` is accepted too; the DLQ file replays as is.
    w.rules_fixture("r.yaml", "dead_letters/delete_k_or_m.yaml");
    let dlq2 = w.path("dlq2.jsonl");
    let r = w.replay_with(&[], "dlq2.jsonl", &[&dlq], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 4);
    assert_eq!(r.count("applied"), 1);
    assert_eq!(r.count("dead-lettered"), 3);
    assert!(!w.exists(&mut c, "P:k:3"), "the fixed event is applied");
    assert!(w.exists(&mut c, "P:k:4"));
    let recs2 = read_jsonl(&dlq2);
    assert_eq!(recs2.len(), 3);
    for rec in &recs2 {
        assert_eq!(rec["attempts"], 2, "{rec}");
        assert!(
            rec["source"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("dlq.jsonl")),
            "{rec}"
        );
        let line = rec["origin"]["line"].as_u64().expect("origin.line");
        assert!(
            rec["origin"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("malformed.jsonl")),
            "{rec}"
        );
        let original = by_line[&line];
        assert_eq!(payload(rec), payload(original), "byte-exact payload: {rec}");
        assert_eq!(payload(rec), lines[line as usize - 1]);
        assert_eq!(original["reason"], rec["reason"], "same reason again");
    }
}

/// `near_the_size_limit.jsonl`: one event of 300 bytes, under the limit of 400, and a template
/// error (no `n`); its DLQ line is longer than 400 bytes.
#[test]
fn a_dead_letter_near_the_size_limit_replays_back_byte_exact() {
    let w = World::new()
        .with_config("dead_letters/max_event_bytes_400.toml")
        .with_rules(K_RULES);
    let event = &fixture_lines("dead_letters/near_the_size_limit.jsonl")[0];
    assert_eq!(event.len(), 300);
    let dlq = w.dlq_path();
    let r = w.replay(&w.input_fixture("dead_letters/near_the_size_limit.jsonl"));
    assert_eq!(r.code, 1, "{r:?}");
    let first = read_jsonl(&dlq);
    assert_eq!(first[0]["reason"], "template_error");
    assert_eq!(payload(&first[0]), event.as_bytes());

    let r = w.replay_with(&[], "dlq2.jsonl", &[&dlq], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let second = read_jsonl(&w.path("dlq2.jsonl"));
    assert_eq!(second.len(), 1);
    // Once a DLQ line (larger than the event it holds) was cut at the event limit and dead-lettered
    // as too_large; it must come back as the original event, one attempt more.
    assert_eq!(second[0]["reason"], "template_error", "{}", second[0]);
    assert_eq!(second[0]["attempts"], 2);
    assert_eq!(payload(&second[0]), event.as_bytes(), "payload byte-exact");
}
