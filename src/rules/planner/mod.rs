//! One event → its [`EventPlan`]: matching rules, conditions, rendered actions and cascades.
//!
//! Cascades run through the same rules at depth + 1. A chain ends (with a note, the event still
//! applied) when it would pass `max_cascade_depth` or emit an event equal to one of its ancestors
//! (a cycle).
//!
//! Pure: it never reads Redis nor waits on anything; a `for_each_member_of` cascade over sets it
//! was not given waits in the plan, its sets returned as `needs` for the caller to fetch, and
//! [`RuleSet::resume`] plans only what waited once they are read. Rendering and value
//! confinement are [`super::template`]'s.

use std::collections::HashMap;

use serde_json::Value;

use super::template::{RenderError, Scope};
use super::{CascadeSpec, DataTemplate, Rule, RuleSet};
use crate::event::Event;
use crate::plan::{Action, EventPlan, Pending, RuleHit};

mod resume;
use resume::list_needs;

/// Why an event cannot be planned. Permanent for that event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("rule `{rule}`: {source}")]
    Render {
        rule: String,
        #[source]
        source: RenderError,
    },
    #[error("rule `{rule}`: {message}")]
    Condition { rule: String, message: String },
}

impl PlanError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Render { source, .. } => source.reason(),
            PlanError::Condition { .. } => "condition_error",
        }
    }
}

/// Members of Redis sets, as far as they are known (`for_each_member_of`).
pub trait Members {
    /// `None` when the set was not read yet.
    fn members(&self, set: &str) -> Option<&[String]>;
}

impl Members for HashMap<String, Vec<String>> {
    fn members(&self, set: &str) -> Option<&[String]> {
        self.get(set).map(Vec::as_slice)
    }
}

/// Knows no set (explain, first planning pass).
pub struct NoMembers;

impl Members for NoMembers {
    fn members(&self, _: &str) -> Option<&[String]> {
        None
    }
}

/// An event and the events whose cascades led to it (borrowed: nothing is copied per event).
struct Chain<'a> {
    event: &'a Event,
    parent: Option<&'a Chain<'a>>,
}

impl Chain<'_> {
    /// True when `e` (type and data) is this event or one of its ancestors: a cycle.
    fn contains(&self, e: &Event) -> bool {
        let mut link = Some(self);
        while let Some(l) = link {
            if l.event.kind == e.kind && l.event.data == e.data {
                return true;
            }
            link = l.parent;
        }
        false
    }
}

/// What a cascade walks: once for a plain cascade, once per member of its sets, or, while a set
/// was not read yet, nothing: it waits for them.
enum Walk {
    Items(Vec<Option<String>>),
    Waits(Vec<String>),
}

impl RuleSet {
    /// Plans one event and its cascades. A `for_each_member_of` cascade over a set that `members`
    /// does not know waits in the plan (its sets listed in [`EventPlan::needs`]) for
    /// [`RuleSet::resume`].
    pub fn plan_event(&self, event: &Event, members: &dyn Members) -> Result<EventPlan, PlanError> {
        let mut out = EventPlan::default();
        let chain = Chain {
            event,
            parent: None,
        };
        self.plan_into(&chain, 0, members, &mut out)?;
        list_needs(&mut out);
        Ok(out)
    }

    fn plan_into(
        &self,
        chain: &Chain<'_>,
        depth: u32,
        members: &dyn Members,
        out: &mut EventPlan,
    ) -> Result<(), PlanError> {
        let event = chain.event;
        for index in self.rule_indices(&event.kind) {
            let rule = &self.rules[index];
            let condition = match &rule.when {
                None => true,
                Some(c) => c.eval(event).map_err(|message| PlanError::Condition {
                    rule: rule.name.to_string(),
                    message,
                })?,
            };
            let render = |source: RenderError| PlanError::Render {
                rule: rule.name.to_string(),
                source,
            };
            let actions = if condition {
                self.actions(rule, event).map_err(render)?
            } else {
                Vec::new()
            };
            out.hits.push(RuleHit {
                rule: rule.name,
                at: rule.at,
                event_id: event.id.clone(),
                event_type: event.kind.clone(),
                depth,
                condition,
                actions,
                redelete_after: rule.redelete_after.filter(|_| condition),
            });
            if !condition {
                continue;
            }
            for (n, cascade) in rule.cascade.iter().enumerate() {
                let items = match self.walk_of(cascade, event, members).map_err(render)? {
                    Walk::Items(items) => items,
                    Walk::Waits(sets) => {
                        out.pending.push(Pending {
                            chain: chain.below_root(),
                            depth,
                            rule: index,
                            cascade: n,
                            sets,
                            at_hit: out.hits.len(),
                            at_note: out.notes.len(),
                        });
                        continue;
                    }
                };
                let children = self
                    .cascade_events(rule, cascade, event, n, &items)
                    .map_err(render)?;
                self.plan_children(chain, depth, rule, children, members, out)?;
            }
        }
        Ok(())
    }

