//! The hostile input of `tests/hostile_replay.rs` (what a case is, how it is generated), and what
//! replay must make of each line. Lines are made in `lines.rs` from the texts of `texts.rs`.
//!
//! A case is a list of [`Piece`]s, each one or two lines of a JSON Lines file: valid events in every
//! accepted shape (they must be applied), events with fields of odd types or unsafe values (each
//! dead-lettered with a known reason), shipped sample events cut at a random byte, with a byte
//! flipped, a NUL, a lone CR, invalid UTF-8 or a BOM put in, blank lines, very deep nesting, lines
//! around `[limits] max_event_bytes` and around the longest line read whole, JSON arrays of events,
//! Lambda and dead-letter documents, a producer's retry of a broken event under the same id, and the
//! same event twice. [`expected`] says, line by line, which records replay must account for: what
//! each must become ([`Expect`]) and the bytes its dead letter must hold.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::texts::{BLANKS, DEEP, ENVELOPES, INVALID_JSON, ODD, SCALARS, SEPARATORS, VALID_SHAPES};

/// `[limits] max_event_bytes` of the test (small, so that lines over it stay cheap).
pub const MAX_EVENT_BYTES: usize = 2048;
/// The longest line replay reads whole: 8 × the event limit + 64 KiB (`src/source/files.rs`).
pub const MAX_LINE: usize = MAX_EVENT_BYTES * 8 + (64 << 10);
/// Every reason code of docs/operations.md.
pub const REASONS: &[&str] = &[
    "invalid_json",
    "not_an_object",
    "missing_type",
    "invalid_field",
    "invalid_envelope",
    "too_large",
    "unsafe_value",
    "template_error",
    "fanout_exceeded",
    "condition_error",
    "redis_wrongtype",
    "cdn_rejected",
    "no_rule",
];

/// What one record must become.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// Applied: the keys of `n` (`P:in:k:{n}`, `P:in:pat:{n}:*`, the members of tag `t:{n}`) go.
    Applied(u64),
    Skipped,
    Duplicate,
    /// Dead-lettered, with one of these reasons.
    Dead(&'static [&'static str]),
    /// Dead-lettered (with one of these reasons), or a duplicate: a broken copy of an event whose
    /// fixed copy, in another unit in flight, may be applied first.
    DeadOrDuplicate(&'static [&'static str]),
    /// A mutation that may still be an event: any outcome, but a byte-exact dead letter.
    Any,
}

/// One record replay must account for.
#[derive(Clone, Debug)]
pub struct Rec {
    /// `source.message_id` of its dead letter (array index `[i]`, SQS or SNS message id).
    pub message_id: Option<String>,
    /// The bytes its dead letter must hold; `None`: the line's (see [`expected`]).
    pub payload: Option<Vec<u8>>,
    pub attempts: u64,
    pub truncated: bool,
    pub expect: Expect,
}

impl Rec {
    pub fn line(expect: Expect) -> Rec {
        Rec {
            message_id: None,
            payload: None,
            attempts: 1,
            truncated: false,
            expect,
        }
    }

    pub fn inner(message_id: Option<String>, payload: &[u8], expect: Expect) -> Rec {
        Rec {
            message_id,
            payload: Some(payload.to_vec()),
            ..Rec::line(expect)
        }
    }
}

/// One line of the input file, without its line end.
#[derive(Clone, Debug)]
pub struct Line {
    pub what: String,
    pub bytes: Vec<u8>,
    /// Ends in CR LF (else LF).
    pub crlf: bool,
    pub records: Vec<Rec>,
}

/// A mutation of a valid event line.
#[derive(Clone, Debug)]
pub enum Op {
    Cut(Index),
    Flip(Index, u8),
    Nul(Index),
    Cr(Index),
    BadUtf8(Index, Index),
    Bom,
    TwoOnOneLine,
}

/// One or two lines of a case.
#[derive(Clone, Debug)]
pub enum Piece {
    Valid(u8),
    /// A valid event of exactly `max_event_bytes` + this many bytes.
    Sized(i64),
    Odd(usize),
    Unknown,
    /// A shipped sample event, or a `k.changed` event of its own, mutated.
    Mutant(Index, Op),
    Blank(usize),
    Deep(usize),
    Array(Vec<Elem>, usize),
    Envelope(usize),
    /// A broken copy, then the valid event under the same id.
    Retry(u8),
    /// The same valid line twice.
    Twice(u8),
}

