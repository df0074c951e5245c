//! Replay against hostile input: a property test that runs the real `invalidator replay` binary
//! (against the real local Redis, DB 9, `--dlq FILE`) over generated JSON Lines files mixing valid
//! events with broken, odd and oversized ones (`hostile_replay/input.rs` says which), and checks
//! its promises for every file:
//!
//! - it exits 0, or 1 when something was dead-lettered: never a panic, never a signal; it logs
//!   dead letters at WARN, never at ERROR, and no input byte starts a log line of its own;
//! - the summary accounts for every record: `events` is the number of records of the input (an
//!   array line counts its elements, a Lambda document its records, a blank line none);
//!   applied + skipped + duplicate + dead-lettered = events; dead-lettered = the DLQ file's lines;
//!   and each count lies between the records that must get that outcome and those that may (a
//!   line with a byte flipped may still be an event);
//! - every dead letter is one input record's, its payload byte for byte (`truncated` only for a
//!   line longer than replay reads whole), with a documented reason, the known one for an input
//!   broken by construction; nothing else is dead-lettered;
//! - every valid event is applied: its keys (a delete, a pattern delete, a tag) are gone, so a
//!   replay that does nothing fails;
//! - no key outside the prefixes the rules can touch changed: sentinels beside them under the test
//!   prefix, and under a prefix of their own.
//!
//! `PROPTEST_CASES` cases (default 48, about ten seconds), each one replay of a file of 16 to 63
//! pieces (a line or two each) after a valid first line, under a key prefix of its own. The
//! regression tests of what it found follow it.

mod common;
#[path = "hostile_replay/input.rs"]
mod input;
#[path = "hostile_replay/lines.rs"]
mod lines;
#[path = "hostile_replay/texts.rs"]
mod texts;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use common::{Keyspace, Run, World, conn, read_jsonl};
use input::{Case, Expect, Line, Rec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::Value;

/// The rules can touch `P:in:k:`, `P:in:pat:`, `P:in:price:`, the tag sets `P:tag:t:` and their
/// members (`P:in:tagged:` here), and the dedupe markers `P:seen:`.
const RULES: &str = r#"
rules:
  - name: k
    on: k.changed
    delete:
      - P:in:k:{n}
      - P:in:pat:{n}:*
    tags:
      - t:{n}
  - name: price
    on: price.*
    delete:
      - P:in:price:{product_id}
"#;

/// Strings outside every prefix the rules can touch, next to them.
const SENTINELS: &[&str] = &[
    "P:in",
    "P:in:k",
    "P:in:k*",
    "P:in:kk:1",
    "P:in:pat",
    "P:in:price",
    "P:in:tagged",
    "P:tag:t",
    "P:seen",
    "P:out:k:1",
    "P:out:member:1",
];
/// Sets outside the tag sets the rules can touch, holding a sentinel.
const SENTINEL_SETS: &[&str] = &["P:tag:x:1", "P:tag:tt:1"];

fn config(batch_size: usize) -> String {
    format!(
        "[limits]\nmax_event_bytes = {}\n\n[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n\n\
         [replay]\nbatch_size = {batch_size}\nmax_in_flight = 4\n",
        input::MAX_EVENT_BYTES
    )
}

/// `PROPTEST_CASES` cases (default 48); no regression files.
fn proptest_config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn replay_keeps_its_promises_on_hostile_input(case in input::case()) {
        replay_case(&case)?;
    }
}

/// One case: seed, replay, check.
fn replay_case(case: &Case) -> Result<(), TestCaseError> {
    let lines = lines::build(case);
    let expected = input::expected(&lines);
    let mut w = World::new();
    w.extra_config = config(case.batch_size);
    w.rules("hostile.yaml", RULES);
    let outside = Keyspace::new();
    let mut c = conn();
    seed(&w, &outside, &expected, &mut c);
    let before = sentinels(&w, &outside, &mut c);
    let path = w.input("in.jsonl", &input::file(&lines, case.final_newline));
    let r = w.replay(&path);
    let why = || describe(case, &lines, &r);
    prop_assert!(
        !r.stderr.contains("panicked") && (r.code == 0 || r.code == 1),
        "exit {} (0 or 1 only, no panic){}",
        r.code,
        why()
    );
    // A dead letter is logged at WARN (ERROR is for data at risk), one record a line: no value
    // from an event starts a line of its own.
    let forged = r
        .stderr
        .lines()
        .find(|l| !l.starts_with(|c: char| c.is_ascii_digit()));
    prop_assert!(
        !r.stderr.contains(" ERROR ") && forged.is_none(),
        "stderr: an ERROR, or a line that is not a log record: {forged:?}{}",
        why()
    );
    let dlq = read_jsonl(&w.dlq_path());
    check_counts(&r, &expected, dlq.len()).map_err(|e| fail(e, why()))?;
    check_dead_letters(&dlq, &expected).map_err(|e| fail(e, why()))?;
    for (line, rec) in &expected {
        if let Expect::Applied(n) = rec.expect {
            let left: Vec<String> = keys_of(n)
                .into_iter()
                .filter(|k| w.exists(&mut c, k))
                .collect();
            prop_assert!(
                left.is_empty(),
                "line {line}: valid, but {left:?} left{}",
                why()
            );
        }
    }
    let after = sentinels(&w, &outside, &mut c);
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .collect();
    prop_assert!(
        changed.is_empty(),
        "keys outside the rules' prefixes changed: {changed:?}{}",
        why()
    );
    Ok(())
}

