//! End to end against a real 3-primary Redis Cluster, through the library's Redis layer.
//!
//! Start it with `bash scripts/redis-cluster.sh start` (CI does), then `cargo test --test cluster`
//! (seeds, skipping and the harness: tests/common/cluster.rs).
//!
//! Every test works under its own random key prefix, so the tests run in parallel.

mod common;

use std::time::Duration;

use common::cluster::{ClusterWorld, cluster_conn};
use common::layer::{self, TagLayout, slot};
use redis::Commands;

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slot_matches_cluster_keyslot() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let mut samples: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "{}",
        "{}{",
        "{}}",
        "}{",
        "a{b}c{d}",
        "{}foo",
        "foo{}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{user1000}.following",
        "{user1000}.followers",
        "{{}}",
        "a{",
        "a}",
        "{a",
        "}a",
        "{p1}:a",
        "foo",
        "bar",
        "123456789",
        "é{ü}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let alphabet = b"ab{}:_\xff\x00";
    while samples.len() < 1000 {
        let len = rand::random_range(0..24);
        let key: Vec<u8> = (0..len)
            .map(|_| {
                if rand::random_bool(0.5) {
                    alphabet[rand::random_range(0..alphabet.len())]
                } else {
                    rand::random::<u8>()
                }
            })
            .collect();
        samples.push(key);
    }
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let expected = c.keyslots(&refs);
    let mut wrong = Vec::new();
    for (k, want) in refs.iter().zip(&expected) {
        let got = slot(k);
        if got != *want {
            wrong.push((String::from_utf8_lossy(k).into_owned(), *want, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "slot() differs from CLUSTER KEYSLOT for (key, cluster, slot()): {wrong:?}"
    );
}

#[tokio::test]
async fn deletes_2000_keys_over_all_slots() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let ks = c.keys("k:", 2000);
    c.set(&ks);
    // Also 600 keys in one slot through a hash tag: more than keys_per_command (256).
    let tagged: Vec<String> = (0..600).map(|i| format!("{p}{{p1}}:a{i}")).collect();
    c.set(&tagged);
    let pattern = format!("{p}*");
    c.assert_on_every_primary(&pattern);
    let slots: std::collections::HashSet<u16> = c
        .keyslots(&ks.iter().map(|k| k.as_bytes()).collect::<Vec<_>>())
        .into_iter()
        .collect();
    assert!(slots.len() > 1500, "only {} distinct slots", slots.len());
    let survivor = format!("{p}survivor");
    c.set(std::slice::from_ref(&survivor));

    let plan = layer::delete(ks.iter().chain([&format!("{p}absent")]));
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 2000, "{report:?}");
    assert!(report.tag_failures.is_empty(), "{report:?}");
    assert_eq!(
        c.count(&format!("{p}k:*")),
        0,
        "{:?}",
        c.per_node(&format!("{p}k:*"))
    );

    let plan = layer::delete(&tagged);
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 600, "{report:?}");
    assert_eq!(c.count(&format!("{p}{{p1}}*")), 0);
    assert!(c.exists(&survivor));

    // Applying the same plan again is harmless.
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 0);
}

#[tokio::test]
async fn pattern_delete_scans_every_primary() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let matching = c.keys("page:", 300);
    let others = c.keys("keep:", 300);
    c.set(&matching);
    c.set(&others);
    // Hash-tagged keys under the pattern too.
    let tagged: Vec<String> = (0..50).map(|i| format!("{p}page:{{p1}}:{i}")).collect();
    c.set(&tagged);
    let pattern = format!("{p}page:*");
    c.assert_on_every_primary(&pattern);
    c.assert_on_every_primary(&format!("{p}keep:*"));

    let plan = layer::delete_matching([&pattern]);
    let removed = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(removed.keys_removed, 350);
    assert_eq!(c.count(&pattern), 0, "{:?}", c.per_node(&pattern));
    assert_eq!(c.count(&format!("{p}keep:*")), 300);

    // Through a plan.
    c.set(&matching);
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 300, "{report:?}");
    assert_eq!(c.count(&pattern), 0);
    assert_eq!(c.count(&format!("{p}keep:*")), 300);
}

