//! The delivery events other systems build on (EventBridge, source `maestro-relay`): what
//! each says (`File Delivered`, `Job Failed`, `File Not Picked Up`; the schema is
//! `docs/events.schema.json`), built from a receipt, a failure or the pickup watchdog's
//! finding, the port that puts them on a bus, and the publishing: retried within the
//! deadline, never more than once per entry the bus took.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::{Error, ErrorClass, Result, Step};
use crate::job::{DeliveryRecord, JobId, Manifest, Receipt, Records};
use crate::routing::Target;

/// Every event's `source`.
pub const SOURCE: &str = "maestro-relay";
/// EventBridge takes at most 10 entries per `PutEvents`.
pub const MAX_ENTRIES: usize = 10;
/// A failure message is cut here: subscribers need its head, and EventBridge caps an entry.
const MAX_FAILURE_MESSAGE: usize = 1000;
/// Attempts at the entries the bus did not take, while the deadline allows.
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// An event's `detail-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DetailType {
    #[serde(rename = "File Delivered")]
    FileDelivered,
    #[serde(rename = "Job Failed")]
    JobFailed,
    #[serde(rename = "File Not Picked Up")]
    FileNotPickedUp,
}

impl DetailType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileDelivered => "File Delivered",
            Self::JobFailed => "Job Failed",
            Self::FileNotPickedUp => "File Not Picked Up",
        }
    }
}

/// As AWS Transfer Family's SFTP connector events say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusCode {
    Completed,
    Failed,
}

/// The staged copy a file was sent from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedObject {
    pub bucket: String,
    pub key: String,
}

/// An event's `detail`, camelCase like the receipts; a field that does not apply is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    pub job_id: JobId,
    pub event_id: Option<String>,
    /// `null` only for a job whose manifest could not be read.
    pub target: Option<Target>,
    /// The delivered file's name; for `Job Failed`, the request's `fileName`.
    pub file_name: String,
    pub remote_path: Option<String>,
    pub remote_directory: Option<String>,
    pub bytes: Option<u64>,
    pub rows: Option<u64>,
    pub sha256: Option<String>,
    pub status_code: StatusCode,
    /// `{class}:{step}`, e.g. `permanent:fetch`.
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub start_timestamp: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end_timestamp: OffsetDateTime,
    pub staged_object: Option<StagedObject>,
    /// The operator's re-send this delivery was, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_id: Option<String>,
    /// `File Not Picked Up`: minutes since the file was put in place, and the target's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_sla_minutes: Option<u64>,
}

/// One event for the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub detail_type: DetailType,
    pub detail: EventDetail,
}

/// The folder part of a remote path (`/in/x.csv` → `/in`).
fn directory_of(remote_path: &str) -> Option<String> {
    remote_path.rsplit_once('/').map(|(dir, _)| if dir.is_empty() { "/".to_owned() } else { dir.to_owned() })
}

/// The `File Delivered` event of one file of a receipt.
fn file_delivered(
    receipt: &Receipt,
    records: &Records,
    file: &DeliveryRecord,
    bucket: &str,
    started: OffsetDateTime,
) -> DeliveryEvent {
    DeliveryEvent {
        detail_type: DetailType::FileDelivered,
        detail: EventDetail {
            job_id: receipt.job_id.clone(),
            event_id: receipt.event_id.clone(),
            target: Some(receipt.target.clone()),
            file_name: file.file.file_name.clone(),
            remote_path: Some(file.remote_path.clone()),
            remote_directory: directory_of(&file.remote_path),
            bytes: Some(file.file.stats.bytes),
            rows: Some(file.file.stats.rows),
            sha256: Some(file.file.stats.sha256.clone()),
            status_code: StatusCode::Completed,
            failure_code: None,
            failure_message: None,
            // A file put in place by an earlier run (this one wrote the receipt) ends before it.
            start_timestamp: started.min(file.updated_at),
            end_timestamp: file.updated_at,
            staged_object: Some(StagedObject {
                bucket: bucket.to_owned(),
                key: records.staged_file(&file.file.file_name),
            }),
            resend_id: records.resend().map(ToString::to_string),
            waiting_minutes: None,
            pickup_sla_minutes: None,
        },
    }
}

