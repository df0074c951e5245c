//! The plan of a unit of work: one coalesced, deduplicated set of actions for many events.
//!
//! Pure data. Building it does no I/O; `apply/` turns it into effects, `explain` and `--dry-run` print
//! it. Coalescing is what turns a flash sale of 10,000 price events for one product into one delete
//! per key and one CDN path. Tags and purges remember which events asked for them, so that a per-tag
//! or per-path failure dead-letters exactly those events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::{IndexMap, IndexSet};
use serde::Serialize;

mod redelete;
pub use redelete::{Redelete, Redeletes};

/// One rendered action of one rule for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `UNLINK key`.
    Delete { key: String },
    /// `SCAN MATCH pattern` + `UNLINK` on every primary. The pattern is glob-escaped but its final `*`.
    DeletePattern { pattern: String },
    /// Invalidate everything tagged `tag` (set mode: `SSCAN`+`UNLINK`+`SREM`; version mode: `INCR`).
    Tag { tag: String },
    /// `PEXPIRE key ttl LT`: shortens the TTL, never lengthens it.
    Expire {
        key: String,
        #[serde(with = "humantime_serde_compat")]
        ttl: Duration,
        /// Fraction of `ttl` (0..1) taken off at random at apply time.
        jitter: f64,
    },
    /// A CDN invalidation of `path` on `target`.
    Purge { target: String, path: String },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Delete { .. } => "delete",
            Action::DeletePattern { .. } => "delete_pattern",
            Action::Tag { .. } => "tag",
            Action::Expire { .. } => "expire",
            Action::Purge { .. } => "purge",
        }
    }
}

/// Durations serialize as human text ("500ms") in `--json` output.
mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A TTL to set; coalescing keeps the shortest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Expire {
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    pub jitter: f64,
}

/// The hasher of a plan's sets and maps. Their keys come from events, yet foldhash (seeded at
/// random per process and per map) serves where SipHash cost 3.6% of a plain event's instructions
/// (410 of them): a plan lives for one unit, holds at most the unit's actions, and is only ever
/// iterated in insertion order, so no hash order is ever seen outside to be learned from.
pub type PlanHasher = foldhash::fast::RandomState;
/// A map of a plan (insertion order, [`PlanHasher`]).
pub type PlanMap<K, V> = IndexMap<K, V, PlanHasher>;
/// A set of a plan (insertion order, [`PlanHasher`]).
pub type PlanSet<K> = IndexSet<K, PlanHasher>;

/// Index of an event inside its unit of work.
pub type Origin = u32;

/// The coalesced actions of a unit of work.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Keys are bytes: a rewind after a failover deletes again what a tag set or a `SCAN` held.
    #[serde(serialize_with = "keys_as_text")]
    pub deletes: PlanSet<Vec<u8>>,
    pub patterns: PlanSet<String>,
    pub tags: PlanMap<String, Vec<Origin>>,
    pub expires: PlanMap<String, Expire>,
    /// target → path → events.
    pub purges: PlanMap<String, PlanMap<String, Vec<Origin>>>,
    /// delay → what to delete again then.
    pub redeletes: BTreeMap<DurationKey, Redelete>,
}

/// A key as text for logs, DLQ records and `explain`: printable UTF-8 as it is, any other byte
/// (a control character such as the NUL in Symfony's tag keys, or a byte that is not UTF-8) as
/// `\xNN`.
pub fn key_text(key: &[u8]) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| !c.is_control();
    if let Ok(s) = std::str::from_utf8(key)
        && s.chars().all(plain)
    {
        return s.into();
    }
    let mut out = String::with_capacity(key.len() + 8);
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            if plain(c) {
                out.push(c);
            } else {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.into()
}

fn keys_as_text<S: serde::Serializer>(keys: &PlanSet<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| key_text(k)))
}

/// A `Duration` usable as an ordered, serializable map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationKey(pub Duration);

