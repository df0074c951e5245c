//! The settings of one mode each: `[replay]`, `[sweeper]`, `[http]` (the worker's health and
//! metrics listener) and `[lambda]`.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::read::{at_least_one, duration, non_blank, positive_duration};
use super::types::HttpUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperConfig {
    /// More than 0s (a timer of 0 would spin).
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            interval: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Events per unit of work (planned, coalesced and applied together).
    #[serde(deserialize_with = "at_least_one")]
    pub batch_size: NonZeroUsize,
    /// Units of work applied concurrently.
    #[serde(deserialize_with = "at_least_one")]
    pub max_in_flight: NonZeroUsize,
    /// Most keys and tags waiting for their `redelete_after`; intake waits when it is reached.
    pub max_pending_redeletes: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            batch_size: NonZeroUsize::new(1000).unwrap(),
            max_in_flight: NonZeroUsize::new(4).unwrap(),
            max_pending_redeletes: 100_000,
        }
    }
}

/// The AWS Lambda adapter (`invalidator-lambda`); ignored by the other modes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaConfig {
    /// SQS queue URL that receives poison messages (payload as the body, reason and metadata as
    /// message attributes). Absent: see the Lambda section of the README.
    #[serde(deserialize_with = "sqs_queue_url")]
    pub dlq_url: Option<HttpUrl>,
    /// Longest an invocation waits for the `redelete_after`s of its events before it returns (the
    /// sandbox is frozen after that); later ones are run at that point, early rather than never.
    #[serde(deserialize_with = "duration")]
    pub max_redelete_wait: Duration,
    /// Time kept free before the invocation deadline: work still running then is abandoned and
    /// reported as a transient failure, so the answer reaches Lambda before it times out.
    #[serde(deserialize_with = "duration")]
    pub deadline_margin: Duration,
    /// CloudWatch namespace of the metrics written as EMF.
    #[serde(deserialize_with = "non_blank")]
    pub metrics_namespace: String,
}

impl Default for LambdaConfig {
    fn default() -> Self {
        LambdaConfig {
            dlq_url: None,
            max_redelete_wait: Duration::from_secs(1),
            deadline_margin: Duration::from_secs(1),
            metrics_namespace: "invalidator".into(),
        }
    }
}

/// An http(s) URL, with the SQS form in the message when it is not one.
fn sqs_queue_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
        ))
    })
}
