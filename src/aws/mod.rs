//! Adapters on the AWS SDK: the staging bucket (S3), Secrets Manager, the jobs queue (SQS) and
//! the delivery events' bus (EventBridge). No SDK type
//! crosses into the domain; SDK errors become our classed errors here.

pub mod events;
pub mod s3;
pub mod secrets;
pub mod sqs;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{Error, ErrorClass, Step};

pub use events::EventBridgeBus;
pub use s3::S3Store;
pub use secrets::SecretsManager;
pub use sqs::SqsQueue;

/// The shared SDK configuration: region and credentials from the environment, and
/// `AWS_ENDPOINT_URL` (the SDK's own variable) pointing every client at a local emulator.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

const TRANSIENT_CODES: [&str; 8] = [
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestLimitExceeded",
    "InternalError",
    "InternalServiceError",
    "ServiceUnavailable",
];

/// Classes an SDK error: network, timeouts, 5xx, 429, 408 and throttling codes are
/// transient; other service errors (access denied, missing secret) are permanent.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>, step: Step, what: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let class = match &err {
        SdkError::ConstructionFailure(_) => ErrorClass::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => ErrorClass::Transient,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code) {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Transient,
    };
    let detail = DisplayErrorContext(&err).to_string();
    Error::new(class, step, format!("{what}: {detail}")).caused_by(err)
}
