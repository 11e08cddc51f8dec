//! The dead-letter queue triaged: each message's jobs and reason, and what to do with it —
//! delivered since → delete; transient → back to the jobs queue; permanent → leave it, with
//! the reason. Nothing changes unless asked (`apply`).

use serde::Serialize;
use std::time::Duration;

use crate::error::Result;
use crate::job::{keys, FailureRecord, JobId};
use crate::ports::{DeadLetter, DeadLetters, ObjectStore};
use crate::worker::event;
use crate::ErrorClass;

/// How long a message read for triage stays hidden from other readers.
const HOLD: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriageAction {
    /// Every job it names has a receipt: nothing is left to do.
    Delete,
    /// A transient failure (or the queue gave up on a job another run held): run it again.
    SendBack,
    /// A permanent failure: an operator must fix the cause first (`maestro-relay show`).
    Leave,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Triage {
    pub message_id: String,
    pub job_ids: Vec<JobId>,
    pub reason: Option<String>,
    pub action: TriageAction,
    pub why: String,
    /// Whether the action was carried out (`--apply`).
    pub applied: bool,
}

/// What to do with one message, read from the records of the jobs it names.
pub async fn triage(store: &impl ObjectStore, letter: &DeadLetter) -> Result<Triage> {
    let mut out = Triage {
        message_id: letter.message_id.clone(),
        job_ids: Vec::new(),
        reason: letter.reason.clone(),
        action: TriageAction::Leave,
        why: String::new(),
        applied: false,
    };
    let job_keys = match event::job_keys(&letter.body) {
        Ok(job_keys) => job_keys,
        Err(err) => {
            out.why = format!("it names no job ({}): look at its body", err.message);
            return Ok(out);
        }
    };
    out.job_ids = job_keys.iter().filter_map(|k| keys::job_id_of_manifest(k)).collect();
    if out.job_ids.is_empty() {
        out.action = TriageAction::Delete;
        out.why = "it names no job (an S3 test event): nothing to run".to_owned();
        return Ok(out);
    }
    let mut delivered = 0;
    for id in &out.job_ids {
        if store.exists(&keys::receipt(id)).await? {
            delivered += 1;
            continue;
        }
        let latest = store.get(&keys::failure(id)).await?;
        let failure = latest.and_then(|bytes| serde_json::from_slice::<FailureRecord>(&bytes).ok());
        if let Some(f) = failure.filter(|f| f.class == ErrorClass::Permanent) {
            out.why = format!(
                "job {id} failed permanently at {}: {}; fix the cause, then `maestro-relay rerun {id}`",
                f.step, f.message
            );
            return Ok(out);
        }
    }
    if delivered == out.job_ids.len() {
        out.action = TriageAction::Delete;
        out.why = "delivered since: every job it names has a receipt".to_owned();
    } else {
        out.action = TriageAction::SendBack;
        out.why = "the failure was transient: the job is run again from the jobs queue".to_owned();
    }
    Ok(out)
}

/// Receives in a row that bring no message not seen yet before the queue counts as read:
/// SQS answers from a sample of its hosts, so one empty answer does not mean empty.
const EMPTY_RECEIVES: usize = 3;

/// Every message of the dead-letter queue, each handed to `each` once; every message read
/// is made visible again at the end but those `each` answers `true` for (dealt with).
async fn read_all<Q: DeadLetters>(queue: &Q, mut each: impl AsyncFnMut(&DeadLetter) -> bool) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    let mut empty = 0;
    let read = async {
        while empty < EMPTY_RECEIVES {
            let letters = queue.receive(HOLD).await?;
            empty += 1;
            for letter in letters {
                if !seen.insert(letter.message_id.clone()) {
                    held.push(letter.receipt_handle);
                    continue;
                }
                empty = 0;
                if !each(&letter).await {
                    held.push(letter.receipt_handle);
                }
            }
        }
        Ok::<_, crate::Error>(())
    }
    .await;
    for handle in &held {
        if let Err(err) = queue.release(handle).await {
            tracing::warn!(error = %err.chain(), "a dead-letter message stays hidden until its hold ends");
        }
    }
    read
}

