//! `invalidator run`: the Kafka worker. fetch → micro-batch → engine (decode, plan, apply) → DLQ
//! topic → store offsets.
//!
//! Invariants:
//! - at-least-once: an offset is stored only when every message before it on its partition is
//!   applied, skipped, duplicate, or acknowledged by the broker on the DLQ topic; librdkafka
//!   commits only stored offsets (every second, before a revocation, and at shutdown);
//! - an outage (Redis or a CDN unreachable, the DLQ topic not accepting writes) never dead-letters
//!   anything: the unit is retried with exponential backoff and jitter, the assigned partitions are
//!   paused (the consumer keeps polling so it stays in the group), `/readyz` says why, and work
//!   resumes where it stopped;
//! - bounded memory: at most `max_in_flight` units of `batch_size` events, one filling batch,
//!   librdkafka's bounded prefetch, and at most `max_pending_redeletes` waiting redeletes;
//! - shutdown (the `shutdown` future) stops fetching, finishes the in-flight units (CloudFront
//!   batches are sent at once, without waiting for their window), runs the pending redeletes and
//!   commits, within `shutdown_timeout`; what is still unapplied then is logged and not committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Level;

use crate::apply::redis::ApplyReport;
use crate::engine::{Engine, EngineError, Outcome, finished, joined};
use crate::health::Health;
use crate::plan::{Plan, Redelete, Redeletes};
use crate::source::kafka::{
    self, ClientError, DeadLetter, DlqProducer, Input, KafkaConsumer, Shared,
};
use crate::telemetry;

/// How the run ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunReport {
    pub units: u64,
    pub events: u64,
    /// Everything in flight finished and was committed before the deadline.
    pub clean: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a finished unit hands back to the loop.
struct Done {
    positions: Vec<(String, i32, i64)>,
    redeletes: Plan,
}

