//! Pieces → lines: each event numbered, so that every valid one has keys of its own and every id
//! is unique (but where a piece repeats one on purpose).

use proptest::sample::Index;
use serde_json::{Value, json};

use crate::input::{Case, Elem, Expect, Line, MAX_LINE, Op, Piece, Rec};
use crate::texts::*;

/// Turns pieces into lines, numbering events so that each valid one has keys of its own.
struct Builder {
    k: u64,
    lines: Vec<Line>,
    crlf: bool,
}

/// The lines of a case: a valid event first (so that the file is read as JSON Lines, not as one
/// document), then the pieces.
pub fn build(case: &Case) -> Vec<Line> {
    let mut b = Builder {
        k: 0,
        lines: Vec::new(),
        crlf: false,
    };
    b.valid(0);
    // A BOM before the first line marks the encoding: it is skipped, and the event applied.
    if case.bom {
        let first = &mut b.lines[0];
        first.bytes.splice(0..0, BOM.iter().copied());
        first.what = "BOM + valid event".into();
    }
    for (piece, crlf) in &case.pieces {
        b.crlf = *crlf;
        b.piece(piece);
    }
    b.lines
}

impl Builder {
    fn next(&mut self) -> u64 {
        self.k += 1;
        self.k
    }

    fn push(&mut self, what: String, bytes: Vec<u8>, records: Vec<Rec>) {
        debug_assert!(!bytes.contains(&b'\n'), "{what}");
        self.lines.push(Line {
            what,
            bytes,
            crlf: self.crlf,
            records,
        });
    }

    fn valid(&mut self, shape: u8) -> (Value, String) {
        let k = self.next();
        let id = valid_id(shape, k);
        let text = valid(shape, &id, k);
        let records = vec![Rec::line(Expect::Applied(k))];
        self.push(format!("valid shape {shape}"), text.clone().into(), records);
        (id, text)
    }

    fn piece(&mut self, piece: &Piece) {
        match piece {
            Piece::Valid(shape) => {
                self.valid(*shape);
            }
            Piece::Sized(delta) => {
                let k = self.next();
                let (text, expect) = sized(*delta, &valid_id(0, k), k);
                self.push(
                    format!("sized {delta:+}"),
                    text.into(),
                    vec![Rec::line(expect)],
                );
            }
            Piece::Odd(i) => {
                let (text, reasons) = odd(*i, self.next());
                let records = vec![Rec::line(Expect::Dead(reasons))];
                self.push(format!("odd {i}"), text.into(), records);
            }
            Piece::Unknown => {
                let k = self.next();
                let text = json!({"type": "fuzz.unknown", "id": format!("skip-{k:05}"),
                    "data": {"n": k}});
                let records = vec![Rec::line(Expect::Skipped)];
                self.push("unknown type".into(), text.to_string().into(), records);
            }
            Piece::Mutant(base, op) => self.mutant(base, op),
            Piece::Blank(i) => {
                let (text, fails) = BLANKS[*i];
                let records = match fails {
                    true => vec![Rec::line(Expect::Dead(INVALID_JSON))],
                    false => Vec::new(),
                };
                self.push(format!("blank {text:?}"), text.into(), records);
            }
            Piece::Deep(i) => self.deep(*i),
            Piece::Array(elems, sep) => self.array(elems, SEPARATORS[*sep]),
            Piece::Envelope(i) => self.envelope(*i),
            Piece::Retry(shape) => {
                let k = self.next();
                let id = valid_id(*shape, k);
                let broken = json!({"type": "k.changed", "id": id, "data": {"m": k}});
                let records = vec![Rec::line(Expect::DeadOrDuplicate(&["template_error"]))];
                self.push("broken copy".into(), broken.to_string().into(), records);
                let text = valid(*shape, &id, k);
                let records = vec![Rec::line(Expect::Applied(k))];
                self.push(format!("fixed copy, shape {shape}"), text.into(), records);
            }
            Piece::Twice(shape) => {
                let (_, text) = self.valid(*shape);
                let records = vec![Rec::line(Expect::Duplicate)];
                self.push(format!("again, shape {shape}"), text.into(), records);
            }
        }
    }

