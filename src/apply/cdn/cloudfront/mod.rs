//! CloudFront invalidations, batched per distribution.
//!
//! Each `[cdn.NAME] kind = "cloudfront"` target owns one batcher task ([`batcher`]). Units of work
//! submit their paths and wait until CloudFront accepted them: a unit's future (and so the
//! acknowledgement of its events) resolves only then. Paths from every unit in flight share one
//! window (`window`, default 1 s from the first path; cut early at `max_paths`), are deduplicated,
//! covered by wildcards when one of the batch covers them, optionally collapsed into `parent/*`, and
//! sent as one `CreateInvalidation` (or several, within 3,000 paths and 15 wildcards each).
//!
//! Failures:
//! - a path CloudFront refuses (local validation, or `InvalidArgument`, isolated by bisection) is
//!   rejected: its events dead-letter with `cdn_rejected`, the other paths are purged;
//! - throttling (`Throttling`, HTTP 429) and `TooManyInvalidationsInProgress` are retried with
//!   exponential backoff and jitter; such a refused request created nothing, so newer paths merge
//!   into it meanwhile (and it gets a new `CallerReference`);
//! - a request whose outcome is unknown (timeout, connection lost, 5xx) is retried unchanged: same
//!   paths, same `CallerReference`, so CloudFront answers with the invalidation it may have made;
//! - anything still failing after `retry_for` (unreachable, credentials, access denied) is an
//!   outage: [`CdnError::Unavailable`] for the units waiting, never a dead letter.
//!
//! Credentials come from the standard AWS chain (environment, profile, SSO, web identity, ECS,
//! instance metadata) and are never logged.

pub mod batch;
mod batcher;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_cloudfront::Client;
use aws_sdk_cloudfront::config::Region;
use aws_sdk_cloudfront::config::retry::RetryConfig;
use aws_sdk_cloudfront::config::timeout::TimeoutConfig;
use aws_sdk_cloudfront::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use tokio::sync::{mpsc, oneshot};

use super::{CdnError, CdnStats, Counters};
use crate::config::{DistributionId, HttpUrl};

/// CloudFront's price per invalidation path after the first 1,000 paths of a month (US dollars);
/// a wildcard path counts as one.
pub const PRICE_PER_PATH_USD: f64 = 0.005;
/// Paths a month that CloudFront does not charge for (per AWS account).
pub const FREE_PATHS_PER_MONTH: u64 = 1000;

/// The settings of one CloudFront target.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub distribution_id: DistributionId,
    pub window: Duration,
    pub limits: batch::Limits,
    pub endpoint_url: Option<HttpUrl>,
    pub timeout: Duration,
    pub retry_for: Duration,
}

/// The answer to one submission: per path, accepted or refused with CloudFront's reason.
pub(crate) type Outcomes = Result<Vec<Result<(), String>>, CdnError>;

pub(crate) enum Command {
    Submit {
        paths: Vec<String>,
        reply: oneshot::Sender<Outcomes>,
    },
    /// Send what is waiting for its window now, and every later path at once (shutdown).
    Drain,
}

/// A CloudFront target: a handle on its batcher task.
pub struct CloudFront {
    name: String,
    tx: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

impl CloudFront {
    /// Builds the client from `sdk` (the standard AWS chain, or a test's static credentials) and
    /// starts the batcher. Needs a tokio runtime.
    pub fn start(settings: Settings, sdk: &SdkConfig) -> CloudFront {
        let mut conf = aws_sdk_cloudfront::config::Builder::from(sdk)
            // The batcher retries itself: a throttled batch merges newer paths before it is sent
            // again, which the SDK's own retries could not do.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
                    .operation_attempt_timeout(settings.timeout)
                    .build(),
            );
        if sdk.region().is_none() {
            // CloudFront is a global service, signed in us-east-1.
            conf = conf.region(Region::new("us-east-1"));
        }
        if let Some(url) = &settings.endpoint_url {
            conf = conf.endpoint_url(url.as_str());
        }
        let client = Client::from_conf(conf.build());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(1024);
        let name = settings.name.clone();
        tokio::spawn(batcher::run(
            settings,
            Sender { client },
            counters.clone(),
            rx,
        ));
        CloudFront { name, tx, counters }
    }

