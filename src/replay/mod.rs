//! `invalidator replay`: files (or stdin), or a time window of a Kafka topic ([`kafka`]) → units of
//! work → Redis and CDNs, with a DLQ file. An [`Adapter`] of the [`Driver`]: the source is the
//! reader thread, the acknowledgement the summary.
//!
//! Reading and JSON parsing run on their own thread and hand over bounded batches (at most two
//! waiting), so memory stays constant whatever the input size. Each batch is one unit of work; up to
//! `[replay] max_in_flight` units run at once and are accounted in input order, their dead letters
//! written (and synced) to the DLQ file in input order before they are counted. Pending
//! `redelete_after`s are bounded and all run before exit. If Redis or a CDN stays unreachable, the
//! replay stops applying, reads on, and reports how many events were not applied (exit status 3);
//! nothing is dead-lettered for an outage. A unit is counted only once its CDN paths were accepted
//! (CloudFront: its batch window sent and accepted), so nothing is pending at exit.

#[cfg(feature = "kafka")]
pub mod kafka;
mod read;
mod summary;

pub use summary::Summary;

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::apply::redis::ApplyReport;
use crate::dead_letter::file::DlqFile;
use crate::driver::{self, Adapter, Done, Driver, Failure, Order, Outages, Redeleted, Room};
use crate::engine::{Engine, EngineError};
use crate::source::files::{Input, expand_all};
use read::{Batch, Lines, read_inputs};

/// Where the events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files; `-` is stdin.
    Files(Vec<String>),
    /// A time window of a topic, read with `[kafka] brokers` and `[kafka.properties]`.
    #[cfg(feature = "kafka")]
    Kafka(kafka::Window),
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: Source,
    pub dry_run: bool,
    /// DLQ file; default `dlq-<time>.jsonl`, created only if something is dead-lettered.
    pub dlq: Option<PathBuf>,
    /// Events per second, at most.
    pub rate: Option<f64>,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
}

/// Failures that stop a replay before it finishes (besides outages, which end in the summary).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {0}: {1}")]
    Input(String, io::Error),
    #[error("{0} (dead letters at risk; nothing after them was counted)")]
    Dlq(String),
    #[error("{0}")]
    Usage(String),
    /// The event source (the Kafka brokers) cannot be read.
    #[error("{0}")]
    Unavailable(String),
}

/// Replays `options.inputs` through `engine`.
pub async fn replay(engine: Arc<Engine>, options: &ReplayOptions) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let config = &engine.config;
    let batch_size = match options.rate {
        // Small batches keep a low rate smooth (about ten per second).
        Some(r) => ((r / 10.0).ceil() as usize).clamp(1, config.replay.batch_size.get()),
        None => config.replay.batch_size.get(),
    };
    let max_bytes = config.limits.max_event_bytes;
    let (tx, rx) = mpsc::channel::<Batch>(2);
    let reader = start_reader(&engine, options, batch_size, tx).await?;
    let dlq = Arc::new(DlqFile::new(
        options.dlq.clone().unwrap_or_else(default_dlq_path),
    ));
    let driver = Driver {
        engine: engine.clone(),
        sink: dlq.clone(),
        settings: driver::Settings {
            max_in_flight: config.replay.max_in_flight.get(),
            max_pending_redeletes: config.replay.max_pending_redeletes,
            order: Order::Input,
            outages: Outages::GiveUp,
            dry_run: options.dry_run,
            shutdown_timeout: Duration::ZERO,
        },
    };
    let (cdn_before, redis_before) = (engine.cdn.stats(), engine.redis.stats());
    let mut intake = Intake {
        rx,
        pending: None,
        read_error: None,
        summary: Summary::default(),
        outage: None,
        bar: reader.bar,
        consumed: reader.consumed,
        max_bytes,
        rate: options.rate,
        started,
        paced: 0,
    };
    let ran = driver.run(&mut intake, std::future::pending()).await;
    // The reader ends when the channel closes; its I/O errors came through the channel.
    drop(intake.rx);
    let _ = reader.thread.join();
    ran?;
    if let Some(e) = intake.read_error {
        return Err(e);
    }
    intake.bar.finish_and_clear();
    let mut summary = intake.summary;
    summary.cdn = engine
        .cdn
        .stats()
        .into_iter()
        .zip(&cdn_before)
        .map(|((name, now), (_, before))| (name, now.since(before)))
        .collect();
    summary.redis = engine.redis.stats().since(&redis_before);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.unavailable = intake.outage;
    summary.outside_window = reader.outside.load(Ordering::Relaxed);
    if dlq.written() > 0 {
        summary.dlq = Some(dlq.path().to_path_buf());
    }
    Ok(summary)
}

/// The reader thread and what it tells while it reads.
struct Reader {
    thread: std::thread::JoinHandle<()>,
    bar: ProgressBar,
    /// Bytes (files) or records (Kafka) read so far, for the progress bar.
    consumed: Arc<AtomicU64>,
    /// Records of a Kafka window's offsets timestamped outside it.
    outside: Arc<AtomicU64>,
}

