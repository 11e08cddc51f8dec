//! The worker's Lambda boundary: what invokes it (an SQS batch of S3 notifications for
//! `jobs/…`, an operator's re-run `{"jobKey": "jobs/<jobId>.json", …}` from the console
//! or `maestro-relay rerun`, or the pickup watchdog's schedule), decoded into typed events, and what it answers
//! (`SqsBatchResponse`, or the re-run's outcome).

use aws_lambda_events::s3::S3Entity;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pickup::{PickupCheck, PickupReport};
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{keys, Receipt};

/// The worker's invocation.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Queue(SqsEvent),
    /// An operator's re-run from the Lambda console's Test tab or `maestro-relay rerun`.
    Console(RerunRequest),
    /// The SAP pickup watchdog's scheduled check: `{"pickupCheck": {…}}`.
    PickupCheck(PickupCheck),
}

/// An operator's re-run: the job, and what to do differently this once. Unknown fields are
/// refused, so that a misspelt option is not silently a plain re-run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RerunRequest {
    pub job_key: String,
    /// Export again from Kinaxis instead of sending the staged copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh_export: bool,
    /// Deliver a delivered job once more, under records of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
    /// Names the re-send, so that the same request run twice delivers once; the Lambda
    /// request id when left out (a retried invocation keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_id: Option<String>,
    /// Deliver even when a newer batch claimed the destination (this job only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_stale: bool,
    /// Who asked: kept in the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl RerunRequest {
    pub fn plain(job_key: impl Into<String>) -> Self {
        Self { job_key: job_key.into(), ..Self::default() }
    }

    /// Anything beyond "run it again".
    pub fn asks_more(&self) -> bool {
        self.fresh_export || self.resend || self.allow_stale
    }
}

/// Decoded as `decode` does, so a malformed event fails with the same message whether it
/// comes through the Lambda runtime or a test.
impl<'de> Deserialize<'de> for WorkerEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let event = Value::deserialize(deserializer)?;
        Self::decode(event).map_err(|e| serde::de::Error::custom(e.chain()))
    }
}

/// The worker's answer: the messages SQS must hand out again, or a console run's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WorkerResponse {
    Queue(SqsBatchResponse),
    Console(ConsoleOutcome),
    PickupCheck(PickupReport),
}

/// What a console re-run did, as `{"status": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ConsoleOutcome {
    Delivered {
        receipt: Box<Receipt>,
    },
    AlreadyDelivered,
    Skipped {
        receipt: Box<Receipt>,
    },
    /// The request cannot be run as asked (no such job, a re-send of a job not delivered…):
    /// nothing was done or recorded, nobody paged.
    NotRun {
        reason: String,
    },
}

impl WorkerEvent {
    pub fn decode(event: Value) -> Result<Self> {
        if event.get("Records").is_some() {
            let batch: SqsEvent =
                serde_json::from_value(event).or_permanent(Step::Manifest, "the event is not an SQS batch")?;
            return Ok(Self::Queue(batch));
        }
        if event.get("jobKey").is_some() {
            let rerun: RerunRequest = serde_json::from_value(event).or_permanent(
                Step::Manifest,
                "a re-run is {\"jobKey\": \"jobs/<jobId>.json\"} with optional freshExport, resend, allowStale \
                 (true/false), resendId and requestedBy (strings)",
            )?;
            return Ok(Self::Console(rerun));
        }
        if let Some(check) = event.get("pickupCheck") {
            let check: PickupCheck = serde_json::from_value(check.clone()).or_permanent(
                Step::Pickup,
                "a pickup check is {\"pickupCheck\": {}} with an optional scheduledTime (a string)",
            )?;
            return Ok(Self::PickupCheck(check));
        }
        Err(Error::permanent(
            Step::Manifest,
            "the event is neither an SQS batch, {\"jobKey\": \"jobs/<jobId>.json\"} nor {\"pickupCheck\": {}}",
        ))
    }
}

/// An S3 event notification as the queue carries it. Only `s3` of each record is read, as
/// `aws_lambda_events`' `S3Entity`: its `S3EventRecord` also requires `userIdentity` and
/// `requestParameters`, which the worker never reads and the local stand-in (moto) omits.
#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "Event", default)]
    event: Option<String>,
    #[serde(rename = "Records", default)]
    records: Vec<NotificationRecord>,
}

#[derive(Deserialize)]
struct NotificationRecord {
    s3: S3Entity,
}

/// How many times SQS has handed this message out, this time included.
pub fn receive_count(message: &SqsMessage) -> u32 {
    message.attributes.get("ApproximateReceiveCount").and_then(|n| n.parse().ok()).unwrap_or(1).max(1)
}

/// The job manifests a queue message names: none for S3's `s3:TestEvent`; keys of other
/// objects are skipped with a warning.
pub fn job_keys(body: &str) -> Result<Vec<String>> {
    let notification: Notification =
        serde_json::from_str(body).or_permanent(Step::Manifest, "the SQS message is not an S3 event notification")?;
    if notification.event.as_deref() == Some("s3:TestEvent") {
        tracing::info!("S3 test event acknowledged");
        return Ok(Vec::new());
    }
    if notification.records.is_empty() {
        return Err(Error::permanent(Step::Manifest, "the S3 event notification has no records"));
    }
    let mut job_keys = Vec::new();
    for record in notification.records {
        let encoded = record
            .s3
            .object
            .key
            .ok_or_else(|| Error::permanent(Step::Manifest, "an S3 notification record has no object key"))?;
        let key = decode_s3_key(&encoded);
        if keys::job_id_of_manifest(&key).is_none() {
            tracing::warn!(key, "notification for an object that is not a job manifest; ignored");
            continue;
        }
        job_keys.push(key);
    }
    Ok(job_keys)
}

