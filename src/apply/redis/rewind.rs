//! The failover rewind window: what was applied in the last `failover_rewind`, kept to be applied
//! again on a new primary.
//!
//! Replication is asynchronous: a primary acknowledges a delete before any replica has it, and a
//! replica promoted after the primary dies may still hold the key. The window is cheap insurance
//! against that, without `WAIT`'s latency.
//!
//! Invariants:
//! - an operation is recorded after its writes were acknowledged (and confirmed by `WAIT` when
//!   configured), and only if no connection failed since its attempt began (the topology's epoch
//!   did not move); otherwise [`Rewind::record`] refuses and the caller applies the operation again.
//!   So every acknowledged operation is either in the window when a failover is rewound, or was
//!   applied on the new primary;
//! - what is kept is what was done, key by key: the keys unlinked (deletes, the members of the tag
//!   sets, the keys a pattern matched), the expires, and the tags (a set is scanned again, a
//!   version counter increased again). Applying it again is idempotent or harmless;
//! - memory is bounded in bytes: an operation's keys share one buffer; entries older than the
//!   window, then the oldest beyond `failover_rewind_max_bytes`, are dropped, the latter counted
//!   (`invalidator_redis_rewind_dropped_total`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::TagLayout;
use crate::plan::{Expire, Plan};
use crate::telemetry;

/// Many short byte strings (keys are bytes: a tag set or a `SCAN` may hold any) in one buffer.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    buf: Vec<u8>,
    ends: Vec<u32>,
}

impl Keys {
    pub fn push(&mut self, key: &[u8]) {
        self.buf.extend_from_slice(key);
        self.ends.push(self.buf.len() as u32);
    }

    pub fn extend<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8]>) {
        for k in keys {
            self.push(k);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let k = &self.buf[start..end as usize];
            start = end as usize;
            k
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn bytes(&self) -> usize {
        self.buf.capacity() + self.ends.capacity() * 4
    }
}

/// What one operation did, to be done again after a failover.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// Recording: off when the rewind is, and for the rewind's own writes (the apply path then
    /// copies no key).
    on: bool,
    /// Keys unlinked, whether they existed or not (a replica may still hold them).
    keys: Keys,
    expire_keys: Keys,
    expires: Vec<Expire>,
    /// Tags invalidated (without the prefix).
    tags: Keys,
}

impl Applied {
    /// A record that keeps what it is given when `on`, and nothing otherwise.
    pub fn new(on: bool) -> Applied {
        Applied {
            on,
            ..Applied::default()
        }
    }

    pub fn keys<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8]>) {
        if self.on {
            self.keys.extend(keys);
        }
    }

    pub fn expire(&mut self, key: &str, e: Expire) {
        if self.on {
            self.expire_keys.push(key.as_bytes());
            self.expires.push(e);
        }
    }

    pub fn tags<'a>(&mut self, tags: impl IntoIterator<Item = &'a str>) {
        if self.on {
            self.tags.extend(tags.into_iter().map(str::as_bytes));
        }
    }

    fn actions(&self) -> u64 {
        (self.keys.len() + self.expires.len() + self.tags.len()) as u64
    }

    fn bytes(&self) -> usize {
        // The entry itself and its deque slot, roughly.
        const ENTRY: usize = 160;
        ENTRY
            + self.keys.bytes()
            + self.expire_keys.bytes()
            + self.tags.bytes()
            + self.expires.capacity() * std::mem::size_of::<Expire>()
    }
}

struct Entry {
    at: Instant,
    bytes: usize,
    applied: Arc<Applied>,
}

#[derive(Default)]
struct Window {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// How tags were invalidated (one configuration per process).
    tags: Option<TagLayout>,
}

pub struct Rewind {
    window: Duration,
    max_bytes: usize,
    inner: Mutex<Window>,
}

