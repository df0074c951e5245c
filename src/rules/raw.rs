//! The rule files as written: YAML → these structs with `serde-saphyr`, every value with its location,
//! unknown keys refused. Nothing is validated here beyond shape; `compile` does the rest.
//! Pure: parses the text it is given (no I/O).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub ttl_policies: Vec<Spanned<RawTtlPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub on: Spanned<OneOrMany>,
    #[serde(default, deserialize_with = "present_condition")]
    pub when: Option<Spanned<String>>,
    #[serde(default)]
    pub delete: Vec<Spanned<TemplateText>>,
    #[serde(default)]
    pub tags: Vec<Spanned<TemplateText>>,
    #[serde(default)]
    pub expire: Vec<Spanned<RawExpire>>,
    #[serde(default)]
    pub cascade: Vec<Spanned<RawCascade>>,
    #[serde(default)]
    pub purge: Vec<Spanned<RawPurge>>,
    #[serde(default)]
    pub redelete_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpire {
    pub key: Spanned<TemplateText>,
    pub ttl: Spanned<String>,
    #[serde(default)]
    pub jitter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCascade {
    pub emit: Spanned<String>,
    #[serde(default)]
    pub data: Option<Spanned<BTreeMap<String, DataValue>>>,
    #[serde(default)]
    pub for_each_member_of: Option<Spanned<TemplateText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPurge {
    pub target: Spanned<String>,
    pub paths: Vec<Spanned<TemplateText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTtlPolicy {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub max_ttl: Spanned<String>,
    #[serde(default)]
    pub jitter: Option<Spanned<String>>,
}

/// A `when:` that is written must hold a condition: YAML reads an unquoted `!has(x)` as a tag on an
/// empty value, which would silently drop the condition.
fn present_condition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<String>>, D::Error> {
    match Option::<Spanned<String>>::deserialize(d)? {
        Some(s) if !s.value.trim().is_empty() => Ok(Some(s)),
        _ => Err(de::Error::custom(
            "`when` is empty: a condition that starts with `!` must be quoted, e.g. when: \"!has(data.x)\"",
        )),
    }
}

/// `on: price.updated` or `on: [price.updated, price.deleted]`.
#[derive(Debug)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an event type, a list of event types, or a prefix glob such as \"price.*\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The message given when a template was written where YAML sees a mapping.
pub const FLOW_TEMPLATE_HINT: &str = "expected a template string, found a YAML mapping: a value \
    that starts with `{` or sits inside a flow list `[...]` must be quoted, e.g. \
    [\"price:{product_id}\"] or - \"{product_id}\"";

/// A template string. Refuses a mapping with the hint above, since that is what an unquoted
/// `{product_id}` becomes in YAML.
#[derive(Debug, Clone)]
pub struct TemplateText(pub String);

impl<'de> Deserialize<'de> for TemplateText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TemplateText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a template string such as price:{product_id}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TemplateText, E> {
                Ok(TemplateText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TemplateText, E> {
                Ok(TemplateText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TemplateText, E> {
                Ok(TemplateText(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<TemplateText, A::Error> {
                Err(de::Error::custom(FLOW_TEMPLATE_HINT))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value in cascade `data`: a template string, a number, a boolean, or nested lists and maps.
#[derive(Debug, Clone)]
pub enum DataValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    Null,
    List(Vec<DataValue>),
    Map(BTreeMap<String, DataValue>),
}

impl<'de> Deserialize<'de> for DataValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DataValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a data value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DataValue, E> {
                Ok(DataValue::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DataValue, E> {
                Ok(DataValue::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DataValue, E> {
                Ok(DataValue::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DataValue, E> {
                serde_json::Number::from_f64(v)
                    .map(DataValue::Number)
                    .ok_or_else(|| E::custom("a non-finite number"))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DataValue, E> {
                Ok(DataValue::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<DataValue, E> {
                Ok(DataValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<DataValue, E> {
                Ok(DataValue::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DataValue, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(DataValue::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataValue, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, DataValue>()? {
                    // `{product_id}` unquoted is a one-key mapping with a null value.
                    if matches!(v, DataValue::Null)
                        && k.chars()
                            .all(|c| c.is_alphanumeric() || "_.[]-".contains(c))
                    {
                        return Err(de::Error::custom(FLOW_TEMPLATE_HINT));
                    }
                    out.insert(k, v);
                }
                Ok(DataValue::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}
