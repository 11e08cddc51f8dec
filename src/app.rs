//! The one wiring: each function built from its configuration and the AWS SDK's, used by
//! both binaries and by the integration tests, so the tests run what is deployed.

use aws_config::SdkConfig;

use std::sync::Arc;

use crate::aws::{EventBridgeBus, S3Store, SecretsManager, SqsQueue};
use crate::config::{WebhookConfig, WorkerConfig};
use crate::delivery::sftp::SftpDrop;
use crate::events::Publisher;
use crate::export::KinaxisExport;
use crate::ports::ObjectStore;
use crate::secrets::CachedSecrets;
use crate::webhook::Webhook;
use crate::worker::Worker;

/// The webhook function as deployed.
pub type AppWebhook = Webhook<S3Store, SecretsManager>;

/// The worker function as deployed, on the object store `S` (the staging bucket in
/// production; a crash-injecting wrapper of it in tests).
pub type AppWorker<S = S3Store> = Worker<S, SecretsManager, KinaxisExport, SftpDrop, SqsQueue>;

pub fn webhook(config: WebhookConfig, sdk: &SdkConfig) -> AppWebhook {
    Webhook::new(
        S3Store::from_sdk_config(sdk, &config.staging_bucket),
        CachedSecrets::new(SecretsManager::from_sdk_config(sdk), config.secret_cache_ttl),
        config.settings,
    )
}

pub fn worker(config: WorkerConfig, sdk: &SdkConfig) -> AppWorker {
    let store = S3Store::from_sdk_config(sdk, &config.staging_bucket);
    worker_on(config, sdk, store)
}

/// The worker on `store` in place of the staging bucket.
pub fn worker_on<S: ObjectStore>(config: WorkerConfig, sdk: &SdkConfig, store: S) -> AppWorker<S> {
    let WorkerConfig { secret_cache_ttl, kinaxis, sftp, worker: settings, event_bus_name, staging_bucket } = config;
    let queue = &settings.queue;
    let queue = SqsQueue::from_sdk_config(sdk, &queue.jobs_queue_url, &queue.dead_letter_queue_url);
    let source = KinaxisExport::new(kinaxis, settings.profiles.clone(), settings.retry.clone());
    let worker = Worker::new(
        store,
        CachedSecrets::new(SecretsManager::from_sdk_config(sdk), secret_cache_ttl),
        source,
        SftpDrop { options: sftp },
        queue,
        settings,
    );
    match event_bus_name {
        Some(bus) => {
            worker.with_events(Publisher { bus: Arc::new(EventBridgeBus::from_sdk_config(sdk, bus)), staging_bucket })
        }
        None => worker,
    }
}
