//! Template text → [`Template`]: literals and `{...}` placeholders (`name`, `a.b`, `a[0]`, `list[]`,
//! `items[].sku`, `event.id`, `item`), each syntax error at its byte offset in the text.
//!
//! Parsing only: what characters a kind of template may hold is decided in [`super::confine`], which
//! [`Template::compile`] calls last. No event is read here.

use super::{Root, Segment, Step, SyntaxError, Template, TemplateKind, Var};

/// A parse error inside a placeholder: the byte offset in the placeholder text and the message.
type VarError = (usize, String);

impl Template {
    /// Compiles `source` for `kind`. `item_allowed` is true inside a `for_each_member_of` cascade.
    pub fn compile(
        source: &str,
        kind: TemplateKind,
        item_allowed: bool,
    ) -> Result<Template, SyntaxError> {
        if source.is_empty() {
            return Err(syntax_error(0, "empty template"));
        }
        let template = Template {
            source: source.to_owned(),
            wildcard: false,
            segments: segments(source, item_allowed)?,
        };
        template.confine(kind)
    }
}

fn syntax_error(offset: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        offset,
        message: message.into(),
    }
}

/// Splits `source` into literal text and placeholders.
fn segments(source: &str, item_allowed: bool) -> Result<Vec<Segment>, SyntaxError> {
    let mut segments = Vec::new();
    let mut lit = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => {
                let (var, after) = placeholder(source, i, item_allowed)?;
                if !lit.is_empty() {
                    segments.push(Segment::Lit(std::mem::take(&mut lit)));
                }
                segments.push(Segment::Var(var));
                while chars.peek().is_some_and(|(j, _)| *j < after) {
                    chars.next();
                }
            }
            '}' => return Err(syntax_error(i, "`}` without an opening `{`")),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        segments.push(Segment::Lit(lit));
    }
    Ok(segments)
}

/// The placeholder whose `{` is at byte `open`, and the byte offset just past its `}`.
fn placeholder(source: &str, open: usize, item_allowed: bool) -> Result<(Var, usize), SyntaxError> {
    let start = open + 1;
    let Some(end) = source[start..].find('}') else {
        return Err(syntax_error(open, "`{` is not closed by `}`"));
    };
    let var = parse_var(&source[start..start + end]).map_err(|(o, m)| SyntaxError {
        offset: start + o,
        message: m,
    })?;
    if var.root == Root::Item && !item_allowed {
        return Err(syntax_error(
            start,
            "`{item}` is only defined in a cascade with `for_each_member_of`",
        ));
    }
    Ok((var, start + end + 1))
}

/// Parses the inside of `{...}`: `name`, `a.b`, `a[0]`, `list[]`, `items[].sku`, `event.id`, `item`.
fn parse_var(text: &str) -> Result<Var, VarError> {
    if text.is_empty() {
        return Err((0, "empty placeholder `{}`".into()));
    }
    let mut path = parse_path(text)?;
    let root = root_of(&path)?;
    if root != Root::Data {
        path.clear();
    }
    Ok(Var {
        text: text.to_owned(),
        root,
        path,
    })
}

/// `a.b[0].c[]` → the steps `a`, `b`, `0`, `c`, `[]`.
fn parse_path(text: &str) -> Result<Vec<Step>, VarError> {
    let bytes = text.as_bytes();
    let (first, mut i) = field_name(text, 0)?;
    let mut path = vec![Step::Key(first)];
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                let (name, next) = field_name(text, i + 1)?;
                path.push(Step::Key(name));
                i = next;
            }
            b'[' => {
                let (step, next) = index(text, i)?;
                path.push(step);
                i = next;
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
    Ok(path)
}

/// The field name starting at byte `start`, and the byte offset just past it.
fn field_name(text: &str, start: usize) -> Result<(String, usize), VarError> {
    let bytes = text.as_bytes();
    let mut j = start;
    while j < bytes.len()
        && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'-')
    {
        j += 1;
    }
    if j == start {
        return Err((start, format!("expected a field name in `{{{text}}}`")));
    }
    Ok((text[start..j].to_owned(), j))
}

/// The `[n]` or `[]` whose `[` is at byte `open`, and the byte offset just past its `]`.
fn index(text: &str, open: usize) -> Result<(Step, usize), VarError> {
    let Some(close) = text[open..].find(']') else {
        return Err((open, "`[` is not closed by `]`".into()));
    };
    let inner = &text[open + 1..open + close];
    let step = if inner.is_empty() {
        Step::Each
    } else {
        let n: usize = inner
            .parse()
            .map_err(|_| (open + 1, format!("`[{inner}]` is not a list index")))?;
        Step::Index(n)
    };
    Ok((step, open + close + 1))
}

/// Where a parsed path reads from: `event.id`, `event.type`, `event.source`, `item` or the data.
fn root_of(path: &[Step]) -> Result<Root, VarError> {
    match path {
        [Step::Key(e), Step::Key(f)] if e == "event" => match f.as_str() {
            "id" => Ok(Root::EventId),
            "type" => Ok(Root::EventType),
            "source" => Ok(Root::EventSource),
            other => Err((
                6,
                format!("`event.{other}` is not an envelope field (use id, type or source)"),
            )),
        },
        [Step::Key(e), ..] if e == "event" => Err((
            0,
            "`{event...}` reads one of event.id, event.type, event.source".into(),
        )),
        [Step::Key(i)] if i == "item" => Ok(Root::Item),
        _ => Ok(Root::Data),
    }
}
