//! Raw rule files → compiled [`Rule`]s and [`TtlPolicy`]s, collecting every error with its location.
//!
//! Owns the checks that need a rule's context: unique names across files, `on`, `when`, the checks
//! across a rule's fields, TTL policies. `actions` compiles what a rule does (delete, tags, expire,
//! purge, cascade); `ctx` places each error at the `file:line:column` of its YAML value (inside a
//! template, at the offending character) and compiles the shared scalars (templates, durations,
//! jitter). What a template may hold is decided in [`super::template`], the YAML shape in
//! [`super::raw`]. Pure: it compiles the texts it is given, it reads no file (that is
//! [`RuleSet::load`](super::RuleSet::load)), no tokio, no Redis.

mod actions;
mod ctx;

use std::collections::HashMap;
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::raw::{FLOW_TEMPLATE_HINT, OneOrMany, RawFile, RawRule, RawTtlPolicy};
use super::{Limits, Matcher, Rule, RuleError, RuleErrors, TtlPolicy, condition::Condition};
use actions::compile_actions;
use ctx::Ctx;

/// What compilation checks against.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    pub limits: Limits,
    /// The configured CDN targets; `None` skips the check (`rules check` without a config).
    pub cdn_targets: Option<Vec<String>>,
}

/// Compiles every file; returns all errors of all files at once.
pub fn compile_files(
    sources: &[(String, String)],
    options: &CompileOptions,
) -> Result<(Vec<Rule>, Vec<TtlPolicy>), RuleErrors> {
    let env = Arc::new(cel::Env::stdlib());
    let mut rules = Vec::new();
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (file, text) in sources {
        let mut ctx = Ctx {
            file,
            text,
            errors: Vec::new(),
        };
        let raw: RawFile = match serde_saphyr::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let loc = e.location();
                errors.push(RuleError {
                    file: file.clone(),
                    line: loc.map_or(1, |l| l.line().max(1)),
                    column: loc.map_or(1, |l| l.column().max(1)),
                    message: parse_message(&e, text),
                });
                continue;
            }
        };
        for rule in raw.rules {
            let at = format!(
                "{file}:{}:{}",
                rule.referenced.line(),
                rule.referenced.column()
            );
            if let Some(first) = names.get(&rule.value.name.value) {
                ctx.err(
                    &rule.value.name.referenced,
                    format!(
                        "rule `{}` is already defined at {first}",
                        rule.value.name.value
                    ),
                );
            } else {
                names.insert(rule.value.name.value.clone(), at.clone());
            }
            if let Some(r) = compile_rule(&mut ctx, rule.value, at, &env, options) {
                rules.push(r);
            }
        }
        for p in raw.ttl_policies {
            if let Some(p) = compile_policy(&mut ctx, &p) {
                policies.push(p);
            }
        }
        errors.extend(ctx.errors);
    }
    if errors.is_empty() {
        Ok((rules, policies))
    } else {
        Err(RuleErrors(errors))
    }
}

/// The parser's message without its own location and snippet (we print `file:line:column:` first).
fn parse_message(e: &serde_saphyr::Error, source: &str) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // Drop a trailing " at line N, column M" that the parser may add.
    let message = match first.rfind(" at line ") {
        Some(i) => first[..i].trim_end_matches(',').to_owned(),
        None => first.to_owned(),
    };
    // An unquoted template in a flow list (`[price:{id}]`) breaks the YAML itself: say why.
    let line = e
        .location()
        .and_then(|l| source.lines().nth(l.line().saturating_sub(1) as usize))
        .unwrap_or("");
    if message.contains("flow") && line.contains('{') && !message.contains(FLOW_TEMPLATE_HINT) {
        format!("{message}: {FLOW_TEMPLATE_HINT}")
    } else {
        message
    }
}

