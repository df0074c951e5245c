//! Kafka as a source: the consumer-group member, message → record conversion (native,
//! CloudEvents structured and binary, [`binary_envelope`]) and the per-partition offset watermark ([`Watermarks`]).
//! The client settings are in [`crate::kafka_client`], the dead-letter topic in
//! [`crate::dead_letter::kafka`].
//!
//! Invariants:
//! - an offset is stored (and later committed) only when every message before it on its partition
//!   is done: applied, skipped, duplicate, or durably written to the DLQ topic ([`Watermarks`]);
//! - offsets are committed periodically by librdkafka (`enable.auto.commit` with
//!   `enable.auto.offset.store=false`: only what we stored), synchronously before partitions are
//!   revoked, and at shutdown;
//! - a record keeps the message's key and headers ([`Carried`]), so that its dead letter goes out
//!   as it came.

mod watermarks;

pub use watermarks::Watermarks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{Message, TopicPartitionList};
use serde_json::Value;

use crate::config::KafkaConfig;
use crate::event::{Carried, DecodeError, Expanded, Position, Record, binary_envelope};
use crate::kafka_client::{ClientError, client_config, consumer_defaults, log_to_tracing};
use crate::telemetry;

/// State shared between the consumer's callbacks (rebalances, statistics) and the worker.
#[derive(Default)]
pub struct Shared {
    /// Partitions revoked or assigned anew since the worker last looked ([`Shared::forgotten`]).
    forgets: Mutex<Vec<(String, i32)>>,
    /// `forgets` is not empty.
    forgetting: AtomicBool,
    /// Set by every rebalance; the worker re-applies its pause state and clears it.
    pub rebalanced: AtomicBool,
    /// The group assigned us partitions (or an empty set) at least once.
    pub joined: AtomicBool,
}

impl Shared {
    /// The partitions of `tpl` start again from their committed offsets: their [`Watermarks`]
    /// are to be forgotten. The callbacks run inside the worker's own poll, between two messages;
    /// the worker owns the watermarks and forgets them there, after it began the messages polled
    /// before (so a message taken in before a revocation is never begun after it).
    fn forget(&self, tpl: &TopicPartitionList) {
        let mut forgets = self.forgets.lock().expect("forgets lock");
        forgets.extend(
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition())),
        );
        self.forgetting.store(true, Ordering::Release);
    }

    /// The partitions to forget since the last call; one atomic load when there are none (the
    /// worker asks before every message it takes in).
    pub fn forgotten(&self) -> Vec<(String, i32)> {
        if !self.forgetting.load(Ordering::Relaxed)
            || !self.forgetting.swap(false, Ordering::Acquire)
        {
            return Vec::new();
        }
        std::mem::take(&mut *self.forgets.lock().expect("forgets lock"))
    }
}

/// The consumer's context: commits before a revocation, forgets revoked partitions, exports lag.
pub struct WorkerContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                if let Some(lag) = lag_of(partition, p) {
                    telemetry::consumer_lag(name, partition, lag);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection errors are transient: librdkafka reconnects by itself.
        tracing::warn!(%error, "Kafka: {reason}");
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is done before another member takes these partitions over.
            if tpl.count() > 0
                && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
            {
                tracing::debug!(error = %e, "commit before revocation");
            }
            self.shared.forget(tpl);
            for e in tpl.elements() {
                // Its lag is the new owner's now: a last value left here would count twice in
                // a topic's sum (and the statistics no longer report it).
                telemetry::consumer_lag(e.topic(), e.partition(), 0);
            }
            tracing::info!(partitions = %describe(tpl), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // A partition starts again from its committed offset: forget what we tracked.
                self.shared.forget(tpl);
                self.shared.joined.store(true, Ordering::SeqCst);
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
        self.shared.rebalanced.store(true, Ordering::SeqCst);
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result
            && !matches!(
                e,
                KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
            )
        {
            tracing::warn!(error = %e, "offset commit failed (retried at the next commit)");
        }
    }
}

/// A partition's lag: from the group's committed offset to its end. Before the group's first
/// commit on an assigned partition (librdkafka says -1), the whole partition: the worker starts
/// from its oldest record, and a group whose first units are stuck is behind by all of it, not
/// by nothing. None for a partition that is not ours.
fn lag_of(partition: i32, p: &rdkafka::statistics::Partition) -> Option<i64> {
    if partition < 0 {
        return None;
    }
    if p.consumer_lag >= 0 {
        return Some(p.consumer_lag);
    }
    (p.desired && p.committed_offset < 0 && p.lo_offset >= 0 && p.hi_offset >= p.lo_offset)
        .then(|| p.hi_offset - p.lo_offset)
}

fn describe(tpl: &TopicPartitionList) -> String {
    let v: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    v.join(",")
}

pub type KafkaConsumer = rdkafka::consumer::StreamConsumer<WorkerContext>;

/// Builds the group consumer and subscribes it to the configured topics.
pub fn consumer(config: &KafkaConfig, shared: Arc<Shared>) -> Result<KafkaConsumer, ClientError> {
    let c = client_config(consumer_defaults(config), &config.properties, |_| true);
    let consumer: KafkaConsumer = c
        .create_with_context(WorkerContext { shared })
        .map_err(|e| ClientError(e.to_string()))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| ClientError(e.to_string()))?;
    Ok(consumer)
}

/// One consumed message, owned, with what is needed to decode it and to dead-letter it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The payload, where it came from, and its key and headers ([`Record::carried`]).
    pub record: Record,
    /// CloudEvents binary mode: the envelope built from `ce_*` headers (`data` = the payload), or
    /// why it could not be built.
    pub binary: Option<Result<Value, DecodeError>>,
}

