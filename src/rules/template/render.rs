//! A compiled [`Template`] and an event → the strings it builds (or, for a single placeholder in
//! cascade data, the JSON values it reads), with the `[]` fan-out counted before anything is built
//! and bounded by `max_fanout`.
//!
//! Reads only the [`Scope`] it is given; every value it takes from the event goes through
//! [`SafeValues::is_safe`] (the rules live in [`super::confine`]). No I/O.

use serde_json::Value;

use crate::event::Data;

use super::{RenderError, Root, SafeValues, Scope, Segment, Step, Template, Var};

impl Template {
    /// Renders every output of the template (several with `[]` fan-outs) into `out`.
    pub fn render(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
        max_fanout: usize,
        out: &mut Vec<String>,
    ) -> Result<(), RenderError> {
        self.render_each(scope, safe, max_fanout, |s| out.push(s))
    }

    /// [`Template::render`], each output handed to `emit` as it is made: a template without `[]`
    /// (most of them) makes its one string and no list.
    pub fn render_each(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
        max_fanout: usize,
        mut emit: impl FnMut(String),
    ) -> Result<(), RenderError> {
        if max_fanout >= 1
            && let Some(one) = self.render_single(scope, safe)?
        {
            emit(one);
            return Ok(());
        }
        let mut all = Vec::new();
        self.render_all(scope, safe, max_fanout, &mut all)?;
        all.into_iter().for_each(emit);
        Ok(())
    }

    /// The general path of [`Template::render`]: every placeholder's values, then their product.
    pub(super) fn render_all(
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
        odometer(&parts, self.source.len() + 16, out);
        Ok(())
    }

    /// The one output of a template whose placeholders have no `[]` (most of them), built in
    /// place without the general path's lists; `None` for one with `[]`, which may give several
    /// or none. The same resolution, checks and first error as the general path.
    pub(super) fn render_single(
        &self,
        scope: Scope<'_>,
        safe: &SafeValues,
    ) -> Result<Option<String>, RenderError> {
        let mut s = String::with_capacity(self.source.len() + 16);
        for seg in &self.segments {
            let var = match seg {
                Segment::Lit(l) => {
                    s.push_str(l);
                    continue;
                }
                Segment::Var(var) if var.path.contains(&Step::Each) => return Ok(None),
                Segment::Var(var) => var,
            };
            match self.envelope(var, scope, safe) {
                Some(v) => s.push_str(v?),
                None => {
                    let v = walk_data(&scope.event.data, &var.path)
                        .map_err(|m| self.template_error(var, m))?;
                    self.push_checked(var, v, safe, &mut s)?;
                }
            }
        }
        Ok(Some(s))
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
            Root::Data => collect_data(&scope.event.data, &var.path, &mut leaves)
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
        if let Some(v) = self.envelope(var, scope, safe) {
            return Ok(vec![v?.to_owned()]);
        }
        let mut leaves = Vec::new();
        collect_data(&scope.event.data, &var.path, &mut leaves)
            .map_err(|m| self.template_error(var, m))?;
        leaves
            .into_iter()
            .map(|v| self.scalar(var, v, safe))
            .collect()
    }

