//! The worker's process around [`super::run`]: `/metrics`, `/healthz` and `/readyz` on
//! `[http] listen`, SIGTERM and SIGINT, Redis awaited at start (not ready meanwhile), readiness
//! following Redis, and the TTL sweeper every `[sweeper] interval`.

use std::sync::Arc;
use std::time::Duration;

use crate::apply::redis::Redis;
use crate::config::Config;
use crate::engine::Engine;
use crate::health::{self, Health};
use crate::rules::RuleSet;
use crate::telemetry;

use super::RunReport;

/// How long one attempt of a unit retries Redis before the worker reports an outage (and then
/// retries the unit, without end, with backoff).
const WORKER_REDIS_RETRY: Duration = Duration::from_secs(2);

/// Runs the worker until SIGTERM or SIGINT. An error is a configuration error that names its key.
pub async fn serve(config: Config, rules: RuleSet) -> Result<RunReport, String> {
    let metrics = telemetry::install_prometheus()?;
    telemetry::redelete_rules(
        rules
            .rules
            .iter()
            .filter(|r| r.redelete_after.is_some())
            .map(|r| r.name),
    );
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .map_err(|e| {
            format!(
                "config key `http.listen`: cannot listen on {}: {e}",
                config.http.listen
            )
        })?;
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(health::serve(
        listener,
        health.clone(),
        metrics.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            metrics.run_upkeep();
        }
    });
    let Some(redis) = connect_redis(&config, &health, stopped()).await else {
        return Ok(RunReport {
            clean: true,
            ..RunReport::default()
        });
    };
    tracing::info!(redis = %redis.describe(), wait_replicas = config.redis.wait_replicas,
        failover_rewind = %humantime::format_duration(config.redis.failover_rewind),
        rules = rules.rules.len(), listen = %config.http.listen, "starting");
    let engine = Arc::new(Engine::build(config, rules, redis).await?);
    // The Redis watch and the sweeper run beside the worker (on its task) and end with it.
    let report = tokio::select! {
        r = super::run(engine.clone(), health.clone(), stopped()) => r.map_err(|e| e.to_string())?,
        () = watch_redis(&engine, &health) => unreachable!("the Redis watch never ends"),
        () = sweep_periodically(&engine) => unreachable!("the sweeper never ends"),
    };
    let _ = http_stop.send(());
    let _ = http.await;
    Ok(report)
}

/// Redis may be down at start: waits for it (not ready meanwhile) rather than exit. `None` when
/// the stop signal came first.
async fn connect_redis(
    config: &Config,
    health: &Health,
    stopped: impl Future<Output = ()>,
) -> Option<Redis> {
    let mut stopped = std::pin::pin!(stopped);
    let redis = loop {
        tokio::select! {
            r = Redis::connect(&config.redis, Some(WORKER_REDIS_RETRY)) => match r {
                Ok(r) => break r,
                Err(e) => {
                    health.set_redis_ok(false);
                    tracing::warn!(error = %e, "Redis not reachable at start; waiting for it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            () = &mut stopped => return None,
        }
    };
    health.set_redis_ok(true);
    Some(redis)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Readiness follows Redis even when no event flows.
async fn watch_redis(engine: &Engine, health: &Health) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(1), engine.redis.ping()).await,
            Ok(Ok(()))
        );
        health.set_redis_ok(ok);
    }
}

/// The TTL safety net, every `[sweeper] interval`.
async fn sweep_periodically(engine: &Engine) {
    if engine.rules.ttl_policies.is_empty() {
        return std::future::pending().await;
    }
    let mut every = tokio::time::interval(engine.config.sweeper.interval);
    every.tick().await;
    loop {
        every.tick().await;
        for policy in &engine.rules.ttl_policies {
            match engine.redis.sweep(policy, false).await {
                Ok(r) => tracing::info!(pattern = %policy.pattern, scanned = r.scanned,
                    over_policy = r.over_policy, fixed = r.fixed, "sweep"),
                Err(e) => tracing::warn!(pattern = %policy.pattern, error = %e,
                    "sweep failed; next pass at the next interval"),
            }
        }
    }
}
