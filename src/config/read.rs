//! The `deserialize_with` readers of values kept in std types: counts of at least 1
//! (`NonZeroUsize`), durations (`30s`), byte sizes (`64MiB`), names that must not be empty, and the
//! compiled `safe_value` pattern. Like the types of `types`, each refuses a bad value as it is
//! read, and figment names the key.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::de::{self, Error as _};
use serde::{Deserialize, Deserializer};

use crate::rules::SafeValues;

/// The pattern every value taken from an event must match, compiled once.
pub(super) fn safe_values<'de, D: Deserializer<'de>>(d: D) -> Result<SafeValues, D::Error> {
    let pattern = String::deserialize(d)?;
    SafeValues::new(&pattern).map_err(|e| D::Error::custom(format!("not a regex: {e}")))
}

/// A count that must be at least 1.
pub(super) fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    NonZeroUsize::new(usize::deserialize(d)?).ok_or_else(|| D::Error::custom("must be at least 1"))
}

pub(super) fn opt_at_least_one<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<NonZeroUsize>, D::Error> {
    at_least_one(d).map(Some)
}

/// A count that must be at least 1, kept as a `usize` (its users build it in tests).
pub(super) fn usize_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    at_least_one(d).map(NonZeroUsize::get)
}

/// A duration such as `30s`, `500ms` or `10m`.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        D::Error::custom(format!(
            "`{s}` is not a duration such as 30s, 500ms or 10m: {e}"
        ))
    })
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A duration longer than zero.
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = duration(d)?;
    if t.is_zero() {
        return Err(D::Error::custom("must be more than 0s"));
    }
    Ok(t)
}

/// Text that is not empty nor only blanks.
pub(super) fn non_blank<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    Ok(s)
}

pub(super) fn opt_non_blank<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    non_blank(d).map(Some)
}

/// A size in bytes: an integer (`1048576`) or a number with a unit (`512KiB`, `64MiB`, `1GB`;
/// `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` of 1000).
pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct Bytes;
    impl de::Visitor<'_> for Bytes {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes such as 1048576, 512KiB or 64MiB")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} bytes is too large")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("{v} is not a size in bytes")))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            parse_bytes(v).ok_or_else(|| {
                E::custom(format!(
                    "`{v}` is not a size in bytes such as 1048576, 512KiB or 64MiB"
                ))
            })
        }
    }
    d.deserialize_any(Bytes)
}

fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    let n: u64 = number.parse().ok()?;
    usize::try_from(n.checked_mul(unit)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("512 KiB"), Some(512 << 10));
        assert_eq!(parse_bytes("1GB"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("MiB"), None);
        assert_eq!(parse_bytes("1.5MiB"), None);
        assert_eq!(parse_bytes("64mib"), None);
    }
}
