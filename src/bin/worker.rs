//! The worker Lambda: configuration, clients, then `lambda_runtime::run` on the job handler.
#![recursion_limit = "256"]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use maestro_relay::aws::{sdk_config, S3Store, SecretsManager, SqsQueue};
use maestro_relay::config::WorkerConfig;
use maestro_relay::export::KinaxisExport;
use maestro_relay::secrets::CachedSecrets;
use maestro_relay::sftp::SftpDrop;
use maestro_relay::telemetry;
use maestro_relay::worker::{Worker, REQUEST_ID};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let buffers_kept = maestro_relay::allocator::keep_large_buffers();
    telemetry::init_logging();
    if !buffers_kept {
        tracing::warn!("the allocator did not take its thresholds; large buffers are mapped anew each time");
    }
    let config = WorkerConfig::from_env().inspect_err(|e| tracing::error!(error = %e.chain(), "cannot start"))?;
    let aws = sdk_config().await;
    let secrets = CachedSecrets::new(SecretsManager::from_sdk_config(&aws), config.secret_cache_ttl);
    let source = KinaxisExport::new(&config);
    let drop = SftpDrop { options: config.sftp.clone() };
    let queue = SqsQueue::from_sdk_config(&aws, &config.queue.jobs_queue_url, &config.queue.dead_letter_queue_url);
    let store = S3Store::from_sdk_config(&aws, &config.staging_bucket);
    let worker = Worker::new(store, secrets, source, drop, queue, config);
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let remaining = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let deadline = tokio::time::Instant::now() + remaining;
        REQUEST_ID.scope(event.context.request_id.clone(), worker.handle_event(&event.payload, deadline)).await
    }))
    .await
}
