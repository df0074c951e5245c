//! End to end against a real 3-primary Redis Cluster, through the library.
//!
//! Start it with `bash scripts/redis-cluster.sh start` (CI does), then `cargo test --test cluster`.
//! Seed nodes: `INVALIDATOR_TEST_CLUSTER` (comma-separated, default
//! `127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003`). When the cluster is not reachable every test
//! fails, unless `INVALIDATOR_SKIP_CLUSTER=1`, which makes them return early with a note.
//!
//! Every test works under its own random key prefix, so the tests run in parallel.

use std::collections::BTreeMap;
use std::time::Duration;

use invalidator::apply::redis::{Redis, slot};
use invalidator::config::{RedisConfig, TagMode};
use invalidator::event::Event;
use invalidator::plan::{Expire, Plan};
use invalidator::rules::{CompileOptions, NoMembers, RuleSet, TtlPolicy};
use redis::Commands;

const DEFAULT_SEEDS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

fn seeds() -> Vec<String> {
    std::env::var("INVALIDATOR_TEST_CLUSTER")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SEEDS.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_owned()
            } else {
                format!("redis://{s}")
            }
        })
        .collect()
}

/// A random prefix such as `c5f3a9c1e2b7d4a60:`.
fn prefix() -> String {
    format!("c{:016x}:", rand::random::<u64>())
}

fn skip() -> bool {
    if std::env::var("INVALIDATOR_SKIP_CLUSTER").as_deref() == Ok("1") {
        eprintln!("note: INVALIDATOR_SKIP_CLUSTER=1, skipping this Redis Cluster test");
        return true;
    }
    false
}

/// The test's view of the cluster: direct connections to every primary, a cluster connection for
/// seeding, and the library's `Redis`.
struct Cluster {
    p: String,
    /// `host:port` → direct connection to that primary.
    primaries: BTreeMap<String, redis::Connection>,
    cc: redis::cluster::ClusterConnection,
    redis: Redis,
}

fn unreachable(why: String) -> ! {
    panic!(
        "Redis Cluster not reachable at {:?}: {why}\n\
         Start it with `bash scripts/redis-cluster.sh start` (CI starts it), point \
         INVALIDATOR_TEST_CLUSTER at another one, or set INVALIDATOR_SKIP_CLUSTER=1 to skip these tests.",
        seeds()
    )
}

/// `None` when the tests are skipped; panics with instructions when the cluster is not up.
async fn cluster() -> Option<Cluster> {
    cluster_with(RedisConfig::default()).await
}

async fn cluster_with(base: RedisConfig) -> Option<Cluster> {
    if skip() {
        return None;
    }
    let seeds = seeds();
    // Fail fast and clearly rather than through the library's retry loop.
    let mut first = None;
    for s in &seeds {
        let c = redis::Client::open(s.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
        match c {
            Ok(c) => {
                first = Some(c);
                break;
            }
            Err(e) => eprintln!("seed {s}: {e}"),
        }
    }
    let Some(mut first) = first else {
        unreachable("no seed node accepted a connection".into())
    };
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut first)
        .unwrap_or_else(|e| unreachable(format!("CLUSTER INFO failed: {e}")));
    if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
        unreachable(format!("cluster_state is not ok:\n{info}"));
    }
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut first)
        .unwrap();
    let mut primaries = BTreeMap::new();
    for line in nodes.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 3 || !parts[2].split(',').any(|f| f == "master") {
            continue;
        }
        let addr = parts[1].split('@').next().unwrap().to_owned();
        let c = redis::Client::open(format!("redis://{addr}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| unreachable(format!("primary {addr}: {e}")));
        primaries.insert(addr, c);
    }
    assert!(
        primaries.len() >= 3,
        "these tests need at least 3 primaries, the cluster has {}: {nodes}",
        primaries.len()
    );
    let cc = redis::cluster::ClusterClient::new(seeds.clone())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| unreachable(format!("cluster connection: {e}")));
    let config = RedisConfig {
        cluster: Some(seeds),
        ..base
    };
    let redis = Redis::connect(&config, Some(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| unreachable(format!("Redis::connect: {e}")));
    Some(Cluster {
        p: prefix(),
        primaries,
        cc,
        redis,
    })
}

