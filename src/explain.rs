//! `invalidator explain` and `rules check` output: what an event would do, in words or JSON.

use std::collections::HashSet;
use std::io::{self, Write};

use serde_json::json;

use crate::config::{Config, TagMode};
use crate::event::Event;
use crate::plan::{Action, EventPlan, Plan};
use crate::rules::RuleSet;

/// The explanation of one event (built once per explained event; size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Explained {
    Plan {
        event: Event,
        event_plan: EventPlan,
        plan: Plan,
    },
    DeadLetter {
        reason: &'static str,
        error: String,
    },
}

impl Explained {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Explained::Plan {
                event,
                event_plan,
                plan,
            } => json!({
                "event": event,
                "outcome": if event_plan.matched() { "applied" } else { "skipped" },
                "hits": event_plan.hits,
                "needs_members_of": event_plan.needs,
                "notes": event_plan.notes,
                "plan": plan,
            }),
            Explained::DeadLetter { reason, error } => json!({
                "outcome": "dead_lettered",
                "reason": reason,
                "error": error,
            }),
        }
    }

    pub fn write_human(&self, out: &mut dyn Write, config: &Config) -> io::Result<()> {
        let (event, event_plan, plan) = match self {
            Explained::DeadLetter { reason, error } => {
                return writeln!(out, "dead-lettered ({reason}): {error}");
            }
            Explained::Plan {
                event,
                event_plan,
                plan,
            } => (event, event_plan, plan),
        };
        writeln!(out, "event {} ({})", event.id, event.kind)?;
        if event_plan.hits.is_empty() {
            writeln!(out, "  no rule listens to `{}`: skipped", event.kind)?;
        }
        let prefix = &config.tags.prefix;
        for hit in &event_plan.hits {
            let indent = "  ".repeat(hit.depth as usize + 1);
            if hit.depth > 0 {
                writeln!(
                    out,
                    "{indent}↳ cascaded {} ({})",
                    hit.event_type, hit.event_id
                )?;
            }
            if !hit.condition {
                writeln!(
                    out,
                    "{indent}rule {} ({}): condition false, nothing to do",
                    hit.rule, hit.at
                )?;
                continue;
            }
            writeln!(out, "{indent}rule {} ({})", hit.rule, hit.at)?;
            for a in &hit.actions {
                let line = match a {
                    Action::Delete { key } => format!("delete   {key}"),
                    Action::DeletePattern { pattern } => {
                        format!("pattern  {pattern}   (SCAN MATCH on every primary, then UNLINK)")
                    }
                    Action::Tag { tag } => match config.tags.mode {
                        TagMode::Set => format!(
                            "tag      {tag}   (SSCAN {prefix}{tag} → UNLINK members → SREM them)"
                        ),
                        TagMode::Version => format!("tag      {tag}   (INCR {prefix}{tag})"),
                    },
                    Action::Expire { key, ttl, jitter } => {
                        let j = if *jitter > 0.0 {
                            format!(", jitter {:.0}%", jitter * 100.0)
                        } else {
                            String::new()
                        };
                        format!(
                            "expire   {key}   (TTL at most {}{j}, never lengthened)",
                            humantime::format_duration(*ttl)
                        )
                    }
                    Action::Purge { target, path } => format!("purge    {target} {path}"),
                };
                writeln!(out, "{indent}  {line}")?;
            }
            if let Some(after) = hit.redelete_after {
                writeln!(
                    out,
                    "{indent}  again after {}: its deletes and tags",
                    humantime::format_duration(after)
                )?;
            }
        }
        for set in &event_plan.needs {
            writeln!(
                out,
                "  cascade over the members of set {set}: read at apply time (explain touches nothing)"
            )?;
        }
        for note in &event_plan.notes {
            writeln!(out, "  note: {note}")?;
        }
        let purge_paths: usize = plan.purges.values().map(|p| p.len()).sum();
        writeln!(
            out,
            "plan: {} deletes, {} pattern deletes, {} tags, {} expires, {} purge paths, {} redelete groups",
            plan.deletes.len(),
            plan.patterns.len(),
            plan.tags.len(),
            plan.expires.len(),
            purge_paths,
            plan.redeletes.len()
        )
    }
}

/// Things in a rule set that compile but are probably mistakes.
pub fn warnings(rules: &RuleSet) -> Vec<String> {
    let mut out = Vec::new();
    let mut warned = HashSet::new();
    for rule in &rules.rules {
        for c in &rule.cascade {
            if !rules.listens_to(&c.emit) && warned.insert(c.emit.clone()) {
                out.push(format!(
                    "rule `{}` ({}) emits `{}`, but no rule listens to it",
                    rule.name, rule.at, c.emit
                ));
            }
        }
        if !rule.delete.is_empty() && rule.delete.iter().any(|t| t.is_pattern()) {
            out.push(format!(
                "rule `{}` ({}) uses a pattern delete: it SCANs the whole keyspace of every primary per event; tags are cheaper",
                rule.name, rule.at
            ));
        }
    }
    out
}