fn fail(e: TestCaseError, why: String) -> TestCaseError {
    TestCaseError::fail(format!("{e}{why}"))
}

/// The keys of valid event `n`: a delete, two keys of a pattern delete, a tagged key.
fn keys_of(n: u64) -> Vec<String> {
    vec![
        format!("P:in:k:{n}"),
        format!("P:in:pat:{n}:a"),
        format!("P:in:pat:{n}:b"),
        format!("P:in:tagged:{n}"),
    ]
}

/// The keys of every valid event; the sentinels beside them; and under the prefix `outside`, the
/// sentinels and the same keys and tag sets as the valid events'.
fn seed(w: &World, outside: &Keyspace, expected: &[(u64, Rec)], c: &mut redis::Connection) {
    let mut pipe = redis::pipe();
    for (_, rec) in expected {
        if let Expect::Applied(n) = rec.expect {
            for ks in [&w.ks, outside] {
                for k in keys_of(n) {
                    pipe.set(ks.k(&k), "v").ignore();
                }
                let tag = format!("P:tag:t:{n}");
                pipe.sadd(ks.k(&tag), ks.k(&format!("P:in:tagged:{n}")))
                    .ignore();
            }
        }
    }
    for ks in [&w.ks, outside] {
        for k in SENTINELS {
            pipe.set(ks.k(k), "sentinel").ignore();
        }
        for k in SENTINEL_SETS {
            pipe.sadd(ks.k(k), ks.k("P:out:member:1")).ignore();
        }
    }
    pipe.query::<()>(c).expect("seed");
}

/// Every sentinel (every key under `outside`) with its value (sorted members for a set) and TTL.
fn sentinels(
    w: &World,
    outside: &Keyspace,
    c: &mut redis::Connection,
) -> BTreeMap<String, (String, i64)> {
    let mut keys: Vec<String> = SENTINELS
        .iter()
        .chain(SENTINEL_SETS)
        .map(|k| w.k(k))
        .collect();
    keys.extend(outside.keys(c, "P:*"));
    let mut out = BTreeMap::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
        let value = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&k).query::<String>(c).unwrap(),
            "set" => {
                let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(c).unwrap();
                m.sort();
                m.join(",")
            }
            other => other.to_owned(),
        };
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(c).unwrap();
        out.insert(k, (value, ttl));
    }
    out
}

/// `events` is the number of records; every one has one outcome; each outcome count is at least
/// the records known to get it and at most that plus the mutations that may get any; exit 1
/// exactly when there were dead letters, as many as the DLQ file's lines.
fn check_counts(
    r: &Run,
    expected: &[(u64, Rec)],
    dead_letters: usize,
) -> Result<(), TestCaseError> {
    let events = r.count("events");
    prop_assert_eq!(
        events,
        expected.len() as u64,
        "events: every record of the input"
    );
    let count = |label| r.count(label);
    let got = [
        count("applied"),
        count("skipped"),
        count("duplicate"),
        count("dead-lettered"),
    ];
    prop_assert_eq!(
        got.iter().sum::<u64>(),
        events,
        "one outcome each: {:?}",
        got
    );
    prop_assert_eq!(
        got[3],
        dead_letters as u64,
        "a DLQ line for each dead letter"
    );
    prop_assert_eq!(
        r.code,
        i32::from(dead_letters > 0),
        "exit 1 only for dead letters"
    );
    let (mut must, mut may) = ([0u64; 4], [0u64; 4]);
    for (_, rec) in expected {
        let outcomes = possible(&rec.expect);
        for &o in outcomes {
            may[o] += 1;
        }
        if let [o] = outcomes {
            must[*o] += 1;
        }
    }
    for (o, label) in ["applied", "skipped", "duplicate", "dead-lettered"]
        .iter()
        .enumerate()
    {
        prop_assert!(
            must[o] <= got[o] && got[o] <= may[o],
            "{label}: {}, for {} records that must and {} that may",
            got[o],
            must[o],
            may[o]
        );
    }
    Ok(())
}

/// The outcomes a record may get: 0 applied, 1 skipped, 2 duplicate, 3 dead-lettered.
fn possible(expect: &Expect) -> &'static [usize] {
    match expect {
        Expect::Applied(_) => &[0],
        Expect::Skipped => &[1],
        Expect::Duplicate => &[2],
        Expect::Dead(_) => &[3],
        Expect::DeadOrDuplicate(_) => &[2, 3],
        Expect::Any => &[0, 1, 2, 3],
    }
}

