//! One primary: at a URL (a server, an endpoint that may switch to a promoted replica, a proxy),
//! or found through Redis Sentinel.
//!
//! Connections are made on first use and again after any failure: the URL is connected to anew,
//! or the sentinels are asked anew for the primary of `sentinel_master` (the redis crate's
//! `Sentinel`, which also checks with `ROLE` that the server it names is a primary). Each
//! (re)connect asks the server who it is; a different primary than the last one is a failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, TlsMode};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::identity::{Identity, identify};
use super::{ConnOptions, Current, Failover, FailoverKind, Kind, Lease, NodeConn, addr_of};
use crate::apply::redis::batch::barrier_key;
use crate::apply::redis::reply::Failure;
use crate::config::{RedisConfig, redact_url};

/// The primary in use.
pub struct Primary {
    addr: Arc<str>,
    identity: Option<Identity>,
    conns: Vec<redis::aio::MultiplexedConnection>,
    epoch: u64,
}

/// What the last committed connection found.
#[derive(Default)]
pub struct Known {
    seen: bool,
    addr: String,
    identity: Option<Identity>,
}

enum Source {
    Url(ConnectionInfo),
    Sentinel {
        sentinel: Mutex<Sentinel>,
        master: String,
        node: SentinelNodeConnectionInfo,
    },
}

pub struct Single {
    source: Source,
    /// For logs (no password).
    description: String,
    opts: ConnOptions,
    current: Current<Primary, Known>,
    next: AtomicUsize,
    /// The key written before each `WAIT`.
    barrier: Arc<str>,
}

impl Single {
    pub fn url(url: &str, opts: ConnOptions) -> Result<Single, Failure> {
        let info = url.into_connection_info().map_err(Failure::from)?;
        Ok(Single::new(Source::Url(info), redact_url(url), opts))
    }

    pub fn sentinel(
        sentinels: &[String],
        master: &str,
        settings: &RedisConfig,
        opts: ConnOptions,
    ) -> Result<Single, Failure> {
        let sentinel = Sentinel::build(sentinels.to_vec()).map_err(Failure::from)?;
        let mut redis = RedisConnectionInfo::default().set_db(settings.db);
        if let Some(u) = &settings.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &settings.password {
            redis = redis.set_password(&p.0);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        if sentinels.iter().any(|s| s.starts_with("rediss://")) {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        let description = format!(
            "sentinel master {master} via {}",
            sentinels
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>()
                .join(",")
        );
        let source = Source::Sentinel {
            sentinel: Mutex::new(sentinel),
            master: master.to_owned(),
            node,
        };
        Ok(Single::new(source, description, opts))
    }

    fn new(source: Source, description: String, opts: ConnOptions) -> Single {
        Single {
            source,
            description,
            opts,
            current: Current::default(),
            next: AtomicUsize::new(0),
            barrier: barrier_key(None).into(),
        }
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn epoch(&self) -> u64 {
        self.current.epoch()
    }

    fn lease_on(self: &Arc<Self>, p: &Primary) -> Lease {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % p.conns.len();
        let node = NodeConn {
            addr: p.addr.clone(),
            conn: p.conns[i].clone(),
            barrier: self.barrier.clone(),
            asking: false,
        };
        Lease::new(
            p.epoch,
            Kind::Single {
                node,
                topo: self.clone(),
            },
        )
    }

    pub async fn lease(self: &Arc<Self>) -> Result<(Lease, Option<Failover>), Failure> {
        if let Some(p) = self.current.get() {
            return Ok((self.lease_on(&p), None));
        }
        let mut known = self.current.lock().await;
        if let Some(p) = self.current.get() {
            return Ok((self.lease_on(&p), None));
        }
        let info = self.resolve().await?;
        let addr: Arc<str> = addr_of(&info).into();
        let mut conns = self.opts.pool(&info).await?;
        let identity = identify(&mut conns[0], &addr).await?;
        let same = match (&known.identity, &identity) {
            (Some(a), Some(b)) => a == b,
            // Unknown (INFO refused): any reconnect may be a failover.
            _ => false,
        };
        if !known.seen || same {
            let p = Arc::new(Primary {
                addr: addr.clone(),
                identity: identity.clone(),
                conns,
                epoch: self.epoch(),
            });
            if !known.seen {
                tracing::info!(redis = %self.description, primary = %addr,
                    identity = %identity.as_ref().map_or("unknown (INFO refused)".to_owned(), Identity::to_string),
                    "connected to the Redis primary");
            }
            *known = Known {
                seen: true,
                addr: addr.to_string(),
                identity,
            };
            self.current.set(p.epoch, p.clone());
            return Ok((self.lease_on(&p), None));
        }
        let show = |a: &str, i: &Option<Identity>| match i {
            Some(i) => format!("{a} ({i})"),
            None => format!("{a} (identity unknown)"),
        };
        let description = format!(
            "primary changed from {} to {}",
            show(&known.addr, &known.identity),
            show(&addr, &identity)
        );
        let p = Arc::new(Primary {
            addr,
            identity,
            conns,
            epoch: self.current.next_epoch(),
        });
        let lease = self.lease_on(&p);
        let pending = Pending {
            known,
            primary: p,
            topo: self.clone(),
        };
        Ok((
            lease,
            Some(Failover {
                description,
                kind: FailoverKind::Single(pending),
            }),
        ))
    }

    /// Where the primary is now.
    async fn resolve(&self) -> Result<ConnectionInfo, Failure> {
        match &self.source {
            Source::Url(info) => Ok(info.clone()),
            Source::Sentinel {
                sentinel,
                master,
                node,
            } => {
                let mut s = sentinel.lock().await;
                let ask = s.async_master_for(master, Some(node));
                let client = match tokio::time::timeout(self.opts.connect_timeout * 4, ask).await {
                    Ok(Ok(client)) => client,
                    Ok(Err(e)) => {
                        return Err(Failure::Transient(format!(
                            "no primary for `{master}` from the sentinels: {e}"
                        )));
                    }
                    Err(_) => {
                        return Err(Failure::Transient(format!(
                            "the sentinels did not name a primary for `{master}` in time"
                        )));
                    }
                };
                let info = client.get_connection_info().clone();
                tracing::debug!(master, primary = %addr_of(&info), "sentinels named the primary");
                Ok(info)
            }
        }
    }

    /// Drops the primary's connections if they are still those of `epoch`.
    pub fn broken(&self, epoch: u64) {
        self.current.broken(epoch);
    }
}

/// A failover found, not yet committed.
pub struct Pending {
    known: OwnedMutexGuard<Known>,
    primary: Arc<Primary>,
    topo: Arc<Single>,
}

impl Pending {
    pub fn commit(mut self) {
        *self.known = Known {
            seen: true,
            addr: self.primary.addr.to_string(),
            identity: self.primary.identity.clone(),
        };
        self.topo.current.set(self.primary.epoch, self.primary);
    }
}