impl Cluster {
    /// `SET k 1` for every key (through cluster routing).
    fn set(&mut self, keys: &[String]) {
        for chunk in keys.chunks(500) {
            let mut pipe = redis::cluster::cluster_pipe();
            for k in chunk {
                pipe.cmd("SET").arg(k).arg(1).ignore();
            }
            pipe.query::<()>(&mut self.cc).unwrap();
        }
    }

    fn set_px(&mut self, key: &str, ms: u64) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(ms)
            .query(&mut self.cc)
            .unwrap();
    }

    fn sadd(&mut self, set: &str, members: &[String]) {
        for chunk in members.chunks(500) {
            let _: () = self.cc.sadd(set, chunk).unwrap();
        }
    }

    fn exists(&mut self, key: &str) -> bool {
        self.cc.exists(key).unwrap()
    }

    fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.cc).unwrap()
    }

    /// Keys matching `pattern` on each primary, by direct connection (`SCAN` on the node itself).
    fn per_node(&mut self, pattern: &str) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (addr, c) in self.primaries.iter_mut() {
            let mut keys: Vec<String> = c
                .scan_match::<_, String>(pattern)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            keys.sort();
            out.insert(addr.clone(), keys);
        }
        out
    }

    fn count(&mut self, pattern: &str) -> usize {
        self.per_node(pattern).values().map(Vec::len).sum()
    }

    /// The cluster's own `CLUSTER KEYSLOT` of each key.
    fn keyslots(&mut self, keys: &[&[u8]]) -> Vec<u16> {
        let c = self.primaries.values_mut().next().unwrap();
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(*k);
        }
        pipe.query(c).unwrap()
    }

    /// Asserts that every primary holds at least one key matching `pattern`.
    fn assert_on_every_primary(&mut self, pattern: &str) {
        let per = self.per_node(pattern);
        for (addr, keys) in &per {
            assert!(
                !keys.is_empty(),
                "primary {addr} holds no key matching {pattern}; spread: {:?}",
                per.iter().map(|(a, k)| (a, k.len())).collect::<Vec<_>>()
            );
        }
    }
}

fn keys(p: &str, stem: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{p}{stem}{i}")).collect()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slot_matches_cluster_keyslot() {
    let Some(mut c) = cluster().await else { return };
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
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let ks = keys(&p, "k:", 2000);
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

    let mut plan = Plan::default();
    plan.deletes.extend(ks.iter().cloned());
    plan.deletes.insert(format!("{p}absent"));
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(report.keys_removed, 2000, "{report:?}");
    assert!(report.tag_failures.is_empty(), "{report:?}");
    assert_eq!(
        c.count(&format!("{p}k:*")),
        0,
        "{:?}",
        c.per_node(&format!("{p}k:*"))
    );

    let mut plan = Plan::default();
    plan.deletes.extend(tagged.iter().cloned());
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(report.keys_removed, 600, "{report:?}");
    assert_eq!(c.count(&format!("{p}{{p1}}*")), 0);
    assert!(c.exists(&survivor));

    // Applying the same plan again is harmless.
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(report.keys_removed, 0);
}

#[tokio::test]
async fn pattern_delete_scans_every_primary() {
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let matching = keys(&p, "page:", 300);
    let others = keys(&p, "keep:", 300);
    c.set(&matching);
    c.set(&others);
    // Hash-tagged keys under the pattern too.
    let tagged: Vec<String> = (0..50).map(|i| format!("{p}page:{{p1}}:{i}")).collect();
    c.set(&tagged);
    let pattern = format!("{p}page:*");
    c.assert_on_every_primary(&pattern);
    c.assert_on_every_primary(&format!("{p}keep:*"));

    let mut plan = Plan::default();
    plan.patterns.insert(pattern.clone());
    let removed = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(removed.keys_removed, 350);
    assert_eq!(c.count(&pattern), 0, "{:?}", c.per_node(&pattern));
    assert_eq!(c.count(&format!("{p}keep:*")), 300);

    // Through a plan.
    c.set(&matching);
    let mut plan = Plan::default();
    plan.patterns.insert(pattern.clone());
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(report.keys_removed, 300, "{report:?}");
    assert_eq!(c.count(&pattern), 0);
    assert_eq!(c.count(&format!("{p}keep:*")), 300);
}

