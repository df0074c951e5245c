//! Next.js tags (`[tags] layout = "nextjs"`), as `@fortedigital/nextjs-cache-handler`'s
//! `redis-strings` handler keeps them: each entry at `{key_prefix}{key}`, and one hash from every
//! key to the JSON array of its tags (`__sharedTags__`), another to its expiry
//! (`__sharedTagsTtl__`).
//!
//! The handler's own `revalidateTag(tag)` reads the whole tag hash (`HSCAN`), then `UNLINK`s the
//! entries whose tags hold `tag` and `HDEL`s them from both hashes; an implicit tag (a path,
//! `_N_T_/...`) is also recorded in `__revalidated_tags__` with the time, which every read
//! compares with the entry's `lastModified`. This does the same, for all the tags of a unit in one
//! pass over the hash, page by page (memory is one page, whatever the hash's size).
//!
//! Against a writer racing it, it is as safe as the handler: the hash is read after the event
//! arrived, so every entry written before is found; an entry written again meanwhile is either
//! removed, or has lost its field in the hash, and the handler's read drops an entry without one;
//! only an entry whose writes both land after ours survives, and it was written after the
//! invalidation began. Neither order between the `UNLINK`s and the `HDEL`s is needed for that, so
//! on a Cluster they go to their primaries in parallel.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::Value;

use super::reply::{Failure, parse_scan, sum_ints};
use super::rewind::Applied;
use super::topology::Lease;
use super::{ApplyReport, Inner};
use crate::config::{NEXTJS_IMPLICIT, NextJs};

/// Invalidates `tags` in the handler's maps; the entries removed go to `applied`.
pub(super) async fn invalidate(
    inner: &Inner,
    lease: &Lease,
    tags: impl Iterator<Item = &str>,
    layout: &NextJs,
    report: &mut ApplyReport,
    applied: &mut Applied,
) -> Result<(), Failure> {
    let tags: Vec<&str> = tags.collect();
    if let Err(e) = mark_revalidated(inner, lease, &tags, layout).await? {
        fail(
            report,
            &tags,
            &format!("HSET {}", layout.revalidated_tags),
            &e,
        );
        return Ok(());
    }
    let wanted: HashSet<&str> = tags.iter().copied().collect();
    let hash = &layout.shared_tags;
    let mut cursor = 0;
    loop {
        let mut scan = inner.reads();
        scan.cmd("HSCAN", hash)
            .arg(hash)
            .arg(cursor)
            .arg("COUNT")
            .arg(inner.settings.scan_count);
        let (next, flat) = match lease.run(scan).await?.pop() {
            Some(Ok(v)) => parse_scan(v)?,
            Some(Err(e)) => {
                fail(report, &tags, &format!("HSCAN {hash}"), &e);
                return Ok(());
            }
            None => return Err(Failure::Fatal(format!("HSCAN {hash}: no reply"))),
        };
        let matched: Vec<&[u8]> = flat
            .chunks_exact(2)
            .filter(|pair| tagged(&pair[1], &wanted))
            .map(|pair| pair[0].as_slice())
            .collect();
        if !matched.is_empty()
            && let Err(e) = remove(inner, lease, layout, &matched, report, applied).await?
        {
            fail(report, &tags, "HDEL", &e);
            return Ok(());
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    report.tags_invalidated += tags.len() as u64;
    Ok(())
}

/// `HSET __revalidated_tags__` of the implicit tags among `tags`, at the time now in ms (the
/// handler's `Date.now()`); the reply's error, if the command was refused.
async fn mark_revalidated(
    inner: &Inner,
    lease: &Lease,
    tags: &[&str],
    layout: &NextJs,
) -> Result<Result<(), String>, Failure> {
    let implicit: Vec<&str> = tags
        .iter()
        .copied()
        .filter(|t| t.starts_with(NEXTJS_IMPLICIT))
        .collect();
    if implicit.is_empty() {
        return Ok(Ok(()));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let key = &layout.revalidated_tags;
    let mut b = inner.writes();
    let cmd = b.cmd("HSET", key).arg(key);
    for t in implicit {
        cmd.arg(t).arg(now_ms);
    }
    Ok(match lease.run(b).await?.pop() {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    })
}

/// True when `value` (the JSON array of an entry's tags) holds one of `wanted`. A value that is
/// not such an array (the handler would fail on it) tags nothing.
fn tagged(value: &[u8], wanted: &HashSet<&str>) -> bool {
    match serde_json::from_slice::<Vec<std::borrow::Cow<'_, str>>>(value) {
        Ok(tags) => tags.iter().any(|t| wanted.contains(t.as_ref())),
        Err(_) => false,
    }
}

/// `UNLINK`s the entries of `fields` and `HDEL`s them from both hashes; the `HDEL`'s error if one
/// was refused (`WRONGTYPE`).
async fn remove(
    inner: &Inner,
    lease: &Lease,
    layout: &NextJs,
    fields: &[&[u8]],
    report: &mut ApplyReport,
    applied: &mut Applied,
) -> Result<Result<(), String>, Failure> {
    let keys: Vec<Vec<u8>> = fields
        .iter()
        .map(|f| [layout.key_prefix.as_bytes(), f].concat())
        .collect();
    let mut b = inner.writes();
    let unlinks = b.unlinks(
        keys.iter().map(Vec::as_slice),
        inner.settings.keys_per_command,
    );
    for hash in [&layout.shared_tags, &layout.shared_tags_ttl] {
        b.cmd("HDEL", hash).arg(hash).arg(fields);
    }
    let replies = lease.run(b).await?;
    let (unlinked, hdels) = replies.split_at(unlinks.min(replies.len()));
    report.keys_removed += sum_ints(unlinked)?;
    applied.keys(keys.iter().map(Vec::as_slice));
    for reply in hdels {
        match reply {
            Err(e) => return Ok(Err(e.clone())),
            Ok(Value::Int(_)) => {}
            Ok(other) => return Err(super::reply::unexpected("HDEL", other)),
        }
    }
    Ok(Ok(()))
}

/// Every tag of the unit failed with `error` (a reply tied to the data, like `WRONGTYPE`).
fn fail(report: &mut ApplyReport, tags: &[&str], what: &str, error: &str) {
    let shown = crate::plan::key_text(what.as_bytes());
    for t in tags {
        report
            .tag_failures
            .push(((*t).to_owned(), format!("{shown}: {error}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_tagged_by_its_json_array() {
        let wanted: HashSet<&str> = ["price:1", "é \"q\""].into_iter().collect();
        assert!(tagged(br#"["a","price:1"]"#, &wanted));
        assert!(tagged(br#"["\u00e9 \"q\""]"#, &wanted));
        assert!(!tagged(br#"["price:10"]"#, &wanted));
        assert!(!tagged(br#"[]"#, &wanted));
        for hostile in [
            &b"price:1"[..],
            b"{\"price:1\":1}",
            b"[1,2]",
            b"\xff\xfe",
            b"",
        ] {
            assert!(!tagged(hostile, &wanted), "{hostile:?}");
        }
    }
}
