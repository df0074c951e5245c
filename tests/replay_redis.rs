//! End to end against a real Redis (DB 9 of 127.0.0.1:6379, or `INVALIDATOR_TEST_REDIS_URL`):
//! every action kind, confinement of hostile values, replay through the binary (DLQ, exit status,
//! Lambda event files, dedupe, accounting), dry runs and `explain`, and the sweeper.
//!
//! Every test works under its own random key prefix, so the tests run in parallel.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{World, conn};
use serde_json::{Value, json};

fn ev(kind: &str, id: &str, data: Value) -> String {
    json!({"type": kind, "id": id, "data": data}).to_string()
}

/// Every key under the prefix with its type, value (strings and sets) and whether it has a TTL.
fn snapshot(w: &World, c: &mut redis::Connection) -> BTreeMap<String, (String, String, i64)> {
    let mut out = BTreeMap::new();
    for k in w.keys(c, "P:*") {
        let t: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
        let v = match t.as_str() {
            "string" => redis::cmd("GET").arg(&k).query::<String>(c).unwrap(),
            "set" => {
                let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(c).unwrap();
                m.sort();
                m.join(",")
            }
            _ => String::new(),
        };
        let ttl: i64 = redis::cmd("TTL").arg(&k).query(c).unwrap();
        out.insert(k, (t, v, ttl.signum()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Actions, through the library
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_unlinks_exact_keys_and_counts_them() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: d\n    on: price.updated\n    delete:\n      - P:price:{product_id}\n      - P:product:{product_id}\n      - P:absent:{product_id}\n",
    );
    let mut c = conn();
    w.set(
        &mut c,
        &["P:price:1", "P:product:1", "P:price:2", "P:price:10"],
    );
    let s = w
        .replay_lines(
            &[ev("price.updated", "e1", json!({"product_id": 1}))],
            false,
        )
        .await;
    assert_eq!((s.events, s.applied, s.dead_lettered), (1, 1, 0));
    assert_eq!(s.keys_removed, 2, "two of the three keys existed");
    assert!(!w.exists(&mut c, "P:price:1"));
    assert!(!w.exists(&mut c, "P:product:1"));
    assert!(w.exists(&mut c, "P:price:2"));
    assert!(w.exists(&mut c, "P:price:10"));
}

#[tokio::test]
async fn pattern_delete_removes_only_keys_under_the_literal_prefix() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: pages\n    on: category.changed\n    delete:\n      - P:category:{category_id}:page:*\n",
    );
    let mut c = conn();
    w.set(
        &mut c,
        &[
            "P:category:shoes:page:1",
            "P:category:shoes:page:2",
            "P:category:shoes:page:10:en",
            // look-alikes that must survive
            "P:category:shoes:page",
            "P:category:shoes:pages:1",
            "P:category:shoesX:page:1",
            "P:category:sho:page:1",
            "P:category:running:page:1",
            "P:xcategory:shoes:page:1",
        ],
    );
    let s = w
        .replay_lines(
            &[ev(
                "category.changed",
                "e1",
                json!({"category_id": "shoes"}),
            )],
            false,
        )
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(s.keys_removed, 3);
    assert_eq!(
        w.keys(&mut c, "P:*"),
        vec![
            w.k("P:category:running:page:1"),
            w.k("P:category:sho:page:1"),
            w.k("P:category:shoes:page"),
            w.k("P:category:shoes:pages:1"),
            w.k("P:category:shoesX:page:1"),
            w.k("P:xcategory:shoes:page:1"),
        ]
    );
}

#[tokio::test]
async fn tags_set_mode_unlinks_members_and_srems_only_them() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: t\n    on: product.updated\n    tags:\n      - product:{product_id}\n",
    );
    let mut c = conn();
    let tag = w.k("P:tag:product:7");
    let other_tag = w.k("P:tag:product:8");
    w.set(&mut c, &["P:cart:1", "P:cart:2", "P:cmp:9", "P:bystander"]);
    // 300 members so that SSCAN takes several rounds (one is a stale member: no key behind it).
    let mut members: Vec<String> = (0..297).map(|i| w.k(&format!("P:bulk:{i}"))).collect();
    for m in &members {
        let _: () = redis::cmd("SET").arg(m).arg("v").query(&mut c).unwrap();
    }
    members.extend([w.k("P:cart:1"), w.k("P:cart:2"), w.k("P:gone")]);
    let _: i64 = redis::cmd("SADD")
        .arg(&tag)
        .arg(&members)
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("SADD")
        .arg(&other_tag)
        .arg(w.k("P:cmp:9"))
        .query(&mut c)
        .unwrap();

    let s = w
        .replay_lines(
            &[ev("product.updated", "e1", json!({"product_id": 7}))],
            false,
        )
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(s.tags_invalidated, 1);
    assert_eq!(s.keys_removed, 299, "every existing member, nothing else");
    assert!(!w.exists(&mut c, "P:cart:1"));
    assert!(!w.exists(&mut c, "P:bulk:0"));
    assert!(!w.exists(&mut c, "P:bulk:296"));
    assert!(w.exists(&mut c, "P:cmp:9"), "another tag's member survives");
    assert!(w.exists(&mut c, "P:bystander"));
    let left: i64 = redis::cmd("SCARD").arg(&tag).query(&mut c).unwrap();
    assert_eq!(left, 0, "the removed members are gone from the index");
    let other: i64 = redis::cmd("SCARD").arg(&other_tag).query(&mut c).unwrap();
    assert_eq!(other, 1);

    // A member registered after the invalidation stays registered and alive.
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

