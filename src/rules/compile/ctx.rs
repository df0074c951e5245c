//! Where a compile error points: [`Ctx`] records each error at the `file:line:column` of the YAML
//! value it is about (for a template, the character inside the scalar, past an opening quote), and
//! compiles the scalars every part of a rule shares: templates, durations, jitter.
//!
//! It decides no rule of its own beyond those scalars. Pure: no I/O, no tokio, no Redis.

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::rules::RuleError;
use crate::rules::raw::TemplateText;
use crate::rules::template::{SyntaxError, Template, TemplateKind};

/// The file being compiled and the errors found so far.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) errors: Vec<RuleError>,
}

impl Ctx<'_> {
    pub(super) fn err(&mut self, loc: &Location, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    /// An error at character `offset` inside the scalar that starts at `loc` (skipping an opening quote).
    pub(super) fn err_in_scalar(
        &mut self,
        loc: &Location,
        offset: usize,
        message: impl Into<String>,
    ) {
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

    pub(super) fn template(
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
                    format!(
                        "in `{}`: {message}",
                        crate::plan::key_text(t.value.0.as_bytes())
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
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

    pub(super) fn jitter(&mut self, s: &Option<Spanned<String>>) -> f64 {
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
