//! The SAP pickup watchdog: SAP's inbound job moves a file it has read out of the folder,
//! so a delivered file still lying there past its target's limit means SAP is not reading.
//! A scheduled invocation reads the receipts of the lookback window, stats each file due
//! for a look (one SFTP session per target, never touching a file), and counts, logs and
//! publishes what is late (`FilesNotPickedUp`, `File Not Picked Up`); a receipt whose files
//! are all gone (or replaced by a newer delivery) is recorded done and not looked at again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

use super::{JobQueue, Worker};
use crate::error::{Error, Result, Step};
use crate::events::{self, DeliveryEvent};
use crate::job::{DeliveryRecord, JobId, Receipt, Records, ResendId};
use crate::ports::{FileDrop, ObjectStore, RemoteFolder, WorkbookSource};
use crate::routing::Target;
use crate::secrets::SecretSource;
use crate::telemetry::{self, Metric, MetricScope};

/// The scheduled invocation: `{"pickupCheck": {"scheduledTime": "…"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PickupCheck {
    /// The schedule's slot (`<aws.scheduler.scheduled-time>`), for the log only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
}

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PickupReport {
    /// Files looked at on their server.
    pub checked: usize,
    /// Of those, gone: SAP took them.
    pub picked_up: usize,
    /// Of those, still there past their target's limit.
    pub not_picked_up: Vec<LateFile>,
    /// Delivered too recently to be due.
    pub not_due: usize,
    /// Due but not looked at (no session, the deadline, a moved folder): looked at next time.
    pub unchecked: usize,
    #[serde(skip)]
    unchecked_by_target: BTreeMap<Target, usize>,
}

/// A delivered file SAP has not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LateFile {
    pub target: Target,
    pub remote_path: String,
    pub job_id: JobId,
    pub waiting_minutes: u64,
}

/// `pickups/…` beside `receipts/…`: what the watchdog concluded of one receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PickupRecord {
    /// Every file gone or replaced since: never looked at again.
    done: bool,
    /// Files already published as not picked up (published once; counted every check).
    #[serde(default)]
    reported: Vec<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    checked_at: Option<OffsetDateTime>,
}

/// A receipt of the window not yet done.
struct Candidate {
    receipt_key: String,
    receipt: Receipt,
    records: Records,
    record: PickupRecord,
    /// What each file turned out to be, by index in `receipt.files`.
    found: Vec<Found>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Not looked at (not due, no session, the deadline).
    Open,
    Gone,
    /// A newer delivery put a file under the same path.
    Replaced,
    Late,
}

/// The receipt's key under `pickups/`.
fn record_key(receipt_key: &str) -> Option<String> {
    receipt_key.strip_prefix("receipts/").map(|rest| format!("pickups/{rest}"))
}

/// Whose receipt a key is: `receipts/{jobId}.json`, or a re-send's
/// `receipts/{jobId}/resends/{id}.json`.
fn receipt_owner(receipt_key: &str) -> Option<(JobId, Option<ResendId>)> {
    let rest = receipt_key.strip_prefix("receipts/")?.strip_suffix(".json")?;
    match rest.split_once("/resends/") {
        None => Some((JobId::parse(rest)?, None)),
        Some((job, resend)) => Some((JobId::parse(job)?, Some(ResendId::parse(resend)?))),
    }
}

/// The records a receipt's files were sent from: a re-send that exported afresh staged its
/// own copy, which its events name.
fn records_of(owner: (JobId, Option<ResendId>), receipt: &Receipt) -> Records {
    match owner {
        (job, None) => Records::of_job(job),
        (job, Some(resend)) => {
            Records::of_resend(job, resend, receipt.rerun.as_ref().is_some_and(|rerun| rerun.fresh_export))
        }
    }
}

fn minutes(duration: time::Duration) -> u64 {
    duration.whole_minutes().max(0) as u64
}

