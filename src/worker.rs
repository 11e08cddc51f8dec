//! The worker's job lifecycle: receipt? → fetch → CSV → stage → deliver → receipt, with a
//! failure record for every job that does not deliver; and the event dispatch (SQS batch or
//! a direct `{"jobKey": …}` from the console).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::error::{Error, ErrorClass, Result, Step};
use crate::export::{ExportedFile, Exporter};
use crate::job::{keys, DeliveredFile, FailureRecord, Manifest, Receipt, StagedFile};
use crate::kinaxis::KinaxisClient;
use crate::ports::{ObjectStore, SecretSource};
use crate::secrets::{CachedSecrets, KinaxisCredentials, SftpCredentials};
use crate::sftp::{self, Upload};
use crate::telemetry::{self, Metric, MetricScope};

/// How a job was started: a redelivered SQS message of a job that already failed
/// permanently fails again at once; a console re-run always tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Queue,
    Console,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Delivered(Receipt),
    AlreadyDelivered,
}

pub struct Worker<S, K> {
    store: S,
    secrets: CachedSecrets<K>,
    config: WorkerConfig,
}

impl<S: ObjectStore, K: SecretSource> Worker<S, K> {
    pub fn new(store: S, secrets: CachedSecrets<K>, config: WorkerConfig) -> Self {
        Self { store, secrets, config }
    }

    /// Retries must end this long before the function's own deadline.
    pub fn retry_deadline(&self, remaining: Duration) -> Instant {
        Instant::now() + remaining.saturating_sub(self.config.deadline_margin)
    }

    /// The Lambda entry: an SQS batch answers its failed items (`ReportBatchItemFailures`);
    /// a direct `{"jobKey": "jobs/….json"}` answers the outcome or fails the invocation.
    pub async fn handle_event(&self, event: &Value, deadline: Instant) -> Result<Value> {
        if let Some(records) = event.get("Records").and_then(Value::as_array) {
            let mut failures = Vec::new();
            for record in records {
                let message_id = record.get("messageId").and_then(Value::as_str).unwrap_or_default();
                let body = record.get("body").and_then(Value::as_str).unwrap_or_default();
                if let Err(err) = self.handle_message(body, deadline).await {
                    tracing::error!(messageId = message_id, error = %err.chain(), "message failed; SQS will redeliver it or move it to the DLQ");
                    failures.push(json!({"itemIdentifier": message_id}));
                }
            }
            return Ok(json!({"batchItemFailures": failures}));
        }
        if let Some(job_key) = event.get("jobKey").and_then(Value::as_str) {
            let outcome = self.run_job(job_key, deadline, Trigger::Console).await?;
            return Ok(match outcome {
                JobOutcome::Delivered(receipt) => json!({"status": "delivered", "receipt": receipt}),
                JobOutcome::AlreadyDelivered => json!({"status": "already-delivered"}),
            });
        }
        Err(Error::permanent(
            Step::Manifest,
            "the event is neither an SQS batch nor {\"jobKey\": \"jobs/<jobId>.json\"}",
        ))
    }

