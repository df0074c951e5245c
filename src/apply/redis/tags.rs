//! Tag sets (`[tags] layout = "set"`, and `"symfony"`: Symfony's `RedisTagAwareAdapter` keeps
//! the same index): rounds of `SSCAN` over every tag, then the removal of the members found,
//! until every cursor is back at 0. A member names its key after the client's own prefix
//! (phpredis' `OPT_PREFIX`, which prefixes keys but not the members of a set): the key removed
//! is `{member_prefix}{member}`.
//!
//! Symfony's own invalidation (a Lua script) removes the members it found, then the whole set;
//! this one removes the same keys and leaves in the set only members registered meanwhile,
//! whose entries are still there: the next invalidation finds them.
//!
//! Each round `UNLINK`s the members found and `SREM`s exactly those members from their set, so a
//! cache writer who registers a key meanwhile never loses it from the index. The race this closes:
//! a writer fills a key again just after its `UNLINK` and registers it; the key is still a member,
//! so its `SADD` changes nothing, and an `SREM` landing after that would drop the fresh key from
//! the index: every later invalidation of the tag would miss it, until its TTL. Hot keys are
//! refilled within a millisecond of a delete, so in a flash sale any gap between a key's `UNLINK`
//! and its `SREM` is hit.
//!
//! - A single Redis: per tag, `MULTI`, the `UNLINK`s, the `SREM`, `EXEC`. No writer's command runs
//!   in between (a pipeline goes out on its connection in one piece). Where `MULTI` or `EXEC` is
//!   refused (some proxies, an ACL), the Cluster way below, from then on.
//! - Redis Cluster: a set and its members live in different slots, and no transaction spans
//!   slots. Three ordered rounds instead: the `UNLINK`s; the `SREM`s; then `EXISTS` of each
//!   member. A member that exists again was written after its `UNLINK` and registered (or about
//!   to be), so it is added back with `SADD`. If the `SREM` emptied the set, the set added back
//!   has no TTL (the writer's `PEXPIRE` went to the set that was removed): it lives until the next
//!   invalidation of the tag empties it, never shorter than its members.

use std::sync::atomic::Ordering;

use redis::Value;

use super::reply::{Failure, int, parse_scan, sum_ints, unexpected};
use super::rewind::Applied;
use super::topology::Lease;
use super::{ApplyReport, Inner};

/// A tag set and the members found in it in one round, with the keys they name when the
/// members carry no client prefix of their own (else `keys` is empty and the members are them).
struct Found {
    set: String,
    members: Vec<Vec<u8>>,
    keys: Vec<Vec<u8>>,
}

impl Found {
    fn new(set: String, members: Vec<Vec<u8>>, member_prefix: &[u8]) -> Found {
        let keys = if member_prefix.is_empty() {
            Vec::new()
        } else {
            members
                .iter()
                .map(|m| [member_prefix, m].concat())
                .collect()
        };
        Found { set, members, keys }
    }

    /// The keys the members name.
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let keys = if self.keys.is_empty() {
            &self.members
        } else {
            &self.keys
        };
        keys.iter().map(Vec::as_slice)
    }
}

/// Invalidates the sets of `tags` (keys `{set_prefix}{tag}`, members naming the keys
/// `{member_prefix}{member}`); the keys removed go to `applied`.
pub(super) async fn invalidate(
    inner: &Inner,
    lease: &Lease,
    tags: impl Iterator<Item = &str>,
    (set_prefix, member_prefix): (&str, &[u8]),
    report: &mut ApplyReport,
    applied: &mut Applied,
) -> Result<(), Failure> {
    let mut active: Vec<(String, String, u64)> = tags
        .map(|t| (t.to_owned(), format!("{set_prefix}{t}"), 0))
        .collect();
    while !active.is_empty() {
        let mut scan = inner.reads();
        for (_, key, cursor) in &active {
            scan.cmd("SSCAN", key)
                .arg(key)
                .arg(*cursor)
                .arg("COUNT")
                .arg(inner.settings.scan_count);
        }
        let replies = lease.run(scan).await?;
        let mut next = Vec::new();
        let mut found: Vec<Found> = Vec::new();
        for ((tag, key, _), reply) in active.into_iter().zip(replies) {
            let (cursor, members) = match reply {
                Err(e) => {
                    let shown = crate::plan::key_text(key.as_bytes());
                    report
                        .tag_failures
                        .push((tag, format!("SSCAN {shown}: {e:?}")));
                    continue;
                }
                Ok(other) => parse_scan(other)?,
            };
            if cursor == 0 {
                report.tags_invalidated += 1;
            }
            if !members.is_empty() {
                found.push(Found::new(key.clone(), members, member_prefix));
            }
            if cursor != 0 {
                next.push((tag, key, cursor));
            }
        }
        report.keys_removed += remove_members(inner, lease, &found).await?;
        for f in &found {
            applied.keys(f.keys());
        }
        active = next;
    }
    Ok(())
}

