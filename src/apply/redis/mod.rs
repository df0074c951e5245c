//! Plan → Redis: a single Redis (or a primary endpoint), a primary found through Redis Sentinel,
//! or a Redis Cluster.
//!
//! Guarantees:
//! - every write is idempotent or harmless when repeated (`UNLINK`, `SREM`, `HDEL`,
//!   `PEXPIRE .. LT`, `INCR` of a tag version, `HSET` of a Next.js path's revalidation time), so
//!   an operation is applied again, from its start, after any failure;
//! - failures a retry can fix (a lost connection, a timeout, `LOADING`, `BUSY`, `READONLY`, `OOM`,
//!   `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`, a failover, a `WAIT` shortfall) are retried with
//!   backoff until `retry_for` has passed since the first of them, attempts included
//!   ([`retry`]); then [`RedisError::Unavailable`]. They never become a per-event error: only a
//!   command's own error reply (`WRONGTYPE` on a tag or a cascade's set) is tied to events;
//! - with `wait_replicas`, an operation succeeds only once `WAIT` on every primary it wrote to
//!   (on the connection that wrote) confirmed its writes; a shortfall is a failure like any other;
//! - when the primary behind a connection changes, the invalidations of the last
//!   `failover_rewind` are applied again on the new one before anything more goes through
//!   ([`rewind`], [`topology`]);
//! - multi-key commands never cross a hash slot; on a Cluster each round of an operation is one
//!   pipeline per primary, primaries in parallel ([`batch`]), and scans run on every primary;
//! - tag sets `SREM` exactly the members they unlinked, so a key registered concurrently stays in
//!   the index ([`tags`]); the Next.js handler's tag map is read and cleaned the way its own
//!   `revalidateTag` does ([`nextjs`]).
//!
//! It applies a [`Plan`] and sweeps by a [`TtlPolicy`]; it never sees events or rules, and decides
//! nothing about what to invalidate.

mod batch;
mod glob;
mod members;
mod nextjs;
mod reply;
mod retry;
mod rewind;
mod scan;
mod tags;
mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use batch::slot;

use batch::Batch;
use reply::{Failure, int, sum_ints};
use retry::retrying;
use rewind::{Applied, Rewind};
use topology::{Failover, Lease, Topology};

use crate::config::{RedisConfig, TagLayout};
use crate::plan::{self, Expire, Plan};
use crate::rules::TtlPolicy;
use crate::telemetry;

/// A Redis failure that is not about one event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// Still failing after the retry budget, or refused for a reason no retry fixes (ACL, config).
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

/// What applying a plan did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyReport {
    /// Keys that existed and were unlinked (deletes, tag members, pattern matches).
    pub keys_removed: u64,
    /// Keys whose TTL was shortened.
    pub expires_set: u64,
    pub tags_invalidated: u64,
    /// Tags that could not be invalidated for a reason tied to the data (e.g. `WRONGTYPE`): the
    /// events that asked for them are dead-lettered.
    pub tag_failures: Vec<(String, String)>,
}

/// What one sweeper pass found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub scanned: u64,
    /// Keys with no TTL or a TTL over the policy's `max_ttl`.
    pub over_policy: u64,
    /// Keys whose TTL was shortened (0 in a dry run).
    pub fixed: u64,
}

/// Failovers seen and what they cost, since the connection was made.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RedisStats {
    /// Changes of primary (Cluster: of the owner of some slots).
    pub failovers: u64,
    /// Keys, expires and tags applied again on new primaries.
    pub rewound_actions: u64,
    /// `WAIT`s that got fewer replicas than `wait_replicas`.
    pub wait_shortfalls: u64,
}

impl RedisStats {
    /// What happened after `before`.
    pub fn since(&self, before: &RedisStats) -> RedisStats {
        RedisStats {
            failovers: self.failovers - before.failovers,
            rewound_actions: self.rewound_actions - before.rewound_actions,
            wait_shortfalls: self.wait_shortfalls - before.wait_shortfalls,
        }
    }
}

/// A connection to the Redis that holds the caches.
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    settings: RedisConfig,
    retry_for: Option<Duration>,
    rewind: Rewind,
    /// The server refused `MULTI` or `EXEC` (a proxy, an ACL): tag sets are then removed the
    /// Cluster way (see [`tags`]).
    no_transactions: AtomicBool,
    failovers: AtomicU64,
    rewound: AtomicU64,
    shortfalls: AtomicU64,
    description: String,
}

