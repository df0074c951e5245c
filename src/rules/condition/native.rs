//! The common conditions answered without the CEL interpreter: `&&`, `||`, `!`, `has(data.f)` and
//! comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`) of `data.f`, `event.id`/`type`/`source` and
//! literals, such as `data.new_price != data.old_price`.
//!
//! An answer is CEL's answer or none at all: where a value is missing, of another type than the
//! value it is compared with, or not a scalar, [`Native::eval`] gives `None` and the condition is
//! evaluated by CEL, which then gives its own result or error. Building a CEL context and
//! converting the fields for each event was most of a condition's cost (16% of a shipped replay).

use cel::common::ast::{Expr, LiteralValue, operators};
use serde_json::Value as Json;

use crate::event::Event;

/// A condition of the supported shape, compiled.
#[derive(Debug)]
pub(super) enum Native {
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
    Not(Box<Native>),
    /// `has(data.f)`.
    Has(String),
    Compare(Op, Operand, Operand),
    /// A value read as a boolean (`data.in_stock`, `true`).
    Truth(Operand),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug)]
pub(super) enum Operand {
    Data(String),
    EventId,
    EventType,
    EventSource,
    Literal(Scalar<'static>),
}

/// A scalar as CEL sees it (a JSON number is `uint` when it is a non-negative integer, `int` when
/// a negative one, `double` otherwise).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(std::borrow::Cow<'a, str>),
}

impl Native {
    /// The supported form of `e`, if it has one.
    pub(super) fn compile(e: &Expr) -> Option<Native> {
        Some(match e {
            Expr::Call(c) if c.target.is_none() => {
                let arg = |i: usize| c.args.get(i).map(|a| &a.expr);
                match (c.func_name.as_str(), c.args.len()) {
                    (operators::LOGICAL_AND, 2) => Native::And(
                        Box::new(Native::compile(arg(0)?)?),
                        Box::new(Native::compile(arg(1)?)?),
                    ),
                    (operators::LOGICAL_OR, 2) => Native::Or(
                        Box::new(Native::compile(arg(0)?)?),
                        Box::new(Native::compile(arg(1)?)?),
                    ),
                    (operators::LOGICAL_NOT, 1) => Native::Not(Box::new(Native::compile(arg(0)?)?)),
                    (name, 2) => {
                        let op = match name {
                            operators::EQUALS => Op::Eq,
                            operators::NOT_EQUALS => Op::Ne,
                            operators::LESS => Op::Lt,
                            operators::LESS_EQUALS => Op::Le,
                            operators::GREATER => Op::Gt,
                            operators::GREATER_EQUALS => Op::Ge,
                            _ => return None,
                        };
                        Native::Compare(op, operand(arg(0)?)?, operand(arg(1)?)?)
                    }
                    _ => return None,
                }
            }
            Expr::Select(s) if s.test => match &s.operand.expr {
                Expr::Ident(d) if d == "data" => Native::Has(s.field.clone()),
                _ => return None,
            },
            other => Native::Truth(operand(other)?),
        })
    }

    /// CEL's result when this answers it; `None` leaves the condition to CEL.
    pub(super) fn eval(&self, event: &Event) -> Option<bool> {
        match self {
            // CEL's `false && x` is false whatever `x` gives (an error too), and so on.
            Native::And(a, b) => match a.eval(event)? {
                false => Some(false),
                true => b.eval(event),
            },
            Native::Or(a, b) => match a.eval(event)? {
                true => Some(true),
                false => b.eval(event),
            },
            Native::Not(a) => a.eval(event).map(|b| !b),
            Native::Has(f) => event.data.is_object().then(|| event.data.get(f).is_some()),
            Native::Truth(o) => match o.value(event)? {
                Scalar::Bool(b) => Some(b),
                _ => None,
            },
            Native::Compare(op, a, b) => compare(*op, &a.value(event)?, &b.value(event)?),
        }
    }
}

