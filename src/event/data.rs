//! An event's `data` ([`Data`]): for most events, the values of the fields the rules read, in the
//! order of the shared list of their names; any other data as the JSON value it is.
//!
//! An object of kept fields was a `serde_json::Map`, a B-tree: each event allocated a 640-byte
//! node and a string per field name, and walked the tree to drop them (the drop alone was 505
//! instructions of a plain event's 10,730). Here a kept object is one allocation of a value per
//! kept name, the names shared by every event: 350 instructions an event fewer in all. It reads,
//! compares and serializes as the object it stands for.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// An event's `data`.
#[derive(Debug, Clone)]
pub enum Data {
    /// An object of which only the fields named in `names` (sorted, shared by every event: the
    /// kept fields of [`super::DataFields`]) were kept: `values[i]` is the value of `names[i]`, or
    /// `None` where the object has no such field.
    Kept {
        names: &'static [String],
        values: Box<[Option<Value>]>,
    },
    /// Any other data, whole: data that is not an object, an object kept whole, the data of a
    /// cascaded event.
    Whole(Value),
}

impl Default for Data {
    /// An empty object.
    fn default() -> Data {
        Data::Whole(Value::Object(Map::new()))
    }
}

impl From<Value> for Data {
    fn from(v: Value) -> Data {
        Data::Whole(v)
    }
}

impl Data {
    /// The value of the top-level field `name`; `None` where there is none or the data is not an
    /// object.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Data::Kept { names, values } => values[super::fields::place(names, name)?].as_ref(),
            Data::Whole(Value::Object(m)) => m.get(name),
            Data::Whole(_) => None,
        }
    }

    /// Whether the data is an object (kept fields are always one).
    pub fn is_object(&self) -> bool {
        matches!(self, Data::Kept { .. } | Data::Whole(Value::Object(_)))
    }

    /// The fields of an object, in name order; nothing for data that is not an object.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Value)> {
        let (kept, whole) = match self {
            Data::Kept { names, values } => (Some(names.iter().zip(values.iter())), None),
            Data::Whole(Value::Object(m)) => (None, Some(m.iter())),
            Data::Whole(_) => (None, None),
        };
        let kept = kept.into_iter().flatten();
        let kept = kept.filter_map(|(n, v)| Some((n.as_str(), v.as_ref()?)));
        let whole = whole.into_iter().flatten().map(|(n, v)| (n.as_str(), v));
        kept.chain(whole)
    }

    /// The data as a JSON value (built anew for kept fields).
    pub fn to_value(&self) -> Value {
        match self {
            Data::Whole(v) => v.clone(),
            kept => Value::Object(
                kept.fields()
                    .map(|(n, v)| (n.to_owned(), v.clone()))
                    .collect(),
            ),
        }
    }

    /// How many fields an object has; `None` for data that is not an object.
    fn len(&self) -> Option<usize> {
        match self {
            Data::Kept { values, .. } => Some(values.iter().flatten().count()),
            Data::Whole(Value::Object(m)) => Some(m.len()),
            Data::Whole(_) => None,
        }
    }

    /// Two objects with the same fields, one of them `self`.
    fn same_object(&self, other: &Data) -> bool {
        self.len().is_some()
            && self.len() == other.len()
            && self.fields().all(|(n, v)| other.get(n) == Some(v))
    }
}

/// Equal as the JSON values they stand for.
impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::Whole(a), Data::Whole(b)) => a == b,
            _ => self.same_object(other),
        }
    }
}

/// Equal to the JSON value it stands for.
impl PartialEq<Value> for Data {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Data::Whole(a), b) => a == b,
            (kept, Value::Object(m)) => {
                kept.len() == Some(m.len()) && m.iter().all(|(n, v)| kept.get(n) == Some(v))
            }
            _ => false,
        }
    }
}

/// A top-level field as `serde_json::Value` indexes one: `Null` where there is none.
impl std::ops::Index<&str> for Data {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

/// Written as the JSON value it stands for (an object's fields in name order, as a
/// `serde_json::Map` writes them).
impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Whole(v) => v.serialize(s),
            kept => {
                let mut map = s.serialize_map(kept.len())?;
                for (n, v) in kept.fields() {
                    map.serialize_entry(n, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kept(names: &[&str], values: Vec<Option<Value>>) -> Data {
        Data::Kept {
            names: names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<Vec<_>>()
                .leak(),
            values: values.into(),
        }
    }

    #[test]
    fn kept_fields_read_compare_and_serialize_as_the_object_they_stand_for() {
        let d = kept(
            &["a", "b", "c"],
            vec![Some(json!(1)), None, Some(json!("x"))],
        );
        let object = json!({"a": 1, "c": "x"});
        assert_eq!(d, object);
        assert_eq!(d, Data::Whole(object.clone()));
        assert_eq!(Data::Whole(object.clone()), d);
        assert_eq!(d.to_value(), object);
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"a":1,"c":"x"}"#);
        assert_eq!(
            (d.get("a"), d.get("b"), d.get("z")),
            (Some(&json!(1)), None, None)
        );
        assert_eq!((&d["c"], &d["b"]), (&json!("x"), &Value::Null));
        assert!(d.is_object());
        // Not equal to another object, a missing field, an extra one, or data that is no object.
        for other in [
            json!({"a": 1, "c": "y"}),
            json!({"a": 1}),
            json!({"a": 1, "b": null, "c": "x"}),
            json!([1, "x"]),
            Value::Null,
        ] {
            assert_ne!(d, other, "{other}");
            assert_ne!(d, Data::Whole(other.clone()), "{other}");
        }
        let none = kept(&["a"], vec![None]);
        assert_eq!(none, json!({}));
        assert_eq!(none, Data::default());
        assert_eq!(serde_json::to_string(&none).unwrap(), "{}");
    }

    #[test]
    fn whole_data_is_the_value() {
        let d = Data::Whole(json!([1, 2]));
        assert!(!d.is_object());
        assert_eq!(d.get("a"), None);
        assert_eq!(d.fields().count(), 0);
        assert_eq!(serde_json::to_string(&d).unwrap(), "[1,2]");
        assert_ne!(d, kept(&[], vec![]));
    }
}
