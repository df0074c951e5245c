//! The shared 3-primary Redis Cluster that `bash scripts/redis-cluster.sh start` runs (CI does) on
//! 127.0.0.1:7001-7003. Seed nodes: `INVALIDATOR_TEST_CLUSTER` (comma-separated). When the cluster
//! is not reachable every test fails with instructions, unless `INVALIDATOR_SKIP_CLUSTER=1`, which
//! makes [`ClusterWorld::start`] return `None` with a note.
//!
//! Every [`ClusterWorld`] works under its own random key prefix (`c{random}:`), so the tests run in
//! parallel. (A cluster of its own, started by the test, is [`super::topology::Cluster`].)

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Commands;

use super::layer::{self, ApplyReport, Plan, Redis, RedisConfig, TagLayout};

const DEFAULT_SEEDS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The seed nodes as `redis://` URLs.
pub fn seeds() -> Vec<String> {
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

/// A cluster connection through the seeds (for the tests' own reads and writes).
pub fn cluster_conn() -> redis::cluster::ClusterConnection {
    redis::cluster::ClusterClient::new(seeds())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| unreachable(format!("cluster connection: {e}")))
}

/// True (with a note) when `INVALIDATOR_SKIP_CLUSTER=1` skips the Cluster tests.
pub fn skipped() -> bool {
    if std::env::var("INVALIDATOR_SKIP_CLUSTER").as_deref() == Ok("1") {
        eprintln!("note: INVALIDATOR_SKIP_CLUSTER=1, skipping this Redis Cluster test");
        return true;
    }
    false
}

fn unreachable(why: String) -> ! {
    panic!(
        "Redis Cluster not reachable at {:?}: {why}\n\
         Start it with `bash scripts/redis-cluster.sh start` (CI starts it), point \
         INVALIDATOR_TEST_CLUSTER at another one, or set INVALIDATOR_SKIP_CLUSTER=1 to skip these tests.",
        seeds()
    )
}

/// One test's view of the cluster: its prefix, direct connections to every primary, a cluster
/// connection for seeding, and the library's Redis layer.
pub struct ClusterWorld {
    pub p: String,
    /// `host:port` → direct connection to that primary.
    pub primaries: BTreeMap<String, redis::Connection>,
    pub cc: redis::cluster::ClusterConnection,
    pub redis: Redis,
}

impl ClusterWorld {
    /// `None` when the tests are skipped; panics with instructions when the cluster is not up.
    pub async fn start() -> Option<ClusterWorld> {
        ClusterWorld::start_with(RedisConfig::default()).await
    }

    /// [`ClusterWorld::start`] with the layer's `scan_count` and `keys_per_command` set.
    pub async fn start_small_batches(
        scan_count: usize,
        keys_per_command: usize,
    ) -> Option<ClusterWorld> {
        ClusterWorld::start_with(RedisConfig {
            scan_count,
            keys_per_command,
            ..RedisConfig::default()
        })
        .await
    }

    /// [`ClusterWorld::start`] with the layer's settings taken from `base` (its seeds added).
    pub async fn start_with(base: RedisConfig) -> Option<ClusterWorld> {
        if skipped() {
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
        let cc = cluster_conn();
        let config = RedisConfig {
            cluster: Some(seeds),
            ..base
        };
        let redis = layer::connect(&config, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| unreachable(format!("Redis::connect: {e}")));
        Some(ClusterWorld {
            p: format!("c{:016x}:", rand::random::<u64>()),
            primaries,
            cc,
            redis,
        })
    }

    /// `n` keys `{p}{stem}0`.., spread over the slots. The numbers have one width: CRC16 is
    /// linear, so keys of one length land on slots that the random prefix only permutes, and
    /// the spread is the same in every run (with numbers of several lengths, 2,000 keys met
    /// between 1,280 and 2,000 distinct slots depending on the prefix).
    pub fn keys(&self, stem: &str, n: usize) -> Vec<String> {
        let width = n.saturating_sub(1).to_string().len();
        (0..n)
            .map(|i| format!("{}{stem}{i:0width$}", self.p))
            .collect()
    }

    /// Applies `plan` through the library's layer, its tags kept in `layout`.
    pub async fn apply(&self, plan: &Plan, layout: &TagLayout) -> ApplyReport {
        layer::apply(&self.redis, plan, layout).await
    }

    /// `SET k 1` for every key (through cluster routing).
    pub fn set(&mut self, keys: &[String]) {
        for chunk in keys.chunks(500) {
            let mut pipe = redis::cluster::cluster_pipe();
            for k in chunk {
                pipe.cmd("SET").arg(k).arg(1).ignore();
            }
            pipe.query::<()>(&mut self.cc).unwrap();
        }
    }

    /// `SET k 1 PX ms` for every key.
    pub fn set_px(&mut self, keys: &[String], ms: u64) {
        for k in keys {
            let _: () = redis::cmd("SET")
                .arg(k)
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query(&mut self.cc)
                .unwrap();
        }
    }

    pub fn sadd(&mut self, set: &str, members: &[String]) {
        for chunk in members.chunks(500) {
            let _: () = self.cc.sadd(set, chunk).unwrap();
        }
    }

    pub fn exists(&mut self, key: &str) -> bool {
        self.cc.exists(key).unwrap()
    }

    pub fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.cc).unwrap()
    }

    /// Keys matching `pattern` on each primary, by direct connection (`SCAN` on the node itself).
    pub fn per_node(&mut self, pattern: &str) -> BTreeMap<String, Vec<String>> {
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

    pub fn count(&mut self, pattern: &str) -> usize {
        self.per_node(pattern).values().map(Vec::len).sum()
    }

    /// The cluster's own `CLUSTER KEYSLOT` of each key.
    pub fn keyslots(&mut self, keys: &[&[u8]]) -> Vec<u16> {
        let c = self.primaries.values_mut().next().unwrap();
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(*k);
        }
        pipe.query(c).unwrap()
    }

    /// Asserts that every primary holds at least one key matching `pattern`.
    pub fn assert_on_every_primary(&mut self, pattern: &str) {
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