/// The field a re-queued check of a held job carries: how many checks came before it.
const LEASE_CHECKS_FIELD: &str = "leaseChecks";

/// How many times this message was re-queued as a later check of a job another run held.
pub fn lease_checks(body: &str) -> u32 {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get(LEASE_CHECKS_FIELD)?.as_u64())
        .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// The body again, counting one more check: the re-queued message names the same jobs.
pub fn with_one_more_lease_check(body: &str) -> Result<String> {
    let mut value: Value =
        serde_json::from_str(body).or_permanent(Step::Queue, "the SQS message is not an S3 event notification")?;
    let checks = lease_checks(body) + 1;
    let object =
        value.as_object_mut().ok_or_else(|| Error::permanent(Step::Queue, "the SQS message is not a JSON object"))?;
    object.insert(LEASE_CHECKS_FIELD.to_owned(), Value::from(checks));
    Ok(value.to_string())
}

/// S3 notifications carry the key form-URL-encoded (`jobs%2F….json`, `+` for a space).
fn decode_s3_key(encoded: &str) -> String {
    // `+` first: an encoded plus (`%2B`) must survive as `+`.
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_queue_fixture_decodes_to_one_job_key_with_its_receive_count() {
        let WorkerEvent::Queue(batch) = WorkerEvent::decode(fixture("worker-sqs-job.json")).unwrap() else {
            panic!("not a queue event")
        };
        let message = &batch.records[0];
        assert_eq!(receive_count(message), 1);
        let keys = job_keys(message.body.as_deref().unwrap()).unwrap();
        assert_eq!(keys, ["jobs/0123456789abcdef0123456789abcdef.json"]);
    }

    #[test]
    fn s3s_test_event_names_no_job_and_the_console_rerun_names_its_key() {
        let WorkerEvent::Queue(batch) = WorkerEvent::decode(fixture("worker-sqs-s3-test-event.json")).unwrap() else {
            panic!("not a queue event")
        };
        assert!(job_keys(batch.records[0].body.as_deref().unwrap()).unwrap().is_empty());
        let WorkerEvent::Console(rerun) = WorkerEvent::decode(fixture("worker-direct-rerun.json")).unwrap() else {
            panic!("not a console event")
        };
        assert!(rerun.job_key.starts_with("jobs/"));
        assert!(!rerun.asks_more());
    }

    #[test]
    fn a_rerun_with_options_decodes_them_all_and_serialises_back_the_same() {
        let event = serde_json::json!({
            "jobKey": "jobs/0123456789abcdef0123456789abcdef.json",
            "freshExport": true, "resend": true, "resendId": "r1", "allowStale": true, "requestedBy": "ops"
        });
        let WorkerEvent::Console(rerun) = WorkerEvent::decode(event.clone()).unwrap() else { panic!("not a re-run") };
        assert!(rerun.fresh_export && rerun.resend && rerun.allow_stale && rerun.asks_more());
        assert_eq!((rerun.resend_id.as_deref(), rerun.requested_by.as_deref()), (Some("r1"), Some("ops")));
        assert_eq!(serde_json::to_value(&rerun).unwrap(), event);
    }

    #[test]
    fn keys_are_form_url_decoded_and_other_objects_are_skipped() {
        assert_eq!(decode_s3_key("jobs%2Fab.json"), "jobs/ab.json");
        assert_eq!(decode_s3_key("a+b%2Bc"), "a b+c");
        let body = r#"{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"staging%2Fx.csv"}}}]}"#;
        assert!(job_keys(body).unwrap().is_empty());
    }

    #[test]
    fn anything_else_is_a_permanent_manifest_error() {
        let misspelt = serde_json::json!({"jobKey": "jobs/0123456789abcdef0123456789abcdef.json", "freshexport": true});
        for event in [serde_json::json!({"hello": 1}), serde_json::json!({"jobKey": 7}), misspelt] {
            let err = WorkerEvent::decode(event).unwrap_err();
            assert_eq!((err.class, err.step), (crate::error::ErrorClass::Permanent, Step::Manifest));
        }
        assert!(job_keys("not json").is_err());
        assert!(job_keys(r#"{"Records": []}"#).is_err());
    }

    #[test]
    fn a_requeued_check_counts_its_checks_and_still_names_the_same_job() {
        let body = r#"{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"jobs%2F0123456789abcdef0123456789abcdef.json"}}}]}"#;
        assert_eq!(lease_checks(body), 0);
        let once = with_one_more_lease_check(body).unwrap();
        let twice = with_one_more_lease_check(&once).unwrap();
        assert_eq!((lease_checks(&once), lease_checks(&twice)), (1, 2));
        assert_eq!(job_keys(&twice).unwrap(), job_keys(body).unwrap());
    }
}
