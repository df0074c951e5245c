//! A Kafka producer whose deliveries are awaited, for the dead-letter topic and the completion
//! notices: rdkafka's `FutureProducer`, less the spin of its polling thread.
//!
//! `FutureProducer` polls librdkafka from a thread of its own, 100 ms at a time, and rdkafka's poll
//! loop (0.39) hands librdkafka the time left in whole milliseconds, rounded down: the last
//! millisecond of each poll is spent in polls that do not wait. That was about 1% of a core for a
//! worker with nothing to do (18 of its 19 CPU ticks in 20 s, all on that thread). This thread
//! polls a second at a time, which leaves a tenth of that; a delivery report still wakes it at
//! once, so no delivery waits longer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use super::{ClientError, log_to_tracing};

/// How long the polling thread waits on librdkafka at a time; also how long it may outlive the
/// [`Producer`] before it stops.
const POLL: Duration = Duration::from_secs(1);

/// How long a send waits before it tries again while librdkafka's queue is full (as
/// `FutureProducer` does).
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

type Delivered = oneshot::Sender<KafkaResult<()>>;

/// Completes each message's delivery; logs through `tracing` like the consumer's context.
struct Deliveries;

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Delivered>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivered: Box<Delivered>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        // The sender gave up waiting (its unit was cancelled at shutdown): nothing to tell.
        let _ = delivered.send(outcome);
    }
}

/// A producer and the thread that polls it for delivery reports.
pub struct Producer {
    inner: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    pub(crate) fn new(config: &ClientConfig) -> Result<Producer, ClientError> {
        let inner: Arc<BaseProducer<Deliveries>> = Arc::new(
            config
                .create_with_context(Deliveries)
                .map_err(|e| ClientError(e.to_string()))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-producer".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL);
                }
            })
            .map_err(|e| ClientError(format!("cannot start the producer's thread: {e}")))?;
        Ok(Producer { inner, stop })
    }

    /// Sends one message and waits for the broker's answer (librdkafka retries until
    /// `message.timeout.ms`). While librdkafka's queue is full, waits for room for at most
    /// `queue_timeout`.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        queue_timeout: Duration,
    ) -> KafkaResult<()> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(tx)).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < queue_timeout =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        // The report is dropped unsent only when the producer went away first.
        rx.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Drop for Producer {
    /// The thread stops within [`POLL`]; it holds the last reference then, and librdkafka's
    /// handle is destroyed there, not on the caller's thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