    /// A valid line (a shipped sample, or a `k.changed` event of its own) with `op` done to it.
    fn mutant(&mut self, base: &Index, op: &Op) {
        let samples: Vec<&str> = SAMPLES.lines().filter(|l| !l.trim().is_empty()).collect();
        let k = self.next();
        let own = json!({"type": "k.changed", "id": format!("mut-{k:05}"),
            "data": {"n": format!("m{k}")}})
        .to_string();
        let text = match base.index(samples.len() + 1) {
            i if i < samples.len() => samples[i].to_owned(),
            _ => own.clone(),
        };
        let mut bytes = text.clone().into_bytes();
        let expect = match op {
            Op::Cut(at) => {
                bytes.truncate(1 + at.index(bytes.len() - 1));
                Expect::Dead(INVALID_JSON)
            }
            Op::Flip(at, mask) => {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
                if bytes[at] == b'\n' {
                    bytes[at] = b' ';
                }
                Expect::Any
            }
            Op::Nul(at) => {
                bytes.insert(at.index(bytes.len() + 1), 0);
                Expect::Dead(INVALID_JSON)
            }
            Op::Cr(at) => {
                bytes.insert(at.index(bytes.len() + 1), b'\r');
                Expect::Any
            }
            Op::BadUtf8(at, which) => {
                let at = at.index(bytes.len() + 1);
                let bad = BAD_UTF8[which.index(BAD_UTF8.len())];
                bytes.splice(at..at, bad.iter().copied());
                Expect::Dead(INVALID_JSON)
            }
            Op::Bom => {
                bytes.splice(0..0, BOM.iter().copied());
                Expect::Dead(INVALID_JSON)
            }
            Op::TwoOnOneLine => {
                bytes.extend_from_slice(own.as_bytes());
                Expect::Dead(INVALID_JSON)
            }
        };
        self.push(format!("mutant {op:?}"), bytes, vec![Rec::line(expect)]);
    }
}

