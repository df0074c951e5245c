//! The dead-letter file of `replay`: JSON Lines of [`crate::event::DlqRecord`]s, appended, opened
//! on first use, and synced to disk before the letters it holds count as written.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{DeadLetter, DeadLetterSink};

pub struct DlqFile {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file: Option<BufWriter<File>>,
    written: u64,
}

impl DlqFile {
    pub fn new(path: PathBuf) -> Self {
        DlqFile {
            path,
            state: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.state.lock().expect("DLQ file lock").written
    }

    /// Appends the letters and syncs them to disk.
    fn write(&self, letters: &[DeadLetter<'_>]) -> io::Result<()> {
        let mut state = self.state.lock().expect("DLQ file lock");
        if state.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            state.file = Some(BufWriter::new(f));
        }
        let w = state.file.as_mut().expect("opened above");
        for l in letters {
            serde_json::to_writer(&mut *w, &l.to_record())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        w.get_ref().sync_data()?;
        state.written += letters.len() as u64;
        Ok(())
    }
}

impl DeadLetterSink for DlqFile {
    /// On an error every letter of the batch is reported unwritten, though some may be in the
    /// file: a redrive meets them twice, never not at all.
    async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, String)> {
        if letters.is_empty() {
            return Vec::new();
        }
        match self.write(letters) {
            Ok(()) => Vec::new(),
            Err(e) => {
                let error = format!("cannot write the DLQ file {}: {e}", self.path.display());
                (0..letters.len()).map(|i| (i, error.clone())).collect()
            }
        }
    }
}
