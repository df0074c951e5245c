//! The primaries of a Redis Cluster, by its slot map.
//!
//! - The slot map comes from `CLUSTER SLOTS`, asked of the nodes of the last map and then of the
//!   seeds. Every primary in it gets `[redis] connections` connections and says who it is; a node
//!   the map calls a primary that answers as a replica (the map is behind a failover) fails the
//!   read, which is tried again.
//! - A batch is grouped by the primary that owns each command's slot: one pipeline per primary,
//!   primaries in parallel, replies put back in order.
//! - `MOVED`: that command goes again to the node named, and the map is read again before the
//!   next attempt. `ASK`: `ASKING` and the command, to the node named. At most five redirects.
//! - A slot whose owner changed between two maps while the old owner is no longer the same primary
//!   (a replica took over, the node restarted empty: another run id or replication id) is a
//!   failover of that slot: the invalidations of its keys in the rewind window are applied again.
//!   A slot moved between two live primaries (resharding) is not.
//!
//! Here: reading the map and connecting to its primaries, leases, failover detection. Parsing
//! `CLUSTER SLOTS` is [`slots`]' (pure), running a batch and following redirects [`route`]'s.
//! Nothing here knows plans or rewinds: a failover found is handed up as a [`Failover`].

mod route;
mod slots;

pub(in crate::apply::redis::topology) use route::run;
use slots::{owners, parse_slots};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::OwnedMutexGuard;

use super::identity::{Identity, identify};
use super::{
    ConnOptions, Current, Failover, FailoverKind, Kind, Lease, NodeConn, addr_of, with_addr,
};
use crate::apply::redis::batch::{barrier_key, slot};
use crate::apply::redis::reply::Failure;
use crate::config::redact_url;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;
/// No owner.
const NONE: u16 = u16::MAX;
/// Most redirects (`MOVED`, `ASK`) a command follows in one attempt.
const MAX_REDIRECTS: usize = 5;

/// A primary of the map.
pub struct Node {
    addr: Arc<str>,
    /// The cluster node id.
    id: String,
    identity: Option<Identity>,
    conns: Vec<MultiplexedConnection>,
    /// The key written before a `WAIT` on this node (in its first slot).
    barrier: Arc<str>,
}

/// Which primary owns each slot, with connections to every primary.
pub struct SlotMap {
    /// Slot → index in `nodes`, or [`NONE`].
    owners: Vec<u16>,
    nodes: Vec<Node>,
    epoch: u64,
}

impl SlotMap {
    /// Connection `index` of every primary.
    pub fn primaries(&self, index: usize) -> Vec<NodeConn> {
        self.nodes.iter().map(|n| n.conn(index)).collect()
    }

    fn owner(&self, slot: usize) -> Option<&Node> {
        match self.owners[slot] {
            NONE => None,
            i => self.nodes.get(usize::from(i)),
        }
    }

    /// The slots whose owner failed over between `self` and `new`: the owner is another primary
    /// (or none) and the old owner is no longer a primary with the same run id and replication
    /// id. A slot moved from one live primary to another (resharding: `MIGRATE` moves the keys as
    /// the old owner holds them) is not a failover.
    fn failed_over(&self, new: &SlotMap) -> Vec<bool> {
        let who = |n: &Node| (n.id.clone(), n.identity.clone());
        let still_primary: Vec<bool> = self
            .nodes
            .iter()
            .map(|old| new.nodes.iter().any(|n| who(n) == who(old)))
            .collect();
        (0..SLOTS)
            .map(|s| match (self.owners[s], new.owner(s)) {
                (NONE, _) => false,
                (o, Some(n)) if who(&self.nodes[usize::from(o)]) == who(n) => false,
                (o, _) => !still_primary[usize::from(o)],
            })
            .collect()
    }
}

impl Node {
    fn conn(&self, index: usize) -> NodeConn {
        NodeConn {
            addr: self.addr.clone(),
            conn: self.conns[index % self.conns.len()].clone(),
            barrier: self.barrier.clone(),
            asking: false,
        }
    }
}

pub struct Cluster {
    seeds: Vec<ConnectionInfo>,
    description: String,
    opts: ConnOptions,
    /// The map in use; what is known: the last committed map.
    current: Current<SlotMap, Option<Arc<SlotMap>>>,
    /// A `MOVED` was seen: read the map again before the next lease.
    stale: AtomicBool,
    next: AtomicUsize,
}