/// An element of an array line.
#[derive(Clone, Debug)]
pub enum Elem {
    Valid(u8),
    Sized(i64),
    Odd(usize),
    Scalar(usize),
}

/// A whole case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Each piece, and whether its lines end in CR LF.
    pub pieces: Vec<(Piece, bool)>,
    /// A UTF-8 BOM before the first line (skipped by replay).
    pub bom: bool,
    /// A line end after the last line.
    pub final_newline: bool,
    /// `[replay] batch_size`: units of one line, of a few, or one unit for the whole file.
    pub batch_size: usize,
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((piece(), any::<bool>()), 16..64),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![1usize, 7, 1000]),
    )
        .prop_map(|(pieces, bom, final_newline, batch_size)| Case {
            pieces,
            bom,
            final_newline,
            batch_size,
        })
}

fn piece() -> impl Strategy<Value = Piece> {
    let shape = || 0..VALID_SHAPES;
    prop_oneof![
        6 => shape().prop_map(Piece::Valid),
        1 => sized().prop_map(Piece::Sized),
        4 => (0..ODD.len()).prop_map(Piece::Odd),
        1 => Just(Piece::Unknown),
        8 => (any::<Index>(), op()).prop_map(|(b, op)| Piece::Mutant(b, op)),
        2 => (0..BLANKS.len()).prop_map(Piece::Blank),
        1 => (0..DEEP).prop_map(Piece::Deep),
        3 => (prop::collection::vec(elem(), 0..6), 0..SEPARATORS.len())
            .prop_map(|(e, s)| Piece::Array(e, s)),
        2 => (0..ENVELOPES).prop_map(Piece::Envelope),
        1 => shape().prop_map(Piece::Retry),
        1 => shape().prop_map(Piece::Twice),
    ]
}

fn sized() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![-1i64, 0, 1, MAX_EVENT_BYTES as i64])
}

fn elem() -> impl Strategy<Value = Elem> {
    prop_oneof![
        3 => (0..VALID_SHAPES).prop_map(Elem::Valid),
        1 => sized().prop_map(Elem::Sized),
        // Elements are JSON (one that is not makes the whole line invalid).
        2 => prop::sample::select(
            (0..ODD.len()).filter(|&i| ODD[i].1 != INVALID_JSON).collect::<Vec<_>>()
        )
        .prop_map(Elem::Odd),
        1 => (0..SCALARS.len()).prop_map(Elem::Scalar),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<Index>().prop_map(Op::Cut),
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Op::Flip(i, m)),
        1 => any::<Index>().prop_map(Op::Nul),
        2 => any::<Index>().prop_map(Op::Cr),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, k)| Op::BadUtf8(i, k)),
        1 => Just(Op::Bom),
        1 => Just(Op::TwoOnOneLine),
    ]
}

/// Every record replay must account for, with the line it is on (1-based), as replay reads the
/// file: a line ends at LF, one CR before it is dropped, a line of blanks is no record, a line
/// longer than [`MAX_LINE`] is one `too_large` record of its first bytes.
pub fn expected(lines: &[Line]) -> Vec<(u64, Rec)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut content = line.bytes.clone();
        if line.crlf {
            content.push(b'\r');
        }
        let number = i as u64 + 1;
        if content.len() > MAX_LINE {
            content.truncate(MAX_LINE);
            let rec = Rec {
                truncated: true,
                payload: Some(content),
                ..Rec::line(Expect::Dead(&["too_large"]))
            };
            out.push((number, rec));
            continue;
        }
        if content.last() == Some(&b'\r') {
            content.pop();
        }
        if content.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        for rec in &line.records {
            let payload = rec.payload.clone().unwrap_or_else(|| content.clone());
            out.push((
                number,
                Rec {
                    payload: Some(payload),
                    ..rec.clone()
                },
            ));
        }
    }
    out
}

/// The file: every line with its line end (the last one without, unless `final_newline`).
pub fn file(lines: &[Line], final_newline: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        out.extend_from_slice(&line.bytes);
        if line.crlf {
            out.push(b'\r');
        }
        if final_newline || i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    out
}