/// Cache writers fill hot keys on a miss (with the shipped `scripts/tag-set.lua`) while their tags
/// are invalidated over and over, as in a flash sale. A key filled again right after its `UNLINK`
/// is still a member of its set (its `SADD` changes nothing), and an `SREM` landing after the fill
/// would drop it from the index for good: the writer sees a hit and never registers it again, and
/// every later invalidation misses it until its TTL. When it is over, every key that exists must be
/// in its tag's set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_filled_again_during_its_tag_invalidation_stays_in_the_index() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use invalidator::apply::redis::Redis;
    use invalidator::config::{RedisConfig, TagMode};
    use invalidator::plan::Plan;

    let p = common::prefix();
    let tag_prefix = format!("{p}tag:");
    let tags: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
    let work: Vec<(String, Vec<String>)> = tags
        .iter()
        .map(|t| {
            let keys = (0..10).map(|i| format!("{p}k:{t}:{i}")).collect();
            (format!("{tag_prefix}{t}"), keys)
        })
        .collect();
    let redis = Redis::connect(
        &RedisConfig::single(common::redis_url()),
        Some(std::time::Duration::from_secs(5)),
    )
    .await
    .unwrap();

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

    let mut plan = Plan::default();
    for (i, t) in (0..).zip(&tags) {
        plan.tags.insert(t.clone(), vec![i]);
    }
    let mut removed = 0;
    for _ in 0..300 {
        let report = redis.apply(&plan, TagMode::Set, &tag_prefix).await.unwrap();
        assert!(report.tag_failures.is_empty(), "{report:?}");
        removed += report.keys_removed;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let fills = fills.load(Ordering::Relaxed);
    assert!(
        removed > 100 && fills > 100,
        "the writer and the invalidation must have run side by side: {removed} removed, {fills} fills"
    );

    let mut c = conn();
    let mut lost = Vec::new();
    for (set, keys) in &work {
        for k in keys {
            let exists: bool = redis::cmd("EXISTS").arg(k).query(&mut c).unwrap();
            let indexed: bool = redis::cmd("SISMEMBER")
                .arg(set)
                .arg(k)
                .query(&mut c)
                .unwrap();
            if exists && !indexed {
                lost.push(k.clone());
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} live keys lost from their tag index, e.g. {:?} ({removed} removed, {fills} fills)",
        lost.len(),
        &lost[..lost.len().min(5)],
    );
}

/// A Redis that refuses `MULTI` or `EXEC` (a proxy, or an ACL without them, as here): tag sets
/// are still invalidated (the ordered way of Redis Cluster), and the count of keys removed stays
/// right.
#[tokio::test]
async fn tag_sets_are_invalidated_where_transactions_are_refused() {
    for refused in [&["-multi", "-exec"][..], &["-exec"][..]] {
        tag_sets_without_transactions(refused).await;
    }
}

async fn tag_sets_without_transactions(refused: &[&str]) {
    use invalidator::apply::redis::Redis;
    use invalidator::config::{RedisConfig, TagMode};
    use invalidator::plan::Plan;

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
    let redis = Redis::connect(
        &RedisConfig::single(url.replacen("redis://", &format!("redis://{user}:pw@"), 1)),
        Some(std::time::Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let tag_prefix = w.k("P:tag:");
    w.set(&mut c, &["P:a:1", "P:a:2", "P:b:1", "P:keep"]);
    let register = |c: &mut redis::Connection, set: &str, keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| w.k(k)).collect();
        let _: i64 = redis::cmd("SADD").arg(w.k(set)).arg(keys).query(c).unwrap();
    };
    register(&mut c, "P:tag:a", &["P:a:1", "P:a:2", "P:a:gone"]);
    register(&mut c, "P:tag:b", &["P:b:1"]);

    let mut plan = Plan::default();
    plan.tags.insert("a".into(), vec![0]);
    plan.tags.insert("b".into(), vec![1]);
    let report = redis.apply(&plan, TagMode::Set, &tag_prefix).await.unwrap();
    assert_eq!(report.keys_removed, 3, "{refused:?}: {report:?}");
    assert_eq!(report.tags_invalidated, 2, "{report:?}");
    assert!(report.tag_failures.is_empty(), "{report:?}");
    for k in ["P:a:1", "P:a:2", "P:b:1", "P:tag:a", "P:tag:b"] {
        assert!(!w.exists(&mut c, k), "{k} must be gone");
    }
    assert!(w.exists(&mut c, "P:keep"));

    // Again, now without trying MULTI first.
    w.set(&mut c, &["P:a:1"]);
    register(&mut c, "P:tag:a", &["P:a:1"]);
    let report = redis.apply(&plan, TagMode::Set, &tag_prefix).await.unwrap();
    assert_eq!(report.keys_removed, 1, "{report:?}");
    assert!(!w.exists(&mut c, "P:a:1"));
    assert!(!w.exists(&mut c, "P:tag:a"));

    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut c)
        .unwrap();
}

#[tokio::test]
async fn tags_version_mode_increments_and_deletes_nothing() {
    let mut w = World::new();
    w.tags_mode = "version";
    w.rules(
        "r.yaml",
        "rules:\n  - name: t\n    on: product.updated\n    tags:\n      - product:{product_id}\n      - brand:{brand}\n",
    );
    let mut c = conn();
    let _: () = redis::cmd("SET")
        .arg(w.k("P:tag:product:7"))
        .arg(5)
        .query(&mut c)
        .unwrap();
    w.set(&mut c, &["P:product:7"]);
    let s = w
        .replay_lines(
            &[ev(
                "product.updated",
                "e1",
                json!({"product_id": 7, "brand": "acme"}),
            )],
            false,
        )
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(s.tags_invalidated, 2);
    assert_eq!(s.keys_removed, 0);
    let v: i64 = redis::cmd("GET")
        .arg(w.k("P:tag:product:7"))
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 6);
    let v: i64 = redis::cmd("GET")
        .arg(w.k("P:tag:brand:acme"))
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 1);
    assert!(w.exists(&mut c, "P:product:7"));
}

#[tokio::test]
async fn expire_shortens_never_lengthens_and_never_creates() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: e\n    on: reco.changed\n    expire:\n      - key: P:reco:{ids[]}\n        ttl: 30s\n",
    );
    let mut c = conn();
    let _: () = redis::cmd("SET")
        .arg(w.k("P:reco:long"))
        .arg("v")
        .arg("EX")
        .arg(3600)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(w.k("P:reco:short"))
        .arg("v")
        .arg("PX")
        .arg(5000)
        .query(&mut c)
        .unwrap();
    w.set(&mut c, &["P:reco:forever"]);
    let s = w
        .replay_lines(
            &[ev(
                "reco.changed",
                "e1",
                json!({"ids": ["long", "short", "forever", "absent"]}),
            )],
            false,
        )
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(
        s.expires_set, 2,
        "long and forever; short is not lengthened"
    );
    assert_eq!(s.keys_removed, 0);
    let long = w.pttl(&mut c, "P:reco:long");
    assert!(long > 0 && long <= 30_000, "1h → ≤30s, got {long}");
    let short = w.pttl(&mut c, "P:reco:short");
    assert!(
        short > 0 && short <= 5_000,
        "5s is not lengthened, got {short}"
    );
    let forever = w.pttl(&mut c, "P:reco:forever");
    assert!(
        forever > 0 && forever <= 30_000,
        "no TTL → ≤30s, got {forever}"
    );
    assert!(
        !w.exists(&mut c, "P:reco:absent"),
        "expire never creates a key"
    );
}

