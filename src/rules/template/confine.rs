//! Confinement of values taken from events (docs/rules.md), enforced here and nowhere else:
//! - at compile time, the literal parts are checked for the kind of string they build (a key, a
//!   pattern, a tag, a CDN path): glob characters only where a pattern allows them, a literal prefix of
//!   at least 3 characters before the first placeholder of a pattern delete;
//! - at render time, every value taken from an event must be a string or an integer matching the safe
//!   pattern, and can never hold `*`, `?`, `[`, `]`, `/`, `\`, `{`, `}`, whitespace or control
//!   characters, nor be `.` or `..`, whatever pattern is configured. So no event can widen a pattern
//!   delete, a tag or a CDN path.
//!
//! Also [`glob_escape`], for the planner's own `MATCH` patterns. This file decides what is allowed;
//! it does not parse templates nor read events (the renderer calls [`SafeValues::is_safe`]).

use regex::Regex;

use super::{Segment, SyntaxError, Template, TemplateKind};

/// The default safe pattern for values taken from events.
pub const DEFAULT_SAFE_VALUE: &str = r"^[A-Za-z0-9_.:@~+=-]{1,128}$";

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

impl Template {
    /// Checks the literal parts for `kind`; sets `wildcard`.
    pub(super) fn confine(mut self, kind: TemplateKind) -> Result<Template, SyntaxError> {
        let src = &self.source;
        let ends_with_star = src.ends_with('*');
        check_characters(src, kind)?;
        if kind == TemplateKind::Path && !src.starts_with('/') {
            return Err(SyntaxError {
                offset: 0,
                message: "a CDN path must start with `/`".into(),
            });
        }
        if kind == TemplateKind::KeyOrPattern && ends_with_star {
            self.check_pattern_prefix()?;
        }
        self.wildcard = ends_with_star && kind != TemplateKind::Data;
        Ok(self)
    }

    /// A pattern delete needs at least 3 literal characters before its first placeholder.
    fn check_pattern_prefix(&self) -> Result<(), SyntaxError> {
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
        Ok(())
    }
}

/// No whitespace (except in cascade data); no control characters, except in the literal text of a
/// key or a tag (a rule's own bytes: Symfony's tag keys hold NUL bytes), never in a placeholder;
/// glob characters outside placeholders only as the final `*` of a pattern delete or a CDN path.
fn check_characters(src: &str, kind: TemplateKind) -> Result<(), SyntaxError> {
    let mut in_var = false;
    let bytes_allowed = matches!(
        kind,
        TemplateKind::Key | TemplateKind::KeyOrPattern | TemplateKind::Tag
    );
    for (i, c) in src.char_indices() {
        match c {
            '{' => in_var = true,
            '}' => in_var = false,
            _ => {}
        }
        let whitespace = c.is_whitespace() && kind != TemplateKind::Data;
        let literal_byte = bytes_allowed && !in_var && !c.is_whitespace();
        let control = c.is_control() && !literal_byte;
        if whitespace || control {
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
    Ok(())
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