/// Every dead letter is the one of an input record (by line and message id), holds its payload
/// byte for byte and a reason it may have; every record known to fail has one, no other has.
fn check_dead_letters(dlq: &[Value], expected: &[(u64, Rec)]) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for d in dlq {
        let file = d["source"]["file"].as_str().unwrap_or_default();
        prop_assert!(file.ends_with("in.jsonl"), "source.file of {}", d);
        let line = d["source"]["line"].as_u64();
        let message_id = d["source"]["message_id"].as_str().map(str::to_owned);
        let found = expected
            .iter()
            .find(|(l, r)| Some(*l) == line && r.message_id == message_id);
        let Some((line, rec)) = found else {
            return Err(TestCaseError::fail(format!(
                "a dead letter of no input record: {d}"
            )));
        };
        prop_assert!(
            seen.insert((*line, message_id.clone())),
            "two dead letters of one record: {}",
            d
        );
        let reason = d["reason"].as_str().unwrap_or_default();
        prop_assert!(
            input::REASONS.contains(&reason),
            "undocumented reason: {}",
            d
        );
        match &rec.expect {
            Expect::Dead(reasons) | Expect::DeadOrDuplicate(reasons) => prop_assert!(
                reasons.contains(&reason),
                "line {line} {message_id:?}: reason {reason}, expected one of {reasons:?}: {d}"
            ),
            Expect::Any => {}
            other => {
                return Err(TestCaseError::fail(format!(
                    "line {line} {message_id:?}: expected {other:?}, dead-lettered: {d}"
                )));
            }
        }
        let want = rec.payload.as_deref().unwrap_or_default();
        prop_assert!(
            payload(d) == want,
            "line {line} {message_id:?}: payload not byte-exact: {d}"
        );
        prop_assert_eq!(
            d["truncated"].as_bool().unwrap_or(false),
            rec.truncated,
            "{}",
            d
        );
        prop_assert_eq!(d["attempts"].as_u64(), Some(rec.attempts), "{}", d);
    }
    for (line, rec) in expected {
        if let Expect::Dead(_) = rec.expect {
            let key = (*line, rec.message_id.clone());
            prop_assert!(
                seen.contains(&key),
                "line {line} {:?}: no dead letter",
                rec.message_id
            );
        }
    }
    Ok(())
}

/// The payload of a dead letter: `payload` (text) or `payload_base64` (any other bytes).
fn payload(d: &Value) -> Vec<u8> {
    match (d["payload"].as_str(), d["payload_base64"].as_str()) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

/// The case (each line's kind and first bytes) and the run, for a failure.
fn describe(case: &Case, lines: &[Line], r: &Run) -> String {
    let mut s = format!(
        "\nbatch_size {}, final newline {}\n",
        case.batch_size, case.final_newline
    );
    for (i, l) in lines.iter().enumerate() {
        let head = String::from_utf8_lossy(&l.bytes[..l.bytes.len().min(100)]);
        let crlf = if l.crlf { " CRLF" } else { "" };
        s.push_str(&format!("{:3} {}{crlf}: {head:?}\n", i + 1, l.what));
    }
    let cut = |t: &str| t.chars().take(4000).collect::<String>();
    s.push_str(&format!(
        "stdout:\n{}\nstderr:\n{}",
        cut(&r.stdout),
        cut(&r.stderr)
    ));
    s
}

/// Regression (found by the property above): with `[dedupe]`, a producer's fixed copy of an event
/// that was dead-lettered earlier in the same unit of work was counted a duplicate and never
/// applied, while in a unit of its own (the control, `batch_size = 1`) it was: the unit boundary
/// decided whether an invalidation was lost. (In units of their own, the broken copy may wait for
/// the fixed one and be its duplicate: units in flight take ids in any order.)
#[test]
fn a_fixed_copy_after_a_dead_lettered_one_in_the_same_unit_is_applied() {
    for batch_size in [1000, 1] {
        let mut w = World::new();
        w.extra_config = config(batch_size);
        w.rules("hostile.yaml", RULES);
        let mut c = conn();
        w.set(&mut c, &["P:in:k:1", "P:in:k:2"]);
        let lines = [
            // No `n`: template_error; then the producer's fix, under the same id.
            r#"{"type":"k.changed","id":"e1","data":{"m":1}}"#,
            r#"{"type":"k.changed","id":"e1","data":{"n":1}}"#,
            // Applied, then a true duplicate.
            r#"{"type":"k.changed","id":"e2","data":{"n":2}}"#,
            r#"{"type":"k.changed","id":"e2","data":{"n":2}}"#,
        ]
        .map(String::from);
        let r = w.replay(&w.lines("in.jsonl", &lines));
        let dead = r.count("dead-lettered");
        assert_eq!(r.code, i32::from(dead > 0), "{r:?}");
        let counts = (r.count("applied"), r.count("duplicate") + dead);
        assert_eq!(counts, (2, 2), "batch_size {batch_size}: {}", r.stdout);
        assert!(!w.exists(&mut c, "P:in:k:1"), "batch_size {batch_size}");
        assert!(!w.exists(&mut c, "P:in:k:2"), "batch_size {batch_size}");
    }
}
