//! The common shape of a native event read by hand (strings eight bytes at a time), for the events
//! most producers send: no escapes in any string, plain numbers, `data` an object of which only
//! the kept fields are built. Anything else (an escape, an exponent, a number of more than 18
//! digits, nesting deeper than [`MAX_DEPTH`], a duplicated envelope field, another field, a `data`
//! that is not an object, keeping all of `data`) is `None`, and the serde_json reader of `common`
//! decides, as it always did. Where this reader answers it answers as that one would: the property
//! tests of tests/prop_decode.rs hold every decode path equal to the general one.

use serde_json::Value;

use super::common::{Common, CommonField};
use super::data::Data;
use super::fields::{DataFields, place};

/// Deepest nesting read here (serde_json's own limit is 128): deeper values are left to it.
const MAX_DEPTH: u32 = 32;

/// Most digits of a number's integer or fraction part read here: so many always fit the types
/// serde_json reads them into, with no overflow to refuse.
const MAX_DIGITS: usize = 18;

/// Reads the common shape, keeping `fields` of `data`; `None` leaves the event to serde_json.
///
/// A CloudEvent (structured JSON) is read here when it names its `specversion` first, as the
/// CloudEvents SDKs write it: its attributes under their own names only (no aliases), any other
/// member an extension attribute, read and ignored, and no `data` an empty object. One that names
/// its version later is left to the general path, which reads it in any order.
pub(super) fn common<'a>(text: &'a str, fields: &DataFields) -> Option<Common<'a>> {
    let DataFields::Only(names) = fields else {
        return None;
    };
    let mut s = Scan { text, at: 0 };
    let (mut kind, mut id, mut time, mut source, mut data) = (None, None, None, None, None);
    s.eat(b'{')?;
    if s.peek()? == b'}' {
        return None; // no `type`: the general path names what is missing
    }
    let mut key = s.member()?;
    let cloud = key == "specversion";
    if cloud {
        if !super::decode::readable_specversion(s.string()?) {
            return None; // the general path names the version it cannot read
        }
        if !s.next_member(b'}')? {
            return None; // no `type`
        }
        key = s.member()?;
    }
    loop {
        let field = if cloud {
            CommonField::cloud(key)
        } else {
            CommonField::named(key)
        };
        let twice = match field {
            CommonField::Kind => kind.replace(s.string()?).is_some(),
            CommonField::Id => id.replace(s.string_or_null()?).is_some(),
            CommonField::Time => time.replace(s.string_or_null()?).is_some(),
            CommonField::Source => source.replace(s.string_or_null()?).is_some(),
            CommonField::Data => data.replace(s.data(names)?).is_some(),
            CommonField::Extension => s.skip(1).map(|()| false)?,
            CommonField::Other => return None,
        };
        if twice {
            return None;
        }
        if !s.next_member(b'}')? {
            break;
        }
        key = s.member()?;
    }
    s.skip_ws();
    if s.at != text.len() {
        return None;
    }
    let data = match data {
        Some(data) => data,
        None if cloud => Data::default(),
        None => return None, // the whole object is the payload: the general path builds it
    };
    Some(Common {
        kind: kind?,
        id: id.flatten(),
        time: time.flatten(),
        source: source.flatten(),
        data,
    })
}

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A member's name and its colon.
    fn member(&mut self) -> Option<&'a str> {
        let name = self.string()?;
        self.eat(b':')?;
        Some(name)
    }

    /// After a member of an object or an array: `Some(true)` on `,`, `Some(false)` on `close`.
    fn next_member(&mut self, close: u8) -> Option<bool> {
        let b = self.peek()?;
        self.at += 1;
        match b {
            b',' => Some(true),
            b if b == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes or control characters, borrowed from the text.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.bytes()[start..];
        let len = special(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are ASCII quotes of text that is UTF-8: char boundaries.
        Some(&self.text[start..start + len])
    }

    fn string_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            return self.literal("null").map(|()| None);
        }
        self.string().map(Some)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// A number without an exponent, at most [`MAX_DIGITS`] digits before and after its point.
    fn number(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        let start = self.at;
        let mut at = start + usize::from(b.get(start) == Some(&b'-'));
        let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
        let whole = digits(at);
        if whole == 0 || whole > MAX_DIGITS || (whole > 1 && b[at] == b'0') {
            return None;
        }
        at += whole;
        if b.get(at) == Some(&b'.') {
            let fraction = digits(at + 1);
            if fraction == 0 || fraction > MAX_DIGITS {
                return None;
            }
            at += 1 + fraction;
        }
        if matches!(b.get(at), Some(b'e' | b'E')) {
            return None;
        }
        self.at = at;
        Some(&self.text[start..at])
    }

    /// `data`: an object, of which the fields in `names` are built (the last of a name given
    /// twice, as a `serde_json::Map` keeps it) and the others only read.
    fn data(&mut self, names: &'static [String]) -> Option<Data> {
        self.eat(b'{')?;
        let mut values = vec![None; names.len()].into_boxed_slice();
        let kept = |values| Data::Kept { names, values };
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(kept(values));
        }
        loop {
            let key = self.member()?;
            match place(names, key) {
                Some(at) => values[at] = Some(self.kept()?),
                None => self.skip(2)?,
            }
            if !self.next_member(b'}')? {
                return Some(kept(values));
            }
        }
    }

    /// A kept field's value, as serde_json builds it: strings and non-negative integers here,
    /// anything else by serde_json from the text just read.
    fn kept(&mut self) -> Option<Value> {
        let first = self.peek()?;
        let start = self.at;
        match first {
            b'"' => self.string().map(|s| Value::String(s.to_owned())),
            b'0'..=b'9' => {
                let n = self.number()?;
                match n.parse::<u64>() {
                    Ok(n) => Some(Value::Number(n.into())),
                    Err(_) => serde_json::from_str(n).ok(),
                }
            }
            _ => {
                self.skip(2)?;
                serde_json::from_str(&self.text[start..self.at]).ok()
            }
        }
    }

    /// Reads a value at nesting `depth` without building it.
    fn skip(&mut self, depth: u32) -> Option<()> {
        let (open, close) = match self.peek()? {
            b'"' => return self.string().map(drop),
            b't' => return self.literal("true"),
            b'f' => return self.literal("false"),
            b'n' => return self.literal("null"),
            b'-' | b'0'..=b'9' => return self.number().map(drop),
            b'{' => (b'{', b'}'),
            b'[' => (b'[', b']'),
            _ => return None,
        };
        if depth >= MAX_DEPTH {
            return None;
        }
        self.at += 1;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            if open == b'{' {
                self.member()?;
            }
            self.skip(depth + 1)?;
            if !self.next_member(close)? {
                return Some(());
            }
        }
    }
}

