//! Every job's state, read from the records the functions keep in the staging bucket
//! (manifest, receipt, failure, lease), and one job's whole story.

use std::collections::BTreeSet;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{Result, ResultExt, Step};
use crate::job::{self, keys, FailureRecord, JobId, LeaseRecord, Manifest, Receipt};
use crate::ports::ObjectStore;

/// Records read at once: a listing of thousands of jobs is a few seconds, not minutes.
const READS_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// A receipt: every file is in SAP's folder.
    Delivered,
    /// A receipt saying why nothing was sent (`STALE_BATCH=skip`).
    Skipped,
    /// A failure no automatic retry follows, and no receipt.
    Failed,
    /// A transient failure the queue will try again.
    Retrying,
    /// A live lease: a worker runs it now.
    Running,
    /// Received lately, no outcome yet: the queue still has it.
    Pending,
    /// Staged long ago, never delivered nor failed: the message was lost.
    Stranded,
}

impl JobState {
    pub const ALL: [Self; 7] =
        [Self::Delivered, Self::Skipped, Self::Failed, Self::Retrying, Self::Running, Self::Pending, Self::Stranded];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Retrying => "retrying",
            Self::Running => "running",
            Self::Pending => "pending",
            Self::Stranded => "stranded",
        }
    }
}

/// One line of `maestro-relay jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub job_id: JobId,
    pub event_id: Option<String>,
    pub file_name: String,
    pub target: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub state: JobState,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub delivered: Vec<String>,
    pub attempts: Option<u32>,
    /// Class and step of the latest failure, as `permanent/fetch`.
    pub failure: Option<String>,
    pub failure_message: Option<String>,
}

/// The ids of the jobs with a record under `prefix` as `{prefix}{jobId}{suffix}`.
async fn ids_with(store: &impl ObjectStore, prefix: &str, suffix: &str) -> Result<BTreeSet<String>> {
    let listed = store.list(prefix).await?;
    Ok(listed
        .into_iter()
        .filter_map(|o| o.key.strip_prefix(prefix)?.strip_suffix(suffix).map(str::to_owned))
        .filter(|id| JobId::parse(id).is_some())
        .collect())
}

async fn json_of<T: serde::de::DeserializeOwned>(store: &impl ObjectStore, key: &str) -> Result<Option<T>> {
    let Some(bytes) = store.get(key).await? else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).or_permanent(Step::Manifest, format!("{key} is not what it should be"))
}

/// Every job received since `since` (all when `None`), newest first. A job with no outcome
/// is `pending` for `stranded_after` after it was received, `stranded` after that.
pub async fn job_rows(
    store: &impl ObjectStore,
    since: Option<OffsetDateTime>,
    now: OffsetDateTime,
    stranded_after: time::Duration,
) -> Result<Vec<JobRow>> {
    let manifests = store.list(keys::JOBS_PREFIX).await?;
    let receipts = ids_with(store, "receipts/", ".json").await?;
    let failures = ids_with(store, "failed/", ".json").await?;
    let leases = ids_with(store, "locks/", "").await?;
    let wanted = manifests.into_iter().filter(|o| since.is_none_or(|s| o.modified.is_none_or(|m| m >= s)));
    let facts = Facts { receipts: &receipts, failures: &failures, leases: &leases, now, stranded_after };
    let mut rows: Vec<JobRow> = stream::iter(wanted.filter_map(|o| keys::job_id_of_manifest(&o.key)))
        .map(|id| {
            let facts = &facts;
            async move {
                // One record that does not parse (a hand-made manifest) must not hide the others.
                facts.row(store, id.clone()).await.or_else(|err| {
                    if err.is_transient() {
                        return Err(err);
                    }
                    tracing::warn!(jobId = %id, error = %err.chain(), "a job left out: `maestro-relay show` it");
                    Ok(None)
                })
            }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_filter_map(|row| async move { Ok(row) })
        .try_collect()
        .await?;
    rows.retain(|row| since.is_none_or(|s| row.received_at >= s));
    rows.sort_by(|a, b| b.received_at.cmp(&a.received_at).then_with(|| a.job_id.cmp(&b.job_id)));
    Ok(rows)
}

/// What the listings say of every job, for reading one job's records.
struct Facts<'a> {
    receipts: &'a BTreeSet<String>,
    failures: &'a BTreeSet<String>,
    leases: &'a BTreeSet<String>,
    now: OffsetDateTime,
    stranded_after: time::Duration,
}

impl Facts<'_> {
    /// The latest failure into the row: `failed`, or `retrying` while the queue may still
    /// try again (a transient failure not recorded final, younger than the longest wait
    /// between receives); a record that does not parse shows as such.
    async fn failure_of(&self, store: &impl ObjectStore, id: &JobId, row: &mut JobRow) -> Result<()> {
        row.state = JobState::Failed;
        let failure = match json_of::<FailureRecord>(store, &keys::failure(id)).await {
            Ok(Some(failure)) => failure,
            Ok(None) => return Ok(()),
            Err(err) if err.is_transient() => return Err(err),
            Err(err) => {
                row.failure = Some("unreadable".to_owned());
                row.failure_message = Some(err.chain());
                return Ok(());
            }
        };
        row.failure = Some(format!("{}/{}", failure.class, failure.step));
        row.failure_message = Some(failure.message);
        let recent = self.now - failure.failed_at <= self.stranded_after + time::Duration::HOUR;
        if !failure.final_failure && failure.class == crate::ErrorClass::Transient && recent {
            row.state = JobState::Retrying;
        }
        Ok(())
    }

    /// The job's row; `None` when its manifest went between the listing and the read.
    async fn row(&self, store: &impl ObjectStore, id: JobId) -> Result<Option<JobRow>> {
        let Some(manifest) = json_of::<Manifest>(store, &keys::manifest(&id)).await? else { return Ok(None) };
        let mut row = JobRow {
            job_id: id.clone(),
            event_id: manifest.request.event_id.clone(),
            file_name: manifest.request.file_name.clone(),
            target: manifest.target.to_string(),
            received_at: manifest.received_at,
            state: JobState::Pending,
            rows: None,
            bytes: None,
            delivered: Vec::new(),
            attempts: None,
            failure: None,
            failure_message: None,
        };
        if self.failures.contains(id.as_str()) {
            self.failure_of(store, &id, &mut row).await?;
        }
        if self.receipts.contains(id.as_str()) {
            if let Some(receipt) = json_of::<Receipt>(store, &keys::receipt(&id)).await? {
                row.state = if receipt.skipped.is_some() { JobState::Skipped } else { JobState::Delivered };
                row.rows = Some(receipt.rows);
                row.bytes = Some(receipt.bytes);
                row.delivered = receipt.files.iter().map(|f| f.file.file_name.clone()).collect();
                row.attempts = Some(receipt.attempts);
            }
            return Ok(Some(row));
        }
        if self.leases.contains(id.as_str()) {
            let lease = json_of::<LeaseRecord>(store, &keys::lease(&id)).await.ok().flatten();
            if lease.is_some_and(|l| l.expires_at > self.now) {
                row.state = JobState::Running;
                return Ok(Some(row));
            }
        }
        if row.state == JobState::Pending && self.now - row.received_at > self.stranded_after {
            row.state = JobState::Stranded;
        }
        Ok(Some(row))
    }
}

