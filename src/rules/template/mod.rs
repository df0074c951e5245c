//! Templates such as `category:{category_ids[]}:page:*`, compiled once and rendered per event.
//!
//! This module owns the template types and their accessors; the work is split by job:
//! - `parse`: template text → segments (literals and `{...}` placeholders), with byte offsets
//!   for errors;
//! - `confine`: every confinement rule, and nowhere else: the literal checks per
//!   [`TemplateKind`] at compile time, [`SafeValues`] for values taken from events at render time,
//!   and [`glob_escape`];
//! - `render`: a compiled template and an event → strings (or JSON values for cascade data),
//!   with the `[]` fan-out bounded by `max_fanout`.
//!
//! Pure: no I/O, no tokio, no Redis. It reads the [`Event`] it is given and nothing else.

mod confine;
mod parse;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use crate::event::Event;

pub use confine::{DEFAULT_SAFE_VALUE, SafeValues, glob_escape};

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

    /// Adds the top-level fields of `data` that rendering reads to `out`; false if it read `data`
    /// other than by a field name (the parser refuses `{[0]}` today: kept exact for tomorrow).
    pub fn data_fields(&self, out: &mut BTreeSet<String>) -> bool {
        self.segments.iter().all(|seg| match seg {
            Segment::Var(Var {
                root: Root::Data,
                path,
                ..
            }) => match path.first() {
                Some(Step::Key(k)) => {
                    out.insert(k.clone());
                    true
                }
                _ => false,
            },
            _ => true,
        })
    }

    /// When the template is exactly one placeholder, renders keep the value's JSON type
    /// (an integer stays an integer in cascade data).
    pub fn single_var(&self) -> bool {
        matches!(&self.segments[..], [Segment::Var(_)])
    }
}
