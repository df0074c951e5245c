//! Templates such as `category:{category_ids[]}:page:*`, compiled once and rendered per event.
//!
//! Confinement (SPEC §3) is enforced here and nowhere else:
//! - at compile time, the literal parts are checked for the kind of string they build (a key, a
//!   pattern, a tag, a CDN path): glob characters only where a pattern allows them, a literal prefix of
//!   at least 3 characters before the first placeholder of a pattern delete;
//! - at render time, every value taken from an event must be a string or an integer matching the safe
//!   pattern, and can never hold `*`, `?`, `[`, `]`, `/`, `\`, `{`, `}`, whitespace or control
//!   characters, nor be `.` or `..`, whatever pattern is configured. So no event can widen a pattern
//!   delete, a tag or a CDN path.

use std::fmt;

use regex::Regex;
use serde_json::Value;

use crate::event::Event;

/// The default safe pattern for values taken from events.
pub const DEFAULT_SAFE_VALUE: &str = r"^[A-Za-z0-9_.:@~+=-]{1,128}$";

/// What a template builds; decides which literal characters it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// An exact Redis key (delete, expire, a `for_each_member_of` set).
    Key,
    /// A delete that may end in `*` (then a pattern delete).
    KeyOrPattern,
    /// A tag name.
    Tag,
    /// A CDN path.
    Path,
    /// A string value in cascade data.
    Data,
}

/// The value checks applied to everything taken from an event.
#[derive(Debug, Clone)]
pub struct SafeValues {
    pattern: Regex,
    is_default: bool,
}

impl Default for SafeValues {
    fn default() -> Self {
        SafeValues::new(DEFAULT_SAFE_VALUE).expect("the default safe pattern compiles")
    }
}

impl SafeValues {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Ok(SafeValues {
            pattern: Regex::new(pattern)?,
            is_default: pattern == DEFAULT_SAFE_VALUE,
        })
    }

    /// True when `value` may appear in a key, tag or path.
    pub fn is_safe(&self, value: &str) -> bool {
        if value.is_empty() || value == "." || value == ".." {
            return false;
        }
        if self.is_default {
            // The same check as the default regex, without running it on the hot path.
            return value.len() <= 128
                && value.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'_' | b'.' | b':' | b'@' | b'~' | b'+' | b'=' | b'-')
                });
        }
        !value.chars().any(is_forbidden) && self.pattern.is_match(value)
    }
}

/// Characters no value from an event may ever hold, whatever the configured pattern says.
fn is_forbidden(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '/' | '\\' | '{' | '}')
        || c.is_whitespace()
        || c.is_control()
}

/// Where a value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    Data,
    EventId,
    EventType,
    EventSource,
    Item,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    Each,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    text: String,
    root: Root,
    path: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Lit(String),
    Var(Var),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
    /// Ends with a `*` that makes it a pattern (only for [`TemplateKind::KeyOrPattern`] and paths).
    wildcard: bool,
}

/// A template that does not compile; `offset` is the byte offset in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

/// Why an event cannot be rendered. Permanent for that event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "template `{template}`: value {value} of `{{{var}}}` is not safe in a key, tag or path"
    )]
    UnsafeValue {
        template: String,
        var: String,
        value: String,
    },
    #[error("template `{template}`: {message}")]
    Template { template: String, message: String },
    #[error("template `{template}` expands to {count} values, over max_fanout {limit}")]
    FanoutExceeded {
        template: String,
        count: u128,
        limit: usize,
    },
}

impl RenderError {
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::UnsafeValue { .. } => "unsafe_value",
            RenderError::Template { .. } => "template_error",
            RenderError::FanoutExceeded { .. } => "fanout_exceeded",
        }
    }
}

