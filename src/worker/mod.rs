//! `invalidator run`: the Kafka worker. The consumer ([`intake`]) hands units to the
//! [`Driver`](crate::driver::Driver): engine (decode, plan, apply) → DLQ topic → offsets stored.
//!
//! Invariants:
//! - at-least-once: an offset is stored only when every message before it on its partition is
//!   applied, skipped, duplicate, or acknowledged by the broker on the DLQ topic; librdkafka
//!   commits only stored offsets (every second, before a revocation, and at shutdown);
//! - an outage (Redis or a CDN unreachable, the DLQ topic not accepting writes) never dead-letters
//!   anything: the unit is retried with exponential backoff and jitter, the assigned partitions are
//!   paused (the consumer keeps polling so it stays in the group), `/readyz` says why, and work
//!   resumes where it stopped;
//! - bounded memory: the units in flight and the filling batch hold at most `max_in_flight_bytes`
//!   of payload (and at most `max_in_flight` units of `batch_size` events); librdkafka's prefetch
//!   is bounded by a quarter of that (`queued.max.messages.kbytes`); at most
//!   `max_pending_redeletes` redeletes wait;
//! - shutdown (SIGTERM, SIGINT) stops fetching, finishes the in-flight units (CloudFront batches
//!   are sent at once, without waiting for their window), runs the pending redeletes and commits,
//!   within `shutdown_timeout`; what is still unapplied then is logged and not committed.

mod intake;
mod serve;

pub use serve::serve;

use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};

use crate::dead_letter::kafka::KafkaDeadLetters;
use crate::driver::{self, Driver, Order, Outages};
use crate::engine::Engine;
use crate::health::Health;
use crate::kafka_client::ClientError;
use crate::source::kafka::{self, Shared};
use intake::Intake;

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

/// Runs the worker until `shutdown` resolves.
pub async fn run(
    engine: Arc<Engine>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, WorkerError> {
    let k = engine.config.kafka.clone();
    let shared = Arc::new(Shared::default());
    let consumer = kafka::consumer(&k, shared.clone())?;
    let sink = Arc::new(KafkaDeadLetters::new(
        &k,
        engine.config.limits.max_event_bytes,
    )?);
    tracing::info!(brokers = %k.brokers, group = %k.group, topics = ?k.topics, "consuming");
    let driver = Driver {
        engine: engine.clone(),
        sink,
        settings: driver::Settings {
            max_in_flight: k.max_in_flight.get(),
            max_pending_redeletes: k.max_pending_redeletes,
            order: Order::Completion,
            outages: Outages::Retry(health.clone()),
            dry_run: false,
            shutdown_timeout: k.shutdown_timeout,
        },
    };
    let mut intake = Intake {
        consumer: Arc::new(consumer),
        topics: kafka::TopicNames::default(),
        shared,
        health: health.clone(),
        max_event_bytes: engine.config.limits.max_event_bytes,
        watermarks: kafka::Watermarks::default(),
        batch: Vec::with_capacity(k.batch_size.get()),
        begun: 0,
        batch_bytes: 0,
        config: k,
        batch_started: None,
        paused: false,
        units: 0,
        events: 0,
    };
    let stopping = async {
        shutdown.await;
        health.set_stopping();
    };
    let Ok(ending) = driver.run(&mut intake, stopping).await;
    let mut clean = ending.clean;
    if let Err(e) = intake.consumer.commit_consumer_state(CommitMode::Sync) {
        // NoOffset: nothing new was stored since the last commit.
        if !matches!(
            e,
            rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
        ) {
            tracing::warn!(error = %e, "final commit failed");
            clean = false;
        }
    }
    let report = RunReport {
        units: intake.units,
        events: intake.events,
        clean,
    };
    tracing::info!(
        units = report.units,
        events = report.events,
        clean,
        "stopped"
    );
    Ok(report)
}
