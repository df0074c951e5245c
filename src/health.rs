//! The worker's HTTP endpoints on `[http] listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive and its loop turns) and `/readyz` (partitions assigned by the group, Redis
//! reachable, no outage in progress).
//!
//! Readiness is computed, never cached: each condition is its own flag, set by the part of the worker
//! that knows it, and `/readyz` names every condition that is not met.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::telemetry;

/// The worker's health, shared by its parts.
#[derive(Default)]
pub struct Health {
    /// The consumer group gave us an assignment (possibly empty: an idle standby is ready).
    joined: AtomicBool,
    /// The last Redis check succeeded.
    redis_ok: AtomicBool,
    /// An outage in progress (Redis, CDN or the DLQ topic), with its description.
    outage: Mutex<Option<String>>,
    /// Shutting down: not ready for new work.
    stopping: AtomicBool,
}

impl Health {
    pub fn set_joined(&self, v: bool) {
        self.joined.store(v, Ordering::SeqCst);
        self.publish();
    }

    pub fn set_redis_ok(&self, v: bool) {
        self.redis_ok.store(v, Ordering::SeqCst);
        self.publish();
    }

    pub fn set_outage(&self, what: Option<String>) {
        *self.outage.lock().expect("health lock") = what;
        self.publish();
    }

    pub fn in_outage(&self) -> bool {
        self.outage.lock().expect("health lock").is_some()
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// `Ok` when ready, otherwise every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.stopping.load(Ordering::SeqCst) {
            why.push("shutting down".to_owned());
        }
        if !self.joined.load(Ordering::SeqCst) {
            why.push("no partition assignment from the consumer group yet".to_owned());
        }
        if !self.redis_ok.load(Ordering::SeqCst) {
            why.push("Redis not reachable".to_owned());
        }
        if let Some(o) = self.outage.lock().expect("health lock").as_ref() {
            why.push(format!("outage: {o}"));
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn publish(&self) {
        telemetry::ready(self.readiness().is_ok());
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(s): State<AppState>) -> String {
    s.metrics.render()
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_unmet_condition() {
        let h = Health::default();
        let why = h.readiness().unwrap_err();
        assert_eq!(why.len(), 2, "{why:?}");
        h.set_joined(true);
        h.set_redis_ok(true);
        assert!(h.readiness().is_ok());
        h.set_outage(Some("Redis unavailable".into()));
        assert!(h.in_outage());
        assert_eq!(
            h.readiness().unwrap_err(),
            vec!["outage: Redis unavailable"]
        );
        h.set_outage(None);
        h.set_stopping();
        assert_eq!(h.readiness().unwrap_err(), vec!["shutting down"]);
    }
}