impl Cluster {
    pub fn new(seeds: &[String], opts: ConnOptions) -> Result<Cluster, Failure> {
        let infos = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info().map_err(Failure::from))
            .collect::<Result<Vec<_>, _>>()?;
        if infos.is_empty() {
            return Err(Failure::Fatal("no Redis Cluster seed node".into()));
        }
        let description = format!(
            "cluster {}",
            seeds
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Cluster {
            seeds: infos,
            description,
            opts,
            current: Current::default(),
            stale: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn epoch(&self) -> u64 {
        self.current.epoch()
    }

    /// The current map, unless a `MOVED` said it is behind.
    fn current(&self) -> Option<Arc<SlotMap>> {
        if self.stale.load(Ordering::SeqCst) {
            return None;
        }
        self.current.get()
    }

    fn lease_on(self: &Arc<Self>, map: &Arc<SlotMap>) -> Lease {
        Lease::new(
            map.epoch,
            Kind::Cluster {
                map: map.clone(),
                index: self.next.fetch_add(1, Ordering::Relaxed),
                topo: self.clone(),
                redirects: Default::default(),
            },
        )
    }

    pub async fn lease(self: &Arc<Self>) -> Result<(Lease, Option<Failover>), Failure> {
        if let Some(m) = self.current() {
            return Ok((self.lease_on(&m), None));
        }
        let mut known = self.current.lock().await;
        if let Some(m) = self.current() {
            return Ok((self.lease_on(&m), None));
        }
        // Cleared before the read: a MOVED seen meanwhile marks it again.
        self.stale.store(false, Ordering::SeqCst);
        let (owners, nodes) = match self.read_map(known.as_deref()).await {
            Ok(m) => m,
            Err(e) => {
                self.stale.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let mut map = SlotMap {
            owners,
            nodes,
            epoch: self.epoch(),
        };
        let changed = known.as_ref().map(|old| old.failed_over(&map));
        let Some(changed) = changed.filter(|c| c.iter().any(|&c| c)) else {
            if known.is_none() {
                tracing::info!(redis = %self.description, primaries = map.nodes.len(),
                    "connected to the Redis Cluster");
            }
            let map = Arc::new(map);
            *known = Some(map.clone());
            self.current.set(map.epoch, map.clone());
            return Ok((self.lease_on(&map), None));
        };
        let old = known.as_ref().expect("a change needs an old map");
        let description = describe_change(old, &map, &changed);
        map.epoch = self.current.next_epoch();
        let map = Arc::new(map);
        let lease = self.lease_on(&map);
        let pending = Pending {
            known,
            map,
            changed,
            topo: self.clone(),
        };
        Ok((
            lease,
            Some(Failover {
                description,
                kind: FailoverKind::Cluster(pending),
            }),
        ))
    }

    /// Reads the slot map and connects to every primary in it.
    async fn read_map(&self, last: Option<&SlotMap>) -> Result<(Vec<u16>, Vec<Node>), Failure> {
        let template = &self.seeds[0];
        let mut candidates: Vec<ConnectionInfo> = Vec::new();
        for n in last.map(|m| m.nodes.as_slice()).unwrap_or_default() {
            if let Some((host, port)) = split_addr(&n.addr) {
                candidates.push(with_addr(template, host, port));
            }
        }
        candidates.extend(self.seeds.iter().cloned());
        let mut failed = Vec::new();
        let mut ranges = None;
        for info in &candidates {
            let asked = addr_of(info);
            let slots = async {
                let mut conn = self.opts.one(info).await?;
                let v: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await?;
                parse_slots(v, info)
            };
            match slots.await {
                Ok(r) if !r.is_empty() => {
                    ranges = Some(r);
                    break;
                }
                Ok(_) => failed.push(format!("{asked}: no slot assigned")),
                Err(e) => failed.push(format!("{asked}: {e}")),
            }
        }
        let Some(ranges) = ranges else {
            return Err(Failure::Transient(format!(
                "no cluster node gave its slot map ({})",
                failed.join("; ")
            )));
        };
        let (owners, primaries) = owners(&ranges);
        let nodes = futures::future::try_join_all(primaries.into_iter().map(
            |(host, port, id, slot)| async move {
                let info = with_addr(template, &host, port);
                let addr: Arc<str> = addr_of(&info).into();
                let mut conns = self.opts.pool(&info).await?;
                let identity = identify(&mut conns[0], &addr).await?;
                Ok::<_, Failure>(Node {
                    addr,
                    id,
                    identity,
                    conns,
                    barrier: barrier_key(Some(slot)).into(),
                })
            },
        ))
        .await?;
        Ok((owners, nodes))
    }

    /// Drops the map's connections if they are still those of `epoch`.
    pub fn broken(&self, epoch: u64) {
        self.current.broken(epoch);
    }
}

/// A failover found, not yet committed.
pub struct Pending {
    known: OwnedMutexGuard<Option<Arc<SlotMap>>>,
    map: Arc<SlotMap>,
    /// Slot → its owner changed.
    changed: Vec<bool>,
    topo: Arc<Cluster>,
}

impl Pending {
    pub fn affects(&self, key: &[u8]) -> bool {
        self.changed[usize::from(slot(key))]
    }

    pub fn commit(mut self) {
        *self.known = Some(self.map.clone());
        self.topo.current.set(self.map.epoch, self.map);
    }
}

/// "slots 0-5460: 127.0.0.1:7001 (…) → 127.0.0.1:7004 (…)", one per changed owner.
fn describe_change(old: &SlotMap, new: &SlotMap, changed: &[bool]) -> String {
    let name = |n: Option<&Node>| match n {
        None => "no primary".to_owned(),
        Some(n) => match &n.identity {
            Some(i) => format!("{} (node {}, {i})", n.addr, n.id.get(..12).unwrap_or(&n.id)),
            None => format!("{} (node {})", n.addr, n.id.get(..12).unwrap_or(&n.id)),
        },
    };
    let mut parts: Vec<String> = Vec::new();
    let mut s = 0;
    while s < SLOTS {
        if !changed[s] {
            s += 1;
            continue;
        }
        let start = s;
        let (from, to) = (old.owners[s], new.owners[s]);
        while s + 1 < SLOTS
            && changed[s + 1]
            && old.owners[s + 1] == from
            && new.owners[s + 1] == to
        {
            s += 1;
        }
        parts.push(format!(
            "slots {start}-{s}: {} -> {}",
            name(old.owner(start)),
            name(new.owner(start))
        ));
        s += 1;
    }
    if parts.len() > 8 {
        let more = parts.len() - 8;
        parts.truncate(8);
        parts.push(format!("and {more} more ranges"));
    }
    format!("primary changed for {}", parts.join("; "))
}

fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, run_id: &str) -> Node {
        Node {
            addr: format!("{id}:1").into(),
            id: id.to_owned(),
            identity: Some(Identity {
                run_id: run_id.to_owned(),
                replid: format!("repl-{run_id}"),
            }),
            conns: Vec::new(),
            barrier: barrier_key(None).into(),
        }
    }

    /// A map of `nodes` where node `i` owns the slots of `ranges[i]`.
    fn map(nodes: Vec<Node>, ranges: &[std::ops::Range<usize>]) -> SlotMap {
        let mut owners = vec![NONE; SLOTS];
        for (i, r) in ranges.iter().enumerate() {
            owners[r.clone()].fill(i as u16);
        }
        SlotMap {
            owners,
            nodes,
            epoch: 0,
        }
    }

    fn changed(old: &SlotMap, new: &SlotMap) -> Vec<usize> {
        let c = old.failed_over(new);
        (0..SLOTS).filter(|&s| c[s]).collect()
    }

    #[test]
    fn failovers_are_told_from_resharding() {
        let old = map(vec![node("a", "1"), node("b", "2")], &[0..100, 100..SLOTS]);
        // The same map: nothing.
        let same = map(vec![node("a", "1"), node("b", "2")], &[0..100, 100..SLOTS]);
        assert!(changed(&old, &same).is_empty());
        // Slots 50..100 moved to a live b (resharding): not a failover.
        let moved = map(vec![node("a", "1"), node("b", "2")], &[0..50, 50..SLOTS]);
        assert!(changed(&old, &moved).is_empty());
        // a's replica c took over a's slots, a is gone: those slots failed over.
        let takeover = map(vec![node("c", "3"), node("b", "2")], &[0..100, 100..SLOTS]);
        assert_eq!(changed(&old, &takeover), (0..100).collect::<Vec<_>>());
        // a restarted (a new run id: its data is gone or not the same history).
        let restarted = map(vec![node("a", "9"), node("b", "2")], &[0..100, 100..SLOTS]);
        assert_eq!(changed(&old, &restarted), (0..100).collect::<Vec<_>>());
        // A slot no one served before has nothing to rewind.
        let mut partial = map(vec![node("a", "1"), node("b", "2")], &[0..100, 100..SLOTS]);
        partial.owners[5] = NONE;
        assert!(changed(&partial, &old).is_empty());
    }
}