#[tokio::test]
async fn expire_jitter_stays_within_bounds() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: e\n    on: reco.changed\n    expire:\n      - key: P:reco:{ids[]}\n        ttl: 100s\n        jitter: 50%\n",
    );
    let mut c = conn();
    let ids: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for id in &ids {
        w.set(&mut c, &[&format!("P:reco:{id}")]);
    }
    let s = w
        .replay_lines(&[ev("reco.changed", "e1", json!({ "ids": ids }))], false)
        .await;
    assert_eq!(s.expires_set, 40);
    let ttls: Vec<i64> = ids
        .iter()
        .map(|id| w.pttl(&mut c, &format!("P:reco:{id}")))
        .collect();
    for t in &ttls {
        // 100s minus at most 50%, with a few seconds of slack for the test's own time.
        assert!(
            *t > 45_000 && *t <= 100_000,
            "TTL out of jitter bounds: {t}"
        );
    }
    let distinct: std::collections::HashSet<i64> = ttls.iter().map(|t| t / 1000).collect();
    assert!(distinct.len() > 3, "jitter spreads TTLs: {ttls:?}");
}

#[tokio::test]
async fn fanout_expands_lists_and_their_product() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: f\n    on: promo.changed\n    delete:\n      - P:promo:{sections[]}\n      - P:grid:{sections[]}:{langs[]}\n",
    );
    let mut c = conn();
    w.set(
        &mut c,
        &[
            "P:promo:home",
            "P:promo:deals",
            "P:promo:other",
            "P:grid:home:en",
            "P:grid:home:fr",
            "P:grid:deals:en",
            "P:grid:deals:fr",
            "P:grid:deals:de",
        ],
    );
    let s = w
        .replay_lines(
            &[ev(
                "promo.changed",
                "e1",
                json!({"sections": ["home", "deals"], "langs": ["en", "fr"]}),
            )],
            false,
        )
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(s.keys_removed, 6);
    assert_eq!(
        w.keys(&mut c, "P:*"),
        vec![w.k("P:grid:deals:de"), w.k("P:promo:other")]
    );
}

#[tokio::test]
async fn false_condition_is_skipped_and_touches_nothing() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: c\n    on: price.updated\n    when: data.new_price != data.old_price\n    delete:\n      - P:price:{product_id}\n",
    );
    let mut c = conn();
    w.set(&mut c, &["P:price:1", "P:price:2"]);
    let s = w
        .replay_lines(
            &[
                ev(
                    "price.updated",
                    "e1",
                    json!({"product_id": 1, "old_price": 10, "new_price": 10}),
                ),
                ev(
                    "price.updated",
                    "e2",
                    json!({"product_id": 2, "old_price": 10, "new_price": 9}),
                ),
            ],
            false,
        )
        .await;
    assert_eq!((s.applied, s.skipped, s.dead_lettered), (1, 1, 0));
    assert!(w.exists(&mut c, "P:price:1"));
    assert!(!w.exists(&mut c, "P:price:2"));
}

#[tokio::test]
async fn cascade_for_each_member_of_a_real_set() {
    let w = World::new();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: product
    on: product.updated
    delete:
      - P:product:{product_id}
    cascade:
      - emit: category.changed
        data: { category_id: "{item}" }
        for_each_member_of: P:product:{product_id}:categories
  - name: category
    on: category.changed
    delete:
      - P:category:{category_id}:page:1
      - P:category:{category_id}:page:2
"#,
    );
    let mut c = conn();
    let _: i64 = redis::cmd("SADD")
        .arg(w.k("P:product:5:categories"))
        .arg(&["shoes", "running", "sale"])
        .query(&mut c)
        .unwrap();
    w.set(
        &mut c,
        &[
            "P:product:5",
            "P:category:shoes:page:1",
            "P:category:shoes:page:2",
            "P:category:running:page:1",
            "P:category:sale:page:2",
            "P:category:hats:page:1",
        ],
    );
    let s = w
        .replay_lines(
            &[ev("product.updated", "e1", json!({"product_id": 5}))],
            false,
        )
        .await;
    assert_eq!((s.applied, s.dead_lettered), (1, 0));
    assert_eq!(s.keys_removed, 5);
    assert_eq!(
        w.keys(&mut c, "P:*"),
        vec![w.k("P:category:hats:page:1"), w.k("P:product:5:categories")],
        "every member's pages are gone, a non-member's survive, the index set is kept"
    );
}

#[tokio::test]
async fn cascade_cycle_ends_and_the_event_is_applied() {
    let w = World::new();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: ping
    on: loop.ping
    delete:
      - P:ping:{n}
    cascade:
      - emit: loop.pong
        data: { n: "{n}" }
  - name: pong
    on: loop.pong
    delete:
      - P:pong:{n}
    cascade:
      - emit: loop.ping
        data: { n: "{n}" }
"#,
    );
    let mut c = conn();
    w.set(&mut c, &["P:ping:1", "P:pong:1", "P:ping:2"]);
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        w.replay_lines(&[ev("loop.ping", "e1", json!({"n": 1}))], false),
    )
    .await
    .expect("a cascade cycle must end");
    assert_eq!((s.applied, s.dead_lettered), (1, 0));
    assert!(!w.exists(&mut c, "P:ping:1"));
    assert!(!w.exists(&mut c, "P:pong:1"));
    assert!(w.exists(&mut c, "P:ping:2"));
    assert!(w.dlq().is_empty());
}

