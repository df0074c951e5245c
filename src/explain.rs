//! `invalidator explain` and `rules check` output: what an event would do, in words or JSON.

use std::collections::HashSet;
use std::io::{self, Write};

use serde_json::json;

use crate::config::{Config, NEXTJS_IMPLICIT, TagLayout};
use crate::engine::{Outcome, Prepared, prepare_keeping};
use crate::event::{DataFields, Position, expand_document};
use crate::plan::{Action, key_text};
use crate::rules::RuleSet;

/// Explains every event of `text` (one event, a JSON array, a Lambda event document or a DLQ
/// record) to `out`, through [`prepare_keeping`] with the whole event: what it prints is what a
/// unit would apply. Returns the exit status: 1 when an event would be dead-lettered, 0 otherwise.
pub fn explain(
    rules: &RuleSet,
    config: &Config,
    text: Vec<u8>,
    json: bool,
    out: &mut dyn Write,
) -> io::Result<u8> {
    let position = Position::named("explain");
    let inputs = expand_document(text, position, config.limits.max_event_bytes);
    let mut code = 0;
    // The event is shown whole, not only the fields of `data` the rules read.
    for p in prepare_keeping(rules, &config.limits, &DataFields::All, inputs) {
        if matches!(p.outcome, Outcome::DeadLettered { .. }) {
            code = 1;
        }
        if json {
            serde_json::to_writer_pretty(&mut *out, &to_json(&p)).map_err(io::Error::from)?;
            writeln!(out)?;
        } else {
            write_human(&p, out, config)?;
        }
    }
    Ok(code)
}

/// One event's explanation as JSON.
pub fn to_json(p: &Prepared) -> serde_json::Value {
    let mut v = match (&p.outcome, &p.plan) {
        (Outcome::DeadLettered { reason, error }, _) => json!({
            "outcome": "dead_lettered",
            "reason": reason,
            "error": error,
        }),
        (outcome, Some(event_plan)) => json!({
            "outcome": outcome.label(),
            "hits": event_plan.hits,
            "needs_members_of": event_plan.needs,
            "notes": event_plan.notes,
            "plan": p.actions(),
        }),
        (outcome, None) => json!({ "outcome": outcome.label() }),
    };
    if let Some(e) = &p.event {
        v["event"] = json!(e);
    }
    v
}