impl Redis {
    /// Connects (retrying while Redis is unreachable, within `retry_for`; `None`: forever).
    pub async fn connect(
        settings: &RedisConfig,
        retry_for: Option<Duration>,
    ) -> Result<Redis, RedisError> {
        Self::connect_waiting(settings, retry_for, retry_for).await
    }

    /// Connects, retrying while Redis is unreachable within `wait` (`None`: forever); operations
    /// afterwards retry within `retry_for` (the Lambda's init waits less than its commands retry).
    pub async fn connect_waiting(
        settings: &RedisConfig,
        retry_for: Option<Duration>,
        wait: Option<Duration>,
    ) -> Result<Redis, RedisError> {
        let topology = Topology::new(settings)?;
        let description = match &topology {
            Topology::Single(s) => s.describe().to_owned(),
            Topology::Cluster(c) => c.describe().to_owned(),
        };
        let redis = Redis {
            inner: Arc::new(Inner {
                topology,
                settings: settings.clone(),
                retry_for,
                rewind: Rewind::new(settings.failover_rewind, settings.failover_rewind_max_bytes),
                no_transactions: AtomicBool::new(false),
                failovers: AtomicU64::new(0),
                rewound: AtomicU64::new(0),
                shortfalls: AtomicU64::new(0),
                description,
            }),
        };
        let r = &redis;
        retrying(wait, "connect", || async move { r.lease().await.map(drop) }).await?;
        Ok(redis)
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> String {
        self.inner.description.clone()
    }

    pub fn stats(&self) -> RedisStats {
        let i = &self.inner;
        RedisStats {
            failovers: i.failovers.load(Ordering::Relaxed),
            rewound_actions: i.rewound.load(Ordering::Relaxed),
            wait_shortfalls: i.shortfalls.load(Ordering::Relaxed),
        }
    }

    /// A lease for one attempt. After a failover, the rewind runs first, on a task of its own
    /// so that a caller that gives up (a readiness probe's timeout) does not cut it short.
    async fn lease(&self) -> Result<Lease, Failure> {
        let (lease, failover) = self.inner.topology.lease().await?;
        let Some(failover) = failover else {
            return Ok(lease);
        };
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.rewind_onto(lease, failover).await }).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Failure::Transient(format!("failover rewind stopped: {e}"))),
        }
    }

    /// `PING`, for readiness (one attempt, no retry).
    pub async fn ping(&self) -> Result<(), RedisError> {
        let lease = self.lease().await?;
        let nodes = lease.primaries();
        for node in &nodes {
            lease.query(node, &redis::cmd("PING")).await?;
        }
        Ok(())
    }

    /// Applies `plan`: deletes, expires, tag invalidations, then pattern deletes; then `WAIT`
    /// (with `wait_replicas`), and remembers it for a failover rewind.
    pub async fn apply(&self, plan: &Plan, layout: &TagLayout) -> Result<ApplyReport, RedisError> {
        let inner = &self.inner;
        let attempts = &AtomicU64::new(0);
        retrying(inner.retry_for, "apply", || async move {
            let again = attempts.fetch_add(1, Ordering::Relaxed) > 0;
            let lease = self.lease().await?;
            let mut applied = Applied::new(inner.rewind.enabled());
            let report = inner.apply_on(&lease, plan, layout, &mut applied).await?;
            inner.confirm(&lease, again).await?;
            let kept = inner.rewind.record(applied, Some(layout), || {
                inner.topology.epoch() == lease.epoch
            });
            if !kept {
                return Err(Failure::Transient(
                    "a Redis connection failed while this unit was applied; applying it again"
                        .into(),
                ));
            }
            Ok(report)
        })
        .await
    }

    /// Which of `ids` were remembered within the dedupe window.
    pub async fn seen(&self, prefix: &str, ids: &[&str]) -> Result<Vec<bool>, RedisError> {
        let inner = &self.inner;
        retrying(inner.retry_for, "dedupe", || async move {
            let lease = self.lease().await?;
            let mut b = inner.reads();
            for id in ids {
                let k = format!("{prefix}{id}");
                b.cmd("EXISTS", &k).arg(&k);
            }
            let replies = lease.run(b).await?;
            replies.iter().map(|r| int(r).map(|n| n > 0)).collect()
        })
        .await
    }

    /// Remembers `ids` for `window`. Not confirmed by `WAIT` nor rewound: a marker lost in a
    /// failover only lets an event be applied once more.
    pub async fn remember(
        &self,
        prefix: &str,
        ids: &[&str],
        window: Duration,
    ) -> Result<(), RedisError> {
        let inner = &self.inner;
        let ms = window.as_millis().max(1) as u64;
        retrying(inner.retry_for, "dedupe", || async move {
            let lease = self.lease().await?;
            let mut b = inner.writes();
            for id in ids {
                let k = format!("{prefix}{id}");
                b.cmd("SET", &k).arg(&k).arg(1).arg("PX").arg(ms);
            }
            // A refused marker (an ACL without SET on the prefix, say) fails the unit: an id not
            // remembered lets every later copy be applied again, silently.
            match lease.run(b).await?.into_iter().find_map(Result::err) {
                Some(e) => Err(Failure::Fatal(format!("dedupe marker SET: {e}"))),
                None => Ok(()),
            }
        })
        .await
    }

    /// One sweeper pass of `policy` (see [`scan::sweep`]), confirmed by `WAIT` when configured.
    /// Not rewound: the next pass does it again.
    pub async fn sweep(
        &self,
        policy: &TtlPolicy,
        dry_run: bool,
    ) -> Result<SweepReport, RedisError> {
        let inner = &self.inner;
        let attempts = &AtomicU64::new(0);
        retrying(inner.retry_for, "sweep", || async move {
            let again = attempts.fetch_add(1, Ordering::Relaxed) > 0 && !dry_run;
            let lease = self.lease().await?;
            let report = scan::sweep(inner, &lease, policy, dry_run).await?;
            inner.confirm(&lease, again).await?;
            Ok(report)
        })
        .await
    }
}