#[tokio::test]
async fn purge_to_a_log_target_is_counted_as_logged() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: p\n    on: product.updated\n    purge:\n      - target: logcdn\n        paths:\n          - /api/products/{ids[]}\n          - /products/{ids[]}/*\n",
    );
    let s = w
        .replay_lines(
            &[
                ev("product.updated", "e1", json!({"ids": [1, 2, 3]})),
                // the same paths again: coalesced within the unit
                ev("product.updated", "e2", json!({"ids": [1]})),
            ],
            false,
        )
        .await;
    assert_eq!((s.applied, s.dead_lettered), (2, 0));
    assert_eq!(s.paths_logged, 6);
    assert_eq!(s.paths_purged, 0);
}

// ---------------------------------------------------------------------------------------------
// Confinement
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_values_are_dead_lettered_and_remove_nothing() {
    let w = World::new();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: price
    on: price.updated
    delete:
      - P:price:{product_id}
      - P:price:{product_id}:*
    tags:
      - product:{product_id}
    purge:
      - target: logcdn
        paths:
          - /api/products/{product_id}
"#,
    );
    let mut c = conn();
    w.set(
        &mut c,
        &[
            "P:price:abc",
            "P:price:abc:1",
            "P:price:a",
            "P:price:a:1",
            "P:price:x",
            "P:price:*",
            "P:price:good",
            "P:price:good:1",
            "P:tagged",
        ],
    );
    let _: i64 = redis::cmd("SADD")
        .arg(w.k("P:tag:product:abc"))
        .arg(w.k("P:tagged"))
        .query(&mut c)
        .unwrap();
    let hostile: Vec<Value> = vec![
        json!("*"),
        json!("?"),
        json!("ab?"),
        json!("[a]"),
        json!("a*"),
        json!("../x"),
        json!("/"),
        json!("a b"),
        json!(" "),
        json!("abc\r\nUNLINK x"),
        json!("abc\n"),
        json!("\t"),
        json!("x".repeat(10 * 1024)),
        json!(""),
        json!(".."),
        json!("."),
    ];
    let mut lines: Vec<String> = hostile
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ev(
                "price.updated",
                &format!("h{i}"),
                json!({ "product_id": v }),
            )
        })
        .collect();
    lines.push(ev("price.updated", "ok", json!({"product_id": "good"})));
    let s = w.replay_lines(&lines, false).await;
    assert_eq!(s.events, hostile.len() as u64 + 1);
    assert_eq!(s.applied, 1);
    assert_eq!(s.dead_lettered, hostile.len() as u64);
    assert_eq!(s.keys_removed, 2, "only the good event's two keys");
    let dlq = w.dlq();
    assert_eq!(dlq.len(), hostile.len());
    for r in &dlq {
        assert_eq!(r["reason"], "unsafe_value", "{r}");
    }
    let mut left = w.keys(&mut c, "P:*");
    left.sort();
    let mut expected: Vec<String> = [
        "P:price:abc",
        "P:price:abc:1",
        "P:price:a",
        "P:price:a:1",
        "P:price:x",
        "P:price:*",
        "P:tagged",
        "P:tag:product:abc",
    ]
    .iter()
    .map(|k| w.k(k))
    .collect();
    expected.sort();
    assert_eq!(left, expected);
}

// ---------------------------------------------------------------------------------------------
// Replay through the binary
// ---------------------------------------------------------------------------------------------

const K_RULES: &str = "rules:\n  - name: k\n    on: k.changed\n    delete:\n      - P:k:{n}\n";

#[test]
fn replay_dead_letters_malformed_lines_with_their_line_numbers_and_dlq_replays_back() {
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2", "P:k:3", "P:k:4"]);
    let lines: Vec<Vec<u8>> = vec![
        ev("k.changed", "e1", json!({"n": 1})).into_bytes(),
        br#"{"type": "k.changed", "id": "e2", "data": {"n": "#.to_vec(),
        br#"{"id": "e3", "data": {"n": 4}}"#.to_vec(),
        b"{\"type\": \"k.changed\", \"id\": \"e4\xff\xfe\", \"data\": {\"n\": 4}}".to_vec(),
        ev("k.changed", "e5", json!({"n": 2})).into_bytes(),
        // no `n`: a template error under these rules, fixed below
        ev("k.changed", "e6", json!({"m": 3})).into_bytes(),
    ];
    let mut bytes = lines.join(&b'\n');
    bytes.push(b'\n');
    let input = w.input("in.jsonl", &bytes);
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 6);
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("dead-lettered"), 4);
    assert!(!w.exists(&mut c, "P:k:1"));
    assert!(!w.exists(&mut c, "P:k:2"));
    assert!(w.exists(&mut c, "P:k:3"));
    assert!(w.exists(&mut c, "P:k:4"));

    let recs = common::read_jsonl(&dlq);
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
                .is_some_and(|f| f.ends_with("in.jsonl")),
            "{rec}"
        );
        assert_eq!(
            payload(rec),
            lines[*line as usize - 1],
            "byte-exact payload, line {line}"
        );
    }

    // Fixed rules: `m` is accepted too; the DLQ file replays as is.
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    when: has(data.n)\n    delete:\n      - P:k:{n}\n  - name: k-m\n    on: k.changed\n    when: has(data.m)\n    delete:\n      - P:k:{m}\n",
    );
    let dlq2 = w.path("dlq2.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq2.to_str().unwrap(),
        dlq.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 4);
    assert_eq!(r.count("applied"), 1);
    assert_eq!(r.count("dead-lettered"), 3);
    assert!(!w.exists(&mut c, "P:k:3"), "the fixed event is applied");
    assert!(w.exists(&mut c, "P:k:4"));
    let recs2 = common::read_jsonl(&dlq2);
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
                .is_some_and(|f| f.ends_with("in.jsonl")),
            "{rec}"
        );
        let original = by_line[&line];
        assert_eq!(payload(rec), payload(original), "byte-exact payload: {rec}");
        assert_eq!(payload(rec), lines[line as usize - 1]);
        assert_eq!(original["reason"], rec["reason"], "same reason again");
    }
}

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

#[test]
fn clean_replay_exits_zero_and_writes_no_dlq() {
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let input = w.lines(
        "in.jsonl",
        &[
            ev("k.changed", "e1", json!({"n": 1})),
            ev("k.changed", "e2", json!({"n": 2})),
            ev("nobody.cares", "e3", json!({"n": 2})),
        ],
    );
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("skipped"), 1);
    assert_eq!(r.count("keys removed"), 2);
    assert!(!dlq.exists());
    assert!(w.keys(&mut c, "P:*").is_empty());
}

#[test]
fn unparsable_rules_exit_2_with_file_line_column() {
    let w = World::new();
    w.rules(
        "bad.yaml",
        "rules:\n  - name: x\n    on: k.changed\n    delete: [unclosed\n",
    );
    let input = w.lines("in.jsonl", &[ev("k.changed", "e1", json!({"n": 1}))]);
    let r = w.bin(&["replay", input.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    let re = regex::Regex::new(r"bad\.yaml:\d+:\d+").unwrap();
    assert!(
        re.is_match(&r.stderr),
        "no file:line:column in {}",
        r.stderr
    );
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let mut w = World::new();
    w.rules("r.yaml", K_RULES);
    w.extra_config = "[limits]\nmax_fanoutt = 5\n".into();
    let input = w.lines("in.jsonl", &[ev("k.changed", "e1", json!({"n": 1}))]);
    let r = w.bin(&["replay", input.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("max_fanoutt"), "{}", r.stderr);
}

#[test]
fn redis_unreachable_exits_3_and_dead_letters_nothing() {
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    let input = w.lines(
        "in.jsonl",
        &[ev("k.changed", "e1", json!({"n": 1})), "{broken".to_owned()],
    );
    let dlq = w.path("dlq.jsonl");
    let started = std::time::Instant::now();
    let r = w.bin_env(
        &[
            "replay",
            "--dlq",
            dlq.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[
            ("INVALIDATOR_REDIS__URL", "redis://127.0.0.1:1/9"),
            ("INVALIDATOR_REDIS__RETRY_FOR", "1s"),
        ],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(!dlq.exists(), "nothing is dead-lettered for an outage");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn without_the_replicas_wait_asks_for_replay_and_sweep_stop_with_exit_3() {
    // The test Redis has no replica: `WAIT 1` always falls short, an outage like any other.
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    w.rules(
        "ttl.yaml",
        "ttl_policies:\n  - match: P:k:*\n    max_ttl: 30s\n",
    );
    let mut c = conn();
    w.set(&mut c, &["P:k:1"]);
    let input = w.lines("in.jsonl", &[ev("k.changed", "e1", json!({"n": 1}))]);
    let dlq = w.path("dlq.jsonl");
    let env = [
        ("INVALIDATOR_REDIS__WAIT_REPLICAS", "1"),
        ("INVALIDATOR_REDIS__WAIT_TIMEOUT", "100ms"),
        ("INVALIDATOR_REDIS__RETRY_FOR", "1s"),
    ];
    let r = w.bin_env(
        &[
            "replay",
            "--dlq",
            dlq.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout.contains("stopped: Redis unavailable: WAIT"),
        "{}",
        r.stdout
    );
    assert!(r.count("wait shortfalls") >= 1, "{}", r.stdout);
    assert_eq!(r.count("NOT applied"), 1, "{}", r.stdout);
    assert!(!dlq.exists(), "nothing is dead-lettered for an outage");

    // A key over policy: the sweep writes, and its WAIT falls short too.
    w.set(&mut c, &["P:k:2"]);
    let r = w.bin_env(&["sweep"], &env);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("WAIT"), "{}", r.stderr);
}

#[test]
fn dry_run_and_explain_touch_nothing() {
    let mut w = World::new();
    w.extra_config = "[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n".into();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: all
    on: price.updated
    delete:
      - P:price:{product_id}
      - P:page:{product_id}:*
    tags:
      - product:{product_id}
    expire:
      - key: P:reco:{product_id}
        ttl: 1s
    purge:
      - target: logcdn
        paths:
          - /p/{product_id}
"#,
    );
    let mut c = conn();
    w.set(&mut c, &["P:price:1", "P:page:1:a", "P:reco:1", "P:cart:1"]);
    let _: i64 = redis::cmd("SADD")
        .arg(w.k("P:tag:product:1"))
        .arg(w.k("P:cart:1"))
        .query(&mut c)
        .unwrap();
    let before = snapshot(&w, &mut c);
    let event = ev("price.updated", "dry-1", json!({"product_id": 1}));
    let input = w.lines("in.jsonl", &[event.clone(), "{broken".into()]);
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dry-run",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(r.code == 0 || r.code == 1, "{r:?}");
    assert!(r.stdout.contains("dry run"), "{}", r.stdout);
    assert_eq!(snapshot(&w, &mut c), before);
    assert!(!dlq.exists(), "a dry run writes no DLQ");

    let r = w.bin(&["explain", &event]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&w.k("P:price:1")), "{}", r.stdout);
    let r = w.bin(&["explain", "--json", &event]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str::<Value>(&r.stdout).expect("explain --json prints JSON");
    assert_eq!(snapshot(&w, &mut c), before);

    // The same event applied for real is not a duplicate: the dry run remembered nothing.
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.count("applied"), 1, "{r:?}");
    assert_eq!(r.count("duplicate"), 0);
    assert!(!w.exists(&mut c, "P:price:1"));
}

#[test]
fn lambda_sns_and_sqs_event_files_replay() {
    let w = World::new();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: price
    on: price.updated
    delete:
      - P:price:{product_id}
  - name: inventory
    on: inventory.changed
    delete:
      - P:inventory:{product_id}
  - name: review
    on: review.updated
    delete:
      - P:review:{product_id}
      - P:review:r:{review_id}
"#,
    );
    let mut c = conn();
    w.set(
        &mut c,
        &[
            "P:price:1001",
            "P:inventory:1002",
            "P:review:1003",
            "P:review:r:r-77",
            "P:price:1002",
        ],
    );
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        fixtures.join("sns-event.json").to_str().unwrap(),
        fixtures.join("sqs-event.json").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 4);
    assert_eq!(r.count("applied"), 3);
    assert_eq!(r.count("dead-lettered"), 1);
    assert_eq!(w.keys(&mut c, "P:*"), vec![w.k("P:price:1002")]);
    let recs = common::read_jsonl(&dlq);
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0]["source"]["message_id"],
        "7a0c1b2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
    );
    assert_eq!(recs[0]["reason"], "invalid_json");
    assert_eq!(
        recs[0]["payload"],
        r#"{"type": "price.updated", "data": {"product_id": "#
    );
}

#[test]
fn dedupe_marks_ids_seen_within_the_window() {
    let mut w = World::new();
    w.extra_config = "[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n".into();
    w.rules("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let id1 = w.k("P:e1");
    let id2 = w.k("P:e2");
    let input = w.lines(
        "in.jsonl",
        &[
            ev("k.changed", &id1, json!({"n": 1})),
            ev("k.changed", &id2, json!({"n": 2})),
            ev("k.changed", &id1, json!({"n": 1})),
        ],
    );
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("duplicate"), 1, "twice within one file");

    // Refilled, then replayed again: every id is a duplicate and nothing is deleted.
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 0);
    assert_eq!(r.count("duplicate"), 3);
    assert!(w.exists(&mut c, "P:k:1"));
    assert!(w.exists(&mut c, "P:k:2"));
}

#[test]
fn sweep_shortens_ttls_over_policy_only() {
    let w = World::new();
    w.rules(
        "ttl.yaml",
        "ttl_policies:\n  - match: P:price:*\n    max_ttl: 30s\n",
    );
    let mut c = conn();
    w.set(&mut c, &["P:price:none", "P:other:none"]);
    for (k, ms) in [
        ("P:price:hour", 3_600_000),
        ("P:price:ten", 10_000),
        ("P:other:hour", 3_600_000),
    ] {
        let _: () = redis::cmd("SET")
            .arg(w.k(k))
            .arg("v")
            .arg("PX")
            .arg(ms)
            .query(&mut c)
            .unwrap();
    }
    let ten_before = w.pttl(&mut c, "P:price:ten");

    let r = w.bin(&["sweep", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("over policy 2"), "{}", r.stdout);
    assert_eq!(w.pttl(&mut c, "P:price:none"), -1);
    assert!(w.pttl(&mut c, "P:price:hour") > 3_500_000);

    let r = w.bin(&["sweep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("fixed 2"), "{}", r.stdout);
    for k in ["P:price:none", "P:price:hour"] {
        let t = w.pttl(&mut c, k);
        assert!(t > 0 && t <= 30_000, "{k}: {t}");
    }
    let ten = w.pttl(&mut c, "P:price:ten");
    assert!(
        ten <= ten_before && ten > ten_before - 5_000,
        "within policy: untouched ({ten_before} → {ten})"
    );
    assert_eq!(w.pttl(&mut c, "P:other:none"), -1);
    assert!(w.pttl(&mut c, "P:other:hour") > 3_500_000);
}

#[test]
fn summary_accounts_for_every_non_empty_line() {
    let mut w = World::new();
    // Small units: duplicates and dead letters fall in other units than their first occurrence.
    w.extra_config =
        "[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n\n[replay]\nbatch_size = 4\n".into();
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    when: data.n != 0\n    delete:\n      - P:k:{n}\n",
    );
    let mut c = conn();
    let mut lines: Vec<String> = Vec::new();
    for i in 1..=12 {
        w.set(&mut c, &[&format!("P:k:{i}")]);
        lines.push(ev("k.changed", &w.k(&format!("P:a{i}")), json!({ "n": i })));
    }
    lines.push(String::new());
    lines.push(ev("k.changed", &w.k("P:a1"), json!({"n": 1}))); // duplicate
    lines.push(ev("k.changed", &w.k("P:a2"), json!({"n": 2}))); // duplicate
    lines.push(ev("k.changed", &w.k("P:z0"), json!({"n": 0}))); // skipped (condition)
    lines.push(ev("other.type", &w.k("P:o1"), json!({"n": 1}))); // skipped (no rule)
    lines.push("   ".into());
    lines.push("{not json".into()); // dead
    lines.push(r#"{"id": "x", "data": {}}"#.into()); // dead: no type
    lines.push(ev("k.changed", &w.k("P:u1"), json!({"n": "*"}))); // dead: unsafe
    lines.push(ev("k.changed", &w.k("P:t1"), json!({"m": 1}))); // dead: condition/template
    lines.push("42".into()); // dead: not an object (an array would be a list of events)
    let non_empty = lines.iter().filter(|l| !l.trim().is_empty()).count() as u64;
    let input = w.lines("in.jsonl", &lines);
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let (a, s, d, x) = (
        r.count("applied"),
        r.count("skipped"),
        r.count("duplicate"),
        r.count("dead-lettered"),
    );
    assert_eq!(a + s + d + x, non_empty, "{}", r.stdout);
    assert_eq!(r.count("events"), non_empty, "{}", r.stdout);
    assert_eq!((a, s, d, x), (12, 2, 2, 5), "{}", r.stdout);
    assert_eq!(r.count("keys removed"), 12);
    assert_eq!(common::read_jsonl(&dlq).len() as u64, x);
}

#[tokio::test]
async fn redelete_after_deletes_again_before_the_replay_ends() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: d\n    on: k.changed\n    delete:\n      - P:k:{n}\n    tags:\n      - k:{n}\n    redelete_after: 200ms\n",
    );
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let started = std::time::Instant::now();
    let s = w
        .replay_lines(&[ev("k.changed", "e1", json!({"n": 1}))], false)
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(s.applied, 1);
    assert_eq!(s.redeletes, 2, "one key and one tag deleted again");
    assert_eq!(s.keys_removed, 1, "the second delete found nothing left");
    assert!(!w.exists(&mut c, "P:k:1"));
    assert!(w.exists(&mut c, "P:k:2"));
}

#[tokio::test]
async fn fanout_over_the_limit_is_dead_lettered_and_removes_nothing() {
    let mut w = World::new();
    w.extra_config = "[limits]\nmax_fanout = 3\n".into();
    w.rules(
        "r.yaml",
        "rules:\n  - name: f\n    on: promo.changed\n    delete:\n      - P:promo:{ids[]}\n",
    );
    let mut c = conn();
    w.set(
        &mut c,
        &["P:promo:a", "P:promo:b", "P:promo:c", "P:promo:d"],
    );
    let s = w
        .replay_lines(
            &[ev(
                "promo.changed",
                "e1",
                json!({"ids": ["a", "b", "c", "d"]}),
            )],
            false,
        )
        .await;
    assert_eq!((s.applied, s.dead_lettered, s.keys_removed), (0, 1, 0));
    assert_eq!(w.dlq()[0]["reason"], "fanout_exceeded");
    assert_eq!(w.keys(&mut c, "P:*").len(), 4);
}

#[tokio::test]
async fn a_tag_index_of_the_wrong_type_dead_letters_only_its_events() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: t\n    on: product.updated\n    tags:\n      - product:{product_id}\n",
    );
    let mut c = conn();
    // Not a set: a writer bug.
    w.set(&mut c, &["P:tag:product:1", "P:cart:2"]);
    let _: i64 = redis::cmd("SADD")
        .arg(w.k("P:tag:product:2"))
        .arg(w.k("P:cart:2"))
        .query(&mut c)
        .unwrap();
    let s = w
        .replay_lines(
            &[
                ev("product.updated", "e1", json!({"product_id": 1})),
                ev("product.updated", "e2", json!({"product_id": 2})),
            ],
            false,
        )
        .await;
    assert_eq!((s.applied, s.dead_lettered), (1, 1));
    let dlq = w.dlq();
    assert_eq!(dlq[0]["reason"], "redis_wrongtype");
    assert_eq!(dlq[0]["event_id"], "e1");
    assert!(!w.exists(&mut c, "P:cart:2"));
    assert!(w.exists(&mut c, "P:tag:product:1"));
}

#[tokio::test]
async fn a_cascade_set_of_the_wrong_type_dead_letters_the_event() {
    let w = World::new();
    w.rules(
        "r.yaml",
        r#"rules:
  - name: product
    on: product.updated
    delete:
      - P:product:{product_id}
    cascade:
      - emit: category.changed
        data: { category_id: "{item}" }
        for_each_member_of: P:product:{product_id}:categories
  - name: category
    on: category.changed
    delete:
      - P:category:{category_id}
"#,
    );
    let mut c = conn();
    w.set(
        &mut c,
        &["P:product:1", "P:product:1:categories", "P:product:2"],
    );
    let s = w
        .replay_lines(
            &[
                ev("product.updated", "e1", json!({"product_id": 1})),
                // no set at all: no members, applied
                ev("product.updated", "e2", json!({"product_id": 2})),
            ],
            false,
        )
        .await;
    assert_eq!((s.applied, s.dead_lettered), (1, 1));
    assert_eq!(w.dlq()[0]["reason"], "redis_wrongtype");
    assert!(
        w.exists(&mut c, "P:product:1"),
        "nothing of a dead-lettered event is applied"
    );
    assert!(!w.exists(&mut c, "P:product:2"));
}

#[test]
fn dedupe_remembers_only_applied_events_with_an_id() {
    let mut w = World::new();
    w.extra_config = "[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n".into();
    w.rules("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let id = w.k("P:x1");
    let input = w.lines(
        "in.jsonl",
        &[
            // dead-lettered (template error): must not be remembered
            ev("k.changed", &id, json!({"m": 1})),
            // no id: never a duplicate
            json!({"type": "k.changed", "data": {"n": 2}}).to_string(),
            json!({"type": "k.changed", "data": {"n": 2}}).to_string(),
        ],
    );
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
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
    let fixed = w.lines("fixed.jsonl", &[ev("k.changed", &id, json!({"n": 1}))]);
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        fixed.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!((r.count("applied"), r.count("duplicate")), (1, 0));
    assert!(!w.exists(&mut c, "P:k:1"));
}

#[tokio::test]
async fn pattern_delete_and_tags_scale_past_one_scan_batch() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: big\n    on: big.changed\n    delete:\n      - P:page:{id}:*\n    tags:\n      - big:{id}\n",
    );
    let mut c = conn();
    let mut pipe = redis::pipe();
    let mut members = Vec::new();
    for i in 0..2500 {
        pipe.cmd("SET")
            .arg(w.k(&format!("P:page:a:{i}")))
            .arg("v")
            .ignore();
        pipe.cmd("SET")
            .arg(w.k(&format!("P:page:ab:{i}")))
            .arg("v")
            .ignore();
    }
    for i in 0..1200 {
        let m = w.k(&format!("P:member:{i}"));
        pipe.cmd("SET").arg(&m).arg("v").ignore();
        members.push(m);
    }
    pipe.cmd("SADD")
        .arg(w.k("P:tag:big:a"))
        .arg(&members)
        .ignore();
    let _: () = pipe.query(&mut c).unwrap();
    let s = w
        .replay_lines(&[ev("big.changed", "e1", json!({"id": "a"}))], false)
        .await;
    assert_eq!(s.applied, 1);
    assert_eq!(s.keys_removed, 3700);
    assert!(w.keys(&mut c, "P:page:a:*").is_empty());
    assert_eq!(w.keys(&mut c, "P:page:ab:*").len(), 2500);
    assert!(w.keys(&mut c, "P:member:*").is_empty());
    assert!(!w.exists(&mut c, "P:tag:big:a"));
}

#[tokio::test]
async fn values_of_the_wrong_kind_are_template_errors() {
    let w = World::new();
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    delete:\n      - P:k:{n}\n",
    );
    let mut c = conn();
    w.set(&mut c, &["P:k:-1", "P:k:1"]);
    let bad = [
        json!(1.5),
        json!(true),
        json!(null),
        json!({"a": 1}),
        json!([1]),
    ];
    let mut lines: Vec<String> = bad
        .iter()
        .enumerate()
        .map(|(i, v)| ev("k.changed", &format!("b{i}"), json!({ "n": v })))
        .collect();
    lines.push(ev("k.changed", "ok", json!({"n": -1})));
    let s = w.replay_lines(&lines, false).await;
    assert_eq!((s.applied, s.dead_lettered), (1, bad.len() as u64));
    for r in w.dlq() {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason == "template_error" || reason == "unsafe_value",
            "{r}"
        );
    }
    assert!(!w.exists(&mut c, "P:k:-1"));
    assert!(w.exists(&mut c, "P:k:1"));
}

/// A private Redis that this test starts and stops (never the shared one).
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Option<PrivateRedis> {
        for _ in 0..5 {
            let port = 20_000 + (rand::random::<u16>() % 20_000);
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()?;
            let mut r = PrivateRedis { child, port };
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if let Ok(client) = redis::Client::open(r.url())
                    && let Ok(mut c) = client.get_connection()
                    && redis::cmd("PING").query::<String>(&mut c).is_ok()
                {
                    return Some(r);
                }
                if let Ok(Some(_)) = r.child.try_wait() {
                    break; // port taken: try another
                }
            }
            r.stop();
        }
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn redis_lost_mid_replay_exits_3_and_dead_letters_nothing() {
    let Some(mut private) = PrivateRedis::start() else {
        eprintln!("skipped: cannot start a private redis-server");
        return;
    };
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    let mut lines: Vec<String> = (0..60)
        .map(|i| ev("k.changed", &format!("e{i}"), json!({ "n": i })))
        .collect();
    lines.push("{broken".into());
    let input = w.lines("in.jsonl", &lines);
    let dlq = w.path("dlq.jsonl");
    let config = w.write_config();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_invalidator"))
        .current_dir(w.dir.path())
        .args(["-c", config.to_str().unwrap()])
        .args(["--rules", w.rules_dir().to_str().unwrap()])
        .args(["replay", "--rate", "20", "--dlq", dlq.to_str().unwrap()])
        .arg(&input)
        .env_remove("INVALIDATOR_TEST_REDIS_URL")
        .env("INVALIDATOR_REDIS__URL", private.url())
        .env("INVALIDATOR_REDIS__RETRY_FOR", "1s")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    private.stop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the replay did not stop after Redis went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("NOT applied"), "{stdout}");
    let events = common::summary_count(&stdout, "events").unwrap();
    assert_eq!(events, 61, "every event of the input is counted: {stdout}");
    assert!(
        common::summary_count(&stdout, "applied").unwrap() < 60,
        "{stdout}"
    );
    assert!(!dlq.exists(), "nothing is dead-lettered for an outage");
}

#[test]
fn a_dead_letter_near_the_size_limit_replays_back_byte_exact() {
    let mut w = World::new();
    w.extra_config = "[limits]\nmax_event_bytes = 400\n".into();
    w.rules("r.yaml", K_RULES);
    // 300 bytes: under the limit; a template error (no `n`). Its DLQ line is longer than 400 bytes.
    let mut event = ev("k.changed", "big1", json!({"m": 1, "pad": ""}));
    let pad = "x".repeat(300 - event.len());
    event = ev("k.changed", "big1", json!({"m": 1, "pad": pad}));
    assert_eq!(event.len(), 300);
    let input = w.lines("in.jsonl", &[event.clone()]);
    let dlq = w.path("dlq.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let first = common::read_jsonl(&dlq);
    assert_eq!(first[0]["reason"], "template_error");
    assert_eq!(payload(&first[0]), event.as_bytes());

    let dlq2 = w.path("dlq2.jsonl");
    let r = w.bin(&[
        "replay",
        "--dlq",
        dlq2.to_str().unwrap(),
        dlq.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let second = common::read_jsonl(&dlq2);
    assert_eq!(second.len(), 1);
    // Observed: reason too_large, attempts 1, no origin, payload = the first 400 bytes of the DLQ line.
    assert_eq!(second[0]["reason"], "template_error", "{}", second[0]);
    assert_eq!(second[0]["attempts"], 2);
    assert_eq!(payload(&second[0]), event.as_bytes(), "payload byte-exact");
}

#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let w = World::new();
    w.rules("r.yaml", K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1"]);
    let input = w.lines("in.jsonl", &[ev("k.changed", "e1", json!({"n": 1}))]);
    let path = input.to_str().unwrap();
    let r = w.bin(&["replay", "--dlq", path, path]);
    assert_eq!(r.code, 2, "--dlq is also an input: {r:?}");
    let r = w.bin(&["replay", "--rate", "0", path]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = w.bin(&["replay", w.path("missing.jsonl").to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(w.exists(&mut c, "P:k:1"));
}

/// Regression: with several units in flight, a copy of an id in a unit running beside the unit of
/// its first copy was applied again (neither had remembered its ids in Redis yet).
#[tokio::test]
async fn dedupe_holds_between_units_applied_at_the_same_time() {
    let mut w = World::new();
    w.extra_config = "[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n\n\
                      [replay]\nbatch_size = 1\nmax_in_flight = 8\n"
        .into();
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    delete:\n      - P:k:{n}\n",
    );
    let mut lines = Vec::new();
    for i in 0..200 {
        // Every id twice in a row: each copy is its own unit, and the two run at the same time.
        let line = ev("k.changed", &w.k(&format!("P:a{i}")), json!({ "n": i }));
        lines.push(line.clone());
        lines.push(line);
    }
    let s = w.replay_lines(&lines, false).await;
    assert_eq!(s.events, 400);
    assert_eq!((s.applied, s.duplicate), (200, 200), "{s:?}");
    assert_eq!(s.applied + s.skipped + s.duplicate + s.dead_lettered, 400);
}

/// Units run concurrently but are accounted in input order: the DLQ file reads as the input does.
#[tokio::test]
async fn units_in_flight_are_accounted_in_input_order() {
    let mut w = World::new();
    w.extra_config = "[replay]\nbatch_size = 3\nmax_in_flight = 8\n".into();
    w.rules(
        "r.yaml",
        "rules:\n  - name: k\n    on: k.changed\n    delete:\n      - P:k:{n}\n",
    );
    let mut c = conn();
    let mut lines = Vec::new();
    for i in 0..300 {
        if i % 7 == 3 {
            lines.push(format!("{{bad json {i}"));
        } else {
            w.set(&mut c, &[&format!("P:k:{i}")]);
            lines.push(ev("k.changed", &format!("e{i}"), json!({ "n": i })));
        }
    }
    let s = w.replay_lines(&lines, false).await;
    let bad = lines.iter().filter(|l| l.starts_with("{bad")).count() as u64;
    assert_eq!((s.applied, s.dead_lettered), (300 - bad, bad), "{s:?}");
    assert!(w.keys(&mut c, "P:k:*").is_empty(), "every key removed");
    let dlq: Vec<u64> = w
        .dlq()
        .iter()
        .map(|r| r["source"]["line"].as_u64().expect("line number"))
        .collect();
    let mut sorted = dlq.clone();
    sorted.sort_unstable();
    assert_eq!(dlq, sorted, "DLQ records in input order");
    assert_eq!(dlq.len() as u64, bad);
}
