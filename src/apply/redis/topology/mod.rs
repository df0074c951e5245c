//! Connections to the primaries, and how a change of primary is noticed.
//!
//! - [`single`]: one primary, at a URL (a server, an endpoint that may switch to a promoted
//!   replica, a proxy) or found through Redis Sentinel on every (re)connect;
//! - [`cluster`]: the primaries of a Redis Cluster, by its slot map.
//!
//! Invariants:
//! - a [`Lease`] is what one attempt of an operation works through: one fixed connection to each
//!   primary (picked in turn from `[redis] connections` per node), so that a unit's writes and its
//!   `WAIT` share a connection and a `WAIT` holds up no other unit;
//! - any failure on a lease drops the connections it came from (the next lease connects again)
//!   and moves the *epoch* on. An attempt that began in an older epoch cannot know whether its
//!   writes reached a primary that is gone, so it must not be acknowledged as it is (the caller
//!   applies it again);
//! - on every (re)connect each primary says who it is ([`identity`]); a replica is never used.
//!   A primary that is not the one last seen (a promoted replica, a restarted process, an
//!   endpoint that now points elsewhere), or a Cluster slot whose owner failed over, is a failover:
//!   the lease comes with a [`Failover`], and nothing is published (other attempts wait) until
//!   the caller has rewound onto the new primary and called [`Failover::commit`].

pub mod cluster;
pub mod identity;
pub mod single;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, Value};

use super::batch::Batch;
use super::reply::{Failure, Reply, is_outage_code};
use crate::config::{self, RedisConfig};

/// Where the caches live, connected.
pub enum Topology {
    Single(Arc<single::Single>),
    Cluster(Arc<cluster::Cluster>),
}

impl Topology {
    pub fn new(settings: &RedisConfig) -> Result<Topology, Failure> {
        let opts = ConnOptions::new(settings);
        Ok(match settings.topology() {
            config::Topology::Single { url } => {
                Topology::Single(Arc::new(single::Single::url(url, opts)?))
            }
            config::Topology::Sentinel { sentinels, master } => Topology::Single(Arc::new(
                single::Single::sentinel(sentinels, master, settings, opts)?,
            )),
            config::Topology::Cluster { seeds } => {
                Topology::Cluster(Arc::new(cluster::Cluster::new(seeds, opts)?))
            }
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }

    /// A lease for one attempt, connecting first if needed; with a [`Failover`] when the
    /// primary changed since the last one.
    pub async fn lease(&self) -> Result<(Lease, Option<Failover>), Failure> {
        match self {
            Topology::Single(s) => s.lease().await,
            Topology::Cluster(c) => c.lease().await,
        }
    }

    /// The current epoch (see the module docs).
    pub fn epoch(&self) -> u64 {
        match self {
            Topology::Single(s) => s.epoch(),
            Topology::Cluster(c) => c.epoch(),
        }
    }
}

/// What a topology uses now (a primary, a slot map) and its epoch; and, behind a lock held
/// through every (re)connect, what the last commit found (see the module docs).
pub struct Current<T, K> {
    value: RwLock<Option<Arc<T>>>,
    epoch: AtomicU64,
    known: Arc<tokio::sync::Mutex<K>>,
}

impl<T, K: Default> Default for Current<T, K> {
    fn default() -> Self {
        Current {
            value: RwLock::new(None),
            epoch: AtomicU64::new(0),
            known: Arc::default(),
        }
    }
}

impl<T, K> Current<T, K> {
    pub fn get(&self) -> Option<Arc<T>> {
        self.value.read().expect("topology lock").clone()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Moves the epoch on (a failover found) and returns the new one.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The lock every (re)connect holds, with what the last commit found.
    pub async fn lock(&self) -> tokio::sync::OwnedMutexGuard<K> {
        self.known.clone().lock_owned().await
    }

    /// `value` is used from now on, unless a failure moved the epoch past `epoch` meanwhile.
    pub fn set(&self, epoch: u64, value: Arc<T>) {
        if self.epoch() == epoch {
            *self.value.write().expect("topology lock") = Some(value);
        }
    }

    /// Drops what is used if it is still that of `epoch` (once per epoch): the next lease
    /// connects again.
    pub fn broken(&self, epoch: u64) {
        if self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            *self.value.write().expect("topology lock") = None;
        }
    }
}

/// How connections to a node are made.
#[derive(Clone)]
pub struct ConnOptions {
    /// Connections per node.
    count: usize,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

impl ConnOptions {
    fn new(s: &RedisConfig) -> ConnOptions {
        ConnOptions {
            count: s.connections.max(1),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(s.connect_timeout))
                .set_response_timeout(Some(s.response_timeout)),
            connect_timeout: s.connect_timeout,
        }
    }

    /// One connection to `info`.
    async fn one(&self, info: &ConnectionInfo) -> Result<MultiplexedConnection, Failure> {
        let client = redis::Client::open(info.clone()).map_err(Failure::from)?;
        // The crate's timeout covers the TCP connect; this one the handshake too (a frozen
        // server accepts connections and never answers).
        match tokio::time::timeout(
            self.connect_timeout * 2,
            client.get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        {
            Ok(r) => r.map_err(Failure::from),
            Err(_) => Err(Failure::Transient(format!(
                "{}: no answer to the connection handshake",
                addr_of(info)
            ))),
        }
    }

    /// `count` connections to `info`.
    async fn pool(&self, info: &ConnectionInfo) -> Result<Vec<MultiplexedConnection>, Failure> {
        futures::future::try_join_all((0..self.count).map(|_| self.one(info))).await
    }
}

/// `host:port` of a connection, for logs (never credentials).
pub fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other}"),
    }
}

