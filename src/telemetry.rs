//! Every metric and its name, in one place (docs/operations.md lists them). Recorded through the
//! `metrics` facade: a no-op until a recorder is installed (the worker's `/metrics` endpoint
//! installs one).

use std::time::Duration;

pub const EVENTS_TOTAL: &str = "invalidator_events_total";
pub const ACTIONS_TOTAL: &str = "invalidator_actions_total";
pub const REDIS_KEYS_REMOVED_TOTAL: &str = "invalidator_redis_keys_removed_total";
/// Paths requested by units of work (after coalescing within each unit), per target.
pub const CDN_PATHS_TOTAL: &str = "invalidator_cdn_paths_total";
/// Paths sent in accepted requests (CloudFront: after batching, dedupe, collapse; a wildcard is one).
pub const CDN_PATHS_SENT_TOTAL: &str = "invalidator_cdn_paths_sent_total";
/// Requests to a CDN by outcome: accepted, throttled, refused, failed, invalid (CloudFront bisects),
/// rejected (HTTP: the path was refused).
pub const CDN_REQUESTS_TOTAL: &str = "invalidator_cdn_requests_total";
/// Throttled attempts by code (`Throttling`, `TooManyInvalidationsInProgress`, `429`, ...).
pub const CDN_THROTTLES_TOTAL: &str = "invalidator_cdn_throttles_total";
/// Sibling paths collapsed into a `parent/*` wildcard (collapses, and the paths they replaced).
pub const CDN_WILDCARD_COLLAPSES_TOTAL: &str = "invalidator_cdn_wildcard_collapses_total";
pub const CDN_PATHS_COLLAPSED_TOTAL: &str = "invalidator_cdn_paths_collapsed_total";
/// CloudFront's charge for the paths sent, at list price ($0.005 a path), before the account's
/// 1,000 free paths a month. A gauge that only grows (the `metrics` facade's counters are integers).
pub const CDN_ESTIMATED_COST_USD: &str = "invalidator_cdn_estimated_cost_usd";
/// Paths waiting on a CloudFront target (in a batch window or a request not yet accepted).
pub const CDN_PENDING_PATHS: &str = "invalidator_cdn_pending_paths";
/// `invalidation.completed` notices by sink (sns, kafka) and outcome (sent, dropped).
pub const NOTICES_TOTAL: &str = "invalidator_notices_total";
pub const DLQ_TOTAL: &str = "invalidator_dlq_total";
pub const EVENT_AGE_SECONDS: &str = "invalidator_event_age_seconds";
pub const CASCADES_ENDED_TOTAL: &str = "invalidator_cascades_ended_total";
pub const CONSUMER_LAG: &str = "invalidator_consumer_lag";
pub const READY: &str = "invalidator_ready";
pub const UNIT_RETRIES_TOTAL: &str = "invalidator_unit_retries_total";
pub const DLQ_WRITE_FAILURES_TOTAL: &str = "invalidator_dlq_write_failures_total";
/// Dead letters the DLQ topic refused whole for their size, written cut with the hash of the whole.
pub const DLQ_TRUNCATED_TOTAL: &str = "invalidator_dlq_truncated_total";
pub const UNIT_SECONDS: &str = "invalidator_unit_seconds";
/// Payload bytes held by the worker's units in flight and the batch being filled
/// (`[kafka] max_in_flight_bytes` bounds it).
pub const IN_FLIGHT_BYTES: &str = "invalidator_in_flight_bytes";
/// Changes of the Redis primary (Cluster: of the owner of some slots) seen on (re)connect.
pub const REDIS_FAILOVERS_TOTAL: &str = "invalidator_redis_failovers_total";
/// Keys, expires and tags of the rewind window applied again on a new primary.
pub const REDIS_REWIND_ACTIONS_TOTAL: &str = "invalidator_redis_rewind_actions_total";
/// Actions that left the rewind window early, to keep it under `failover_rewind_max_bytes`.
pub const REDIS_REWIND_DROPPED_TOTAL: &str = "invalidator_redis_rewind_dropped_total";
/// Bytes held by the rewind window.
pub const REDIS_REWIND_BYTES: &str = "invalidator_redis_rewind_bytes";
/// Keys and tags deleted once more by `redelete_after`, per rule.
pub const REDELETES_TOTAL: &str = "invalidator_redeletes_total";
/// Keys those redeletes found present and removed: a reader refilled the cache between the write
/// and the first delete (with the old value, or the new one: Redis cannot tell), per rule. The
/// consistency metric: without the redelete, these entries could have been stale until their TTL.
pub const REDELETE_HITS_TOTAL: &str = "invalidator_redelete_hits_total";
/// `WAIT`s that got fewer replicas than `wait_replicas` (each an outage: the unit is applied again).
pub const REDIS_WAIT_SHORTFALL_TOTAL: &str = "invalidator_redis_wait_shortfall_total";

