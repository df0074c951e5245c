//! `SCAN MATCH` over every primary: pattern deletes, and the sweeper's pass of a TTL policy.
//!
//! The pattern is glob-escaped by the planner (but its final `*`). Each batch of keys found is
//! handled before the next `SCAN`, so memory holds one batch (`scan_count` keys) at a time. The
//! pattern deletes of a unit share one pass: `SCAN MATCH` on their common literal prefix, each key
//! matched here against every pattern ([`super::glob`]), so a cascade that fans out to a thousand
//! patterns costs one walk of the keyspace, not a thousand.

use super::glob;
use super::reply::{Failure, int_signed, parse_scan, sum_ints};
use super::rewind::Applied;
use super::topology::{Lease, NodeConn};
use super::{Inner, SweepReport, jittered_ms};
use crate::plan::Expire;
use crate::rules::TtlPolicy;
use crate::rules::template::glob_escape;

/// A `SCAN MATCH` in progress over the primaries of a lease.
struct Scan<'a> {
    lease: &'a Lease,
    pattern: &'a str,
    count: usize,
    /// The primaries left, the current one last.
    nodes: Vec<NodeConn>,
    cursor: u64,
}

impl<'a> Scan<'a> {
    fn new(inner: &Inner, lease: &'a Lease, pattern: &'a str) -> Scan<'a> {
        let mut nodes = lease.primaries();
        nodes.reverse();
        Scan {
            lease,
            pattern,
            count: inner.settings.scan_count,
            nodes,
            cursor: 0,
        }
    }

    /// The next non-empty batch of keys, or `None` when every primary was scanned.
    async fn next(&mut self) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        while let Some(node) = self.nodes.last() {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(self.cursor)
                .arg("MATCH")
                .arg(self.pattern)
                .arg("COUNT")
                .arg(self.count);
            let (next, keys) = parse_scan(self.lease.query(node, &cmd).await?)?;
            self.cursor = next;
            if next == 0 {
                self.nodes.pop();
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}

/// One `SCAN` pass + `UNLINK` on every primary for all of `patterns`; returns the keys removed.
/// The keys found go to `applied`.
pub(super) async fn delete_patterns(
    inner: &Inner,
    lease: &Lease,
    patterns: &[&str],
    applied: &mut Applied,
) -> Result<u64, Failure> {
    let (matcher, several) = match patterns {
        [] => return Ok(0),
        [one] => ((*one).to_owned(), false),
        _ => (common_match(patterns), true),
    };
    let mut removed = 0;
    let mut scan = Scan::new(inner, lease, &matcher);
    while let Some(mut keys) = scan.next().await? {
        if several {
            keys.retain(|k| patterns.iter().any(|p| glob::matches(p.as_bytes(), k)));
            if keys.is_empty() {
                continue;
            }
        }
        let mut b = inner.writes();
        b.unlinks(
            keys.iter().map(Vec::as_slice),
            inner.settings.keys_per_command,
        );
        removed += sum_ints(&lease.run(b).await?)?;
        applied.keys(keys.iter().map(Vec::as_slice));
    }
    Ok(removed)
}

/// The `MATCH` of a pass serving every pattern: their common literal prefix, escaped, then `*`.
fn common_match(patterns: &[&str]) -> String {
    let mut prefix = glob::literal_prefix(patterns[0].as_bytes());
    for p in &patterns[1..] {
        let other = glob::literal_prefix(p.as_bytes());
        let same = prefix
            .iter()
            .zip(&other)
            .take_while(|(a, b)| a == b)
            .count();
        prefix.truncate(same);
    }
    // Cut at a character boundary: keys and patterns are UTF-8.
    let prefix = match String::from_utf8(prefix) {
        Ok(s) => s,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            String::from_utf8_lossy(&e.into_bytes()[..valid]).into_owned()
        }
    };
    format!("{}*", glob_escape(&prefix))
}

/// One pass of `policy`: keys matching it with no TTL or a TTL over `max_ttl` get
/// `PEXPIRE max_ttl LT` (minus jitter). Keys within the policy are never touched.
pub(super) async fn sweep(
    inner: &Inner,
    lease: &Lease,
    policy: &TtlPolicy,
    dry_run: bool,
) -> Result<SweepReport, Failure> {
    let mut report = SweepReport::default();
    let max_ms = policy.max_ttl.as_millis() as i64;
    let e = Expire {
        ttl: policy.max_ttl,
        jitter: policy.jitter,
    };
    let mut scan = Scan::new(inner, lease, &policy.pattern);
    while let Some(keys) = scan.next().await? {
        report.scanned += keys.len() as u64;
        let mut pttl = inner.reads();
        for k in &keys {
            pttl.cmd("PTTL", k).arg(k);
        }
        let ttls = lease.run(pttl).await?;
        let mut fix = inner.writes();
        for (k, ttl) in keys.iter().zip(&ttls) {
            let ttl = int_signed(ttl)?;
            // -1: no TTL; -2: gone since the scan.
            if ttl == -1 || ttl > max_ms {
                report.over_policy += 1;
                fix.cmd("PEXPIRE", k).arg(k).arg(jittered_ms(&e)).arg("LT");
            }
        }
        if !dry_run && !fix.is_empty() {
            report.fixed += sum_ints(&lease.run(fix).await?)?;
        }
    }
    Ok(report)
}