/// Starts reading `options.source` in batches into `tx`; a Kafka window is resolved first.
async fn start_reader(
    engine: &Engine,
    options: &ReplayOptions,
    batch_size: usize,
    tx: mpsc::Sender<Batch>,
) -> Result<Reader, ReplayError> {
    let max_bytes = engine.config.limits.max_event_bytes;
    let (consumed, outside) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (thread, bar) = match &options.source {
        Source::Files(inputs) => {
            let (inputs, consumed) = (inputs.clone(), consumed.clone());
            let bar = file_progress(options, inputs.clone());
            let thread = std::thread::spawn(move || {
                read_inputs(inputs, max_bytes, batch_size, consumed, tx)
            });
            (thread, bar)
        }
        #[cfg(feature = "kafka")]
        Source::Kafka(window) => {
            let (kafka, window) = (engine.config.kafka.clone(), window.clone());
            let resolved = tokio::task::spawn_blocking(move || kafka::resolve(&kafka, window))
                .await
                .map_err(|e| ReplayError::Usage(format!("cannot resolve the window: {e}")))??;
            for s in &resolved.spans {
                tracing::info!(
                    partition = s.partition,
                    start = s.start,
                    end = s.end,
                    "window"
                );
            }
            let bar = bar(options.progress, resolved.records(), "{pos}/{len} records");
            let (consumed, outside) = (consumed.clone(), outside.clone());
            let thread = std::thread::spawn(move || {
                kafka::read_window(resolved, max_bytes, batch_size, consumed, outside, tx)
            });
            (thread, bar)
        }
    };
    Ok(Reader {
        thread,
        bar,
        consumed,
        outside,
    })
}

/// The reader thread as a source, the summary as the acknowledgement.
struct Intake {
    rx: mpsc::Receiver<Batch>,
    /// A batch read, not handed over yet (`next` is cancel-safe), and its number of events when
    /// paced.
    pending: Option<(Vec<Input>, u64)>,
    read_error: Option<ReplayError>,
    summary: Summary,
    /// The outage that stopped applying, if any.
    outage: Option<String>,
    bar: ProgressBar,
    consumed: Arc<AtomicU64>,
    max_bytes: usize,
    rate: Option<f64>,
    started: Instant,
    /// Events handed over so far, for `--rate`.
    paced: u64,
}

impl Intake {
    /// Counts a batch read after an outage: read, not applied.
    fn not_applied(&mut self, batch: Vec<Input>) {
        let n = expand_all(batch, self.max_bytes).len() as u64;
        self.summary.events += n;
        self.summary.not_applied += n;
    }

    /// A paced replay parses the batch here, to count what it lets through.
    fn take(&self, batch: Vec<Input>) -> (Vec<Input>, u64) {
        if self.rate.is_none() {
            return (batch, 0);
        }
        let events = expand_all(batch, self.max_bytes);
        let n = events.len() as u64;
        (events.into_iter().map(Input::Ready).collect(), n)
    }
}

impl Adapter for Intake {
    type Unit = Lines;
    type Token = ();
    type Error = ReplayError;

    async fn next(&mut self, room: Room) -> Option<(Lines, ())> {
        if !room.any() {
            return std::future::pending().await;
        }
        loop {
            if let Some((batch, _)) = self.pending.take_if(|_| self.outage.is_some()) {
                self.not_applied(batch);
            }
            if self.pending.is_some() {
                break;
            }
            match self.rx.recv().await? {
                Ok(batch) if self.outage.is_some() => self.not_applied(batch),
                Ok(batch) => self.pending = Some(self.take(batch)),
                Err(e) => {
                    // Units already running finish and are accounted first.
                    self.read_error = Some(e);
                    return None;
                }
            }
        }
        if let Some(rate) = self.rate {
            // `--rate` is at least 0.001/s, so this is far from overflowing; saturate anyway.
            let due = Duration::try_from_secs_f64(self.paced as f64 / rate)
                .unwrap_or(Duration::from_secs(u32::MAX.into()));
            tokio::time::sleep_until((self.started + due).into()).await;
        }
        let (inputs, n) = self.pending.take()?;
        self.paced += n;
        let max_bytes = self.max_bytes;
        Some((Lines { inputs, max_bytes }, ()))
    }

    fn ack(&mut self, (): (), done: Done) -> Result<(), ReplayError> {
        self.summary.events += done.events;
        match done.result {
            Ok(unit) => self.summary.add(&unit),
            Err(Failure::Unavailable(e)) => {
                self.summary.not_applied += done.events;
                // Read on (without applying) so the summary counts every event.
                self.outage.get_or_insert(e.to_string());
            }
            Err(Failure::DeadLetters(e)) => return Err(ReplayError::Dlq(e)),
        }
        self.bar.set_position(self.consumed.load(Ordering::Relaxed));
        self.bar.set_message(format!(
            "{} events, {} keys removed",
            self.summary.events, self.summary.keys_removed
        ));
        Ok(())
    }

    fn redeleted(&mut self, keys: usize, result: Result<ApplyReport, EngineError>) -> Redeleted {
        match result {
            Ok(report) => {
                self.summary.redeletes += keys as u64;
                self.summary.keys_removed += report.keys_removed;
                Redeleted::Done
            }
            Err(e) => {
                self.outage.get_or_insert(e.to_string());
                Redeleted::Stop
            }
        }
    }

    fn gave_up(&self) -> bool {
        self.outage.is_some()
    }
}

fn default_dlq_path() -> PathBuf {
    let now = OffsetDateTime::now_utc();
    PathBuf::from(format!(
        "dlq-{:04}{:02}{:02}T{:02}{:02}{:02}Z.jsonl",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    ))
}

/// A progress bar over the bytes of the input files (never for stdin).
fn file_progress(options: &ReplayOptions, inputs: Vec<String>) -> ProgressBar {
    if inputs.iter().any(|p| p == "-") {
        return ProgressBar::hidden();
    }
    let total: u64 = inputs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    bar(options.progress, total, "{bytes}/{total_bytes}")
}

/// A progress bar to `total` (only on a terminal); `counts` is indicatif's template of the
/// position and total (`{bytes}/{total_bytes}`, `{pos}/{len} records`).
fn bar(show: bool, total: u64, counts: &str) -> ProgressBar {
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {counts} {{msg}} [{{elapsed_precise}}, eta {{eta}}]"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
