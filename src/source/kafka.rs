//! Kafka as a source: the consumer-group member, message → record conversion (native,
//! CloudEvents structured and binary), the per-partition offset watermark, and the DLQ topic.
//!
//! Invariants:
//! - an offset is stored (and later committed) only when every message before it on its partition
//!   is done: applied, skipped, duplicate, or durably written to the DLQ topic ([`Watermarks`]);
//! - offsets are committed periodically by librdkafka (`enable.auto.commit` with
//!   `enable.auto.offset.store=false`: only what we stored), synchronously before partitions are
//!   revoked, and at shutdown;
//! - a DLQ record keeps the original key, payload (byte-exact) and headers; our metadata is added as
//!   `invalidator.*` headers. A DLQ write is done only when the broker acknowledged it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, TopicPartitionList};
use serde_json::{Map, Value};

use crate::config::KafkaConfig;
use crate::event::{DecodeError, Expanded, Position, Record};
use crate::telemetry;

/// Defaults the worker sets before the user's `[kafka.properties]` (which win).
fn consumer_defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("group.id", config.group.clone()),
        // We store offsets ourselves, only for events that are done; librdkafka commits what
        // was stored, every second and when partitions are revoked.
        ("enable.auto.offset.store", "false".into()),
        ("enable.auto.commit", "true".into()),
        ("auto.commit.interval.ms", "1000".into()),
        // A new group starts from the oldest event: an invalidation missed is a stale cache.
        ("auto.offset.reset", "earliest".into()),
        // Bounded prefetch (librdkafka's default is 64 MiB per consumer).
        ("queued.max.messages.kbytes", "16384".into()),
        ("statistics.interval.ms", "5000".into()),
        ("client.id", "invalidator".into()),
    ]
}

fn producer_defaults(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", config.brokers.clone()),
        ("acks", "all".into()),
        ("linger.ms", "5".into()),
        ("message.timeout.ms", "30000".into()),
        ("client.id", "invalidator-dlq".into()),
    ]
}

/// Properties that make sense only for a consumer; not passed to the DLQ producer.
fn consumer_only(key: &str) -> bool {
    key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("max.poll.")
        || key.starts_with("partition.assignment.")
        || matches!(
            key,
            "isolation.level"
                | "check.crcs"
                | "enable.partition.eof"
                | "consume.callback.max.messages"
        )
}

