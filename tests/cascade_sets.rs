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
    let mut want = members[..7].to_vec();
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
