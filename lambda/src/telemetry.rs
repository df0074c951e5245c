//! Logs and metrics of the Lambda, CloudWatch-friendly.
//!
//! - Logs: JSON lines on stdout (`tracing-subscriber`), one object per event, the fields at the top
//!   level; the runtime's span carries the request id. Filter: `RUST_LOG`, else
//!   `AWS_LAMBDA_LOG_LEVEL`, else `info` for invalidator. ERROR is kept for data at risk (a failed
//!   dead-letter write).
//! - Metrics: every counter of the engine (`invalidator_events_total{type,outcome}`, ...; docs/operations.md)
//!   plus the Lambda's own below, recorded through the `metrics` facade into an Embedded Metric
//!   Format collector and flushed to stdout as EMF documents at the end of each invocation, so
//!   CloudWatch turns them into metrics without an agent or an API call. Histograms keep at most
//!   100 samples per invocation (one EMF document's limit).

use std::sync::OnceLock;

use metrics_cloudwatch_embedded::Collector;

/// Messages of an invocation, by source (`sqs`, `sns`) and result (`done`, `dead_lettered`,
/// `failed`).
pub const MESSAGES_TOTAL: &str = "invalidator_lambda_messages_total";
/// Invocations whose whole batch failed for an outage, by source.
pub const OUTAGES_TOTAL: &str = "invalidator_lambda_outages_total";

/// Installs the JSON log subscriber (once; later calls do nothing).
pub fn init_logs() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().map(|l| {
                format!(
                    "warn,invalidator={0},invalidator_lambda={0}",
                    l.to_lowercase()
                )
            })
        })
        .unwrap_or_else(|| {
            // The EMF collector reports a full histogram as an ERROR: it is not data at risk.
            "warn,invalidator=info,invalidator_lambda=info,metrics_cloudwatch_embedded=off".into()
        });
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stdout)
        .try_init();
}

static COLLECTOR: OnceLock<Option<&'static Collector>> = OnceLock::new();

/// Installs the EMF collector as the global metrics recorder (once), in namespace `namespace`,
/// with the function name as a dimension. `None` if another recorder was installed first.
pub fn init_metrics(namespace: &str) -> Option<&'static Collector> {
    *COLLECTOR.get_or_init(|| {
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into());
        match metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(namespace.to_owned())
            .with_dimension("function", function)
            .init()
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed: no EMF metrics");
                None
            }
        }
    })
}

pub fn messages(source: &'static str, result: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(MESSAGES_TOTAL, "source" => source, "result" => result)
            .increment(n as u64);
    }
}

pub fn outage(source: &'static str) {
    metrics::counter!(OUTAGES_TOTAL, "source" => source).increment(1);
}

/// Writes the metrics recorded since the last flush as EMF documents (one JSON line per label
/// set) to `out`.
pub fn flush(collector: Option<&'static Collector>, request_id: &str, out: impl std::io::Write) {
    if let Some(c) = collector {
        c.set_property("RequestId", request_id.to_owned());
        if let Err(e) = c.flush(out) {
            tracing::warn!(error = %e, "EMF metrics not written");
        }
    }
}