/// Compiles one rule in stages: its name, `on`, `when`, its actions, `redelete_after`, then the
/// checks across fields. Every error is recorded; `None` when the rule had any.
fn compile_rule(
    ctx: &mut Ctx<'_>,
    raw: RawRule,
    at: String,
    env: &Arc<cel::Env>,
    options: &CompileOptions,
) -> Option<Rule> {
    let before = ctx.errors.len();
    let name = rule_name(ctx, &raw.name);
    let on = compile_on(ctx, &raw.on);
    let when = compile_when(ctx, raw.when.as_ref(), env);
    let actions = compile_actions(ctx, &raw, options);
    let redelete_after = raw
        .redelete_after
        .as_ref()
        .and_then(|d| ctx.duration(d, "redelete_after"));
    check_rule_acts(ctx, &raw, &name);
    if ctx.errors.len() > before {
        return None;
    }
    Some(Rule {
        name: name.leak(),
        at: at.leak(),
        on,
        when,
        delete: actions.delete,
        tags: actions.tags,
        expire: actions.expire,
        cascade: actions.cascade,
        purge: actions.purge,
        redelete_after,
    })
}

/// The trimmed name, which must not be empty.
fn rule_name(ctx: &mut Ctx<'_>, name: &Spanned<String>) -> String {
    let trimmed = name.value.trim().to_owned();
    if trimmed.is_empty() {
        ctx.err(&name.referenced, "a rule needs a non-empty name");
    }
    trimmed
}

/// `on`: at least one event type, each exact, a prefix glob or `*`.
fn compile_on(ctx: &mut Ctx<'_>, on: &Spanned<OneOrMany>) -> Vec<Matcher> {
    if on.value.0.is_empty() {
        ctx.err(&on.referenced, "`on` needs at least one event type");
    }
    let mut matchers = Vec::new();
    for t in &on.value.0 {
        match matcher(t) {
            Ok(m) => matchers.push(m),
            Err(m) => ctx.err(&on.referenced, m),
        }
    }
    matchers
}

/// `when`: a CEL condition, compiled against `env`.
fn compile_when(
    ctx: &mut Ctx<'_>,
    when: Option<&Spanned<String>>,
    env: &Arc<cel::Env>,
) -> Option<Condition> {
    let w = when?;
    match Condition::compile(&w.value, env) {
        Ok(c) => Some(c),
        Err(m) => {
            ctx.err(&w.referenced, format!("condition `{}`: {m}", w.value));
            None
        }
    }
}

/// Checks across fields: a rule does something, and `redelete_after` has something to repeat.
fn check_rule_acts(ctx: &mut Ctx<'_>, raw: &RawRule, name: &str) {
    if raw.delete.is_empty()
        && raw.tags.is_empty()
        && raw.expire.is_empty()
        && raw.cascade.is_empty()
        && raw.purge.is_empty()
    {
        ctx.err(
            &raw.name.referenced,
            format!("rule `{name}` does nothing: give it delete, tags, expire, cascade or purge"),
        );
    }
    if let Some(d) = &raw.redelete_after
        && raw.delete.is_empty()
        && raw.tags.is_empty()
    {
        ctx.err(
            &d.referenced,
            "redelete_after repeats `delete` and `tags`, and this rule has neither",
        );
    }
}

fn matcher(t: &str) -> Result<Matcher, String> {
    let t = t.trim();
    if t == "*" {
        return Ok(Matcher::Any);
    }
    if t.is_empty() {
        return Err("an empty event type".into());
    }
    match t.find(['*', '?', '[', ']']) {
        None => Ok(Matcher::Exact(t.to_owned())),
        Some(i) if i == t.len() - 1 && t.ends_with('*') => Ok(Matcher::Prefix(t[..i].to_owned())),
        Some(_) => Err(format!(
            "`{t}`: only a prefix glob with a final `*` (such as \"price.*\") is supported"
        )),
    }
}

fn compile_policy(ctx: &mut Ctx<'_>, p: &Spanned<RawTtlPolicy>) -> Option<TtlPolicy> {
    let pattern = p.value.pattern.value.trim().to_owned();
    let literal_prefix = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        ctx.err(
            &p.value.pattern.referenced,
            "`match` must be a Redis glob such as price:*",
        );
    } else if literal_prefix == 0 {
        ctx.err(&p.value.pattern.referenced, format!("`match: {pattern}` needs a literal prefix (such as price:*): a policy over every key is not allowed"));
    }
    let max_ttl = ctx.duration(&p.value.max_ttl, "max_ttl");
    let jitter = ctx.jitter(&p.value.jitter);
    Some(TtlPolicy {
        pattern,
        max_ttl: max_ttl?,
        jitter,
        at: format!(
            "{}:{}:{}",
            ctx.file,
            p.referenced.line(),
            p.referenced.column()
        ),
    })
}