#[tokio::test]
async fn tag_set_mode_members_on_other_slots() {
    let Some(mut c) = cluster_with(RedisConfig {
        scan_count: 10,
        keys_per_command: 7,
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let p = c.p.clone();
    let tag_prefix = format!("{p}tag:");
    let members = keys(&p, "m:", 400);
    let existing = &members[..350];
    c.set(existing);
    let set = format!("{tag_prefix}product:1");
    c.sadd(&set, &members);
    let other_members = keys(&p, "o:", 20);
    c.set(&other_members);
    let other_set = format!("{tag_prefix}product:2");
    c.sadd(&other_set, &other_members);
    c.assert_on_every_primary(&format!("{p}m:*"));
    // The members live in many slots, not only the tag set's.
    let set_slot = slot(set.as_bytes());
    assert!(members.iter().any(|m| slot(m.as_bytes()) != set_slot));

    let mut plan = Plan::default();
    plan.tags.insert("product:1".into(), vec![0]);
    let report = c
        .redis
        .apply(&plan, TagMode::Set, &tag_prefix)
        .await
        .unwrap();
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
    let mut plan = Plan::default();
    plan.tags.insert("bad".into(), vec![0]);
    plan.tags.insert("product:2".into(), vec![1]);
    let report = c
        .redis
        .apply(&plan, TagMode::Set, &tag_prefix)
        .await
        .unwrap();
    assert_eq!(report.tag_failures.len(), 1, "{report:?}");
    assert_eq!(report.tag_failures[0].0, "bad");
    assert_eq!(report.keys_removed, 20, "{report:?}");
    assert_eq!(c.count(&format!("{p}o:*")), 0);
}

/// Cache writers fill hot keys on a miss (the Cluster way: `SET`, then `SADD`) while their tags are
/// invalidated over and over. The `SREM` runs on another node than the `UNLINK`s, so a key filled
/// again in between must be registered again: when it is over, every key that exists is in its
/// tag's set (see the single-Redis test of the same name in tests/replay_redis.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_filled_again_during_its_tag_invalidation_stays_in_the_index() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let tag_prefix = format!("{p}tag:");
    let tags: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
    let work: Vec<(String, Vec<String>)> = tags
        .iter()
        .map(|t| (format!("{tag_prefix}{t}"), keys(&p, &format!("k:{t}:"), 10)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let fills = Arc::new(AtomicU64::new(0));
    // Two writers, each filling half of the tags, so that fills come often enough to land in the
    // window between an UNLINK and the SREM.
    let writers: Vec<_> = work
        .chunks(work.len() / 2)
        .map(|half| {
            let (stop, fills, half) = (stop.clone(), fills.clone(), half.to_vec());
            let mut cc = redis::cluster::ClusterClient::new(seeds())
                .and_then(|c| c.get_connection())
                .unwrap();
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

    let mut plan = Plan::default();
    for (i, t) in (0..).zip(&tags) {
        plan.tags.insert(t.clone(), vec![i]);
    }
    let mut removed = 0;
    for _ in 0..400 {
        let report = c
            .redis
            .apply(&plan, TagMode::Set, &tag_prefix)
            .await
            .unwrap();
        assert!(report.tag_failures.is_empty(), "{report:?}");
        removed += report.keys_removed;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let fills = fills.load(Ordering::Relaxed);
    assert!(
        removed > 100 && fills > 100,
        "the writer and the invalidation must have run side by side: {removed} removed, {fills} fills"
    );

    let mut lost = Vec::new();
    for (set, keys) in &work {
        for k in keys {
            let indexed: bool = c.cc.sismember(set, k).unwrap();
            if c.exists(k) && !indexed {
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

#[tokio::test]
async fn tag_version_mode_incr() {
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let tag_prefix = format!("{p}v:");
    let tags: Vec<String> = (0..30).map(|i| format!("product:{i}")).collect();
    let _: () = c.cc.set(format!("{tag_prefix}product:0"), 5).unwrap();
    let wrong = format!("{tag_prefix}wrong");
    c.sadd(&wrong, &["x".to_owned()]);
    let mut plan = Plan::default();
    for (i, t) in tags.iter().enumerate() {
        plan.tags.insert(t.clone(), vec![i as u32]);
    }
    plan.tags.insert("wrong".into(), vec![99]);
    let report = c
        .redis
        .apply(&plan, TagMode::Version, &tag_prefix)
        .await
        .unwrap();
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
    c.redis
        .apply(&plan, TagMode::Version, &tag_prefix)
        .await
        .unwrap();
    let v: i64 = c.cc.get(format!("{tag_prefix}product:0")).unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn expire_lt_shortens_only() {
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let no_ttl = keys(&p, "nottl:", 30);
    let long = keys(&p, "long:", 30);
    let short = keys(&p, "short:", 30);
    c.set(&no_ttl);
    for k in &long {
        c.set_px(k, 3_600_000);
    }
    for k in &short {
        c.set_px(k, 10_000);
    }
    c.assert_on_every_primary(&format!("{p}*"));
    let mut plan = Plan::default();
    let e = Expire {
        ttl: Duration::from_secs(60),
        jitter: 0.0,
    };
    for k in no_ttl.iter().chain(&long).chain(&short) {
        plan.expires.insert(k.clone(), e);
    }
    plan.expires.insert(format!("{p}absent"), e);
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
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
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let sets: Vec<String> = keys(&p, "set:", 12);
    for (i, s) in sets.iter().enumerate() {
        c.sadd(s, &keys(&p, &format!("member{i}:"), i + 1));
    }
    c.assert_on_every_primary(&format!("{p}set:*"));
    let string = format!("{p}string");
    c.set(std::slice::from_ref(&string));
    let absent = format!("{p}absent");
    let mut ask = sets.clone();
    ask.push(string.clone());
    ask.push(absent.clone());
    let got = c.redis.members(&ask).await.unwrap();
    assert_eq!(got.len(), ask.len());
    for (i, s) in sets.iter().enumerate() {
        let mut m = got[s].clone().unwrap();
        m.sort();
        let mut want = keys(&p, &format!("member{i}:"), i + 1);
        want.sort();
        assert_eq!(m, want, "{s}");
    }
    assert!(got[&string].is_err(), "{:?}", got[&string]);
    assert_eq!(got[&absent], Ok(vec![]));
}

#[tokio::test]
async fn sweeper_covers_every_primary() {
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let no_ttl = keys(&p, "sw:nottl:", 60);
    let long = keys(&p, "sw:long:", 60);
    let within = keys(&p, "sw:ok:", 30);
    let outside = keys(&p, "other:", 30);
    c.set(&no_ttl);
    c.set(&outside);
    for k in &long {
        c.set_px(k, 3_600_000);
    }
    for k in &within {
        c.set_px(k, 30_000);
    }
    c.assert_on_every_primary(&format!("{p}sw:nottl:*"));
    c.assert_on_every_primary(&format!("{p}sw:long:*"));
    let policy = TtlPolicy {
        pattern: format!("{p}sw:*"),
        max_ttl: Duration::from_secs(120),
        jitter: 0.1,
        at: "test".into(),
    };
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
    let Some(mut c) = cluster().await else { return };
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
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let yaml = format!(
        r#"
rules:
  - name: price
    on: price.updated
    delete:
      - "{p}price:{{product_id}}"
      - "{p}product:{{product_id}}"
      - "{p}category:{{category_ids[]}}:page:*"
    tags:
      - "product:{{product_id}}"
"#
    );
    let rules = RuleSet::from_sources(&[("c.yaml".into(), yaml)], &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let event = Event {
        id: "e1".into(),
        id_given: true,
        kind: "price.updated".into(),
        time: None,
        source: None,
        data: serde_json::json!({"product_id": 7, "category_ids": ["shoes", "running"]}),
    };
    let ep = rules.plan_event(&event, &NoMembers).unwrap();
    let mut plan = Plan::default();
    ep.add_to(&mut plan, 0);
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
    let tagged = keys(&p, "view:", 40);
    c.set(&tagged);
    c.sadd(&format!("{tag_prefix}product:7"), &tagged);
    c.assert_on_every_primary(&format!("{p}category:shoes:*"));

    let report = c
        .redis
        .apply(&plan, TagMode::Set, &tag_prefix)
        .await
        .unwrap();
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
    let Some(c) = cluster().await else { return };
    assert!(c.primaries.len() >= 3);
    c.redis.ping().await.unwrap();
    assert!(c.redis.describe().starts_with("cluster "));
}

/// The smallest reproduction of the cross-slot bug: two keys in different slots.
#[tokio::test]
async fn two_keys_in_two_slots() {
    let Some(mut c) = cluster().await else { return };
    let p = c.p.clone();
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    assert_ne!(slot(a.as_bytes()), slot(b.as_bytes()));
    c.set(&[a.clone(), b.clone()]);
    let mut plan = Plan::default();
    plan.deletes.insert(a.clone());
    plan.deletes.insert(b.clone());
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await;
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
    let Some(mut c) = cluster_with(RedisConfig {
        scan_count: 10,
        keys_per_command: 50,
        ..RedisConfig::default()
    })
    .await
    else {
        return;
    };
    let p = c.p.clone();
    // Deletes: 600 keys `{p1}:a…` (several UNLINKs of 50 keys, one slot).
    let tagged: Vec<String> = (0..600).map(|i| format!("{p}{{p1}}:a{i}")).collect();
    c.set(&tagged);
    let survivor = format!("{p}{{p1}}:survivor");
    c.set(std::slice::from_ref(&survivor));
    let mut plan = Plan::default();
    plan.deletes.extend(tagged.iter().cloned());
    plan.deletes.insert(format!("{p}{{p1}}:absent"));
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
    assert_eq!(report.keys_removed, 600, "{report:?}");
    assert_eq!(c.count(&format!("{p}{{p1}}:a*")), 0);
    assert!(c.exists(&survivor));

    // Set mode: tag set `{p1}:tag:product:1`, members `{p1}:m…`, all in one slot.
    let members: Vec<String> = (0..300).map(|i| format!("{p}{{p1}}:m{i}")).collect();
    c.set(&members[..250]);
    let tag_prefix = format!("{p}{{p1}}:tag:");
    let set = format!("{tag_prefix}product:1");
    c.sadd(&set, &members);
    let mut plan = Plan::default();
    plan.tags.insert("product:1".into(), vec![0]);
    let report = c
        .redis
        .apply(&plan, TagMode::Set, &tag_prefix)
        .await
        .unwrap();
    assert_eq!(report.keys_removed, 250, "{report:?}");
    assert_eq!(report.tags_invalidated, 1, "{report:?}");
    assert!(!c.exists(&set));
    assert_eq!(c.count(&format!("{p}{{p1}}:m*")), 0);

    // Version mode.
    let mut plan = Plan::default();
    plan.tags.insert("product:2".into(), vec![0]);
    c.redis
        .apply(&plan, TagMode::Version, &tag_prefix)
        .await
        .unwrap();
    c.redis
        .apply(&plan, TagMode::Version, &tag_prefix)
        .await
        .unwrap();
    let v: i64 = c.cc.get(format!("{tag_prefix}product:2")).unwrap();
    assert_eq!(v, 2);

    // Expire LT.
    let (k1, k2) = (format!("{p}{{p1}}:e1"), format!("{p}{{p1}}:e2"));
    c.set(std::slice::from_ref(&k1));
    c.set_px(&k2, 5_000);
    let mut plan = Plan::default();
    let e = Expire {
        ttl: Duration::from_secs(60),
        jitter: 0.0,
    };
    plan.expires.insert(k1.clone(), e);
    plan.expires.insert(k2.clone(), e);
    let report = c.redis.apply(&plan, TagMode::Set, "tag:").await.unwrap();
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
