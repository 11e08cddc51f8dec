//! The scheduled start (the fact sheet's "Start On Schedule"): what EventBridge Scheduler
//! sends, the settings it runs under, its slot's job id, and the catch-up's look at the last
//! delivery. The request itself goes through the webhook's own checks (`Webhook::start_on_schedule`).

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{checked_request, Answer, Webhook};
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{self, keys, DestinationRecord, Manifest, Receipt};
use crate::ports::ObjectStore;
use crate::secrets::SecretSource;

/// `SCHEDULE_MODE`: `off` (the default: a scheduled start is refused), `always` (Maestro
/// cannot call webhooks) or `catch-up` (only when the slot's webhook was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleMode {
    Off,
    Always,
    CatchUp,
}

impl FromStr for ScheduleMode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "always" => Ok(Self::Always),
            "catch-up" => Ok(Self::CatchUp),
            _ => Err("expected off, always or catch-up".to_owned()),
        }
    }
}

/// What a scheduled start runs under, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// `Always` or `CatchUp` (`Off` is no settings at all).
    pub mode: ScheduleMode,
    /// The webhook body every slot asks for (`SCHEDULE_REQUEST`): in configuration, not in
    /// the event, so whoever may invoke the function picks a slot, never a request.
    pub request: String,
    /// How far back the schedule's previous slot lies (`SCHEDULE_CATCH_UP_WINDOW_MINUTES`).
    pub catch_up_window: Duration,
}

/// The event's key that tells a scheduled start from an API Gateway event, which always
/// wraps its body: no caller of the HTTP API can send one.
pub const EVENT_KEY: &str = "scheduledStart";

/// The schedule's Input: `{"scheduledStart": {"scheduledTime": "<aws.scheduler.scheduled-time>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduledStart {
    #[serde(with = "time::serde::rfc3339")]
    pub scheduled_time: OffsetDateTime,
}

/// The scheduled start an event carries; `None` for any other event.
pub fn scheduled_start(event: &Value) -> Option<Result<ScheduledStart>> {
    let start = event.get(EVENT_KEY)?;
    Some(serde_json::from_value(start.clone()).or_permanent(
        Step::Webhook,
        format!("{EVENT_KEY} must be {{\"scheduledTime\": \"<aws.scheduler.scheduled-time>\"}} (RFC 3339)"),
    ))
}

/// The slot's idempotency key: every invocation for one slot (Scheduler's retries, a
/// repeated delivery) is one job, whatever the clock says when it runs. Its separators are
/// control characters, which no webhook key can hold (a `webhook-id` is visible ASCII, an
/// `eventId` has no control characters, a body's key is hex): no sender can take a slot's
/// job id first.
pub fn idempotency_key(file_name: &str, slot: OffsetDateTime) -> String {
    let slot = slot.to_offset(time::UtcOffset::UTC);
    let slot = slot.format(&Rfc3339).unwrap_or_else(|_| slot.unix_timestamp().to_string());
    format!("schedule\u{1f}{file_name}\u{1f}{slot}")
}