fn operand(e: &Expr) -> Option<Operand> {
    Some(match e {
        Expr::Select(s) if !s.test => match (&s.operand.expr, s.field.as_str()) {
            (Expr::Ident(d), f) if d == "data" => Operand::Data(f.to_owned()),
            (Expr::Ident(v), "id") if v == "event" => Operand::EventId,
            (Expr::Ident(v), "type") if v == "event" => Operand::EventType,
            (Expr::Ident(v), "source") if v == "event" => Operand::EventSource,
            _ => return None,
        },
        Expr::Literal(l) => Operand::Literal(match l {
            LiteralValue::Null => Scalar::Null,
            LiteralValue::Boolean(b) => Scalar::Bool(*b.inner()),
            LiteralValue::Int(i) => Scalar::Int(*i.inner()),
            LiteralValue::UInt(u) => Scalar::UInt(*u.inner()),
            LiteralValue::Double(d) => Scalar::Float(*d.inner()),
            LiteralValue::String(s) => Scalar::Str(s.inner().to_owned().into()),
            LiteralValue::Bytes(_) => return None,
        }),
        _ => return None,
    })
}

impl Operand {
    fn value<'e>(&'e self, event: &'e Event) -> Option<Scalar<'e>> {
        Some(match self {
            // Data that is not an object has no field.
            Operand::Data(f) => scalar(event.data.get(f)?)?,
            Operand::EventId => Scalar::Str((*event.id).into()),
            Operand::EventType => Scalar::Str((*event.kind).into()),
            Operand::EventSource => match event.source.as_deref() {
                Some(s) => Scalar::Str(s.into()),
                None => Scalar::Null,
            },
            Operand::Literal(l) => match l {
                Scalar::Str(s) => Scalar::Str(s.as_ref().into()),
                other => other.clone(),
            },
        })
    }
}

/// A JSON scalar as CEL converts it (see `to_cel`); `None` for a list or an object.
fn scalar(v: &Json) -> Option<Scalar<'_>> {
    Some(match v {
        Json::Null => Scalar::Null,
        Json::Bool(b) => Scalar::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Scalar::UInt(u),
            (None, Some(i)) => Scalar::Int(i),
            _ => Scalar::Float(n.as_f64()?),
        },
        Json::String(s) => Scalar::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => return None,
    })
}