impl Serialize for DurationKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl Plan {
    /// Adds one action requested by event `origin`.
    pub fn add(&mut self, origin: Origin, action: &Action) {
        match action {
            Action::Delete { key } => {
                if !self.deletes.contains(key.as_bytes()) {
                    self.deletes.insert(key.clone().into_bytes());
                }
            }
            Action::DeletePattern { pattern } => {
                if !self.patterns.contains(pattern) {
                    self.patterns.insert(pattern.clone());
                }
            }
            // Looked up before inserting: a flash sale repeats the same tag, TTL and path many
            // times, and only a new one is copied into the plan.
            Action::Tag { tag } => match self.tags.get_mut(tag.as_str()) {
                Some(origins) => push_origin(origins, origin),
                None => {
                    self.tags.insert(tag.clone(), vec![origin]);
                }
            },
            Action::Expire { key, ttl, jitter } => {
                let new = Expire {
                    ttl: *ttl,
                    jitter: *jitter,
                };
                match self.expires.get_mut(key.as_str()) {
                    Some(e) if *ttl < e.ttl => *e = new,
                    Some(_) => {}
                    None => {
                        self.expires.insert(key.clone(), new);
                    }
                }
            }
            Action::Purge { target, path } => {
                let t = match self.purges.get_index_of(target.as_str()) {
                    Some(t) => t,
                    None => {
                        self.purges
                            .insert_full(target.clone(), PlanMap::default())
                            .0
                    }
                };
                let paths = &mut self.purges[t];
                match paths.get_mut(path.as_str()) {
                    Some(origins) => push_origin(origins, origin),
                    None => {
                        paths.insert(path.clone(), vec![origin]);
                    }
                }
            }
        }
    }

    /// Schedules the deletes and tags of `actions`, asked for by `rule`, again after `after`.
    pub fn add_redelete(&mut self, after: Duration, rule: &'static str, actions: &[Action]) {
        let r = self.redeletes.entry(DurationKey(after)).or_default();
        for a in actions {
            match a {
                Action::Delete { key } if !r.keys.contains_key(key) => {
                    r.keys.insert(key.clone(), rule);
                }
                Action::Tag { tag } if !r.tags.contains_key(tag) => {
                    r.tags.insert(tag.clone(), rule);
                }
                _ => {}
            }
        }
        if r.is_empty() {
            self.redeletes.remove(&DurationKey(after));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty()
            && self.patterns.is_empty()
            && self.tags.is_empty()
            && self.expires.is_empty()
            && self.purges.is_empty()
            && self.redeletes.is_empty()
    }

    /// Number of distinct actions, for logs and metrics.
    pub fn len(&self) -> usize {
        self.deletes.len()
            + self.patterns.len()
            + self.tags.len()
            + self.expires.len()
            + self.purges.values().map(PlanMap::len).sum::<usize>()
    }
}

fn push_origin(v: &mut Vec<Origin>, origin: Origin) {
    if v.last() != Some(&origin) {
        v.push(origin);
    }
}

/// What one rule did for one event (explain output, and the unit of coalescing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleHit {
    pub rule: &'static str,
    /// `file:line:column` of the rule.
    pub at: &'static str,
    pub event_id: Arc<str>,
    pub event_type: Arc<str>,
    /// 0 for the event itself, 1.. for cascaded events.
    pub depth: u32,
    /// False when the rule's `when` condition was false (then `actions` is empty).
    pub condition: bool,
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub redelete_after: Option<Duration>,
}

mod opt_duration {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

/// Everything the rules say about one event, cascades included.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventPlan {
    pub hits: Vec<RuleHit>,
    /// Redis sets whose members are needed (`for_each_member_of`) and were not known yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Cascades ended by the depth limit or a cycle (the event is still applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The `for_each_member_of` cascades waiting for `needs`, where their events go in the plan
    /// (`RuleSet::resume` plans them once the sets are read, nothing else again).
    #[serde(skip)]
    pub(crate) pending: Vec<Pending>,
}