/// What a template can read while rendering.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub event: &'a Event,
    pub item: Option<&'a str>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    /// Compiles `source` for `kind`. `item_allowed` is true inside a `for_each_member_of` cascade.
    pub fn compile(
        source: &str,
        kind: TemplateKind,
        item_allowed: bool,
    ) -> Result<Template, SyntaxError> {
        let err = |offset: usize, message: String| Err(SyntaxError { offset, message });
        if source.is_empty() {
            return err(0, "empty template".into());
        }
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' => {
                    let start = i + 1;
                    let Some(end) = source[start..].find('}') else {
                        return err(i, "`{` is not closed by `}`".into());
                    };
                    let text = &source[start..start + end];
                    let var = parse_var(text).map_err(|(o, m)| SyntaxError {
                        offset: start + o,
                        message: m,
                    })?;
                    if var.root == Root::Item && !item_allowed {
                        return err(
                            start,
                            "`{item}` is only defined in a cascade with `for_each_member_of`"
                                .into(),
                        );
                    }
                    if !lit.is_empty() {
                        segments.push(Segment::Lit(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Var(var));
                    while chars.peek().is_some_and(|(j, _)| *j < start + end + 1) {
                        chars.next();
                    }
                }
                '}' => return err(i, "`}` without an opening `{`".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit));
        }
        let template = Template {
            source: source.to_owned(),
            wildcard: false,
            segments,
        };
        template.confine(kind)
    }

    /// Checks the literal parts for `kind`; sets `wildcard`.
    fn confine(mut self, kind: TemplateKind) -> Result<Template, SyntaxError> {
        let src = &self.source;
        let ends_with_star = src.ends_with('*');
        let mut in_var = false;
        for (i, c) in src.char_indices() {
            match c {
                '{' => in_var = true,
                '}' => in_var = false,
                _ => {}
            }
            if c.is_control() || (c.is_whitespace() && kind != TemplateKind::Data) {
                return Err(SyntaxError {
                    offset: i,
                    message: "whitespace and control characters are not allowed here".into(),
                });
            }
            let glob = matches!(c, '*' | '?' | '[' | ']');
            if glob && !in_var && kind != TemplateKind::Data {
                let last_star = c == '*' && i == src.len() - 1;
                let allowed =
                    last_star && matches!(kind, TemplateKind::KeyOrPattern | TemplateKind::Path);
                if !allowed {
                    let message = match kind {
                        TemplateKind::KeyOrPattern | TemplateKind::Path if c == '*' => {
                            "a `*` may only be the last character".to_string()
                        }
                        _ => format!("`{c}` is not allowed here (no globs in keys, tags or sets)"),
                    };
                    return Err(SyntaxError { offset: i, message });
                }
            }
        }
        if kind == TemplateKind::Path && !src.starts_with('/') {
            return Err(SyntaxError {
                offset: 0,
                message: "a CDN path must start with `/`".into(),
            });
        }
        if kind == TemplateKind::KeyOrPattern && ends_with_star {
            let prefix_len = match self.segments.first() {
                Some(Segment::Lit(l)) => {
                    if self.segments.len() == 1 {
                        l.len() - 1
                    } else {
                        l.len()
                    }
                }
                _ => 0,
            };
            if prefix_len < 3 {
                return Err(SyntaxError {
                    offset: 0,
                    message: "a pattern delete needs a literal prefix of at least 3 characters \
                              before the first placeholder (consider tags instead)"
                        .into(),
                });
            }
        }
        self.wildcard = ends_with_star && kind != TemplateKind::Data;
        Ok(self)
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True for a pattern (ends with `*`).
    pub fn is_pattern(&self) -> bool {
        self.wildcard
    }

    /// True when rendering reads nothing from the event.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    /// When the template is exactly one placeholder, renders keep the value's JSON type
    /// (an integer stays an integer in cascade data).
    pub fn single_var(&self) -> bool {
        matches!(&self.segments[..], [Segment::Var(_)])
    }

    /// Renders every output of the template (several with `[]` fan-outs) into `out`.
    pub fn render(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
        max_fanout: usize,
        out: &mut Vec<String>,
    ) -> Result<(), RenderError> {
        // Resolve every placeholder to its values first, so the product is known before building.
        let mut parts: Vec<Vec<String>> = Vec::with_capacity(self.segments.len());
        let mut total: u128 = 1;
        for seg in &self.segments {
            let values = match seg {
                Segment::Lit(l) => vec![l.clone()],
                Segment::Var(var) => self.resolve(var, scope, safe)?,
            };
            total = total.saturating_mul(values.len() as u128);
            parts.push(values);
        }
        if total > max_fanout as u128 {
            return Err(RenderError::FanoutExceeded {
                template: self.source.clone(),
                count: total,
                limit: max_fanout,
            });
        }
        if total == 0 {
            return Ok(());
        }
        // Odometer over the parts.
        let mut idx = vec![0usize; parts.len()];
        loop {
            let mut s = String::with_capacity(self.source.len() + 16);
            for (p, &i) in parts.iter().zip(&idx) {
                s.push_str(&p[i]);
            }
            out.push(s);
            let mut k = parts.len();
            loop {
                if k == 0 {
                    return Ok(());
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < parts[k].len() {
                    break;
                }
                idx[k] = 0;
            }
        }
    }

    /// Renders a template that must give exactly one value (cascade data, sets).
    pub fn render_one(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
        max_fanout: usize,
    ) -> Result<Vec<String>, RenderError> {
        let mut out = Vec::new();
        self.render(scope, safe, max_fanout, &mut out)?;
        Ok(out)
    }

    /// The JSON value of a single-placeholder template (for cascade data).
    pub fn render_value(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
    ) -> Result<Vec<Value>, RenderError> {
        let [Segment::Var(var)] = &self.segments[..] else {
            unreachable!("render_value is only called on single placeholders")
        };
        let mut leaves = Vec::new();
        let owned;
        match &var.root {
            Root::Data => collect(&scope.event.data, &var.path, &mut leaves)
                .map_err(|m| self.template_error(var, m))?,
            _ => {
                owned = Value::String(self.resolve(var, scope, safe)?.remove(0));
                leaves.push(&owned);
            }
        }
        leaves
            .into_iter()
            .map(|v| {
                self.scalar(var, v, safe)?;
                Ok(v.clone())
            })
            .collect()
    }

    fn resolve(
        &self,
        var: &Var,
        scope: Scope<'_>,
        safe: &SafeValues,
    ) -> Result<Vec<String>, RenderError> {
        let direct = |v: Option<&str>, what: &str| -> Result<Vec<String>, RenderError> {
            let Some(v) = v else {
                return Err(self.template_error(var, format!("the event has no {what}")));
            };
            if !safe.is_safe(v) {
                return Err(self.unsafe_value(var, v));
            }
            Ok(vec![v.to_owned()])
        };
        match &var.root {
            Root::EventId => direct(Some(&scope.event.id), "id"),
            Root::EventType => direct(Some(&scope.event.kind), "type"),
            Root::EventSource => direct(scope.event.source.as_deref(), "source"),
            Root::Item => direct(scope.item, "current member"),
            Root::Data => {
                let mut leaves = Vec::new();
                collect(&scope.event.data, &var.path, &mut leaves)
                    .map_err(|m| self.template_error(var, m))?;
                leaves
                    .into_iter()
                    .map(|v| self.scalar(var, v, safe))
                    .collect()
            }
        }
    }

    fn scalar(&self, var: &Var, v: &Value, safe: &SafeValues) -> Result<String, RenderError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                return Err(self.template_error(
                    var,
                    format!(
                        "`{}` is {}; only strings and integers can be used",
                        var.text,
                        crate::event::decode::kind_name(other)
                    ),
                ));
            }
        };
        if !safe.is_safe(&s) {
            return Err(self.unsafe_value(var, &s));
        }
        Ok(s)
    }

    fn template_error(&self, _var: &Var, message: String) -> RenderError {
        RenderError::Template {
            template: self.source.clone(),
            message,
        }
    }

    fn unsafe_value(&self, var: &Var, value: &str) -> RenderError {
        RenderError::UnsafeValue {
            template: self.source.clone(),
            var: var.text.clone(),
            value: shown(value),
        }
    }
}

