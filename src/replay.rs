//! `invalidator replay`: files (or stdin) → units of work → Redis and CDNs, with a DLQ file.
//!
//! Reading and JSON parsing run on their own thread and hand over bounded batches (at most two
//! waiting), so memory stays constant whatever the input size. Each batch is one unit of work:
//! planned, coalesced and applied together, on its own task; up to `[replay] max_in_flight` units
//! run at once (planning one overlaps the Redis and CDN round trips of others) and are accounted in
//! input order. Dead-lettered records are written and synced to the DLQ
//! file before they are counted. Pending `redelete_after`s are bounded and all run before exit.
//! If Redis or a CDN stays unreachable, the replay stops and reports how many events were not applied
//! (exit status 3); nothing is dead-lettered for an outage. A unit is counted only once its CDN paths
//! were accepted (CloudFront: its batch window sent and accepted), so nothing is pending at exit.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

use crate::apply::cdn::CdnStats;
use crate::apply::cdn::cloudfront::FREE_PATHS_PER_MONTH;
use crate::apply::dlq::DlqFile;
use crate::apply::redis::{ApplyReport, RedisStats};
use crate::engine::{Engine, EngineError, Outcome, UnitResult, finished, joined};
use crate::event::DlqRecord;
use crate::plan::{Redelete, Redeletes};
use crate::source::files::{Input, InputReader, expand_all};

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Files; `-` is stdin.
    pub inputs: Vec<String>,
    pub dry_run: bool,
    /// DLQ file; default `dlq-<time>.jsonl`, created only if something is dead-lettered.
    pub dlq: Option<PathBuf>,
    /// Events per second, at most.
    pub rate: Option<f64>,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
}

/// The summary printed at the end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub applied: u64,
    pub skipped: u64,
    pub duplicate: u64,
    pub dead_lettered: u64,
    /// Events read but not applied because a dependency was unavailable.
    pub not_applied: u64,
    pub keys_removed: u64,
    pub expires_set: u64,
    pub tags_invalidated: u64,
    pub paths_purged: u64,
    pub paths_logged: u64,
    pub redeletes: u64,
    /// What each CDN target did during the replay (CloudFront: requests, paths sent, cost).
    pub cdn: Vec<(String, CdnStats)>,
    /// Completion notices sent and dropped (`[notify]`).
    pub notices_sent: u64,
    pub notices_dropped: u64,
    /// Actions planned (for `--dry-run`).
    pub actions_planned: u64,
    /// Failovers of the Redis primary met during the replay, what their rewinds applied again, and
    /// `WAIT` shortfalls (each retried).
    pub redis: RedisStats,
    pub seconds: f64,
    pub dlq: Option<PathBuf>,
    /// The outage that stopped the replay, if any.
    pub unavailable: Option<String>,
}