/// One `File Delivered` per file of a delivered job's receipt.
pub fn delivered(receipt: &Receipt, records: &Records, bucket: &str, started: OffsetDateTime) -> Vec<DeliveryEvent> {
    receipt.files.iter().map(|file| file_delivered(receipt, records, file, bucket, started)).collect()
}

/// The `Job Failed` of a job that will not be tried again.
pub fn job_failed(job_id: &JobId, manifest: Option<&Manifest>, err: &Error, started: OffsetDateTime) -> DeliveryEvent {
    DeliveryEvent {
        detail_type: DetailType::JobFailed,
        detail: EventDetail {
            job_id: job_id.clone(),
            event_id: manifest.and_then(|m| m.request.event_id.clone()),
            target: manifest.map(|m| m.target.clone()),
            file_name: manifest.map(|m| m.request.file_name.clone()).unwrap_or_default(),
            remote_path: None,
            remote_directory: None,
            bytes: None,
            rows: None,
            sha256: None,
            status_code: StatusCode::Failed,
            failure_code: Some(format!("{}:{}", err.class, err.step)),
            failure_message: Some(err.chain().chars().take(MAX_FAILURE_MESSAGE).collect()),
            start_timestamp: started,
            end_timestamp: OffsetDateTime::now_utc(),
            staged_object: None,
            resend_id: None,
            waiting_minutes: None,
            pickup_sla_minutes: None,
        },
    }
}

/// A delivered file the watchdog found still in SAP's folder past the target's limit.
pub fn not_picked_up(
    receipt: &Receipt,
    records: &Records,
    file: &DeliveryRecord,
    bucket: &str,
    waiting: u64,
    sla: u64,
) -> DeliveryEvent {
    let mut event = file_delivered(receipt, records, file, bucket, receipt.delivered_at);
    event.detail_type = DetailType::FileNotPickedUp;
    event.detail.start_timestamp = receipt.received_at.unwrap_or(receipt.delivered_at);
    event.detail.waiting_minutes = Some(waiting);
    event.detail.pickup_sla_minutes = Some(sla);
    event
}

/// An event bus: EventBridge (`aws::events`), or one in memory for tests.
pub trait EventBus: Send + Sync {
    /// Puts `events` (at most `MAX_ENTRIES`) on the bus in one call; the entries it did not
    /// take, by index, with why. `Err` when the call itself failed (none was taken).
    fn put<'a>(&'a self, events: &'a [&'a DeliveryEvent]) -> BoxFuture<'a, Result<Vec<(usize, String)>>>;
}

/// What could not be published by the deadline: which events (by index), and the last reason.
#[derive(Debug)]
pub struct Unpublished {
    pub left: Vec<usize>,
    pub error: Error,
}

/// EventBridge's codes for an entry it could not take now but may later; any other code
/// (a malformed detail, a source not allowed) refuses the entry for good.
const RETRIABLE_ENTRY_CODES: [&str; 3] = ["InternalFailure", "ThrottlingException", "FailedEntryCount"];

fn entry_refused(why: String) -> Error {
    let retriable = RETRIABLE_ENTRY_CODES.iter().any(|code| why.starts_with(code));
    let class = if retriable { ErrorClass::Transient } else { ErrorClass::Permanent };
    Error::new(class, Step::Publish, format!("the bus refused an entry: {why}"))
}

/// The bus the worker publishes on, and the staging bucket its events name.
#[derive(Clone)]
pub struct Publisher {
    pub bus: Arc<dyn EventBus>,
    pub staging_bucket: String,
}

