//! The common shape of a native event (`type`, `id`, `time`, `source`, `data` and their aliases,
//! nothing else) read as borrowed fields, with `data` through [`DataFields::seed`]: most events
//! from most producers, decoded without building the envelope as a map. Anything else is left to
//! the general path in `decode`.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Event;
use super::data::Data;
use super::decode::{finish, valid_id, valid_source, valid_type};
use super::fields::DataFields;

/// The common shape of a native event, as its fields borrowed from the input: `type` (or
/// `event_type`), `id` (or `event_id`), `time` (or `occurred_at` or `timestamp`), `source`, and
/// `data`, nothing else. Only `data` is built as a JSON tree (of the kept fields); the envelope is
/// never a map.
pub(super) struct Common<'a> {
    pub(super) kind: &'a str,
    pub(super) id: Option<&'a str>,
    pub(super) time: Option<&'a str>,
    pub(super) source: Option<&'a str>,
    pub(super) data: Data,
}

/// The names of [`Common`]'s fields; any other name is not the common shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommonField {
    Kind,
    Id,
    Time,
    Source,
    Data,
    /// A CloudEvent's extension attribute (see [`CommonField::cloud`]): read and ignored.
    Extension,
    /// Any other name (a CloudEvent's `specversion`...): not the common shape.
    Other,
}

impl CommonField {
    /// The field `name` is, under any of its aliases: the one list of names both readers of the
    /// common shape (this one and `scan`) go by.
    pub(super) fn named(name: &str) -> CommonField {
        match name {
            "type" | "event_type" => CommonField::Kind,
            "id" | "event_id" => CommonField::Id,
            "time" | "occurred_at" | "timestamp" => CommonField::Time,
            "source" => CommonField::Source,
            "data" => CommonField::Data,
            _ => CommonField::Other,
        }
    }

    /// The field `name` is in a CloudEvent (structured JSON, `specversion` 1.x, as the general
    /// path reads one): the attributes under their own names only, no aliases (a CloudEvent's
    /// `event_type` is an extension); `data_base64`, a second `specversion` and the names of an
    /// SNS notification are left to the general path.
    pub(super) fn cloud(name: &str) -> CommonField {
        match name {
            "type" => CommonField::Kind,
            "id" => CommonField::Id,
            "time" => CommonField::Time,
            "source" => CommonField::Source,
            "data" => CommonField::Data,
            "specversion" | "data_base64" | "Type" | "Message" | "TopicArn" => CommonField::Other,
            _ => CommonField::Extension,
        }
    }
}

/// A field name as serde_json reads it (unescaped), then [`CommonField::named`]; another name is
/// refused later without serde's error message, which would list the expected names.
impl<'de> serde::Deserialize<'de> for CommonField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = CommonField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<CommonField, E> {
                Ok(CommonField::named(v))
            }
        }
        d.deserialize_identifier(Name)
    }
}

/// Reads [`Common`] with `data` through [`DataFields::seed`]; fails (and the general path then
/// decides) on an unknown field, a field given twice (under two aliases too), a missing `type` or
/// `data`, or a value that is not a string without escapes (`null` for the optional ones).
struct CommonSeed<'f>(&'f DataFields);

impl<'de> serde::de::DeserializeSeed<'de> for CommonSeed<'_> {
    type Value = Common<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Common<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CommonSeed<'_> {
    type Value = Common<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Common<'de>, A::Error> {
        use serde::de::Error;
        let (mut kind, mut id, mut time, mut source, mut data) = (None, None, None, None, None);
        while let Some(field) = map.next_key::<CommonField>()? {
            let twice = match field {
                CommonField::Kind => kind.replace(map.next_value::<&str>()?).is_some(),
                CommonField::Id => id.replace(map.next_value::<Option<&str>>()?).is_some(),
                CommonField::Time => time.replace(map.next_value::<Option<&str>>()?).is_some(),
                CommonField::Source => source.replace(map.next_value::<Option<&str>>()?).is_some(),
                CommonField::Data => data.replace(map.next_value_seed(self.0.seed())?).is_some(),
                CommonField::Extension | CommonField::Other => {
                    return Err(A::Error::custom("another shape"));
                }
            };
            if twice {
                return Err(A::Error::custom("a field given twice"));
            }
        }
        Ok(Common {
            kind: kind.ok_or_else(|| A::Error::missing_field("type"))?,
            id: id.flatten(),
            time: time.flatten(),
            source: source.flatten(),
            data: data.ok_or_else(|| A::Error::missing_field("data"))?.into(),
        })
    }
}

/// Decodes the common shape ([`Common`]) without building the envelope as a map, which was most
/// of a replay's CPU. Anything else is `None` and left to the general path (`decode::decode_value`),
/// which then gives the result it always gave: another field (CloudEvents, SNS, a whole-object
/// payload without `data`), a field given twice (under two aliases too), a value of another type
/// (a numeric id), a string with escapes (it cannot be borrowed), or a value the checks refuse.
/// Where it answers, it answers as the general path would: a property test holds them equal.
pub(super) fn decode_common(
    text: &str,
    fields: &DataFields,
    fallback_id: &dyn Fn() -> String,
) -> Option<Event> {
    use serde::de::DeserializeSeed;
    // Read by hand where it can be (most events), else by serde_json.
    let c = match super::scan::common(text, fields) {
        Some(c) => c,
        None => {
            let mut de = serde_json::Deserializer::from_str(text);
            let c = CommonSeed(fields).deserialize(&mut de).ok()?;
            de.end().ok()?;
            c
        }
    };
    let valid =
        valid_type(c.kind) && c.id.is_none_or(valid_id) && c.source.is_none_or(valid_source);
    if !valid {
        return None;
    }
    let time = c.time.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    Some(finish(
        super::shared::event_type(c.kind),
        c.id.map(std::sync::Arc::from),
        time,
        // Straight into the shared string: no `String` made first.
        c.source.map(super::shared::source),
        c.data,
        fallback_id,
    ))
}
