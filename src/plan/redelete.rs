//! Keys and tags deleted once more after a delay (`redelete_after`): what one plan asks for
//! ([`Redelete`]) and what waits for its time across units ([`Redeletes`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde::Serialize;

use super::DurationKey;

/// Keys and tags to delete once more after a delay (`redelete_after`), each with the rule that
/// asked for it first (what the redelete finds is counted under that rule).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Redelete {
    #[serde(serialize_with = "names_only")]
    pub keys: IndexMap<String, &'static str>,
    #[serde(serialize_with = "names_only")]
    pub tags: IndexMap<String, &'static str>,
}

/// `explain` shows the keys and tags of a redelete as a list; the rule is the hit's own.
fn names_only<S: serde::Serializer>(
    m: &IndexMap<String, &'static str>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.keys())
}

impl Redelete {
    /// Adds what `other` holds that this does not (a key keeps its first rule); how many keys
    /// and tags were added.
    pub fn absorb(&mut self, other: Redelete) -> usize {
        let before = self.len();
        for (k, rule) in other.keys {
            self.keys.entry(k).or_insert(rule);
        }
        for (t, rule) in other.tags {
            self.tags.entry(t).or_insert(rule);
        }
        self.len() - before
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len()
    }
}

/// Redeletes waiting for their time, bounded in size.
#[derive(Default)]
pub struct Redeletes {
    due: BTreeMap<Instant, Redelete>,
    /// Keys and tags waiting.
    pub pending: usize,
}

impl Redeletes {
    pub fn schedule(&mut self, now: Instant, redeletes: &BTreeMap<DurationKey, Redelete>) {
        for (after, r) in redeletes {
            let slot = self.due.entry(now + after.0).or_default();
            self.pending += slot.absorb(r.clone());
        }
    }

    /// Everything due by `now`, merged.
    pub fn take_due(&mut self, now: Instant) -> Option<Redelete> {
        let later = self.due.split_off(&(now + Duration::from_nanos(1)));
        let due = std::mem::replace(&mut self.due, later);
        if due.is_empty() {
            return None;
        }
        let mut merged = Redelete::default();
        for r in due.into_values() {
            self.pending -= r.len();
            merged.absorb(r);
        }
        Some(merged)
    }

    /// Puts back a redelete that failed, to try again at `at`.
    pub fn retry_at(&mut self, at: Instant, r: Redelete) {
        self.pending += self.due.entry(at).or_default().absorb(r);
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Plan};

    #[test]
    fn redeletes_keep_the_first_rule_and_count_what_waits() {
        let (a, b) = ("a", "b");
        let key = |k: &str| Action::Delete { key: k.into() };
        let mut plan = Plan::default();
        let after = Duration::from_millis(100);
        plan.add_redelete(after, a, &[key("k1"), key("k2")]);
        plan.add_redelete(after, b, &[key("k2"), key("k3")]);
        let r = &plan.redeletes[&DurationKey(after)];
        let rules: Vec<(&str, &str)> = r.keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(rules, [("k1", "a"), ("k2", "a"), ("k3", "b")]);

        let mut waiting = Redeletes::default();
        let now = Instant::now();
        waiting.schedule(now, &plan.redeletes);
        // The same keys again at the same time wait once.
        waiting.schedule(now, &plan.redeletes);
        assert_eq!(waiting.pending, 3);
        let due = waiting.take_due(now + after).unwrap();
        assert_eq!(waiting.pending, 0);
        waiting.retry_at(now, due.clone());
        waiting.retry_at(now, due);
        assert_eq!(waiting.pending, 3);
    }
}