/// Every message of the dead-letter queue triaged, and with `apply` dealt with. A message
/// whose action fails is reported with the error and left on the queue; the others go on.
/// What was done stands beside a failure to read the queue further (the second part).
pub async fn work(queue: &impl DeadLetters, store: &impl ObjectStore, apply: bool) -> (Vec<Triage>, Result<()>) {
    let mut triaged = Vec::new();
    let read = read_all(queue, async |letter: &DeadLetter| {
        let mut one = match triage(store, letter).await {
            Ok(one) => one,
            Err(err) => Triage {
                message_id: letter.message_id.clone(),
                job_ids: Vec::new(),
                reason: letter.reason.clone(),
                action: TriageAction::Leave,
                why: format!("its job's records could not be read: {}", err.chain()),
                applied: false,
            },
        };
        if apply && one.action != TriageAction::Leave {
            match apply_one(queue, letter, one.action).await {
                Ok(()) => one.applied = true,
                Err(err) => one.why = format!("{}; not done: {}", one.why, err.chain()),
            }
        }
        let done = one.applied;
        triaged.push(one);
        done
    })
    .await;
    (triaged, read)
}

/// A send-back goes before the delete: if the delete then fails, the job is on both queues,
/// and its lease and receipt make the second run a no-op; the other order could lose it.
async fn apply_one(queue: &impl DeadLetters, letter: &DeadLetter, action: TriageAction) -> Result<()> {
    if action == TriageAction::SendBack {
        queue.send_back(&fresh_checks(&letter.body)).await?;
    }
    queue.delete(&letter.receipt_handle).await
}

/// The reasons of the dead-letter messages naming `job_id`; every message read is made
/// visible again at the end.
pub async fn of_job(queue: &impl DeadLetters, job_id: &JobId) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    read_all(queue, async |letter: &DeadLetter| {
        let names_it = event::job_keys(&letter.body)
            .is_ok_and(|ks| ks.iter().any(|k| keys::job_id_of_manifest(k).as_ref() == Some(job_id)));
        if names_it {
            let reason = letter.reason.clone().unwrap_or_else(|| "(no FailureReason: the queue's own redrive)".into());
            reasons.push(format!("{}: {reason}", letter.message_id));
        }
        false
    })
    .await?;
    Ok(reasons)
}

/// The body sent back starts its lease checks again: the earlier holder is long gone.
fn fresh_checks(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut value) => {
            if let Some(object) = value.as_object_mut() {
                object.remove("leaseChecks");
            }
            value.to_string()
        }
        Err(_) => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn letter(job_id: &JobId) -> DeadLetter {
        let body = format!(
            r#"{{"Records":[{{"s3":{{"bucket":{{"name":"b"}},"object":{{"key":"jobs%2F{job_id}.json"}}}}}}],"leaseChecks":4}}"#
        );
        DeadLetter { message_id: format!("m-{job_id}"), receipt_handle: "h".into(), body, reason: Some("why".into()) }
    }

    #[tokio::test]
    async fn delivered_since_is_deleted_transient_sent_back_and_permanent_left_with_its_reason() {
        let store = MemoryStore::new();
        let ids: Vec<JobId> = ["a", "b", "c"].iter().map(|e| crate::job::job_id(e)).collect();
        store.insert(&keys::receipt(&ids[0]), b"{}".to_vec());
        let failure = |id: &JobId, class: &str| {
            serde_json::to_vec(&serde_json::json!({"jobId": id, "class": class, "step": "fetch",
                "message": "no such workbook", "failedAt": "2026-12-02T10:00:00Z"}))
            .unwrap()
        };
        store.insert(&keys::failure(&ids[1]), failure(&ids[1], "transient"));
        store.insert(&keys::failure(&ids[2]), failure(&ids[2], "permanent"));
        let actions: Vec<TriageAction> = {
            let mut out = Vec::new();
            for id in &ids {
                out.push(triage(&store, &letter(id)).await.unwrap().action);
            }
            out
        };
        assert_eq!(actions, [TriageAction::Delete, TriageAction::SendBack, TriageAction::Leave]);
        let left = triage(&store, &letter(&ids[2])).await.unwrap();
        assert!(left.why.contains("no such workbook") && left.why.contains("rerun"), "{}", left.why);
        let junk = DeadLetter { body: "not json".into(), ..letter(&ids[0]) };
        assert_eq!(triage(&store, &junk).await.unwrap().action, TriageAction::Leave);
    }

    #[test]
    fn a_body_sent_back_starts_its_lease_checks_again() {
        let id = crate::job::job_id("a");
        let body = fresh_checks(&letter(&id).body);
        assert_eq!(event::lease_checks(&body), 0);
        assert_eq!(event::job_keys(&body).unwrap(), [keys::manifest(&id)]);
    }
}
