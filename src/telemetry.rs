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

pub fn cascade_ended() {
    metrics::counter!(CASCADES_ENDED_TOTAL).increment(1);
}
