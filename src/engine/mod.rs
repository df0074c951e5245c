//! The unit of work shared by every mode: records in, one outcome per record out, in two halves:
//!
//! - [`prepare`] (`prepare.rs`, pure): decode → plan. The only decode of the product; `explain`
//!   shows exactly what it returns.
//! - [`Engine::apply`] (`apply.rs`, the only I/O): dedupe → cascade sets read, the cascades that
//!   waited planned → coalesce → Redis → CDN → remember ids → metrics → notices.
//!
//! The modes (replay, the Kafka worker, the Lambda) call [`Engine::process`], both halves in one.
//!
//! Invariants:
//! - every input ends in exactly one [`Outcome`]: applied, skipped, duplicate or dead-lettered;
//! - a per-event permanent error dead-letters that event only, with a stable reason code;
//! - an outage (Redis or CDN unreachable after retries) fails the whole unit with
//!   an [`EngineError`] and nothing in it is reported as done: the caller must not
//!   acknowledge any of its records;
//! - Redis is invalidated before the CDN, so a CDN refetch never finds a stale Redis copy;
//! - a unit resolves only when its CDN paths were accepted: on a CloudFront target that is when
//!   the batch window holding them was sent and accepted, so several units in flight share one
//!   `CreateInvalidation`;
//! - memory: at most 2 × cores units are decoded, planned and applied to Redis at once (others
//!   wait with their raw records only); a unit gives its slot back before it waits on the CDN;
//! - completion notices (`[notify]`) go out after all that, for applied events only, and never
//!   fail the unit (see [`crate::apply::notify`]).

mod apply;
mod in_flight;
mod prepare;

pub use prepare::{Prepared, prepare, prepare_keeping};

use in_flight::InFlightIds;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::apply::cdn::{CdnError, CdnTargets, PurgeReport};
use crate::apply::notify::{NoticeReport, Notifier};
use crate::apply::redis::{ApplyReport, Redis, RedisError};
use crate::config::Config;
use crate::event::{Expanded, Record};
use crate::plan::{Plan, Redelete};
use crate::rules::RuleSet;
use crate::telemetry;

/// What became of one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// No rule matched, or every matching rule's condition was false.
    Skipped,
    /// Its id was applied within the dedupe window (or by an earlier copy in the same unit).
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

    pub(crate) fn dead(reason: &'static str, error: impl Into<String>) -> Self {
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
    pub event: Option<(Arc<str>, Arc<str>)>,
    pub outcome: Outcome,
}

impl From<Prepared> for Item {
    fn from(p: Prepared) -> Item {
        Item {
            record: p.record,
            event: p.event.map(|e| (e.id, e.kind)),
            outcome: p.outcome,
        }
    }
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
    in_flight_ids: InFlightIds,
    /// Units being decoded, planned and applied to Redis at once. A unit gives its slot back
    /// before it waits for its CDN batch, so many units can wait for a CloudFront window while
    /// only a few hold decoded events and plans in memory.
    slots: tokio::sync::Semaphore,
}

/// Slots of [`Engine::slots`]: enough to keep every core busy while others wait on Redis.
fn apply_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
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
            in_flight_ids: InFlightIds::default(),
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

    /// Processes one unit: [`prepare`] (pure), then [`Engine::apply`]. With `dry_run`, Redis is
    /// only read (dedupe, set members), nothing is written and nothing is purged.
    pub async fn process(
        &self,
        inputs: Vec<Expanded>,
        dry_run: bool,
    ) -> Result<UnitResult, EngineError> {
        // Taken before decoding: only a few units hold decoded events and plans at once.
        let slot = self.slot().await;
        let unit = prepare(&self.rules, &self.config.limits, inputs);
        self.apply_in(slot, unit, dry_run).await
    }

    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the slots are never closed")
    }

    /// Deletes the keys and tags of a due `redelete_after` once more, one plan per rule, so that
    /// what each rule's redeletes find (stale refills caught) is counted under it.
    pub async fn redelete(&self, r: &Redelete) -> Result<ApplyReport, EngineError> {
        let mut plans: BTreeMap<&str, Plan> = BTreeMap::new();
        for (k, &rule) in &r.keys {
            let plan = plans.entry(rule).or_default();
            plan.deletes.insert(k.clone().into_bytes());
        }
        for (t, &rule) in &r.tags {
            plans
                .entry(rule)
                .or_default()
                .tags
                .insert(t.clone(), Vec::new());
        }
        let layout = self.config.tags.layout();
        let results =
            futures::future::join_all(plans.values().map(|plan| self.redis.apply(plan, layout)))
                .await;
        let mut total = ApplyReport::default();
        let mut failed = None;
        for ((rule, plan), result) in plans.iter().zip(results) {
            match result {
                Ok(report) => {
                    let asked = (plan.deletes.len() + plan.tags.len()) as u64;
                    telemetry::redeleted(rule, asked, report.keys_removed);
                    telemetry::keys_removed(report.keys_removed);
                    total.keys_removed += report.keys_removed;
                    total.expires_set += report.expires_set;
                    total.tags_invalidated += report.tags_invalidated;
                    total.tag_failures.extend(report.tag_failures);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            // The whole redelete is tried again; what went already finds nothing then.
            Some(e) => Err(e.into()),
            None => Ok(total),
        }
    }
}