impl<S, K, W, D, Q> Worker<S, K, W, D, Q>
where
    S: ObjectStore,
    K: SecretSource + 'static,
    W: WorkbookSource,
    D: FileDrop,
    Q: JobQueue,
{
    /// One check of every watched target, within `deadline` less the margin.
    pub async fn check_pickups(&self, check: &PickupCheck, deadline: Instant) -> Result<PickupReport> {
        let span = tracing::info_span!("pickup_check", scheduledTime = check.scheduled_time.as_deref().unwrap_or(""));
        self.check_pickups_now(deadline).instrument(span).await
    }

    async fn check_pickups_now(&self, deadline: Instant) -> Result<PickupReport> {
        let work_deadline = deadline.checked_sub(self.settings.deadline_margin).unwrap_or_else(Instant::now);
        let now = OffsetDateTime::now_utc();
        let mut report = PickupReport::default();
        if self.settings.pickup.sla.values().all(Duration::is_zero) {
            tracing::info!("pickup check: no target is watched (PICKUP_SLA_MINUTES=0)");
            return Ok(report);
        }
        let mut candidates = tokio::time::timeout_at(work_deadline, self.pickup_candidates(now))
            .await
            .map_err(|_| Error::transient(Step::Pickup, "the deadline came while reading the receipts"))??;
        mark_replaced(&mut candidates);
        for (target, sla) in self.settings.pickup.sla.iter().filter(|(_, sla)| !sla.is_zero()) {
            self.check_target(target, *sla, now, &mut candidates, &mut report, work_deadline).await;
        }
        let late = self.late_events(&mut candidates, &mut report, now);
        let events: Vec<DeliveryEvent> = late.iter().map(|(_, _, event)| event.clone()).collect();
        // Marked reported only once published, so an event the bus did not take goes out next time.
        let left = self.publish(&events, None, work_deadline + self.settings.deadline_margin / 2).await;
        let published: Vec<_> =
            late.into_iter().enumerate().filter(|(i, _)| !left.contains(i)).map(|(_, l)| l).collect();
        self.record_pickups(&candidates, &published, now).await;
        self.emit_pickup_metrics(&report);
        tracing::info!(
            checked = report.checked,
            picked_up = report.picked_up,
            not_picked_up = report.not_picked_up.len(),
            not_due = report.not_due,
            unchecked = report.unchecked,
            "pickup check summary"
        );
        Ok(report)
    }

    /// The receipts written within the lookback window that are not done, oldest first.
    async fn pickup_candidates(&self, now: OffsetDateTime) -> Result<Vec<Candidate>> {
        let since = now - time::Duration::try_from(self.settings.pickup.lookback).unwrap_or(time::Duration::DAY);
        let listed = self.store.list("receipts/").await.map_err(|e| e.at(Step::Pickup))?;
        let mut candidates = Vec::new();
        for object in listed.iter().filter(|o| o.modified.is_none_or(|m| m >= since)) {
            let (Some(owner), Some(record_key)) = (receipt_owner(&object.key), record_key(&object.key)) else {
                continue;
            };
            let record = match self.store.get(&record_key).await.map_err(|e| e.at(Step::Pickup))? {
                Some(bytes) => serde_json::from_slice::<PickupRecord>(&bytes).unwrap_or_default(),
                None => PickupRecord::default(),
            };
            if record.done {
                continue;
            }
            let Some(bytes) = self.store.get(&object.key).await.map_err(|e| e.at(Step::Pickup))? else { continue };
            let receipt = match serde_json::from_slice::<Receipt>(&bytes) {
                Ok(receipt) if receipt.skipped.is_none() => receipt,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(key = %object.key, error = %err, "pickup check: an unreadable receipt is left out");
                    continue;
                }
            };
            let found = vec![Found::Open; receipt.files.len()];
            let records = records_of(owner, &receipt);
            candidates.push(Candidate { receipt_key: object.key.clone(), receipt, records, record, found });
        }
        candidates.sort_by_key(|c| c.receipt.delivered_at);
        Ok(candidates)
    }

    /// Stats the target's due files on one session; a file gone is picked up, one there is
    /// late. Nothing is looked at without a session or after the deadline.
    async fn check_target(
        &self,
        target: &Target,
        sla: Duration,
        now: OffsetDateTime,
        candidates: &mut [Candidate],
        report: &mut PickupReport,
        deadline: Instant,
    ) {
        let sla = time::Duration::try_from(sla).unwrap_or(time::Duration::HOUR);
        let mut due = Vec::new();
        for (c, candidate) in candidates.iter_mut().enumerate().filter(|(_, c)| &c.receipt.target == target) {
            for (i, file) in candidate.receipt.files.iter().enumerate() {
                if candidate.found[i] != Found::Open {
                    continue;
                }
                if file.taken_by_sap {
                    candidate.found[i] = Found::Gone;
                } else if now - file.updated_at < sla {
                    report.not_due += 1;
                } else {
                    due.push((c, i));
                }
            }
        }
        if due.is_empty() {
            return;
        }
        if let Some(mut folder) = self.open_pickup_folder(target, deadline).await {
            self.stat_due(target, &mut folder, &due, candidates, report, deadline).await;
        }
        let unchecked = due.iter().filter(|(c, i)| candidates[*c].found[*i] == Found::Open).count();
        report.unchecked += unchecked;
        report.unchecked_by_target.insert(target.clone(), unchecked);
    }

    /// Each due file's size on the server: none is picked up, one is late.
    async fn stat_due(
        &self,
        target: &Target,
        folder: &mut D::Folder,
        due: &[(usize, usize)],
        candidates: &mut [Candidate],
        report: &mut PickupReport,
        deadline: Instant,
    ) {
        for &(c, i) in due {
            let file: &DeliveryRecord = &candidates[c].receipt.files[i];
            if folder.path_of(&file.file.file_name) != file.remote_path {
                tracing::warn!(remote_path = %file.remote_path, now_at = %folder.path_of(&file.file.file_name), "pickup check: the target's folder moved since the delivery; this file is not looked at");
                continue;
            }
            match tokio::time::timeout_at(deadline, folder.size(&file.file.file_name)).await {
                Ok(Ok(None)) => {
                    report.checked += 1;
                    report.picked_up += 1;
                    candidates[c].found[i] = Found::Gone;
                }
                Ok(Ok(Some(_))) => {
                    report.checked += 1;
                    candidates[c].found[i] = Found::Late;
                }
                Ok(Err(err)) => {
                    tracing::warn!(remote_path = %file.remote_path, error = %err.chain(), "pickup check: could not stat the file");
                }
                Err(_) => {
                    tracing::warn!(target = %target, "pickup check: the deadline came; the rest is looked at next time");
                    return;
                }
            }
        }
    }

    async fn open_pickup_folder(&self, target: &Target, deadline: Instant) -> Option<D::Folder> {
        match tokio::time::timeout_at(deadline, self.open_target(target, deadline)).await {
            Ok(Ok(folder)) => Some(folder),
            Ok(Err(err)) => {
                tracing::warn!(target = %target, error = %err.chain(), "pickup check: could not open the SFTP folder; its files are looked at next time");
                None
            }
            Err(_) => {
                tracing::warn!(target = %target, "pickup check: the deadline came while opening the SFTP folder");
                None
            }
        }
    }

    /// Each late file logged and reported; its event once, the first time it is found late.
    fn late_events(
        &self,
        candidates: &mut [Candidate],
        report: &mut PickupReport,
        now: OffsetDateTime,
    ) -> Vec<(usize, String, DeliveryEvent)> {
        let bucket = self.events.as_ref().map(|p| p.staging_bucket.as_str()).unwrap_or_default();
        let mut late = Vec::new();
        for (c, candidate) in candidates.iter().enumerate() {
            for (_, file) in
                candidate.receipt.files.iter().enumerate().filter(|(i, _)| candidate.found[*i] == Found::Late)
            {
                let waiting = minutes(now - file.updated_at);
                let sla = self.settings.pickup.sla.get(&candidate.receipt.target).map_or(0, |d| d.as_secs() / 60);
                tracing::warn!(
                    target = %candidate.receipt.target,
                    remote_path = %file.remote_path,
                    jobId = %candidate.receipt.job_id,
                    waiting_minutes = waiting,
                    pickup_sla_minutes = sla,
                    "delivered file not picked up by SAP"
                );
                report.not_picked_up.push(LateFile {
                    target: candidate.receipt.target.clone(),
                    remote_path: file.remote_path.clone(),
                    job_id: candidate.receipt.job_id.clone(),
                    waiting_minutes: waiting,
                });
                if !candidate.record.reported.contains(&file.file.file_name) {
                    let event =
                        events::not_picked_up(&candidate.receipt, &candidate.records, file, bucket, waiting, sla);
                    late.push((c, file.file.file_name.clone(), event));
                }
            }
        }
        late
    }

    /// The receipts' records: done when every file is gone or replaced; the late files whose
    /// event went out, so it goes out once.
    async fn record_pickups(
        &self,
        candidates: &[Candidate],
        reported: &[(usize, String, DeliveryEvent)],
        now: OffsetDateTime,
    ) {
        for (c, candidate) in candidates.iter().enumerate() {
            let done = candidate.found.iter().all(|f| matches!(f, Found::Gone | Found::Replaced));
            let mut record = candidate.record.clone();
            let before = record.reported.len();
            record.reported.extend(reported.iter().filter(|(rc, _, _)| *rc == c).map(|(_, name, _)| name.clone()));
            if !done && record.reported.len() == before {
                continue;
            }
            record.done = done;
            record.checked_at = Some(now);
            let Some(key) = record_key(&candidate.receipt_key) else { continue };
            let written = match serde_json::to_vec_pretty(&record) {
                Ok(bytes) => self.store.put(&key, bytes, "application/json").await,
                Err(err) => Err(Error::permanent(Step::Pickup, "serialising a pickup record").caused_by(err)),
            };
            if let Err(err) = written {
                tracing::warn!(key, error = %err.chain(), "pickup check: could not write the pickup record; the receipt is looked at again");
            }
        }
    }

    /// `FilesNotPickedUp` per watched target, 0 included: the alarm sees the watchdog run;
    /// `FilesUnchecked` for the due files it could not look at (no session, the deadline).
    fn emit_pickup_metrics(&self, report: &PickupReport) {
        for (target, _) in self.settings.pickup.sla.iter().filter(|(_, sla)| !sla.is_zero()) {
            let late = report.not_picked_up.iter().filter(|f| &f.target == target).count();
            let unchecked = report.unchecked_by_target.get(target).copied().unwrap_or(0);
            let scope =
                MetricScope { stack: &self.settings.stack_name, function: "worker", target: Some(target.as_str()) };
            let metrics =
                [("FilesNotPickedUp", Metric::Count(late as f64)), ("FilesUnchecked", Metric::Count(unchecked as f64))];
            telemetry::emit(&telemetry::emf_record(scope, &metrics, &[("check", json!("pickup"))]));
        }
    }
}

