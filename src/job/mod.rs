//! The job contract: its id, its manifest, the S3 key layout, the records kept of it (the
//! exported and staged files, per-file deliveries, the lease, the latest delivered batch,
//! the receipt, the failure) and, in `profile`, what each target's files look like.

pub mod profile;
pub mod rules;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::csv_out::FileStats;
use crate::error::{ErrorClass, Step};
use crate::routing::Target;

pub use profile::{
    csv_file_name, ExistingFilePolicy, FileNameTemplate, Profile, Profiles, TriggerContent, TriggerFile,
};

/// A job's id: 32 lowercase or uppercase hex digits, made from the idempotency key by
/// `job_id` or parsed once from a manifest's key; every key of the job is built from it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// `Some` for 32 hex digits, the only ids `job_id` makes.
    pub fn parse(id: &str) -> Option<Self> {
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keys are built from `&str`: a `JobId` is one wherever a key is made.
impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<JobId> for String {
    fn eq(&self, other: &JobId) -> bool {
        *self == other.0
    }
}

/// The first 32 hex digits of SHA-256 of the idempotency key.
pub fn job_id(idempotency_key: &str) -> JobId {
    let mut id = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
    id.truncate(32);
    JobId(id)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where each object of a job lives in the staging bucket.
pub mod keys {
    pub const JOBS_PREFIX: &str = "jobs/";

    pub fn manifest(job_id: &str) -> String {
        format!("jobs/{job_id}.json")
    }
    pub fn staged_file(job_id: &str, file_name: &str) -> String {
        format!("staging/{job_id}/{file_name}")
    }
    /// Written last when staging completes: its presence means every CSV is staged.
    pub fn staged_index(job_id: &str) -> String {
        format!("staging/{job_id}/_staged.json")
    }
    pub fn receipt(job_id: &str) -> String {
        format!("receipts/{job_id}.json")
    }
    /// The latest failure, for readers of one record; every failure is also kept under
    /// `failure_history`.
    pub fn failure(job_id: &str) -> String {
        format!("failed/{job_id}.json")
    }
    /// Every failure of the job, one object each, named by when it happened: a listing in
    /// key order is the job's story.
    pub fn failure_history(job_id: &str) -> String {
        format!("failed/{job_id}/")
    }
    pub fn failure_at(job_id: &str, at: time::OffsetDateTime) -> String {
        // Nanoseconds, zero-padded: key order is time order even within one millisecond.
        let stamp = at.unix_timestamp_nanos().max(0);
        format!("failed/{job_id}/{stamp:020}-{:04x}.json", fastrand::u16(..))
    }
    /// What was sent of one file: the intent before the rename, the mark after it.
    pub fn delivery(job_id: &str, file_name: &str) -> String {
        format!("deliveries/{job_id}/{file_name}.json")
    }
    /// The folder of a job's delivery records (a re-send's are in `resends/` below it).
    pub fn deliveries(job_id: &str) -> String {
        format!("deliveries/{job_id}/")
    }
    /// Keeps a job to one runner at a time.
    pub fn lease(job_id: &str) -> String {
        format!("locks/{job_id}")
    }
    /// One SAP destination's claim: who writes the name now and the newest batch that
    /// claimed it, so an older one cannot roll SAP's plan back. Under `latest/`, the key of
    /// earlier versions' newest-delivered record, which keeps counting.
    pub fn destination(target: &str, file_name: &str) -> String {
        format!("latest/{target}/{file_name}.json")
    }

    /// The job id in a manifest key, `jobs/{jobId}.json`.
    pub fn job_id_of_manifest(key: &str) -> Option<super::JobId> {
        super::JobId::parse(key.strip_prefix(JOBS_PREFIX)?.strip_suffix(".json")?)
    }
}

/// Whose records a run reads and writes: the job's own, or those of one re-send of it,
/// kept beside the job's (`…/{jobId}/resends/{resendId}/…`) and never touching them. The
/// re-send id makes a repeated invocation of one re-send one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    job_id: JobId,
    resend: Option<ResendId>,
    /// A fresh export stages its own copy; otherwise a re-send sends the job's staged one.
    own_staging: bool,
}

impl Records {
    pub fn of_job(job_id: JobId) -> Self {
        Self { job_id, resend: None, own_staging: true }
    }

    pub fn of_resend(job_id: JobId, resend: ResendId, fresh_export: bool) -> Self {
        Self { job_id, resend: Some(resend), own_staging: fresh_export }
    }

    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    pub fn resend(&self) -> Option<&ResendId> {
        self.resend.as_ref()
    }

    /// Who writes into SAP's folder: the job id, or `{jobId}-{resendId}` for a re-send, so
    /// that each names and removes only its own temporaries.
    pub fn writer(&self) -> String {
        match &self.resend {
            Some(resend) => format!("{}-{resend}", self.job_id),
            None => self.job_id.to_string(),
        }
    }

    /// Where a re-send's failure goes: beside the job's history, never over the job's own
    /// latest failure.
    pub fn resend_failure(&self) -> Option<String> {
        self.resend.as_ref().map(|resend| format!("failed/{}/resends/{resend}.json", self.job_id))
    }

    fn folder(&self, own: bool) -> String {
        match &self.resend {
            Some(resend) if own => format!("{}/resends/{resend}", self.job_id),
            _ => self.job_id.to_string(),
        }
    }

    pub fn delivery(&self, file_name: &str) -> String {
        keys::delivery(&self.folder(true), file_name)
    }
    pub fn receipt(&self) -> String {
        keys::receipt(&self.folder(true))
    }
    pub fn staged_file(&self, file_name: &str) -> String {
        keys::staged_file(&self.folder(self.own_staging), file_name)
    }
    pub fn staged_index(&self) -> String {
        keys::staged_index(&self.folder(self.own_staging))
    }
}

/// A re-send's id: 1 to 64 letters, digits, `-` or `_` (an operator's tool makes one per
/// command; the Lambda request id serves a console test event without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResendId(String);

impl ResendId {
    pub fn parse(id: &str) -> Option<Self> {
        let valid =
            (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self(id.to_owned()))
    }
}

impl TryFrom<String> for ResendId {
    type Error = String;
    fn try_from(id: String) -> std::result::Result<Self, String> {
        Self::parse(&id).ok_or_else(|| format!("{id:?} is not 1 to 64 letters, digits, '-' or '_'"))
    }
}

impl From<ResendId> for String {
    fn from(id: ResendId) -> String {
        id.0
    }
}

impl std::fmt::Display for ResendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an operator asked of a re-run, and who and when: kept in its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rerun {
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(default)]
    pub fresh_export: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend: Option<ResendId>,
    #[serde(default)]
    pub allow_stale: bool,
}