/// One event's explanation in words.
pub fn write_human(p: &Prepared, out: &mut dyn Write, config: &Config) -> io::Result<()> {
    let (Some(event), Some(event_plan)) = (&p.event, &p.plan) else {
        if let Outcome::DeadLettered { reason, error } = &p.outcome {
            return writeln!(out, "dead-lettered ({reason}): {error}");
        }
        return Ok(());
    };
    let plan = p.actions();
    writeln!(out, "event {} ({})", event.id, event.kind)?;
    if event_plan.hits.is_empty() {
        match &p.outcome {
            Outcome::DeadLettered { reason, error } => {
                writeln!(out, "  dead-lettered ({reason}): {error}")?
            }
            _ => writeln!(out, "  no rule listens to `{}`: skipped", event.kind)?,
        }
    }
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
            let line = describe(a, config);
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

/// One action in words, with the Redis commands it becomes.
fn describe(a: &Action, config: &Config) -> String {
    match a {
        Action::Delete { key } => format!("delete   {}", key_text(key.as_bytes())),
        Action::DeletePattern { pattern } => format!(
            "pattern  {}   (SCAN MATCH on every primary, then UNLINK)",
            key_text(pattern.as_bytes())
        ),
        Action::Tag { tag } => format!(
            "tag      {}   ({})",
            key_text(tag.as_bytes()),
            tag_commands(tag, config.tags.layout())
        ),
        Action::Expire { key, ttl, jitter } => {
            let j = if *jitter > 0.0 {
                format!(", jitter {:.0}%", jitter * 100.0)
            } else {
                String::new()
            };
            format!(
                "expire   {}   (TTL at most {}{j}, never lengthened)",
                key_text(key.as_bytes()),
                humantime::format_duration(*ttl)
            )
        }
        Action::Purge { target, path } => format!("purge    {target} {path}"),
    }
}

/// The Redis commands that invalidate `tag` in `layout`, with the framework's keys as they are
/// (bytes that are not printable as `\xNN`).
fn tag_commands(tag: &str, layout: &TagLayout) -> String {
    let key = |k: &str| key_text(k.as_bytes()).into_owned();
    match layout {
        TagLayout::Sets { member_prefix, .. } if member_prefix.is_empty() => {
            format!(
                "SSCAN {} → UNLINK members → SREM them",
                key(&layout.key_of(tag))
            )
        }
        TagLayout::Sets { member_prefix, .. } => format!(
            "SSCAN {} → UNLINK {}{{member}} of each member → SREM them",
            key(&layout.key_of(tag)),
            key(member_prefix)
        ),
        TagLayout::Versions { .. } => format!("INCR {}", key(&layout.key_of(tag))),
        TagLayout::VersionKeys { .. } => format!(
            "UNLINK {}: the tag's version; entries saved with the old one miss",
            key(&layout.key_of(tag))
        ),
        TagLayout::NextJs(n) => {
            let mark = if tag.starts_with(NEXTJS_IMPLICIT) {
                format!(
                    "HSET {} {} {{now in ms}}; ",
                    key(&n.revalidated_tags),
                    key(tag)
                )
            } else {
                String::new()
            };
            format!(
                "{mark}HSCAN {} for entries tagged `{}` → UNLINK {}{{entry}} → HDEL them from {} and {}",
                key(&n.shared_tags),
                key(tag),
                key(&n.key_prefix),
                key(&n.shared_tags),
                key(&n.shared_tags_ttl)
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_line(tags: &str, tag: &str) -> String {
        let config = Config::from_toml(&format!("[tags]\n{tags}")).unwrap();
        let action = Action::Tag { tag: tag.into() };
        describe(&action, &config)
    }

    /// The lines the framework pages (docs/framework-*.md) show.
    #[test]
    fn a_tag_names_the_keys_of_its_layout() {
        let cases = [
            (
                "",
                "product:1",
                "tag      product:1   (SSCAN tag:product:1 → UNLINK members → SREM them)",
            ),
            (
                "layout = \"version\"",
                "product:1",
                "tag      product:1   (INCR tag:product:1)",
            ),
            (
                "layout = \"symfony\"\nnamespace = \"shop\"",
                "category-7",
                "tag      category-7   (SSCAN shop:\\x00tags\\x00category-7 → UNLINK members → SREM them)",
            ),
            (
                "layout = \"symfony\"\nnamespace = \"shop\"\nclient_prefix = \"app1:\"",
                "category-7",
                "tag      category-7   (SSCAN app1:shop:\\x00tags\\x00category-7 → UNLINK app1:{member} of each member → SREM them)",
            ),
            (
                "layout = \"symfony-versions\"\nnamespace = \"shop-tags\"",
                "category-7",
                "tag      category-7   (UNLINK shop-tags:category-7\\x00tags\\x00: the tag's version; entries saved with the old one miss)",
            ),
            (
                "layout = \"nextjs\"\nnamespace = \"shop:\"",
                "category-7",
                "tag      category-7   (HSCAN shop:__sharedTags__ for entries tagged `category-7` → UNLINK shop:{entry} → HDEL them from shop:__sharedTags__ and shop:__sharedTagsTtl__)",
            ),
            (
                "layout = \"nextjs\"",
                "_N_T_/products/42",
                "tag      _N_T_/products/42   (HSET __revalidated_tags__ _N_T_/products/42 {now in ms}; HSCAN __sharedTags__ for entries tagged `_N_T_/products/42` → UNLINK {entry} → HDEL them from __sharedTags__ and __sharedTagsTtl__)",
            ),
        ];
        for (tags, tag, line) in cases {
            assert_eq!(tag_line(tags, tag), line, "{tags}");
        }
    }
}
