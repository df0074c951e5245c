//! The I/O half of a unit of work: what [`super::prepare`] made of the records, applied.
//!
//! `dedupe (Redis) → cascade sets read (Redis), the cascades that waited planned → coalesce →
//! Redis → CDN → remember ids → metrics → notices`. Every step may only turn an outcome into a
//! worse one (applied → duplicate or dead-lettered), never the reverse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::apply::notify::{self, Notice};
use crate::plan::Plan;
use crate::rules::RuleSet;
use crate::telemetry;

use super::in_flight::Held;
use super::prepare::Prepared;
use super::{Engine, EngineError, Outcome, UnitResult};

impl Engine {
    /// Applies a prepared unit. With `dry_run`, Redis is only read (dedupe, set members), nothing
    /// is written and nothing is purged.
    pub async fn apply(
        &self,
        unit: Vec<Prepared>,
        dry_run: bool,
    ) -> Result<UnitResult, EngineError> {
        let slot = self.slot().await;
        self.apply_in(slot, unit, dry_run).await
    }

    /// [`Engine::apply`] in a slot already taken.
    pub(super) async fn apply_in(
        &self,
        slot: tokio::sync::SemaphorePermit<'_>,
        mut unit: Vec<Prepared>,
        dry_run: bool,
    ) -> Result<UnitResult, EngineError> {
        let _held = self.dedupe(&mut unit, dry_run).await?;
        self.read_cascade_sets(&mut unit).await?;
        let mut result = UnitResult {
            plan: coalesce(&unit),
            ..UnitResult::default()
        };
        if !dry_run {
            self.write(&mut unit, &mut result, slot).await?;
        }
        result.items = unit.into_iter().map(super::Item::from).collect();
        Ok(result)
    }

    /// Redis, then the CDN, then the ids remembered, the metrics and the notices.
    async fn write(
        &self,
        unit: &mut [Prepared],
        result: &mut UnitResult,
        slot: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<(), EngineError> {
        let layout = self.config.tags.layout();
        result.redis = self.redis.apply(&result.plan, layout).await?;
        for (tag, error) in &result.redis.tag_failures {
            for &o in &result.plan.tags[tag] {
                unit[o as usize].outcome =
                    Outcome::dead("redis_wrongtype", format!("tag `{tag}`: {error}"));
            }
        }
        // Many units may wait for a CloudFront window; only a few hold plans being applied.
        drop(slot);
        result.cdn = self.cdn.purge(&result.plan.purges).await?;
        for r in &result.cdn.rejected {
            for &o in &r.origins {
                unit[o as usize].outcome = Outcome::dead(
                    "cdn_rejected",
                    format!("{} {}: {}", r.target, r.path, r.error),
                );
            }
        }
        self.remember(unit).await?;
        self.record_metrics(unit, result);
        if self.notify.enabled() {
            let at = notify::now_rfc3339();
            let notices: Vec<Notice> = unit
                .iter()
                .filter(|p| p.outcome == Outcome::Applied)
                .filter_map(|p| Some(Notice::new(p.event.as_ref()?, p.plan.as_ref()?, &at)))
                .collect();
            result.notices = self.notify.publish(&notices).await;
        }
        Ok(())
    }

    /// Marks as duplicates the events whose id was applied within the window, by an earlier copy in
    /// this unit, or by a unit in flight: an id held by a unit in flight is waited for (a dry run,
    /// which has nothing to wait for, takes it for a duplicate), and the copy is a duplicate only if
    /// that unit remembered it. A copy after one that is not applied (dead-lettered, skipped) is
    /// planned on its own, as it would be in a unit of its own.
    async fn dedupe(
        &self,
        unit: &mut [Prepared],
        dry_run: bool,
    ) -> Result<Option<Held<'_>>, EngineError> {
        if self.config.dedupe.window.is_none() {
            return Ok(None);
        }
        let mut ids: Vec<Arc<str>> = Vec::new();
        // Every copy not yet a duplicate, with the place of its id in `ids`.
        let mut copies: Vec<(usize, usize)> = Vec::new();
        let mut places = HashMap::new();
        let mut applied = HashSet::new();
        for (i, p) in unit.iter_mut().enumerate() {
            let Some(e) = p.event.as_ref().filter(|e| e.id_given) else {
                continue;
            };
            if applied.contains(&*e.id) {
                p.outcome = Outcome::Duplicate;
                continue;
            }
            let place = *places.entry(&*e.id).or_insert_with(|| {
                ids.push(e.id.clone());
                ids.len() - 1
            });
            copies.push((i, place));
            if p.outcome == Outcome::Applied {
                applied.insert(&*e.id);
            }
        }
        let held = if dry_run {
            let (held, busy) = self.in_flight_ids.take_free(ids.clone());
            mark_duplicates(unit, &copies, &busy);
            held
        } else {
            self.in_flight_ids.take(ids.clone()).await
        };
        let ask: Vec<&str> = ids.iter().map(|id| &**id).collect();
        let seen = self.redis.seen(&self.config.dedupe.prefix, &ask).await?;
        mark_duplicates(unit, &copies, &seen);
        Ok(Some(held))
    }