/// The job a text names: a job id, or the `webhook-id` / `eventId` it was made from
/// (`jobId` is the first 32 hex digits of SHA-256 of it), or an `eventId` recorded in a
/// manifest (when the sender gave a `webhook-id` too). An `eventId` of several jobs (the
/// sender sent one batch under several ids) is an error naming them.
pub async fn find_job(store: &impl ObjectStore, text: &str) -> Result<Option<JobId>> {
    let candidates = JobId::parse(&text.to_ascii_lowercase()).into_iter().chain([job::job_id(text)]);
    for id in candidates {
        if store.exists(&keys::manifest(&id)).await? {
            return Ok(Some(id));
        }
    }
    let listed = store.list(keys::JOBS_PREFIX).await?;
    let ids = listed.iter().filter_map(|o| keys::job_id_of_manifest(&o.key));
    let found: Vec<Option<JobId>> = stream::iter(ids)
        .map(|id| async move {
            let manifest = json_of::<Manifest>(store, &keys::manifest(&id)).await.ok().flatten();
            Ok::<_, crate::Error>(manifest.filter(|m| m.request.event_id.as_deref() == Some(text)).map(|_| id))
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut found: Vec<JobId> = found.into_iter().flatten().collect();
    found.sort();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => {
            let ids: Vec<&str> = found.iter().map(JobId::as_str).collect();
            Err(crate::Error::permanent(
                Step::Manifest,
                format!("eventId {text:?} names {} jobs ({}): say which job id", found.len(), ids.join(", ")),
            ))
        }
    }
}

/// Everything the bucket keeps of one job, each record as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Story {
    pub job_id: JobId,
    pub manifest: Option<Value>,
    pub staged: Option<Value>,
    /// Every delivery record, a re-send's included, by key.
    pub deliveries: Vec<(String, Value)>,
    /// The receipt, then each re-send's, by key.
    pub receipts: Vec<(String, Value)>,
    /// Every failure, oldest first.
    pub failures: Vec<Value>,
    pub lease: Option<Value>,
}

async fn records_under(store: &impl ObjectStore, prefix: &str) -> Result<Vec<(String, Value)>> {
    let mut records = Vec::new();
    for object in store.list(prefix).await? {
        if let Some(value) = json_of::<Value>(store, &object.key).await? {
            records.push((object.key, value));
        }
    }
    Ok(records)
}

