//! The lines of an input, each handed out as a slice of the block it was read into: no allocation
//! and no copy per line. The lines of a block share it; it is freed with the last of them.
//!
//! What a block pins: a batch of lines holds its own bytes and the unused ends of at most the two
//! blocks it starts and ends in, so a batch bounded to N bytes of lines holds at most N + 2 ×
//! [`BLOCK`]. A line longer than a block gets a block of its own (the block grows by doubling, so a
//! long line is copied a bounded number of times, not once per read).

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

/// The bytes of a new block (about 250 events of the usual size).
const BLOCK: usize = 64 << 10;

/// Splits a reader into lines.
pub(super) struct LineReader {
    reader: Box<dyn BufRead + Send>,
    /// Read, not handed out yet: the start of the next line, in the current block.
    pending: BytesMut,
    /// How far `pending` is known to hold no newline.
    searched: usize,
    /// Bytes taken from the reader so far, for progress.
    consumed: Arc<AtomicU64>,
}

impl LineReader {
    pub fn new(reader: Box<dyn BufRead + Send>, consumed: Arc<AtomicU64>) -> Self {
        LineReader {
            reader,
            pending: BytesMut::with_capacity(BLOCK),
            searched: 0,
            consumed,
        }
    }

    /// The next line, without its newline, and whether it was longer than `limit`: then only its
    /// first `limit` bytes are kept and the rest is read to the line's end and dropped (a line is
    /// never held whole past the limit). `None` at the end of the input.
    pub fn next_line(&mut self, limit: usize) -> io::Result<Option<(Bytes, bool)>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.pending[self.searched..]) {
                let end = self.searched + i;
                let mut line = self.pending.split_to(end + 1).freeze();
                self.searched = 0;
                line.truncate(end.min(limit));
                return Ok(Some((line, end > limit)));
            }
            self.searched = self.pending.len();
            if self.pending.len() > limit {
                let line = self.pending.split_to(limit).freeze();
                self.skip_line()?;
                return Ok(Some((line, true)));
            }
            if !self.fill()? {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                // The last line, without a newline.
                self.searched = 0;
                return Ok(Some((self.pending.split().freeze(), false)));
            }
        }
    }

    /// Drops what is left of the current line, its newline included.
    fn skip_line(&mut self) -> io::Result<()> {
        self.pending.clear();
        self.searched = 0;
        loop {
            let (used, done) =
                with_available(&mut *self.reader, |available| {
                    match memchr::memchr(b'\n', available) {
                        Some(i) => (i + 1, true),
                        None => (available.len(), false),
                    }
                })?;
            if used == 0 {
                return Ok(()); // the end of the input
            }
            self.consume(used);
            if done {
                return Ok(());
            }
        }
    }

    /// Moves what the reader has into `pending`, as much as fits the current block (a new block
    /// when it is full). False at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pending.capacity() == self.pending.len() {
            // Full: a new block, twice the line so far when that is more.
            self.pending.reserve(BLOCK.max(self.pending.len()));
        }
        let room = self.pending.capacity() - self.pending.len();
        let pending = &mut self.pending;
        let n = with_available(&mut *self.reader, |available| {
            let n = available.len().min(room);
            pending.extend_from_slice(&available[..n]);
            n
        })?;
        self.consume(n);
        Ok(n > 0)
    }

    /// Marks `n` bytes of the reader's buffer as taken, and counts them.
    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Everything left to read, up to `limit` bytes and one more (so that the caller can tell
    /// whether there was more): what was read ahead, then the reader's.
    pub fn rest(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let keep = limit.saturating_add(1).min(self.pending.len());
        let mut rest = Vec::from(&self.pending.split_to(keep)[..]);
        self.searched = 0;
        if rest.len() <= limit {
            let more = (limit - rest.len()) as u64 + 1;
            let before = rest.len();
            (&mut self.reader).take(more).read_to_end(&mut rest)?;
            self.consumed
                .fetch_add((rest.len() - before) as u64, Ordering::Relaxed);
        }
        Ok(rest)
    }

    /// Reads `bytes` again, then the rest of the input (what [`LineReader::rest`] left). They are
    /// not counted again as consumed.
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.pending.split());
        self.searched = 0;
        self.consumed
            .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
        let rest = std::mem::replace(&mut self.reader, Box::new(io::empty()));
        self.reader = Box::new(io::Cursor::new(bytes).chain(rest));
    }
}