/// One receive of the job that did not deliver, as its receipt lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EarlierFailure {
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_count: Option<u32>,
    pub class: ErrorClass,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedScope {
    pub name: String,
    #[serde(default = "public_scope")]
    pub scope: String,
}

pub fn public_scope() -> String {
    "Public".to_owned()
}

/// A Kinaxis table read by bulk export (docs/kinaxis-api.md, "Bulk export").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableRequest {
    pub namespace: String,
    pub name: String,
    /// The fields exported, in this order: the CSV's columns.
    pub fields: Vec<String>,
    /// A Kinaxis filter expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl TableRequest {
    /// `Namespace::Table`, Kinaxis' own notation.
    pub fn qualified_name(&self) -> String {
        format!("{}::{}", self.namespace, self.name)
    }
}

/// Where a job's rows come from: exactly one of a workbook's worksheets or a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource<'a> {
    Workbook(&'a NamedScope),
    Table(&'a TableRequest),
}

/// What Maestro asked for: the validated webhook body with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    pub event_id: Option<String>,
    pub file_name: String,
    /// Worksheet mode; the webhook accepts exactly one of `workbook` and `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workbook: Option<NamedScope>,
    /// Bulk-export mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableRequest>,
    /// The workbook's worksheets to export (never empty in worksheet mode).
    #[serde(default)]
    pub worksheets: Vec<String>,
    pub scenario: NamedScope,
    pub site_group: String,
    pub filter: Option<NamedScope>,
    pub variables: BTreeMap<String, String>,
}

impl JobRequest {
    /// The job's data source; `None` for a request naming both or neither (the webhook
    /// refuses those, so only a hand-written manifest has one).
    pub fn source(&self) -> Option<DataSource<'_>> {
        match (&self.workbook, &self.table) {
            (Some(workbook), None) => Some(DataSource::Workbook(workbook)),
            (None, Some(table)) => Some(DataSource::Table(table)),
            _ => None,
        }
    }
}