pub async fn story(store: &impl ObjectStore, job_id: &JobId) -> Result<Story> {
    let mut receipts: Vec<(String, Value)> = Vec::new();
    if let Some(receipt) = json_of::<Value>(store, &keys::receipt(job_id)).await? {
        receipts.push((keys::receipt(job_id), receipt));
    }
    receipts.extend(records_under(store, &format!("receipts/{job_id}/")).await?);
    Ok(Story {
        job_id: job_id.clone(),
        manifest: json_of(store, &keys::manifest(job_id)).await?,
        staged: json_of(store, &keys::staged_index(job_id)).await?,
        deliveries: records_under(store, &keys::deliveries(job_id)).await?,
        receipts,
        failures: records_under(store, &keys::failure_history(job_id)).await?.into_iter().map(|(_, v)| v).collect(),
        lease: json_of(store, &keys::lease(job_id)).await.ok().flatten(),
    })
}

/// The Logs Insights query that shows the job's lines in both functions' log groups.
pub fn logs_query(job_id: &JobId) -> String {
    format!(
        "fields @timestamp, @log, level, message, outcome, target, step, class, error\n| filter jobId = \"{job_id}\" \
         or span.jobId = \"{job_id}\"\n| sort @timestamp asc"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use std::sync::Arc;

    fn manifest(event: &str, received_at: OffsetDateTime) -> Manifest {
        let mut m = crate::job::tests::manifest();
        m.job_id = job::job_id(event);
        m.request.event_id = Some(event.into());
        m.received_at = received_at;
        m
    }

    fn put(store: &Arc<MemoryStore>, key: &str, value: &impl Serialize) {
        store.insert(key, serde_json::to_vec(value).unwrap());
    }

    #[tokio::test]
    async fn each_job_gets_the_state_its_records_say_newest_first() {
        let store = MemoryStore::new();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let minutes = |n| now - time::Duration::minutes(n);
        let jobs: Vec<Manifest> = ["delivered", "failed", "running", "pending", "stranded"]
            .iter()
            .enumerate()
            .map(|(i, e)| manifest(e, minutes(10 + 60 * i as i64)))
            .collect();
        for m in &jobs {
            put(&store, &keys::manifest(&m.job_id), m);
        }
        let mut receipt = Receipt::of(&jobs[0]);
        receipt.rows = 42;
        put(&store, &keys::receipt(&jobs[0].job_id), &receipt);
        // A failure of the delivered job's first receive stays beside its receipt.
        put(&store, &keys::failure(&jobs[0].job_id), &json_failure(&jobs[0].job_id));
        put(&store, &keys::failure(&jobs[1].job_id), &json_failure(&jobs[1].job_id));
        let lease = LeaseRecord { owner: "w".into(), acquired_at: now, expires_at: now + time::Duration::minutes(5) };
        put(&store, &keys::lease(&jobs[2].job_id), &lease);
        // The pending one: 190 minutes old, inside a 200-minute allowance; the last is older.
        let rows = job_rows(&store, None, now, time::Duration::minutes(200)).await.unwrap();
        let states: Vec<JobState> = rows.iter().map(|r| r.state).collect();
        use JobState::*;
        assert_eq!(states, [Delivered, Failed, Running, Pending, Stranded]);
        assert_eq!(rows[0].rows, Some(42));
        assert_eq!(rows[1].failure.as_deref(), Some("permanent/fetch"));
        let recent = job_rows(&store, Some(minutes(100)), now, time::Duration::minutes(200)).await.unwrap();
        assert_eq!(recent.len(), 2, "received in the last 100 minutes: {recent:?}");
    }

    #[tokio::test]
    async fn an_unreadable_manifest_is_left_out_and_an_unreadable_failure_shows_as_such() {
        let store = MemoryStore::new();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let good = manifest("good", now);
        put(&store, &keys::manifest(&good.job_id), &good);
        store.insert(&keys::failure(&good.job_id), b"{\"class\": ".to_vec());
        let hand_made = job::job_id("hand-made");
        store.insert(&keys::manifest(&hand_made), b"{\"jobId\": 7}".to_vec());
        let rows = job_rows(&store, None, now, time::Duration::hours(1)).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].state, rows[0].failure.as_deref()), (JobState::Failed, Some("unreadable")));
    }

    fn json_failure(job_id: &JobId) -> Value {
        serde_json::json!({"jobId": job_id, "class": "permanent", "step": "fetch", "message": "no such workbook",
                           "failedAt": "2026-12-02T10:00:00Z"})
    }

    #[tokio::test]
    async fn a_job_is_found_by_its_id_its_webhook_id_or_its_event_id() {
        let store = MemoryStore::new();
        let mut m = manifest("evt-7", OffsetDateTime::now_utc());
        // Made from a webhook-id; the eventId is only in the manifest.
        m.job_id = job::job_id("msg_abc");
        put(&store, &keys::manifest(&m.job_id), &m);
        for text in [m.job_id.as_str(), &m.job_id.to_ascii_uppercase(), "msg_abc", "evt-7"] {
            assert_eq!(find_job(&store, text).await.unwrap(), Some(m.job_id.clone()), "{text}");
        }
        assert_eq!(find_job(&store, "nothing").await.unwrap(), None);
    }
}