/// A producer with the worker's producer defaults, `overrides`, then the user's
/// `[kafka.properties]` (those that make sense for a producer). Used by the DLQ topic and the
/// completion notices.
pub fn producer(
    config: &KafkaConfig,
    overrides: &[(&'static str, String)],
) -> Result<FutureProducer, ClientError> {
    let mut defaults = producer_defaults(config);
    defaults.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    defaults.extend(overrides.iter().cloned());
    client_config(defaults, &config.properties, |k| !consumer_only(k))
        .create()
        .map_err(|e| ClientError(e.to_string()))
}

/// Failures to build the Kafka clients (bad properties): a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("config key `kafka.properties`: {0}")]
pub struct ClientError(String);

fn client_config(
    defaults: Vec<(&'static str, String)>,
    properties: &BTreeMap<String, String>,
    keep: impl Fn(&str) -> bool,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(k, v);
    }
    for (k, v) in properties {
        if keep(k) {
            c.set(k, v);
        }
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// State shared between the consumer's callbacks (rebalances, statistics) and the worker.
#[derive(Default)]
pub struct Shared {
    pub watermarks: Mutex<Watermarks>,
    /// Set by every rebalance; the worker re-applies its pause state and clears it.
    pub rebalanced: AtomicBool,
    /// The group assigned us partitions (or an empty set) at least once.
    pub joined: AtomicBool,
}

/// The consumer's context: commits before a revocation, forgets revoked partitions, exports lag.
pub struct WorkerContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    telemetry::consumer_lag(name, partition, p.consumer_lag);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
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
            let mut w = self.shared.watermarks.lock().expect("watermarks lock");
            for e in tpl.elements() {
                w.forget(e.topic(), e.partition());
            }
            tracing::info!(partitions = %describe(tpl), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // A partition starts again from its committed offset: forget what we tracked.
                let mut w = self.shared.watermarks.lock().expect("watermarks lock");
                for e in tpl.elements() {
                    w.forget(e.topic(), e.partition());
                }
                drop(w);
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
    pub record: Record,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// CloudEvents binary mode: the envelope built from `ce_*` headers (`data` = the payload), or
    /// why it could not be built.
    pub binary: Option<Result<Value, DecodeError>>,
}

impl Input {
    pub fn from_message(m: &BorrowedMessage<'_>, max_bytes: usize) -> Input {
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let position = Position {
            topic: Some(m.topic().to_owned()),
            partition: Some(m.partition()),
            offset: Some(m.offset()),
            ..Position::default()
        };
        let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let binary = binary_envelope(&headers, &payload, max_bytes);
        Input {
            record: Record::new(payload, position),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            binary,
        }
    }

    /// The record for the engine; `attempts` earlier tries of this unit failed for an outage.
    pub fn expanded(&self, attempts: u32) -> Expanded {
        let mut record = self.record.clone();
        record.attempts = attempts;
        match &self.binary {
            None => Expanded::Raw(record),
            Some(Ok(value)) => Expanded::Parsed {
                value: value.clone(),
                record,
            },
            Some(Err(error)) => Expanded::Failed {
                record,
                error: error.clone(),
            },
        }
    }

    pub fn topic(&self) -> &str {
        self.record.position.topic.as_deref().unwrap_or_default()
    }

    pub fn partition(&self) -> i32 {
        self.record.position.partition.unwrap_or_default()
    }

    pub fn offset(&self) -> i64 {
        self.record.position.offset.unwrap_or_default()
    }
}

/// CloudEvents binary content mode: `ce_specversion` and `ce_type` headers make the message an event
/// whose attributes are the `ce_*` headers and whose `data` is the payload. `None` when the message
/// is not in binary mode (the payload is then the whole event).
fn binary_envelope(
    headers: &[(String, Option<Vec<u8>>)],
    payload: &[u8],
    max_bytes: usize,
) -> Option<Result<Value, DecodeError>> {
    let has = |k: &str| headers.iter().any(|(h, _)| h == k);
    if !(has("ce_specversion") && has("ce_type")) {
        return None;
    }
    Some((|| {
        if payload.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: max_bytes,
            });
        }
        let mut envelope = Map::new();
        for (k, v) in headers {
            let Some(name) = k.strip_prefix("ce_") else {
                continue;
            };
            let v = v.as_deref().unwrap_or_default();
            let v = std::str::from_utf8(v)
                .map_err(|_| DecodeError::InvalidEnvelope(format!("header {k} is not UTF-8")))?;
            envelope.insert(name.to_owned(), Value::String(v.to_owned()));
        }
        let data: Value = serde_json::from_slice(payload)
            .map_err(|e| DecodeError::InvalidJson(format!("CloudEvents binary data: {e}")))?;
        envelope.insert("data".into(), data);
        Ok(Value::Object(envelope))
    })())
}

/// Per-partition watermark of done offsets: stores only the contiguous prefix.
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<(String, i32), BTreeMap<i64, bool>>,
}

impl Watermarks {
    /// A message was taken in.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.parts
            .entry((topic.to_owned(), partition))
            .or_default()
            .insert(offset, false);
    }

    /// A message is done. Returns the offset to store (the next one to read) when the partition's
    /// contiguous done prefix grew.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let track = self.parts.get_mut(&(topic.to_owned(), partition))?;
        if let Some(done) = track.get_mut(&offset) {
            *done = true;
        }
        let mut next = None;
        while let Some(entry) = track.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }

    /// The partition was revoked or assigned anew: it restarts from its committed offset.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_owned(), partition));
    }

    /// Messages taken in and not done.
    pub fn pending(&self) -> usize {
        self.parts
            .values()
            .map(|t| t.values().filter(|d| !**d).count())
            .sum()
    }
}

/// A dead letter for the DLQ topic.
pub struct DeadLetter<'a> {
    pub input: &'a Input,
    pub reason: &'a str,
    pub error: &'a str,
    pub attempts: u32,
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub time: &'a str,
}

/// The DLQ topic producer.
pub struct DlqProducer {
    producer: FutureProducer,
    config: KafkaConfig,
}

impl DlqProducer {
    pub fn new(config: &KafkaConfig) -> Result<DlqProducer, ClientError> {
        let c = client_config(producer_defaults(config), &config.properties, |k| {
            !consumer_only(k)
        });
        let producer = c.create().map_err(|e| ClientError(e.to_string()))?;
        Ok(DlqProducer {
            producer,
            config: config.clone(),
        })
    }