/// A value as shown in an error: quoted, escaped, at most 64 characters.
fn shown(value: &str) -> String {
    let mut s: String = value.chars().take(64).collect();
    if s.len() < value.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// Walks `path` from `value`, pushing every leaf (several through `[]`).
fn collect<'v>(value: &'v Value, path: &[Step], out: &mut Vec<&'v Value>) -> Result<(), String> {
    let Some((step, rest)) = path.split_first() else {
        out.push(value);
        return Ok(());
    };
    match (step, value) {
        (Step::Key(k), Value::Object(map)) => match map.get(k) {
            Some(v) if !v.is_null() => collect(v, rest, out),
            _ => Err(format!("no field `{k}` in the event data")),
        },
        (Step::Key(k), other) => Err(format!(
            "cannot read `{k}` from {}",
            crate::event::decode::kind_name(other)
        )),
        (Step::Index(i), Value::Array(items)) => match items.get(*i) {
            Some(v) => collect(v, rest, out),
            None => Err(format!(
                "index {i} is past the end of a list of {}",
                items.len()
            )),
        },
        (Step::Each, Value::Array(items)) => {
            for item in items {
                collect(item, rest, out)?;
            }
            Ok(())
        }
        (Step::Index(_) | Step::Each, other) => Err(format!(
            "`[]` needs a list, found {}",
            crate::event::decode::kind_name(other)
        )),
    }
}

