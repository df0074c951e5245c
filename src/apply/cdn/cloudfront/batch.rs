//! The pure parts of CloudFront batching: path validation, sibling collapse, coverage by
//! wildcards, splitting into requests within CloudFront's limits, and the `CallerReference`.
//!
//! Invariants:
//! - every requested path ends in exactly one [`Entry`]: as the path sent, or covered by a
//!   wildcard that is sent (a wildcard `/a/*` covers every path starting with `/a/`);
//! - a request holds at most `max_paths` paths, of which at most `max_wildcards` end with `*`;
//! - a collapse never widens to the whole distribution (`/*`);
//! - the reference of a request is a function of its identity (process nonce, sequence number)
//!   and its content: a retry of one request sends the same reference, two requests never share
//!   one (CloudFront answers a reused reference with the earlier invalidation and does nothing).

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

/// CloudFront's longest invalidation path.
pub const MAX_PATH_LEN: usize = 4000;

/// Refuses what CloudFront refuses: a path must start with `/`, may hold `*` only as its last
/// character, is at most 4,000 characters, and must be URL-encoded (no spaces, control or
/// non-ASCII characters, none of RFC 1738's unsafe characters, `%` only as `%XX`).
pub fn validate(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("CloudFront path `{path}` must start with `/`"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "CloudFront path of {} characters is over the limit of {MAX_PATH_LEN}",
            path.len()
        ));
    }
    if let Some(i) = path.find('*')
        && i != path.len() - 1
    {
        return Err(format!(
            "CloudFront path `{path}`: `*` may only be the last character"
        ));
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bad = match b {
            b'%' => {
                !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            }
            b' ' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | b'#' => true,
            b if b.is_ascii_control() || !b.is_ascii() => true,
            _ => false,
        };
        if bad {
            return Err(format!(
                "CloudFront path `{}` holds a character that must be URL-encoded",
                path.escape_debug()
            ));
        }
    }
    Ok(())
}

/// The limits of one request and the collapse setting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_paths: usize,
    pub max_wildcards: usize,
    pub collapse_threshold: Option<usize>,
}

/// One path sent to CloudFront, and the requested paths (each with its payload `W`, the waiting
/// events in the batcher) that it answers for.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<W> {
    pub path: String,
    pub covers: Vec<(String, W)>,
}

impl<W> Entry<W> {
    pub fn is_wildcard(&self) -> bool {
        self.path.ends_with('*')
    }
}

/// The requests made of a set of paths.
#[derive(Debug)]
pub struct Planned<W> {
    pub requests: Vec<Vec<Entry<W>>>,
    /// Wildcards made by collapse, with the number of requested paths each replaced.
    pub collapses: Vec<(String, usize)>,
}

/// Plans the requests for `paths` (deduplicated by the map; validated already).
pub fn plan<W>(paths: IndexMap<String, W>, limits: &Limits) -> Planned<W> {
    let collapses = match limits.collapse_threshold {
        Some(t) => collapse(paths.keys().map(String::as_str), t),
        None => Vec::new(),
    };
    let mut prefixes: HashMap<usize, BTreeSet<String>> = HashMap::new();
    let wildcards = paths
        .keys()
        .filter(|p| p.ends_with('*'))
        .map(String::as_str)
        .chain(collapses.iter().map(|(w, _)| w.as_str()));
    for w in wildcards {
        let prefix = &w[..w.len() - 1];
        prefixes
            .entry(prefix.len())
            .or_default()
            .insert(prefix.to_owned());
    }
    let mut lengths: Vec<usize> = prefixes.keys().copied().collect();
    lengths.sort_unstable();

    // Each path goes to the broadest wildcard that covers it, or is sent as it is.
    let mut entries: IndexMap<String, Vec<(String, W)>> = IndexMap::new();
    for (path, w) in paths {
        let cover = lengths.iter().find_map(|&len| {
            let prefix = path.get(..len)?;
            let own = path.len() == len + 1 && path.ends_with('*');
            (!own && prefixes[&len].contains(prefix)).then(|| format!("{prefix}*"))
        });
        let key = cover.unwrap_or_else(|| path.clone());
        entries.entry(key).or_default().push((path, w));
    }

    let (mut wild, mut files): (Vec<Entry<W>>, Vec<Entry<W>>) = entries
        .into_iter()
        .map(|(path, covers)| Entry { path, covers })
        .partition(Entry::is_wildcard);
    let max_paths = limits.max_paths.max(1);
    let max_wild = limits.max_wildcards.clamp(1, max_paths);
    let mut requests = Vec::new();
    wild.reverse();
    files.reverse();
    while !wild.is_empty() || !files.is_empty() {
        let mut request = Vec::new();
        while request.len() < max_wild
            && let Some(e) = wild.pop()
        {
            request.push(e);
        }
        while request.len() < max_paths
            && let Some(e) = files.pop()
        {
            request.push(e);
        }
        requests.push(request);
    }
    Planned {
        requests,
        collapses,
    }
}