impl Summary {
    pub fn print(&self, out: &mut dyn Write, dry_run: bool) -> io::Result<()> {
        let rate = if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        };
        writeln!(
            out,
            "{}events:         {}",
            if dry_run { "[dry run] " } else { "" },
            self.events
        )?;
        writeln!(out, "  applied:       {}", self.applied)?;
        writeln!(out, "  skipped:       {}", self.skipped)?;
        writeln!(out, "  duplicate:     {}", self.duplicate)?;
        writeln!(out, "  dead-lettered: {}", self.dead_lettered)?;
        if self.not_applied > 0 {
            writeln!(
                out,
                "  NOT applied:   {} (dependency unavailable; replay again)",
                self.not_applied
            )?;
        }
        if dry_run {
            writeln!(
                out,
                "actions planned: {} (nothing written)",
                self.actions_planned
            )?;
        } else {
            writeln!(out, "keys removed:    {}", self.keys_removed)?;
            writeln!(out, "TTLs shortened:  {}", self.expires_set)?;
            writeln!(out, "tags:            {}", self.tags_invalidated)?;
            writeln!(out, "paths purged:    {}", self.paths_purged)?;
            if self.paths_logged > 0 {
                writeln!(
                    out,
                    "paths logged:    {} (log targets, not sent)",
                    self.paths_logged
                )?;
            }
            if self.redeletes > 0 {
                writeln!(out, "redeletes:       {}", self.redeletes)?;
            }
            for (name, c) in &self.cdn {
                match c.kind {
                    "cloudfront" => {
                        writeln!(
                            out,
                            "cloudfront {name}: {} CreateInvalidation, {} paths sent for {} requested",
                            c.requests, c.paths_sent, c.paths_requested
                        )?;
                        if c.collapses > 0 {
                            writeln!(
                                out,
                                "  collapsed:     {} paths into {} wildcards",
                                c.paths_collapsed, c.collapses
                            )?;
                        }
                        if c.throttles > 0 || c.failed_attempts > 0 {
                            writeln!(
                                out,
                                "  retried:       {} throttled, {} failed attempts",
                                c.throttles, c.failed_attempts
                            )?;
                        }
                        writeln!(
                            out,
                            "  est. cost:     ${:.3} at $0.005/path (${:.3} if the month's {} free paths are unused)",
                            c.estimated_cost_usd(),
                            c.paths_sent.saturating_sub(FREE_PATHS_PER_MONTH) as f64 * 0.005,
                            FREE_PATHS_PER_MONTH
                        )?;
                    }
                    "http" if c.paths_requested > 0 => writeln!(
                        out,
                        "http {name}: {} paths purged with {} requests",
                        c.paths_sent, c.requests
                    )?,
                    _ => {}
                }
            }
            if self.redis.failovers > 0 {
                writeln!(
                    out,
                    "failovers:       {} (Redis primary changed; keys removed counts removals on the primary of the moment)",
                    self.redis.failovers
                )?;
                writeln!(
                    out,
                    "rewound actions: {} (applied again on the new primary)",
                    self.redis.rewound_actions
                )?;
            }
            if self.redis.wait_shortfalls > 0 {
                writeln!(
                    out,
                    "wait shortfalls: {} (fewer replicas than wait_replicas confirmed a unit; it was applied again)",
                    self.redis.wait_shortfalls
                )?;
            }
            if self.notices_sent > 0 || self.notices_dropped > 0 {
                writeln!(
                    out,
                    "notices:         {} sent, {} dropped",
                    self.notices_sent, self.notices_dropped
                )?;
            }
        }
        writeln!(
            out,
            "seconds:         {:.3} ({rate:.0} events/s)",
            self.seconds
        )?;
        if let Some(p) = &self.dlq {
            writeln!(out, "dead letters in: {}", p.display())?;
        }
        if let Some(u) = &self.unavailable {
            writeln!(out, "stopped: {u}")?;
        }
        Ok(())
    }

    /// Exit status of SPEC §7: 0 all applied or skipped, 1 some dead-lettered, 3 outage.
    pub fn exit_code(&self) -> i32 {
        if self.unavailable.is_some() {
            3
        } else if self.dead_lettered > 0 {
            1
        } else {
            0
        }
    }
}

/// Failures that stop a replay before it finishes (besides outages, which end in the summary).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {0}: {1}")]
    Input(String, io::Error),
    #[error(
        "cannot write the DLQ file {0}: {1} (dead letters at risk; nothing after them was counted)"
    )]
    Dlq(PathBuf, io::Error),
    #[error("{0}")]
    Usage(String),
}

/// A batch from the reader thread, or the reader's failure.
type Batch = Result<Vec<Input>, ReplayError>;

/// A unit of work running on its own task: its size, and the engine's result.
type Running = tokio::task::JoinHandle<(u64, Result<UnitResult, EngineError>)>;

