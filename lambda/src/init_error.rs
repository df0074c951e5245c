//! An init failure reported to Lambda before the process exits: `POST
//! /2018-06-01/runtime/init/error` on the runtime API (`AWS_LAMBDA_RUNTIME_API`), with the
//! `Lambda-Runtime-Function-Error-Type` header and `{"errorMessage", "errorType"}`. Lambda then
//! fails the waiting invocation with that type and message (and `cargo lambda watch` answers the
//! pending invoke with them) instead of a bare `Runtime.ExitError`, or a hang under the emulator.
//!
//! `lambda_runtime` 1.5 posts to `/init/error` only for SnapStart hooks, with no public way to
//! post an error of our own: the request is built here with its runtime API client.
//!
//! The message is the [`InitError`]'s text: the configuration key, rules directory and
//! `file:line:column`, or the Redis endpoint, never a password (the configuration redacts them).

use std::time::Duration;

use lambda_runtime::Diagnostic;
use lambda_runtime_api_client::{PooledClient, body::Body, build_request};

use crate::app::InitError;

/// How long the runtime API gets to take the report (it is local to the sandbox).
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";

impl InitError {
    /// The `errorType` Lambda shows: `Invalidator.<what failed>`.
    pub fn error_type(&self) -> &'static str {
        match self {
            InitError::Config(_) => "Invalidator.Config",
            InitError::Rules { .. } => "Invalidator.Rules",
            InitError::Cdn(_) => "Invalidator.Cdn",
            InitError::Redis(_) => "Invalidator.Redis",
        }
    }
}

impl From<&InitError> for Diagnostic {
    fn from(e: &InitError) -> Self {
        Diagnostic {
            error_type: e.error_type().into(),
            error_message: e.to_string(),
        }
    }
}

/// Posts `e` to the runtime API named by `AWS_LAMBDA_RUNTIME_API`. An error says why the report
/// could not be made (no runtime API: the binary runs outside Lambda).
pub async fn report(e: &InitError) -> Result<(), String> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set: not running in Lambda".to_string())?;
    let base: http::Uri = api
        .parse()
        .map_err(|e| format!("AWS_LAMBDA_RUNTIME_API `{api}`: {e}"))?;
    if base.authority().is_none() {
        return Err(format!("AWS_LAMBDA_RUNTIME_API `{api}`: no host"));
    }
    let client = PooledClient::builder().with_endpoint(base).build();
    let diagnostic = Diagnostic::from(e);
    let body = serde_json::to_vec(&diagnostic).map_err(|e| e.to_string())?;
    let request = build_request()
        .method(http::Method::POST)
        .uri(INIT_ERROR_PATH)
        .header("Lambda-Runtime-Function-Error-Type", e.error_type())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(REPORT_TIMEOUT, client.call(request))
        .await
        .map_err(|_| format!("the runtime API did not answer within {REPORT_TIMEOUT:?}"))?
        .map_err(|e| format!("the runtime API: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the runtime API answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diagnostic_names_what_failed() {
        let e = InitError::Rules {
            dir: "/var/task/rules".into(),
            error: "prices.yaml:3:5: unknown field `kyes`".into(),
        };
        let d = Diagnostic::from(&e);
        assert_eq!(d.error_type, "Invalidator.Rules");
        assert!(d.error_message.contains("/var/task/rules"), "{d:?}");
        assert!(d.error_message.contains("prices.yaml:3:5"), "{d:?}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["errorType"], "Invalidator.Rules");
        assert!(json["errorMessage"].is_string());
        assert_eq!(
            Diagnostic::from(&InitError::Config("config key `redis.url`: x".into())).error_type,
            "Invalidator.Config"
        );
    }
}
