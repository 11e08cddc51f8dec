//! One writer per SAP destination (a target and a file-name stem), in batch order: a claim in
//! the staging bucket, taken by conditional writes only, from the order check right before a
//! job's first rename through its last, so an older batch never reaches SAP after a newer one.
//!
//! Taking the claim and the order check are one conditional write: a job that finds a newer
//! batch in the record is refused; one that finds another job's run holding it waits for it
//! (or for its lease to run out). The claim is let go when the job's files are in place, or
//! it ends otherwise; the newest batch stays in the record for good.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{batch_order, keys, DestinationHolder, DestinationRecord, DestinationWriter, JobId, Manifest};
use crate::ports::{CreateOutcome, Guarded, ObjectStore};

/// How often a job waiting for another job's run to let go of the destination looks again.
pub const HOLDER_POLL: Duration = Duration::from_secs(2);

/// Why a job was refused: a newer batch claimed its destination first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub newer_job: JobId,
    pub newer_received_at: OffsetDateTime,
    /// The refusal, worded for the failure record or the skipped receipt.
    pub why: String,
}

/// What a job knows of its destination while it delivers.
pub struct Destination<'a, S> {
    store: &'a S,
    key: String,
    manifest: &'a Manifest,
    /// This run's name on the job's lease.
    owner: &'a str,
    /// When this run's lease runs out: its claim holds until then if it is never let go.
    until: OffsetDateTime,
    /// `false` under `STALE_BATCH=deliver`: an older batch is delivered, still one writer at
    /// a time.
    check_order: bool,
    /// Waiting for another run to let go stops here.
    deadline: Instant,
    poll: Duration,
    /// The names this job's files go under.
    names: Vec<String>,
    /// An operator's re-send (`DestinationRun::resend`).
    resend: bool,
    /// The generation this run claimed under, once it has.
    claimed: Mutex<Option<u64>>,
    refusal: Mutex<Option<Refusal>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The settings a destination is built from, all of them the run's.
pub struct DestinationRun<'a> {
    pub manifest: &'a Manifest,
    pub owner: &'a str,
    pub until: OffsetDateTime,
    pub check_order: bool,
    pub deadline: Instant,
    pub poll: Duration,
    /// The names the job's files go under.
    pub names: Vec<String>,
    /// An operator's re-send: it shares the job's id with the job's own writes and its
    /// other re-sends, which the claim's history cannot tell apart.
    pub resend: bool,
}

impl<'a, S: ObjectStore> Destination<'a, S> {
    pub fn new(store: &'a S, run: DestinationRun<'a>) -> Self {
        let manifest = run.manifest;
        let stem = crate::routing::file_name_stem(&manifest.request.file_name);
        Self {
            store,
            key: keys::destination(manifest.target.as_str(), stem),
            manifest,
            owner: run.owner,
            until: run.until,
            check_order: run.check_order,
            deadline: run.deadline,
            poll: run.poll,
            names: run.names,
            resend: run.resend,
            claimed: Mutex::new(None),
            refusal: Mutex::new(None),
        }
    }