    /// Plans the events a cascade of `rule` emitted for the last event of `chain`.
    fn plan_children(
        &self,
        chain: &Chain<'_>,
        depth: u32,
        rule: &Rule,
        children: Vec<Event>,
        members: &dyn Members,
        out: &mut EventPlan,
    ) -> Result<(), PlanError> {
        for child in children {
            if depth + 1 > self.limits.max_cascade_depth {
                out.notes.push(format!(
                    "rule `{}`: cascade `{}` not followed: max_cascade_depth {} reached",
                    rule.name, child.kind, self.limits.max_cascade_depth
                ));
                continue;
            }
            if chain.contains(&child) {
                out.notes.push(format!(
                    "rule `{}`: cascade `{}` not followed: cycle (the same event is already in this chain)",
                    rule.name, child.kind
                ));
                continue;
            }
            let link = Chain {
                event: &child,
                parent: Some(chain),
            };
            self.plan_into(&link, depth + 1, members, out)?;
        }
        Ok(())
    }

    /// Renders the Redis and CDN actions of one rule for one event.
    fn actions(&self, rule: &Rule, event: &Event) -> Result<Vec<Action>, RenderError> {
        let scope = Scope { event, item: None };
        let (safe, fanout) = (&self.limits.safe, self.limits.max_fanout);
        // One action per template unless a `[]` fans out: sized for that, most rules allocate
        // once.
        let templates = rule.delete.len()
            + rule.tags.len()
            + rule.expire.len()
            + rule.purge.iter().map(|p| p.paths.len()).sum::<usize>();
        let mut actions = Vec::with_capacity(templates);
        for t in &rule.delete {
            let pattern = t.is_pattern();
            t.render_each(scope, safe, fanout, |key| {
                actions.push(if pattern {
                    Action::DeletePattern {
                        pattern: pattern_of(&key),
                    }
                } else {
                    Action::Delete { key }
                })
            })?;
        }
        for t in &rule.tags {
            t.render_each(scope, safe, fanout, |tag| actions.push(Action::Tag { tag }))?;
        }
        for e in &rule.expire {
            e.key.render_each(scope, safe, fanout, |key| {
                actions.push(Action::Expire {
                    key,
                    ttl: e.ttl,
                    jitter: e.jitter,
                })
            })?;
        }
        for p in &rule.purge {
            for t in &p.paths {
                t.render_each(scope, safe, fanout, |path| {
                    actions.push(Action::Purge {
                        target: p.target.clone(),
                        path,
                    })
                })?;
            }
        }
        Ok(actions)
    }

    /// What one cascade of `event` walks.
    fn walk_of(
        &self,
        cascade: &CascadeSpec,
        event: &Event,
        members: &dyn Members,
    ) -> Result<Walk, RenderError> {
        let Some(set) = &cascade.for_each_member_of else {
            return Ok(Walk::Items(vec![None]));
        };
        let l = &self.limits;
        let keys = set.render_one(Scope { event, item: None }, &l.safe, l.max_fanout)?;
        Ok(match self.members_of(set.source(), &keys, members)? {
            Some(items) => Walk::Items(items),
            None => Walk::Waits(keys),
        })
    }

    /// The members of the sets `keys` (of the template `source`), `None` while one is unknown.
    fn members_of(
        &self,
        source: &str,
        keys: &[String],
        members: &dyn Members,
    ) -> Result<Option<Vec<Option<String>>>, RenderError> {
        let mut items = Vec::new();
        for key in keys {
            match members.members(key) {
                Some(m) => items.extend(m.iter().cloned().map(Some)),
                None => return Ok(None),
            }
        }
        if items.len() > self.limits.max_fanout {
            return Err(RenderError::FanoutExceeded {
                template: source.to_owned(),
                count: items.len() as u128,
                limit: self.limits.max_fanout,
            });
        }
        Ok(Some(items))
    }