/// A `for_each_member_of` cascade whose sets were not read yet, and where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    /// The cascaded events from the planned event (excluded) down to the one whose rule cascades
    /// (included): the chain its children are checked against for cycles.
    pub chain: Vec<crate::event::Event>,
    /// The depth of the last event of `chain` (0: the planned event).
    pub depth: u32,
    /// The rule (its index in the rule set) and its cascade.
    pub rule: usize,
    pub cascade: usize,
    /// The sets the cascade walks.
    pub sets: Vec<String>,
    /// Where the cascade's events go: the lengths of `hits` and `notes` when it stopped.
    pub at_hit: usize,
    pub at_note: usize,
}

impl EventPlan {
    /// True when at least one rule applies (its condition held).
    pub fn matched(&self) -> bool {
        self.hits.iter().any(|h| h.condition)
    }

    /// Adds this event's actions to `plan` as event `origin`.
    pub fn add_to(&self, plan: &mut Plan, origin: Origin) {
        for hit in self.hits.iter().filter(|h| h.condition) {
            for action in &hit.actions {
                plan.add(origin, action);
            }
            if let Some(after) = hit.redelete_after {
                plan.add_redelete(after, hit.rule, &hit.actions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_escapes_what_is_not_printable() {
        assert_eq!(key_text(b"price:1"), "price:1");
        assert_eq!(key_text("prix:é".as_bytes()), "prix:é");
        assert_eq!(key_text(b"shop:\0tags\0x"), "shop:\\x00tags\\x00x");
        assert_eq!(key_text(b"a\xffb\n\x7f"), "a\\xffb\\x0a\\x7f");
        assert_eq!(key_text("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn coalesces_identical_actions_and_keeps_shortest_ttl() {
        let mut plan = Plan::default();
        for origin in 0..10_000 {
            plan.add(
                origin,
                &Action::Delete {
                    key: "price:1".into(),
                },
            );
            plan.add(
                origin,
                &Action::Tag {
                    tag: "product:1".into(),
                },
            );
            plan.add(
                origin,
                &Action::Purge {
                    target: "cdn".into(),
                    path: "/p/1".into(),
                },
            );
        }
        plan.add(
            0,
            &Action::Expire {
                key: "r".into(),
                ttl: Duration::from_secs(30),
                jitter: 0.0,
            },
        );
        plan.add(
            1,
            &Action::Expire {
                key: "r".into(),
                ttl: Duration::from_secs(10),
                jitter: 0.2,
            },
        );
        plan.add(
            2,
            &Action::Expire {
                key: "r".into(),
                ttl: Duration::from_secs(60),
                jitter: 0.0,
            },
        );
        assert_eq!(plan.deletes.len(), 1);
        assert_eq!(plan.tags["product:1"].len(), 10_000);
        assert_eq!(plan.purges["cdn"].len(), 1);
        assert_eq!(
            plan.expires["r"],
            Expire {
                ttl: Duration::from_secs(10),
                jitter: 0.2
            }
        );
        assert_eq!(plan.len(), 4);
    }

    #[test]
    fn redelete_keeps_only_keys_and_tags() {
        let mut plan = Plan::default();
        let rule = "r";
        plan.add_redelete(
            Duration::from_millis(500),
            rule,
            &[
                Action::Delete { key: "k".into() },
                Action::DeletePattern {
                    pattern: "abc*".into(),
                },
                Action::Tag { tag: "t".into() },
            ],
        );
        plan.add_redelete(
            Duration::from_secs(1),
            rule,
            &[Action::Purge {
                target: "c".into(),
                path: "/".into(),
            }],
        );
        assert_eq!(plan.redeletes.len(), 1);
        let r = &plan.redeletes[&DurationKey(Duration::from_millis(500))];
        assert_eq!(r.len(), 2);
    }
}
