//! One unit on its own task: the engine (through outages, per [`Outages`]), then its dead letters
//! (in turn, per [`super::Order`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;

use super::{Done, Failure, Outages, Records};
use crate::apply::cdn::PurgeReport;
use crate::apply::notify::NoticeReport;
use crate::apply::redis::ApplyReport;
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::engine::{Engine, EngineError, Outcome, UnitResult};
use crate::plan::{DurationKey, Redelete};
use crate::telemetry::{self, RetryCause};

/// What a unit did, as the driver (its redeletes) and the acknowledger (replay's summary) need it.
/// Made on the unit's own task, which frees the unit's records, events and plan there: the
/// driver's task is also the worker's intake, and freeing a unit there cost that one serial task
/// about 790 instructions an event.
#[derive(Debug, Default)]
pub struct UnitReport {
    pub applied: u64,
    pub skipped: u64,
    pub duplicate: u64,
    pub dead_lettered: u64,
    /// Actions in the coalesced plan.
    pub actions: u64,
    /// The plan's redeletes: delay → what to delete again then.
    pub redeletes: BTreeMap<DurationKey, Redelete>,
    pub redis: ApplyReport,
    pub cdn: PurgeReport,
    pub notices: NoticeReport,
}

impl From<UnitResult> for UnitReport {
    fn from(mut unit: UnitResult) -> UnitReport {
        let mut report = UnitReport {
            actions: unit.plan.len() as u64,
            redeletes: std::mem::take(&mut unit.plan.redeletes),
            redis: unit.redis,
            cdn: unit.cdn,
            notices: unit.notices,
            ..UnitReport::default()
        };
        for item in &unit.items {
            *match item.outcome {
                Outcome::Applied => &mut report.applied,
                Outcome::Skipped => &mut report.skipped,
                Outcome::Duplicate => &mut report.duplicate,
                Outcome::DeadLettered { .. } => &mut report.dead_lettered,
            } += 1;
        }
        report
    }
}

/// Runs one unit: the engine (through outages, per [`Outages`]), then its dead letters.
pub(super) struct UnitRunner<S> {
    pub engine: Arc<Engine>,
    pub sink: Arc<S>,
    pub outages: Outages,
    pub dry_run: bool,
}

/// A unit's place in the order of dead-letter writes: it writes after `previous` (dropped when
/// that unit's letters are written, however it ended), and releases the next unit by dropping
/// its own sender.
pub(super) struct Turn {
    pub previous: Option<oneshot::Receiver<()>>,
    pub _mine: oneshot::Sender<()>,
}

impl<S: DeadLetterSink> UnitRunner<S> {
    pub async fn run<U: Records>(&self, mut unit: U, turn: Turn) -> Done {
        let started = Instant::now();
        let mut backoff = retry_backoff();
        let mut attempts = 0u32;
        let result = loop {
            let records = unit.records(attempts);
            let events = records.len() as u64;
            match self.engine.process(records, self.dry_run).await {
                Ok(result) => break result,
                Err(e) => {
                    attempts += 1;
                    telemetry::unit_retry(match e {
                        EngineError::Redis(_) => RetryCause::Redis,
                        EngineError::Cdn(_) => RetryCause::Cdn,
                    });
                    let Outages::Retry(health) = &self.outages else {
                        return Done {
                            events,
                            result: Err(Failure::Unavailable(e)),
                        };
                    };
                    health.set_outage(Some(e.to_string()));
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, attempts, retry_in = ?wait, events,
                        "unit not applied (dependency unavailable); nothing dead-lettered, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        if let Some(previous) = turn.previous {
            let _ = previous.await;
        }
        let written = self.dead_letters(&result, &mut backoff).await;
        if let (Outages::Retry(health), true) = (&self.outages, attempts > 0 || written.1) {
            tracing::info!(attempts, "unit applied after an outage");
            health.set_outage(None);
        }
        telemetry::unit_done(started.elapsed());
        Done {
            events: result.items.len() as u64,
            result: written.0.map(|()| UnitReport::from(result)),
        }
    }

    /// Logs and writes the unit's dead letters. Returns whether they were written, and whether a
    /// write failed on the way.
    async fn dead_letters(
        &self,
        unit: &UnitResult,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> (Result<(), Failure>, bool) {
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut letters = DeadLetter::of(&unit.items, &now);
        for l in &letters {
            let span = tracing::info_span!(
                "event",
                id = l.event_id.unwrap_or("-"),
                r#type = l.event_type.unwrap_or("-")
            );
            span.in_scope(|| {
                tracing::warn!(position = %l.record.position, reason = l.reason,
                error = %l.error, "dead-lettered")
            });
        }
        let mut failed_once = false;
        while !letters.is_empty() && !self.dry_run {
            let failed = self.sink.send(&letters).await;
            let Some((_, error)) = failed.first() else {
                break;
            };
            failed_once = true;
            telemetry::dlq_write_failed(failed.len() as u64);
            let Outages::Retry(health) = &self.outages else {
                return (Err(Failure::DeadLetters(error.clone())), true);
            };
            let wait = backoff.next().unwrap_or(Duration::from_secs(5));
            tracing::error!(%error, failed = failed.len(), retry_in = ?wait,
                "DLQ write failed: dead letters at risk, their records are not acknowledged; retrying");
            health.set_outage(Some(format!("DLQ: {error}")));
            tokio::time::sleep(wait).await;
            let keep: std::collections::HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            letters = letters
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.contains(i))
                .map(|(_, l)| l)
                .collect();
        }
        (Ok(()), failed_once)
    }
}

fn retry_backoff() -> impl Iterator<Item = Duration> {
    crate::backoff::jittered(Duration::from_millis(100), Duration::from_secs(5)).build()
}
