//! Init (once per sandbox) and one invocation.
//!
//! Init reads the configuration (`./invalidator.toml` in the deployment package if present, then
//! every `INVALIDATOR_*` environment variable), compiles the rules (`[rules] dir`, relative to the
//! package root `/var/task`; `INVALIDATOR_RULES__DIR` overrides it), builds the Redis, CDN and SQS
//! clients and the metrics recorder. Any error there stops the init with the key or file it is
//! about: `main` posts it to the runtime API's `/runtime/init/error` ([`crate::init_error`]),
//! Lambda fails the invocation with it, and the messages stay in their queue or are retried.
//! Init waits for Redis at most `INIT_REDIS_WAIT` (5 s); the invocations' commands retry within
//! `[redis] retry_for`, each bounded by its invocation's deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invalidator::apply::redis::Redis;
use invalidator::config::{CdnConfig, Config, RedisConfig, Topology, redact_url};
use invalidator::engine::Engine;
use invalidator::rules::{CompileOptions, RuleSet};
use lambda_runtime::LambdaEvent;
use metrics_cloudwatch_embedded::Collector;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use crate::batch::{self, HandlerError, Report};
use crate::dlq::SqsDeadLetters;
use crate::invalidate::{Counts, Invalidate};
use crate::telemetry;

/// How long init waits for Redis (Lambda gives init 10 s in all).
const INIT_REDIS_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Config(String),
    #[error("rules in {dir} do not compile:\n{error}")]
    Rules { dir: String, error: String },
    #[error("{0}")]
    Cdn(String),
    #[error("{0}")]
    Redis(String),
}

/// An invocation is the batch: its CloudFront paths go out as soon as its unit is applied.
/// Concurrent sandboxes cannot share a window, so waiting for one would only add billed time.
fn no_cloudfront_window(config: &mut Config) {
    for (name, cdn) in &mut config.cdn {
        if let CdnConfig::Cloudfront { window, .. } = cdn
            && !window.is_zero()
        {
            tracing::info!(target_name = %name, window = ?*window,
                "CloudFront window not used in the Lambda: each invocation sends its own batch");
            *window = Duration::ZERO;
        }
    }
}

/// The Redis servers of `[redis]`, with their key, for an init error (no password).
fn redis_endpoint(c: &RedisConfig) -> String {
    let list = |urls: &[String]| urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
    match c.topology() {
        Topology::Single { url } => format!("redis.url {}", redact_url(url)),
        Topology::Sentinel { sentinels, master } => {
            format!("redis.sentinels {:?}, master {master}", list(sentinels))
        }
        Topology::Cluster { seeds } => format!("redis.cluster {:?}", list(seeds)),
    }
}

/// Everything built once per sandbox.
pub struct App {
    pub invalidate: Invalidate,
    pub dlq: Option<SqsDeadLetters>,
    pub metrics: Option<&'static Collector>,
    margin: Duration,
}

impl App {
    /// Builds the app from the environment (and `./invalidator.toml` if present).
    pub async fn from_env() -> Result<App, InitError> {
        let config = Config::load(None).map_err(|e| InitError::Config(e.to_string()))?;
        let dlq = match &config.lambda.dlq_url {
            Some(url) => Some(SqsDeadLetters::from_env(url.as_str()).await),
            None => None,
        };
        Self::new(config, dlq).await
    }

    /// Builds the app from a configuration and the dead-letter queue client (`None`: no DLQ).
    pub async fn new(mut config: Config, dlq: Option<SqsDeadLetters>) -> Result<App, InitError> {
        no_cloudfront_window(&mut config);
        let options = CompileOptions {
            limits: config.rule_limits(),
            cdn_targets: Some(config.cdn.keys().cloned().collect()),
        };
        let rules = RuleSet::load(&config.rules.dir, &options).map_err(|e| InitError::Rules {
            dir: config.rules.dir.display().to_string(),
            error: e.to_string(),
        })?;
        // Init waits for Redis at most INIT_REDIS_WAIT; the invocations' commands retry within the
        // configured `retry_for` (each bounded by its invocation's deadline).
        let retry_for = config.redis.retry_for;
        let wait = retry_for.min(INIT_REDIS_WAIT);
        let redis = Redis::connect_waiting(&config.redis, Some(retry_for), Some(wait))
            .await
            .map_err(|e| {
                InitError::Redis(format!(
                    "{e} ({}; init waits {wait:?} for Redis)",
                    redis_endpoint(&config.redis)
                ))
            })?;
        let metrics = telemetry::init_metrics(&config.lambda.metrics_namespace);
        tracing::info!(
            redis = %redis.describe(),
            rules = rules.rules.len(),
            rules_dir = %config.rules.dir.display(),
            dlq = dlq.as_ref().map_or("none", |d| d.queue_url()),
            "ready"
        );
        if dlq.is_none() {
            tracing::warn!(
                "no [lambda] dlq_url: poison SQS messages are left to the queue's redrive policy, and a poison SNS message fails its invocation (Lambda's on-failure destination keeps it)"
            );
        }
        let margin = config.lambda.deadline_margin;
        // CDN targets and completion notices, with the AWS configuration when they need it.
        let engine = Engine::build(config, rules, redis)
            .await
            .map_err(InitError::Cdn)?;
        Ok(App {
            invalidate: Invalidate::new(Arc::new(engine)),
            dlq,
            metrics,
            margin,
        })
    }

