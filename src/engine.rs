//! The unit of work shared by every mode: records in, one outcome per record out.
//!
//! `decode → dedupe → plan (with set lookups) → coalesce → Redis → CDN → remember ids → notices`.
//!
//! Invariants:
//! - every input ends in exactly one [`Outcome`]: applied, skipped, duplicate or dead-lettered;
//! - a per-event permanent error dead-letters that event only, with a stable reason code;
//! - an outage (Redis or CDN unreachable after retries) fails the whole unit with
//!   [`EngineError::Unavailable`] and nothing in it is reported as done: the caller must not
//!   acknowledge any of its records;
//! - Redis is invalidated before the CDN, so a CDN refetch never finds a stale Redis copy;
//! - a unit resolves only when its CDN paths were accepted: on a CloudFront target that is when
//!   the batch window holding them was sent and accepted, so several units in flight share one
//!   `CreateInvalidation`;
//! - memory: at most 2 × cores units are decoded, planned and applied to Redis at once (others
//!   wait with their raw records only); a unit gives its slot back before it waits on the CDN;
//! - completion notices (`[notify]`) go out after all that, for applied events only, and never
//!   fail the unit (see [`crate::apply::notify`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::apply::cdn::{CdnError, CdnTargets, PurgeReport};
use crate::apply::notify::{self, Notice, NoticeReport, Notifier};
use crate::apply::redis::{ApplyReport, Redis, RedisError};
use crate::config::Config;
use crate::event::{DecodeError, Event, Expanded, Record, decode_event, decode_value};
use crate::plan::{EventPlan, Plan, Redelete};
use crate::rules::{NoMembers, RuleSet};
use crate::telemetry;

/// What became of one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// No rule matched, or every matching rule's condition was false.
    Skipped,
    /// Its id was seen within the dedupe window (or earlier in the same unit).
    Duplicate,
    DeadLettered {
        reason: &'static str,
        error: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered { .. } => "dead_lettered",
        }
    }

    fn dead(reason: &'static str, error: impl Into<String>) -> Self {
        Outcome::DeadLettered {
            reason,
            error: error.into(),
        }
    }
}

/// One input and what became of it.
#[derive(Debug)]
pub struct Item {
    pub record: Record,
    /// Id and type, when the payload decoded.
    pub event: Option<(String, String)>,
    pub outcome: Outcome,
}

/// The result of a unit of work.
#[derive(Debug, Default)]
pub struct UnitResult {
    pub items: Vec<Item>,
    /// The coalesced plan (applied, or only shown in a dry run).
    pub plan: Plan,
    pub redis: ApplyReport,
    pub cdn: PurgeReport,
    pub notices: NoticeReport,
    /// Per-event plans, kept only when asked for (`--dry-run` output).
    pub event_plans: Vec<Option<EventPlan>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Cdn(#[from] CdnError),
}

/// Shared state: compiled rules, clients, settings, built once at start; and the event ids of the
/// units in flight.
pub struct Engine {
    pub rules: Arc<RuleSet>,
    pub redis: Redis,
    pub cdn: CdnTargets,
    pub notify: Notifier,
    pub config: Config,
    /// Ids held by units in flight (dedupe between units applied at the same time, before either
    /// has remembered its ids in Redis).
    in_flight_ids: Mutex<HashSet<String>>,
    /// Units being decoded, planned and applied to Redis at once. A unit gives its slot back
    /// before it waits for its CDN batch, so many units can wait for a CloudFront window while
    /// only a few hold decoded events and plans in memory.
    slots: tokio::sync::Semaphore,
}

/// Slots of [`Engine::slots`]: enough to keep every core busy while others wait on Redis.
fn apply_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// The ids a unit holds in [`Engine::in_flight_ids`]; released when the unit ends, however it ends.
struct Held<'a> {
    ids: Vec<String>,
    set: &'a Mutex<HashSet<String>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().expect("in-flight ids lock");
        for id in &self.ids {
            set.remove(id);
        }
    }
}

