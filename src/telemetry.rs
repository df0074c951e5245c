//! Every metric and its name, in one place (SPEC §8). Recorded through the `metrics` facade: a
//! no-op until a recorder is installed (the worker's `/metrics` endpoint installs one).

use std::time::Duration;

pub const EVENTS_TOTAL: &str = "invalidator_events_total";
pub const ACTIONS_TOTAL: &str = "invalidator_actions_total";
pub const REDIS_KEYS_REMOVED_TOTAL: &str = "invalidator_redis_keys_removed_total";
pub const CDN_PATHS_TOTAL: &str = "invalidator_cdn_paths_total";
pub const DLQ_TOTAL: &str = "invalidator_dlq_total";
pub const EVENT_AGE_SECONDS: &str = "invalidator_event_age_seconds";
pub const CASCADES_ENDED_TOTAL: &str = "invalidator_cascades_ended_total";
pub const CONSUMER_LAG: &str = "invalidator_consumer_lag";
pub const READY: &str = "invalidator_ready";
pub const UNIT_RETRIES_TOTAL: &str = "invalidator_unit_retries_total";
pub const DLQ_WRITE_FAILURES_TOTAL: &str = "invalidator_dlq_write_failures_total";
pub const UNIT_SECONDS: &str = "invalidator_unit_seconds";

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
}

/// One event reached an outcome. `kind` is the event type when a rule knows it, `other` otherwise
/// (types come from producers: they must not grow the label set without bound).
pub fn event(kind: &str, outcome: &'static str) {
    metrics::counter!(EVENTS_TOTAL, "type" => kind.to_owned(), "outcome" => outcome).increment(1);
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

pub fn dead_lettered(reason: &str) {
    metrics::counter!(DLQ_TOTAL, "reason" => reason.to_owned()).increment(1);
}

/// Time from the event's own `time` to its invalidation: the freshness SLO.
pub fn event_age(age: Duration) {
    metrics::histogram!(EVENT_AGE_SECONDS).record(age.as_secs_f64());
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
pub fn unit_retry(cause: &'static str) {
    metrics::counter!(UNIT_RETRIES_TOTAL, "cause" => cause).increment(1);
}

/// A dead letter could not be written (data at risk until a retry succeeds).
pub fn dlq_write_failed(n: u64) {
    metrics::counter!(DLQ_WRITE_FAILURES_TOTAL).increment(n);
}

/// Time from taking a unit in to having it done (applied and dead letters written).
pub fn unit_done(elapsed: Duration) {
    metrics::histogram!(UNIT_SECONDS).record(elapsed.as_secs_f64());
}

pub fn cascade_ended() {
    metrics::counter!(CASCADES_ENDED_TOTAL).increment(1);
}