/// Two values of the same type compared; `None` for values of different types (CEL has its own
/// rules there: numbers across types, `null` against a value...) and for an order of booleans or
/// nulls.
fn compare(op: Op, a: &Scalar<'_>, b: &Scalar<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Scalar::Int(x), Scalar::Int(y)) => Some(x.cmp(y)),
        (Scalar::UInt(x), Scalar::UInt(y)) => Some(x.cmp(y)),
        (Scalar::Float(x), Scalar::Float(y)) => Some(x.partial_cmp(y)?),
        (Scalar::Str(x), Scalar::Str(y)) => Some(x.cmp(y)),
        (Scalar::Bool(x), Scalar::Bool(y)) if matches!(op, Op::Eq | Op::Ne) => Some(x.cmp(y)),
        (Scalar::Null, Scalar::Null) if matches!(op, Op::Eq | Op::Ne) => Some(Ordering::Equal),
        _ => None,
    };
    let ord = ord?;
    Some(match op {
        Op::Eq => ord.is_eq(),
        Op::Ne => ord.is_ne(),
        Op::Lt => ord.is_lt(),
        Op::Le => ord.is_le(),
        Op::Gt => ord.is_gt(),
        Op::Ge => ord.is_ge(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    use super::super::Condition;
    use crate::event::{DataFields, Event};

    const OPERANDS: &[&str] = &[
        "data.a",
        "data.b",
        "data.c",
        "event.source",
        "event.id",
        "event.type",
        "1",
        "-1",
        "0u",
        "1u",
        "1.5",
        "403.26",
        "'x'",
        "'pending'",
        "''",
        "true",
        "false",
        "null",
    ];
    const OPS: &[&str] = &["==", "!=", "<", "<=", ">", ">="];
    const VALUES: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "2",
        "1.5",
        "403.26",
        "-0.0",
        "\"x\"",
        "\"pending\"",
        "\"\"",
        "[1]",
        "{\"k\": 1}",
        "18446744073709551615",
    ];

    fn expr(rng: &mut StdRng, depth: u32) -> String {
        let pick =
            |rng: &mut StdRng, from: &[&str]| from[rng.random_range(0..from.len())].to_owned();
        match rng.random_range(0..if depth == 0 { 3 } else { 7 }) {
            0 => format!(
                "{} {} {}",
                pick(rng, OPERANDS),
                pick(rng, OPS),
                pick(rng, OPERANDS)
            ),
            1 => format!("has(data.{})", pick(rng, &["a", "b", "c", "d"])),
            2 => pick(rng, &["data.a", "data.b", "true", "false"]),
            3 => format!("!({})", expr(rng, depth - 1)),
            4 | 5 => format!("({}) && ({})", expr(rng, depth - 1), expr(rng, depth - 1)),
            _ => format!("({}) || ({})", expr(rng, depth - 1), expr(rng, depth - 1)),
        }
    }

    fn event(rng: &mut StdRng) -> Event {
        let mut data = serde_json::Map::new();
        for f in ["a", "b", "c"] {
            if rng.random_bool(0.8) {
                let v = VALUES[rng.random_range(0..VALUES.len())];
                data.insert(f.into(), serde_json::from_str(v).unwrap());
            }
        }
        let data = match rng.random_range(0..20) {
            0 => json!([1, 2]),
            1 => json!("text"),
            _ => data.into(),
        };
        Event {
            id: "x".into(),
            id_given: true,
            kind: "pending".into(),
            time: None,
            source: [None, Some("x"), Some("moderation")][rng.random_range(0..3)].map(Arc::from),
            // As decoded with the fields the rules read kept, or whole.
            data: if rng.random_bool(0.5) {
                DataFields::only(["a", "b", "c", "d"].map(String::from)).keep(data)
            } else {
                data.into()
            },
        }
    }

    /// Random conditions of the supported shapes over random payloads (every scalar type, lists,
    /// objects, missing fields, data that is not an object): whatever the fast path answers is
    /// what CEL answers, and it does answer most of them.
    #[test]
    fn the_fast_path_answers_as_cel() {
        let env = Arc::new(cel::Env::stdlib());
        let mut rng = StdRng::seed_from_u64(16);
        let (mut cases, mut answered) = (0, 0);
        for _ in 0..3000 {
            let source = expr(&mut rng, 3);
            let c = Condition::compile(&source, &env).unwrap();
            let native = c.native.as_ref().expect("a supported shape");
            for _ in 0..4 {
                let e = event(&mut rng);
                let fast = native.eval(&e);
                let cel = c.eval_cel(&e);
                if let Some(b) = fast {
                    assert_eq!(Ok(b), cel, "{source} on {e:?}");
                    answered += 1;
                }
                assert_eq!(c.eval(&e), cel, "{source} on {e:?}");
                cases += 1;
            }
        }
        assert!(answered * 3 > cases, "{answered} of {cases} answered");
    }

    #[test]
    fn the_shipped_conditions_take_the_fast_path_and_others_do_not() {
        let env = Arc::new(cel::Env::stdlib());
        for src in [
            "data.new_price != data.old_price",
            "has(data.in_stock) && has(data.was_in_stock) && data.in_stock != data.was_in_stock",
            "!has(data.status) || data.status != 'pending'",
            "event.source == 'moderation' && has(data.status) && data.status == 'removed'",
            "has(data.product_ids)",
        ] {
            assert!(
                Condition::compile(src, &env).unwrap().native.is_some(),
                "{src}"
            );
        }
        for src in [
            "size(data) > 1",
            "data.tags.exists(t, t == 'sale')",
            "data.a + 1 == 2",
            "event.time > '2026'",
            "data.a in [1, 2]",
        ] {
            assert!(
                Condition::compile(src, &env).unwrap().native.is_none(),
                "{src}"
            );
        }
    }
}