    /// Reads the sets of `for_each_member_of` cascades (one pipelined round per cascade level)
    /// and plans the cascades that waited for them.
    async fn read_cascade_sets(&self, unit: &mut [Prepared]) -> Result<(), EngineError> {
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        // A set that cannot be walked: the reason its events are dead-lettered with, and why.
        let mut failed: HashMap<String, (&'static str, String)> = HashMap::new();
        let rounds = self.rules.limits.max_cascade_depth as usize + 1;
        for round in 0..=rounds {
            let mut needs: Vec<String> = Vec::new();
            let mut waiting = false;
            for p in unit.iter_mut().filter(|p| p.outcome != Outcome::Duplicate) {
                let Some(plan) = &p.plan else { continue };
                if let Some(set) = plan.needs.iter().find(|s| failed.contains_key(*s)) {
                    let (reason, error) = &failed[set];
                    p.outcome = Outcome::dead(reason, error.clone());
                    p.plan = None;
                } else if !plan.needs.is_empty() && round < rounds {
                    needs.extend(plan.needs.iter().cloned());
                    waiting = true;
                }
            }
            if !waiting {
                return Ok(());
            }
            needs.sort();
            needs.dedup();
            let limit = self.rules.limits.max_fanout;
            for (set, result) in self.redis.members(&needs, limit).await? {
                match result
                    .map_err(|e| ("redis_wrongtype", e))
                    .and_then(|m| texts(&set, m))
                {
                    Ok(m) => {
                        members.insert(set, m);
                    }
                    Err(e) => {
                        failed.insert(set, e);
                    }
                }
            }
            for p in unit.iter_mut().filter(|p| p.outcome != Outcome::Duplicate) {
                if p.plan.as_ref().is_some_and(|plan| !plan.needs.is_empty()) {
                    p.resume(&self.rules, &self.config.limits, &members);
                }
            }
        }
        Ok(())
    }

    async fn remember(&self, unit: &[Prepared]) -> Result<(), EngineError> {
        let Some(window) = self.config.dedupe.window else {
            return Ok(());
        };
        let ids: Vec<&str> = unit
            .iter()
            .filter(|p| p.outcome == Outcome::Applied)
            .filter_map(|p| p.event.as_ref().filter(|e| e.id_given))
            .map(|e| &*e.id)
            .collect();
        if !ids.is_empty() {
            let prefix = &self.config.dedupe.prefix;
            self.redis.remember(prefix, &ids, window).await?;
        }
        Ok(())
    }

    fn record_metrics(&self, unit: &[Prepared], result: &UnitResult) {
        let now = OffsetDateTime::now_utc();
        let ages = telemetry::event_ages();
        let mut counts = EventCounts::default();
        for p in unit {
            counts.add(&self.rules, p.event.as_ref().map(|e| &*e.kind), &p.outcome);
            if let Outcome::DeadLettered { reason, .. } = &p.outcome {
                telemetry::dead_lettered(reason);
            }
            if p.outcome != Outcome::Duplicate
                && let Some(plan) = &p.plan
            {
                for _ in &plan.notes {
                    telemetry::cascade_ended();
                }
            }
            if p.outcome == Outcome::Applied
                && let Some(t) = p.event.as_ref().and_then(|e| e.time)
                && let Ok(age) = std::time::Duration::try_from(now - t)
            {
                ages.record(age.as_secs_f64());
            }
        }
        counts.record(&self.rules);
        let p = &result.plan;
        telemetry::actions("delete", p.deletes.len() as u64);
        telemetry::actions("delete_pattern", p.patterns.len() as u64);
        telemetry::actions("tag", p.tags.len() as u64);
        telemetry::actions("expire", p.expires.len() as u64);
        telemetry::actions("purge", p.purges.values().map(|v| v.len() as u64).sum());
        telemetry::keys_removed(result.redis.keys_removed);
        for (target, paths) in &p.purges {
            telemetry::cdn_paths(target, paths.len() as u64);
        }
    }
}

/// A unit's `invalidator_events_total` increments, one per event type and outcome rather than
/// one per event: each increment looks the series up with a copy of its labels, which was 5% of
/// the worker's CPU. At most [`EventCounts::MAX`] pairs are gathered (a unit of many event types
/// records the others one by one), so gathering stays a short scan.
#[derive(Default)]
struct EventCounts<'a> {
    /// Event type (`None`: the payload did not decode), outcome, events.
    counts: Vec<(Option<&'a str>, &'static str, u64)>,
}