/// Parses the inside of `{...}`: `name`, `a.b`, `a[0]`, `list[]`, `items[].sku`, `event.id`, `item`.
fn parse_var(text: &str) -> Result<Var, (usize, String)> {
    if text.is_empty() {
        return Err((0, "empty placeholder `{}`".into()));
    }
    let mut path = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let ident = |i: usize| -> Result<(String, usize), (usize, String)> {
        let start = i;
        let mut j = i;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'-')
        {
            j += 1;
        }
        if j == start {
            return Err((start, format!("expected a field name in `{{{text}}}`")));
        }
        Ok((text[start..j].to_owned(), j))
    };
    let (first, next) = ident(i)?;
    path.push(Step::Key(first));
    i = next;
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                let (name, next) = ident(i + 1)?;
                path.push(Step::Key(name));
                i = next;
            }
            b'[' => {
                let Some(close) = text[i..].find(']') else {
                    return Err((i, "`[` is not closed by `]`".into()));
                };
                let inner = &text[i + 1..i + close];
                if inner.is_empty() {
                    path.push(Step::Each);
                } else {
                    let n: usize = inner
                        .parse()
                        .map_err(|_| (i + 1, format!("`[{inner}]` is not a list index")))?;
                    path.push(Step::Index(n));
                }
                i += close + 1;
            }
            _ => {
                return Err((
                    i,
                    format!(
                        "unexpected `{}` in `{{{text}}}`",
                        text[i..].chars().next().unwrap_or('?')
                    ),
                ));
            }
        }
    }
    let root = match &path[..] {
        [Step::Key(e), Step::Key(f)] if e == "event" => match f.as_str() {
            "id" => Root::EventId,
            "type" => Root::EventType,
            "source" => Root::EventSource,
            other => {
                return Err((
                    6,
                    format!("`event.{other}` is not an envelope field (use id, type or source)"),
                ));
            }
        },
        [Step::Key(e), ..] if e == "event" => {
            return Err((
                0,
                "`{event...}` reads one of event.id, event.type, event.source".into(),
            ));
        }
        [Step::Key(i)] if i == "item" => Root::Item,
        _ => Root::Data,
    };
    if root != Root::Data {
        path.clear();
    }
    Ok(Var {
        text: text.to_owned(),
        root,
        path,
    })
}

