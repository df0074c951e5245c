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

/// The reader thread: every input in order, in batches.
pub(super) fn read_inputs(
    inputs: Vec<String>,
    max_bytes: usize,
    batch_size: usize,
    consumed: Arc<AtomicU64>,
    tx: mpsc::Sender<Batch>,
) {
    let mut batch = Vec::with_capacity(batch_size);
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
                Err(e) => {
                    let _ = tx.blocking_send(Err(ReplayError::Input(input, e)));
                    return;
                }
            }
        };
        for item in InputReader::new(reader, &name, max_bytes, consumed.clone()) {
            match item {
                Ok(e) => batch.push(e),
                Err(e) => {
                    let _ = tx.blocking_send(Err(ReplayError::Input(name, e)));
                    return;
                }
            }
            if batch.len() >= batch_size {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                if tx.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}
