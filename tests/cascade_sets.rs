//! The sets that `for_each_member_of` cascades walk, read through the library's Redis layer against
//! the real local Redis (DB 9 of 127.0.0.1:6379, or `INVALIDATOR_TEST_REDIS_URL`): a set far over
//! `max_fanout` is read no further than the limit, a small one whole.

mod common;

use common::{conn, layer};

#[tokio::test]
async fn a_set_over_the_fanout_limit_is_read_no_further_than_the_limit() {
    let p = common::prefix();
    let (big, small) = (format!("{p}set:big"), format!("{p}set:small"));
    let mut c = conn();
    let members: Vec<String> = (0..50_000).map(|i| format!("m{i}")).collect();
    for chunk in members.chunks(5_000) {
        let _: () = redis::cmd("SADD")
            .arg(&big)
            .arg(chunk)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("SADD")
        .arg(&small)
        .arg(&members[..7])
        .query(&mut c)
        .unwrap();
    let redis = layer::single(common::redis_url()).await;

    let limit = 100;
    let got = redis
        .members(&[big.clone(), small.clone()], limit)
        .await
        .unwrap();
    let read = got[&big].as_ref().unwrap().len();
    // More than the limit, so the planner refuses the set (fanout_exceeded); a few SSCAN pages of
    // it, not its 50,000 members.
    assert!(read > limit, "{read}");
    assert!(
        read < 5_000,
        "read {read} of 50,000 members for a limit of {limit}"
    );
    let mut small_members = got[&small].clone().unwrap();
    small_members.sort();
    let mut want: Vec<Vec<u8>> = members[..7]
        .iter()
        .map(|m| m.clone().into_bytes())
        .collect();
    want.sort();
    assert_eq!(small_members, want, "a set under the limit is read whole");

    let all = redis
        .members(std::slice::from_ref(&big), 100_000)
        .await
        .unwrap();
    assert_eq!(
        all[&big].as_ref().unwrap().len(),
        50_000,
        "whole, without repeats"
    );
    let _: () = redis::cmd("DEL")
        .arg(&big)
        .arg(&small)
        .query(&mut c)
        .unwrap();
}

/// A cascade that fans out to many pattern deletes (one per category page prefix, say) costs one
/// walk of the keyspace for the whole unit, not one per pattern, and removes exactly what each
/// pattern matches.
#[tokio::test]
async fn the_pattern_deletes_of_a_unit_share_one_scan_pass() {
    // A server of its own: the count of SCAN calls must be ours alone.
    let server = common::topology::Server::start();
    let mut c = server.conn();
    for chunk in (0..20_000).collect::<Vec<u32>>().chunks(2_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            // 100 categories of 200 pages, and keys the patterns must leave alone.
            pipe.cmd("SET")
                .arg(format!("cat:c{}:page:{}", i % 100, i))
                .arg(1)
                .ignore();
            pipe.cmd("SET")
                .arg(format!("other:c{}:page:{}", i % 100, i))
                .arg(1)
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
    // Half the categories, and one whose name holds a glob character, escaped.
    let _: () = redis::cmd("SET")
        .arg("cat:c[x]:page:1")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let mut patterns: Vec<String> = (0..50).map(|i| format!("cat:c{i}:page:*")).collect();
    patterns.push(r"cat:c\[x\]:page:*".into());
    let redis = layer::single(server.url()).await;
    let before = server.calls("scan");
    let report = redis
        .apply(
            &layer::delete_matching(&patterns),
            &layer::TagLayout::set("tag:"),
        )
        .await
        .unwrap();
    let scans = server.calls("scan") - before;
    assert_eq!(report.keys_removed, 50 * 200 + 1);
    let left: Vec<String> = redis::cmd("KEYS").arg("cat:*").query(&mut c).unwrap();
    assert_eq!(
        left.len(),
        50 * 200,
        "the other 50 categories are untouched"
    );
    assert!(
        left.iter()
            .all(|k| !patterns.iter().any(|p| k.starts_with(&p[..p.len() - 1])))
    );
    let others: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(
        others,
        50 * 200 + 20_000,
        "keys outside `cat:` are untouched"
    );
    // One pass over `cat:*` (about 30,000 keys, COUNT 1000 per call), not 51.
    assert!(scans < 100, "{scans} SCAN calls for 51 patterns");
}