/// The validated request plus what the webhook decided. Written once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub job_id: JobId,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub target: Target,
    /// SHA-256 of the webhook body: tells a duplicate from a conflicting reuse of a key.
    pub content_sha256: String,
    #[serde(flatten)]
    pub request: JobRequest,
}

/// One delivered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedFile {
    pub worksheet: String,
    pub file_name: String,
    #[serde(flatten)]
    pub stats: FileStats,
}

/// `receipts/{jobId}.json`: the job is done, delivered or deliberately not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default)]
    pub file_name: String,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub received_at: Option<OffsetDateTime>,
    pub target: Target,
    /// Built from the per-file delivery records.
    pub files: Vec<DeliveryRecord>,
    pub rows: u64,
    pub bytes: u64,
    /// Attempts of the delivery step in the run that finished the job.
    pub attempts: u32,
    pub timings_ms: BTreeMap<String, u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
    /// Set when the job was not delivered on purpose (`STALE_BATCH=skip`), with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Per file, what a business user signs a batch off with.
    #[serde(default)]
    pub reconciliation: Vec<Reconciliation>,
    /// The receives before this one that failed, from the failure history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_failures: Vec<EarlierFailure>,
    /// What the operator asked, for a re-run from the console or the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<Rerun>,
}

impl Receipt {
    /// A receipt for `manifest`'s job with nothing delivered yet.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            job_id: manifest.job_id.clone(),
            event_id: manifest.request.event_id.clone(),
            file_name: manifest.request.file_name.clone(),
            received_at: Some(manifest.received_at),
            target: manifest.target.clone(),
            files: Vec::new(),
            rows: 0,
            bytes: 0,
            attempts: 0,
            timings_ms: BTreeMap::new(),
            delivered_at: OffsetDateTime::now_utc(),
            skipped: None,
            reconciliation: Vec::new(),
            earlier_failures: Vec::new(),
            rerun: None,
        }
    }
}

/// One file's figures side by side: what Kinaxis said, what was written, what SAP's server
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciliation {
    pub worksheet: String,
    pub file_name: String,
    pub remote_path: String,
    /// The worksheet's `TotalRowCount` as Kinaxis reported it.
    pub kinaxis_total_row_count: Option<u64>,
    pub rows_written: u64,
    pub bytes: u64,
    pub sha256: String,
    /// The size the server reported for the final file right after the rename.
    pub remote_size_after_rename: Option<u64>,
    pub encoding: String,
    pub profile: String,
    pub replaced_characters: u64,
    /// Rows written equal `TotalRowCount`, and the server's size equals the bytes written
    /// (where it was seen).
    pub matches: bool,
    /// Both comparisons could be made: `TotalRowCount` and the server's size were known.
    /// `matches` without it is only as strong as the figures that were there.
    #[serde(default)]
    pub verified: bool,
}

impl Reconciliation {
    pub fn of(record: &DeliveryRecord) -> Self {
        let stats = &record.file.stats;
        let rows_match = stats.kinaxis_total_row_count.is_none_or(|total| total == stats.rows);
        let size_matches = record.remote_size.is_none_or(|size| size == stats.bytes);
        Self {
            worksheet: record.file.worksheet.clone(),
            file_name: record.file.file_name.clone(),
            remote_path: record.remote_path.clone(),
            kinaxis_total_row_count: stats.kinaxis_total_row_count,
            rows_written: stats.rows,
            bytes: stats.bytes,
            sha256: stats.sha256.clone(),
            remote_size_after_rename: record.remote_size,
            encoding: stats.encoding.clone(),
            profile: stats.profile.clone(),
            replaced_characters: stats.replaced_characters,
            matches: rows_match && size_matches,
            verified: stats.kinaxis_total_row_count.is_some() && record.remote_size.is_some(),
        }
    }
}

/// Where a file's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// The complete temporary is on the server and about to be renamed. With the temporary
    /// and the final file both gone, it was renamed and SAP has taken it.
    Intent,
    /// The final file is (or was) on the server.
    Delivered,
    /// The temporary was removed on purpose: nothing of this attempt reached SAP.
    Abandoned,
    /// The temporary is being written while the export runs (written before it is
    /// created); nothing was renamed. A later attempt removes it, as an abandoned one;
    /// the record's figures are not yet the file's.
    Streaming,
}

