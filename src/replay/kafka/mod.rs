//! `invalidator replay --from-kafka TOPIC`: a time window of a topic as the replay's input, read
//! by a consumer of its own (assigned partitions, no group joined, no offset committed), so the
//! worker's group and its offsets are never touched.
//!
//! The window is fixed when the replay starts, so it terminates: for each partition, from the
//! first offset at or after `--since` (Kafka's ListOffsets by timestamp) to the end offset of the
//! moment. The lookup only decides where reading starts: record timestamps are not ordered within
//! a partition, and a broker may answer the lookup with the start of the log (Tansu always does),
//! so every record read is also filtered on its own timestamp, half-open: `since <= t < until`.
//! A record without a timestamp is kept (applying an invalidation twice is harmless; missing one
//! is not).
//!
//! Records of a dead-letter topic replay as they first came: the `invalidator.*` headers of the
//! letter are taken off (the original key and headers stay, CloudEvents binary ones included),
//! and its attempts and first position come from them. A letter that was cut for its size stays
//! dead: it is dead-lettered again as `too_large`, its payload as it is.

mod letter;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

use super::ReplayError;
use super::read::{Batch, Batcher};
use crate::config::KafkaConfig;
use crate::kafka_client::{client_config, log_to_tracing, prefetch_defaults};
use crate::source::files::Input;
use crate::source::kafka::TopicNames;
use letter::original;

/// How long the brokers may take to answer the window's lookups (metadata, offsets) before the
/// replay stops as an outage; librdkafka reconnects by itself meanwhile.
const LOOKUP: Duration = Duration::from_secs(15);

/// How long reading may get no record nor end of partition before the replay stops as an outage.
const STALL: Duration = Duration::from_secs(60);

/// What to read: a topic, its partitions (all when empty), and a time window in milliseconds
/// since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub topic: String,
    pub partitions: Vec<i32>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Parses `--since`/`--until`: an RFC 3339 time (`2026-11-30T08:00:00Z`), or a duration before
/// `now` (`15m`, `2h 30m`, `1day`). Milliseconds since the Unix epoch.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<i64, String> {
    let text = text.trim();
    let at = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                format!("`{text}` is neither an RFC 3339 time (2026-11-30T08:00:00Z) nor a duration before now (15m, 2h)")
            })?;
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| now.checked_sub(ago))
                .ok_or_else(|| format!("`{text}` reaches before any time there is"))?
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("`{text}` is out of range"))
}

/// One partition's part of the window: offsets `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// The replay's consumer: librdkafka's log lines through tracing, nothing else.
pub struct ReplayContext;

impl ClientContext for ReplayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, "Kafka: {reason}");
    }
}

impl ConsumerContext for ReplayContext {}

/// A window resolved to offsets, with the consumer that will read it.
pub struct Resolved {
    consumer: BaseConsumer<ReplayContext>,
    pub spans: Vec<Span>,
    window: Window,
}

impl Resolved {
    /// Records in the window's offsets (the progress bar's total).
    pub fn records(&self) -> u64 {
        self.spans.iter().map(|s| (s.end - s.start) as u64).sum()
    }
}

/// The user's `[kafka.properties]` that concern a group member (which this consumer is not) are
/// left out: it joins no group and commits nothing, whatever they say.
fn group_only(key: &str) -> bool {
    key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("enable.auto.")
        || key.starts_with("auto.commit.")
        || key.starts_with("partition.assignment.")
        || key == "enable.partition.eof"
}

/// The consumer, then the window resolved against the brokers (blocking: run it off the runtime).
pub fn resolve(config: &KafkaConfig, window: Window) -> Result<Resolved, ReplayError> {
    let mut defaults = vec![
        ("bootstrap.servers", config.brokers.clone()),
        // librdkafka assigns partitions only with a group id; this one is never joined (no
        // subscription) nor committed to, and is not the worker's.
        (
            "group.id",
            format!("invalidator-replay-{:08x}", rand::random::<u32>()),
        ),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        // A partition's end seen: nothing before the end fixed at the start is left to read
        // (transaction markers and compaction leave gaps before it).
        ("enable.partition.eof", "true".into()),
        // Records removed by retention since the lookup: start from the oldest one left.
        ("auto.offset.reset", "earliest".into()),
        ("client.id", "invalidator-replay".into()),
    ];
    defaults.extend(prefetch_defaults(config));
    let consumer: BaseConsumer<ReplayContext> =
        client_config(defaults, &config.properties, |k| !group_only(k))
            .create_with_context(ReplayContext)
            .map_err(|e| ReplayError::Usage(format!("config key `kafka.properties`: {e}")))?;
    let spans = spans(&consumer, &window)?;
    Ok(Resolved {
        consumer,
        spans,
        window,
    })
}

fn unavailable(what: &str, e: KafkaError) -> ReplayError {
    ReplayError::Unavailable(format!("Kafka ({what}): {e}"))
}