    /// The checked value of a placeholder read from the envelope or the current member
    /// (`{event.id}`, `{item}`...); `None` for one read from `data`.
    fn envelope<'s>(
        &self,
        var: &Var,
        scope: Scope<'s>,
        safe: &SafeValues,
    ) -> Option<Result<&'s str, RenderError>> {
        let (value, what) = match &var.root {
            Root::Data => return None,
            Root::EventId => (Some(&*scope.event.id), "id"),
            Root::EventType => (Some(&*scope.event.kind), "type"),
            Root::EventSource => (scope.event.source.as_deref(), "source"),
            Root::Item => (scope.item, "current member"),
        };
        Some(match value {
            None => Err(self.template_error(var, format!("the event has no {what}"))),
            Some(v) if !safe.is_safe(v) => Err(self.unsafe_value(var, v)),
            Some(v) => Ok(v),
        })
    }

    fn scalar(&self, var: &Var, v: &Value, safe: &SafeValues) -> Result<String, RenderError> {
        let mut s = String::new();
        self.push_checked(var, v, safe, &mut s)?;
        Ok(s)
    }

    /// Appends a string or an integer from `data` as text, if it is safe; anything else is an
    /// error.
    fn push_checked(
        &self,
        var: &Var,
        v: &Value,
        safe: &SafeValues,
        s: &mut String,
    ) -> Result<(), RenderError> {
        let start = s.len();
        let mut digits = itoa::Buffer::new();
        let text = match v {
            Value::String(v) => Some(v.as_str()),
            // Integers as text without `fmt`'s machinery.
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Some(digits.format(u)),
                (None, Some(i)) => Some(digits.format(i)),
                (None, None) => None,
            },
            _ => None,
        };
        let Some(text) = text else {
            return Err(self.template_error(
                var,
                format!(
                    "`{}` is {}; only strings and integers can be used",
                    var.text,
                    crate::event::decode::kind_name(v)
                ),
            ));
        };
        s.push_str(text);
        if !safe.is_safe(&s[start..]) {
            return Err(self.unsafe_value(var, &s[start..]));
        }
        Ok(())
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
        (Step::Each, Value::Array(items)) => {
            for item in items {
                collect(item, rest, out)?;
            }
            Ok(())
        }
        _ => collect(one_step(step, value)?, rest, out),
    }
}

/// The value the first step of a data path (a field name: the parser begins every data path with
/// one) reads from the event's data, and the steps after it.
fn first_step<'v, 'p>(data: &'v Data, path: &'p [Step]) -> Result<(&'v Value, &'p [Step]), String> {
    match (data, path) {
        (Data::Whole(v), _) => Ok((v, path)),
        (kept, [Step::Key(k), rest @ ..]) => match kept.get(k) {
            Some(v) if !v.is_null() => Ok((v, rest)),
            _ => Err(no_field(k)),
        },
        // Kept fields are an object, which has no index (and no path begins without a name).
        (_, _) => Err("`[]` needs a list, found an object".into()),
    }
}

/// [`walk`] from the event's data.
fn walk_data<'v>(data: &'v Data, path: &[Step]) -> Result<&'v Value, String> {
    let (value, rest) = first_step(data, path)?;
    walk(value, rest)
}

/// [`collect`] from the event's data.
fn collect_data<'v>(data: &'v Data, path: &[Step], out: &mut Vec<&'v Value>) -> Result<(), String> {
    let (value, rest) = first_step(data, path)?;
    collect(value, rest, out)
}

fn no_field(name: &str) -> String {
    format!("no field `{name}` in the event data")
}

/// Walks a `path` without `[]` from `value` to its one leaf.
fn walk<'v>(value: &'v Value, path: &[Step]) -> Result<&'v Value, String> {
    path.iter().try_fold(value, |v, step| one_step(step, v))
}

/// One step that is not a `[]` over a list: a field or an index.
fn one_step<'v>(step: &Step, value: &'v Value) -> Result<&'v Value, String> {
    match (step, value) {
        (Step::Key(k), Value::Object(map)) => match map.get(k) {
            Some(v) if !v.is_null() => Ok(v),
            _ => Err(no_field(k)),
        },
        (Step::Key(k), other) => Err(format!(
            "cannot read `{k}` from {}",
            crate::event::decode::kind_name(other)
        )),
        (Step::Index(i), Value::Array(items)) => items
            .get(*i)
            .ok_or_else(|| format!("index {i} is past the end of a list of {}", items.len())),
        (Step::Index(_) | Step::Each, other) => Err(format!(
            "`[]` needs a list, found {}",
            crate::event::decode::kind_name(other)
        )),
    }
}

/// Pushes every concatenation of one value from each part, the last part varying fastest.
/// Every part must be non-empty.
fn odometer(parts: &[Vec<String>], capacity: usize, out: &mut Vec<String>) {
    let mut idx = vec![0usize; parts.len()];
    loop {
        let mut s = String::with_capacity(capacity);
        for (p, &i) in parts.iter().zip(&idx) {
            s.push_str(&p[i]);
        }
        out.push(s);
        let mut k = parts.len();
        loop {
            if k == 0 {
                return;
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