/// `deliveries/{jobId}/{file}.json`: one file's delivery, written before and after the rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub state: DeliveryState,
    #[serde(flatten)]
    pub file: StagedFile,
    pub remote_path: String,
    /// The hidden name the file was written under before the rename.
    pub temp_name: String,
    /// The run (1, 2, …) that wrote this record.
    pub attempt: u32,
    /// `false` when the identical file was found already there.
    pub uploaded: bool,
    /// `true` when the delivery was concluded from the intent alone: temporary and final
    /// file both gone, so the rename happened and SAP took the file.
    #[serde(default)]
    pub taken_by_sap: bool,
    /// How a file already under the name was replaced, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Replaced>,
    /// The final file's size as the server reported it right after the rename (`None`
    /// when SAP had taken it by then, or the delivery was concluded without the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_size: Option<u64>,
    /// The trigger file, when the profile asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRecord>,
    /// The destination's generation this job claimed before the rename (see
    /// `DestinationRecord`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A trigger file of a delivery: named before the data file's rename; its temporary recorded
/// before its own rename (the intent), as the data file's is; marked written once it is on the
/// server, or settled as not written with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRecord {
    pub name: String,
    /// The trigger was put under its name for this delivery (or found there identical).
    pub written: bool,
    /// `false` when the identical trigger was found already there.
    #[serde(default)]
    pub uploaded: bool,
    /// The hidden name the trigger was uploaded under, recorded before its rename: while
    /// neither written nor settled, an intent a later attempt completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_name: Option<String>,
    /// Why no trigger was written and none will be (the data file was gone before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_written: Option<String>,
    /// A trigger of an earlier delivery stood under the name and was removed before this
    /// data file was put in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale_removed: bool,
}

impl TriggerRecord {
    pub fn new(name: String) -> Self {
        Self { name, written: false, uploaded: false, temp_name: None, not_written: None, stale_removed: false }
    }

    /// Nothing is left to do for the trigger.
    pub fn settled(&self) -> bool {
        self.written || self.not_written.is_some()
    }
}

/// `locks/{jobId}`: who runs the job, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `latest/{target}/{fileName}.json`: one SAP destination (a target and a file-name stem),
/// claimed by one job at a time before any rename. The first two fields are the newest batch
/// that ever claimed it (earlier versions wrote them for the newest delivered batch, so their
/// records keep counting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRecord {
    pub job_id: JobId,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The run writing to the destination now, from its order check to its latest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<DestinationHolder>,
    /// Counts the changes of writing job: a job that finds the generation it claimed under
    /// knows no other job wrote the name since.
    #[serde(default)]
    pub generation: u64,
    /// The job of this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<JobId>,
    /// The latest generations' writers and the names each put in place, oldest first (at
    /// most `DestinationRecord::HISTORY`): whether another job wrote a given name since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<DestinationWriter>,
}

impl DestinationRecord {
    /// Generations remembered: weeks of batches at three a day, longer than any retry.
    pub const HISTORY: usize = 64;
}

/// One generation of a destination: the job that claimed it and its files' names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationWriter {
    pub generation: u64,
    pub job_id: JobId,
    pub names: Vec<String>,
}

/// The run holding a destination, until its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationHolder {
    pub job_id: JobId,
    /// The run's name on the job's lease.
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Batch order: by `receivedAt`, the job id breaking a tie within one second.
pub fn batch_order(received_at: OffsetDateTime, job_id: &JobId) -> (OffsetDateTime, &str) {
    (received_at, job_id.as_str())
}

/// `failed/{jobId}.json`: why the job did not deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    pub job_id: JobId,
    pub class: ErrorClass,
    pub step: Step,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    /// No automatic retry follows: the job waits for an operator.
    #[serde(default, rename = "final")]
    pub final_failure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The queue's receive count; `None` for a re-run from the console or the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_count: Option<u32>,
}

/// A CSV written to local disk, ready to stage.
#[derive(Debug, Clone)]
pub struct ExportedFile {
    pub file: StagedFile,
    pub path: PathBuf,
}