impl Engine {
    /// An engine without completion notices (see [`Engine::build`] for one made from the whole
    /// configuration).
    pub fn new(rules: Arc<RuleSet>, redis: Redis, cdn: CdnTargets, config: Config) -> Engine {
        Engine {
            rules,
            redis,
            cdn,
            notify: Notifier::disabled(),
            config,
            in_flight_ids: Mutex::default(),
            slots: tokio::sync::Semaphore::new(apply_slots()),
        }
    }

    /// Builds the CDN targets and the notifier of `config` (loading the AWS configuration from
    /// the standard chain when a CloudFront target or an SNS topic needs it) around `rules` and
    /// `redis`. A configuration error names the key.
    pub async fn build(config: Config, rules: RuleSet, redis: Redis) -> Result<Engine, String> {
        let aws = if config.needs_aws() {
            Some(crate::apply::aws::load().await)
        } else {
            None
        };
        Engine::build_with(config, rules, redis, aws.as_ref())
    }

    /// [`Engine::build`] with a given AWS configuration (emulators, tests).
    pub fn build_with(
        config: Config,
        rules: RuleSet,
        redis: Redis,
        aws: Option<&aws_config::SdkConfig>,
    ) -> Result<Engine, String> {
        let cdn = CdnTargets::from_config(&config.cdn, aws)?;
        let notify = Notifier::from_config(&config, aws)?;
        let mut engine = Engine::new(Arc::new(rules), redis, cdn, config);
        engine.notify = notify;
        Ok(engine)
    }

