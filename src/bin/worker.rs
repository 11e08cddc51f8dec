//! The worker Lambda: configuration, the wiring, then `lambda_runtime::run` on the job handler.
#![recursion_limit = "256"]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use maestro_relay::aws::sdk_config;
use maestro_relay::config::WorkerConfig;
use maestro_relay::telemetry;
use maestro_relay::worker::{WorkerEvent, REQUEST_ID};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let buffers_kept = maestro_relay::allocator::keep_large_buffers();
    telemetry::init_logging();
    if !buffers_kept {
        tracing::warn!("the allocator did not take its thresholds; large buffers are mapped anew each time");
    }
    let config = WorkerConfig::from_env().inspect_err(|e| tracing::error!(error = %e.chain(), "cannot start"))?;
    let worker = maestro_relay::app::worker(config, &sdk_config().await);
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<WorkerEvent>| async move {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let remaining = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let deadline = tokio::time::Instant::now() + remaining;
        REQUEST_ID.scope(event.context.request_id.clone(), worker.handle_event(event.payload, deadline)).await
    }))
    .await
}