    /// Submits `paths` to the current batch and waits until CloudFront accepted (or refused) each.
    pub async fn purge(&self, paths: Vec<String>) -> Outcomes {
        let (reply, answer) = oneshot::channel();
        let stopped = || CdnError::Unavailable {
            target: self.name.clone(),
            message: "the CloudFront batcher stopped".into(),
        };
        self.tx
            .send(Command::Submit { paths, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Sends the paths waiting for their window now, and every later path without a window.
    pub async fn drain(&self) {
        let _ = self.tx.send(Command::Drain).await;
    }

    pub fn stats(&self) -> CdnStats {
        self.counters.stats("cloudfront")
    }
}

/// What one `CreateInvalidation` attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attempt {
    Accepted {
        id: String,
    },
    /// Refused before anything was created; `throttle` names the code when it was throttling or
    /// too many invalidations in progress. Newer paths may merge into it before the retry.
    Refused {
        throttle: Option<String>,
        message: String,
    },
    /// Maybe created, maybe not (timeout, connection lost, 5xx): retried unchanged.
    Unknown {
        message: String,
    },
    /// CloudFront refused a path of the request (`InvalidArgument`, `BatchTooLarge`).
    Invalid {
        message: String,
    },
}

/// What a service error means for a request, by error code and HTTP status.
pub(crate) fn classify(code: Option<&str>, status: u16, message: String) -> Attempt {
    match code {
        Some(
            c @ ("TooManyInvalidationsInProgress"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "SlowDown"),
        ) => Attempt::Refused {
            throttle: Some(c.to_owned()),
            message,
        },
        _ if status == 429 => Attempt::Refused {
            throttle: Some("HTTP 429".into()),
            message,
        },
        Some("InvalidArgument" | "BatchTooLarge") => Attempt::Invalid { message },
        _ if status >= 500 => Attempt::Unknown { message },
        // AccessDenied, NoSuchDistribution, bad or expired credentials, ...: nothing was created;
        // an outage (of configuration) until it is fixed, never a per-event error.
        _ => Attempt::Refused {
            throttle: None,
            message,
        },
    }
}

/// Sends one request.
#[derive(Clone)]
pub(crate) struct Sender {
    client: Client,
}

impl Sender {
    pub async fn create_invalidation(
        &self,
        distribution_id: &str,
        reference: &str,
        paths: Vec<String>,
    ) -> Attempt {
        let batch = Paths::builder()
            .quantity(paths.len() as i32)
            .set_items(Some(paths))
            .build()
            .and_then(|p| {
                InvalidationBatch::builder()
                    .caller_reference(reference)
                    .paths(p)
                    .build()
            });
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Refused {
                    throttle: None,
                    message: e.to_string(),
                };
            }
        };
        let result = self
            .client
            .create_invalidation()
            .distribution_id(distribution_id)
            .invalidation_batch(batch)
            .send()
            .await;
        match result {
            Ok(out) => Attempt::Accepted {
                id: out
                    .invalidation()
                    .map(|i| i.id().to_owned())
                    .unwrap_or_default(),
            },
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                let err = e.err();
                let message = format!(
                    "CreateInvalidation: HTTP {status} {}: {}",
                    err.code().unwrap_or("(no code)"),
                    err.message().unwrap_or("")
                );
                classify(err.code(), status, message)
            }
            Err(e @ SdkError::ConstructionFailure(_)) => Attempt::Refused {
                throttle: None,
                message: format!("CreateInvalidation: {}", DisplayErrorContext(&e)),
            },
            Err(e) => Attempt::Unknown {
                message: format!("CreateInvalidation: {}", DisplayErrorContext(&e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let m = || "m".to_string();
        assert!(matches!(
            classify(Some("TooManyInvalidationsInProgress"), 400, m()),
            Attempt::Refused { throttle: Some(ref c), .. } if c == "TooManyInvalidationsInProgress"
        ));
        assert!(matches!(
            classify(Some("Throttling"), 400, m()),
            Attempt::Refused {
                throttle: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(None, 429, m()),
            Attempt::Refused {
                throttle: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(Some("InvalidArgument"), 400, m()),
            Attempt::Invalid { .. }
        ));
        assert!(matches!(
            classify(Some("ServiceUnavailable"), 503, m()),
            Attempt::Unknown { .. }
        ));
        assert!(matches!(classify(None, 500, m()), Attempt::Unknown { .. }));
        assert!(matches!(
            classify(Some("AccessDenied"), 403, m()),
            Attempt::Refused { throttle: None, .. }
        ));
        assert!(matches!(
            classify(Some("NoSuchDistribution"), 404, m()),
            Attempt::Refused { throttle: None, .. }
        ));
    }
}