/// Each partition's offsets: from the first at or after `since` to the end of the moment.
fn spans(consumer: &BaseConsumer<ReplayContext>, w: &Window) -> Result<Vec<Span>, ReplayError> {
    let topic = &w.topic;
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP)
        .map_err(|e| unavailable("metadata", e))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(ReplayError::Usage(format!(
            "no topic {topic} on the brokers"
        )));
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(ReplayError::Usage(format!(
            "no topic {topic} on the brokers"
        )));
    }
    let mut all: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    all.sort_unstable();
    let chosen = if w.partitions.is_empty() {
        all.clone()
    } else {
        w.partitions.clone()
    };
    if let Some(p) = chosen.iter().find(|p| !all.contains(p)) {
        return Err(ReplayError::Usage(format!(
            "topic {topic} has no partition {p} (it has {})",
            ranges(&all)
        )));
    }
    let starts = match w.since {
        Some(since) => starts_at(consumer, topic, &chosen, since)?,
        None => BTreeMap::new(),
    };
    let mut spans = Vec::with_capacity(chosen.len());
    for partition in chosen {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, LOOKUP)
            .map_err(|e| unavailable("end offsets", e))?;
        let start = match starts.get(&partition) {
            Some(Offset::Offset(o)) => (*o).clamp(low, high),
            // No record at or after `since`.
            Some(Offset::End) => high,
            _ => low,
        };
        spans.push(Span {
            partition,
            start,
            end: high,
        });
    }
    Ok(spans)
}

/// Kafka's ListOffsets by timestamp: per partition, the first offset whose timestamp is at or
/// after `since`.
fn starts_at(
    consumer: &BaseConsumer<ReplayContext>,
    topic: &str,
    partitions: &[i32],
    since: i64,
) -> Result<BTreeMap<i32, Offset>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(since))
            .map_err(|e| unavailable("offsets by time", e))?;
    }
    let found = consumer
        .offsets_for_times(tpl, LOOKUP)
        .map_err(|e| unavailable("offsets by time", e))?;
    Ok(found
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect())
}

/// `0-2,5` for `[0, 1, 2, 5]`.
fn ranges(ids: &[i32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The reader thread of a Kafka window: every record of the window's offsets in batches; those
/// whose timestamps fall outside the window are counted in `outside`, not handed over.
pub(super) fn read_window(
    resolved: Resolved,
    max_bytes: usize,
    batch_size: usize,
    consumed: Arc<AtomicU64>,
    outside: Arc<AtomicU64>,
    tx: mpsc::Sender<Batch>,
) {
    let Resolved {
        consumer,
        spans,
        window,
    } = resolved;
    let mut batcher = Batcher::new(batch_size, tx);
    let mut open: BTreeMap<i32, Span> = spans
        .into_iter()
        .filter(|s| s.start < s.end)
        .map(|s| (s.partition, s))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for s in open.values() {
        if let Err(e) =
            tpl.add_partition_offset(&window.topic, s.partition, Offset::Offset(s.start))
        {
            return batcher.fail(unavailable("assign", e));
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        return batcher.fail(unavailable("assign", e));
    }
    let mut idle_since = Instant::now();
    let mut topics = TopicNames::default();
    while !open.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            if idle_since.elapsed() >= STALL {
                let left: Vec<i32> = open.keys().copied().collect();
                return batcher.fail(ReplayError::Unavailable(format!(
                    "Kafka: nothing read from {} partitions {} for {}s",
                    window.topic,
                    ranges(&left),
                    STALL.as_secs()
                )));
            }
            continue;
        };
        idle_since = Instant::now();
        let m = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                open.remove(&p);
                continue;
            }
            Err(e) if fatal(&e) => return batcher.fail(unavailable("read", e)),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka: read (retried)");
                continue;
            }
        };
        let Some(span) = open.get(&m.partition()).copied() else {
            continue;
        };
        if m.offset() + 1 >= span.end {
            open.remove(&m.partition());
        }
        if m.offset() >= span.end {
            continue;
        }
        consumed.fetch_add(1, Ordering::Relaxed);
        if !in_window(&m, &window) {
            outside.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !batcher.push(Input::Ready(original(&m, &mut topics, max_bytes))) {
            return;
        }
    }
    batcher.flush();
}

/// Errors after which reading cannot go on (librdkafka retries the others itself).
fn fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::Fatal
        )
    )
}

fn in_window(m: &BorrowedMessage<'_>, w: &Window) -> bool {
    let Some(t) = m.timestamp().to_millis() else {
        return true;
    };
    w.since.is_none_or(|s| t >= s) && w.until.is_none_or(|u| t < u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_are_rfc3339_or_a_duration_before_now() {
        let now = datetime!(2026-11-30 12:00:00 UTC);
        let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        assert_eq!(
            parse_time("15m", now),
            Ok(ms(datetime!(2026-11-30 11:45:00 UTC)))
        );
        assert_eq!(
            parse_time("1h 30m", now),
            Ok(ms(datetime!(2026-11-30 10:30:00 UTC)))
        );
        assert_eq!(
            parse_time("2026-11-30T08:00:00+01:00", now),
            Ok(ms(datetime!(2026-11-30 07:00:00 UTC)))
        );
        assert_eq!(
            parse_time(" 2026-11-29T23:59:59.250Z ", now),
            Ok(ms(datetime!(2026-11-29 23:59:59.250 UTC)))
        );
        let e = parse_time("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339") && e.contains("yesterday"), "{e}");
        assert!(
            parse_time("2026-11-30", now).is_err(),
            "a date alone is ambiguous"
        );
        assert!(parse_time("900000000000000000s", now).is_err());
    }

    #[test]
    fn partition_lists_read_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[]), "");
    }
}