impl Rewind {
    pub fn new(window: Duration, max_bytes: usize) -> Rewind {
        Rewind {
            window,
            max_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Keeps `applied` if `still_current()` says no connection failed since the operation began
    /// (checked under the window's lock, so that a rewind never misses it); false otherwise. With
    /// the rewind off, keeps nothing and says true.
    pub fn record(
        &self,
        mut applied: Applied,
        tags: Option<&TagLayout>,
        still_current: impl FnOnce() -> bool,
    ) -> bool {
        if !self.enabled() {
            return true;
        }
        let now = Instant::now();
        for k in [
            &mut applied.keys,
            &mut applied.expire_keys,
            &mut applied.tags,
        ] {
            k.buf.shrink_to_fit();
            k.ends.shrink_to_fit();
        }
        let bytes = applied.bytes();
        let mut w = self.inner.lock().expect("rewind lock");
        if !still_current() {
            return false;
        }
        if applied.actions() == 0 {
            return true;
        }
        if let Some(layout) = tags
            && w.tags.as_ref() != Some(layout)
        {
            w.tags = Some(layout.clone());
        }
        w.bytes += bytes;
        w.entries.push_back(Entry {
            at: now,
            bytes,
            applied: Arc::new(applied),
        });
        let mut dropped = 0;
        while let Some(first) = w.entries.front() {
            let expired = now.duration_since(first.at) > self.window;
            if !expired && w.bytes <= self.max_bytes {
                break;
            }
            let e = w.entries.pop_front().expect("front exists");
            w.bytes -= e.bytes;
            if !expired {
                dropped += e.applied.actions();
            }
        }
        if dropped > 0 {
            telemetry::redis_rewind_dropped(dropped);
        }
        telemetry::redis_rewind_bytes(w.bytes);
        true
    }

    /// What the window holds now (within `failover_rewind`), shared, not copied.
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let w = self.inner.lock().expect("rewind lock");
        Snapshot {
            entries: w
                .entries
                .iter()
                .filter(|e| now.duration_since(e.at) <= self.window)
                .map(|e| e.applied.clone())
                .collect(),
            tags: w.tags.clone(),
        }
    }

    /// Bytes held now (the metric `invalidator_redis_rewind_bytes` shows them too).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().expect("rewind lock").bytes
    }
}

/// The window at the moment of a failover.
pub struct Snapshot {
    entries: Vec<Arc<Applied>>,
    /// How tags were invalidated.
    pub tags: Option<TagLayout>,
}

impl Snapshot {
    /// Plans of at most `size` actions each, of the keys `affects` accepts (a tag by its key),
    /// made as they are taken: the window is never copied whole.
    pub fn plans<'a>(
        &'a self,
        affects: impl Fn(&[u8]) -> bool + 'a,
        size: usize,
    ) -> impl Iterator<Item = Plan> + 'a {
        let layout = self.tags.as_ref();
        let mut items = self
            .entries
            .iter()
            .flat_map(move |a| {
                let keys = a.keys.iter().map(Item::Key);
                let expires = a
                    .expire_keys
                    .iter()
                    .zip(&a.expires)
                    .map(|(k, x)| Item::Expire(k, *x));
                let tags = a.tags.iter().map(Item::Tag);
                keys.chain(expires).chain(tags)
            })
            .filter(move |i| match i {
                Item::Key(k) | Item::Expire(k, _) => affects(k),
                Item::Tag(t) => match layout {
                    Some(l) => affects(l.key_of(&String::from_utf8_lossy(t)).as_bytes()),
                    None => affects(t),
                },
            });
        std::iter::from_fn(move || {
            let mut plan = Plan::default();
            for item in items.by_ref().take(size.max(1)) {
                match item {
                    Item::Key(k) => {
                        if !plan.deletes.contains(k) {
                            plan.deletes.insert(k.to_owned());
                        }
                    }
                    // Expires and tags were recorded from text: they are UTF-8.
                    Item::Expire(k, x) => {
                        plan.expires
                            .insert(String::from_utf8_lossy(k).into_owned(), x);
                    }
                    Item::Tag(t) => {
                        let t = String::from_utf8_lossy(t);
                        if !plan.tags.contains_key(t.as_ref()) {
                            plan.tags.insert(t.into_owned(), Vec::new());
                        }
                    }
                }
            }
            (!plan.is_empty()).then_some(plan)
        })
    }
}

