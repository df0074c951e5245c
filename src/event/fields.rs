//! Which top-level fields of an event's `data` the rules read ([`DataFields`]), and `data` decoded
//! to those alone: the other fields are parsed and checked exactly as a `serde_json::Value` would
//! be (syntax, escapes, numbers, nesting depth), then dropped without building anything.
//!
//! Most of a payload is fields no rule reads (a price event's SKU, currency, category list...):
//! building them as a JSON tree, then freeing it, was the largest cost of a plain replay.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::data::Data;

/// The top-level fields of `data` that an event keeps once decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DataFields {
    /// The whole payload (`explain`, and rules that read `data` as a whole).
    #[default]
    All,
    /// Only these (sorted) fields of an object; data that is not an object is kept whole.
    Only(&'static [String]),
}

impl DataFields {
    /// The fields a rule set reads. Leaked, like its rules' names: a rule set is compiled once
    /// per process and lives as long as it, and every event's kept data names its fields with a
    /// pointer, not a shared count that the cores decoding and dropping events would all write.
    pub fn only<I: IntoIterator<Item = String>>(fields: I) -> DataFields {
        let mut v: Vec<String> = fields.into_iter().collect();
        v.sort();
        v.dedup();
        DataFields::Only(v.leak())
    }

    /// Asked for every field of every event's `data` ([`place`]).
    pub(super) fn keeps(&self, field: &str) -> bool {
        match self {
            DataFields::All => true,
            DataFields::Only(names) => place(names, field).is_some(),
        }
    }

    /// `data` decoded in full (an already parsed payload), reduced to the kept fields: an
    /// object's as [`Data::Kept`], anything else whole.
    pub fn keep(&self, data: Value) -> Data {
        match (self, data) {
            (DataFields::Only(names), Value::Object(mut map)) => Data::Kept {
                names,
                values: names.iter().map(|n| map.remove(n)).collect(),
            },
            (_, data) => Data::Whole(data),
        }
    }

    /// Decodes `data` as [`Value::deserialize`] would, then [`DataFields::keep`], without building
    /// what is dropped: the same value, and the same errors on the same input.
    pub fn seed(&self) -> DataSeed<'_> {
        DataSeed(self)
    }
}

/// Where `field` is in `names` (sorted): scanned by equality in a short list, which compares
/// lengths first and calls `memcmp` only for a name of the same length (a binary search called it
/// for every comparison); searched in a long one.
pub(super) fn place(names: &[String], field: &str) -> Option<usize> {
    if names.len() <= 8 {
        names.iter().position(|k| k == field)
    } else {
        names.binary_search_by(|k| k.as_str().cmp(field)).ok()
    }
}

/// See [`DataFields::seed`].
pub struct DataSeed<'f>(&'f DataFields);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            DataFields::All => Value::deserialize(d),
            DataFields::Only(_) => d.deserialize_any(Pruned(self.0)),
        }
    }
}

/// The top level of `data`: an object keeps its kept fields; anything else is built whole, as
/// serde_json's own `Value` visitor builds it.
struct Pruned<'f>(&'f DataFields);

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Field(key)) = map.next_key()? {
            if self.0.keeps(&key) {
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<Checked>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// A field name, borrowed from the input unless it holds escapes.
struct Field<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
                Ok(Field(Cow::Owned(v)))
            }
        }
        d.deserialize_string(V)
    }
}

/// A value parsed as `Value` would parse it (strings unescaped, surrogates checked, numbers
/// read) and dropped: unlike `serde::de::IgnoredAny`, which skips escapes without checking them.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_none<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        Checked::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        // Keys are read as `Value` reads them (`deserialize_string`), so are checked alike.
        while map.next_key::<Field<'de>>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pruned(fields: &DataFields, text: &str) -> Result<Value, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = fields
            .seed()
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(v)
    }

    fn full(fields: &DataFields, text: &str) -> Result<Value, String> {
        serde_json::from_str::<Value>(text)
            .map(|v| fields.keep(v).to_value())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn only_the_kept_fields_are_built_and_the_rest_is_checked_as_value_checks_it() {
        let keep = DataFields::only(["product_id".to_owned(), "b\"c".to_owned()]);
        let cases = [
            r#"{"product_id": 42, "sku": "A-1", "tags": ["x", {"y": [1, 2.5, null]}]}"#,
            r#"{"b\"c": {"deep": [true]}, "product_id": "p\u00e9", "n": -1e3}"#,
            r#"{"product_id": 1, "product_id": 2}"#,
            r#"[1, "a", {"product_id": 3}]"#,
            r#""text""#,
            "null",
            "1e400",
            r#"{"x": "\ud800"}"#,
            r#"{"x": "\uZZZZ"}"#,
            r#"{"x": [1,]}"#,
            r#"{"x": "a
b"}"#,
            r#"{"x\ud800": 1}"#,
            r#"{"x": 1"#,
        ];
        for text in cases {
            assert_eq!(pruned(&keep, text), full(&keep, text), "{text}");
            let all = DataFields::All;
            assert_eq!(pruned(&all, text), full(&all, text), "{text}");
        }
        assert_eq!(
            pruned(&keep, cases[0]).unwrap(),
            json!({"product_id": 42}),
            "the other fields are gone"
        );
    }

    /// Lists short enough to be scanned and long enough to be searched answer alike: every field
    /// kept, and no other name (a prefix, one of the same length, the empty name).
    #[test]
    fn kept_fields_are_found_in_short_and_long_lists() {
        for n in 1..=12 {
            let names: Vec<String> = (0..n).map(|i| format!("field_{i:02}")).collect();
            let keep = DataFields::only(names.iter().rev().cloned());
            for name in &names {
                assert!(keep.keeps(name), "{name} of {n}");
            }
            for other in ["field_", "field_99", "field_0", "", "Field_00", "field_000"] {
                assert!(!keep.keeps(other), "{other} of {n}");
            }
        }
    }

    #[test]
    fn nesting_is_bounded_as_for_a_value() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let keep = DataFields::only(["y".to_owned()]);
        assert!(pruned(&keep, &deep).is_err());
        assert_eq!(pruned(&keep, &deep), full(&keep, &deep));
    }
}
