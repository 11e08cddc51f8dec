//! The webhook Lambda: configuration, the wiring, then the runtime on the handler's one
//! entry (API Gateway's events and EventBridge Scheduler's scheduled start).
// The handler's future nests lambda_http's adapter in the runtime's own layers: laying it
// out goes deeper than the compiler's default limit of 128.
#![recursion_limit = "256"]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use maestro_relay::aws::sdk_config;
use maestro_relay::config::WebhookConfig;
use maestro_relay::telemetry;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_logging();
    let config = WebhookConfig::from_env().inspect_err(|e| tracing::error!(error = %e.chain(), "cannot start"))?;
    let webhook = maestro_relay::app::webhook(config, &sdk_config().await);
    let webhook = &webhook;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Value>| async move { webhook.handle_invocation(event).await },
    ))
    .await
}
