//! Raw rule files → compiled [`Rule`]s and [`TtlPolicy`]s, collecting every error with its location.
//!
//! Owns the checks that need a rule's context (unique names across files, `on`, `when`, durations,
//! jitter, CDN targets, cascades, TTL policies) and turns a template's byte offset into the
//! `file:line:column` of the YAML scalar. What a template may hold is decided in
//! [`super::template`], the YAML shape in [`super::raw`]. Pure: it compiles the texts it is given,
//! it reads no file (that is [`RuleSet::load`](super::RuleSet::load)), no tokio, no Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::{
    DataValue, FLOW_TEMPLATE_HINT, OneOrMany, RawCascade, RawExpire, RawFile, RawPurge, RawRule,
    RawTtlPolicy, TemplateText,
};
use super::template::{SyntaxError, Template, TemplateKind};
use super::{
    CascadeSpec, DataTemplate, ExpireSpec, Limits, Matcher, PurgeSpec, Rule, RuleError, RuleErrors,
    TtlPolicy, condition::Condition,
};

/// What compilation checks against.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    pub limits: Limits,
    /// The configured CDN targets; `None` skips the check (`rules check` without a config).
    pub cdn_targets: Option<Vec<String>>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<RuleError>,
}

impl Ctx<'_> {
    fn err(&mut self, loc: &Location, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    /// An error at character `offset` inside the scalar that starts at `loc` (skipping an opening quote).
    fn err_in_scalar(&mut self, loc: &Location, offset: usize, message: impl Into<String>) {
        let quoted = self
            .text
            .lines()
            .nth(loc.line().saturating_sub(1) as usize)
            .and_then(|l| l.chars().nth(loc.column().saturating_sub(1) as usize))
            .is_some_and(|c| c == '"' || c == '\'');
        self.errors.push(RuleError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column() + offset as u64 + u64::from(quoted),
            message: message.into(),
        });
    }

    fn template(
        &mut self,
        t: &Spanned<TemplateText>,
        kind: TemplateKind,
        item: bool,
    ) -> Option<Template> {
        match Template::compile(&t.value.0, kind, item) {
            Ok(t) => Some(t),
            Err(SyntaxError { offset, message }) => {
                // Columns count characters; `offset` is in bytes.
                let text = &t.value.0;
                let column = text[..offset.min(text.len())].chars().count();
                self.err_in_scalar(
                    &t.referenced,
                    column,
                    format!("in `{}`: {message}", t.value.0),
                );
                None
            }
        }
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(&s.referenced, format!("{what} must be more than zero"));
                None
            }
            Err(e) => {
                self.err(
                    &s.referenced,
                    format!(
                        "{what} `{}` is not a duration such as 30s, 500ms or 1h: {e}",
                        s.value
                    ),
                );
                None
            }
        }
    }

    fn jitter(&mut self, s: &Option<Spanned<String>>) -> f64 {
        let Some(s) = s else { return 0.0 };
        let text = s.value.trim();
        let parsed = match text.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
            None => text.parse::<f64>(),
        };
        match parsed {
            Ok(j) if (0.0..1.0).contains(&j) => j,
            _ => {
                self.err(&s.referenced, format!("jitter `{text}` must be a percentage from 0% to 99% (or a fraction below 1)"));
                0.0
            }
        }
    }
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
        name: name.into(),
        at: at.into(),
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