/// Replays `options.inputs` through `engine`.
pub async fn replay(engine: Arc<Engine>, options: &ReplayOptions) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let batch_size = match options.rate {
        // Small batches keep a low rate smooth (about ten per second).
        Some(r) => ((r / 10.0).ceil() as usize).clamp(1, engine.config.replay.batch_size.get()),
        None => engine.config.replay.batch_size.get(),
    };
    let max_in_flight = engine.config.replay.max_in_flight.get();
    let consumed = Arc::new(AtomicU64::new(0));
    let total_bytes: u64 = options
        .inputs
        .iter()
        .filter(|p| *p != "-")
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = progress_bar(
        options.progress && !options.inputs.iter().any(|p| p == "-"),
        total_bytes,
    );
    let max_bytes = engine.config.limits.max_event_bytes;
    let cdn_before = engine.cdn.stats();
    let redis_before = engine.redis.stats();

    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let inputs = options.inputs.clone();
    let reader_consumed = consumed.clone();
    let reader =
        std::thread::spawn(move || read_inputs(inputs, max_bytes, batch_size, reader_consumed, tx));

    let mut summary = Summary::default();
    let mut dlq = DlqFile::new(options.dlq.clone().unwrap_or_else(default_dlq_path));
    let mut redeletes = Redeletes::default();
    let max_pending = engine.config.replay.max_pending_redeletes;
    let mut outage: Option<EngineError> = None;
    // Units run on their own tasks (planning of one overlaps the I/O of another, on every core) and
    // are accounted in input order, so the DLQ file and the summary read as the input does.
    let mut in_flight: FuturesOrdered<Running> = FuturesOrdered::new();
    let mut reading = true;
    let mut read_error = None;
    // Events let through so far, for `--rate`.
    let mut paced = 0u64;
    // The due `redelete_after`s run on their own task, one batch at a time, beside the units.
    let mut redeleting: Option<Redeleting> = None;

    while reading || !in_flight.is_empty() {
        if redeleting.is_none() && outage.is_none() && !options.dry_run {
            redeleting = redeletes
                .take_due(Instant::now())
                .map(|due| spawn_redelete(&engine, due));
        }
        let next_redelete = redeletes.next_due().filter(|_| redeleting.is_none());
        tokio::select! {
            biased;
            Some(done) = in_flight.next() => {
                let (n, result) = joined(done);
                summary.events += n;
                match result {
                    Ok(unit) => {
                        account(&unit, &mut summary, &mut dlq, options.dry_run)?;
                        if !options.dry_run {
                            redeletes.schedule(Instant::now(), &unit.plan);
                        }
                    }
                    Err(e) => {
                        summary.not_applied += n;
                        // Keep reading (without applying) so the summary counts every event.
                        outage.get_or_insert(e);
                    }
                }
                bar.set_position(consumed.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} events, {} keys removed",
                    summary.events, summary.keys_removed
                ));
            }
            Some(done) = finished(&mut redeleting) => {
                redeleting = None;
                if let Err(e) = done.account(&mut summary) {
                    outage.get_or_insert(e);
                }
            }
            () = tokio::time::sleep_until(next_redelete.unwrap_or_else(Instant::now).into()),
                if next_redelete.is_some() => {}
            // Intake waits while more than `max_pending_redeletes` keys and tags wait.
            batch = rx.recv(),
                if reading && in_flight.len() < max_in_flight && redeletes.pending <= max_pending => {
                let batch = match batch {
                    Some(Ok(batch)) => batch,
                    Some(Err(e)) => {
                        // Units already running finish and are accounted first.
                        read_error = Some(e);
                        reading = false;
                        continue;
                    }
                    None => {
                        reading = false;
                        continue;
                    }
                };
                if outage.is_some() {
                    // Counted, not applied.
                    let n = expand_all(batch, max_bytes).len() as u64;
                    summary.events += n;
                    summary.not_applied += n;
                    continue;
                }
                // JSON lines are parsed on the unit's task, beside the reading; a paced replay
                // parses here to count what it lets through.
                let batch = match options.rate {
                    Some(_) => {
                        let events = expand_all(batch, max_bytes);
                        paced += events.len() as u64;
                        events.into_iter().map(Input::Ready).collect()
                    }
                    None => batch,
                };
                let engine = engine.clone();
                let dry_run = options.dry_run;
                in_flight.push_back(tokio::spawn(async move {
                    let events = expand_all(batch, max_bytes);
                    (events.len() as u64, engine.process(events, dry_run, false).await)
                }));
                if let Some(rate) = options.rate {
                    let due = Duration::from_secs_f64(paced as f64 / rate);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
        }
    }
    // The reader ends when the channel closes; its I/O errors came through the channel.
    drop(rx);
    let _ = reader.join();
    if let Some(e) = read_error {
        return Err(e);
    }

    // Every pending redelete runs before exit.
    if let Some(Err(e)) = finished_now(redeleting.take())
        .await
        .map(|d| d.account(&mut summary))
    {
        outage.get_or_insert(e);
    }
    while outage.is_none()
        && let Some(at) = redeletes.next_due()
    {
        tokio::time::sleep_until(at.into()).await;
        if let Some(due) = redeletes.take_due(Instant::now())
            && let Some(Err(e)) = finished_now(Some(spawn_redelete(&engine, due)))
                .await
                .map(|d| d.account(&mut summary))
        {
            outage = Some(e);
        }
    }
    bar.finish_and_clear();
    summary.cdn = engine
        .cdn
        .stats()
        .into_iter()
        .zip(&cdn_before)
        .map(|((name, now), (_, before))| (name, now.since(before)))
        .collect();
    summary.redis = engine.redis.stats().since(&redis_before);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.unavailable = outage.map(|e| e.to_string());
    if dlq.written() > 0 {
        summary.dlq = Some(dlq.path().to_path_buf());
    }
    Ok(summary)
}