/// Where the first quote, backslash or control character of `bytes` is: sixteen bytes at a time
/// where sixteen are left, then eight, then one.
fn special(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(block) = bytes.get(at..at + 16) {
        if let Some(found) = special16(block.try_into().expect("sixteen bytes")) {
            return Some(at + found);
        }
        at += 16;
    }
    while let Some(word) = bytes.get(at..at + 8) {
        if let Some(found) = special8(word.try_into().expect("eight bytes")) {
            return Some(at + found);
        }
        at += 8;
    }
    let tail = bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + tail)
}

/// [`special`] in sixteen bytes, by SSE2: a byte is special where it equals `"` or `\\`, or where
/// it is its own minimum with 0x1f (unsigned: below 0x20).
#[cfg(target_arch = "x86_64")]
fn special16(block: &[u8; 16]) -> Option<usize> {
    #[target_feature(enable = "sse2")]
    fn mask(block: &[u8; 16]) -> i32 {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
            _mm_set1_epi8,
        };
        let half = |at: usize| i64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        let v = _mm_set_epi64x(half(8), half(0));
        let is = |byte: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8));
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(is(b'"'), is(b'\\')), control))
    }
    // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code can run on has it.
    let found = unsafe { mask(block) };
    (found != 0).then(|| found.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
use special16_words as special16;

/// [`special`] in sixteen bytes, as two words of eight (where there is no SSE2; tested everywhere).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn special16_words(block: &[u8; 16]) -> Option<usize> {
    let (low, high) = block.split_at(8);
    special8(low.try_into().expect("eight bytes"))
        .or_else(|| special8(high.try_into().expect("eight bytes")).map(|at| at + 8))
}