/// `UNLINK`s the members found in each set and `SREM`s exactly those (see the module docs);
/// returns the number of keys removed.
async fn remove_members(inner: &Inner, lease: &Lease, found: &[Found]) -> Result<u64, Failure> {
    if found.is_empty() {
        return Ok(0);
    }
    if inner.topology.is_cluster() || inner.no_transactions.load(Ordering::Relaxed) {
        return remove_in_order(inner, lease, found).await;
    }
    remove_atomically(inner, lease, found).await
}

async fn remove_atomically(inner: &Inner, lease: &Lease, found: &[Found]) -> Result<u64, Failure> {
    let per = inner.settings.keys_per_command;
    let mut b = inner.writes();
    // Where each tag's MULTI is, and how many UNLINKs follow it.
    let mut blocks = Vec::with_capacity(found.len());
    for f in found {
        let (set, members) = (&f.set, &f.members);
        let at = b.len();
        b.cmd("MULTI", set);
        let unlinks = b.unlinks(f.keys(), per);
        b.srem(set, members);
        b.cmd("EXEC", set);
        blocks.push((at, unlinks));
    }
    let replies = lease.run(b).await?;
    let exec_at = |&(at, n): &(usize, usize)| at + n + 2;
    let multi_refused = replies.first().and_then(|r| r.as_ref().err());
    let refused = multi_refused.or_else(|| {
        blocks
            .iter()
            .find_map(|b| replies.get(exec_at(b))?.as_ref().err())
    });
    if let Some(e) = refused {
        // `MULTI` refused: every command ran on its own, and the UNLINKs removed what they found.
        // `EXEC` refused: nothing ran. Either way the ordered rounds (idempotent) finish the work
        // and close the race. Only a refused `MULTI` (a proxy without transactions) turns them
        // off for good; an `EXECABORT` (a command refused while queued: an ACL, a replica's
        // `READONLY` during a failover is an outage and retried before this) is this round's.
        if multi_refused.is_some() {
            tracing::warn!(error = %e, "transactions refused; tag sets are invalidated without them");
            inner.no_transactions.store(true, Ordering::Relaxed);
        } else {
            tracing::warn!(error = %e, "a tag transaction was aborted; this round is done without one");
        }
        let unlinked: u64 = blocks
            .iter()
            .flat_map(|&(at, n)| &replies[at + 1..at + 1 + n])
            .map(|r| int(r).unwrap_or(0))
            .sum();
        return Ok(unlinked + remove_in_order(inner, lease, found).await?);
    }
    let mut removed = 0;
    for (at, f) in blocks.iter().map(exec_at).zip(found) {
        let set = crate::plan::key_text(f.set.as_bytes());
        match replies.get(at) {
            // The UNLINK replies, then the SREM's.
            Some(Ok(Value::Array(results))) => {
                for r in &results[..results.len().saturating_sub(1)] {
                    match r {
                        Value::Int(n) => removed += (*n).max(0) as u64,
                        other => return Err(unexpected(&format!("tag set {set} UNLINK"), other)),
                    }
                }
            }
            Some(Ok(other)) => return Err(unexpected(&format!("tag set {set} EXEC"), other)),
            _ => return Err(Failure::Fatal(format!("tag set {set}: no EXEC reply"))),
        }
    }
    Ok(removed)
}

async fn remove_in_order(inner: &Inner, lease: &Lease, found: &[Found]) -> Result<u64, Failure> {
    let keys = || found.iter().flat_map(Found::keys);
    let mut unlink = inner.writes();
    unlink.unlinks(keys(), inner.settings.keys_per_command);
    let removed = sum_ints(&lease.run(unlink).await?)?;

    let mut srem = inner.writes();
    for f in found {
        srem.srem(&f.set, &f.members);
    }
    // Like an SREM in a transaction, its reply does not matter: a set replaced meanwhile by
    // another type (`WRONGTYPE`) was already read, and its members are already gone.
    lease.run(srem).await?;

    let mut exists = inner.reads();
    for k in keys() {
        exists.cmd("EXISTS", k).arg(k);
    }
    let mut replies = lease.run(exists).await?.into_iter();
    let mut readd = inner.writes();
    for f in found {
        for m in &f.members {
            let reply = replies.next().unwrap_or(Ok(Value::Int(0)));
            if int(&reply)? > 0 {
                readd.cmd("SADD", &f.set).arg(&f.set).arg(m);
            }
        }
    }
    if !readd.is_empty() {
        tracing::debug!(
            members = readd.len(),
            "tag members written again during their invalidation, registered again"
        );
        for reply in lease.run(readd).await? {
            if let Err(e) = reply {
                tracing::warn!(error = %e, "could not register a tag member again");
            }
        }
    }
    Ok(removed)
}