/// A batch of due redeletes, running on its own task.
type Redeleting = tokio::task::JoinHandle<RedeleteDone>;

/// What a batch of redeletes did.
struct RedeleteDone {
    len: usize,
    result: Result<ApplyReport, EngineError>,
}

impl RedeleteDone {
    fn account(self, summary: &mut Summary) -> Result<(), EngineError> {
        let report = self.result?;
        summary.redeletes += self.len as u64;
        summary.keys_removed += report.keys_removed;
        Ok(())
    }
}

fn spawn_redelete(engine: &Arc<Engine>, due: Redelete) -> Redeleting {
    let engine = engine.clone();
    tokio::spawn(async move {
        RedeleteDone {
            len: due.len(),
            result: engine.redelete(&due).await,
        }
    })
}

/// The result of `task`, if any.
async fn finished_now(task: Option<Redeleting>) -> Option<RedeleteDone> {
    Some(joined(task?.await))
}

/// Counts one unit's outcomes and writes its dead letters durably.
fn account(
    unit: &UnitResult,
    summary: &mut Summary,
    dlq: &mut DlqFile,
    dry_run: bool,
) -> Result<(), ReplayError> {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut dead = 0;
    for item in &unit.items {
        match &item.outcome {
            Outcome::Applied => summary.applied += 1,
            Outcome::Skipped => summary.skipped += 1,
            Outcome::Duplicate => summary.duplicate += 1,
            Outcome::DeadLettered { reason, error } => {
                let mut rec = DlqRecord::new(&item.record, reason, error, now.clone());
                if let Some((id, kind)) = &item.event {
                    rec.event_id = Some(id.clone());
                    rec.event_type = Some(kind.clone());
                }
                tracing::warn!(position = %item.record.position, reason, error = %error, "dead-lettered");
                if !dry_run {
                    dlq.write(&rec)
                        .map_err(|e| ReplayError::Dlq(dlq.path().to_path_buf(), e))?;
                }
                dead += 1;
            }
        }
    }
    if dead > 0 && !dry_run {
        dlq.sync()
            .map_err(|e| ReplayError::Dlq(dlq.path().to_path_buf(), e))?;
    }
    summary.dead_lettered += dead;
    summary.keys_removed += unit.redis.keys_removed;
    summary.expires_set += unit.redis.expires_set;
    summary.tags_invalidated += unit.redis.tags_invalidated;
    summary.paths_purged += unit.cdn.purged;
    summary.paths_logged += unit.cdn.logged;
    summary.notices_sent += unit.notices.sent;
    summary.notices_dropped += unit.notices.dropped;
    summary.actions_planned += unit.plan.len() as u64;
    Ok(())
}

/// The reader thread: every input in order, in batches.
fn read_inputs(
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

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
