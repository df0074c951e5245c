//! Replay against hostile input, the binary against the real local Redis (DB 9): a producer's
//! retry of a broken event under the same id.

mod common;

use common::{World, conn};

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

fn config(batch_size: usize) -> String {
    format!(
        "[limits]\nmax_event_bytes = 2048\n\n[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n\n\
         [replay]\nbatch_size = {batch_size}\nmax_in_flight = 4\n"
    )
}

/// Regression (found by a fuzz test of replay): with `[dedupe]`, a producer's fixed copy of an event
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