/// [`special`] in eight bytes, as one word (the test serde_json's own string reader uses): a byte
/// below 0x20, or equal to `"` or `\`, borrows through its top bit; a borrow can mark bytes above
/// the first one found, never below it, so the lowest mark is exact.
fn special8(word: &[u8; 8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const TOPS: u64 = ONES << 7;
    let c = u64::from_le_bytes(*word);
    let is = |byte: u8| {
        let x = c ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x
    };
    let control = c.wrapping_sub(ONES * 0x20) & !c;
    let found = (control | is(b'"') | is(b'\\')) & TOPS;
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(names: &[&str]) -> DataFields {
        DataFields::only(names.iter().map(|n| (*n).to_owned()))
    }

    #[test]
    fn the_common_shape_is_read_with_the_kept_fields_of_data() {
        let text = r#" {"type": "price.updated", "id": "e-1", "time": null, "source": "pricing",
            "data": {"product_id": 42, "sku": "A-1", "old": -1.5, "tags": [[], {}, {"a": [true, false, null]}],
                     "neg": -7, "price": 403.26, "name": "x"}} "#;
        let c = common(text, &keep(&["product_id", "neg", "price", "name", "nope"])).unwrap();
        assert_eq!(
            (c.kind, c.id, c.time, c.source),
            ("price.updated", Some("e-1"), None, Some("pricing"))
        );
        assert_eq!(
            c.data,
            json!({"product_id": 42, "neg": -7, "price": 403.26, "name": "x"})
        );
    }

    #[test]
    fn a_cloudevent_naming_its_version_first_is_read_here() {
        let text = r#"{"specversion": "1.0", "id": "ce-1", "source": "/pricing", "type": "price.updated",
            "event_type": "x", "datacontenttype": "application/json", "ext": {"a": [1, -2.5, null]},
            "time": "2026-11-22T10:00:00Z", "data": {"product_id": 7, "sku": "A"}}"#;
        let c = common(text, &keep(&["product_id"])).unwrap();
        assert_eq!(
            (c.kind, c.id, c.time, c.source),
            (
                "price.updated",
                Some("ce-1"),
                Some("2026-11-22T10:00:00Z"),
                Some("/pricing")
            )
        );
        assert_eq!(c.data, json!({"product_id": 7}));
        // Without `data`, an empty object (a native event would be its own payload).
        let c = common(r#"{"specversion":"1.x","type":"t"}"#, &keep(&["a"])).unwrap();
        assert_eq!((c.kind, c.data.to_value()), ("t", json!({})));
    }

    #[test]
    fn the_first_quote_backslash_or_control_character_is_found_at_every_place() {
        let slow = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        for len in 0..56 {
            for at in 0..=len {
                for special_byte in [b'"', b'\\', 0, 0x1f] {
                    for filler in [b'a', 0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
                        let mut b = vec![filler; len];
                        if at < len {
                            b[at] = special_byte;
                            // A second one above it must not hide it.
                            if at + 1 < len {
                                b[at + 1] = b'"';
                            }
                        }
                        assert_eq!(special(&b), slow(&b), "{b:?}");
                        if let Some(block) = b.first_chunk::<16>() {
                            assert_eq!(special16(block), slow(block), "{b:?}");
                            assert_eq!(special16_words(block), slow(block), "{b:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        let all = keep(&["a"]);
        for text in [
            r#"{"type":"t","data":{"a":"\u0041"}}"#, // an escape
            r#"{"type":"t","data":{"b":1e3}}"#,      // an exponent
            r#"{"type":"t","data":{"b":0123}}"#,     // a leading zero
            r#"{"type":"t","data":{"b":1234567890123456789}}"#, // 19 digits
            r#"{"type":"t","data":{"b":1.}}"#,       // no fraction digits
            r#"{"type":"t","type":"t","data":{}}"#,  // twice
            r#"{"type":"t","event_type":"t","data":{}}"#,
            r#"{"type":"t","data":{},"x":1}"#,  // another field
            r#"{"type":"t","data":[1]}"#,       // data not an object
            r#"{"type":"t"}"#,                  // no data
            r#"{"type":"t","data":{}} x"#,      // trailing text
            r#"{"type":"t","data":{},}"#,       // trailing comma
            r#"{"type":"t","id":7,"data":{}}"#, // a numeric id
            r#"{"type":"t","data":{"b":tru}}"#,
            "{\"type\":\"t\u{1}\",\"data\":{}}", // a control character
            r#"{}"#,
            r#"{"specversion":"0.3","type":"t"}"#,
            r#"{"specversion":1,"type":"t"}"#,
            r#"{"specversion":"1.0"}"#,
            r#"{"specversion":"1.0","type":"t","specversion":"1.0"}"#,
            r#"{"specversion":"1.0","type":"t","data_base64":"e30="}"#,
            r#"{"specversion":"1.0","type":"t","Type":"Notification"}"#,
            r#"{"type":"t","specversion":"1.0","data":{}}"#, // the version not first
        ] {
            assert!(common(text, &all).is_none(), "{text}");
        }
        let deep = format!(
            r#"{{"type":"t","data":{{"b":{}{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(common(&deep, &all).is_none());
        assert!(common(r#"{"type":"t","data":{}}"#, &DataFields::All).is_none());
    }
}