#[tokio::test]
async fn tag_set_mode_members_on_other_slots() {
    // Small SCAN pages and commands: many rounds for few keys.
    let Some(mut c) = ClusterWorld::start_small_batches(10, 7).await else {
        return;
    };
    let p = c.p.clone();
    let tag_prefix = format!("{p}tag:");
    let members = c.keys("m:", 400);
    let existing = &members[..350];
    c.set(existing);
    let set = format!("{tag_prefix}product:1");
    c.sadd(&set, &members);
    let other_members = c.keys("o:", 20);
    c.set(&other_members);
    let other_set = format!("{tag_prefix}product:2");
    c.sadd(&other_set, &other_members);
    c.assert_on_every_primary(&format!("{p}m:*"));
    // The members live in many slots, not only the tag set's.
    let set_slot = slot(set.as_bytes());
    assert!(members.iter().any(|m| slot(m.as_bytes()) != set_slot));

    let report = c
        .apply(&layer::tags(["product:1"]), &TagLayout::set(&tag_prefix))
        .await;
    assert_eq!(report.keys_removed, 350, "{report:?}");
    assert_eq!(report.tags_invalidated, 1, "{report:?}");
    assert!(report.tag_failures.is_empty(), "{report:?}");
    assert_eq!(c.count(&format!("{p}m:*")), 0);
    assert!(!c.exists(&set), "the emptied tag set must be gone");
    // The other tag is untouched.
    assert_eq!(c.count(&format!("{p}o:*")), 20);
    let n: usize = c.cc.scard(&other_set).unwrap();
    assert_eq!(n, 20);

    // A tag that is not a set is a per-tag failure, not an error.
    let bad = format!("{tag_prefix}bad");
    c.set(std::slice::from_ref(&bad));
    let report = c
        .apply(
            &layer::tags(["bad", "product:2"]),
            &TagLayout::set(&tag_prefix),
        )
        .await;
    assert_eq!(report.tag_failures.len(), 1, "{report:?}");
    assert_eq!(report.tag_failures[0].0, "bad");
    assert_eq!(report.keys_removed, 20, "{report:?}");
    assert_eq!(c.count(&format!("{p}o:*")), 0);
}