    /// One invocation: the handler given to `lambda_runtime`.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
        let LambdaEvent { payload, context } = event;
        let deadline = deadline(context.deadline, self.margin);
        let (_, response) = self.run(payload, deadline).await?;
        telemetry::flush(self.metrics, &context.request_id, std::io::stdout().lock());
        response
    }

    /// One batch, with its report (for logs and tests) and the answer for Lambda.
    pub async fn run(
        &self,
        payload: Value,
        deadline: Option<Instant>,
    ) -> Result<(Report<Counts>, Result<Value, HandlerError>), HandlerError> {
        let (source, messages) = batch::parse(payload)?;
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let report = batch::handle(
            &self.invalidate,
            self.dlq.as_ref(),
            source,
            &messages,
            deadline,
            &now,
        )
        .await;
        log(&report);
        let response = report.response();
        Ok((report, response))
    }
}

/// Logs and counts what an invocation did.
fn log(r: &Report<Counts>) {
    let source = r.source.label();
    telemetry::messages(source, "done", r.done);
    telemetry::messages(source, "dead_lettered", r.dead_lettered);
    telemetry::messages(source, "failed", r.failed.len());
    let c = &r.summary;
    if let Some(cause) = &r.outage {
        telemetry::outage(source);
        tracing::warn!(source, messages = r.messages, error = %cause,
            "batch not applied (dependency unavailable or deadline near): every message reported failed, nothing dead-lettered");
        return;
    }
    for (id, why) in &r.failures {
        tracing::warn!(source, message_id = %id, reason = %why, "message reported failed");
    }
    tracing::info!(
        source,
        messages = r.messages,
        applied = c.applied,
        skipped = c.skipped,
        duplicate = c.duplicate,
        dead_lettered = r.dead_lettered,
        failed = r.failed.len(),
        keys_removed = c.keys_removed,
        paths = c.paths,
        redeletes = c.redeletes,
        "batch done"
    );
}

/// The instant by which the work must be over: the invocation deadline less `margin`. Lambda
/// gives the deadline in milliseconds since the epoch; 0 means unknown. A value before 2001 is not
/// an epoch time: it is read as milliseconds from now (cargo-lambda's emulator sends its timeout
/// that way, `600000`).
pub fn deadline(deadline_ms: u64, margin: Duration) -> Option<Instant> {
    const EPOCH_2001_MS: u64 = 1_000_000_000_000;
    if deadline_ms == 0 {
        return None;
    }
    let left = if deadline_ms < EPOCH_2001_MS {
        Duration::from_millis(deadline_ms)
    } else {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    };
    Some(Instant::now() + left.saturating_sub(margin))
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        let error_type = match &e {
            HandlerError::Event(_) => "Invalidator.UnsupportedEvent",
            HandlerError::NotDone { .. } => "Invalidator.NotDone",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudfront_targets_send_at_once_in_the_lambda() {
        let mut c = Config::from_toml(
            "[cdn.cf]\nkind = \"cloudfront\"\ndistribution_id = \"E1\"\nwindow = \"2s\"\n\
             [cdn.edge]\nkind = \"http\"\nurls = [\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        no_cloudfront_window(&mut c);
        assert!(matches!(&c.cdn["cf"], CdnConfig::Cloudfront { window, .. } if window.is_zero()));
        assert!(
            matches!(&c.cdn["edge"], CdnConfig::Http { .. }),
            "others untouched"
        );
    }

    #[test]
    fn the_redis_of_an_init_error_is_named_without_its_password() {
        let c = Config::from_toml("[redis]\nurl = \"rediss://app:pw-1@cache.example:6379/0\"\n")
            .unwrap();
        let named = redis_endpoint(&c.redis);
        assert!(named.starts_with("redis.url rediss://"), "{named}");
        assert!(
            named.contains("cache.example:6379/0") && !named.contains("pw-1"),
            "{named}"
        );
        let c = Config::from_toml(
            "[redis]\nsentinels = [\"redis://:pw-2@s1:26379\"]\nsentinel_master = \"m\"\n",
        )
        .unwrap();
        let named = redis_endpoint(&c.redis);
        assert!(
            named.contains("s1:26379") && named.contains("master m"),
            "{named}"
        );
        assert!(!named.contains("pw-2"), "{named}");
    }

    #[test]
    fn deadline_from_epoch_or_relative_milliseconds() {
        let margin = Duration::from_secs(1);
        assert_eq!(deadline(0, margin), None);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let left = |d: Option<Instant>| d.unwrap().saturating_duration_since(Instant::now());
        let l = left(deadline(now_ms + 30_000, margin));
        assert!(
            l > Duration::from_secs(28) && l <= Duration::from_secs(29),
            "{l:?}"
        );
        assert_eq!(left(deadline(now_ms - 5_000, margin)), Duration::ZERO);
        let l = left(deadline(600_000, margin));
        assert!(
            l > Duration::from_secs(598) && l <= Duration::from_secs(599),
            "{l:?}"
        );
    }
}