/// `info` pointed at another host and port (same credentials, database and TLS).
pub fn with_addr(info: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    info.clone().set_addr(addr)
}

/// A connection to one primary.
#[derive(Clone)]
pub struct NodeConn {
    pub addr: Arc<str>,
    pub conn: MultiplexedConnection,
    /// The key written just before a `WAIT` on this node (one of its slots on a Cluster).
    pub barrier: Arc<str>,
    /// The barrier's slot is being imported by this node: the write needs `ASKING`.
    pub asking: bool,
}

/// How long a `WAIT` barrier key lives (it is written again before every `WAIT`).
const BARRIER_TTL_MS: u64 = 3_600_000;

/// What one attempt works through (see the module docs).
pub struct Lease {
    pub epoch: u64,
    kind: Kind,
    /// The connections that carried writes: where `WAIT` must confirm them.
    written: Mutex<Vec<NodeConn>>,
}

enum Kind {
    Single {
        node: NodeConn,
        topo: Arc<single::Single>,
    },
    Cluster {
        map: Arc<cluster::SlotMap>,
        index: usize,
        topo: Arc<cluster::Cluster>,
        /// Connections to nodes that a `MOVED` or `ASK` named, made for this attempt.
        redirects: tokio::sync::Mutex<HashMap<String, NodeConn>>,
    },
}

impl Lease {
    fn new(epoch: u64, kind: Kind) -> Lease {
        Lease {
            epoch,
            kind,
            written: Mutex::new(Vec::new()),
        }
    }