/// `f` of what `reader` has buffered (empty at the end of the input), read again after an
/// interrupted read.
fn with_available<T>(reader: &mut dyn BufRead, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
    loop {
        match reader.fill_buf() {
            Ok(available) => return Ok(f(available)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `text` read in reads of `chunk` bytes, with the limit `limit`.
    fn lines(text: &[u8], chunk: usize, limit: usize) -> Vec<(Vec<u8>, bool)> {
        let reader = io::BufReader::with_capacity(chunk, io::Cursor::new(text.to_vec()));
        let consumed = Arc::new(AtomicU64::new(0));
        let mut r = LineReader::new(Box::new(reader), consumed.clone());
        let mut out = Vec::new();
        while let Some((line, long)) = r.next_line(limit).unwrap() {
            out.push((line.to_vec(), long));
        }
        assert_eq!(consumed.load(Ordering::Relaxed), text.len() as u64);
        out
    }

    /// The same split done the plain way.
    fn expected(text: &[u8], limit: usize) -> Vec<(Vec<u8>, bool)> {
        let mut parts: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        if parts.last().is_some_and(|l| l.is_empty()) {
            parts.pop();
        }
        parts
            .into_iter()
            .map(|l| (l[..l.len().min(limit)].to_vec(), l.len() > limit))
            .collect()
    }

    #[test]
    fn lines_across_reads_and_blocks_are_the_plain_split() {
        // Lines of every length up to past two blocks, some blank, the last without a newline.
        let mut text = Vec::new();
        for (i, len) in [
            0,
            1,
            70,
            0,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3,
            2 * BLOCK + 5,
            9,
        ]
        .iter()
        .enumerate()
        {
            text.extend((0..*len).map(|j| b'a' + ((i + j) % 26) as u8));
            text.push(b'\n');
        }
        text.extend_from_slice(b"{\"last\":1}");
        for chunk in [1, 7, 4096, 1 << 16, 1 << 20] {
            for limit in [0, 5, 100, BLOCK, 3 * BLOCK] {
                assert_eq!(
                    lines(&text, chunk, limit),
                    expected(&text, limit),
                    "reads of {chunk}, limit {limit}"
                );
            }
        }
    }

    #[test]
    fn many_short_lines_share_few_blocks() {
        let text = "{\"type\":\"a\"}\n".repeat(20_000);
        let got = lines(text.as_bytes(), 1 << 16, 1 << 20);
        assert_eq!(got.len(), 20_000);
        assert!(
            got.iter()
                .all(|(l, long)| l == b"{\"type\":\"a\"}" && !long)
        );
    }

    #[test]
    fn the_rest_and_reading_it_again() {
        let text = b"{\"a\":\n1}\nnext\n".to_vec();
        let consumed = Arc::new(AtomicU64::new(0));
        let mut r = LineReader::new(
            Box::new(io::BufReader::with_capacity(
                4,
                io::Cursor::new(text.clone()),
            )),
            consumed.clone(),
        );
        let (first, _) = r.next_line(100).unwrap().unwrap();
        assert_eq!(&first[..], b"{\"a\":");
        let rest = r.rest(100).unwrap();
        assert_eq!(rest, b"1}\nnext\n");
        assert_eq!(r.rest(100).unwrap(), b"", "all taken");
        let short = r.rest(0).unwrap();
        assert!(short.is_empty());
        let mut doc = first.to_vec();
        doc.push(b'\n');
        doc.extend_from_slice(&rest);
        r.unread(doc);
        let mut again = Vec::new();
        while let Some((l, _)) = r.next_line(100).unwrap() {
            again.push(l.to_vec());
        }
        assert_eq!(again, [&b"{\"a\":"[..], b"1}", b"next"]);
        assert_eq!(consumed.load(Ordering::Relaxed), text.len() as u64);
    }

    #[test]
    fn rest_stops_one_byte_past_its_limit() {
        let consumed = Arc::new(AtomicU64::new(0));
        let mut r = LineReader::new(
            Box::new(io::BufReader::with_capacity(
                3,
                io::Cursor::new(vec![b'x'; 50]),
            )),
            consumed,
        );
        assert_eq!(
            r.next_line(5).unwrap().unwrap(),
            (Bytes::from("xxxxx"), true)
        );
        assert_eq!(r.rest(10).unwrap(), b"");
    }
}
