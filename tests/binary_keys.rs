//! Keys are bytes (issue 14, item 11): a tag set's members and the keys a pattern matches are
//! removed byte for byte, whatever bytes they hold (a NUL, bytes that are not UTF-8), on a single
//! Redis and on the Redis Cluster; a `for_each_member_of` set whose member is not UTF-8 dead-letters
//! its event instead of walking an altered member. Against the real servers.
//!
//! Each test holds its own control: the text a lossy UTF-8 reading of the key would give (what the
//! layer sent before keys were bytes) names another key, which Redis does not remove.

mod common;

use common::cluster::ClusterWorld;
use common::{World, conn, layer};
use redis::Commands;

/// `{p}` followed by `rest`: keys whose bytes are not all UTF-8.
fn key(p: &str, rest: &[u8]) -> Vec<u8> {
    [p.as_bytes(), rest].concat()
}

/// The binary keys every test writes: a NUL, an invalid UTF-8 byte, a lone continuation byte.
fn odd_keys(p: &str, stem: &str) -> Vec<Vec<u8>> {
    [&b"\xff\xfe"[..], b"\x00tags\x00x", b"caf\xe9", b"ok"]
        .iter()
        .map(|rest| key(p, &[stem.as_bytes(), rest].concat()))
        .collect()
}

/// The control: the key that a lossy UTF-8 reading of `k` names is another key, and removing it
/// leaves `k` in place.
fn lossy_misses(c: &mut impl redis::ConnectionLike, k: &[u8]) {
    let lossy = String::from_utf8_lossy(k).into_owned();
    if lossy.as_bytes() == k {
        return;
    }
    let removed: u64 = redis::cmd("UNLINK").arg(&lossy).query(c).unwrap();
    assert_eq!(removed, 0, "the lossy key {lossy:?} is another key");
    let still: bool = redis::cmd("EXISTS").arg(k).query(c).unwrap();
    assert!(still, "{:?} survives an UNLINK of its lossy text", lossy);
}

#[tokio::test]
async fn binary_tag_members_and_pattern_matches_are_removed_on_a_single_redis() {
    let p = common::prefix();
    let mut c = conn();
    let members = odd_keys(&p, "page:");
    let set = format!("{p}tag:sku-1");
    for m in &members {
        let _: () = c.set(m, 1).unwrap();
        let _: () = c.sadd(&set, m).unwrap();
        lossy_misses(&mut c, m);
    }
    let matched = odd_keys(&p, "list:");
    let other = odd_keys(&p, "grid:");
    for k in matched.iter().chain(&other) {
        let _: () = c.set(k, 1).unwrap();
    }
    let redis = layer::single(common::redis_url()).await;

    let report = layer::apply(
        &redis,
        &layer::tags(["sku-1"]),
        &layer::TagLayout::set(&format!("{p}tag:")),
    )
    .await;
    assert_eq!(report.keys_removed, members.len() as u64);
    for m in &members {
        let left: bool = c.exists(m).unwrap();
        assert!(!left, "tag member {:?} left", String::from_utf8_lossy(m));
    }
    let size: u64 = c.scard(&set).unwrap();
    assert_eq!(size, 0, "the members are removed from the set too");

    // One pattern (a SCAN MATCH of its own), then two (one pass on their common prefix, each key
    // matched here): binary keys match either way.
    let one = layer::delete_matching([format!("{p}list:\u{0}*")]);
    assert_eq!(
        layer::apply(&redis, &one, &layer::TagLayout::set(""))
            .await
            .keys_removed,
        1
    );
    let two = layer::delete_matching([format!("{p}list:*"), format!("{p}grid:caf*")]);
    let report = layer::apply(&redis, &two, &layer::TagLayout::set("")).await;
    assert_eq!(
        report.keys_removed,
        3 + 1,
        "the other three list: keys and grid:caf\\xe9"
    );
    for k in &matched {
        let left: bool = c.exists(k).unwrap();
        assert!(!left, "matched key {:?} left", String::from_utf8_lossy(k));
    }
    let kept: u64 = redis::cmd("EXISTS").arg(&other[..]).query(&mut c).unwrap();
    assert_eq!(kept, 3, "only grid:caf\\xe9 matched the second pattern");
    let _: () = redis::cmd("DEL").arg(&other[..]).query(&mut c).unwrap();
}

#[tokio::test]
async fn binary_tag_members_and_pattern_matches_are_removed_on_the_cluster() {
    let Some(mut w) = ClusterWorld::start().await else {
        return;
    };
    let p = w.p.clone();
    let members = odd_keys(&p, "page:");
    let set = format!("{p}tag:sku-1");
    for m in &members {
        let _: () = w.cc.set(m, 1).unwrap();
        let _: () = w.cc.sadd(&set, m).unwrap();
        lossy_misses(&mut w.cc, m);
    }
    let matched = odd_keys(&p, "list:");
    for k in &matched {
        let _: () = w.cc.set(k, 1).unwrap();
    }

    let tag_prefix = format!("{p}tag:");
    let report = w
        .apply(&layer::tags(["sku-1"]), &layer::TagLayout::set(&tag_prefix))
        .await;
    assert_eq!(report.keys_removed, members.len() as u64);
    let patterns = layer::delete_matching([format!("{p}list:*"), format!("{p}nothing:*")]);
    let report = w.apply(&patterns, &layer::TagLayout::set("")).await;
    assert_eq!(report.keys_removed, matched.len() as u64);
    for k in members.iter().chain(&matched) {
        let left: bool = w.cc.exists(k).unwrap();
        assert!(!left, "{:?} left", String::from_utf8_lossy(k));
    }
    let size: u64 = w.cc.scard(&set).unwrap();
    assert_eq!(size, 0);
}

/// `{item}` becomes event data (JSON text): a member that is not UTF-8 cannot, so its event is
/// dead-lettered (`unsafe_value`, naming the set and showing the bytes escaped) and none of its
/// actions run; an event whose set holds text is applied.
#[test]
fn a_cascade_set_member_that_is_not_utf8_dead_letters_its_event() {
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
    w.set(&mut c, &["P:product:1", "P:product:2", "P:category:shoes"]);
    let _: () = c
        .sadd(w.k("P:product:1:categories"), &b"sh\xffoes"[..])
        .unwrap();
    let _: () = c.sadd(w.k("P:product:2:categories"), "shoes").unwrap();
    let input = w.lines(
        "events.jsonl",
        &[
            common::event(
                "product.updated",
                "e1",
                serde_json::json!({"product_id": 1}),
            ),
            common::event(
                "product.updated",
                "e2",
                serde_json::json!({"product_id": 2}),
            ),
        ],
    );
    let r = w.replay(&input);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("applied"), 1, "{r:?}");
    assert_eq!(r.count("dead-lettered"), 1, "{r:?}");
    assert!(w.exists(&mut c, "P:product:1"), "nothing of e1 is applied");
    assert!(!w.exists(&mut c, "P:product:2"));
    assert!(!w.exists(&mut c, "P:category:shoes"), "e2's cascade ran");
    let dlq = w.dlq();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["event_id"], "e1");
    assert_eq!(dlq[0]["reason"], "unsafe_value");
    let error = dlq[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&w.k("P:product:1:categories")) && error.contains("sh\\xffoes"),
        "{error}"
    );
}