    /// Processes one unit. With `dry_run`, Redis is only read (dedupe, set members), nothing is
    /// written and nothing is purged.
    pub async fn process(
        &self,
        inputs: Vec<Expanded>,
        dry_run: bool,
        keep_plans: bool,
    ) -> Result<UnitResult, EngineError> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the slots are never closed");
        let max = self.config.limits.max_event_bytes;
        let mut items = Vec::with_capacity(inputs.len());
        let mut events: Vec<Option<Event>> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (record, decoded) = match input {
                Expanded::Parsed { value, record } => {
                    let fallback = || record.position.fallback_id();
                    let d = decode_value(value, max, &fallback);
                    (record, d)
                }
                Expanded::Raw(record) => {
                    let fallback = || record.position.fallback_id();
                    let d = decode_event(&record.payload, max, &fallback);
                    (record, d)
                }
                Expanded::Failed { record, error } => (record, Err(error)),
            };
            match decoded {
                Ok(e) => {
                    items.push(Item {
                        record,
                        event: Some((e.id.clone(), e.kind.clone())),
                        outcome: Outcome::Skipped,
                    });
                    events.push(Some(e));
                }
                Err(e) => {
                    items.push(Item {
                        record,
                        event: None,
                        outcome: decode_outcome(&e),
                    });
                    events.push(None);
                }
            }
        }

        let _held = self.dedupe(&mut items, &mut events).await?;
        let plans = self.plan(&mut items, &events).await?;

        let mut plan = Plan::default();
        for (i, p) in plans.iter().enumerate() {
            let Some(p) = p else { continue };
            if !matches!(items[i].outcome, Outcome::Skipped) {
                continue;
            }
            if p.matched() {
                p.add_to(&mut plan, i as u32);
                items[i].outcome = Outcome::Applied;
            } else if self.config.limits.dead_letter_unmatched && p.hits.is_empty() {
                items[i].outcome = Outcome::dead("no_rule", "no rule matches this event type");
            }
            for _ in &p.notes {
                telemetry::cascade_ended();
            }
        }

        let mut result = UnitResult {
            plan,
            ..UnitResult::default()
        };
        if !dry_run {
            result.redis = self
                .redis
                .apply(
                    &result.plan,
                    self.config.tags.mode,
                    &self.config.tags.prefix,
                )
                .await?;
            for (tag, error) in &result.redis.tag_failures {
                for &o in &result.plan.tags[tag] {
                    items[o as usize].outcome =
                        Outcome::dead("redis_wrongtype", format!("tag `{tag}`: {error}"));
                }
            }
            drop(slot);
            result.cdn = self.cdn.purge(&result.plan.purges).await?;
            for r in &result.cdn.rejected {
                for &o in &r.origins {
                    items[o as usize].outcome = Outcome::dead(
                        "cdn_rejected",
                        format!("{} {}: {}", r.target, r.path, r.error),
                    );
                }
            }
            self.remember(&items, &events).await?;
            self.record_metrics(&items, &events, &result);
            if self.notify.enabled() {
                let at = notify::now_rfc3339();
                let notices: Vec<Notice> = items
                    .iter()
                    .zip(&events)
                    .zip(&plans)
                    .filter(|((item, _), _)| item.outcome == Outcome::Applied)
                    .filter_map(|((_, e), p)| Some(Notice::new(e.as_ref()?, p.as_ref()?, &at)))
                    .collect();
                result.notices = self.notify.publish(&notices).await;
            }
        }
        if keep_plans {
            result.event_plans = plans;
        }
        result.items = items;
        Ok(result)
    }

    /// Marks events whose id was seen within the window, earlier in this unit, or in a unit in
    /// flight as duplicates; the ids of the others are held until this unit ends.
    async fn dedupe(
        &self,
        items: &mut [Item],
        events: &mut [Option<Event>],
    ) -> Result<Option<Held<'_>>, EngineError> {
        let Some(_) = self.config.dedupe.window else {
            return Ok(None);
        };
        let mut held = Held {
            ids: Vec::new(),
            set: &self.in_flight_ids,
        };
        let mut candidates: Vec<usize> = Vec::new();
        {
            let mut in_flight = self.in_flight_ids.lock().expect("in-flight ids lock");
            for (i, e) in events.iter().enumerate() {
                let Some(e) = e else { continue };
                if !e.id_given {
                    continue;
                }
                if in_flight.insert(e.id.clone()) {
                    held.ids.push(e.id.clone());
                    candidates.push(i);
                } else {
                    items[i].outcome = Outcome::Duplicate;
                }
            }
        }
        let ids: Vec<&str> = candidates
            .iter()
            .map(|&i| events[i].as_ref().map_or("", |e| e.id.as_str()))
            .collect();
        let seen = self.redis.seen(&self.config.dedupe.prefix, &ids).await?;
        for (&i, seen) in candidates.iter().zip(seen) {
            if seen {
                items[i].outcome = Outcome::Duplicate;
            }
        }
        for (i, item) in items.iter().enumerate() {
            if item.outcome == Outcome::Duplicate {
                events[i] = None;
            }
        }
        Ok(Some(held))
    }

    /// Plans every event, reading the sets of `for_each_member_of` cascades from Redis in rounds
    /// (one pipelined round per cascade level).
    async fn plan(
        &self,
        items: &mut [Item],
        events: &[Option<Event>],
    ) -> Result<Vec<Option<EventPlan>>, EngineError> {
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        let mut failed_sets: HashMap<String, String> = HashMap::new();
        let mut plans: Vec<Option<EventPlan>> = vec![None; events.len()];
        let mut todo: Vec<usize> = (0..events.len()).filter(|&i| events[i].is_some()).collect();
        let rounds = self.rules.limits.max_cascade_depth as usize + 2;
        for round in 0..rounds {
            let mut needs: Vec<String> = Vec::new();
            let mut again = Vec::new();
            for &i in &todo {
                let event = events[i].as_ref().expect("todo holds decoded events");
                match self.rules.plan_event(event, &members) {
                    Ok(p) => {
                        if let Some(set) = p.needs.iter().find(|s| failed_sets.contains_key(*s)) {
                            items[i].outcome =
                                Outcome::dead("redis_wrongtype", failed_sets[set].clone());
                            plans[i] = None;
                            continue;
                        }
                        if !p.needs.is_empty() && round + 1 < rounds {
                            needs.extend(p.needs.iter().cloned());
                            again.push(i);
                        }
                        plans[i] = Some(p);
                    }
                    Err(e) => {
                        items[i].outcome = Outcome::DeadLettered {
                            reason: e.reason(),
                            error: e.to_string(),
                        };
                        plans[i] = None;
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            needs.sort();
            needs.dedup();
            for (set, result) in self.redis.members(&needs).await? {
                match result {
                    Ok(m) => {
                        members.insert(set, m);
                    }
                    Err(e) => {
                        failed_sets.insert(set, e);
                    }
                }
            }
            todo = again;
        }
        Ok(plans)
    }

    async fn remember(&self, items: &[Item], events: &[Option<Event>]) -> Result<(), EngineError> {
        let Some(window) = self.config.dedupe.window else {
            return Ok(());
        };
        let ids: Vec<&str> = items
            .iter()
            .zip(events)
            .filter(|(item, _)| item.outcome == Outcome::Applied)
            .filter_map(|(_, e)| e.as_ref().filter(|e| e.id_given).map(|e| e.id.as_str()))
            .collect();
        if !ids.is_empty() {
            self.redis
                .remember(&self.config.dedupe.prefix, &ids, window)
                .await?;
        }
        Ok(())
    }

    fn record_metrics(&self, items: &[Item], events: &[Option<Event>], result: &UnitResult) {
        let now = OffsetDateTime::now_utc();
        for (item, event) in items.iter().zip(events) {
            let kind = match &item.event {
                Some((_, k)) if self.rules.listens_to(k) => k.as_str(),
                _ => "other",
            };
            telemetry::event(kind, item.outcome.label());
            if let Outcome::DeadLettered { reason, .. } = &item.outcome {
                telemetry::dead_lettered(reason);
            }
            if item.outcome == Outcome::Applied
                && let Some(t) = event.as_ref().and_then(|e| e.time)
                && let Ok(age) = std::time::Duration::try_from(now - t)
            {
                telemetry::event_age(age);
            }
        }
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

    /// Deletes the keys and tags of a due `redelete_after` once more.
    pub async fn redelete(&self, r: &Redelete) -> Result<ApplyReport, EngineError> {
        let mut plan = Plan::default();
        for k in &r.keys {
            plan.deletes.insert(k.clone());
        }
        for t in &r.tags {
            plan.tags.insert(t.clone(), Vec::new());
        }
        let report = self
            .redis
            .apply(&plan, self.config.tags.mode, &self.config.tags.prefix)
            .await?;
        telemetry::keys_removed(report.keys_removed);
        Ok(report)
    }
}

fn decode_outcome(e: &DecodeError) -> Outcome {
    Outcome::DeadLettered {
        reason: e.reason(),
        error: e.to_string(),
    }
}

/// The result of a task of the modes (a unit, a redelete); a panic in it is a bug, raised here.
pub(crate) fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The result of `task` when there is one (a redelete beside the units); pending forever otherwise,
/// so that it can stand in a `select!`.
pub(crate) async fn finished<T>(task: &mut Option<tokio::task::JoinHandle<T>>) -> Option<T> {
    match task {
        Some(t) => Some(joined(t.await)),
        None => std::future::pending().await,
    }
}

/// Plans a single event without touching anything (`explain`).
pub fn explain(
    rules: &RuleSet,
    event: &Event,
) -> Result<(EventPlan, Plan), crate::rules::PlanError> {
    let p = rules.plan_event(event, &NoMembers)?;
    let mut plan = Plan::default();
    p.add_to(&mut plan, 0);
    Ok((p, plan))
}