impl Builder {
    /// Deep nesting, huge strings, and lines around the longest line read whole.
    fn deep(&mut self, i: usize) {
        let k = self.next();
        let id = valid_id(0, k);
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let with = |extra: &str| {
            format!(r#"{{"type":"k.changed","id":{id},"data":{{"n":{k},"x":{extra}}}}}"#)
        };
        let padded = |len: usize| {
            let bare = with("\"\"");
            with(&format!("\"{}\"", "x".repeat(len - bare.len())))
        };
        let dead = |reasons| vec![Rec::line(Expect::Dead(reasons))];
        let (what, text, records) = match i {
            // Over the longest line: cut there, too_large (see `expected`).
            0 => ("100,000 [", "[".repeat(100_000), Vec::new()),
            1 => ("40,000 [ and ]", nested(40_000), dead(INVALID_JSON)),
            2 => (
                "12,000 objects deep",
                format!("{}1{}", "{\"a\":".repeat(12_000), "}".repeat(12_000)),
                dead(INVALID_JSON),
            ),
            3 => ("an event 200 deep", with(&nested(200)), dead(INVALID_JSON)),
            // Within serde_json's depth limit: an event like any other.
            4 => (
                "an event 100 deep",
                with(&nested(100)),
                vec![Rec::line(Expect::Applied(k))],
            ),
            5 => (
                "an array with an element 200 deep",
                format!("[{},{}]", valid(0, &id, k), nested(200)),
                dead(INVALID_JSON),
            ),
            6 => (
                "a 100 KB string",
                with(&format!("\"{}\"", "x".repeat(100_000))),
                Vec::new(),
            ),
            7 => ("the longest line", padded(MAX_LINE), dead(&["too_large"])),
            8 => (
                "one byte over the longest line",
                padded(MAX_LINE + 1),
                Vec::new(),
            ),
            _ => (
                "an event of 4 KiB of escapes",
                with(&format!("\"{}\"", "\\u0000".repeat(700))),
                dead(&["too_large"]),
            ),
        };
        self.push(what.into(), text.into(), records);
    }

    /// `[e1,e2,...]` with `sep` between elements; each element is a record of its own.
    fn array(&mut self, elems: &[Elem], sep: &str) {
        let mut texts = Vec::new();
        let mut records = Vec::new();
        for (i, e) in elems.iter().enumerate() {
            let k = self.next();
            let (text, expect) = match e {
                Elem::Valid(shape) => (valid(*shape, &valid_id(*shape, k), k), Expect::Applied(k)),
                Elem::Sized(delta) => sized(*delta, &valid_id(0, k), k),
                Elem::Odd(o) => {
                    let (text, reasons) = odd(*o, k);
                    (text, Expect::Dead(reasons))
                }
                Elem::Scalar(s) => (SCALARS[*s].to_owned(), Expect::Dead(&["not_an_object"])),
            };
            records.push(Rec::inner(Some(format!("[{i}]")), text.as_bytes(), expect));
            texts.push(text);
        }
        let text = format!("[{}]", texts.join(sep));
        self.push(format!("array of {}", elems.len()), text.into(), records);
    }
}

impl Builder {
    /// Lambda SQS and SNS documents, dead-letter records to replay, and broken ones of each.
    fn envelope(&mut self, i: usize) {
        if i >= 5 {
            let (what, text, dead) = BROKEN_ENVELOPES[i - 5];
            let records = match dead {
                true => vec![Rec::line(Expect::Dead(&["invalid_envelope"]))],
                false => Vec::new(),
            };
            return self.push(what.into(), text.into(), records);
        }
        let k = self.next();
        let id = valid_id(0, k);
        let good = valid(0, &id, k);
        let (bad, bad_reasons) = odd(0, k);
        let redriven = |payload: &[u8], expect| Rec {
            attempts: 3,
            ..Rec::inner(None, payload, expect)
        };
        let (what, text, records) = match i {
            0 => {
                let bodies = [
                    (format!("sqs-{k}-0"), good.clone(), Expect::Applied(k)),
                    (format!("sqs-{k}-1"), bad.clone(), Expect::Dead(bad_reasons)),
                    (
                        format!("sqs-{k}-2"),
                        "{\"type\":".into(),
                        Expect::Dead(INVALID_JSON),
                    ),
                ];
                let pairs: Vec<_> = bodies
                    .iter()
                    .map(|(m, b, _)| (m.clone(), b.clone()))
                    .collect();
                let text = lambda(SQS_FIXTURE, &["messageId"], &["body"], &pairs);
                let records = bodies
                    .into_iter()
                    .map(|(m, b, e)| Rec::inner(Some(m), b.as_bytes(), e))
                    .collect();
                ("an SQS event", text, records)
            }
            1 => {
                let pairs = [(format!("sns-{k}"), good.clone())];
                let text = lambda(
                    SNS_FIXTURE,
                    &["Sns", "MessageId"],
                    &["Sns", "Message"],
                    &pairs,
                );
                let rec = Rec::inner(
                    Some(format!("sns-{k}")),
                    good.as_bytes(),
                    Expect::Applied(k),
                );
                ("an SNS event", text, vec![rec])
            }
            2 => {
                let records = vec![redriven(good.as_bytes(), Expect::Applied(k))];
                ("a dead letter, valid", dlq_record(good.as_bytes()), records)
            }
            3 => {
                let records = vec![redriven(bad.as_bytes(), Expect::Dead(bad_reasons))];
                (
                    "a dead letter, still broken",
                    dlq_record(bad.as_bytes()),
                    records,
                )
            }
            _ => {
                let payload = b"{\"type\":\"\xff\"}";
                let records = vec![redriven(payload, Expect::Dead(INVALID_JSON))];
                ("a dead letter, not UTF-8", dlq_record(payload), records)
            }
        };
        self.push(what.into(), text.into(), records);
    }
}