    /// Runs `batch` (one pipeline per primary, primaries in parallel) and gives the replies in
    /// order. A failure of any part fails the lease's connections (see the module docs).
    pub async fn run(&self, batch: Batch) -> Result<Vec<Reply>, Failure> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let result = match &self.kind {
            Kind::Single { node, .. } => {
                let writes = batch.writes;
                let r = pipeline(node, &batch.into_pipeline()).await;
                if r.is_ok() && writes {
                    self.wrote(node);
                }
                r
            }
            Kind::Cluster { map, index, .. } => cluster::run(self, map, *index, batch).await,
        };
        if result.is_err() {
            self.broken();
        }
        result
    }

    /// One command on one primary (`SCAN`, `PING`).
    pub async fn query(&self, node: &NodeConn, cmd: &Cmd) -> Result<Value, Failure> {
        match cmd.query_async::<Value>(&mut node.conn.clone()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.broken();
                Err(Failure::from(e))
            }
        }
    }

    /// A connection to every primary.
    pub fn primaries(&self) -> Vec<NodeConn> {
        match &self.kind {
            Kind::Single { node, .. } => vec![node.clone()],
            Kind::Cluster { map, index, .. } => map.primaries(*index),
        }
    }

    /// `WAIT replicas timeout` on every connection that carried writes (`everywhere`: on every
    /// primary), in parallel; returns the primaries that got fewer replicas than asked, with the
    /// count they got.
    ///
    /// Each `WAIT` follows a write of the node's barrier key on the same connection. `WAIT` waits
    /// for the connection's own last replicated write, and a write that changed nothing (an
    /// `UNLINK` of a key already gone, as when a unit is applied again) is not replicated: without
    /// the barrier, a `WAIT` after a retry could confirm nothing and still succeed. With it, the
    /// `WAIT` covers every write the primary took before it, from any connection.
    pub async fn wait(
        &self,
        replicas: u32,
        timeout: Duration,
        everywhere: bool,
    ) -> Result<Vec<(Arc<str>, i64)>, Failure> {
        let nodes = if everywhere {
            self.primaries()
        } else {
            self.written.lock().expect("lease lock").clone()
        };
        let ms = timeout.as_millis().max(1) as u64;
        let waits = nodes.iter().map(|node| async move {
            let mut pipe = redis::pipe();
            if node.asking {
                pipe.cmd("ASKING").ignore();
            }
            pipe.cmd("SET")
                .arg(&*node.barrier)
                .arg(1)
                .arg("PX")
                .arg(BARRIER_TTL_MS)
                .ignore()
                .cmd("WAIT")
                .arg(replicas)
                .arg(ms);
            match pipe.query_async::<(Value,)>(&mut node.conn.clone()).await {
                Ok((Value::Int(n),)) => Ok((node.addr.clone(), n)),
                Ok((other,)) => Err(super::reply::unexpected("WAIT", &other)),
                Err(e) => Err(Failure::from(e)),
            }
        });
        match futures::future::try_join_all(waits).await {
            Ok(counts) => Ok(counts
                .into_iter()
                .filter(|(_, n)| *n < i64::from(replicas))
                .collect()),
            Err(e) => {
                self.broken();
                Err(e)
            }
        }
    }

    fn wrote(&self, node: &NodeConn) {
        let mut w = self.written.lock().expect("lease lock");
        if !w.iter().any(|n| n.addr == node.addr) {
            w.push(node.clone());
        }
    }

    /// Drops the connections this lease came from (once per epoch).
    fn broken(&self) {
        match &self.kind {
            Kind::Single { topo, .. } => topo.broken(self.epoch),
            Kind::Cluster { topo, .. } => topo.broken(self.epoch),
        }
    }
}

/// Runs `pipe` on `node`: a command's own error is its reply; an outage reply fails the whole.
async fn pipeline(node: &NodeConn, pipe: &Pipeline) -> Result<Vec<Reply>, Failure> {
    let values = values(node, pipe).await?;
    values.into_iter().map(|v| reply(&node.addr, v)).collect()
}

/// The raw replies of `pipe` (made with `ignore_errors`) on `node`, errors among them; a failure
/// of the connection names the node.
async fn values(node: &NodeConn, pipe: &Pipeline) -> Result<Vec<Value>, Failure> {
    pipe.query_async(&mut node.conn.clone())
        .await
        .map_err(|e| match Failure::from(e) {
            Failure::Transient(e) => Failure::Transient(format!("{}: {e}", node.addr)),
            other => other,
        })
}

fn reply(addr: &str, v: Value) -> Result<Reply, Failure> {
    match v {
        Value::ServerError(e) if is_outage_code(e.code()) => {
            Err(Failure::Transient(format!("{addr}: {e}")))
        }
        Value::ServerError(e) => Ok(Err(e.to_string())),
        v => Ok(Ok(v)),
    }
}

/// A change of primary found on (re)connect: rewind onto the new one through the lease it came
/// with, then [`Failover::commit`]. Until then every other attempt waits; dropped without a
/// commit, the next attempt finds the failover again.
pub struct Failover {
    /// From what to what, for logs.
    pub description: String,
    kind: FailoverKind,
}

enum FailoverKind {
    Single(single::Pending),
    Cluster(cluster::Pending),
}

impl Failover {
    /// True when the invalidation of `key` may have been lost.
    pub fn affects(&self, key: &[u8]) -> bool {
        match &self.kind {
            FailoverKind::Single(_) => true,
            FailoverKind::Cluster(p) => p.affects(key),
        }
    }

    /// The new primary (or slot map) becomes the current one.
    pub fn commit(self) {
        match self.kind {
            FailoverKind::Single(p) => p.commit(),
            FailoverKind::Cluster(p) => p.commit(),
        }
    }
}