impl Publisher {
    /// Puts every event on the bus, in calls of at most `MAX_ENTRIES`; an entry refused for
    /// now (or in a call that failed) is tried again, within `deadline`; an entry the bus
    /// reported taken is not. (A call whose answer is lost is tried again whole, so a
    /// subscriber may, rarely, see an event twice: docs/events.md.)
    pub async fn publish(&self, events: &[DeliveryEvent], deadline: Instant) -> std::result::Result<(), Unpublished> {
        let mut pending: Vec<(usize, &DeliveryEvent)> = events.iter().enumerate().collect();
        let mut last = Error::transient(Step::Publish, "no attempt could start before the deadline");
        let mut delay = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            // A permanent failure (no such bus, no right to it) is not retried.
            if pending.is_empty() || Instant::now() >= deadline || !last.is_transient() {
                break;
            }
            let mut refused = Vec::new();
            for chunk in pending.chunks(MAX_ENTRIES) {
                let entries: Vec<&DeliveryEvent> = chunk.iter().map(|(_, event)| *event).collect();
                match tokio::time::timeout_at(deadline, self.bus.put(&entries)).await {
                    Ok(Ok(not_taken)) => {
                        for (index, why) in not_taken {
                            last = entry_refused(why);
                            refused.extend(chunk.get(index).copied());
                        }
                    }
                    Ok(Err(err)) => {
                        last = err;
                        refused.extend_from_slice(chunk);
                    }
                    Err(_) => {
                        last = Error::transient(Step::Publish, "the deadline came during PutEvents");
                        refused.extend_from_slice(chunk);
                    }
                }
            }
            pending = refused;
            if !pending.is_empty() && attempt < ATTEMPTS {
                tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
                delay *= 4;
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(Unpublished { left: pending.iter().map(|(index, _)| *index).collect(), error: last })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_directory_is_the_path_without_its_file_name() {
        assert_eq!(directory_of("/in/pf2/PLAN_PF.csv").as_deref(), Some("/in/pf2"));
        assert_eq!(directory_of("/PLAN_PF.csv").as_deref(), Some("/"));
        assert_eq!(directory_of("PLAN_PF.csv"), None);
    }

    fn one_event() -> DeliveryEvent {
        let err = Error::permanent(Step::Fetch, "Kinaxis answered 403");
        job_failed(&crate::job::job_id("e"), None, &err, OffsetDateTime::now_utc())
    }

    fn publisher(bus: &std::sync::Arc<crate::memory::MemoryBus>) -> Publisher {
        Publisher { bus: Arc::new(Arc::clone(bus)), staging_bucket: "b".into() }
    }

    #[tokio::test]
    async fn an_entry_refused_for_good_is_not_tried_again_and_one_refused_for_now_is() {
        let bus = crate::memory::MemoryBus::new();
        bus.refuse_entries_for_good(1);
        let left = publisher(&bus).publish(&[one_event()], Instant::now() + Duration::from_secs(10)).await;
        let left = left.expect_err("refused for good");
        assert_eq!((left.left, left.error.is_transient(), bus.calls()), (vec![0], false, 1));

        let bus = crate::memory::MemoryBus::new();
        bus.refuse_entries(1);
        let published = publisher(&bus).publish(&[one_event()], Instant::now() + Duration::from_secs(10)).await;
        assert!(published.is_ok(), "{published:?}");
        assert_eq!((bus.published().len(), bus.calls()), (1, 2));
    }

    #[test]
    fn only_internal_failures_and_throttling_are_retried_of_what_the_bus_refuses() {
        for why in ["InternalFailure: x", "ThrottlingException: slow down", "FailedEntryCount without entries"] {
            assert!(entry_refused(why.to_owned()).is_transient(), "{why}");
        }
        for why in ["MalformedDetail: bad json", "NotAuthorizedForSourceException: no", "InvalidArgument: x"] {
            assert!(!entry_refused(why.to_owned()).is_transient(), "{why}");
        }
    }

    #[test]
    fn detail_types_are_spelt_as_subscribers_match_them() {
        for kind in [DetailType::FileDelivered, DetailType::JobFailed, DetailType::FileNotPickedUp] {
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::Value::from(kind.as_str())));
        }
    }
}