impl Inner {
    fn reads(&self) -> Batch {
        Batch::reads(self.topology.is_cluster())
    }

    fn writes(&self) -> Batch {
        Batch::writes(self.topology.is_cluster())
    }

    /// One attempt at `plan` through `lease`; what was done goes to `applied`.
    async fn apply_on(
        &self,
        lease: &Lease,
        plan: &Plan,
        layout: &TagLayout,
        applied: &mut Applied,
    ) -> Result<ApplyReport, Failure> {
        let mut report = ApplyReport::default();
        let mut b = self.writes();
        let deletes = plan.deletes.iter().map(Vec::as_slice);
        let unlinks = b.unlinks(deletes, self.settings.keys_per_command);
        for (key, e) in &plan.expires {
            b.cmd("PEXPIRE", key).arg(key).arg(jittered_ms(e)).arg("LT");
        }
        // Tags kept as one key each: a counter increased, or a version removed.
        let (verb, tag_keys): (&str, Vec<(&String, String)>) = match layout {
            TagLayout::Versions { .. } => ("INCR", tag_keys(plan, layout)),
            TagLayout::VersionKeys { .. } => ("UNLINK", tag_keys(plan, layout)),
            TagLayout::Sets { .. } | TagLayout::NextJs(_) => ("", Vec::new()),
        };
        for (_, k) in &tag_keys {
            b.cmd(verb, k).arg(k);
        }
        let replies = lease.run(b).await?;
        let (unlink_replies, rest) = replies.split_at(unlinks.min(replies.len()));
        let (expire_replies, tag_replies) = rest.split_at(plan.expires.len().min(rest.len()));
        report.keys_removed += sum_ints(unlink_replies)?;
        report.expires_set += sum_ints(expire_replies)?;
        for ((tag, key), reply) in tag_keys.iter().zip(tag_replies) {
            match reply {
                Err(e) => report.tag_failures.push((
                    (*tag).clone(),
                    format!("{verb} {}: {e:?}", plan::key_text(key.as_bytes())),
                )),
                _ => report.tags_invalidated += 1,
            }
        }
        applied.keys(plan.deletes.iter().map(Vec::as_slice));
        for (key, e) in &plan.expires {
            applied.expire(key, *e);
        }
        applied.tags(plan.tags.keys().map(String::as_str));
        if !plan.tags.is_empty() {
            let tags = plan.tags.keys().map(String::as_str);
            match layout {
                TagLayout::Sets {
                    set_prefix,
                    member_prefix,
                } => {
                    let prefixes = (set_prefix.as_str(), member_prefix.as_bytes());
                    tags::invalidate(self, lease, tags, prefixes, &mut report, applied).await?
                }
                TagLayout::NextJs(n) => {
                    nextjs::invalidate(self, lease, tags, n, &mut report, applied).await?
                }
                TagLayout::Versions { .. } | TagLayout::VersionKeys { .. } => {}
            }
        }
        let patterns: Vec<&str> = plan.patterns.iter().map(String::as_str).collect();
        report.keys_removed += scan::delete_patterns(self, lease, &patterns, applied).await?;
        Ok(report)
    }