    /// The job delivering to this destination.
    pub fn manifest(&self) -> &'a Manifest {
        self.manifest
    }

    /// Why this job was refused, when it was.
    pub fn refusal(&self) -> Option<Refusal> {
        lock(&self.refusal).clone()
    }

    fn mine(&self) -> (OffsetDateTime, &str) {
        batch_order(self.manifest.received_at, &self.manifest.job_id)
    }

    async fn read(&self) -> Result<Option<(DestinationRecord, String)>> {
        let Some(tagged) = self.store.get_tagged(&self.key).await.map_err(|e| e.at(Step::Deliver))? else {
            return Ok(None);
        };
        let record: DestinationRecord = serde_json::from_slice(&tagged.bytes).or_permanent(
            Step::Deliver,
            format!("{} is not a destination record: remove or repair it to deliver to this name again", self.key),
        )?;
        Ok(Some((record, tagged.etag)))
    }

    /// The newer batch that claimed the destination, read only: for a job to stop before its
    /// export. `None` when this job may go on (or orders are not checked).
    pub async fn newer_batch(&self) -> Result<Option<Refusal>> {
        if !self.check_order {
            return Ok(None);
        }
        let Some((record, _)) = self.read().await? else { return Ok(None) };
        Ok(self.newer_than_mine(&record))
    }

    fn newer_than_mine(&self, record: &DestinationRecord) -> Option<Refusal> {
        if !self.check_order || batch_order(record.received_at, &record.job_id) <= self.mine() {
            return None;
        }
        let manifest = self.manifest;
        let why = format!(
            "job {} (received {}) is older than job {} (received {}), which claimed {} {} first; not delivered, as \
             SAP would roll its plan back to it",
            manifest.job_id,
            manifest.received_at,
            record.job_id,
            record.received_at,
            manifest.target,
            manifest.request.file_name,
        );
        Some(Refusal { newer_job: record.job_id.clone(), newer_received_at: record.received_at, why })
    }

    fn refuse(&self, refusal: Refusal) -> Error {
        let err = Error::permanent(Step::Deliver, refusal.why.clone());
        *lock(&self.refusal) = Some(refusal);
        err
    }

    /// This run's claim as it would be written over `current`.
    fn claimed_over(&self, current: Option<&DestinationRecord>) -> DestinationRecord {
        let manifest = self.manifest;
        let holder = Some(DestinationHolder {
            job_id: manifest.job_id.clone(),
            owner: self.owner.to_owned(),
            until: self.until,
        });
        let writer =
            |generation| DestinationWriter { generation, job_id: manifest.job_id.clone(), names: self.names.clone() };
        let Some(current) = current else {
            return DestinationRecord {
                job_id: manifest.job_id.clone(),
                received_at: manifest.received_at,
                holder,
                generation: 1,
                writer: Some(manifest.job_id.clone()),
                history: vec![writer(1)],
            };
        };
        let mut next = current.clone();
        // The newest batch never moves back, not even under STALE_BATCH=deliver.
        if batch_order(current.received_at, &current.job_id) < self.mine() {
            next.job_id = manifest.job_id.clone();
            next.received_at = manifest.received_at;
        }
        if current.writer.as_ref() != Some(&manifest.job_id) {
            next.generation = current.generation + 1;
            next.writer = Some(manifest.job_id.clone());
            next.history.push(writer(next.generation));
            let excess = next.history.len().saturating_sub(DestinationRecord::HISTORY);
            next.history.drain(..excess);
        }
        next.holder = holder;
        next
    }

    /// Claims the destination for this run before a rename; the generation claimed under.
    /// Waits while another job's run holds it; refuses (permanent, naming both jobs) when a
    /// newer batch claimed it. Once claimed, later calls of this run answer at once.
    pub async fn claim(&self) -> Result<u64> {
        loop {
            if let Some(generation) = *lock(&self.claimed) {
                return Ok(generation);
            }
            if Instant::now() >= self.deadline {
                return Err(Error::transient(Step::Deliver, format!("no time left to claim {}", self.key)));
            }
            let current = self.read().await?;
            if let Some((record, _)) = &current {
                if let Some(held) = self.held_here(record) {
                    *lock(&self.claimed) = Some(held);
                    continue;
                }
                if let Some(refusal) = self.newer_than_mine(record) {
                    return Err(self.refuse(refusal));
                }
                if let Some(holder) = record.holder.as_ref().filter(|h| self.held_elsewhere(h)) {
                    self.wait_for(holder).await?;
                    continue;
                }
            }
            let next = self.claimed_over(current.as_ref().map(|(record, _)| record));
            let bytes = serde_json::to_vec(&next).or_permanent(Step::Deliver, "serialising the destination claim")?;
            let at_deliver = |e: Error| e.at(Step::Deliver);
            let written = match &current {
                None => {
                    self.store.create(&self.key, bytes, "application/json").await.map_err(at_deliver)?
                        == CreateOutcome::Created
                }
                Some((_, etag)) => {
                    self.store.replace(&self.key, bytes, "application/json", etag).await.map_err(at_deliver)?
                        == Guarded::Written
                }
            };
            if written {
                tracing::info!(destination = %self.key, generation = next.generation, "claimed the SAP destination");
                *lock(&self.claimed) = Some(next.generation);
            }
        }
    }

    /// This run's own claim, written by an earlier try whose answer was lost.
    fn held_here(&self, record: &DestinationRecord) -> Option<u64> {
        record.holder.as_ref().filter(|h| h.owner == self.owner).map(|_| record.generation)
    }

    /// Another job's run holds the claim and its lease has not run out. (A run of this same
    /// job is not: this run holds the job's lease, so that run's has run out.)
    fn held_elsewhere(&self, holder: &DestinationHolder) -> bool {
        holder.job_id != self.manifest.job_id && holder.until > OffsetDateTime::now_utc()
    }

    async fn wait_for(&self, holder: &DestinationHolder) -> Result<()> {
        if Instant::now() + self.poll > self.deadline {
            return Err(Error::transient(
                Step::Deliver,
                format!(
                    "{} is being written by job {} until {} at the latest; tried again later",
                    self.key, holder.job_id, holder.until
                ),
            ));
        }
        tracing::info!(destination = %self.key, holder = %holder.job_id, until = %holder.until, "waiting for another job to finish writing the SAP destination");
        tokio::time::sleep(self.poll).await;
        Ok(())
    }

    /// Whether no other job put a file under `name` since `generation` (this job's claim at
    /// its intent): only then does a file gone from the folder mean SAP took this job's.
    /// `false` when the record cannot tell (a claim from before this record kept names, or a
    /// history that no longer reaches back that far).
    /// Never for a re-send: the job's own writes and its other re-sends carry its id too.
    pub async fn unchanged_since(&self, generation: Option<u64>, name: &str) -> Result<bool> {
        let Some(generation) = generation.filter(|_| !self.resend) else { return Ok(false) };
        let Some((record, _)) = self.read().await? else { return Ok(false) };
        // A record younger than the claim (removed and begun again) cannot tell.
        if record.generation < generation {
            return Ok(false);
        }
        let later: Vec<&DestinationWriter> = record.history.iter().filter(|w| w.generation > generation).collect();
        let remembered = later.len() as u64 == record.generation - generation;
        let others_wrote = later.iter().any(|w| w.job_id != self.manifest.job_id && w.names.iter().any(|n| n == name));
        Ok(remembered && !others_wrote)
    }

    /// Lets go of the claim, if this job's runs hold it; `If-Match`, so a claim taken over
    /// since stays as it is. Best effort: a claim not let go runs out with the lease.
    pub async fn release(&self) {
        for _ in 0..3 {
            let current = match self.read().await {
                Ok(Some(current)) => current,
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = %err.chain(), "could not read the destination claim to let it go; it runs out with the lease");
                    return;
                }
            };
            let (mut record, etag) = current;
            // An earlier run of this job may have left it held: this run holds the job's
            // lease, so that run is over.
            if record.holder.as_ref().is_none_or(|h| h.job_id != self.manifest.job_id) {
                return;
            }
            record.holder = None;
            let Ok(bytes) = serde_json::to_vec(&record) else { return };
            match self.store.replace(&self.key, bytes, "application/json", &etag).await {
                Ok(Guarded::Written) => {
                    *lock(&self.claimed) = None;
                    return;
                }
                Ok(Guarded::Refused) => continue,
                Err(err) => {
                    tracing::warn!(error = %err.chain(), "could not let go of the destination claim; it runs out with the lease");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use std::sync::Arc;

    fn manifest(event: &str, seconds: i64) -> Manifest {
        let mut value = serde_json::json!({
            "jobId": crate::job::job_id(event),
            "target": "PF2", "contentSha256": "00", "eventId": event, "fileName": "Plan-PF",
            "workbook": {"name": "W", "scope": "Public"}, "worksheets": ["W"],
            "scenario": {"name": "S", "scope": "Public"}, "siteGroup": "All", "filter": null, "variables": {},
        });
        value["receivedAt"] = serde_json::json!(format!(
            "1970-01-01T{:02}:{:02}:{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ));
        serde_json::from_value(value).unwrap()
    }

    fn run<'a>(manifest: &'a Manifest, names: &[&str]) -> DestinationRun<'a> {
        DestinationRun {
            manifest,
            owner: manifest.job_id.as_str(),
            until: OffsetDateTime::now_utc() + time::Duration::minutes(15),
            check_order: true,
            deadline: Instant::now() + Duration::from_secs(5),
            poll: Duration::from_millis(10),
            names: names.iter().map(|n| n.to_string()).collect(),
            resend: false,
        }
    }

    async fn claim_and_release(store: &Arc<MemoryStore>, manifest: &Manifest, names: &[&str]) -> u64 {
        let destination = Destination::new(store, run(manifest, names));
        let generation = destination.claim().await.unwrap();
        destination.release().await;
        generation
    }

    #[tokio::test]
    async fn another_job_counts_as_a_writer_of_a_name_only_if_it_put_a_file_under_that_name() {
        let store = MemoryStore::new();
        let (a, b, c) = (manifest("a", 1), manifest("b", 2), manifest("c", 3));
        let claimed = claim_and_release(&store, &a, &["Plan-PF_1.csv"]).await;
        let a_destination = Destination::new(&store, run(&a, &["Plan-PF_1.csv"]));
        assert!(a_destination.unchanged_since(Some(claimed), "Plan-PF_1.csv").await.unwrap());
        claim_and_release(&store, &b, &["Plan-PF_2.csv"]).await;
        assert!(a_destination.unchanged_since(Some(claimed), "Plan-PF_1.csv").await.unwrap(), "another name");
        claim_and_release(&store, &c, &["Plan-PF_1.csv"]).await;
        assert!(!a_destination.unchanged_since(Some(claimed), "Plan-PF_1.csv").await.unwrap(), "the same name");
        assert!(!a_destination.unchanged_since(None, "Plan-PF_1.csv").await.unwrap(), "a record without a claim");
    }

    #[tokio::test]
    async fn a_history_that_no_longer_reaches_back_to_the_claim_cannot_tell() {
        let store = MemoryStore::new();
        let a = manifest("a", 0);
        let claimed = claim_and_release(&store, &a, &["Plan-PF_0.csv"]).await;
        for n in 1..=DestinationRecord::HISTORY as i64 + 1 {
            let other = manifest(&format!("job-{n}"), n);
            claim_and_release(&store, &other, &[&format!("Plan-PF_{n}.csv")]).await;
        }
        let a_destination = Destination::new(&store, run(&a, &["Plan-PF_0.csv"]));
        assert!(!a_destination.unchanged_since(Some(claimed), "Plan-PF_0.csv").await.unwrap());
        let record: DestinationRecord = serde_json::from_slice(&store.object(&a_destination.key).unwrap()).unwrap();
        assert_eq!(record.history.len(), DestinationRecord::HISTORY);
    }

    #[tokio::test]
    async fn a_destination_record_begun_again_after_the_claim_cannot_tell() {
        let store = MemoryStore::new();
        let (a, b, c) = (manifest("a", 2), manifest("b", 1), manifest("c", 3));
        claim_and_release(&store, &b, &["Plan-PF.csv"]).await;
        let claimed = claim_and_release(&store, &a, &["Plan-PF.csv"]).await;
        assert_eq!(claimed, 2);
        store.remove("latest/PF2/Plan-PF.json");
        claim_and_release(&store, &c, &["Plan-PF.csv"]).await;
        let a_destination = Destination::new(&store, run(&a, &["Plan-PF.csv"]));
        assert!(!a_destination.unchanged_since(Some(claimed), "Plan-PF.csv").await.unwrap());
    }

    #[tokio::test]
    async fn a_claim_refused_as_older_names_both_jobs_and_writes_nothing() {
        let store = MemoryStore::new();
        let (older, newer) = (manifest("older", 1), manifest("newer", 2));
        claim_and_release(&store, &newer, &["Plan-PF.csv"]).await;
        let before = store.object("latest/PF2/Plan-PF.json");
        let destination = Destination::new(&store, run(&older, &["Plan-PF.csv"]));
        let err = destination.claim().await.unwrap_err();
        assert!(err.message.contains(older.job_id.as_str()) && err.message.contains(newer.job_id.as_str()));
        assert_eq!(destination.refusal().map(|r| r.newer_job), Some(newer.job_id.clone()));
        assert_eq!(store.object("latest/PF2/Plan-PF.json"), before);
    }
}
