//! Plan → Redis, on a single Redis or a Redis Cluster.
//!
//! Guarantees:
//! - every write is idempotent or harmless when repeated (`UNLINK`, `SREM`, `PEXPIRE .. LT`, and
//!   `INCR` of a tag version), so a batch retried after a timeout is safe;
//! - transient errors (connection lost, timeouts, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, failovers)
//!   are retried with exponential backoff and jitter for `retry_for` (forever when `None`), then
//!   reported as [`RedisError::Unavailable`]; they never become a per-event error;
//! - multi-key commands never cross a hash slot: keys are grouped per slot in cluster mode, and
//!   scans (`SCAN MATCH`) run on every primary;
//! - tag invalidation (set mode) `SREM`s exactly the members it unlinked, atomically with the
//!   `UNLINK` on a single Redis and with a check afterwards on a Cluster, so a key registered
//!   concurrently (a new one, or one written again just after its `UNLINK`) stays in the index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{self, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RetryMethod, Value};

/// One command's reply: a value, or that command's own permanent error.
type Reply = Result<Value, String>;

/// Commands in flight at once on a Redis Cluster (each sent on its own).
const CLUSTER_IN_FLIGHT: usize = 64;

use crate::config::{RedisConfig, TagMode, redact_url};
use crate::plan::{Expire, Plan};
use crate::rules::TtlPolicy;

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

enum Conn {
    Single(ConnectionManager),
    Cluster {
        conn: ClusterConnection,
        /// URL template of the seeds (credentials, TLS, db) for direct connections to primaries.
        seed: String,
    },
}

/// A connection to the Redis that holds the caches.
pub struct Redis {
    conn: Conn,
    settings: RedisConfig,
    retry_for: Option<Duration>,
    /// The server refused `MULTI` or `EXEC` (a proxy, an ACL): tag sets are then removed
    /// the Cluster way (see [`Redis::remove_members`]).
    no_transactions: AtomicBool,
}

fn backoff(retry_for: Option<Duration>) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .with_total_delay(retry_for)
}

/// True for errors a retry can fix.
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
}

fn unavailable(e: redis::RedisError) -> RedisError {
    RedisError::Unavailable(e.to_string())
}

impl Redis {
    /// Connects (retrying while Redis is unreachable, within `retry_for`).
    pub async fn connect(
        settings: &RedisConfig,
        retry_for: Option<Duration>,
    ) -> Result<Redis, RedisError> {
        let conn = (|| async { Self::open(settings).await })
            .retry(backoff(retry_for))
            .when(is_transient)
            .notify(
                |e, d| tracing::warn!(error = %e, retry_in = ?d, "Redis not reachable, retrying"),
            )
            .await
            .map_err(unavailable)?;
        Ok(Redis {
            conn,
            settings: settings.clone(),
            retry_for,
            no_transactions: AtomicBool::new(false),
        })
    }

