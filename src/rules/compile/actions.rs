//! What a rule does: `delete`, `tags`, `expire`, `purge` and `cascade` (with its data tree),
//! compiled in that order, each error recorded through [`Ctx`].
//!
//! The rule as a whole (name, `on`, `when`, checks across fields) is compiled in the parent module.
//! Pure: no I/O, no tokio, no Redis.

use serde_saphyr::Spanned;

use super::{CompileOptions, Ctx};
use crate::rules::raw::{DataValue, RawCascade, RawExpire, RawPurge, RawRule};
use crate::rules::template::{Template, TemplateKind};
use crate::rules::{CascadeSpec, DataTemplate, ExpireSpec, PurgeSpec};

/// What a rule does, compiled (the fields of [`Rule`](crate::rules::Rule) of the same names).
pub(super) struct Actions {
    pub(super) delete: Vec<Template>,
    pub(super) tags: Vec<Template>,
    pub(super) expire: Vec<ExpireSpec>,
    pub(super) purge: Vec<PurgeSpec>,
    pub(super) cascade: Vec<CascadeSpec>,
}

/// `delete`, `tags`, `expire`, `purge` and `cascade`, in that order (the order of their errors).
pub(super) fn compile_actions(
    ctx: &mut Ctx<'_>,
    raw: &RawRule,
    options: &CompileOptions,
) -> Actions {
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
        emit: emit.into(),
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