impl<'a> EventCounts<'a> {
    const MAX: usize = 16;

    fn add(&mut self, rules: &RuleSet, kind: Option<&'a str>, outcome: &Outcome) {
        let outcome = outcome.label();
        if let Some(c) = self
            .counts
            .iter_mut()
            .find(|c| c.0 == kind && c.1 == outcome)
        {
            c.2 += 1;
        } else if self.counts.len() < Self::MAX {
            self.counts.push((kind, outcome, 1));
        } else {
            telemetry::events(&label(rules, kind), outcome, 1);
        }
    }

    fn record(self, rules: &RuleSet) {
        for (kind, outcome, n) in self.counts {
            telemetry::events(&label(rules, kind), outcome, n);
        }
    }
}

/// The metric label of an event type ([`RuleSet::metric_label`]); `other` for an undecoded event.
fn label<'a>(rules: &RuleSet, kind: Option<&'a str>) -> std::borrow::Cow<'a, str> {
    kind.map_or("other".into(), |k| rules.metric_label(k))
}

/// The members of `set` as text: `{item}` becomes event data (JSON), which cannot hold other
/// bytes, so a member that is not UTF-8 is refused as an unsafe value rather than altered.
fn texts(set: &str, members: Vec<Vec<u8>>) -> Result<Vec<String>, (&'static str, String)> {
    members
        .into_iter()
        .map(|m| {
            String::from_utf8(m).map_err(|e| {
                let m = e.as_bytes();
                let shown = crate::plan::key_text(&m[..m.len().min(200)]);
                let more = if m.len() > 200 { "…" } else { "" };
                let error =
                    format!("set `{set}` holds a member that is not UTF-8: `{shown}{more}`");
                ("unsafe_value", error)
            })
        })
        .collect()
}

/// The actions of every event to apply, coalesced; each action remembers the events it came from.
fn coalesce(unit: &[Prepared]) -> Plan {
    let mut plan = Plan::default();
    for (i, p) in unit.iter().enumerate() {
        if p.outcome == Outcome::Applied
            && let Some(event_plan) = &p.plan
        {
            event_plan.add_to(&mut plan, i as u32);
        }
    }
    plan
}

/// Marks the copies (unit index, place of the id) whose id is flagged as duplicates.
fn mark_duplicates(unit: &mut [Prepared], copies: &[(usize, usize)], flagged: &[bool]) {
    for &(i, place) in copies {
        if flagged[place] {
            unit[i].outcome = Outcome::Duplicate;
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::rules::CompileOptions;

    /// Gathered per type and outcome, or one by one past the cap, the counter totals are those of
    /// one increment per event.
    #[test]
    fn event_counts_add_up_to_one_increment_per_event() {
        let yaml: String = (0..20)
            .map(|i| format!("  - name: r{i}\n    on: t{i}\n    delete: [\"k:{{id}}\"]\n"))
            .collect();
        let rules = RuleSet::from_sources(
            &[("r.yaml".into(), format!("rules:\n{yaml}"))],
            &CompileOptions::default(),
        )
        .unwrap();
        let kinds: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut counts = EventCounts::default();
            for n in 0..200usize {
                let kind = (n % 7 != 0).then(|| kinds[n % 20].as_str());
                let outcome = if n % 3 == 0 {
                    Outcome::Skipped
                } else {
                    Outcome::Applied
                };
                counts.add(&rules, kind, &outcome);
            }
            assert_eq!(counts.counts.len(), EventCounts::MAX, "the cap was reached");
            counts.record(&rules);
        });
        let text = handle.render();
        let total = |kind: &str, outcome: &str| -> u64 {
            let series =
                format!("invalidator_events_total{{type=\"{kind}\",outcome=\"{outcome}\"}} ");
            text.lines()
                .filter_map(|l| l.strip_prefix(&series))
                .map(|v| v.parse::<u64>().unwrap())
                .sum()
        };
        for k in 0..20 {
            for (outcome, skipped) in [("applied", false), ("skipped", true)] {
                let expected = (0..200usize)
                    .filter(|n| n % 7 != 0 && n % 20 == k && (n % 3 == 0) == skipped)
                    .count() as u64;
                assert_eq!(total(&format!("t{k}"), outcome), expected, "t{k} {outcome}");
            }
        }
        let other = (0..200usize).filter(|n| n % 7 == 0).count() as u64;
        assert_eq!(total("other", "applied") + total("other", "skipped"), other);
    }
}
