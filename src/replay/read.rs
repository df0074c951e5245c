//! The reader thread of `replay`: every input in order, in bounded batches, with the bytes read
//! so far for the progress bar. JSON lines are parsed later, on the units' tasks ([`Lines`]).

use std::fs::File;
use std::io::{self, BufReader};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;

use super::ReplayError;
use crate::driver::Records;
use crate::event::Expanded;
use crate::source::files::{Input, InputReader, expand_all};

/// A batch from the reader thread, or the reader's failure.
pub(super) type Batch = Result<Vec<Input>, ReplayError>;

/// A unit of replay: lines parsed and expanded on the unit's own task, beside the reading.
pub(super) struct Lines {
    pub inputs: Vec<Input>,
    pub max_bytes: usize,
}

impl Records for Lines {
    /// Replay never retries a unit: its records are handed over once.
    fn records(&mut self, _attempts: u32) -> Vec<Expanded> {
        expand_all(std::mem::take(&mut self.inputs), self.max_bytes)
    }
}

/// The most input bytes in one batch, whatever `batch_size` says: a unit's memory is several times
/// its input once parsed (about 8 bytes per byte of a JSON array), so lines of a megabyte make
/// batches of a few lines, not of a thousand.
pub(super) const MAX_BATCH_BYTES: usize = 4 << 20;

/// Fills batches of at most `batch_size` items and [`MAX_BATCH_BYTES`] (a single larger item goes
/// alone) and hands them over; shared by the file and the Kafka readers.
pub(super) struct Batcher {
    batch: Vec<Input>,
    bytes: usize,
    batch_size: usize,
    tx: mpsc::Sender<Batch>,
}

impl Batcher {
    pub fn new(batch_size: usize, tx: mpsc::Sender<Batch>) -> Self {
        Batcher {
            batch: Vec::with_capacity(batch_size),
            bytes: 0,
            batch_size,
            tx,
        }
    }

    /// Adds `item`, handing over what is full. False when the replay stopped taking batches.
    pub fn push(&mut self, item: Input) -> bool {
        if !self.batch.is_empty() && self.bytes + item.bytes() > MAX_BATCH_BYTES && !self.flush() {
            return false;
        }
        self.bytes += item.bytes();
        self.batch.push(item);
        self.batch.len() < self.batch_size || self.flush()
    }

    /// Hands over the batch being filled, if any. False when the replay stopped taking batches.
    pub fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        self.bytes = 0;
        self.tx.blocking_send(Ok(full)).is_ok()
    }

    /// Hands over what is left, then the failure that ends the reading.
    pub fn fail(mut self, e: ReplayError) {
        if self.flush() {
            let _ = self.tx.blocking_send(Err(e));
        }
    }
}

/// The reader thread: every input in order, in batches ([`Batcher`]).
pub(super) fn read_inputs(
    inputs: Vec<String>,
    max_bytes: usize,
    batch_size: usize,
    consumed: Arc<AtomicU64>,
    tx: mpsc::Sender<Batch>,
) {
    let mut batcher = Batcher::new(batch_size, tx);
    for input in inputs {
        let (reader, name): (Box<dyn io::BufRead + Send>, String) = if input == "-" {
            (
                Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
                "stdin".into(),
            )
        } else {
            match File::open(&input) {
                Ok(f) => (
                    Box::new(BufReader::with_capacity(1 << 16, f)),
                    input.clone(),
                ),
                Err(e) => return batcher.fail(ReplayError::Input(input, e)),
            }
        };
        for item in InputReader::new(reader, &name, max_bytes, consumed.clone()) {
            match item {
                Ok(item) => {
                    if !batcher.push(item) {
                        return;
                    }
                }
                Err(e) => return batcher.fail(ReplayError::Input(name, e)),
            }
        }
    }
    batcher.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the reader over `path` and returns each batch's (items, bytes).
    fn batches(path: &std::path::Path, batch_size: usize) -> Vec<(usize, usize)> {
        let (tx, mut rx) = mpsc::channel(2);
        let inputs = vec![path.display().to_string()];
        let consumed = Arc::new(AtomicU64::new(0));
        let reader =
            std::thread::spawn(move || read_inputs(inputs, 2 << 20, batch_size, consumed, tx));
        let mut out = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            let batch = batch.expect("readable");
            out.push((batch.len(), batch.iter().map(Input::bytes).sum()));
        }
        reader.join().unwrap();
        out
    }

    #[test]
    fn batches_are_bounded_in_bytes_as_well_as_in_items() {
        let dir = std::env::temp_dir().join(format!("invalidator-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.jsonl");
        // 12 lines of about 1 MiB (arrays of events), then 100 small ones.
        let big = format!(
            "[{}]",
            vec![r#"{"type":"a","data":{"k":"xxxxxxxxxx"}}"#; 27_000].join(",")
        );
        let mut text = String::new();
        for _ in 0..12 {
            text.push_str(&big);
            text.push('\n');
        }
        for i in 0..100 {
            text.push_str(&format!("{{\"type\":\"a\",\"id\":\"{i}\"}}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let got = batches(&path, 1000);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got.iter().map(|b| b.0).sum::<usize>(),
            112,
            "every line, once"
        );
        assert!(got.len() >= 4, "{got:?}");
        for (items, bytes) in &got {
            assert!(*bytes <= MAX_BATCH_BYTES || *items == 1, "{got:?}");
        }
    }
}
