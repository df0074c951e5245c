//! Resharding under a running invalidator, on its own Redis Cluster (tests/common/topology.rs):
//! a slot moved to another primary after the slot map was read (`MOVED`: the commands go to the
//! new owner, the map is read again), and a slot in the middle of a migration (`ASK`: `ASKING`
//! and the command, on the importing node). Both through the library, checked on the servers.
//! A slot moved between two live primaries is not a failover: nothing is rewound.

mod common;

use common::layer::{self, RedisConfig, TagLayout};
use common::topology::{Cluster, Server};

/// The cluster node id of `s`.
fn id(s: &Server) -> String {
    s.query(redis::cmd("CLUSTER").arg("MYID")).unwrap()
}

fn slot_of(s: &Server, key: &str) -> u16 {
    s.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
        .unwrap()
}

/// Starts moving `slot` from `from` to `to` and moves `keys` (those of the slot to move now).
fn migrate(from: &Server, to: &Server, slot: u16, keys: &[String]) {
    let () = to
        .query(
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(id(from)),
        )
        .unwrap();
    let () = from
        .query(
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(id(to)),
        )
        .unwrap();
    if !keys.is_empty() {
        let () = from
            .query(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to.port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(keys),
            )
            .unwrap();
    }
}

/// Ends the move of `slot` to `to`, told to every primary.
fn finish(c: &Cluster, slot: u16, to: &Server) {
    let to_id = id(to);
    for p in c.primaries() {
        let () = p
            .query(
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id),
            )
            .unwrap();
    }
}

/// How many of `keys` `s` holds (with `ASKING`, so that an importing node answers too; a key
/// that moved away answers with a redirect, counted as absent).
fn exists(s: &Server, keys: &[String]) -> usize {
    let mut c = s.conn();
    keys.iter()
        .filter(|k| {
            redis::pipe()
                .cmd("ASKING")
                .ignore()
                .cmd("EXISTS")
                .arg(k)
                .query::<(i64,)>(&mut c)
                .map_or(0, |(n,)| n)
                == 1
        })
        .count()
}

/// Starts moving the slot of `keys` from its owner to another primary, with `moved` (the first
/// of `keys`) already on the new owner; returns (slot, old owner, new owner).
fn start_moving<'c>(
    c: &'c Cluster,
    keys: &[String],
    moved: usize,
) -> (u16, &'c Server, &'c Server) {
    let from = c.owner_of(&keys[0]);
    let to = c
        .primaries()
        .into_iter()
        .find(|p| p.port != from.port)
        .unwrap();
    let slot = slot_of(from, &keys[0]);
    migrate(from, to, slot, &keys[..moved]);
    (slot, from, to)
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_and_ask_redirects_are_followed() {
    let c = Cluster::start();
    let redis = layer::connect(
        &RedisConfig {
            cluster: Some(c.seeds()),
            ..RedisConfig::default()
        },
        std::time::Duration::from_secs(20),
    )
    .await
    .expect("connect");

    // MOVED: the whole slot moves after the invalidator read the map.
    let moved: Vec<String> = (0..50).map(|i| format!("{{moved}}:k{i}")).collect();
    let other: Vec<String> = (0..200).map(|i| format!("other:k{i}")).collect();
    c.set_all(&moved);
    c.set_all(&other);
    let (slot, _, to) = start_moving(&c, &moved, moved.len());
    finish(&c, slot, to);
    assert_eq!(exists(to, &moved), 50, "the keys moved to the new owner");

    let plan = layer::delete(moved.iter().chain(&other));
    let r = layer::apply(&redis, &plan, &TagLayout::set("tag:")).await;
    assert_eq!(r.keys_removed, 250, "{r:?}");
    assert_eq!(exists(to, &moved), 0);
    assert_eq!(c.count_existing(&other), 0);

    // ASK: a slot half way through its move; some keys on each side.
    let asking: Vec<String> = (0..40).map(|i| format!("{{asking}}:k{i}")).collect();
    c.set_all(&asking);
    let (slot, from, to) = start_moving(&c, &asking, 20);
    assert_eq!((exists(from, &asking), exists(to, &asking)), (20, 20));
    let r = layer::apply(&redis, &layer::delete(&asking), &TagLayout::set("tag:")).await;
    assert_eq!(r.keys_removed, 40, "{r:?}");
    assert_eq!((exists(from, &asking), exists(to, &asking)), (0, 0));
    finish(&c, slot, to);

    // Moving slots between live primaries is not a failover.
    let stats = redis.stats();
    assert_eq!(stats.failovers, 0, "{stats:?}");
    assert_eq!(stats.rewound_actions, 0, "{stats:?}");
}
