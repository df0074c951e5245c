//! `[dedupe]`: an event id applied within the window is a duplicate afterwards, in the same file,
//! in a later replay, and in a unit running beside the one of its first copy; only applied events
//! with an id are remembered. The binary against the real local Redis.
//!
//! Inputs and configurations are fixtures of `tests/fixtures/dedupe/` (ids are written `P:…`, under
//! the test's key prefix).

mod common;

use common::{World, conn, event};
use serde_json::json;

/// Deletes `P:k:{n}` for every `k.changed` event.
const K_RULES: &str = "rules/delete_k.yaml";

#[test]
fn dedupe_marks_ids_seen_within_the_window() {
    let w = World::new()
        .with_config("config/dedupe_10m.toml")
        .with_rules(K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    // P:e1, P:e2, then P:e1 again.
    let input = w.input_fixture("dedupe/twice_in_one_file.jsonl");
    let r = w.replay(&input);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("duplicate"), 1, "twice within one file");

    // Refilled, then replayed again: every id is a duplicate and nothing is deleted.
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let r = w.replay(&input);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 0);
    assert_eq!(r.count("duplicate"), 3);
    assert!(w.exists(&mut c, "P:k:1"));
    assert!(w.exists(&mut c, "P:k:2"));
}

#[test]
fn dedupe_remembers_only_applied_events_with_an_id() {
    let w = World::new()
        .with_config("config/dedupe_10m.toml")
        .with_rules(K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    // P:x1 dead-lettered (template error: no `n`), which must not be remembered; then twice the
    // same event without an id, never a duplicate.
    let r = w.replay(&w.input_fixture("dedupe/a_dead_letter_and_events_without_id.jsonl"));
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        (
            r.count("applied"),
            r.count("duplicate"),
            r.count("dead-lettered")
        ),
        (2, 0, 1)
    );

    // The same id, now valid: applied, not a duplicate.
    let r = w.replay(&w.input_fixture("dedupe/the_dead_letter_fixed.jsonl"));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!((r.count("applied"), r.count("duplicate")), (1, 0));
    assert!(!w.exists(&mut c, "P:k:1"));
}

/// Regression: with several units in flight, a copy of an id in a unit running beside the unit of
/// its first copy was applied again (neither had remembered its ids in Redis yet).
#[test]
fn dedupe_holds_between_units_applied_at_the_same_time() {
    let w = World::new()
        .with_config("dedupe/units_of_one_in_flight.toml")
        .with_rules(K_RULES);
    let mut lines = Vec::new();
    for i in 0..200 {
        // Every id twice in a row: each copy is its own unit, and the two run at the same time.
        let line = event("k.changed", &w.k(&format!("P:a{i}")), json!({ "n": i }));
        lines.push(line.clone());
        lines.push(line);
    }
    let r = w.replay(&w.lines("in.jsonl", &lines));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("events"), 400);
    assert_eq!(
        (r.count("applied"), r.count("duplicate")),
        (200, 200),
        "{r:?}"
    );
    assert_eq!(
        r.count("applied") + r.count("skipped") + r.count("duplicate") + r.count("dead-lettered"),
        400
    );
}

/// A copy is dropped only when an earlier copy succeeded: with the first copy of each id
/// dead-lettered (its `n` is missing) while the second, fixed, runs beside it in another unit, the
/// second is applied. (It used to be dropped as a duplicate of the copy in flight.)
#[test]
fn a_copy_beside_a_failed_first_copy_is_applied() {
    let w = World::new()
        .with_config("dedupe/units_of_one_in_flight.toml")
        .with_rules(K_RULES);
    let mut c = conn();
    let mut lines = Vec::new();
    let mut keys = Vec::new();
    for i in 0..200 {
        let id = w.k(&format!("P:b{i}"));
        lines.push(event("k.changed", &id, json!({ "m": i })));
        lines.push(event("k.changed", &id, json!({ "n": i })));
        keys.push(format!("P:k:{i}"));
    }
    w.set(&mut c, &keys.iter().map(String::as_str).collect::<Vec<_>>());
    let r = w.replay(&w.lines("in.jsonl", &lines));
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("applied"), 200, "every fixed copy: {}", r.stdout);
    // A broken copy is dead-lettered, or a duplicate when its fixed copy got there first.
    assert_eq!(
        r.count("dead-lettered") + r.count("duplicate"),
        200,
        "{}",
        r.stdout
    );
    assert!(
        keys.iter().all(|k| !w.exists(&mut c, k)),
        "every fixed copy applied"
    );
}
