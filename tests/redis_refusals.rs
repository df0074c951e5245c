//! Refusals from Redis that are not the events' fault (issue 14, item 16), each against a Redis
//! server of the test's own:
//!
//! - a tag transaction aborted once (`EXECABORT`: here an ACL refuses the queued `UNLINK`) does not
//!   turn transactions off for good: once the refusal is gone, tag sets are invalidated inside
//!   `MULTI`/`EXEC` again (without them the refill race of the tag index reopens);
//! - `READONLY` (the server is a replica: the primary failed over and the client still points at
//!   it) is an outage: replay retries it within `retry_for` and finishes when the server is
//!   promoted, with the control run showing that without that budget the same refusal ends the
//!   replay with exit status 3.

mod common;

use std::time::Duration;

use common::topology::{Server, count_existing, set_all};
use common::{World, layer};

fn acl(server: &Server, rule: &str) {
    let () = server
        .query(redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule))
        .unwrap();
}

fn tag_member(server: &Server, tag: &str, key: &str) {
    let () = server.query(redis::cmd("SET").arg(key).arg(1)).unwrap();
    let () = server
        .query(redis::cmd("SADD").arg(format!("tag:{tag}")).arg(key))
        .unwrap();
}

#[tokio::test]
async fn an_aborted_tag_transaction_does_not_turn_transactions_off_for_good() {
    let server = Server::start();
    let redis = layer::single(server.url()).await;
    tag_member(&server, "a", "page:a");

    // The fault: the queued UNLINK is refused, so EXEC answers EXECABORT (and the ordered path
    // after it fails too: the unit is not applied).
    acl(&server, "-unlink");
    let refused = redis
        .apply(&layer::tags(["a"]), &layer::TagLayout::set("tag:"))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        server.errors("EXECABORT") >= 1,
        "the transaction was aborted"
    );

    // The refusal gone, the next invalidation runs in a transaction again.
    acl(&server, "+unlink");
    let multi_before = server.calls("multi");
    tag_member(&server, "b", "page:b");
    let report = layer::apply(&redis, &layer::tags(["b"]), &layer::TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 1);
    assert!(
        server.calls("multi") > multi_before,
        "tag sets are invalidated inside MULTI/EXEC again"
    );

    // A refused MULTI (a proxy without transactions) still turns them off, for good.
    acl(&server, "-multi");
    tag_member(&server, "c", "page:c");
    let report = layer::apply(&redis, &layer::tags(["c"]), &layer::TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 1, "done without a transaction");
    acl(&server, "+multi");
    let multi_before = server.calls("multi");
    tag_member(&server, "d", "page:d");
    layer::apply(&redis, &layer::tags(["d"]), &layer::TagLayout::set("tag:")).await;
    assert_eq!(server.calls("multi"), multi_before);
}

/// Replay of 40 events at 20 a second against `server`, which a second into the run becomes a
/// replica of `primary` (both hold the keys `P:k:1..=40`): its writes answer `READONLY`. With
/// `promote_after`, `server` is promoted again that much later. Returns the run and the keys left.
fn replay_through_a_demotion(
    retry_for: &str,
    promote_after: Option<Duration>,
) -> (common::Run, usize) {
    let primary = Server::start();
    let server = Server::start();
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    delete: [\"P:k:{n}\"]\n",
    );
    let keys: Vec<String> = (1..=40).map(|n| w.k(&format!("P:k:{n}"))).collect();
    set_all(&mut primary.conn(), &keys);
    set_all(&mut server.conn(), &keys);
    let events: Vec<String> = (1..=40)
        .map(|n| common::event("k.changed", &format!("e{n}"), serde_json::json!({ "n": n })))
        .collect();
    let input = w.lines("events.jsonl", &events);
    let config = w.config_text_with_redis(&format!(
        "url = \"{}\"\nretry_for = \"{retry_for}\"\n",
        server.url()
    ));
    let mut run = w.spawn_bin(
        "replay",
        &config,
        &[
            "replay",
            "--rate",
            "20",
            "--dlq",
            "dlq.jsonl",
            input.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(run.running(), "the replay is mid-run");
    server.replica_of(&primary);
    if let Some(after) = promote_after {
        std::thread::sleep(after);
        assert!(run.running(), "replay waits while the server is read-only");
        server.promote();
    }
    let done = run.wait(Duration::from_secs(60)).expect("replay ends");
    let left = count_existing(&mut server.conn(), &keys);
    (done, left)
}

#[test]
fn readonly_is_an_outage_that_replay_rides_through() {
    // Control: with a budget shorter than the refusal, the demoted server ends the replay (exit
    // status 3, an outage), and nothing is dead-lettered.
    let (control, left) = replay_through_a_demotion("300ms", None);
    assert_eq!(control.code, 3, "{control:?}");
    assert!(
        control.stderr.contains("read only replica"),
        "{}",
        control.stderr
    );
    assert!(left > 0, "keys were left");
    assert!(
        !control.stdout.contains("dead-lettered:   1"),
        "{}",
        control.stdout
    );

    // Within the budget, READONLY is retried; once promoted, the server takes the rest, and the
    // invalidations its resync from the primary undid are applied again (the failover rewind).
    let (run, left) = replay_through_a_demotion("30s", Some(Duration::from_secs(2)));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("read only replica"),
        "the fault bit: {}",
        run.stderr
    );
    assert_eq!(run.count("applied"), 40, "{run:?}");
    assert_eq!(run.count("dead-lettered"), 0, "{run:?}");
    assert_eq!(left, 0, "every key deleted in the end");
}