/// The parent directory that a collapse of `path` would invalidate: `/a/b/c` → `/a/b/`,
/// `/a/b/*` → `/a/` (the wildcard stands for the directory `/a/b/`). `None` at the root.
fn parent(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_suffix('*').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let cut = path.rfind('/')?;
    (cut > 0).then(|| &path[..=cut])
}

/// The `parent/*` wildcards for every parent with more than `threshold` distinct children among
/// `paths`, largest first.
pub fn collapse<'a>(
    paths: impl Iterator<Item = &'a str>,
    threshold: usize,
) -> Vec<(String, usize)> {
    let mut groups: IndexMap<&str, usize> = IndexMap::new();
    for p in paths {
        if let Some(parent) = parent(p) {
            *groups.entry(parent).or_default() += 1;
        }
    }
    let mut out: Vec<(String, usize)> = groups
        .into_iter()
        .filter(|&(_, n)| n > threshold)
        .map(|(parent, n)| (format!("{parent}*"), n))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The `CallerReference` of request `seq` of the process whose random nonce is `nonce`, holding
/// `paths` (in the order sent). At most 63 characters.
pub fn caller_reference<'a>(nonce: u64, seq: u64, paths: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("invalidator-{nonce:016x}-{seq}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_paths: usize, max_wildcards: usize, collapse: Option<usize>) -> Limits {
        Limits {
            max_paths,
            max_wildcards,
            collapse_threshold: collapse,
        }
    }

    fn map(paths: &[&str]) -> IndexMap<String, u32> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), i as u32))
            .collect()
    }

    fn sent(p: &Planned<u32>) -> Vec<Vec<&str>> {
        p.requests
            .iter()
            .map(|r| r.iter().map(|e| e.path.as_str()).collect())
            .collect()
    }

    #[test]
    fn validation_follows_cloudfront_rules() {
        assert!(validate("/api/products/1").is_ok());
        assert!(validate("/products/1/*").is_ok());
        assert!(validate("/search?q=shoes&page=2").is_ok());
        assert!(validate("/caf%C3%A9").is_ok());
        assert!(validate("/a~b:c@d+e=f").is_ok());
        assert!(
            validate("api/products/1")
                .unwrap_err()
                .contains("start with `/`")
        );
        assert!(validate("/a/*/b").unwrap_err().contains("last character"));
        assert!(validate("/a/**").unwrap_err().contains("last character"));
        assert!(validate("/café").unwrap_err().contains("URL-encoded"));
        assert!(validate("/a b").is_err());
        assert!(validate("/a\nb").is_err());
        assert!(validate("/a%zz").is_err());
        assert!(validate("/a%2").is_err());
        assert!(validate("/a#frag").is_err());
        assert!(validate(&format!("/{}", "a".repeat(MAX_PATH_LEN - 1))).is_ok());
        assert!(
            validate(&format!("/{}", "a".repeat(MAX_PATH_LEN)))
                .unwrap_err()
                .contains("over the limit")
        );
    }

    #[test]
    fn one_request_when_everything_fits() {
        let p = plan(map(&["/a/1", "/a/2", "/b/*"]), &limits(3000, 15, None));
        assert_eq!(sent(&p), vec![vec!["/b/*", "/a/1", "/a/2"]]);
        assert!(p.collapses.is_empty());
    }

    #[test]
    fn splits_at_max_paths_and_keeps_every_path_once() {
        let paths: Vec<String> = (0..7001).map(|i| format!("/p/{i}")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let p = plan(map(&refs), &limits(3000, 15, None));
        let sizes: Vec<usize> = p.requests.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3000, 3000, 1001]);
        let mut all: Vec<&str> = p
            .requests
            .iter()
            .flatten()
            .map(|e| e.path.as_str())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 7001);
    }

    #[test]
    fn at_most_max_wildcards_per_request() {
        let paths: Vec<String> = (0..40).map(|i| format!("/w/{i}/*")).collect();
        let mut refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        refs.push("/file");
        let p = plan(map(&refs), &limits(3000, 15, None));
        let wild: Vec<usize> = p
            .requests
            .iter()
            .map(|r| r.iter().filter(|e| e.is_wildcard()).count())
            .collect();
        assert_eq!(wild, vec![15, 15, 10]);
        assert_eq!(p.requests[0].len(), 16, "files fill the first request");
        let small = plan(map(&refs), &limits(4, 15, None));
        assert!(small.requests.iter().all(|r| r.len() <= 4));
        assert_eq!(small.requests.iter().map(Vec::len).sum::<usize>(), 41);
    }

    #[test]
    fn a_wildcard_covers_the_paths_below_it() {
        let p = plan(
            map(&[
                "/products/1/reviews",
                "/products/1/*",
                "/products/2",
                "/products/1/",
            ]),
            &limits(3000, 15, None),
        );
        assert_eq!(sent(&p), vec![vec!["/products/1/*", "/products/2"]]);
        let covers: Vec<(&str, u32)> = p.requests[0][0]
            .covers
            .iter()
            .map(|(s, w)| (s.as_str(), *w))
            .collect();
        assert_eq!(
            covers,
            vec![
                ("/products/1/reviews", 0),
                ("/products/1/*", 1),
                ("/products/1/", 3)
            ]
        );
    }

    #[test]
    fn the_broadest_wildcard_wins() {
        let p = plan(map(&["/a/b/*", "/a/*", "/a/b/c"]), &limits(3000, 15, None));
        assert_eq!(sent(&p), vec![vec!["/a/*"]]);
        assert_eq!(p.requests[0][0].covers.len(), 3);
    }

    #[test]
    fn siblings_above_the_threshold_collapse_into_their_parent() {
        let mut paths: Vec<String> = (0..60).map(|i| format!("/api/products/{i}")).collect();
        paths.extend((0..60).map(|i| format!("/products/{i}/*")));
        paths.push("/api/categories/shoes".into());
        paths.push("/api/products/7?lang=fr".into());
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let p = plan(map(&refs), &limits(3000, 15, Some(50)));
        assert_eq!(
            p.collapses,
            vec![
                ("/api/products/*".to_string(), 61),
                ("/products/*".to_string(), 60)
            ]
        );
        assert_eq!(
            sent(&p),
            vec![vec![
                "/api/products/*",
                "/products/*",
                "/api/categories/shoes"
            ]]
        );
        let covered: usize = p.requests[0].iter().map(|e| e.covers.len()).sum();
        assert_eq!(covered, 122, "every requested path is answered for");
    }

    #[test]
    fn no_collapse_at_or_below_the_threshold_nor_to_the_root() {
        let paths: Vec<String> = (0..50).map(|i| format!("/api/p/{i}")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert!(
            plan(map(&refs), &limits(3000, 15, Some(50)))
                .collapses
                .is_empty()
        );
        let roots: Vec<String> = (0..100).map(|i| format!("/page-{i}")).collect();
        let refs: Vec<&str> = roots.iter().map(String::as_str).collect();
        let p = plan(map(&refs), &limits(3000, 15, Some(10)));
        assert!(p.collapses.is_empty(), "never `/*`");
        assert_eq!(p.requests[0].len(), 100);
    }

    #[test]
    fn parents() {
        assert_eq!(parent("/a/b/c"), Some("/a/b/"));
        assert_eq!(parent("/a/b/*"), Some("/a/"));
        assert_eq!(parent("/a/b/"), Some("/a/"));
        assert_eq!(parent("/a/b?x=/y"), Some("/a/"));
        assert_eq!(parent("/a"), None);
        assert_eq!(parent("/*"), None);
    }

    #[test]
    fn reference_is_stable_for_a_request_and_distinct_between_requests() {
        let a = ["/p/1", "/p/2"];
        let r1 = caller_reference(7, 1, a.iter().copied());
        assert_eq!(
            r1,
            caller_reference(7, 1, a.iter().copied()),
            "a retry is the same request"
        );
        // The same paths again, minutes later (the same product repriced twice): a new request.
        assert_ne!(r1, caller_reference(7, 2, a.iter().copied()));
        // Another process (or a restart) that happens to reach the same sequence number.
        assert_ne!(r1, caller_reference(8, 1, a.iter().copied()));
        assert_ne!(r1, caller_reference(7, 1, ["/p/1"].iter().copied()));
        assert!(r1.len() <= 63, "{r1}");
        assert!(r1.starts_with("invalidator-0000000000000007-1-"), "{r1}");
    }
}