    async fn open(s: &RedisConfig) -> redis::RedisResult<Conn> {
        match &s.cluster {
            None => {
                let client = redis::Client::open(s.url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.response_timeout))
                    .set_number_of_retries(2);
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Some(seeds) => {
                let client =
                    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                        .connection_timeout(s.connect_timeout)
                        .response_timeout(s.response_timeout)
                        .retries(2)
                        .build()?;
                let conn = client.get_async_connection().await?;
                Ok(Conn::Cluster {
                    conn,
                    seed: seeds[0].clone(),
                })
            }
        }
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> String {
        match &self.settings.cluster {
            None => redact_url(&self.settings.url),
            Some(seeds) => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|s| redact_url(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Runs a pipeline with retries. A command that fails for a reason no retry fixes (such as
    /// `WRONGTYPE`) gives an `Err` reply of its own, so it does not fail the others.
    ///
    /// Redis Cluster refuses a pipeline whose keys span several slots, so there every command is
    /// sent on its own, at most [`CLUSTER_IN_FLIGHT`] at a time, replies kept in order.
    async fn run(&self, pipe: &Pipeline) -> Result<Vec<Reply>, RedisError> {
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        (|| async {
            match &self.conn {
                Conn::Single(c) => {
                    let values = pipe.query_async::<Vec<Value>>(&mut c.clone()).await?;
                    Ok(values
                        .into_iter()
                        .map(|v| match v {
                            Value::ServerError(e) => Err(format!("{e:?}")),
                            v => Ok(v),
                        })
                        .collect())
                }
                Conn::Cluster { conn, .. } => {
                    // Built before the stream so the future stays `Send` for any caller.
                    let queries: Vec<_> = pipe
                        .cmd_iter()
                        .map(|cmd| {
                            let mut conn = conn.clone();
                            async move { cmd.query_async::<Value>(&mut conn).await }
                        })
                        .collect();
                    let replies: Vec<redis::RedisResult<Value>> = stream::iter(queries)
                        .buffered(CLUSTER_IN_FLIGHT)
                        .collect()
                        .await;
                    replies
                        .into_iter()
                        .map(|r| match r {
                            Ok(v) => Ok(Ok(v)),
                            Err(e) if is_transient(&e) => Err(e),
                            Err(e) => Ok(Err(e.to_string())),
                        })
                        .collect::<redis::RedisResult<Vec<Reply>>>()
                }
            }
        })
        .retry(backoff(self.retry_for))
        .when(is_transient)
        .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "Redis command failed, retrying"))
        .await
        .map_err(unavailable)
    }

    async fn run_on(
        &self,
        node: &mut MultiplexedConnection,
        cmd: &Cmd,
    ) -> Result<Value, RedisError> {
        (|| async { cmd.query_async::<Value>(&mut node.clone()).await })
            .retry(backoff(self.retry_for))
            .when(is_transient)
            .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "Redis scan failed, retrying"))
            .await
            .map_err(unavailable)
    }

    /// `PING`, for readiness.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut p = new_pipe();
        p.cmd("PING");
        self.run(&p).await.map(|_| ())
    }