/// Histogram buckets (seconds) of the event age: the freshness SLO is "seconds", so the buckets
/// go from 5 ms to 5 min.
pub const AGE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the Prometheus recorder (the worker's `/metrics`). Call once, at start.
pub fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(EVENT_AGE_SECONDS.into()), AGE_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(UNIT_SECONDS.into()),
                &[
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
        .inspect(|_| register_at_zero())
}

/// Why a unit of work was tried again ([`unit_retry`]): a fixed set, so that its series can be
/// shown before the first retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    Redis,
    Cdn,
}

impl RetryCause {
    pub const ALL: [RetryCause; 2] = [RetryCause::Redis, RetryCause::Cdn];

    pub fn label(self) -> &'static str {
        match self {
            RetryCause::Redis => "redis",
            RetryCause::Cdn => "cdn",
        }
    }
}

/// Shows the counters of rare events at 0 from the start: a series that appears only at its first
/// increment has no earlier sample, so `rate()` and `increase()` miss that increment and alerts and
/// dashboards see nothing rather than a 0. Only label-less counters and labels from a fixed set:
/// labels that come from events or the config appear when used.
fn register_at_zero() {
    for name in [
        REDIS_FAILOVERS_TOTAL,
        REDIS_REWIND_ACTIONS_TOTAL,
        REDIS_REWIND_DROPPED_TOTAL,
        REDIS_WAIT_SHORTFALL_TOTAL,
        DLQ_TRUNCATED_TOTAL,
        DLQ_WRITE_FAILURES_TOTAL,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for cause in RetryCause::ALL {
        metrics::counter!(UNIT_RETRIES_TOTAL, "cause" => cause.label()).absolute(0);
    }
}

/// `n` events reached `outcome`. `kind` is the event type when a rule knows it, `other` otherwise
/// (types come from producers: they must not grow the label set without bound).
pub fn events(kind: &str, outcome: &'static str, n: u64) {
    metrics::counter!(EVENTS_TOTAL, "type" => kind.to_owned(), "outcome" => outcome).increment(n);
}

pub fn actions(kind: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(ACTIONS_TOTAL, "kind" => kind).increment(n);
    }
}

pub fn keys_removed(n: u64) {
    metrics::counter!(REDIS_KEYS_REMOVED_TOTAL).increment(n);
}

pub fn cdn_paths(target: &str, n: u64) {
    metrics::counter!(CDN_PATHS_TOTAL, "target" => target.to_owned()).increment(n);
}

pub fn cdn_paths_sent(target: &str, n: u64) {
    metrics::counter!(CDN_PATHS_SENT_TOTAL, "target" => target.to_owned()).increment(n);
}

pub fn cdn_request(target: &str, outcome: &'static str) {
    metrics::counter!(CDN_REQUESTS_TOTAL, "target" => target.to_owned(), "outcome" => outcome)
        .increment(1);
}

pub fn cdn_throttle(target: &str, code: &str) {
    metrics::counter!(CDN_THROTTLES_TOTAL, "target" => target.to_owned(), "code" => code.to_owned())
        .increment(1);
}