    /// The events one cascade emits for `event`, one per data rendered for each of `items`.
    fn cascade_events(
        &self,
        rule: &Rule,
        cascade: &CascadeSpec,
        event: &Event,
        n: usize,
        items: &[Option<String>],
    ) -> Result<Vec<Event>, RenderError> {
        let l = &self.limits;
        let mut children = Vec::new();
        for item in items {
            let scope = Scope {
                event,
                item: item.as_deref(),
            };
            for data in render_data(&cascade.data, scope, self)? {
                let id = child_id(&event.id, rule.name, n, children.len());
                children.push(Event::derived(id, cascade.emit.clone(), event, data));
                if children.len() > l.max_fanout {
                    return Err(RenderError::FanoutExceeded {
                        template: format!("cascade {}", cascade.emit),
                        count: children.len() as u128,
                        limit: l.max_fanout,
                    });
                }
            }
        }
        Ok(children)
    }
}

/// A cascaded event's id, `{parent}>{rule}#{cascade}.{child}`: the texts and numbers pushed as they
/// are, not through `format!`, whose padding checks were 4% of a shipped replay's CPU.
fn child_id(parent: &str, rule: &str, cascade: usize, child: usize) -> String {
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (cascade, child) = (a.format(cascade), b.format(child));
    let parts = [parent, ">", rule, "#", cascade, ".", child];
    let mut id = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        id.push_str(part);
    }
    id
}

/// A pattern delete's `MATCH` pattern: the rendered key glob-escaped, with its final `*` kept.
fn pattern_of(key: &str) -> String {
    let prefix = key.strip_suffix('*').unwrap_or(key);
    let mut p = super::template::glob_escape(prefix);
    p.push('*');
    p
}

/// Renders cascade data; `[]` fan-outs in any string give one data object per combination.
fn render_data(
    t: &DataTemplate,
    scope: Scope<'_>,
    rules: &RuleSet,
) -> Result<Vec<Value>, RenderError> {
    let l = &rules.limits;
    Ok(match t {
        DataTemplate::Literal(v) => vec![v.clone()],
        DataTemplate::Template(t) if t.single_var() => t.render_value(scope, &l.safe)?,
        DataTemplate::Template(t) => t
            .render_one(scope, &l.safe, l.max_fanout)?
            .into_iter()
            .map(Value::String)
            .collect(),
        DataTemplate::List(items) => {
            let parts = items
                .iter()
                .map(|i| render_data(i, scope, rules))
                .collect::<Result<Vec<_>, _>>()?;
            product(parts, l.max_fanout, Value::Array)?
        }
        DataTemplate::Map(fields) => {
            let parts = fields
                .iter()
                .map(|(_, v)| render_data(v, scope, rules))
                .collect::<Result<Vec<_>, _>>()?;
            product(parts, l.max_fanout, |values| {
                Value::Object(fields.iter().map(|(k, _)| k.clone()).zip(values).collect())
            })?
        }
    })
}

/// The cartesian product of `parts`, at most `max` combinations, each made into one value by
/// `make` (an array, an object).
fn product(
    parts: Vec<Vec<Value>>,
    max: usize,
    make: impl Fn(Vec<Value>) -> Value,
) -> Result<Vec<Value>, RenderError> {
    let total = parts
        .iter()
        .fold(1u128, |acc, p| acc.saturating_mul(p.len() as u128));
    if total > max as u128 {
        return Err(RenderError::FanoutExceeded {
            template: "cascade data".into(),
            count: total,
            limit: max,
        });
    }
    if total == 1 {
        // One combination (no `[]` fan-out: the common case): the values are moved, where the
        // general loop below copies the prefix and the value at every step.
        return Ok(vec![make(parts.into_iter().flatten().collect())]);
    }
    let mut out: Vec<Vec<Value>> = vec![Vec::with_capacity(parts.len())];
    for part in parts {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                part.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect();
    }
    Ok(out.into_iter().map(make).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_child_id_names_its_parent_rule_cascade_and_place() {
        assert_eq!(child_id("e-1", "price", 0, 0), "e-1>price#0.0");
        assert_eq!(
            child_id("a>b#1.2", "r", 10, usize::MAX),
            format!("a>b#1.2>r#10.{}", usize::MAX)
        );
    }

    #[test]
    fn a_product_of_single_values_is_them_in_order_and_a_fan_out_every_combination() {
        let one = vec![vec![json!(1)], vec![json!("a")], vec![json!({"k": 2})]];
        assert_eq!(
            product(one, 1, Value::Array).unwrap(),
            [json!([1, "a", {"k": 2}])]
        );
        let two = vec![vec![json!(1)], vec![json!("a"), json!("b")]];
        assert_eq!(
            product(two, 2, Value::Array).unwrap(),
            [json!([1, "a"]), json!([1, "b"])]
        );
        assert!(
            product(vec![vec![json!(1)]], 0, Value::Array).is_err(),
            "over the limit"
        );
    }
}