    /// One SQS message: an S3 ObjectCreated notification for `jobs/…` (S3's test event is
    /// acknowledged and ignored).
    async fn handle_message(&self, body: &str, deadline: Instant) -> Result<()> {
        let notification: Value = serde_json::from_str(body)
            .map_err(|e| Error::permanent(Step::Manifest, "the SQS message is not JSON").caused_by(e))?;
        if notification.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            tracing::info!("S3 test event acknowledged");
            return Ok(());
        }
        let records = notification
            .get("Records")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::permanent(Step::Manifest, "the SQS message is not an S3 event notification"))?;
        for record in records {
            let encoded = record
                .pointer("/s3/object/key")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::permanent(Step::Manifest, "an S3 notification record has no object key"))?;
            let key = &decode_s3_event_key(encoded);
            if keys::job_id_of_manifest(key).is_none() {
                tracing::warn!(key, "notification for an object that is not a job manifest; ignored");
                continue;
            }
            self.run_job(key, deadline, Trigger::Queue).await?;
        }
        Ok(())
    }

    /// Runs one job to its end state: delivered with a receipt, or failed with a record.
    pub async fn run_job(&self, job_key: &str, deadline: Instant, trigger: Trigger) -> Result<JobOutcome> {
        let job_id = keys::job_id_of_manifest(job_key)
            .ok_or_else(|| Error::permanent(Step::Manifest, format!("{job_key:?} is not jobs/<32 hex digits>.json")))?
            .to_owned();
        let span = tracing::info_span!("job", jobId = %job_id);
        async {
            let started = Instant::now();
            let mut timings = BTreeMap::new();
            let result = self.run_steps(&job_id, job_key, deadline, trigger, &mut timings).await;
            timings.insert("total".to_owned(), started.elapsed().as_millis() as u64);
            self.report(&job_id, &result, &timings).await;
            result
        }
        .instrument(span)
        .await
    }

    async fn run_steps(
        &self,
        job_id: &str,
        job_key: &str,
        deadline: Instant,
        trigger: Trigger,
        timings: &mut BTreeMap<String, u64>,
    ) -> Result<JobOutcome> {
        let retry = &self.config.retry;
        let (manifest_bytes, _) = retry
            .run(deadline, "read manifest", |_| self.store.get(job_key))
            .await
            .map_err(|e| e.at(Step::Manifest))?;
        let manifest_bytes =
            manifest_bytes.ok_or_else(|| Error::permanent(Step::Manifest, format!("no job manifest at {job_key}")))?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            Error::permanent(Step::Manifest, format!("{job_key} is not a valid job manifest")).caused_by(e)
        })?;
        if manifest.job_id != job_id {
            return Err(Error::permanent(Step::Manifest, format!("{job_key} holds jobId {}", manifest.job_id)));
        }

        let receipt_key = keys::receipt(job_id);
        let (delivered, _) = retry
            .run(deadline, "check receipt", |_| self.store.exists(&receipt_key))
            .await
            .map_err(|e| e.at(Step::Receipt))?;
        if delivered {
            tracing::info!("already delivered; acknowledging");
            return Ok(JobOutcome::AlreadyDelivered);
        }
        if trigger == Trigger::Queue {
            if let Some(earlier) = self.permanent_failure(job_id).await {
                return Err(Error::permanent(
                    earlier.step,
                    format!("failed permanently before and not retried from the queue: {}", earlier.message),
                ));
            }
        }

        let spool = tempfile::TempDir::new_in(&self.config.spool_dir).map_err(|e| {
            Error::transient(Step::Convert, format!("creating a spool folder in {}", self.config.spool_dir.display()))
                .caused_by(e)
        })?;
        let step_started = Instant::now();
        let files = match self.staged_files(job_id, spool.path(), deadline).await? {
            Some(files) => {
                tracing::info!(files = files.len(), "CSV already staged; resuming at delivery");
                timings.insert("restore".to_owned(), step_started.elapsed().as_millis() as u64);
                files
            }
            None => {
                let files = self.export(&manifest, spool.path(), deadline).await?;
                timings.insert("fetch".to_owned(), step_started.elapsed().as_millis() as u64);
                let stage_started = Instant::now();
                self.stage(job_id, &files, deadline).await?;
                timings.insert("stage".to_owned(), stage_started.elapsed().as_millis() as u64);
                files
            }
        };

        let deliver_started = Instant::now();
        let (delivered, attempts) = self.deliver(&manifest, &files, deadline).await?;
        timings.insert("deliver".to_owned(), deliver_started.elapsed().as_millis() as u64);

        let receipt = Receipt {
            job_id: job_id.to_owned(),
            target: manifest.target.clone(),
            rows: delivered.iter().map(|f| f.file.stats.rows).sum(),
            bytes: delivered.iter().map(|f| f.file.stats.bytes).sum(),
            files: delivered,
            attempts,
            timings_ms: timings.clone(),
            delivered_at: OffsetDateTime::now_utc(),
        };
        let bytes = serde_json::to_vec_pretty(&receipt)
            .map_err(|e| Error::permanent(Step::Receipt, "serialising the receipt").caused_by(e))?;
        retry
            .run(deadline, "write receipt", |_| self.store.put(&receipt_key, bytes.clone(), "application/json"))
            .await
            .map_err(|e| e.at(Step::Receipt))?;
        // A failure record of an earlier attempt no longer describes the job.
        if let Err(err) = self.store.delete(&keys::failure(job_id)).await {
            tracing::warn!(error = %err.chain(), "could not remove the earlier failure record");
        }
        Ok(JobOutcome::Delivered(receipt))
    }

    async fn permanent_failure(&self, job_id: &str) -> Option<FailureRecord> {
        let bytes = self.store.get(&keys::failure(job_id)).await.ok()??;
        let record: FailureRecord = serde_json::from_slice(&bytes).ok()?;
        (record.class == ErrorClass::Permanent).then_some(record)
    }

    /// The CSVs of an earlier attempt, when staging completed; downloaded into `dir`.
    async fn staged_files(&self, job_id: &str, dir: &Path, deadline: Instant) -> Result<Option<Vec<ExportedFile>>> {
        let retry = &self.config.retry;
        let index_key = keys::staged_index(job_id);
        let (index, _) = retry.run(deadline, "read staged index", |_| self.store.get(&index_key)).await?;
        let Some(index) = index else { return Ok(None) };
        let staged: Vec<StagedFile> = serde_json::from_slice(&index)
            .map_err(|e| Error::permanent(Step::Stage, "the staged index is not valid").caused_by(e))?;
        let mut files = Vec::with_capacity(staged.len());
        for file in staged {
            let path = dir.join(&file.file_name);
            let key = keys::staged_file(job_id, &file.file_name);
            let (found, _) =
                retry.run(deadline, "restore staged CSV", |_| self.store.download_file(&key, &path)).await?;
            if !found {
                return Err(Error::permanent(Step::Stage, format!("{key} is listed as staged but missing")));
            }
            files.push(ExportedFile { file, path });
        }
        Ok(Some(files))
    }

    async fn export(&self, manifest: &Manifest, dir: &Path, deadline: Instant) -> Result<Vec<ExportedFile>> {
        let credentials: KinaxisCredentials = self.secrets.get_json(&self.config.kinaxis_secret_id).await?;
        let client = KinaxisClient::new(credentials, self.config.kinaxis.clone())?;
        let exporter = Exporter {
            client: &client,
            csv: &self.config.csv,
            names: &self.config.file_names,
            retry: &self.config.retry,
            deadline,
        };
        exporter.export(manifest, dir).await
    }

    /// Uploads every CSV, then the index that marks staging complete.
    async fn stage(&self, job_id: &str, files: &[ExportedFile], deadline: Instant) -> Result<()> {
        let retry = &self.config.retry;
        for file in files {
            let key = keys::staged_file(job_id, &file.file.file_name);
            retry
                .run(deadline, "stage CSV", |_| self.store.upload_file(&key, &file.path, "text/csv"))
                .await
                .map_err(|e| e.at(Step::Stage))?;
        }
        let index: Vec<&StagedFile> = files.iter().map(|f| &f.file).collect();
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| Error::permanent(Step::Stage, "serialising the staged index").caused_by(e))?;
        let index_key = keys::staged_index(job_id);
        retry
            .run(deadline, "stage index", |_| self.store.put(&index_key, bytes.clone(), "application/json"))
            .await
            .map_err(|e| e.at(Step::Stage))?;
        Ok(())
    }

    async fn deliver(
        &self,
        manifest: &Manifest,
        files: &[ExportedFile],
        deadline: Instant,
    ) -> Result<(Vec<DeliveredFile>, u32)> {
        let secret_id = self.config.sftp_secret_ids.get(&manifest.target).ok_or_else(|| {
            Error::permanent(
                Step::Deliver,
                format!("no SFTP_SECRET_ID_{} is configured for the job's target", manifest.target),
            )
        })?;
        let mut delivered = Vec::with_capacity(files.len());
        let mut most_attempts = 0;
        for file in files {
            let upload = Upload {
                local_path: file.path.clone(),
                file_name: file.file.file_name.clone(),
                bytes: file.file.stats.bytes,
                sha256: file.file.stats.sha256.clone(),
            };
            let (delivery, attempts) = self
                .config
                .retry
                .run(deadline, "sftp deliver", |_| async {
                    let credentials: SftpCredentials = self.secrets.get_json(secret_id).await?;
                    sftp::deliver(credentials, self.config.sftp.clone(), upload.clone()).await
                })
                .await?;
            tracing::info!(remote = %delivery.remote_path, uploaded = delivery.uploaded, attempts, "file delivered");
            most_attempts = most_attempts.max(attempts);
            delivered.push(DeliveredFile {
                file: file.file.clone(),
                remote_path: delivery.remote_path,
                uploaded: delivery.uploaded,
            });
        }
        Ok((delivered, most_attempts))
    }

    /// The job's summary line, its metrics and, on failure, its record in `failed/`.
    async fn report(&self, job_id: &str, result: &Result<JobOutcome>, timings: &BTreeMap<String, u64>) {
        let durations: Vec<(String, Metric)> = timings
            .iter()
            .map(|(step, ms)| (format!("{}Ms", telemetry::capitalise(step)), Metric::Milliseconds(*ms as f64)))
            .collect();
        let mut metrics: Vec<(&str, Metric)> = durations.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        match result {
            Ok(JobOutcome::Delivered(receipt)) => {
                tracing::info!(
                    outcome = "delivered",
                    target = %receipt.target,
                    rows = receipt.rows,
                    bytes = receipt.bytes,
                    attempts = receipt.attempts,
                    timings_ms = %json!(timings),
                    "job summary"
                );
                metrics.extend([
                    ("JobsDelivered", Metric::Count(1.0)),
                    ("Rows", Metric::Count(receipt.rows as f64)),
                    ("Bytes", Metric::Bytes(receipt.bytes as f64)),
                ]);
            }
            Ok(JobOutcome::AlreadyDelivered) => {
                tracing::info!(outcome = "already-delivered", "job summary");
                return;
            }
            Err(err) => {
                tracing::error!(outcome = "failed", class = %err.class, step = %err.step, error = %err.chain(), timings_ms = %json!(timings), "job summary");
                metrics.push(("JobsFailed", Metric::Count(1.0)));
                let record = FailureRecord {
                    job_id: job_id.to_owned(),
                    class: err.class,
                    step: err.step,
                    message: err.chain(),
                    failed_at: OffsetDateTime::now_utc(),
                };
                match serde_json::to_vec_pretty(&record) {
                    Ok(bytes) => {
                        if let Err(write_err) = self.store.put(&keys::failure(job_id), bytes, "application/json").await
                        {
                            tracing::error!(error = %write_err.chain(), "could not write the failure record; the message still fails");
                        }
                    }
                    Err(ser_err) => tracing::error!(error = %ser_err, "could not serialise the failure record"),
                }
            }
        }
        let target = match result {
            Ok(JobOutcome::Delivered(receipt)) => Some(receipt.target.as_str()),
            _ => None,
        };
        let scope = MetricScope { stack: &self.config.stack_name, function: "worker", target };
        telemetry::emit(&telemetry::emf_record(scope, &metrics, &[("jobId", json!(job_id))]));
    }
}

/// S3 event notifications carry the key form-URL-encoded (`jobs%2F….json`, `+` for space).
fn decode_s3_event_key(encoded: &str) -> String {
    let hex = |b: &u8| (*b as char).to_digit(16).map(|d| d as u8);
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped =
            (bytes[i] == b'%').then(|| Some(hex(bytes.get(i + 1)?)? << 4 | hex(bytes.get(i + 2)?)?)).flatten();
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_event_keys_are_url_decoded() {
        assert_eq!(decode_s3_event_key("jobs%2Fab.json"), "jobs/ab.json");
        assert_eq!(decode_s3_event_key("a+b%zz%4"), "a b%zz%4");
    }
}
