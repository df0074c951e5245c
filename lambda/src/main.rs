//! `invalidator-lambda`: the Lambda binary (`bootstrap`). Builds everything once, then serves
//! invocations through `lambda_runtime` until the sandbox goes away.

#![recursion_limit = "256"]

use std::time::Instant;

use invalidator_lambda::{app::App, telemetry};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    telemetry::init_logs();
    let app = match App::from_env().await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "init failed");
            return Err(e.into());
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
    .await
}
