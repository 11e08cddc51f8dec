//! The webhook Lambda: configuration, the wiring, then `lambda_http::run` on the handler.

use lambda_http::{service_fn, Error, Request};
use maestro_relay::aws::sdk_config;
use maestro_relay::config::WebhookConfig;
use maestro_relay::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_logging();
    let config = WebhookConfig::from_env().inspect_err(|e| tracing::error!(error = %e.chain(), "cannot start"))?;
    let webhook = maestro_relay::app::webhook(config, &sdk_config().await);
    let webhook = &webhook;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(webhook.handle_lambda(request).await)
    }))
    .await
}