/// Escapes the glob characters of a Redis `MATCH` pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Value) -> Event {
        Event {
            id: "ev-1".into(),
            id_given: true,
            kind: "price.updated".into(),
            time: None,
            source: Some("pricing".into()),
            data,
        }
    }

    fn render(src: &str, kind: TemplateKind, data: Value) -> Result<Vec<String>, RenderError> {
        let t = Template::compile(src, kind, true).unwrap();
        let e = event(data);
        t.render_one(
            Scope {
                event: &e,
                item: Some("m1"),
            },
            &SafeValues::default(),
            1000,
        )
    }

    #[test]
    fn renders_fields_paths_and_envelope() {
        let d = json!({"product_id": 42, "a": {"b": "x"}, "l": ["p", "q"]});
        assert_eq!(
            render("price:{product_id}", TemplateKind::Key, d.clone()).unwrap(),
            ["price:42"]
        );
        assert_eq!(
            render("k:{a.b}:{l[1]}", TemplateKind::Key, d.clone()).unwrap(),
            ["k:x:q"]
        );
        assert_eq!(
            render(
                "{event.type}/{event.id}/{event.source}/{item}",
                TemplateKind::Data,
                d
            )
            .unwrap(),
            ["price.updated/ev-1/pricing/m1"]
        );
    }

    #[test]
    fn fan_out_and_products() {
        let d = json!({"c": ["a", "b"], "p": [1, 2, 3], "items": [{"sku": "s1"}, {"sku": "s2"}]});
        assert_eq!(
            render(
                "category:{c[]}:page:*",
                TemplateKind::KeyOrPattern,
                d.clone()
            )
            .unwrap(),
            ["category:a:page:*", "category:b:page:*"]
        );
        assert_eq!(
            render("x:{c[]}:{p[]}", TemplateKind::Key, d.clone())
                .unwrap()
                .len(),
            6
        );
        assert_eq!(
            render("sku:{items[].sku}", TemplateKind::Key, d.clone()).unwrap(),
            ["sku:s1", "sku:s2"]
        );
        assert!(
            render("x:{none[]}", TemplateKind::Key, json!({"none": []}))
                .unwrap()
                .is_empty()
        );
        let big = json!({"l": (0..2000).collect::<Vec<_>>()});
        assert_eq!(
            render("x:{l[]}", TemplateKind::Key, big)
                .unwrap_err()
                .reason(),
            "fanout_exceeded"
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        for bad in [
            "*", "?", "[a]", "../x", "a b", "a\r\nb", ".", "..", "a/b", "{x}", "\u{0}", "é",
        ] {
            let err = render("price:{v}", TemplateKind::Key, json!({"v": bad})).unwrap_err();
            assert_eq!(err.reason(), "unsafe_value", "{bad:?}");
        }
        let long = "a".repeat(10_000);
        assert_eq!(
            render("price:{v}", TemplateKind::Key, json!({"v": long}))
                .unwrap_err()
                .reason(),
            "unsafe_value"
        );
        for bad in [json!(1.5), json!(true), json!({"a": 1}), json!([1])] {
            assert_eq!(
                render("p:{v}", TemplateKind::Key, json!({"v": bad}))
                    .unwrap_err()
                    .reason(),
                "template_error"
            );
        }
        assert_eq!(
            render("p:{v}", TemplateKind::Key, json!({}))
                .unwrap_err()
                .reason(),
            "template_error"
        );
        assert_eq!(
            render("p:{v}", TemplateKind::Key, json!({"v": null}))
                .unwrap_err()
                .reason(),
            "template_error"
        );
    }

    #[test]
    fn configured_pattern_cannot_allow_globs() {
        let permissive = SafeValues::new(".*").unwrap();
        assert!(permissive.is_safe("a!b#"));
        for bad in ["*", "a?", "[x]", "a/b", "a b\n", "..", "{"] {
            assert!(!permissive.is_safe(bad), "{bad:?}");
        }
        let strict = SafeValues::new("^[0-9]+$").unwrap();
        assert!(strict.is_safe("42"));
        assert!(!strict.is_safe("a"));
    }

    #[test]
    fn compile_errors_point_at_the_offset() {
        let e = Template::compile("price:{product_id", TemplateKind::Key, false).unwrap_err();
        assert_eq!(e.offset, 6);
        let e = Template::compile("price:{}", TemplateKind::Key, false).unwrap_err();
        assert_eq!(e.offset, 7);
        let e = Template::compile("a*b", TemplateKind::KeyOrPattern, false).unwrap_err();
        assert!(e.message.contains("last character"), "{e:?}");
        let e = Template::compile("ab{x}*", TemplateKind::KeyOrPattern, false).unwrap_err();
        assert!(e.message.contains("at least 3"), "{e:?}");
        assert!(
            Template::compile("abc{x}*", TemplateKind::KeyOrPattern, false)
                .unwrap()
                .is_pattern()
        );
        assert!(Template::compile("key:*", TemplateKind::Key, false).is_err());
        assert!(Template::compile("tag?", TemplateKind::Tag, false).is_err());
        assert!(Template::compile("products/{id}", TemplateKind::Path, false).is_err());
        assert!(
            Template::compile("/p/{id}/*", TemplateKind::Path, false)
                .unwrap()
                .is_pattern()
        );
        assert!(Template::compile("k:{item}", TemplateKind::Key, false).is_err());
        assert!(Template::compile("k:{event.time}", TemplateKind::Key, false).is_err());
        assert!(Template::compile("k:{a[x]}", TemplateKind::Key, false).is_err());
        assert!(Template::compile("k:{a b}", TemplateKind::Key, false).is_err());
    }

    #[test]
    fn glob_escape_escapes_every_glob_character() {
        assert_eq!(glob_escape(r"a*b?c[d]e\"), r"a\*b\?c\[d\]e\\");
    }
}
