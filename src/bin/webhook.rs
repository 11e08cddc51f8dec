//! The webhook Lambda: configuration, clients, then `lambda_http::run` on the handler.

use lambda_http::{service_fn, Error, Request};
use maestro_relay::aws::{sdk_config, S3Store, SecretsManager};
use maestro_relay::config::WebhookConfig;
use maestro_relay::secrets::CachedSecrets;
use maestro_relay::telemetry;
use maestro_relay::webhook::Webhook;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_logging();
    let config = WebhookConfig::from_env().inspect_err(|e| tracing::error!(error = %e.chain(), "cannot start"))?;
    let aws = sdk_config().await;
    let webhook = Webhook::new(
        S3Store::from_sdk_config(&aws, &config.staging_bucket),
        CachedSecrets::new(SecretsManager::from_sdk_config(&aws), config.secret_cache_ttl),
        config.settings,
    );
    let webhook = &webhook;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(webhook.handle_lambda(request).await)
    }))
    .await
}
