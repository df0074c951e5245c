//! The pure half of a unit of work: records → decoded events → their plans. No I/O, no clock, no
//! metrics: `explain` calls exactly this, and so does every mode before it applies anything.
//!
//! What it cannot know is left to [`super::apply`]: whether an id was seen before (dedupe reads
//! Redis) and the members of the sets that `for_each_member_of` cascades walk (those events carry
//! [`EventPlan::needs`]; their waiting cascades are planned once the sets are read).

use crate::config::LimitsConfig;
use crate::event::{
    DataFields, DecodeError, Event, Expanded, Record, decode_event_keeping, decode_value_keeping,
};
use crate::plan::{EventPlan, Plan};
use crate::rules::{Members, NoMembers, PlanError, RuleSet};

use super::Outcome;

/// One input and what the pure core made of it.
#[derive(Debug)]
pub struct Prepared {
    pub record: Record,
    /// The decoded event (`None` when the payload did not decode).
    pub event: Option<Event>,
    /// What the rules say about it (`None` when it was dead-lettered before or while planning).
    pub plan: Option<EventPlan>,
    /// What becomes of it if nothing else is learned when it is applied.
    pub outcome: Outcome,
}

impl Prepared {
    /// This event's actions alone, coalesced as a unit of one would apply them.
    pub fn actions(&self) -> Plan {
        let mut plan = Plan::default();
        if let Some(p) = self
            .plan
            .as_ref()
            .filter(|_| self.outcome == Outcome::Applied)
        {
            p.add_to(&mut plan, 0);
        }
        plan
    }

    /// Plans the cascades that waited for the members read so far (nothing else is planned
    /// again); the outcome follows the new plan.
    pub(super) fn resume(&mut self, rules: &RuleSet, limits: &LimitsConfig, members: &dyn Members) {
        let (Some(event), Some(mut plan)) = (&self.event, self.plan.take()) else {
            return;
        };
        let resumed = rules.resume(event, &mut plan, members).map(|()| plan);
        (self.plan, self.outcome) = outcome_of(limits, resumed);
    }
}

/// Decodes and plans every input, in order: one [`Prepared`] per input. Each event keeps of its
/// `data` what the rules read ([`RuleSet::data_fields`]): the plans are those of whole events.
pub fn prepare(rules: &RuleSet, limits: &LimitsConfig, inputs: Vec<Expanded>) -> Vec<Prepared> {
    prepare_keeping(rules, limits, rules.data_fields(), inputs)
}

/// [`prepare`], each event keeping `fields` of its `data` (`explain` shows whole events:
/// [`DataFields::All`]).
pub fn prepare_keeping(
    rules: &RuleSet,
    limits: &LimitsConfig,
    fields: &DataFields,
    inputs: Vec<Expanded>,
) -> Vec<Prepared> {
    inputs
        .into_iter()
        .map(|input| {
            let (record, decoded) = decode(input, limits.max_event_bytes, fields);
            match decoded {
                Ok(event) => {
                    let (plan, outcome) = plan_one(rules, limits, &event, &NoMembers);
                    Prepared {
                        record,
                        event: Some(event),
                        plan,
                        outcome,
                    }
                }
                Err(e) => Prepared {
                    record,
                    event: None,
                    plan: None,
                    outcome: Outcome::dead(e.reason(), e.to_string()),
                },
            }
        })
        .collect()
}

/// The only decode of the product: one input to its record and its event.
fn decode(
    input: Expanded,
    max_bytes: usize,
    fields: &DataFields,
) -> (Record, Result<Event, DecodeError>) {
    let fallback = |record: &Record| record.position.fallback_id();
    match input {
        Expanded::Parsed { value, record } => {
            let decoded = decode_value_keeping(value, max_bytes, fields, &|| fallback(&record));
            (record, decoded)
        }
        Expanded::Raw(record) => {
            let decoded =
                decode_event_keeping(&record.payload, max_bytes, fields, &|| fallback(&record));
            (record, decoded)
        }
        Expanded::Failed { record, error } => (record, Err(*error)),
    }
}

/// The plan of one event and the outcome it implies: applied when a rule applies, dead-lettered
/// when planning fails (or, with `dead_letter_unmatched`, when no rule listens), skipped otherwise.
fn plan_one(
    rules: &RuleSet,
    limits: &LimitsConfig,
    event: &Event,
    members: &dyn Members,
) -> (Option<EventPlan>, Outcome) {
    outcome_of(limits, rules.plan_event(event, members))
}

/// A plan (or why there is none) and the outcome it implies.
fn outcome_of(
    limits: &LimitsConfig,
    planned: Result<EventPlan, PlanError>,
) -> (Option<EventPlan>, Outcome) {
    match planned {
        Ok(p) => {
            let outcome = if p.matched() {
                Outcome::Applied
            } else if limits.dead_letter_unmatched && p.hits.is_empty() {
                Outcome::dead("no_rule", "no rule matches this event type")
            } else {
                Outcome::Skipped
            };
            (Some(p), outcome)
        }
        Err(e) => (None, Outcome::dead(e.reason(), e.to_string())),
    }
}