/// The names of the topics read, each allocated once: the records of a topic share it.
#[derive(Debug, Default)]
pub struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    /// The topic of `m`, shared. Its name is compared as bytes with the names known first:
    /// rdkafka's `Message::topic` checks the name's UTF-8 on every call.
    pub fn of(&mut self, m: &BorrowedMessage<'_>) -> Arc<str> {
        // SAFETY: `m.ptr()` is the message `m` borrows, alive for this call; librdkafka gives every
        // message its topic handle, whose name is a NUL-terminated string that outlives it.
        let name = unsafe {
            std::ffi::CStr::from_ptr(rdkafka::bindings::rd_kafka_topic_name((*m.ptr()).rkt))
        };
        match self.0.iter().find(|t| t.as_bytes() == name.to_bytes()) {
            Some(t) => t.clone(),
            None => self.get(m.topic()),
        }
    }

    /// `name`, shared. A consumer reads a handful of topics: a scan beats hashing.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| &***t == name) {
            return t.clone();
        }
        let t: Arc<str> = name.into();
        self.0.push(t.clone());
        t
    }
}

impl Input {
    pub fn from_message(
        m: &BorrowedMessage<'_>,
        topics: &mut TopicNames,
        max_bytes: usize,
    ) -> Input {
        let headers = headers_of(m);
        let position = Position::kafka(topics.of(m), m.partition(), m.offset());
        let (payload, key) = payload_and_key(m);
        let binary = binary_envelope(&headers, &payload, max_bytes);
        let mut record = Record::new(payload, position);
        if key.is_some() || !headers.is_empty() {
            record.carried = Some(Arc::new(Carried {
                key,
                headers,
                ..Carried::default()
            }));
        }
        Input { record, binary }
    }

    /// The record for the engine; `attempts` earlier tries of this unit failed for an outage.
    pub fn expanded(&self, attempts: u32) -> Expanded {
        let mut input = self.clone();
        input.record.attempts = attempts;
        input.into_expanded()
    }

    /// The record for the engine, as it is.
    pub fn into_expanded(self) -> Expanded {
        let record = self.record;
        match self.binary {
            None => Expanded::Raw(record),
            Some(Ok(value)) => Expanded::Parsed { value, record },
            Some(Err(error)) => Expanded::failed(record, error),
        }
    }

    pub fn topic(&self) -> &str {
        self.record.position.topic().map_or("", |t| t)
    }

    pub fn partition(&self) -> i32 {
        self.record.position.partition().unwrap_or_default()
    }

    pub fn offset(&self) -> i64 {
        self.record.position.offset().unwrap_or_default()
    }
}

/// Copies of `m`'s payload and key, in one buffer when it has a key.
fn payload_and_key(m: &BorrowedMessage<'_>) -> (bytes::Bytes, Option<bytes::Bytes>) {
    let payload = m.payload().unwrap_or_default();
    let Some(key) = m.key() else {
        return (bytes::Bytes::copy_from_slice(payload), None);
    };
    let mut both = Vec::with_capacity(payload.len() + key.len());
    both.extend_from_slice(payload);
    both.extend_from_slice(key);
    let both = bytes::Bytes::from(both);
    (
        both.slice(..payload.len()),
        Some(both.slice(payload.len()..)),
    )
}

/// The headers of `m`. rdkafka's `Headers::iter` panics on a header name that is not UTF-8 (it
/// unwraps `CStr::to_str`), and any producer can send one: they are read through librdkafka's C
/// API instead. A header whose name is not UTF-8 is left out (logged at debug): no rule or
/// envelope reads it, and the dead-letter producer could not write it back.
fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::bindings as rd;
    const OK: rd::rd_kafka_resp_err_t = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the message `m` borrows, alive for this call; librdkafka gives back a
    // pointer to the headers it owns with the message, or an error when there are none.
    if unsafe { rd::rd_kafka_message_headers(m.ptr(), &mut hdrs) } != OK || hdrs.is_null() {
        return Vec::new();
    }
    // SAFETY: `hdrs` is the message's header list, read-only here, alive as long as `m`.
    let count = unsafe { rd::rd_kafka_header_cnt(hdrs) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        // SAFETY: `idx` < the count; librdkafka points `name` at a NUL-terminated string and
        // `value` at `size` bytes (or null), both owned by the list.
        let err =
            unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != OK || name.is_null() {
            continue;
        }
        // SAFETY: as above; both are copied before `m` goes.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        match std::str::from_utf8(name) {
            Ok(name) => out.push((name.to_owned(), value)),
            Err(_) => tracing::debug!(topic = m.topic(), partition = m.partition(),
                offset = m.offset(), name = %name.escape_ascii(), "header with a name that is not UTF-8 left out"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_commit_or_the_whole_partition_before_one() {
        use rdkafka::statistics::Partition;
        let p = |desired, committed, lag| Partition {
            desired,
            committed_offset: committed,
            consumer_lag: lag,
            lo_offset: 10,
            hi_offset: 50,
            ..Partition::default()
        };
        assert_eq!(lag_of(0, &p(true, 45, 5)), Some(5));
        assert_eq!(
            lag_of(0, &p(true, -1001, -1)),
            Some(40),
            "nothing committed yet"
        );
        assert_eq!(lag_of(0, &p(false, -1001, -1)), None, "not ours");
        assert_eq!(lag_of(-1, &p(true, 45, 5)), None, "the internal partition");
    }
}