    /// With `wait_replicas`: `WAIT` on every connection of `lease` that wrote (`again`: on every
    /// primary, because an earlier attempt of the same operation may have written where this one
    /// found nothing left to do); a shortfall fails the attempt.
    async fn confirm(&self, lease: &Lease, again: bool) -> Result<(), Failure> {
        let want = self.settings.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let short = lease.wait(want, self.settings.wait_timeout, again).await?;
        if short.is_empty() {
            return Ok(());
        }
        self.shortfalls.fetch_add(1, Ordering::Relaxed);
        telemetry::redis_wait_shortfall();
        let which: Vec<String> = short
            .iter()
            .map(|(addr, got)| format!("{got} on {addr}"))
            .collect();
        Err(Failure::Transient(format!(
            "WAIT: fewer than {want} replica(s) confirmed the writes within {} ({}); applying them again",
            humantime::format_duration(self.settings.wait_timeout),
            which.join(", ")
        )))
    }

    /// After a failover: the window applied again on the new primary, then the failover
    /// committed (see [`topology`]).
    async fn rewind_onto(&self, lease: Lease, failover: Failover) -> Result<Lease, Failure> {
        let window = humantime::format_duration(self.settings.failover_rewind);
        tracing::warn!(redis = %self.description, change = %failover.description,
            rewind = %window, "Redis failover: invalidations of the rewind window are applied again on the new primary");
        let mut actions = 0u64;
        if self.rewind.enabled() {
            let snapshot = self.rewind.snapshot();
            let layout = snapshot.tags.clone().unwrap_or(TagLayout::set(""));
            for plan in snapshot.plans(|k| failover.affects(k), REWIND_CHUNK) {
                actions += (plan.deletes.len() + plan.expires.len() + plan.tags.len()) as u64;
                let mut again = Applied::new(false);
                self.apply_on(&lease, &plan, &layout, &mut again).await?;
            }
            self.confirm(&lease, false).await?;
        }
        failover.commit();
        self.failovers.fetch_add(1, Ordering::Relaxed);
        self.rewound.fetch_add(actions, Ordering::Relaxed);
        telemetry::redis_failover();
        telemetry::redis_rewind_actions(actions);
        tracing::warn!(redis = %self.description, actions, rewind = %window, "Redis failover ridden through: the rewind window was applied again");
        Ok(lease)
    }
}

/// Each tag of `plan` with the key `layout` keeps it at.
fn tag_keys<'a>(plan: &'a Plan, layout: &TagLayout) -> Vec<(&'a String, String)> {
    plan.tags.keys().map(|t| (t, layout.key_of(t))).collect()
}

/// Actions of the rewind window applied in one go after a failover.
const REWIND_CHUNK: usize = 10_000;

/// The TTL to set, in ms: `ttl` minus a random share of up to `jitter` of it (never longer).
fn jittered_ms(e: &Expire) -> u64 {
    let ms = e.ttl.as_millis() as u64;
    if e.jitter <= 0.0 {
        return ms.max(1);
    }
    let cut = (ms as f64 * e.jitter * rand::random::<f64>()) as u64;
    (ms - cut.min(ms)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_lengthens() {
        let e = Expire {
            ttl: Duration::from_secs(30),
            jitter: 0.2,
        };
        for _ in 0..1000 {
            let ms = jittered_ms(&e);
            assert!((24_000..=30_000).contains(&ms), "{ms}");
        }
        assert_eq!(
            jittered_ms(&Expire {
                ttl: Duration::from_secs(1),
                jitter: 0.0
            }),
            1000
        );
    }
}