/// Cache writers fill hot keys on a miss (the Cluster way: `SET`, then `SADD`) while their tags are
/// invalidated over and over. The `SREM` runs on another node than the `UNLINK`s, so a key filled
/// again in between must be registered again: when it is over, every key that exists is in its
/// tag's set (see the single-Redis test of the same name in tests/tag_index.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_filled_again_during_its_tag_invalidation_stays_in_the_index() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let tag_prefix = format!("{p}tag:");
    let (tags, work) = layer::hot_tags(&p, &tag_prefix);

    let stop = Arc::new(AtomicBool::new(false));
    let fills = Arc::new(AtomicU64::new(0));
    // Two writers, each filling half of the tags, so that fills come often enough to land in the
    // window between an UNLINK and the SREM.
    let writers: Vec<_> = work
        .chunks(work.len() / 2)
        .map(|half| {
            let (stop, fills, half) = (stop.clone(), fills.clone(), half.to_vec());
            let mut cc = cluster_conn();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (set, keys) in &half {
                        for k in keys {
                            if !cc.exists::<_, bool>(k).unwrap() {
                                let _: () = cc.set(k, "fresh").unwrap();
                                let _: () = cc.sadd(set, k).unwrap();
                                fills.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();

    let removed = layer::invalidate_over_and_over(&c.redis, &tags, &tag_prefix, 400).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let fills = fills.load(Ordering::Relaxed);
    layer::assert_no_live_key_left_out_of_its_tag_set(&mut c.cc, &work, removed, fills);
}

#[tokio::test]
async fn tag_version_mode_incr() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let tag_prefix = format!("{p}v:");
    let tags: Vec<String> = (0..30).map(|i| format!("product:{i}")).collect();
    let _: () = c.cc.set(format!("{tag_prefix}product:0"), 5).unwrap();
    let wrong = format!("{tag_prefix}wrong");
    c.sadd(&wrong, &["x".to_owned()]);
    let plan = layer::tags(tags.iter().map(String::as_str).chain(["wrong"]));
    let report = c.apply(&plan, &TagLayout::version(&tag_prefix)).await;
    assert_eq!(report.tags_invalidated, 30, "{report:?}");
    assert_eq!(report.tag_failures.len(), 1, "{report:?}");
    assert_eq!(report.tag_failures[0].0, "wrong");
    c.assert_on_every_primary(&format!("{tag_prefix}product:*"));
    let v: i64 = c.cc.get(format!("{tag_prefix}product:0")).unwrap();
    assert_eq!(v, 6);
    for t in &tags[1..] {
        let v: i64 = c.cc.get(format!("{tag_prefix}{t}")).unwrap();
        assert_eq!(v, 1, "{t}");
    }
    c.apply(&plan, &TagLayout::version(&tag_prefix)).await;
    let v: i64 = c.cc.get(format!("{tag_prefix}product:0")).unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn expire_lt_shortens_only() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let no_ttl = c.keys("nottl:", 30);
    let long = c.keys("long:", 30);
    let short = c.keys("short:", 30);
    c.set(&no_ttl);
    c.set_px(&long, 3_600_000);
    c.set_px(&short, 10_000);
    c.assert_on_every_primary(&format!("{p}*"));
    let absent = format!("{p}absent");
    let all = no_ttl.iter().chain(&long).chain(&short).chain([&absent]);
    let plan = layer::expire(all, Duration::from_secs(60));
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.expires_set, 60, "{report:?}");
    for k in no_ttl.iter().chain(&long) {
        let t = c.pttl(k);
        assert!((50_000..=60_000).contains(&t), "{k}: {t}");
    }
    for k in &short {
        let t = c.pttl(k);
        assert!((0..=10_000).contains(&t), "{k}: {t}");
    }
}

#[tokio::test]
async fn members_of_sets_on_different_slots() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let sets: Vec<String> = c.keys("set:", 12);
    for (i, s) in sets.iter().enumerate() {
        c.sadd(s, &c.keys(&format!("member{i}:"), i + 1));
    }
    c.assert_on_every_primary(&format!("{p}set:*"));
    let string = format!("{p}string");
    c.set(std::slice::from_ref(&string));
    let absent = format!("{p}absent");
    let mut ask = sets.clone();
    ask.push(string.clone());
    ask.push(absent.clone());
    let got = c.redis.members(&ask, 1000).await.unwrap();
    assert_eq!(got.len(), ask.len());
    for (i, s) in sets.iter().enumerate() {
        let mut m = got[s].clone().unwrap();
        m.sort();
        let mut want: Vec<Vec<u8>> = c
            .keys(&format!("member{i}:"), i + 1)
            .into_iter()
            .map(String::into_bytes)
            .collect();
        want.sort();
        assert_eq!(m, want, "{s}");
    }
    assert!(got[&string].is_err(), "{:?}", got[&string]);
    assert_eq!(got[&absent], Ok(vec![]));
}

#[tokio::test]
async fn sweeper_covers_every_primary() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let no_ttl = c.keys("sw:nottl:", 60);
    let long = c.keys("sw:long:", 60);
    let within = c.keys("sw:ok:", 30);
    let outside = c.keys("other:", 30);
    c.set(&no_ttl);
    c.set(&outside);
    c.set_px(&long, 3_600_000);
    c.set_px(&within, 30_000);
    c.assert_on_every_primary(&format!("{p}sw:nottl:*"));
    c.assert_on_every_primary(&format!("{p}sw:long:*"));
    let policy = layer::ttl_policy(format!("{p}sw:*"), Duration::from_secs(120), 0.1);
    let dry = c.redis.sweep(&policy, true).await.unwrap();
    assert_eq!(dry.scanned, 150, "{dry:?}");
    assert_eq!(dry.over_policy, 120, "{dry:?}");
    assert_eq!(dry.fixed, 0, "{dry:?}");
    assert_eq!(c.pttl(&no_ttl[0]), -1);

    let report = c.redis.sweep(&policy, false).await.unwrap();
    assert_eq!(report.scanned, 150, "{report:?}");
    assert_eq!(report.over_policy, 120, "{report:?}");
    assert_eq!(report.fixed, 120, "{report:?}");
    for k in no_ttl.iter().chain(&long) {
        let t = c.pttl(k);
        assert!((100_000..=120_000).contains(&t), "{k}: {t}");
    }
    for k in &within {
        let t = c.pttl(k);
        assert!((0..=30_000).contains(&t), "{k}: {t}");
    }
    for k in &outside {
        assert_eq!(c.pttl(k), -1, "{k} is outside the policy");
    }
    let again = c.redis.sweep(&policy, false).await.unwrap();
    assert_eq!(again.over_policy, 0, "{again:?}");
}

