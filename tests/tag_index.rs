//! The tag index (`[tags] mode = "set"`: a set of keys per tag) stays true to the cache, through
//! the library's Redis layer against the real local Redis (DB 9 of 127.0.0.1:6379, or
//! `INVALIDATOR_TEST_REDIS_URL`): a key filled again while its tag is invalidated stays indexed,
//! and a Redis that refuses transactions still has its tag sets invalidated. The Redis Cluster
//! side of the same: tests/cluster.rs.
//!
//! Every test works under its own random key prefix, so the tests run in parallel.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::layer::{self, TagLayout};
use common::{World, conn};

/// Cache writers fill hot keys on a miss (with the shipped `scripts/tag-set.lua`) while their tags
/// are invalidated over and over, as in a flash sale. A key filled again right after its `UNLINK`
/// is still a member of its set (its `SADD` changes nothing), and an `SREM` landing after the fill
/// would drop it from the index for good: the writer sees a hit and never registers it again, and
/// every later invalidation misses it until its TTL. When it is over, every key that exists must be
/// in its tag's set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_filled_again_during_its_tag_invalidation_stays_in_the_index() {
    let p = common::prefix();
    let tag_prefix = format!("{p}tag:");
    let (tags, work) = layer::hot_tags(&p, &tag_prefix);
    let redis = layer::single(common::redis_url()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let fills = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, fills, work) = (stop.clone(), fills.clone(), work.clone());
        std::thread::spawn(move || {
            let mut c = conn();
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(include_str!("../scripts/tag-set.lua"))
                .query(&mut c)
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                for (set, keys) in &work {
                    let hits: Vec<bool> = keys
                        .iter()
                        .fold(&mut redis::pipe(), |p, k| p.cmd("EXISTS").arg(k))
                        .query(&mut c)
                        .unwrap();
                    let mut fill = redis::pipe();
                    for (k, _) in keys.iter().zip(hits).filter(|(_, hit)| !hit) {
                        fill.cmd("EVALSHA")
                            .arg(&sha)
                            .arg(2)
                            .arg(k)
                            .arg(set)
                            .arg("fresh")
                            .arg(60_000)
                            .ignore();
                    }
                    if !fill.is_empty() {
                        let () = fill.query(&mut c).unwrap();
                        fills.fetch_add(fill.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let removed = layer::invalidate_over_and_over(&redis, &tags, &tag_prefix, 300).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let fills = fills.load(Ordering::Relaxed);
    layer::assert_no_live_key_left_out_of_its_tag_set(&mut conn(), &work, removed, fills);
}

/// The ACL rules a user is created with for each case: every command but the ones refused.
const REFUSED_TRANSACTIONS: &[&[&str]] = &[&["-multi", "-exec"], &["-exec"]];

/// A Redis that refuses `MULTI` or `EXEC` (a proxy, or an ACL without them, as here): tag sets
/// are still invalidated (the ordered way of Redis Cluster), and the count of keys removed stays
/// right.
#[tokio::test]
async fn tag_sets_are_invalidated_where_transactions_are_refused() {
    for refused in REFUSED_TRANSACTIONS {
        tag_sets_without_transactions(refused).await;
    }
}

async fn tag_sets_without_transactions(refused: &[&str]) {
    let url = common::redis_url();
    if url.contains('@') {
        eprintln!("note: the test Redis URL carries credentials; skipping the ACL test");
        return;
    }
    let w = World::new();
    let mut c = conn();
    let user = format!("nomulti{:08x}", rand::random::<u32>());
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", ">pw", "~*", "&*", "+@all"][..])
        .arg(refused)
        .query(&mut c)
        .unwrap();
    let redis = layer::single(url.replacen("redis://", &format!("redis://{user}:pw@"), 1)).await;
    let tag_prefix = w.k("P:tag:");
    w.set(&mut c, &["P:a:1", "P:a:2", "P:b:1", "P:keep"]);
    let register = |c: &mut redis::Connection, set: &str, keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| w.k(k)).collect();
        let _: i64 = redis::cmd("SADD").arg(w.k(set)).arg(keys).query(c).unwrap();
    };
    register(&mut c, "P:tag:a", &["P:a:1", "P:a:2", "P:a:gone"]);
    register(&mut c, "P:tag:b", &["P:b:1"]);

    let plan = layer::tags(["a", "b"]);
    let report = layer::apply(&redis, &plan, &TagLayout::set(&tag_prefix)).await;
    assert_eq!(report.keys_removed, 3, "{refused:?}: {report:?}");
    assert_eq!(report.tags_invalidated, 2, "{refused:?}: {report:?}");
    assert!(report.tag_failures.is_empty(), "{refused:?}: {report:?}");
    for k in ["P:a:1", "P:a:2", "P:b:1", "P:tag:a", "P:tag:b"] {
        assert!(!w.exists(&mut c, k), "{refused:?}: {k} must be gone");
    }
    assert!(w.exists(&mut c, "P:keep"), "{refused:?}");

    // Again, now without trying MULTI first.
    w.set(&mut c, &["P:a:1"]);
    register(&mut c, "P:tag:a", &["P:a:1"]);
    let report = layer::apply(&redis, &plan, &TagLayout::set(&tag_prefix)).await;
    assert_eq!(report.keys_removed, 1, "{refused:?}: {report:?}");
    assert!(!w.exists(&mut c, "P:a:1"), "{refused:?}");
    assert!(!w.exists(&mut c, "P:tag:a"), "{refused:?}");

    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut c)
        .unwrap();
}