/// Why a catch-up stages nothing: a batch of the destination received after the previous
/// slot was delivered, or is being delivered now; `None` when none was, so the job runs.
///
/// Reads the destination's record (`latest/{target}/{stem}.json`: the newest batch that
/// claimed it) and, when that batch is recent, its receipt. The batch's `receivedAt` and not
/// the delivery time is compared: the previous catch-up's own job is received at its slot
/// (not after it) but delivered after it, and must not stand for this slot's batch.
pub async fn recent_delivery<S: ObjectStore>(
    store: &S,
    manifest: &Manifest,
    previous_slot: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Option<String>> {
    let stem = crate::routing::file_name_stem(&manifest.request.file_name);
    let key = keys::destination(manifest.target.as_str(), stem);
    let Some(bytes) = store.get(&key).await.map_err(|e| e.at(Step::Webhook))? else {
        return Ok(None);
    };
    let record: DestinationRecord = serde_json::from_slice(&bytes)
        .or_permanent(Step::Webhook, format!("{key} is not a destination record; repair or remove it"))?;
    if record.received_at <= previous_slot {
        return Ok(None);
    }
    let batch = format!("job {} (received {})", record.job_id, record.received_at);
    let receipt_key = keys::receipt(record.job_id.as_str());
    if let Some(bytes) = store.get(&receipt_key).await.map_err(|e| e.at(Step::Webhook))? {
        let receipt: Receipt = serde_json::from_slice(&bytes)
            .or_permanent(Step::Webhook, format!("{receipt_key} is not a receipt; repair or remove it"))?;
        if receipt.skipped.is_none() {
            return Ok(Some(format!(
                "{batch}, after the previous slot {previous_slot}, was delivered at {}",
                receipt.delivered_at
            )));
        }
        return Ok(None);
    }
    // Claimed and not let go: its files are going to SAP now.
    match record.holder {
        Some(holder) if holder.job_id == record.job_id && holder.until > now => Ok(Some(format!(
            "{batch}, after the previous slot {previous_slot}, is being delivered (its claim holds until {})",
            holder.until
        ))),
        _ => Ok(None),
    }
}

impl<S: ObjectStore, K: SecretSource> Webhook<S, K> {
    /// The job for `start`'s slot, staged as a webhook's is: `{"jobId", "status"}` with
    /// `accepted`, `duplicate` (the slot's job is already there) or `skipped` (a catch-up
    /// with nothing to catch up). A refusal or a store failure is the invocation's error,
    /// logged here.
    pub async fn start_on_schedule(&self, start: &ScheduledStart, now: OffsetDateTime) -> Result<Value> {
        let outcome = self.scheduled(start, now).await;
        if let Err(err) = &outcome {
            tracing::error!(slot = %start.scheduled_time, error = %err.chain(), "scheduled start failed");
        }
        outcome
    }

    async fn scheduled(&self, start: &ScheduledStart, now: OffsetDateTime) -> Result<Value> {
        let Some(schedule) = &self.settings.schedule else {
            return Err(Error::permanent(
                Step::Webhook,
                "a scheduled start arrived but SCHEDULE_MODE is off: nothing is started (a schedule left behind, or \
                 an invocation by hand)",
            ));
        };
        let slot = start.scheduled_time.replace_nanosecond(0).unwrap_or(start.scheduled_time);
        let body = schedule.request.as_bytes();
        let (request, target) = checked_request(&self.settings, body).map_err(refusal)?;
        let manifest = Manifest {
            job_id: job::job_id(&idempotency_key(&request.file_name, slot)),
            received_at: slot,
            target,
            content_sha256: job::sha256_hex(body),
            request,
        };
        if schedule.mode == ScheduleMode::CatchUp {
            let previous_slot = slot
                .checked_sub(time::Duration::try_from(schedule.catch_up_window).unwrap_or(time::Duration::WEEK))
                .ok_or_else(|| {
                    Error::permanent(
                        Step::Webhook,
                        format!("the slot {slot} less SCHEDULE_CATCH_UP_WINDOW_MINUTES is out of range"),
                    )
                })?;
            if let Some(why) = recent_delivery(&self.store, &manifest, previous_slot, now).await? {
                tracing::info!(
                    jobId = %manifest.job_id,
                    target = %manifest.target,
                    fileName = %manifest.request.file_name,
                    slot = %slot,
                    why,
                    "scheduled catch-up found a recent delivery; no job"
                );
                return Ok(json!({"jobId": manifest.job_id, "status": "skipped", "reason": why}));
            }
        }
        let manifest = self.budgeted(manifest, now).await.map_err(refusal)?;
        let answer = self.stage(manifest).await;
        if answer.is_problem() {
            return Err(refusal(answer));
        }
        tracing::info!(
            jobId = answer.body["jobId"].as_str().unwrap_or(""),
            mode = ?schedule.mode,
            slot = %slot,
            outcome = answer.body["status"].as_str().unwrap_or(""),
            "scheduled start staged"
        );
        Ok(answer.body)
    }
}

/// A refusal of the scheduled request as the error the invocation ends with: a store that
/// did not answer is transient (Lambda and Scheduler try again, and the slot's job id keeps
/// that one job); anything the request or configuration decides is permanent.
fn refusal(answer: Answer) -> Error {
    let status = answer.status.as_u16();
    let detail = answer.body["detail"].as_str().unwrap_or("");
    let what = match answer.body["field"].as_str() {
        Some(field) => format!("the scheduled request (SCHEDULE_REQUEST) is refused ({status}, {field}): {detail}"),
        None => format!("the scheduled request (SCHEDULE_REQUEST) is refused ({status}): {detail}"),
    };
    if answer.status.is_server_error() {
        Error::transient(Step::Webhook, what)
    } else {
        Error::permanent(Step::Webhook, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scheduler_event_is_told_from_any_other_and_its_time_must_be_rfc_3339() {
        let start = scheduled_start(&json!({"scheduledStart": {"scheduledTime": "2026-12-07T06:30:00Z"}}));
        assert_eq!(start.and_then(|s| s.ok()).map(|s| s.scheduled_time.unix_timestamp()), Some(1_796_625_000));
        assert!(scheduled_start(&json!({"version": "2.0", "body": "{}"})).is_none());
        for bad in
            [json!({"scheduledTime": "tomorrow"}), json!({}), json!({"scheduledTime": "2026-12-07T06:30:00Z", "x": 1})]
        {
            let err = scheduled_start(&json!({ "scheduledStart": bad })).and_then(|s| s.err());
            assert!(err.is_some_and(|e| !e.is_transient() && e.chain().contains("scheduledTime")), "{bad}");
        }
    }

    #[test]
    fn one_slot_is_one_key_whatever_offset_it_is_written_in() {
        let utc = OffsetDateTime::parse("2026-12-07T06:30:00Z", &Rfc3339).unwrap();
        let berlin = OffsetDateTime::parse("2026-12-07T07:30:00+01:00", &Rfc3339).unwrap();
        assert_eq!(idempotency_key("Plan-PF", utc), idempotency_key("Plan-PF", berlin));
        assert_eq!(idempotency_key("Plan-PF", utc), "schedule\u{1f}Plan-PF\u{1f}2026-12-07T06:30:00Z");
        assert_ne!(idempotency_key("Plan-PF", utc), idempotency_key("Plan-PF", utc + Duration::from_secs(60)));
    }

    fn manifest(at: OffsetDateTime) -> Manifest {
        serde_json::from_value(json!({
            "jobId": job::job_id("slot"), "receivedAt": at.format(&Rfc3339).unwrap(),
            "target": "PF2", "contentSha256": "00", "eventId": null, "fileName": "Plan-PF.csv",
            "workbook": {"name": "W", "scope": "Public"}, "worksheets": ["W"],
            "scenario": {"name": "S", "scope": "Public"}, "siteGroup": "All", "filter": null, "variables": {},
        }))
        .unwrap()
    }

    /// The destination of `Plan-PF.csv` last claimed by `batch`, received at `received`,
    /// its claim held until `until` (`None`: let go).
    async fn claimed(store: &impl ObjectStore, batch: &Manifest, until: Option<OffsetDateTime>) {
        let holder = until.map(|until| crate::job::DestinationHolder {
            job_id: batch.job_id.clone(),
            owner: "run".into(),
            until,
        });
        let record = DestinationRecord {
            job_id: batch.job_id.clone(),
            received_at: batch.received_at,
            holder,
            generation: 1,
            writer: Some(batch.job_id.clone()),
            history: Vec::new(),
        };
        let key = keys::destination("PF2", "Plan-PF");
        store.put(&key, serde_json::to_vec(&record).unwrap(), "application/json").await.unwrap();
    }

    #[tokio::test]
    async fn a_catch_up_counts_a_recent_batch_only_once_delivered_or_while_its_claim_holds() {
        let store = crate::memory::MemoryStore::new();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let previous_slot = now - Duration::from_secs(86_400);
        let slot = manifest(now);
        let mut webhook_batch = manifest(now - Duration::from_secs(3600));
        webhook_batch.job_id = job::job_id("webhook");
        assert_eq!(recent_delivery(&store, &slot, previous_slot, now).await.unwrap(), None, "never delivered");

        claimed(&store, &webhook_batch, Some(now + Duration::from_secs(600))).await;
        let why = recent_delivery(&store, &slot, previous_slot, now).await.unwrap();
        assert!(why.is_some_and(|w| w.contains("is being delivered")));
        claimed(&store, &webhook_batch, Some(now - Duration::from_secs(1))).await;
        assert_eq!(recent_delivery(&store, &slot, previous_slot, now).await.unwrap(), None, "a claim run out");

        let mut receipt = Receipt::of(&webhook_batch);
        receipt.skipped = Some("older".into());
        let key = keys::receipt(webhook_batch.job_id.as_str());
        store.put(&key, serde_json::to_vec(&receipt).unwrap(), "application/json").await.unwrap();
        assert_eq!(recent_delivery(&store, &slot, previous_slot, now).await.unwrap(), None, "skipped is not delivered");
        receipt.skipped = None;
        store.put(&key, serde_json::to_vec(&receipt).unwrap(), "application/json").await.unwrap();
        assert!(recent_delivery(&store, &slot, previous_slot, now)
            .await
            .unwrap()
            .is_some_and(|w| w.contains("was delivered")));
        // The same batch received at the previous slot itself (the last catch-up's own job) is not recent.
        webhook_batch.received_at = previous_slot;
        claimed(&store, &webhook_batch, None).await;
        assert_eq!(recent_delivery(&store, &slot, previous_slot, now).await.unwrap(), None);
    }

    #[test]
    fn the_modes_parse_and_anything_else_is_refused() {
        assert_eq!("catch-up".parse(), Ok(ScheduleMode::CatchUp));
        assert_eq!("always".parse(), Ok(ScheduleMode::Always));
        assert_eq!("off".parse(), Ok(ScheduleMode::Off));
        assert!("catchup".parse::<ScheduleMode>().is_err());
    }
}
