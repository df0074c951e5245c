//! `when:` conditions: CEL expressions over `event` (id, type, source, time) and `data`, compiled once.
//!
//! Pure: evaluation reads the event it is given and nothing else (no I/O, no tokio, no Redis).
//! The common shapes (comparisons of fields joined by `&&`, `||`, `!`) are answered by `native`
//! without the interpreter, where its answer is CEL's; everything else is CEL's.

mod native;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::event::{Data, Event};

/// A compiled condition.
pub struct Condition {
    source: String,
    program: Program,
    env: Arc<Env>,
    uses_event: bool,
    /// The top-level fields of `data` the expression reads (`data.x`, `has(data.x)`), or `None`
    /// when it reads `data` otherwise (`size(data)`, `data['x']`): only these are converted to
    /// CEL values for each event.
    data_fields: Option<Vec<String>>,
    /// The same expression, when it has a shape answered without CEL.
    native: Option<native::Native>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// The variables a condition can read.
const VARIABLES: [&str; 2] = ["event", "data"];

impl Condition {
    pub fn compile(source: &str, env: &Arc<Env>) -> Result<Condition, String> {
        let program = env
            .compile(source)
            .map_err(|e| e.to_string().trim().to_owned())?;
        let refs = program.references();
        // Variables that macros bind (`data.items.exists(i, i.sku == 'a')`) are not free.
        let bound = bound_names(&program.expression().expr);
        if let Some(unknown) = refs
            .variables()
            .into_iter()
            .find(|v| !VARIABLES.contains(v) && !bound.contains(*v))
        {
            return Err(format!(
                "unknown variable `{unknown}`: a condition reads `data` (the payload) and `event` \
                 (id, type, source, time)"
            ));
        }
        let uses_event = refs.has_variable("event");
        let data_fields = data_fields(&program.expression().expr);
        let native = native::Native::compile(&program.expression().expr);
        Ok(Condition {
            source: source.to_owned(),
            program,
            env: env.clone(),
            uses_event,
            data_fields,
            native,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The top-level fields of `data` the expression reads, or `None` when it reads `data` as a
    /// whole.
    pub fn data_fields(&self) -> Option<&[String]> {
        self.data_fields.as_deref()
    }

    /// Evaluates the condition; an error (a missing field, a non-boolean result) is permanent for
    /// this event.
    pub fn eval(&self, event: &Event) -> Result<bool, String> {
        match self.native.as_ref().and_then(|n| n.eval(event)) {
            Some(answer) => Ok(answer),
            None => self.eval_cel(event),
        }
    }

    /// [`Condition::eval`] by the CEL interpreter.
    fn eval_cel(&self, event: &Event) -> Result<bool, String> {
        let mut ctx = Context::with_env(self.env.clone());
        let data = match (&self.data_fields, &event.data) {
            (Some(fields), data) if data.is_object() => {
                let map = fields
                    .iter()
                    .filter_map(|f| Some((Key::from(f.as_str()), to_cel(data.get(f)?))))
                    .collect();
                Value::Map(Map { map: Arc::new(map) })
            }
            (_, Data::Whole(data)) => to_cel(data),
            (_, kept) => to_cel(&kept.to_value()),
        };
        ctx.add_variable_from_value("data", data);
        if self.uses_event {
            let mut env: HashMap<String, Value> = HashMap::new();
            env.insert("id".into(), event.id.to_string().into());
            env.insert("type".into(), event.kind.to_string().into());
            env.insert(
                "source".into(),
                event
                    .source
                    .as_deref()
                    .map(Value::from)
                    .unwrap_or(Value::Null),
            );
            let time = event.time.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
            env.insert("time".into(), time.map(Value::from).unwrap_or(Value::Null));
            ctx.add_variable_from_value("event", env);
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "condition `{}` gave {other:?}, not a boolean",
                self.source
            )),
            Err(e) => Err(format!("condition `{}`: {e}", self.source)),
        }
    }
}

/// Calls `f` on every node of `e`.
fn visit(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Select(s) => visit(&s.operand.expr, f),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                visit(&t.expr, f);
            }
            for a in &c.args {
                visit(&a.expr, f);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(&x.expr, f);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| visit(&x.expr, f)),
        Expr::Map(m) => m.entries.iter().for_each(|x| entry(&x.expr, f)),
        Expr::Struct(s) => s.entries.iter().for_each(|x| entry(&x.expr, f)),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry(e: &EntryExpr, f: &mut dyn FnMut(&Expr)) {
    match e {
        EntryExpr::StructField(x) => visit(&x.value.expr, f),
        EntryExpr::MapEntry(m) => {
            visit(&m.key.expr, f);
            visit(&m.value.expr, f);
        }
    }
}

/// The variables that macros (`exists`, `all`, `map`, ...) bind inside the expression.
fn bound_names(e: &Expr) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    visit(e, &mut |e| {
        if let Expr::Comprehension(c) = e {
            names.insert(c.iter_var.clone());
            names.insert(c.accu_var.clone());
            names.extend(c.iter_var2.clone());
        }
    });
    names
}

/// The top-level fields of `data` that `e` selects, or `None` when it uses `data` otherwise (or
/// binds a macro variable named `data`).
fn data_fields(e: &Expr) -> Option<Vec<String>> {
    let mut fields = BTreeSet::new();
    let (mut uses, mut selects) = (0, 0);
    visit(e, &mut |e| match e {
        Expr::Ident(name) if name == "data" => uses += 1,
        Expr::Select(s) if matches!(&s.operand.expr, Expr::Ident(n) if n == "data") => {
            selects += 1;
            fields.insert(s.field.clone());
        }
        _ => {}
    });
    (uses == selects && !bound_names(e).contains("data")).then(|| fields.into_iter().collect())
}

/// A JSON value as CEL sees it, as `cel::to_value` makes it (non-negative integers are `uint`,
/// negative ones `int`), without going through serde.
fn to_cel(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::UInt(u),
            (None, Some(i)) => Value::Int(i),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        J::Object(o) => Value::Map(Map {
            map: Arc::new(
                o.iter()
                    .map(|(k, v)| (Key::from(k.as_str()), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Arc<Env> {
        Arc::new(Env::stdlib())
    }

    fn ev(data: serde_json::Value) -> Event {
        Event {
            id: "e".into(),
            id_given: true,
            kind: "price.updated".into(),
            time: None,
            source: Some("pricing".into()),
            data: data.into(),
        }
    }

    #[test]
    fn evaluates_over_data_and_event() {
        let c = Condition::compile("data.new_price != data.old_price", &env()).unwrap();
        assert!(
            c.eval(&ev(json!({"new_price": 1, "old_price": 2})))
                .unwrap()
        );
        assert!(
            !c.eval(&ev(json!({"new_price": 2, "old_price": 2})))
                .unwrap()
        );
        let c = Condition::compile("event.source == 'pricing' && has(data.x)", &env()).unwrap();
        assert!(!c.eval(&ev(json!({}))).unwrap());
    }

    #[test]
    fn only_the_fields_read_are_converted_and_the_result_is_the_same() {
        let fields = |src: &str| Condition::compile(src, &env()).unwrap().data_fields;
        assert_eq!(
            fields("data.new_price != data.old_price"),
            Some(vec!["new_price".into(), "old_price".into()])
        );
        assert_eq!(
            fields("has(data.status) && data.items.exists(i, i.sku == 'a')"),
            Some(vec!["items".into(), "status".into()])
        );
        assert_eq!(fields("size(data) > 1"), None);
        assert_eq!(fields("data['a'] == 1"), None);
        assert_eq!(fields("[1].exists(data, data == 1)"), None, "shadowed");
        let data = json!({
            "n": 3, "neg": -2, "f": 1.5, "s": "x", "b": true, "z": null,
            "items": [{"sku": "a", "q": 1}], "m": {"k": [1, 2]}
        });
        for src in [
            "data.n == 3u && data.neg == -2 && data.f == 1.5 && data.s == 'x' && data.b",
            "data.z == null && data.items.exists(i, i.sku == 'a' && i.q == 1u)",
            "data.m.k[1] == 2u && has(data.m) && !has(data.absent)",
            "size(data) == 8",
        ] {
            let c = Condition::compile(src, &env()).unwrap();
            assert_eq!(c.eval(&ev(data.clone())), Ok(true), "{src}");
            // The same as converting the whole payload with serde.
            let mut ctx = Context::with_env(env());
            ctx.add_variable_from_value("data", cel::to_value(&data).unwrap());
            assert_eq!(c.program.execute(&ctx).unwrap(), Value::Bool(true), "{src}");
        }
    }

    /// Regression: `exists(i, ...)` was refused at compile time, `i` taken for an unknown variable.
    #[test]
    fn macro_variables_are_not_unknown_variables() {
        let c = Condition::compile("data.tags.exists(t, t == 'sale')", &env()).unwrap();
        assert_eq!(c.eval(&ev(json!({"tags": ["new", "sale"]}))), Ok(true));
        assert_eq!(c.eval(&ev(json!({"tags": ["new"]}))), Ok(false));
    }

    #[test]
    fn errors() {
        assert!(Condition::compile("data.a ==", &env()).is_err());
        let e = Condition::compile("request.x == 1", &env()).unwrap_err();
        assert!(e.contains("unknown variable `request`"), "{e}");
        let e = Condition::compile("data.items.exists(i, i.n == j)", &env()).unwrap_err();
        assert!(e.contains("unknown variable `j`"), "{e}");
        let c = Condition::compile("data.a", &env()).unwrap();
        assert!(
            c.eval(&ev(json!({"a": 1})))
                .unwrap_err()
                .contains("not a boolean")
        );
        let c = Condition::compile("data.missing > 1", &env()).unwrap();
        assert!(c.eval(&ev(json!({}))).is_err());
    }
}