    /// Adds `UNLINK` commands for `keys`, at most `keys_per_command` keys each, never across slots.
    fn push_unlinks<'a>(
        &self,
        pipe: &mut Pipeline,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let per = self.settings.keys_per_command;
        let mut commands = 0;
        match self.conn {
            Conn::Single(_) => {
                let mut chunk: Vec<&str> = Vec::with_capacity(per);
                for k in keys {
                    chunk.push(k);
                    if chunk.len() == per {
                        pipe.cmd("UNLINK").arg(&chunk);
                        chunk.clear();
                        commands += 1;
                    }
                }
                if !chunk.is_empty() {
                    pipe.cmd("UNLINK").arg(&chunk);
                    commands += 1;
                }
            }
            Conn::Cluster { .. } => {
                let mut by_slot: HashMap<u16, Vec<&str>> = HashMap::new();
                for k in keys {
                    by_slot.entry(slot(k.as_bytes())).or_default().push(k);
                }
                for chunk in by_slot.values().flat_map(|keys| keys.chunks(per)) {
                    pipe.cmd("UNLINK").arg(chunk);
                    commands += 1;
                }
            }
        }
        commands
    }

    /// Applies `plan`: deletes, expires, tag invalidations, then pattern deletes.
    pub async fn apply(
        &self,
        plan: &Plan,
        tag_mode: TagMode,
        tag_prefix: &str,
    ) -> Result<ApplyReport, RedisError> {
        let mut report = ApplyReport::default();
        let mut pipe = new_pipe();
        let unlinks = self.push_unlinks(&mut pipe, plan.deletes.iter().map(String::as_str));
        for (key, e) in &plan.expires {
            pipe.cmd("PEXPIRE").arg(key).arg(jittered_ms(e)).arg("LT");
        }
        let incr_tags: Vec<&String> = match tag_mode {
            TagMode::Version => plan.tags.keys().collect(),
            TagMode::Set => Vec::new(),
        };
        for tag in &incr_tags {
            pipe.cmd("INCR").arg(format!("{tag_prefix}{tag}"));
        }
        let replies = self.run(&pipe).await?;
        let (unlink_replies, rest) = replies.split_at(unlinks);
        let (expire_replies, incr_replies) = rest.split_at(plan.expires.len());
        report.keys_removed += sum_ints(unlink_replies)?;
        report.expires_set += sum_ints(expire_replies)?;
        for (tag, reply) in incr_tags.iter().zip(incr_replies) {
            match reply {
                Err(e) => report
                    .tag_failures
                    .push(((*tag).clone(), format!("INCR {tag_prefix}{tag}: {e:?}"))),
                _ => report.tags_invalidated += 1,
            }
        }
        if tag_mode == TagMode::Set && !plan.tags.is_empty() {
            self.invalidate_tag_sets(plan.tags.keys(), tag_prefix, &mut report)
                .await?;
        }
        for pattern in &plan.patterns {
            report.keys_removed += self.delete_pattern(pattern).await?;
        }
        Ok(report)
    }

    /// Set mode: rounds of `SSCAN` over every tag, then the removal of the members found (see
    /// [`Redis::remove_members`]), until every cursor is back at 0.
    async fn invalidate_tag_sets(
        &self,
        tags: impl Iterator<Item = &String>,
        prefix: &str,
        report: &mut ApplyReport,
    ) -> Result<(), RedisError> {
        let mut active: Vec<(String, String, u64)> = tags
            .map(|t| (t.to_owned(), format!("{prefix}{t}"), 0))
            .collect();
        while !active.is_empty() {
            let mut scan = new_pipe();
            for (_, key, cursor) in &active {
                scan.cmd("SSCAN")
                    .arg(key)
                    .arg(*cursor)
                    .arg("COUNT")
                    .arg(self.settings.scan_count);
            }
            let replies = self.run(&scan).await?;
            let mut next = Vec::new();
            let mut found: Vec<(String, Vec<String>)> = Vec::new();
            for ((tag, key, _), reply) in active.into_iter().zip(replies) {
                let (cursor, members) = match reply {
                    Err(e) => {
                        report
                            .tag_failures
                            .push((tag, format!("SSCAN {key}: {e:?}")));
                        continue;
                    }
                    Ok(other) => parse_scan(other)?,
                };
                if cursor == 0 {
                    report.tags_invalidated += 1;
                }
                if !members.is_empty() {
                    found.push((key.clone(), members));
                }
                if cursor != 0 {
                    next.push((tag, key, cursor));
                }
            }
            report.keys_removed += self.remove_members(&found).await?;
            active = next;
        }
        Ok(())
    }

    /// `UNLINK`s the members found in each tag set, and `SREM`s exactly those members from it, so
    /// that a cache writer who re-registers one of them meanwhile never loses it from the index.
    /// Returns the number of keys removed.
    ///
    /// The race it closes: a writer fills a key again just after its `UNLINK` and registers it; the
    /// key is still a member, so its `SADD` changes nothing, and an `SREM` landing after that would
    /// drop the fresh key from the index: every later invalidation of the tag would miss it, until
    /// its TTL. Hot keys are refilled within a millisecond of a delete, so in a flash sale any gap
    /// between a key's `UNLINK` and its `SREM` is hit.
    ///
    /// - A single Redis: per tag, `MULTI`, the `UNLINK`s, the `SREM`, `EXEC`. No writer's command
    ///   runs in between. (A pipeline goes out on the shared connection in one piece, so no other
    ///   task's commands land inside the transaction.) Where `MULTI` is refused (some proxies, an
    ///   ACL), the Cluster way below, from then on.
    /// - Redis Cluster: a set and its members live in different slots, and no transaction spans
    ///   slots. Three ordered rounds instead: the `UNLINK`s; the `SREM`s; then `EXISTS` of each
    ///   member. A member that exists again was written after its `UNLINK` and registered (or
    ///   about to be), so it is added back with `SADD`. If the `SREM` emptied the set, the set
    ///   added back has no TTL (the writer's `PEXPIRE` went to the set that was removed): it lives
    ///   until the next invalidation of the tag empties it, never shorter than its members.
    async fn remove_members(&self, found: &[(String, Vec<String>)]) -> Result<u64, RedisError> {
        if found.is_empty() {
            return Ok(0);
        }
        match self.conn {
            Conn::Single(_) if !self.no_transactions.load(Ordering::Relaxed) => {
                self.remove_members_atomically(found).await
            }
            _ => self.remove_members_in_order(found).await,
        }
    }

    async fn remove_members_atomically(
        &self,
        found: &[(String, Vec<String>)],
    ) -> Result<u64, RedisError> {
        let mut pipe = new_pipe();
        // Where each tag's MULTI is, and how many UNLINKs follow it.
        let mut blocks = Vec::with_capacity(found.len());
        for (set, members) in found {
            let at = pipe.len();
            pipe.cmd("MULTI");
            let unlinks = self.push_unlinks(&mut pipe, members.iter().map(String::as_str));
            pipe.cmd("SREM").arg(set).arg(members);
            pipe.cmd("EXEC");
            blocks.push((at, unlinks));
        }
        let replies = self.run(&pipe).await?;
        let exec_at = |&(at, n): &(usize, usize)| at + n + 2;
        let refused = replies.first().and_then(|r| r.as_ref().err()).or_else(|| {
            blocks
                .iter()
                .find_map(|b| replies.get(exec_at(b))?.as_ref().err())
        });
        if let Some(e) = refused {
            // `MULTI` refused: every command ran on its own, and the UNLINKs removed what they
            // found. `EXEC` refused: nothing ran. Either way the ordered rounds (idempotent) finish
            // the work and close the race.
            tracing::warn!(error = %e, "transactions refused; tag sets are invalidated without them");
            self.no_transactions.store(true, Ordering::Relaxed);
            let unlinked: u64 = blocks
                .iter()
                .flat_map(|&(at, n)| &replies[at + 1..at + 1 + n])
                .map(|r| int(r).unwrap_or(0))
                .sum();
            return Ok(unlinked + self.remove_members_in_order(found).await?);
        }
        let mut removed = 0;
        for (at, (set, _)) in blocks.iter().map(exec_at).zip(found) {
            match replies.get(at) {
                // The UNLINK replies, then the SREM's.
                Some(Ok(Value::Array(results))) => {
                    for r in &results[..results.len().saturating_sub(1)] {
                        match r {
                            Value::Int(n) => removed += (*n).max(0) as u64,
                            other => {
                                return Err(RedisError::Unavailable(format!(
                                    "tag set {set}: unexpected UNLINK reply {other:?}"
                                )));
                            }
                        }
                    }
                }
                other => {
                    return Err(RedisError::Unavailable(format!(
                        "tag set {set}: unexpected EXEC reply {other:?}"
                    )));
                }
            }
        }
        Ok(removed)
    }

    async fn remove_members_in_order(
        &self,
        found: &[(String, Vec<String>)],
    ) -> Result<u64, RedisError> {
        let members = || found.iter().flat_map(|(_, m)| m.iter().map(String::as_str));
        let mut unlink = new_pipe();
        self.push_unlinks(&mut unlink, members());
        let removed = sum_ints(&self.run(&unlink).await?)?;

        let mut srem = new_pipe();
        for (set, members) in found {
            srem.cmd("SREM").arg(set).arg(members);
        }
        // Like an SREM in a transaction, its reply does not matter: a set replaced meanwhile by
        // another type (`WRONGTYPE`) was already read, and its members are already gone.
        self.run(&srem).await?;

        let mut exists = new_pipe();
        for m in members() {
            exists.cmd("EXISTS").arg(m);
        }
        let mut replies = self.run(&exists).await?.into_iter();
        let mut readd = new_pipe();
        for (set, members) in found {
            for m in members {
                let reply = replies.next().unwrap_or(Ok(Value::Int(0)));
                if int(&reply)? > 0 {
                    readd.cmd("SADD").arg(set).arg(m);
                }
            }
        }
        if !readd.is_empty() {
            tracing::debug!(
                members = readd.len(),
                "tag members written again during their invalidation, registered again"
            );
            for reply in self.run(&readd).await? {
                if let Err(e) = reply {
                    tracing::warn!(error = %e, "could not register a tag member again");
                }
            }
        }
        Ok(removed)
    }

    /// Direct connections to every primary (one for a single Redis).
    async fn nodes(&self) -> Result<Vec<MultiplexedConnection>, RedisError> {
        match &self.conn {
            Conn::Single(_) => {
                let client =
                    redis::Client::open(self.settings.url.as_str()).map_err(unavailable)?;
                Ok(vec![self.node(&client).await?])
            }
            Conn::Cluster { seed, .. } => {
                let mut p = new_pipe();
                p.cmd("CLUSTER").arg("SLOTS");
                let replies = self.run(&p).await?;
                let mut addrs: Vec<(String, u16)> = Vec::new();
                if let Some(Ok(Value::Array(ranges))) = replies.into_iter().next() {
                    for range in ranges {
                        if let Value::Array(parts) = range
                            && let Some(Value::Array(primary)) = parts.get(2)
                            && let (Some(host), Some(Value::Int(port))) =
                                (primary.first(), primary.get(1))
                        {
                            let host = match host {
                                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                                Value::SimpleString(s) => s.clone(),
                                _ => continue,
                            };
                            let addr = (host, *port as u16);
                            if !addrs.contains(&addr) {
                                addrs.push(addr);
                            }
                        }
                    }
                }
                if addrs.is_empty() {
                    return Err(RedisError::Unavailable(
                        "CLUSTER SLOTS listed no primary".into(),
                    ));
                }
                let mut nodes = Vec::with_capacity(addrs.len());
                for (host, port) in addrs {
                    let mut url = reqwest::Url::parse(seed)
                        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
                    let _ = url.set_host(Some(&host));
                    let _ = url.set_port(Some(port));
                    let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                    nodes.push(self.node(&client).await?);
                }
                Ok(nodes)
            }
        }
    }

    async fn node(&self, client: &redis::Client) -> Result<MultiplexedConnection, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.response_timeout));
        (|| async {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
        .retry(backoff(self.retry_for))
        .when(is_transient)
        .await
        .map_err(unavailable)
    }

    /// Starts a `SCAN MATCH pattern` over every primary; batches come from [`Redis::scan_next`].
    async fn scan(&self, pattern: &str) -> Result<Scan, RedisError> {
        let mut nodes = self.nodes().await?;
        nodes.reverse();
        Ok(Scan {
            nodes,
            cursor: 0,
            pattern: pattern.to_owned(),
        })
    }

    /// The next non-empty batch of keys of `scan`, or `None` when every primary was scanned.
    async fn scan_next(&self, scan: &mut Scan) -> Result<Option<Vec<String>>, RedisError> {
        while let Some(node) = scan.nodes.last_mut() {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(scan.cursor)
                .arg("MATCH")
                .arg(&scan.pattern)
                .arg("COUNT")
                .arg(self.settings.scan_count);
            let (next, keys) = parse_scan(self.run_on(node, &cmd).await?)?;
            scan.cursor = next;
            if next == 0 {
                scan.nodes.pop();
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }

    /// `SCAN MATCH pattern` + `UNLINK` on every primary; returns the keys removed.
    pub async fn delete_pattern(&self, pattern: &str) -> Result<u64, RedisError> {
        let mut removed = 0;
        let mut scan = self.scan(pattern).await?;
        while let Some(keys) = self.scan_next(&mut scan).await? {
            let mut pipe = new_pipe();
            self.push_unlinks(&mut pipe, keys.iter().map(String::as_str));
            removed += sum_ints(&self.run(&pipe).await?)?;
        }
        Ok(removed)
    }

    /// Members of the given sets (`for_each_member_of`). A key that is not a set gives an error
    /// string for that set only.
    pub async fn members(
        &self,
        sets: &[String],
    ) -> Result<HashMap<String, Result<Vec<String>, String>>, RedisError> {
        let mut pipe = new_pipe();
        for s in sets {
            pipe.cmd("SMEMBERS").arg(s);
        }
        let replies = self.run(&pipe).await?;
        Ok(sets
            .iter()
            .zip(replies)
            .map(|(s, r)| {
                let v = match r {
                    Err(e) => Err(format!("SMEMBERS {s}: {e}")),
                    Ok(other) => strings(other).map_err(|e| e.to_string()),
                };
                (s.clone(), v)
            })
            .collect())
    }

    /// Which of `ids` were remembered within the dedupe window.
    pub async fn seen(&self, prefix: &str, ids: &[&str]) -> Result<Vec<bool>, RedisError> {
        let mut pipe = new_pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(format!("{prefix}{id}"));
        }
        let replies = self.run(&pipe).await?;
        replies.iter().map(|r| int(r).map(|n| n > 0)).collect()
    }

    /// Remembers `ids` for `window`.
    pub async fn remember(
        &self,
        prefix: &str,
        ids: &[&str],
        window: Duration,
    ) -> Result<(), RedisError> {
        let mut pipe = new_pipe();
        let ms = window.as_millis().max(1) as u64;
        for id in ids {
            pipe.cmd("SET")
                .arg(format!("{prefix}{id}"))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        self.run(&pipe).await.map(|_| ())
    }

    /// One sweeper pass of `policy`: keys matching it with no TTL or a TTL over `max_ttl` get
    /// `PEXPIRE max_ttl LT` (minus jitter). Keys within the policy are never touched.
    pub async fn sweep(
        &self,
        policy: &TtlPolicy,
        dry_run: bool,
    ) -> Result<SweepReport, RedisError> {
        let mut report = SweepReport::default();
        let max_ms = policy.max_ttl.as_millis() as i64;
        let mut scan = self.scan(&policy.pattern).await?;
        while let Some(keys) = self.scan_next(&mut scan).await? {
            report.scanned += keys.len() as u64;
            let mut pttl = new_pipe();
            for k in &keys {
                pttl.cmd("PTTL").arg(k);
            }
            let ttls = self.run(&pttl).await?;
            let mut fix = new_pipe();
            for (k, ttl) in keys.iter().zip(&ttls) {
                let ttl = int_signed(ttl)?;
                // -1: no TTL; -2: gone since the scan.
                if ttl == -1 || ttl > max_ms {
                    report.over_policy += 1;
                    let e = Expire {
                        ttl: policy.max_ttl,
                        jitter: policy.jitter,
                    };
                    fix.cmd("PEXPIRE").arg(k).arg(jittered_ms(&e)).arg("LT");
                }
            }
            if !dry_run && !fix.is_empty() {
                report.fixed += sum_ints(&self.run(&fix).await?)?;
            }
        }
        Ok(report)
    }
}

/// A `SCAN` in progress: the primaries left (the current one last) and its cursor.
struct Scan {
    nodes: Vec<MultiplexedConnection>,
    cursor: u64,
    pattern: String,
}

/// A pipeline whose failed commands give error replies of their own (see [`Redis::run`]).
fn new_pipe() -> Pipeline {
    let mut p = redis::pipe();
    p.ignore_errors();
    p
}

/// The TTL to set, in ms: `ttl` minus a random share of up to `jitter` of it (never longer).
fn jittered_ms(e: &Expire) -> u64 {
    let ms = e.ttl.as_millis() as u64;
    if e.jitter <= 0.0 {
        return ms.max(1);
    }
    let cut = (ms as f64 * e.jitter * rand::random::<f64>()) as u64;
    (ms - cut.min(ms)).max(1)
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`).
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

fn int(v: &Reply) -> Result<u64, RedisError> {
    int_signed(v).map(|n| n.max(0) as u64)
}

fn int_signed(v: &Reply) -> Result<i64, RedisError> {
    match v {
        Ok(Value::Int(n)) => Ok(*n),
        Err(e) => Err(RedisError::Unavailable(e.clone())),
        Ok(other) => Err(RedisError::Unavailable(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

fn sum_ints(values: &[Reply]) -> Result<u64, RedisError> {
    values.iter().map(int).sum()
}

fn strings(v: Value) -> Result<Vec<String>, RedisError> {
    match v {
        Value::Array(items) | Value::Set(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                Value::SimpleString(s) => Ok(s),
                other => Err(RedisError::Unavailable(format!(
                    "unexpected member {other:?}"
                ))),
            })
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(RedisError::Unavailable(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

/// `[cursor, [items...]]` of `SCAN`/`SSCAN`.
fn parse_scan(v: Value) -> Result<(u64, Vec<String>), RedisError> {
    let Value::Array(mut parts) = v else {
        return Err(RedisError::Unavailable(format!(
            "unexpected SCAN reply {v:?}"
        )));
    };
    if parts.len() != 2 {
        return Err(RedisError::Unavailable("unexpected SCAN reply".into()));
    }
    let items = strings(parts.pop().unwrap_or(Value::Nil))?;
    let cursor = match parts.pop() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).parse().unwrap_or(0),
        Some(Value::SimpleString(s)) => s.parse().unwrap_or(0),
        Some(Value::Int(n)) => n as u64,
        _ => 0,
    };
    Ok((cursor, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}foo"), 9500);
    }

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
