//! Every action kind of a rule, end to end: the events of a case replayed through the binary
//! against the real local Redis (DB 9 of 127.0.0.1:6379, or `INVALIDATOR_TEST_REDIS_URL`).
//!
//! Each test is a case folder `tests/fixtures/actions/{test name}/`: `given.json` (Redis before),
//! `rules.yaml`, `events.jsonl` and `expected.json` (the summary, Redis after, the dead letters);
//! see tests/common/spec.rs for their fields. A few tests check more in code after the case.
//! Every test works under its own random key prefix, so the tests run in parallel.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::conn;
use common::spec::{self, Spec};

/// One test per case folder of `tests/fixtures/actions/`, named after it.
macro_rules! cases {
    ($($(#[$doc:meta])* $case:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[test]
        fn $case() {
            spec::check("actions", stringify!($case));
        }
    )*};
}

cases! {
    delete_unlinks_exact_keys_and_counts_them,
    pattern_delete_removes_only_keys_under_the_literal_prefix,
    tags_version_mode_increments_and_deletes_nothing,
    expire_shortens_never_lengthens_and_never_creates,
    fanout_expands_lists_and_their_product,
    false_condition_is_skipped_and_touches_nothing,
    cascade_for_each_member_of_a_real_set,
    cascade_cycle_ends_and_the_event_is_applied,
    fanout_over_the_limit_is_dead_lettered_and_removes_nothing,
    a_tag_index_of_the_wrong_type_dead_letters_only_its_events,
    a_cascade_set_of_the_wrong_type_dead_letters_the_event,
    pattern_delete_and_tags_scale_past_one_scan_batch,
}

#[test]
fn tags_set_mode_unlinks_members_and_srems_only_them() {
    let (spec, mut c) = spec::checked(
        "actions",
        "tags_set_mode_unlinks_members_and_srems_only_them",
    );

    // A member registered after the invalidation stays registered and alive.
    let (w, tag) = (&spec.w, spec.w.k("P:tag:product:7"));
    w.set(&mut c, &["P:cart:3"]);
    let _: i64 = redis::cmd("SADD")
        .arg(&tag)
        .arg(w.k("P:cart:3"))
        .query(&mut c)
        .unwrap();
    let is_member: bool = redis::cmd("SISMEMBER")
        .arg(&tag)
        .arg(w.k("P:cart:3"))
        .query(&mut c)
        .unwrap();
    assert!(is_member);
    assert!(w.exists(&mut c, "P:cart:3"));
}

#[test]
fn expire_jitter_stays_within_bounds() {
    let (spec, mut c) = spec::checked("actions", "expire_jitter_stays_within_bounds");

    let ttls: Vec<i64> = spec
        .expand("P:reco:k{0..40}")
        .iter()
        .map(|k| redis::cmd("PTTL").arg(k).query(&mut c).unwrap())
        .collect();
    let distinct: HashSet<i64> = ttls.iter().map(|t| t / 1000).collect();
    assert!(distinct.len() > 3, "jitter spreads TTLs: {ttls:?}");
}

/// A `log` target sends nothing: each path is counted and logged at INFO (the default level), so
/// a dry run of a CDN configuration shows what would be purged.
#[test]
fn purge_to_a_log_target_is_counted_as_logged() {
    let spec = Spec::load("actions", "purge_to_a_log_target_is_counted_as_logged");
    let mut c = conn();
    spec.given(&mut c);
    let input = spec
        .w
        .input_fixture("actions/purge_to_a_log_target_is_counted_as_logged/events.jsonl");
    let dlq = spec.w.dlq_path();
    let args = [
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let run = spec.w.bin_env(&args, &[("RUST_LOG", "info")]);
    spec.then(&mut c, &run);
    for path in ["/api/products/1", "/api/products/3", "/products/2/*"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("purge planned (log target") && l.contains(path)),
            "{path} logged at INFO:\n{}",
            run.stderr
        );
    }
}

#[test]
fn redelete_after_deletes_again_before_the_replay_ends() {
    let spec = Spec::load(
        "actions",
        "redelete_after_deletes_again_before_the_replay_ends",
    );
    let mut c = conn();
    spec.given(&mut c);
    let started = Instant::now();
    let run = spec.replay();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the replay waits for its redeletes (200 ms)"
    );
    spec.then(&mut c, &run);
}
