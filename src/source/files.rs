//! Files and stdin → [`Input`]s (records, or JSON lines to expand into records), in order, in
//! constant memory.
//!
//! Accepted inputs: JSON Lines (one event, Lambda event document, or DLQ record per line), or one JSON
//! document spread over several lines (a Lambda `SnsEvent`/`SqsEvent` file, an array of events, a
//! single pretty-printed event). A line longer than the event size limit is never held whole in
//! memory: it is skipped to its end and dead-lettered as `too_large` with its first bytes. Empty lines
//! are not events; a UTF-8 byte order mark at the start of an input is skipped. Line numbers are
//! 1-based and count every line.

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{Buf, Bytes};

use super::lines::LineReader;
use crate::event::{DecodeError, Expanded, Position, Record, expand_document, expand_into};

/// The UTF-8 byte order mark, skipped at the start of an input.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The largest multi-line JSON document read whole (Lambda event files are far smaller).
const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// The longest line read whole: an event of `max_bytes` wrapped in a DLQ record (JSON escaping,
/// base64) or an SNS envelope is longer than the event itself. The event limit is applied to the
/// payload once unwrapped.
fn max_line(max_bytes: usize) -> usize {
    max_bytes.saturating_mul(8).saturating_add(64 << 10)
}

/// One item of an input: a record ready for the engine, or a JSON line still to be parsed and
/// expanded (a line may hold an event, a Lambda event document or a DLQ record). Parsing is left to
/// the caller so that it can run beside the reading, on every core.
#[derive(Debug)]
pub enum Input {
    Ready(Expanded),
    Line(Record),
}

impl Input {
    /// The bytes of input it holds (what a batch is bounded by).
    pub fn bytes(&self) -> usize {
        match self {
            Input::Line(r) => r.payload.len(),
            Input::Ready(
                Expanded::Parsed { record, .. }
                | Expanded::Raw(record)
                | Expanded::Failed { record, .. },
            ) => record.payload.len(),
        }
    }

    /// Appends the records this item holds to `out`.
    pub fn expand_into(self, max_bytes: usize, out: &mut Vec<Expanded>) {
        match self {
            Input::Ready(e) => out.push(e),
            Input::Line(r) => expand_into(r.payload, r.position, max_bytes, out),
        }
    }
}

/// Every record of `inputs`, in order.
pub fn expand_all(inputs: Vec<Input>, max_bytes: usize) -> Vec<Expanded> {
    let mut out = Vec::with_capacity(inputs.len());
    for i in inputs {
        i.expand_into(max_bytes, &mut out);
    }
    out
}

enum Mode {
    Start,
    Lines,
    Done,
}

/// Reads one input (a file or stdin) as [`Input`]s.
pub struct InputReader {
    lines: LineReader,
    /// Shared by the positions of its records.
    name: Arc<str>,
    line: u64,
    max_bytes: usize,
    mode: Mode,
    pending: VecDeque<Input>,
}

impl InputReader {
    pub fn new(
        reader: Box<dyn BufRead + Send>,
        name: &str,
        max_bytes: usize,
        consumed: Arc<AtomicU64>,
    ) -> Self {
        InputReader {
            lines: LineReader::new(reader, consumed),
            name: name.into(),
            line: 0,
            max_bytes,
            mode: Mode::Start,
            pending: VecDeque::new(),
        }
    }

    fn pos_at(&self, line: u64) -> Position {
        Position::file_line(self.name.clone(), line)
    }

    /// Reads one line of at most [`max_line`] bytes (without its newline). `None` at the end. A
    /// longer line is consumed to its end; its first bytes are returned with `true`.
    fn read_line(&mut self) -> io::Result<Option<(Bytes, bool)>> {
        let Some((mut line, too_long)) = self.lines.next_line(max_line(self.max_bytes))? else {
            return Ok(None);
        };
        self.line += 1;
        if line.last() == Some(&b'\r') && !too_long {
            line.truncate(line.len() - 1);
        }
        // A byte order mark (files saved by some Windows tools) marks the encoding, not the event.
        if self.line == 1 && line.starts_with(BOM) {
            line.advance(BOM.len());
        }
        Ok(Some((line, too_long)))
    }

