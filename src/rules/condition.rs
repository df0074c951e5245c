//! `when:` conditions: CEL expressions over `event` (id, type, source, time) and `data`, compiled once.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};

use crate::event::Event;

/// A compiled condition.
pub struct Condition {
    source: String,
    program: Program,
    env: Arc<Env>,
    uses_event: bool,
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
        if let Some(unknown) = refs
            .variables()
            .into_iter()
            .find(|v| !VARIABLES.contains(v))
        {
            return Err(format!(
                "unknown variable `{unknown}`: a condition reads `data` (the payload) and `event` \
                 (id, type, source, time)"
            ));
        }
        let uses_event = refs.has_variable("event");
        Ok(Condition {
            source: source.to_owned(),
            program,
            env: env.clone(),
            uses_event,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition; an error (a missing field, a non-boolean result) is permanent for
    /// this event.
    pub fn eval(&self, event: &Event) -> Result<bool, String> {
        let mut ctx = Context::with_env(self.env.clone());
        let data = cel::to_value(&event.data).map_err(|e| e.to_string())?;
        ctx.add_variable_from_value("data", data);
        if self.uses_event {
            let mut env: HashMap<String, Value> = HashMap::new();
            env.insert("id".into(), event.id.clone().into());
            env.insert("type".into(), event.kind.clone().into());
            env.insert(
                "source".into(),
                event.source.clone().map(Value::from).unwrap_or(Value::Null),
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
            data,
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
    fn errors() {
        assert!(Condition::compile("data.a ==", &env()).is_err());
        let e = Condition::compile("request.x == 1", &env()).unwrap_err();
        assert!(e.contains("unknown variable `request`"), "{e}");
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
