//! How a job's end reaches people: one summary line, the EMF metrics (`JobsFailedFinal` is
//! the one that pages), and for a job that did not deliver a failure record, kept in the
//! job's history (`failed/{jobId}/…`) and as the latest (`failed/{jobId}.json`).

use std::collections::BTreeMap;

use serde_json::json;
use time::OffsetDateTime;

use super::JobOutcome;
use crate::error::{Error, Result};
use crate::job::{keys, FailureRecord, JobId, Manifest, Receipt, Records};
use crate::ports::ObjectStore;
use crate::telemetry::{self, capitalise, Metric, MetricScope};

/// What is known of a job when it ends.
pub(super) struct JobEnd<'a> {
    pub stack: &'a str,
    pub job_id: &'a JobId,
    /// The job's records, or a re-send's.
    pub records: &'a Records,
    /// Known once the manifest was read and checked.
    pub manifest: Option<&'a Manifest>,
    /// The queue's receive count; `None` for an operator's re-run.
    pub receive_count: Option<u32>,
    /// The permanent failure recorded before, met again from the queue: neither recorded
    /// nor paged again.
    pub repeated: bool,
    pub timings: &'a BTreeMap<String, u64>,
    /// A failure that no automatic retry will follow.
    pub final_failure: bool,
    /// Whether this run may write `failed/` (it held the lease, or the failure is permanent).
    pub record_failure: bool,
    /// Refused as older than a batch that claimed the destination first (`JobsStale`).
    pub stale: bool,
}

impl JobEnd<'_> {
    pub async fn report(&self, store: &impl ObjectStore, result: &Result<JobOutcome>) {
        let durations: Vec<(String, Metric)> = self
            .timings
            .iter()
            .map(|(step, ms)| (format!("{}Ms", capitalise(step)), Metric::Milliseconds(*ms as f64)))
            .collect();
        let mut metrics: Vec<(&str, Metric)> = durations.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        match result {
            Ok(JobOutcome::Delivered(receipt)) => self.delivered(receipt, &mut metrics),
            Ok(JobOutcome::Skipped(receipt)) => {
                tracing::warn!(outcome = "skipped", reason = receipt.skipped.as_deref().unwrap_or(""), "job summary");
                metrics = vec![("JobsSkipped", Metric::Count(1.0))];
            }
            Ok(JobOutcome::AlreadyDelivered) => {
                tracing::info!(outcome = "already-delivered", "job summary");
                return;
            }
            Ok(JobOutcome::NotRun(reason)) => {
                tracing::warn!(outcome = "not-run", reason, "job summary");
                return;
            }
            Ok(JobOutcome::Busy { owner, until }) => {
                tracing::info!(outcome = "busy", lease_owner = %owner, lease_until = %until, "job summary: another run holds the job's lease; not run now");
                metrics = vec![("JobsBusy", Metric::Count(1.0))];
            }
            Err(err) => self.failed(err, &mut metrics),
        }
        if self.stale {
            metrics.push(("JobsStale", Metric::Count(1.0)));
        }
        let target = self.target();
        // The metric first: it is a line on stdout, while the record below is an S3 write
        // that a slow S3 could keep past the deadline, and the metric is what pages.
        let scope = MetricScope { stack: self.stack, function: "worker", target };
        telemetry::emit(&telemetry::emf_record(scope, &metrics, &[("jobId", json!(self.job_id))]));
        if let Err(err) = result {
            if self.record_failure && !self.repeated {
                self.record_failure(store, err).await;
            }
        }
    }

    fn target(&self) -> Option<&str> {
        self.manifest.map(|m| m.target.as_str())
    }

    fn timing(&self, step: &str) -> Option<u64> {
        self.timings.get(step).copied()
    }

    /// The summary line of a delivered job, a warning per file that does not reconcile.
    fn delivered(&self, receipt: &Receipt, metrics: &mut Vec<(&str, Metric)>) {
        for line in receipt.reconciliation.iter().filter(|r| !r.matches) {
            tracing::warn!(
                file = %line.file_name,
                kinaxis_total_rows = line.kinaxis_total_row_count,
                rows_written = line.rows_written,
                bytes = line.bytes,
                remote_size = line.remote_size_after_rename,
                "the receipt's figures do not reconcile: check this file before signing the batch off"
            );
        }
        let resend = self.records.resend().map(ToString::to_string);
        tracing::info!(
            reconciled = receipt.reconciliation.iter().all(|r| r.matches),
            outcome = "delivered",
            resend,
            target = %receipt.target,
            rows = receipt.rows,
            bytes = receipt.bytes,
            files = receipt.files.len(),
            attempts = receipt.attempts,
            total_ms = self.timing("total"),
            fetch_ms = self.timing("fetch"),
            stage_ms = self.timing("stage"),
            restore_ms = self.timing("restore"),
            deliver_ms = self.timing("deliver"),
            "job summary"
        );
        // A re-send is not a job delivered: the undelivered-jobs alarm balances accepted jobs
        // against deliveries.
        let counted = if self.records.resend().is_some() { "JobsResent" } else { "JobsDelivered" };
        metrics.extend([
            (counted, Metric::Count(1.0)),
            ("Rows", Metric::Count(receipt.rows as f64)),
            ("Bytes", Metric::Bytes(receipt.bytes as f64)),
        ]);
    }

    fn failed(&self, err: &Error, metrics: &mut Vec<(&str, Metric)>) {
        tracing::error!(
            outcome = "failed",
            target = self.target(),
            class = %err.class,
            step = %err.step,
            final_failure = self.final_failure,
            repeated = self.repeated,
            resend = self.records.resend().map(ToString::to_string),
            error = %err.chain(),
            total_ms = self.timing("total"),
            "job summary"
        );
        // A re-send's failure is answered to the operator who asked: it pages no one, and
        // the undelivered-jobs alarm counts jobs, not re-sends.
        if self.records.resend().is_some() {
            metrics.push(("ResendsFailed", Metric::Count(1.0)));
            return;
        }
        metrics.push(("JobsFailed", Metric::Count(1.0)));
        if self.final_failure && !self.repeated {
            metrics.push(("JobsFailedFinal", Metric::Count(1.0)));
        }
    }

    async fn record_failure(&self, store: &impl ObjectStore, err: &Error) {
        let record = FailureRecord {
            job_id: self.job_id.clone(),
            class: err.class,
            step: err.step,
            message: err.chain(),
            failed_at: OffsetDateTime::now_utc(),
            final_failure: self.final_failure,
            target: self.target().map(str::to_owned),
            file_name: self.manifest.map(|m| m.request.file_name.clone()),
            event_id: self.manifest.and_then(|m| m.request.event_id.clone()),
            receive_count: self.receive_count,
        };
        let bytes = match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => bytes,
            Err(ser_err) => return tracing::error!(error = %ser_err, "could not serialise the failure record"),
        };
        // The history first: the latest is a copy of its newest entry. A re-send's failure
        // is its own, beside the history, never the job's latest.
        let keys = match self.records.resend_failure() {
            Some(key) => vec![key],
            None => vec![keys::failure_at(self.job_id, record.failed_at), keys::failure(self.job_id)],
        };
        for key in keys {
            if let Err(write_err) = store.put(&key, bytes.clone(), "application/json").await {
                tracing::error!(error = %write_err.chain(), key, "could not write the failure record; the message still fails");
            }
        }
    }
}