    /// Turns one line into records.
    fn line_records(&mut self, line: Bytes, too_long: bool) {
        let pos = self.pos_at(self.line);
        if too_long {
            let mut record = Record::new(line, pos);
            record.truncated = true;
            self.pending.push_back(Input::Ready(Expanded::failed(
                record,
                DecodeError::TooLarge {
                    size: max_line(self.max_bytes) + 1,
                    limit: self.max_bytes,
                },
            )));
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.pending.push_back(Input::Line(Record::new(line, pos)));
    }

    /// Decides between JSON Lines and one multi-line document from the first non-empty line.
    fn start(&mut self) -> io::Result<()> {
        let (first, too_long) = loop {
            match self.read_line()? {
                None => {
                    self.mode = Mode::Done;
                    return Ok(());
                }
                Some((l, t)) if !l.iter().all(u8::is_ascii_whitespace) || t => break (l, t),
                Some(_) => {}
            }
        };
        let first_line = self.line;
        let opens_document = first
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[');
        if too_long
            || serde_json::from_slice::<serde::de::IgnoredAny>(&first).is_ok()
            || !opens_document
        {
            self.mode = Mode::Lines;
            self.line_records(first, too_long);
            return Ok(());
        }
        // The first line is not a whole JSON value but opens one: try the whole input as a document.
        let mut doc = first.to_vec();
        doc.push(b'\n');
        let limit = MAX_DOCUMENT_BYTES.saturating_sub(doc.len());
        let rest = self.lines.rest(limit)?;
        let small_enough = rest.len() <= limit;
        doc.extend_from_slice(&rest);
        if small_enough && serde_json::from_slice::<serde::de::IgnoredAny>(&doc).is_ok() {
            self.pending.extend(
                expand_document(doc, self.pos_at(first_line), self.max_bytes)
                    .into_iter()
                    .map(Input::Ready),
            );
            self.mode = Mode::Done;
            return Ok(());
        }
        // Not a document: JSON Lines after all (the first line is broken). Read it again.
        self.lines.unread(doc);
        self.line = first_line - 1;
        self.mode = Mode::Lines;
        Ok(())
    }
}

impl Iterator for InputReader {
    type Item = io::Result<Input>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            match self.mode {
                Mode::Done => return None,
                Mode::Start => {
                    if let Err(e) = self.start() {
                        self.mode = Mode::Done;
                        return Some(Err(e));
                    }
                }
                Mode::Lines => match self.read_line() {
                    Ok(Some((line, too_long))) => self.line_records(line, too_long),
                    Ok(None) => self.mode = Mode::Done,
                    Err(e) => {
                        self.mode = Mode::Done;
                        return Some(Err(e));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn read(input: &str, max: usize) -> Vec<Expanded> {
        let r = InputReader::new(
            Box::new(Cursor::new(input.as_bytes().to_vec())),
            "in",
            max,
            Arc::default(),
        );
        expand_all(r.map(Result::unwrap).collect(), max)
    }

    /// Each item's line and what it came to once decoded: `event`, or the reason it failed.
    fn positions(items: &[Expanded]) -> Vec<(u64, &'static str)> {
        let outcome = |r: Result<crate::event::Event, DecodeError>| {
            r.map_or_else(|e| e.reason(), |_| "event")
        };
        items
            .iter()
            .map(|e| match e {
                Expanded::Parsed { record, value } => (
                    record.position.line().unwrap(),
                    outcome(crate::event::decode_value(
                        value.clone(),
                        1 << 20,
                        &String::new,
                    )),
                ),
                Expanded::Raw(record) => (
                    record.position.line().unwrap(),
                    outcome(crate::event::decode_event(
                        &record.payload,
                        1 << 20,
                        &String::new,
                    )),
                ),
                Expanded::Failed { record, error } => {
                    (record.position.line().unwrap(), error.reason())
                }
            })
            .collect()
    }

    #[test]
    fn json_lines_with_bad_lines_and_blanks() {
        let out = read("{\"type\":\"a\"}\n\n{broken\n{\"type\":\"b\"}\r\n", 1024);
        assert_eq!(
            positions(&out),
            [(1, "event"), (3, "invalid_json"), (4, "event")]
        );
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped_and_only_there() {
        let out = read("\u{feff}{\"type\":\"a\"}\n\u{feff}{\"type\":\"b\"}\n", 1024);
        assert_eq!(positions(&out), [(1, "event"), (2, "invalid_json")]);
        let doc = read("\u{feff}[\n{\"type\":\"a\"},\n{\"type\":\"b\"}\n]\n", 1024);
        assert_eq!(positions(&doc), [(1, "event"), (1, "event")]);
    }

    #[test]
    fn broken_first_line_is_not_a_document() {
        let out = read("{\"type\":\n{\"type\":\"b\"}\n", 1024);
        assert_eq!(positions(&out), [(1, "invalid_json"), (2, "event")]);
    }

    #[test]
    fn pretty_document() {
        let doc = include_str!("../../tests/fixtures/sqs-event.json");
        let out = read(doc, 1 << 20);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| matches!(e, Expanded::Raw(_))));
    }

    #[test]
    fn long_line_is_cut_and_dead_lettered_and_the_next_line_survives() {
        let long = format!("{{\"type\":\"{}\"}}", "x".repeat(10_000));
        let out = read(&format!("{long}\n{{\"type\":\"b\"}}\n"), 100);
        assert_eq!(positions(&out), [(1, "too_large"), (2, "event")]);
        let Expanded::Failed { record, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(
            record.payload.len(),
            long.len(),
            "under the line limit: kept whole"
        );
        assert!(!record.truncated);
        let huge = format!("{{\"type\":\"{}\"}}", "x".repeat(200_000));
        let out = read(&format!("{huge}\n{{\"type\":\"b\"}}\n"), 100);
        assert_eq!(positions(&out), [(1, "too_large"), (2, "event")]);
        let Expanded::Failed { record, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(record.payload.len(), max_line(100));
        assert!(record.truncated);
    }

    #[test]
    fn last_line_without_newline() {
        assert_eq!(positions(&read("{\"type\":\"a\"}", 1024)), [(1, "event")]);
    }
}