/// What a rule does, compiled (the fields of [`Rule`] of the same names).
struct Actions {
    delete: Vec<Template>,
    tags: Vec<Template>,
    expire: Vec<ExpireSpec>,
    purge: Vec<PurgeSpec>,
    cascade: Vec<CascadeSpec>,
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

/// `delete`, `tags`, `expire`, `purge` and `cascade`, in that order (the order of their errors).
fn compile_actions(ctx: &mut Ctx<'_>, raw: &RawRule, options: &CompileOptions) -> Actions {
    let delete = raw
        .delete
        .iter()
        .filter_map(|t| ctx.template(t, TemplateKind::KeyOrPattern, false))
        .collect();
    let tags = raw
        .tags
        .iter()
        .filter_map(|t| ctx.template(t, TemplateKind::Tag, false))
        .collect();
    let expire = raw
        .expire
        .iter()
        .filter_map(|e| compile_expire(ctx, e))
        .collect();
    let purge = raw
        .purge
        .iter()
        .filter_map(|p| compile_purge(ctx, p, options))
        .collect();
    let cascade = raw
        .cascade
        .iter()
        .filter_map(|c| compile_cascade(ctx, c))
        .collect();
    Actions {
        delete,
        tags,
        expire,
        purge,
        cascade,
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

fn compile_expire(ctx: &mut Ctx<'_>, e: &Spanned<RawExpire>) -> Option<ExpireSpec> {
    let key = ctx.template(&e.value.key, TemplateKind::Key, false);
    let ttl = ctx.duration(&e.value.ttl, "ttl");
    let jitter = ctx.jitter(&e.value.jitter);
    Some(ExpireSpec {
        key: key?,
        ttl: ttl?,
        jitter,
    })
}

fn compile_purge(
    ctx: &mut Ctx<'_>,
    p: &Spanned<RawPurge>,
    options: &CompileOptions,
) -> Option<PurgeSpec> {
    let target = p.value.target.value.clone();
    if let Some(targets) = &options.cdn_targets
        && !targets.contains(&target)
    {
        let known = if targets.is_empty() {
            "none is configured".to_owned()
        } else {
            format!("configured: {}", targets.join(", "))
        };
        ctx.err(
            &p.value.target.referenced,
            format!("purge target `{target}` is not configured as [cdn.{target}] ({known})"),
        );
    }
    if p.value.paths.is_empty() {
        ctx.err(&p.referenced, "purge needs at least one path");
    }
    let paths: Vec<Template> = p
        .value
        .paths
        .iter()
        .filter_map(|t| ctx.template(t, TemplateKind::Path, false))
        .collect();
    (paths.len() == p.value.paths.len()).then_some(PurgeSpec { target, paths })
}

fn compile_cascade(ctx: &mut Ctx<'_>, c: &Spanned<RawCascade>) -> Option<CascadeSpec> {
    let raw = &c.value;
    let emit = raw.emit.value.trim().to_owned();
    if emit.is_empty()
        || emit.contains(['*', '?', '[', ']'])
        || emit.chars().any(char::is_whitespace)
    {
        ctx.err(
            &raw.emit.referenced,
            format!("`emit: {emit}` must be one event type"),
        );
    }
    let item = raw.for_each_member_of.is_some();
    let set = raw
        .for_each_member_of
        .as_ref()
        .map(|s| ctx.template(s, TemplateKind::Key, false));
    let data = match &raw.data {
        Some(d) => {
            let mut bad = Vec::new();
            let tree = data_template(&DataValue::Map(d.value.clone()), item, &mut bad);
            for m in bad {
                ctx.err(&d.referenced, m);
            }
            tree
        }
        None => DataTemplate::Map(Vec::new()),
    };
    let for_each_member_of = match set {
        Some(Some(t)) => Some(t),
        Some(None) => return None,
        None => None,
    };
    Some(CascadeSpec {
        emit,
        data,
        for_each_member_of,
    })
}

fn data_template(v: &DataValue, item: bool, errors: &mut Vec<String>) -> DataTemplate {
    match v {
        DataValue::Text(s) if s.contains('{') || s.contains('}') => {
            match Template::compile(s, TemplateKind::Data, item) {
                Ok(t) => DataTemplate::Template(t),
                Err(e) => {
                    errors.push(format!("in cascade data `{s}`: {}", e.message));
                    DataTemplate::Literal(serde_json::Value::Null)
                }
            }
        }
        DataValue::Text(s) => DataTemplate::Literal(serde_json::Value::String(s.clone())),
        DataValue::Number(n) => DataTemplate::Literal(serde_json::Value::Number(n.clone())),
        DataValue::Bool(b) => DataTemplate::Literal(serde_json::Value::Bool(*b)),
        DataValue::Null => DataTemplate::Literal(serde_json::Value::Null),
        DataValue::List(items) => DataTemplate::List(
            items
                .iter()
                .map(|i| data_template(i, item, errors))
                .collect(),
        ),
        DataValue::Map(m) => DataTemplate::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), data_template(v, item, errors)))
                .collect(),
        ),
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