/// Runs the worker until `shutdown` resolves.
pub async fn run(
    engine: Arc<Engine>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, WorkerError> {
    let k = engine.config.kafka.clone();
    let shared = Arc::new(Shared::default());
    let consumer = kafka::consumer(&k, shared.clone())?;
    let dlq = Arc::new(DlqProducer::new(&k)?);
    let max_bytes = engine.config.limits.max_event_bytes;
    tracing::info!(
        brokers = %k.brokers,
        group = %k.group,
        topics = ?k.topics,
        "consuming"
    );

    let mut report = RunReport::default();
    let mut batch: Vec<Input> = Vec::with_capacity(k.batch_size.get());
    let mut batch_started: Option<Instant> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut redeletes = Redeletes::default();
    // The due `redelete_after`s run on their own task, one batch at a time, beside the units.
    let mut redeleting: Option<Redeleting> = None;
    let mut paused = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        if shared.joined.load(Ordering::Relaxed) {
            health.set_joined(true);
        }
        let rebalanced = shared.rebalanced.swap(false, Ordering::SeqCst);
        let want_pause = health.in_outage() || redeletes.pending > k.max_pending_redeletes;
        if want_pause != paused || (rebalanced && want_pause) {
            set_paused(&consumer, want_pause);
            paused = want_pause;
        }

        let full = batch.len() >= k.batch_size.get();
        let due = batch_started.is_some_and(|t| t.elapsed() >= k.batch_wait);
        if !batch.is_empty() && (full || due) && in_flight.len() < k.max_in_flight.get() {
            let unit: Vec<Input> = if batch.len() > k.batch_size.get() {
                batch.drain(..k.batch_size.get()).collect()
            } else {
                std::mem::replace(&mut batch, Vec::with_capacity(k.batch_size.get()))
            };
            batch_started = (!batch.is_empty()).then(Instant::now);
            report.units += 1;
            report.events += unit.len() as u64;
            in_flight.push(spawn_unit(&engine, &dlq, &health, unit));
            continue;
        }

        // Paused, we keep polling (to stay in the group and see rebalances); what librdkafka had
        // already fetched is kept in the batch.
        let recv_allowed = paused || batch.len() < k.batch_size.get();
        let batch_deadline = batch_started.map(|t| t + k.batch_wait);
        let redelete_at = redeletes.next_due().filter(|_| redeleting.is_none());
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = in_flight.next() => finish(&consumer, &shared, &mut redeletes, joined(done)),
            () = sleep_until(batch_deadline), if batch_deadline.is_some() && in_flight.len() < k.max_in_flight.get() => {}
            () = sleep_until(redelete_at), if redelete_at.is_some() => {
                redeleting = redeletes
                    .take_due(Instant::now())
                    .map(|due| spawn_redelete(&engine, due));
            }
            Some((due, result)) = finished(&mut redeleting) => {
                redeleting = None;
                retry_failed_redelete(&mut redeletes, due, result);
            }
            m = consumer.recv(), if recv_allowed => {
                let mut next = Some(m);
                // Then what librdkafka already holds, without waiting: a backlog fills whole
                // units, a trickle goes out at once (after `batch_wait`, default 0).
                while let Some(m) = next {
                    match m {
                        Ok(m) => {
                            let input = Input::from_message(&m, max_bytes);
                            shared
                                .watermarks
                                .lock()
                                .expect("watermarks lock")
                                .begin(input.topic(), input.partition(), input.offset());
                            if batch.is_empty() {
                                batch_started = Some(Instant::now());
                            }
                            batch.push(input);
                        }
                        Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
                    }
                    next = if batch.len() < k.batch_size.get() {
                        consumer.recv().now_or_never()
                    } else {
                        None
                    };
                }
            }
            _ = tick.tick() => {}
        }
    }

    // Shutdown: stop fetching, finish what was taken in, run pending redeletes, commit.
    health.set_stopping();
    let deadline = tokio::time::Instant::now() + k.shutdown_timeout;
    // No CDN batch window may hold the shutdown back: what waits is sent now, and so is every
    // path the last units submit.
    engine.cdn.drain().await;
    tracing::info!(
        in_flight = in_flight.len(),
        waiting = batch.len(),
        redeletes = redeletes.pending,
        "shutting down"
    );
    while !batch.is_empty() {
        let n = batch.len().min(k.batch_size.get());
        let unit: Vec<Input> = batch.drain(..n).collect();
        report.units += 1;
        report.events += unit.len() as u64;
        in_flight.push(spawn_unit(&engine, &dlq, &health, unit));
    }
    let mut clean = true;
    loop {
        match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some(done)) => finish(&consumer, &shared, &mut redeletes, joined(done)),
            Ok(None) => break,
            Err(_) => {
                tracing::error!(
                    units = in_flight.len(),
                    cdn_paths_pending = engine.cdn.pending(),
                    "shutdown deadline passed with units not applied; their offsets are not committed"
                );
                clean = false;
                break;
            }
        }
    }
    for unit in in_flight.iter() {
        unit.abort();
    }
    drop(in_flight);
    if let Some(task) = redeleting.take() {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(done) => {
                let (due, result) = joined(done);
                retry_failed_redelete(&mut redeletes, due, result);
            }
            Err(_) => clean = false,
        }
    }
    if clean && redeletes.pending > 0 {
        // Early rather than never: the process is going away.
        let all = redeletes.take_due(Instant::now() + Duration::from_secs(86_400 * 365));
        if let Some(all) = all {
            match tokio::time::timeout_at(deadline, engine.redelete(&all)).await {
                Ok(Ok(_)) => tracing::info!(keys = all.len(), "pending redeletes run"),
                _ => {
                    tracing::warn!(
                        keys = all.len(),
                        "pending redeletes not run before the deadline"
                    );
                    clean = false;
                }
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // NoOffset: nothing new was stored since the last commit.
        if !matches!(
            e,
            rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
        ) {
            tracing::warn!(error = %e, "final commit failed");
            clean = false;
        }
    }
    report.clean = clean;
    tracing::info!(
        units = report.units,
        events = report.events,
        clean,
        "stopped"
    );
    Ok(report)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn set_paused(consumer: &KafkaConsumer, pause: bool) {
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment to pause or resume it");
            return;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => tracing::info!(
            partitions = assignment.count(),
            "{}",
            if pause {
                "fetching paused"
            } else {
                "fetching resumed"
            }
        ),
        Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
    }
}

/// Marks a unit's messages done and stores the offsets that moved.
fn finish(consumer: &KafkaConsumer, shared: &Shared, redeletes: &mut Redeletes, done: Done) {
    let mut w = shared.watermarks.lock().expect("watermarks lock");
    let mut moved: HashMap<(&str, i32), i64> = HashMap::new();
    for (topic, partition, offset) in &done.positions {
        if let Some(next) = w.finish(topic, *partition, *offset) {
            moved.insert((topic, *partition), next);
        }
    }
    drop(w);
    for ((topic, partition), next) in moved {
        // `rd_kafka_offsets_store` stores the offset as given: the next message to read.
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .and_then(|()| consumer.store_offsets(&tpl));
        if let Err(e) = stored {
            // The partition was revoked meanwhile: its new owner reads it again.
            tracing::debug!(topic, partition, next, error = %e, "offset not stored");
        }
    }
    redeletes.schedule(Instant::now(), &done.redeletes);
}

/// A batch of redeletes running on its own task; it hands the batch back to be retried.
type Redeleting = tokio::task::JoinHandle<(Redelete, Result<ApplyReport, EngineError>)>;

fn spawn_redelete(engine: &Arc<Engine>, due: Redelete) -> Redeleting {
    let engine = engine.clone();
    tokio::spawn(async move {
        let result = engine.redelete(&due).await;
        (due, result)
    })
}

fn retry_failed_redelete(
    redeletes: &mut Redeletes,
    due: Redelete,
    result: Result<ApplyReport, EngineError>,
) {
    if let Err(e) = result {
        tracing::warn!(error = %e, keys = due.len(), "redelete failed; trying again in 1s");
        redeletes.retry_at(Instant::now() + Duration::from_secs(1), due);
    }
}

/// Runs a unit on its own task, so that units in flight plan on every core.
fn spawn_unit(
    engine: &Arc<Engine>,
    dlq: &Arc<DlqProducer>,
    health: &Arc<Health>,
    unit: Vec<Input>,
) -> tokio::task::JoinHandle<Done> {
    tokio::spawn(process_unit(
        engine.clone(),
        dlq.clone(),
        health.clone(),
        unit,
    ))
}

fn retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// One unit: applied (retrying through outages), then its dead letters written (retrying too).
async fn process_unit(
    engine: Arc<Engine>,
    dlq: Arc<DlqProducer>,
    health: Arc<Health>,
    inputs: Vec<Input>,
) -> Done {
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut backoff = retry_backoff();
    let mut unit = loop {
        let expanded = inputs.iter().map(|i| i.expanded(attempts)).collect();
        match engine.process(expanded, false, false).await {
            Ok(unit) => break unit,
            Err(e) => {
                attempts += 1;
                let cause = match e {
                    EngineError::Redis(_) => "redis",
                    EngineError::Cdn(_) => "cdn",
                };
                telemetry::unit_retry(cause);
                health.set_outage(Some(e.to_string()));
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, attempts, retry_in = ?wait, events = inputs.len(),
                    "unit not applied (dependency unavailable); nothing dead-lettered, retrying");
                tokio::time::sleep(wait).await;
            }
        }
    };

    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut dead: Vec<DeadLetter<'_>> = Vec::new();
    for (item, input) in unit.items.iter().zip(&inputs) {
        if let Outcome::DeadLettered { reason, error } = &item.outcome {
            let (id, kind) = match &item.event {
                Some((id, kind)) => (Some(id.as_str()), Some(kind.as_str())),
                None => (None, None),
            };
            let span = tracing::info_span!(
                "event",
                id = id.unwrap_or("-"),
                r#type = kind.unwrap_or("-")
            );
            span.in_scope(|| {
                tracing::warn!(position = %input.record.position, reason, error = %error, "dead-lettered")
            });
            dead.push(DeadLetter {
                input,
                reason,
                error,
                attempts: attempts + 1,
                event_id: id,
                event_type: kind,
                time: &now,
            });
        } else if tracing::enabled!(Level::DEBUG) {
            let (id, kind) = item
                .event
                .as_ref()
                .map_or(("-", "-"), |(i, k)| (i.as_str(), k.as_str()));
            let span = tracing::debug_span!("event", id, r#type = kind);
            span.in_scope(|| {
                tracing::debug!(position = %input.record.position, outcome = item.outcome.label())
            });
        }
    }
    let mut dlq_failed = false;
    while !dead.is_empty() {
        let failed = dlq.send(&dead).await;
        if failed.is_empty() {
            break;
        }
        dlq_failed = true;
        telemetry::dlq_write_failed(failed.len() as u64);
        let wait = backoff.next().unwrap_or(Duration::from_secs(5));
        tracing::error!(error = %failed[0].1, failed = failed.len(), retry_in = ?wait,
            "DLQ write failed: dead letters at risk, their offsets do not move; retrying");
        health.set_outage(Some(format!("DLQ topic: {}", failed[0].1)));
        tokio::time::sleep(wait).await;
        let keep: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        dead = dead
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, d)| d)
            .collect();
    }
    if attempts > 0 || dlq_failed {
        tracing::info!(attempts, "unit applied after an outage");
        health.set_outage(None);
    }
    telemetry::unit_done(started.elapsed());
    Done {
        positions: inputs
            .iter()
            .map(|i| (i.topic().to_owned(), i.partition(), i.offset()))
            .collect(),
        redeletes: Plan {
            redeletes: std::mem::take(&mut unit.plan.redeletes),
            ..Plan::default()
        },
    }
}