#[tokio::test]
async fn dedupe_seen_and_remember() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let dp = format!("{p}dedupe:");
    let ids: Vec<String> = (0..50).map(|i| format!("evt-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(c.redis.seen(&dp, &id_refs).await.unwrap(), vec![false; 50]);
    c.redis
        .remember(&dp, &id_refs[..25], Duration::from_secs(30))
        .await
        .unwrap();
    let seen = c.redis.seen(&dp, &id_refs).await.unwrap();
    assert_eq!(&seen[..25], &[true; 25]);
    assert_eq!(&seen[25..], &[false; 25]);
    c.assert_on_every_primary(&format!("{dp}*"));
    let t = c.pttl(&format!("{dp}evt-0"));
    assert!((0..=30_000).contains(&t), "{t}");

    // The window ends.
    c.redis
        .remember(&dp, &["short"], Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(c.redis.seen(&dp, &["short"]).await.unwrap(), vec![true]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.redis.seen(&dp, &["short"]).await.unwrap(), vec![false]);
}

#[tokio::test]
async fn rules_to_cluster_end_to_end() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let yaml = String::from_utf8(common::fixture_bytes("cluster/price.yaml"))
        .unwrap()
        .replace("P:", &p);
    let plan = layer::plan_of(
        &yaml,
        "price.updated",
        serde_json::json!({"product_id": 7, "category_ids": ["shoes", "running"]}),
    );
    assert_eq!(plan.deletes.len(), 2, "{plan:?}");
    assert_eq!(plan.patterns.len(), 2, "{plan:?}");

    let pages: Vec<String> = (0..100)
        .flat_map(|i| {
            [
                format!("{p}category:shoes:page:{i}"),
                format!("{p}category:running:page:{i}"),
                format!("{p}category:hats:page:{i}"),
            ]
        })
        .collect();
    c.set(&pages);
    c.set(&[
        format!("{p}price:7"),
        format!("{p}product:7"),
        format!("{p}price:8"),
    ]);
    let tag_prefix = format!("{p}tag:");
    let tagged = c.keys("view:", 40);
    c.set(&tagged);
    c.sadd(&format!("{tag_prefix}product:7"), &tagged);
    c.assert_on_every_primary(&format!("{p}category:shoes:*"));

    let report = c.apply(&plan, &TagLayout::set(&tag_prefix)).await;
    assert_eq!(report.keys_removed, 2 + 200 + 40, "{report:?}");
    assert_eq!(report.tags_invalidated, 1, "{report:?}");
    assert_eq!(c.count(&format!("{p}category:hats:*")), 100);
    assert_eq!(c.count(&format!("{p}category:shoes:*")), 0);
    assert_eq!(c.count(&format!("{p}category:running:*")), 0);
    assert_eq!(c.count(&format!("{p}view:*")), 0);
    assert!(c.exists(&format!("{p}price:8")));
    assert!(!c.exists(&format!("{p}price:7")));
}

#[tokio::test]
async fn primaries_are_discovered() {
    let Some(c) = ClusterWorld::start().await else {
        return;
    };
    assert!(c.primaries.len() >= 3);
    c.redis.ping().await.unwrap();
    assert!(c.redis.describe().starts_with("cluster "));
}

/// The smallest reproduction of the cross-slot bug: two keys in different slots.
#[tokio::test]
async fn two_keys_in_two_slots() {
    let Some(mut c) = ClusterWorld::start().await else {
        return;
    };
    let p = c.p.clone();
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    assert_ne!(slot(a.as_bytes()), slot(b.as_bytes()));
    c.set(&[a.clone(), b.clone()]);
    let report = c
        .redis
        .apply(&layer::delete([&a, &b]), &TagLayout::set("tag:"))
        .await;
    match report {
        Ok(r) => assert_eq!(r.keys_removed, 2, "{r:?}"),
        Err(e) => panic!(
            "deleting {a} and {b} (slots {} and {}): {e}",
            slot(a.as_bytes()),
            slot(b.as_bytes())
        ),
    }
}

/// What works today: everything in one slot through a hash tag (deletes over several `UNLINK`s,
/// set-mode tag invalidation whose members share the tag set's slot, version mode, expire, dedupe).
#[tokio::test]
async fn one_slot_through_hash_tag() {
    // Small SCAN pages and commands: many rounds for few keys.
    let Some(mut c) = ClusterWorld::start_small_batches(10, 50).await else {
        return;
    };
    let p = c.p.clone();
    // Deletes: 600 keys `{p1}:a…` (several UNLINKs of 50 keys, one slot).
    let tagged: Vec<String> = (0..600).map(|i| format!("{p}{{p1}}:a{i}")).collect();
    c.set(&tagged);
    let survivor = format!("{p}{{p1}}:survivor");
    c.set(std::slice::from_ref(&survivor));
    let absent = format!("{p}{{p1}}:absent");
    let plan = layer::delete(tagged.iter().chain([&absent]));
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.keys_removed, 600, "{report:?}");
    assert_eq!(c.count(&format!("{p}{{p1}}:a*")), 0);
    assert!(c.exists(&survivor));

    // Set mode: tag set `{p1}:tag:product:1`, members `{p1}:m…`, all in one slot.
    let members: Vec<String> = (0..300).map(|i| format!("{p}{{p1}}:m{i}")).collect();
    c.set(&members[..250]);
    let tag_prefix = format!("{p}{{p1}}:tag:");
    let set = format!("{tag_prefix}product:1");
    c.sadd(&set, &members);
    let report = c
        .apply(&layer::tags(["product:1"]), &TagLayout::set(&tag_prefix))
        .await;
    assert_eq!(report.keys_removed, 250, "{report:?}");
    assert_eq!(report.tags_invalidated, 1, "{report:?}");
    assert!(!c.exists(&set));
    assert_eq!(c.count(&format!("{p}{{p1}}:m*")), 0);

    // Version mode.
    let plan = layer::tags(["product:2"]);
    c.apply(&plan, &TagLayout::version(&tag_prefix)).await;
    c.apply(&plan, &TagLayout::version(&tag_prefix)).await;
    let v: i64 = c.cc.get(format!("{tag_prefix}product:2")).unwrap();
    assert_eq!(v, 2);

    // Expire LT.
    let (k1, k2) = (format!("{p}{{p1}}:e1"), format!("{p}{{p1}}:e2"));
    c.set(std::slice::from_ref(&k1));
    c.set_px(std::slice::from_ref(&k2), 5_000);
    let plan = layer::expire([&k1, &k2], Duration::from_secs(60));
    let report = c.apply(&plan, &TagLayout::set("tag:")).await;
    assert_eq!(report.expires_set, 1, "{report:?}");
    assert!((50_000..=60_000).contains(&c.pttl(&k1)));
    assert!(c.pttl(&k2) <= 5_000);

    // Dedupe with ids in one slot.
    let dp = format!("{p}{{p1}}:seen:");
    assert_eq!(
        c.redis.seen(&dp, &["a", "b"]).await.unwrap(),
        [false, false]
    );
    c.redis
        .remember(&dp, &["a"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c.redis.seen(&dp, &["a", "b"]).await.unwrap(), [true, false]);
}