/// A file an older receipt names at a path a newer delivery wrote since is not that
/// receipt's to watch: what lies there now is the newer file.
fn mark_replaced(candidates: &mut [Candidate]) {
    let mut newest: BTreeMap<(Target, String), OffsetDateTime> = BTreeMap::new();
    for candidate in candidates.iter() {
        for file in &candidate.receipt.files {
            let at =
                newest.entry((candidate.receipt.target.clone(), file.remote_path.clone())).or_insert(file.updated_at);
            *at = (*at).max(file.updated_at);
        }
    }
    for candidate in candidates.iter_mut() {
        for (i, file) in candidate.receipt.files.iter().enumerate() {
            if newest
                .get(&(candidate.receipt.target.clone(), file.remote_path.clone()))
                .is_some_and(|at| *at > file.updated_at)
            {
                candidate.found[i] = Found::Replaced;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_key_names_its_job_or_its_resend_and_its_pickup_record() {
        let job = "0123456789abcdef0123456789abcdef";
        let owner = receipt_owner(&format!("receipts/{job}.json")).map(|(j, r)| (j.to_string(), r.is_some()));
        assert_eq!(owner, Some((job.to_owned(), false)));
        let resend = receipt_owner(&format!("receipts/{job}/resends/r-1.json"));
        assert_eq!(resend.and_then(|(_, r)| r.map(|r| r.to_string())).as_deref(), Some("r-1"));
        assert_eq!(record_key(&format!("receipts/{job}.json")), Some(format!("pickups/{job}.json")));
        assert_eq!(receipt_owner("receipts/not-a-job.json"), None);
        assert_eq!(receipt_owner(&format!("receipts/{job}.txt")), None);
    }
}