/// How `RemoteFolder::replace` replaced the file that stood under the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replaced {
    /// In one step (`posix-rename@openssh.com`): a reader always saw one complete file.
    Atomically,
    /// The server lacks an atomic rename: removed, then renamed; for a moment there was none.
    RemovedFirst,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest() -> Manifest {
        Manifest {
            job_id: job_id("evt-1"),
            received_at: time::macros::datetime!(2026-11-24 06:00:07 UTC),
            target: Target::parse("PF2").unwrap(),
            content_sha256: sha256_hex(b"{}"),
            request: JobRequest {
                event_id: Some("evt-1".into()),
                file_name: "PlannedOrders-PF".into(),
                workbook: Some(NamedScope { name: "PlannedOrders Export".into(), scope: public_scope() }),
                table: None,
                worksheets: vec![],
                scenario: NamedScope { name: "Enterprise Data".into(), scope: public_scope() },
                site_group: "All Sites".into(),
                filter: None,
                variables: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn job_ids_are_32_hex_digits_and_stable_for_a_key() {
        let id = job_id("2026-11-24T06:00:00Z-planned-orders");
        assert_eq!(id.len(), 32);
        assert_eq!(id, job_id("2026-11-24T06:00:00Z-planned-orders"));
        assert_ne!(id, job_id("other"));
        assert_eq!(keys::job_id_of_manifest(&keys::manifest(&id)), Some(id.clone()));
        assert_eq!(keys::job_id_of_manifest("jobs/../x.json"), None);
    }

    #[test]
    fn file_names_carry_the_received_timestamp_and_a_cleaned_worksheet_name() {
        let m = manifest();
        let t = FileNameTemplate::default();
        assert_eq!(csv_file_name(&t, &m, "Planned Orders", false), "PlannedOrders-PF_20261124060007.csv");
        assert_eq!(
            csv_file_name(&t, &m, "Planned Orders/Ü", true),
            "PlannedOrders-PF_Planned_Orders___20261124060007.csv"
        );
    }

    #[test]
    fn a_manifest_of_either_source_round_trips_and_names_exactly_one() {
        let mut m = manifest();
        assert!(matches!(m.request.source(), Some(DataSource::Workbook(_))));
        m.request.workbook = None;
        m.request.table = Some(TableRequest {
            namespace: "Mfg".into(),
            name: "PlannedOrder".into(),
            fields: vec!["Order.Id".into(), "Quantity".into()],
            filter: Some("Quantity > 0".into()),
        });
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""table":{"namespace":"Mfg","name":"PlannedOrder","fields":["Order.Id","Quantity"]"#));
        assert!(!json.contains("\"workbook\""));
        let back = serde_json::from_str::<Manifest>(&json).unwrap();
        assert_eq!(back.request.source(), Some(DataSource::Table(m.request.table.as_ref().unwrap())));
        m.request.workbook = manifest().request.workbook;
        assert_eq!(m.request.source(), None);
    }

    #[test]
    fn a_csv_extension_in_the_file_name_is_not_doubled() {
        let mut m = manifest();
        m.request.file_name = "orders_wp.csv".into();
        let t = FileNameTemplate::default();
        assert_eq!(csv_file_name(&t, &m, "Planned Orders", false), "orders_wp_20261124060007.csv");
        assert_eq!(csv_file_name(&t, &m, "Sheet", true), "orders_wp_Sheet_20261124060007.csv");
        m.request.file_name = "Orders-PF.CSV".into();
        assert_eq!(csv_file_name(&t, &m, "x", false), "Orders-PF_20261124060007.csv");
    }

    #[test]
    fn a_file_reconciles_only_when_rows_match_total_row_count_and_the_server_holds_every_byte() {
        let stats = FileStats {
            rows: 10,
            bytes: 100,
            sha256: "ab".into(),
            kinaxis_total_row_count: Some(10),
            ..FileStats::default()
        };
        let mut record = DeliveryRecord {
            state: DeliveryState::Delivered,
            file: StagedFile { worksheet: "W".into(), file_name: "f.csv".into(), stats },
            remote_path: "/in/f.csv".into(),
            temp_name: String::new(),
            attempt: 1,
            uploaded: true,
            taken_by_sap: false,
            replaced: None,
            remote_size: Some(100),
            trigger: None,
            claim: None,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(Reconciliation::of(&record).matches && Reconciliation::of(&record).verified);
        record.remote_size = Some(99);
        assert!(!Reconciliation::of(&record).matches);
        record.remote_size = None;
        assert!(!Reconciliation::of(&record).verified, "no remote size seen: not verified");
        record.file.stats.kinaxis_total_row_count = Some(11);
        let line = Reconciliation::of(&record);
        assert!(!line.matches);
        assert_eq!((line.kinaxis_total_row_count, line.rows_written, line.encoding.as_str()), (Some(11), 10, "utf-8"));
    }

    #[test]
    fn a_manifest_round_trips_through_its_json_form() {
        let m = manifest();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"receivedAt\":\"2026-11-24T06:00:07Z\""));
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }
}