enum Item<'a> {
    Key(&'a [u8]),
    Expire(&'a [u8], Expire),
    Tag(&'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything in one plan.
    fn all(r: &Rewind) -> Plan {
        r.snapshot()
            .plans(|_| true, usize::MAX)
            .next()
            .unwrap_or_default()
    }

    fn applied(keys: &[&str]) -> Applied {
        let mut a = Applied::new(true);
        a.keys(keys.iter().map(|k| k.as_bytes()));
        a
    }

    #[test]
    fn keys_round_trip() {
        let mut k = Keys::default();
        let keys: [&[u8]; 5] = [b"a", b"", b"ccc", "é".as_bytes(), b"\xff\x00{\xfe}"];
        k.extend(keys);
        assert_eq!(k.iter().collect::<Vec<_>>(), keys);
        assert_eq!(k.len(), 5);
    }

    #[test]
    fn a_moved_epoch_refuses_the_record() {
        let r = Rewind::new(Duration::from_secs(30), 1 << 20);
        assert!(!r.record(applied(&["k"]), None, || false));
        assert_eq!(all(&r).deletes.len(), 0);
        assert!(r.record(applied(&["k"]), None, || true));
        assert_eq!(all(&r).deletes.len(), 1);
    }

    #[test]
    fn the_byte_cap_drops_the_oldest() {
        let r = Rewind::new(Duration::from_secs(30), 10_000);
        for i in 0..1000 {
            let k = format!("key:{i:04}");
            assert!(r.record(applied(&[&k]), None, || true));
        }
        assert!(r.bytes() <= 10_000, "{}", r.bytes());
        let plan = all(&r);
        assert!(plan.deletes.len() < 1000);
        assert!(plan.deletes.contains(&b"key:0999"[..]));
        assert!(!plan.deletes.contains(&b"key:0000"[..]));
    }

    #[test]
    fn off_keeps_nothing() {
        let r = Rewind::new(Duration::ZERO, 1 << 20);
        assert!(r.record(applied(&["k"]), None, || false));
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn the_plan_filters_by_key_and_keeps_tags() {
        let r = Rewind::new(Duration::from_secs(30), 1 << 20);
        let mut a = applied(&["a:1", "b:1"]);
        a.tags(["t1"]);
        a.expire(
            "a:2",
            Expire {
                ttl: Duration::from_secs(5),
                jitter: 0.0,
            },
        );
        assert!(r.record(a, Some(&TagLayout::set("tag:")), || true));
        let snapshot = r.snapshot();
        let plans: Vec<Plan> = snapshot
            .plans(|k| k.starts_with(b"a:") || k == b"tag:t1", 1000)
            .collect();
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        assert_eq!(plan.deletes.iter().collect::<Vec<_>>(), [b"a:1"]);
        assert_eq!(plan.expires.len(), 1);
        assert_eq!(plan.tags.keys().collect::<Vec<_>>(), ["t1"]);
        assert_eq!(snapshot.tags, Some(TagLayout::set("tag:")));
    }

    #[test]
    fn plans_come_in_chunks() {
        let r = Rewind::new(Duration::from_secs(30), 1 << 20);
        for i in 0..25 {
            let k = format!("k:{i}");
            assert!(r.record(applied(&[&k]), None, || true));
        }
        let snapshot = r.snapshot();
        let sizes: Vec<usize> = snapshot
            .plans(|_| true, 10)
            .map(|p| p.deletes.len())
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
    }
}
