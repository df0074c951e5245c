//! `invalidator-lambda`: the Lambda binary (`bootstrap`). Builds everything once, then serves
//! invocations through `lambda_runtime` until the sandbox goes away. An init failure is reported
//! to Lambda's runtime API (`/runtime/init/error`) before the process exits with status 1.

#![recursion_limit = "256"]

use std::process::ExitCode;
use std::time::Instant;

use invalidator_lambda::{app::App, init_error, telemetry};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<ExitCode, Error> {
    let started = Instant::now();
    telemetry::init_logs();
    let app = match App::from_env().await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, error_type = e.error_type(), "init failed");
            if let Err(why) = init_error::report(&e).await {
                tracing::warn!(error = %why, "init error not reported to the runtime API");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        "init done"
    );
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        app.handle(event).await
    }))
    .await?;
    Ok(ExitCode::SUCCESS)
}
