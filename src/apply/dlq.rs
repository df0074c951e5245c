//! The dead-letter file of `replay`: JSON Lines of [`DlqRecord`]s, appended, opened on first use,
//! and synced to disk before the events it holds are counted as dead-lettered.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::event::DlqRecord;

pub struct DlqFile {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    written: u64,
}

impl DlqFile {
    pub fn new(path: PathBuf) -> Self {
        DlqFile {
            path,
            file: None,
            written: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends one record (buffered; call [`DlqFile::sync`] before acknowledging).
    pub fn write(&mut self, record: &DlqRecord) -> io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(BufWriter::new(f));
        }
        let w = self.file.as_mut().expect("opened above");
        serde_json::to_writer(&mut *w, record)?;
        w.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and fsyncs what was written.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(w) = self.file.as_mut() {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        Ok(())
    }
}