    /// Writes every dead letter; returns the indexes of those the broker did not acknowledge.
    pub async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, KafkaError)> {
        let topics: Vec<String> = letters
            .iter()
            .map(|l| self.config.dlq_topic_for(l.input.topic()))
            .collect();
        let mut pending = Vec::with_capacity(letters.len());
        for (i, (l, topic)) in letters.iter().zip(&topics).enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(l.input.headers.len() + 9);
            for (k, v) in &l.input.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let partition = l.input.partition().to_string();
            let offset = l.input.offset().to_string();
            let attempts = l.attempts.to_string();
            let meta: [(&str, Option<&str>); 9] = [
                ("invalidator.reason", Some(l.reason)),
                ("invalidator.error", Some(l.error)),
                ("invalidator.attempts", Some(&attempts)),
                ("invalidator.source.topic", Some(l.input.topic())),
                ("invalidator.source.partition", Some(&partition)),
                ("invalidator.source.offset", Some(&offset)),
                ("invalidator.time", Some(l.time)),
                ("invalidator.event_id", l.event_id),
                ("invalidator.event_type", l.event_type),
            ];
            for (k, v) in meta {
                if let Some(v) = v {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(l.input.record.payload.as_slice())
                .headers(headers);
            if let Some(k) = &l.input.key {
                record = record.key(k.as_slice());
            }
            pending.push((i, self.producer.send(record, Duration::from_secs(5))));
        }
        let mut failed = Vec::new();
        for (i, fut) in pending {
            if let Err((e, _)) = fut.await {
                failed.push((i, e));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_moves_only_over_a_contiguous_done_prefix() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.begin("t", 0, o);
        }
        assert_eq!(w.finish("t", 0, 12), None, "10 and 11 are not done");
        assert_eq!(w.finish("t", 0, 11), None);
        assert_eq!(w.finish("t", 0, 10), Some(13), "10..=12 done: next is 13");
        assert_eq!(w.pending(), 2);
        assert_eq!(w.finish("t", 0, 14), None);
        assert_eq!(w.finish("t", 0, 13), Some(15));
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forgetting_drops_late_completions() {
        let mut w = Watermarks::default();
        w.begin("t", 0, 5);
        w.begin("t", 1, 7);
        assert_eq!(w.finish("t", 1, 7), Some(8));
        w.forget("t", 0);
        assert_eq!(w.finish("t", 0, 5), None, "revoked: nothing to store");
        assert_eq!(w.pending(), 0);
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn cloudevents_binary_mode_builds_the_envelope_from_headers() {
        let h = headers(&[
            ("ce_specversion", "1.0"),
            ("ce_type", "price.updated"),
            ("ce_id", "e-1"),
            ("ce_source", "pricing"),
            ("traceparent", "x"),
        ]);
        let v = binary_envelope(&h, br#"{"sku":"A1"}"#, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(v["type"], "price.updated");
        assert_eq!(v["id"], "e-1");
        assert_eq!(v["data"]["sku"], "A1");
        assert!(v.get("traceparent").is_none());
        let e = crate::event::decode_value(v, 1024, &|| "fallback".into()).unwrap();
        assert_eq!(e.kind, "price.updated");
        assert_eq!(e.id, "e-1");
        assert_eq!(e.data["sku"], "A1");
    }

    #[test]
    fn binary_mode_failures_are_permanent_decode_errors() {
        let h = headers(&[("ce_specversion", "1.0"), ("ce_type", "price.updated")]);
        let e = binary_envelope(&h, b"not json", 1024).unwrap().unwrap_err();
        assert_eq!(e.reason(), "invalid_json");
        let e = binary_envelope(&h, &[b'1'; 100], 10).unwrap().unwrap_err();
        assert_eq!(e.reason(), "too_large");
        assert!(binary_envelope(&headers(&[("ce_id", "x")]), b"{}", 10).is_none());
    }

    #[test]
    fn consumer_only_properties_are_not_given_to_the_producer() {
        assert!(consumer_only("session.timeout.ms"));
        assert!(consumer_only("group.instance.id"));
        assert!(!consumer_only("security.protocol"));
        assert!(!consumer_only("sasl.password"));
    }
}