/// One collapse of `paths` siblings into a wildcard.
pub fn cdn_collapse(target: &str, paths: u64) {
    metrics::counter!(CDN_WILDCARD_COLLAPSES_TOTAL, "target" => target.to_owned()).increment(1);
    metrics::counter!(CDN_PATHS_COLLAPSED_TOTAL, "target" => target.to_owned()).increment(paths);
}

pub fn cdn_cost(target: &str, usd: f64) {
    metrics::gauge!(CDN_ESTIMATED_COST_USD, "target" => target.to_owned()).increment(usd);
}

pub fn cdn_pending(target: &str, n: u64) {
    metrics::gauge!(CDN_PENDING_PATHS, "target" => target.to_owned()).set(n as f64);
}

pub fn notices(sink: &'static str, outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(NOTICES_TOTAL, "sink" => sink, "outcome" => outcome).increment(n);
    }
}

pub fn dead_lettered(reason: &str) {
    metrics::counter!(DLQ_TOTAL, "reason" => reason.to_owned()).increment(1);
}

/// Time from the event's own `time` to its invalidation: the freshness SLO. One handle for a
/// unit's events: the histogram is looked up once per unit, not once per event.
pub fn event_ages() -> metrics::Histogram {
    metrics::histogram!(EVENT_AGE_SECONDS)
}

/// Messages behind the end of a partition (from librdkafka's statistics).
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
}

pub fn ready(ready: bool) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// A unit of work failed for an outage and will be tried again.
pub fn unit_retry(cause: RetryCause) {
    metrics::counter!(UNIT_RETRIES_TOTAL, "cause" => cause.label()).increment(1);
}

/// A dead letter could not be written (data at risk until a retry succeeds).
pub fn dlq_write_failed(n: u64) {
    metrics::counter!(DLQ_WRITE_FAILURES_TOTAL).increment(n);
}

pub fn dlq_truncated() {
    metrics::counter!(DLQ_TRUNCATED_TOTAL).increment(1);
}

/// Time from taking a unit in to having it done (applied and dead letters written).
pub fn unit_done(elapsed: Duration) {
    metrics::histogram!(UNIT_SECONDS).record(elapsed.as_secs_f64());
}

pub fn in_flight_bytes(bytes: usize) {
    metrics::gauge!(IN_FLIGHT_BYTES).set(bytes as f64);
}

pub fn cascade_ended() {
    metrics::counter!(CASCADES_ENDED_TOTAL).increment(1);
}

pub fn redis_failover() {
    metrics::counter!(REDIS_FAILOVERS_TOTAL).increment(1);
}

pub fn redis_rewind_actions(n: u64) {
    metrics::counter!(REDIS_REWIND_ACTIONS_TOTAL).increment(n);
}

pub fn redis_rewind_dropped(n: u64) {
    metrics::counter!(REDIS_REWIND_DROPPED_TOTAL).increment(n);
}

pub fn redis_rewind_bytes(bytes: usize) {
    metrics::gauge!(REDIS_REWIND_BYTES).set(bytes as f64);
}

pub fn redis_wait_shortfall() {
    metrics::counter!(REDIS_WAIT_SHORTFALL_TOTAL).increment(1);
}

/// A redelete of `rule` deleted `asked` keys and tags once more and found `hits` keys present.
pub fn redeleted(rule: &str, asked: u64, hits: u64) {
    metrics::counter!(REDELETES_TOTAL, "rule" => rule.to_owned()).increment(asked);
    metrics::counter!(REDELETE_HITS_TOTAL, "rule" => rule.to_owned()).increment(hits);
}

/// The rules with `redelete_after`, shown at 0 from the start (the rule files bound the label).
pub fn redelete_rules<'a>(rules: impl IntoIterator<Item = &'a str>) {
    for rule in rules {
        redeleted(rule, 0, 0);
    }
}
