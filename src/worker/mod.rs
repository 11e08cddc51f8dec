//! The worker's job lifecycle: receipt? → lease → fetch → CSV, streamed to staging and to
//! the SFTP temporary as it is written → staging completed → deliver each file once (the
//! rename) → receipt, every step bounded by the invocation's deadline, every end reported;
//! and what the jobs queue is told (retry later, or the dead-letter queue now).

pub mod event;
pub mod lease;
mod pickup;
mod report;
mod settings;
pub mod stream;

pub use pickup::{LateFile, PickupCheck, PickupReport};
pub use settings::{PickupSettings, QueueSettings, StaleBatch, WorkerSettings, RECORD_OUTCOME_BUDGET};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

use crate::delivery::{self, Destination, DestinationRun, FileDelivery, Refusal};
use crate::error::{Error, ErrorClass, Result, ResultExt, Step};
use crate::events::{self, Publisher};
use crate::job::{
    keys, DeliveryRecord, DeliveryState, EarlierFailure, ExportedFile, FailureRecord, JobId, LeaseRecord, Manifest,
    Receipt, Records, Rerun, ResendId, StagedFile,
};
use crate::outlet::Outlets;
use crate::ports::{FileDrop, JobQueue, ObjectStore, WorkbookSource};
use crate::retry::deadline_reached;
use crate::routing::Target;
use crate::secrets::{CachedSecrets, KinaxisCredentials, KinaxisLogin, SecretSource, SftpCredentials};
use crate::telemetry::{self, Metric, MetricScope};
pub use event::{ConsoleOutcome, RerunRequest, WorkerEvent, WorkerResponse};
use lease::Lease;
use report::JobEnd;

tokio::task_local! {
    /// The Lambda request id of the invocation being served: set by the binary around each
    /// invocation, put on every line of the job so one query finds both functions' lines.
    pub static REQUEST_ID: String;
}

/// How a job was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The queue's message, handed out for the `receive_count`-th time. A job that already
    /// failed permanently fails again at once.
    Queue { receive_count: u32 },
    /// An operator's re-run from the console: always tries again.
    Console,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Delivered(Receipt),
    AlreadyDelivered,
    /// Not delivered on purpose (`STALE_BATCH=skip`); the receipt says why.
    Skipped(Receipt),
    /// Another run holds the job's lease: nothing was done, nothing recorded.
    Busy {
        owner: String,
        until: OffsetDateTime,
    },
    /// An operator's re-run that cannot be run as asked: nothing done or recorded.
    NotRun(String),
}

pub struct Worker<S, K, W, D, Q> {
    store: S,
    /// Shared with the Kinaxis client, which reads its secret again after a refusal.
    secrets: Arc<CachedSecrets<K>>,
    source: W,
    drop: D,
    queue: Q,
    settings: WorkerSettings,
    stream: stream::StreamOptions,
    /// Where delivery events go (`EVENT_BUS_NAME`); none are published without one.
    events: Option<Publisher>,
}

/// What one run of a job knows while it runs; kept outside the steps so that a run cut by
/// the deadline can still report where it was.
struct Run {
    /// The records this run reads and writes: the job's, or a re-send's.
    records: Records,
    /// The operator's re-run, when this is one.
    rerun: Option<RerunRequest>,
    /// This run's name on the lease.
    owner: String,
    started: Instant,
    /// `started` on the wall clock, for the delivery events.
    started_at: OffsetDateTime,
    trigger: Trigger,
    /// Every step ends by then: the function's deadline less the margin.
    work_deadline: Instant,
    /// The receipt's small writes after a delivery that ran to its cut may use until then:
    /// halfway into the margin, where the backstop cuts the job.
    finish_deadline: Instant,
    /// When this run's lease (and a destination claim it takes) runs out: the function's
    /// deadline on the wall clock, plus the grace.
    lease_until: OffsetDateTime,
    step: Mutex<Step>,
    /// Known once read and checked.
    manifest: Mutex<Option<Manifest>>,
    timings: Mutex<BTreeMap<String, u64>>,
    lease_held: AtomicBool,
    /// The job was refused as older than a batch that claimed its destination first.
    stale: AtomicBool,
    /// The failure is the permanent one recorded before, met again from the queue.
    repeated: AtomicBool,
    /// The job's failures before this run, read once it holds the lease (no other run
    /// writes them then), for the receipt.
    earlier_failures: Mutex<Vec<EarlierFailure>>,
}

/// What delivery starts from: the files, the SFTP temporaries that came through whole, every
/// temporary the streams wrote (file name, temporary), and the folder they wrote into.
type Prepared<F> = (Vec<ExportedFile>, stream::Temporaries, Vec<(String, String)>, Option<F>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Run {
    fn job_id(&self) -> &JobId {
        self.records.job_id()
    }

    fn at(&self, step: Step) {
        *lock(&self.step) = step;
    }
    fn time(&self, step: &str, since: Instant) {
        lock(&self.timings).insert(step.to_owned(), since.elapsed().as_millis() as u64);
    }
}

impl<S, K, W, D, Q> Worker<S, K, W, D, Q>
where
    S: ObjectStore,
    K: SecretSource + 'static,
    W: WorkbookSource,
    D: FileDrop,
    Q: JobQueue,
{
    pub fn new(store: S, secrets: CachedSecrets<K>, source: W, drop: D, queue: Q, settings: WorkerSettings) -> Self {
        let stream = settings.stream.clone();
        Self { store, secrets: Arc::new(secrets), source, drop, queue, settings, stream, events: None }
    }

    /// Publishes a delivery event per file delivered and per job failed for good.
    pub fn with_events(mut self, publisher: Publisher) -> Self {
        self.events = Some(publisher);
        self
    }

    /// How the export is streamed to staging and SFTP (part sizes, queue depths), in place
    /// of the configured `STREAM_*`.
    pub fn with_stream_options(mut self, options: stream::StreamOptions) -> Self {
        self.stream = options;
        self
    }

    /// The Kinaxis credentials as cached, and a way past the cache for when Kinaxis refuses
    /// them: a secret rotated in the meantime is read again once.
    async fn kinaxis_login(&self) -> Result<KinaxisLogin> {
        let credentials: KinaxisCredentials = self.secrets.get_json(&self.settings.kinaxis_secret_id).await?;
        let secrets = self.secrets.clone();
        let secret_id = self.settings.kinaxis_secret_id.clone();
        let reread: crate::secrets::RereadCredentials = Arc::new(move || {
            let secrets = secrets.clone();
            let secret_id = secret_id.clone();
            Box::pin(async move {
                secrets.invalidate(&secret_id);
                secrets.get_json::<KinaxisCredentials>(&secret_id).await
            })
        });
        Ok(KinaxisLogin { credentials, reread: Some(reread) })
    }

    /// A session to `target`'s SAP folder with that system's own credentials; no call on it
    /// outlasts `deadline` by more than a moment.
    async fn open_target(&self, target: &Target, deadline: Instant) -> Result<D::Folder> {
        let secret_id = self.settings.sftp_secret_ids.get(target).ok_or_else(|| {
            Error::permanent(Step::Deliver, format!("no SFTP_SECRET_ID_{target} is configured for the target"))
        })?;
        let credentials: SftpCredentials = self.secrets.get_json(secret_id).await?;
        self.drop.open(credentials, deadline).await
    }

    /// The Lambda entry; `deadline` is the invocation's own. An SQS batch answers its
    /// failed items (`ReportBatchItemFailures`); a console re-run answers the outcome or
    /// fails the invocation.
    pub async fn handle_event(&self, event: WorkerEvent, deadline: Instant) -> Result<WorkerResponse> {
        match event {
            WorkerEvent::Queue(batch) => {
                let mut response = SqsBatchResponse::default();
                for message in &batch.records {
                    if !self.handle_message(message, deadline).await {
                        response.add_failure(message.message_id.as_deref().unwrap_or_default());
                    }
                }
                Ok(WorkerResponse::Queue(response))
            }
            WorkerEvent::Console(rerun) => {
                let job_key = rerun.job_key.clone();
                let outcome = match self.run(&job_key, deadline, Trigger::Console, Some(rerun)).await? {
                    JobOutcome::Delivered(receipt) => ConsoleOutcome::Delivered { receipt: Box::new(receipt) },
                    JobOutcome::AlreadyDelivered => ConsoleOutcome::AlreadyDelivered,
                    JobOutcome::Skipped(receipt) => ConsoleOutcome::Skipped { receipt: Box::new(receipt) },
                    JobOutcome::NotRun(reason) => ConsoleOutcome::NotRun { reason },
                    JobOutcome::Busy { owner, until } => {
                        return Err(Error::transient(
                            Step::Lease,
                            format!("another run ({owner}) holds the job's lease until {until}; try again after it"),
                        ))
                    }
                };
                Ok(WorkerResponse::Console(outcome))
            }
            WorkerEvent::PickupCheck(check) => {
                Ok(WorkerResponse::PickupCheck(self.check_pickups(&check, deadline).await?))
            }
        }
    }

    /// `handle_event` on the JSON the Lambda runtime hands over, answering the JSON it
    /// sends back: for tests that drive the worker with the sample events.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn handle_json(&self, event: &serde_json::Value, deadline: Instant) -> Result<serde_json::Value> {
        let response = self.handle_event(WorkerEvent::decode(event.clone())?, deadline).await?;
        serde_json::to_value(response).or_permanent(Step::Receipt, "serialising the worker's answer")
    }

    /// One queue message; `true` when it is done with (acknowledged), `false` when SQS must
    /// hand it out again.
    async fn handle_message(&self, message: &SqsMessage, deadline: Instant) -> bool {
        let receive_count = event::receive_count(message);
        let body = message.body.as_deref().unwrap_or_default();
        let job_keys = match event::job_keys(body) {
            Ok(keys) => keys,
            Err(err) => {
                tracing::error!(error = %err.chain(), "a message that names no job; sent to the dead-letter queue");
                let scope = MetricScope { stack: &self.settings.stack_name, function: "worker", target: None };
                let metrics = [("JobsFailed", Metric::Count(1.0)), ("JobsFailedFinal", Metric::Count(1.0))];
                telemetry::emit(&telemetry::emf_record(scope, &metrics, &[]));
                return self.dead_letter(body, &err, deadline).await;
            }
        };
        for job_key in job_keys {
            let trigger = Trigger::Queue { receive_count };
            match self.run_job(&job_key, deadline, trigger).await {
                // On the last receive a failed message would reach the DLQ by the queue's
                // redrive although the holder may well finish; acknowledging it would lose the
                // job if the holder dies. So a check comes back after the lease runs out.
                Ok(JobOutcome::Busy { owner, until }) if receive_count >= self.settings.queue.max_receive_count => {
                    return self.check_later(body, &owner, until, deadline).await;
                }
                Ok(JobOutcome::Busy { .. }) => return self.retry_later(message, receive_count, deadline).await,
                Ok(_) => {}
                Err(err) if self.is_final(&err, trigger) => return self.dead_letter(body, &err, deadline).await,
                Err(_) => return self.retry_later(message, receive_count, deadline).await,
            }
        }
        true
    }

    /// The last receive of a job another run holds: a new message, the same body counting
    /// one more check, comes back once the lease has run out (at most 15 minutes later, and
    /// again while it is held); after `lease_checks` of them the message goes to the
    /// dead-letter queue saying so. `true` when the message is done with.
    async fn check_later(&self, body: &str, owner: &str, until: OffsetDateTime, deadline: Instant) -> bool {
        let checks = event::lease_checks(body);
        if checks >= self.settings.queue.lease_checks {
            let reason = format!(
                "the job was still held by another run ({owner}, until {until}) after {checks} later checks: re-run it \
                 from the console if it has no receipt"
            );
            tracing::error!(lease_owner = %owner, checks, "{reason}");
            return self.dead_letter(body, &Error::transient(Step::Lease, reason), deadline).await;
        }
        let wait = (until - OffsetDateTime::now_utc()).max(time::Duration::ZERO) + time::Duration::SECOND;
        let delay = Duration::try_from(wait).unwrap_or(Duration::from_secs(1));
        let sent = match event::with_one_more_lease_check(body) {
            Ok(next) => tokio::time::timeout_at(deadline, self.queue.send_later(&next, delay)).await,
            Err(err) => Ok(Err(err)),
        };
        match sent {
            Ok(Ok(())) => {
                tracing::warn!(lease_owner = %owner, lease_until = %until, check = checks + 1, "the last receive found the job held by another run; checked again after its lease");
                true
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err.chain(), "could not queue a later check of the held job; failing the message so the redrive keeps it");
                false
            }
            Err(_) => {
                tracing::error!(
                    "no time left to queue a later check of the held job; failing the message so the redrive keeps it"
                );
                false
            }
        }
    }

    /// A failure no automatic retry will follow: permanent, a console run, or the queue's
    /// last receive.
    fn is_final(&self, err: &Error, trigger: Trigger) -> bool {
        match trigger {
            _ if !err.is_transient() => true,
            Trigger::Console => true,
            Trigger::Queue { receive_count } => receive_count >= self.settings.queue.max_receive_count,
        }
    }

    /// Sends the message to the dead-letter queue now, so its alarm fires now rather than
    /// after every redelivery, and acknowledges it; if that fails (or cannot finish before
    /// the deadline), the queue's own redrive still moves it there in the end.
    async fn dead_letter(&self, body: &str, err: &Error, deadline: Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.queue.dead_letter(body, &err.chain())).await {
            Ok(Ok(())) => true,
            Ok(Err(queue_err)) => {
                tracing::error!(error = %queue_err.chain(), "could not send the message to the dead-letter queue; failing it instead");
                false
            }
            Err(_) => {
                tracing::error!("no time left to send the message to the dead-letter queue; failing it instead");
                false
            }
        }
    }

    /// Fails the message and keeps it invisible for the configured wait.
    async fn retry_later(&self, message: &SqsMessage, receive_count: u32, deadline: Instant) -> bool {
        let delay = self.settings.queue.delay_after(receive_count);
        if let Some(handle) = message.receipt_handle.as_deref() {
            match tokio::time::timeout_at(deadline, self.queue.retry_later(handle, delay)).await {
                Ok(Ok(())) => {
                    tracing::info!(receive_count, retry_in_s = delay.as_secs(), "the job is tried again later")
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err.chain(), "could not delay the message; the queue's visibility timeout applies")
                }
                Err(_) => tracing::warn!("no time left to delay the message; the queue's visibility timeout applies"),
            }
        }
        false
    }

    /// Runs one job to its end state: delivered with a receipt, deliberately skipped, or
    /// failed with a record; or not at all while another run holds it.
    pub async fn run_job(&self, job_key: &str, deadline: Instant, trigger: Trigger) -> Result<JobOutcome> {
        self.run(job_key, deadline, trigger, None).await
    }

    /// `run_job`, as the operator's `rerun` asks when there is one.
    pub async fn run(
        &self,
        job_key: &str,
        deadline: Instant,
        trigger: Trigger,
        rerun: Option<RerunRequest>,
    ) -> Result<JobOutcome> {
        let Some(job_id) = keys::job_id_of_manifest(job_key) else {
            let why = format!("{job_key:?} is not jobs/<32 hex digits>.json");
            if rerun.is_some() {
                tracing::warn!(job_key, "re-run not run: {why}");
                return Ok(JobOutcome::NotRun(why));
            }
            return Err(Error::permanent(Step::Manifest, why));
        };
        let records = match records_of(&job_id, rerun.as_ref()) {
            Ok(records) => records,
            Err(why) => {
                tracing::warn!(jobId = %job_id, "re-run not run: {why}");
                return Ok(JobOutcome::NotRun(why));
            }
        };
        let span = tracing::info_span!("job", jobId = %job_id, requestId = tracing::field::Empty);
        if let Ok(request_id) = REQUEST_ID.try_with(Clone::clone) {
            span.record("requestId", request_id.as_str());
        }
        async {
            let run = self.new_run(records, rerun, trigger, deadline);
            // Steps stop by themselves at the work deadline; this cuts anything that did not,
            // halfway into the margin, and still leaves half of it to record the outcome.
            let result = match tokio::time::timeout_at(run.finish_deadline, self.run_steps(&run, job_key)).await {
                Ok(result) => result,
                Err(_) => Err(deadline_reached(*lock(&run.step), "the job")),
            };
            run.time("total", run.started);
            self.end(&run, &result, deadline).await;
            result
        }
        .instrument(span)
        .await
    }

    fn new_run(&self, records: Records, rerun: Option<RerunRequest>, trigger: Trigger, deadline: Instant) -> Run {
        let started = Instant::now();
        let margin = self.settings.deadline_margin;
        let remaining = deadline.saturating_duration_since(started);
        let work_deadline = deadline.checked_sub(margin).unwrap_or(started);
        Run {
            owner: format!("{}-{:016x}", records.job_id(), fastrand::u64(..)),
            started,
            started_at: OffsetDateTime::now_utc(),
            records,
            rerun,
            trigger,
            work_deadline,
            finish_deadline: work_deadline + margin / 2,
            lease_until: OffsetDateTime::now_utc()
                + time::Duration::try_from(remaining).unwrap_or(time::Duration::ZERO)
                + time::Duration::try_from(self.settings.lease_grace).unwrap_or(time::Duration::MINUTE),
            step: Mutex::new(Step::Manifest),
            manifest: Mutex::new(None),
            timings: Mutex::new(BTreeMap::new()),
            lease_held: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            repeated: AtomicBool::new(false),
            earlier_failures: Mutex::new(Vec::new()),
        }
    }

    /// The run's outcome reported (summary line, metrics, failure record), then its lease
    /// let go.
    async fn end(&self, run: &Run, result: &Result<JobOutcome>, deadline: Instant) {
        let timings = lock(&run.timings).clone();
        let manifest = lock(&run.manifest).clone();
        let final_failure = result.as_ref().err().is_some_and(|e| self.is_final(e, run.trigger));
        let end = JobEnd {
            stack: &self.settings.stack_name,
            job_id: run.job_id(),
            records: &run.records,
            manifest: manifest.as_ref(),
            receive_count: match run.trigger {
                Trigger::Queue { receive_count } => Some(receive_count),
                Trigger::Console => None,
            },
            repeated: run.repeated.load(Ordering::SeqCst),
            timings: &timings,
            final_failure,
            // Only the lease holder (or a failure no run can undo) writes `failed/`: a run
            // refused before the lease must not leave one beside the holder's receipt.
            record_failure: run.lease_held.load(Ordering::SeqCst)
                || result.as_ref().err().is_some_and(|e| !e.is_transient()),
            stale: run.stale.load(Ordering::SeqCst),
        };
        // What comes after the report (releasing the lease, telling the queue) gets the
        // last second.
        let report_by = deadline.checked_sub(Duration::from_millis(1500)).unwrap_or(deadline);
        if tokio::time::timeout_at(report_by, end.report(&self.store, result)).await.is_err() {
            tracing::error!("the outcome could not be recorded before the deadline");
        }
        if run.lease_held.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout_at(report_by, lease::release(&self.store, run.job_id(), &run.owner)).await;
        }
        let events = self.events_of(run, manifest.as_ref(), result, final_failure);
        self.publish(&events, manifest.as_ref().map(|m| m.target.as_str()), report_by).await;
    }

    /// A run's delivery events: a `File Delivered` per file it delivered, or the `Job Failed`
    /// of a job no retry will follow (once: not again for a redriven failure, nor for a
    /// re-send, which answers its operator).
    fn events_of(
        &self,
        run: &Run,
        manifest: Option<&Manifest>,
        result: &Result<JobOutcome>,
        final_failure: bool,
    ) -> Vec<events::DeliveryEvent> {
        let Some(publisher) = &self.events else { return Vec::new() };
        match result {
            Ok(JobOutcome::Delivered(receipt)) => {
                events::delivered(receipt, &run.records, &publisher.staging_bucket, run.started_at)
            }
            Err(err) if final_failure && !run.repeated.load(Ordering::SeqCst) && run.records.resend().is_none() => {
                vec![events::job_failed(run.job_id(), manifest, err, run.started_at)]
            }
            _ => Vec::new(),
        }
    }

    /// Publishes `events` by `deadline`; what cannot be is logged and counted
    /// (`EventsNotPublished`), never failing or repeating the delivery it tells of. The
    /// events left unpublished, by index.
    async fn publish(&self, events: &[events::DeliveryEvent], target: Option<&str>, deadline: Instant) -> Vec<usize> {
        let Some(publisher) = self.events.as_ref().filter(|_| !events.is_empty()) else { return Vec::new() };
        let published = publisher.publish(events, deadline).await;
        if let Err(unpublished) = &published {
            tracing::warn!(
                events = unpublished.left.len(),
                error = %unpublished.error.chain(),
                "delivery events not published: subscribers do not hear of this outcome"
            );
            let scope = MetricScope { stack: &self.settings.stack_name, function: "worker", target };
            let metrics = [("EventsNotPublished", Metric::Count(unpublished.left.len() as f64))];
            telemetry::emit(&telemetry::emf_record(scope, &metrics, &[]));
        }
        published.err().map(|unpublished| unpublished.left).unwrap_or_default()
    }

    /// The job's manifest, read and checked, and kept in `run`; `None` for a re-run of a job
    /// that has none (a mistyped id), which is not a failure.
    async fn read_manifest(&self, run: &Run, job_key: &str) -> Result<Option<Manifest>> {
        run.at(Step::Manifest);
        let (manifest_bytes, _) = self
            .settings
            .retry
            .run(run.work_deadline, Step::Manifest, "read manifest", |_| self.store.get(job_key))
            .await
            .map_err(|e| e.at(Step::Manifest))?;
        let Some(manifest_bytes) = manifest_bytes else {
            let why = format!("no job manifest at {job_key}");
            if run.rerun.is_some() {
                tracing::warn!("re-run not run: {why}");
                return Ok(None);
            }
            return Err(Error::permanent(Step::Manifest, why));
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .or_permanent(Step::Manifest, format!("{job_key} is not a valid job manifest"))?;
        if &manifest.job_id != run.job_id() {
            return Err(Error::permanent(Step::Manifest, format!("{job_key} holds jobId {}", manifest.job_id)));
        }
        self.check_manifest(job_key, &manifest)?;
        *lock(&run.manifest) = Some(manifest.clone());
        Ok(Some(manifest))
    }

    async fn run_steps(&self, run: &Run, job_key: &str) -> Result<JobOutcome> {
        let retry = &self.settings.retry;
        let job_id = run.job_id().as_str();
        let Some(manifest) = self.read_manifest(run, job_key).await? else {
            let why = format!("no job manifest at {job_key}: check the job id (`maestro-relay jobs` lists them)");
            return Ok(JobOutcome::NotRun(why));
        };
        if self.has_receipt(run).await? {
            tracing::info!("already delivered; acknowledging");
            return Ok(JobOutcome::AlreadyDelivered);
        }
        if let Trigger::Queue { .. } = run.trigger {
            if let Some(earlier) = self.permanent_failure(job_id).await {
                run.repeated.store(true, Ordering::SeqCst);
                // The message as first recorded, not nested once more with each redrive.
                let first = earlier.message.strip_prefix(REPEATED).unwrap_or(&earlier.message);
                return Err(Error::permanent(earlier.step, format!("{REPEATED}{first}")));
            }
        }

        run.at(Step::Lease);
        let now = OffsetDateTime::now_utc();
        let record = LeaseRecord { owner: run.owner.clone(), acquired_at: now, expires_at: run.lease_until };
        let longest = lease::longest(self.settings.lease_grace);
        let (taken, _) = retry
            .run(run.work_deadline, Step::Lease, "take the job's lease", |_| {
                lease::acquire(&self.store, job_id, &record, longest)
            })
            .await?;
        if let Lease::Busy { owner, until } = taken {
            if self.has_receipt(run).await? {
                tracing::info!("delivered by the run that holds the lease; acknowledging");
                return Ok(JobOutcome::AlreadyDelivered);
            }
            return Ok(JobOutcome::Busy { owner, until });
        }
        run.lease_held.store(true, Ordering::SeqCst);
        // The run that held the lease before may have finished the job meanwhile.
        if self.has_receipt(run).await? {
            tracing::info!("delivered by an earlier run; acknowledging");
            return Ok(JobOutcome::AlreadyDelivered);
        }
        // Under the lease: no run of the job changes its records while this is decided.
        if let Some(why) = self.cannot_rerun(run).await? {
            tracing::warn!("re-run not run: {why}");
            return Ok(JobOutcome::NotRun(why));
        }
        *lock(&run.earlier_failures) = self.earlier_failures(run).await;
        // Boxed: the steps' state is large (export, streams, delivery) and would otherwise sit on
        // the stack of whatever polls the run (a debug-build test thread overflowed).
        Box::pin(self.steps(run, &manifest)).await
    }

    async fn steps(&self, run: &Run, manifest: &Manifest) -> Result<JobOutcome> {
        let spool = tempfile::TempDir::new_in(&self.settings.spool_dir)
            .or_transient(Step::Convert, format!("creating a spool folder in {}", self.settings.spool_dir.display()))?;
        let step_started = Instant::now();
        run.at(Step::Stage);
        let staged = if asks_fresh_export(run) {
            tracing::info!("fresh export asked: the staged copy is not used");
            None
        } else {
            self.staged_files(run, spool.path()).await?
        };
        if staged.is_none() && run.records.resend().is_some() && !asks_fresh_export(run) {
            // Gone since it was checked: exporting now would stage over the job's own copy.
            return Ok(JobOutcome::NotRun(no_staged_copy(&run.records.staged_index())));
        }
        let (files, temporaries, written, folder) = match staged {
            Some(files) => {
                tracing::info!(files = files.len(), "CSV already staged; resuming at delivery");
                run.time("restore", step_started);
                (files, stream::Temporaries::new(), Vec::new(), None)
            }
            None => {
                // Nothing staged, so nothing sent: an older batch stops here, before the export.
                if let Some(refusal) = self.newer_batch(run, manifest).await? {
                    return self.refused(run, manifest, refusal, &[], None).await;
                }
                self.export_and_stage(run, manifest, spool.path(), step_started).await?
            }
        };

        // From here on a job that ends without renaming them leaves no streamed temporary.
        let mut folder = folder;
        let delivered = Box::pin(self.deliver_and_receipt(run, manifest, &files, &temporaries, &mut folder)).await;
        if !matches!(delivered, Ok(JobOutcome::Delivered(_))) && !written.is_empty() {
            self.abandon_temporaries(run, manifest, &written, folder, true).await;
        }
        delivered
    }

    /// Kinaxis's worksheets exported into `dir`, streamed to staging and SFTP while they are
    /// written, then staged for good: the files, the SFTP temporaries that came through whole,
    /// every temporary the streams wrote, and the folder they wrote into.
    async fn export_and_stage(
        &self,
        run: &Run,
        manifest: &Manifest,
        dir: &Path,
        step_started: Instant,
    ) -> Result<Prepared<D::Folder>> {
        run.at(Step::Fetch);
        let login = self.kinaxis_login().await?;
        // The export and its streams run together; the export's end (its outlets dropped)
        // ends the streams.
        let (outlets, announced) = Outlets::new(self.stream.chunk_bytes, self.stream.depth, self.stream.stall);
        let export = async move {
            let exported = self.source.export(manifest, login, dir, run.work_deadline, &outlets).await;
            drop(outlets);
            exported
        };
        let (exported, (mut streamed, folder)) =
            tokio::join!(Box::pin(export), Box::pin(self.pump(run, manifest, announced)));
        let files = match exported.and_then(|files| self.check_row_counts(&files).map(|()| files)) {
            Ok(files) => files,
            Err(err) => {
                self.discard(run, manifest, streamed, folder).await;
                return Err(err);
            }
        };
        run.time("fetch", step_started);
        let stage_started = Instant::now();
        run.at(Step::Stage);
        let temporaries = match self.settle(run, &files, &mut streamed).await {
            Ok(temporaries) => temporaries,
            Err(err) => {
                self.discard(run, manifest, streamed, folder).await;
                return Err(err);
            }
        };
        run.time("stage", stage_started);
        Ok((files, temporaries, stream::streamed_temporaries(&streamed), folder))
    }

    /// The job's SAP destination, claimed by this run before its first rename; `files` go
    /// under it.
    fn destination<'a>(&'a self, run: &'a Run, manifest: &'a Manifest, files: &[ExportedFile]) -> Destination<'a, S> {
        Destination::new(
            &self.store,
            DestinationRun {
                manifest,
                owner: &run.owner,
                until: run.lease_until,
                check_order: self.settings.stale_batch != StaleBatch::Deliver && !allows_stale(run),
                deadline: run.work_deadline,
                poll: self.settings.destination_poll,
                names: files.iter().map(|f| f.file.file_name.clone()).collect(),
                resend: run.records.resend().is_some(),
            },
        )
    }

    /// Delivery under the destination's claim, then the receipt; the folder the export
    /// streamed into serves the first try.
    async fn deliver_and_receipt(
        &self,
        run: &Run,
        manifest: &Manifest,
        files: &[ExportedFile],
        temporaries: &stream::Temporaries,
        folder: &mut Option<D::Folder>,
    ) -> Result<JobOutcome> {
        let deliver_started = Instant::now();
        run.at(Step::Deliver);
        let records = self.delivery_records(run, files).await?;
        let started_sending =
            records.iter().flatten().any(|r| matches!(r.state, DeliveryState::Intent | DeliveryState::Delivered));
        // A cheap look first: a batch refused now sends nothing. The claim before each
        // rename decides.
        if !started_sending {
            if let Some(refusal) = self.newer_batch(run, manifest).await? {
                return self.refused(run, manifest, refusal, files, folder.take()).await;
            }
        }
        let destination = self.destination(run, manifest, files);
        let delivered = self.deliver(run, files, records, temporaries, folder.take(), &destination).await;
        destination.release().await;
        let (records, attempts) = match delivered {
            Ok(delivered) => delivered,
            Err(err) => {
                return match destination.refusal() {
                    Some(refusal) => self.refused(run, manifest, refusal, files, None).await,
                    None => Err(err),
                }
            }
        };
        run.time("deliver", deliver_started);

        run.at(Step::Receipt);
        run.time("total", run.started);
        let receipt = Receipt {
            rows: records.iter().map(|r| r.file.stats.rows).sum(),
            bytes: records.iter().map(|r| r.file.stats.bytes).sum(),
            reconciliation: records.iter().map(crate::job::Reconciliation::of).collect(),
            files: records,
            attempts,
            ..self.receipt_of(run, manifest)
        };
        self.write_receipt(run, &receipt).await?;
        Ok(JobOutcome::Delivered(receipt))
    }

    /// The webhook's content rules, again: a manifest written into the bucket by other means
    /// (or edited there) with a path, a control character or too many names is refused
    /// before anything is written, naming the field.
    fn check_manifest(&self, job_key: &str, manifest: &Manifest) -> Result<()> {
        crate::job::rules::check_request(&manifest.request)
            .map_err(|err| Error::permanent(Step::Manifest, format!("{job_key} breaks the manifest rules: {err}")))?;
        if !self.settings.sftp_secret_ids.contains_key(&manifest.target) {
            return Err(Error::permanent(
                Step::Manifest,
                format!("{job_key} breaks the manifest rules: target: {} is not configured", manifest.target),
            ));
        }
        Ok(())
    }

    /// The receipt's parts every outcome shares: the job, its timings, what the operator
    /// asked, and the receives that failed before.
    fn receipt_of(&self, run: &Run, manifest: &Manifest) -> Receipt {
        let earlier_failures = lock(&run.earlier_failures).clone();
        Receipt {
            timings_ms: lock(&run.timings).clone(),
            rerun: run.rerun.as_ref().map(|r| Rerun {
                requested_by: r.requested_by.clone().unwrap_or_else(|| "console".to_owned()),
                requested_at: OffsetDateTime::now_utc(),
                fresh_export: r.fresh_export,
                resend: run.records.resend().cloned(),
                allow_stale: r.allow_stale,
            }),
            earlier_failures,
            ..Receipt::of(manifest)
        }
    }

    /// The job's failure history, oldest first; what cannot be read is left out (the
    /// history is for people, the receipt must still be written).
    async fn earlier_failures(&self, run: &Run) -> Vec<EarlierFailure> {
        let prefix = keys::failure_history(run.job_id());
        let listed = match self.store.list(&prefix).await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(error = %err.chain(), "could not list the failure history for the receipt");
                return Vec::new();
            }
        };
        let mut failures = Vec::new();
        // The job's own receives; a re-send's failures sit in `resends/` below.
        for object in listed.iter().filter(|o| directly_under(&prefix, &o.key)) {
            let read = self.store.get(&object.key).await;
            match read.map(|bytes| bytes.map(|b| serde_json::from_slice::<FailureRecord>(&b))) {
                Ok(Some(Ok(record))) => failures.push(EarlierFailure {
                    failed_at: record.failed_at,
                    receive_count: record.receive_count,
                    class: record.class,
                    step: record.step,
                }),
                Ok(None) => {}
                Ok(Some(Err(err))) => {
                    tracing::warn!(key = %object.key, error = %err, "a failure record that does not parse is left out of the receipt")
                }
                Err(err) => {
                    tracing::warn!(key = %object.key, error = %err.chain(), "a failure record that could not be read is left out of the receipt")
                }
            }
        }
        failures
    }

    /// Why an operator's re-run cannot be run as asked, if it cannot: a re-send of a job not
    /// delivered, or whose staged copy is gone; a fresh export of a job a file of which may
    /// already be in SAP's folder.
    async fn cannot_rerun(&self, run: &Run) -> Result<Option<String>> {
        let Some(rerun) = &run.rerun else { return Ok(None) };
        if run.records.resend().is_some() {
            return self.cannot_resend(run, rerun).await;
        }
        if !rerun.fresh_export {
            return Ok(None);
        }
        let prefix = keys::deliveries(run.job_id());
        let retry = &self.settings.retry;
        let (listed, _) =
            retry.run(run.work_deadline, Step::Deliver, "list delivery records", |_| self.store.list(&prefix)).await?;
        for object in listed.iter().filter(|o| directly_under(&prefix, &o.key)) {
            let Some(bytes) = self.store.get(&object.key).await? else { continue };
            let state = serde_json::from_slice::<DeliveryRecord>(&bytes).map(|r| r.state);
            if !matches!(state, Ok(DeliveryState::Streaming | DeliveryState::Abandoned)) {
                return Ok(Some(format!(
                    "a file of this job may already be in SAP's folder ({} is {}): a fresh export would put \
                     another file under its name; re-run it without freshExport (the staged copy resumes where it \
                     stopped)",
                    object.key,
                    state.map_or_else(|_| "unreadable".to_owned(), |s| format!("{s:?}").to_lowercase())
                )));
            }
        }
        Ok(None)
    }

    /// A re-send is for a delivered job only: one not delivered is still the job's own to
    /// finish (its queue message or a plain re-run), and two writers of one job could not be
    /// ordered at SAP's folder.
    async fn cannot_resend(&self, run: &Run, rerun: &RerunRequest) -> Result<Option<String>> {
        let retry = &self.settings.retry;
        let key = keys::receipt(run.job_id());
        let (delivered, _) =
            retry.run(run.work_deadline, Step::Receipt, "check receipt", |_| self.store.exists(&key)).await?;
        if !delivered {
            return Ok(Some(format!(
                "resend is for a delivered job, and {key} does not exist: re-run it without resend"
            )));
        }
        if rerun.fresh_export {
            return Ok(None);
        }
        let index = run.records.staged_index();
        let (staged, _) =
            retry.run(run.work_deadline, Step::Stage, "check the staged copy", |_| self.store.exists(&index)).await?;
        Ok((!staged).then(|| no_staged_copy(&index)))
    }

    async fn has_receipt(&self, run: &Run) -> Result<bool> {
        let key = run.records.receipt();
        let (found, _) = self
            .settings
            .retry
            .run(run.work_deadline, Step::Receipt, "check receipt", |_| self.store.exists(&key))
            .await
            .map_err(|e| e.at(Step::Receipt))?;
        Ok(found)
    }

    async fn write_receipt(&self, run: &Run, receipt: &Receipt) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(receipt).or_permanent(Step::Receipt, "serialising the receipt")?;
        let key = run.records.receipt();
        self.settings
            .retry
            .run(run.finish_deadline, Step::Receipt, "write receipt", |_| {
                self.store.put(&key, bytes.clone(), "application/json")
            })
            .await
            .map_err(|e| e.at(Step::Receipt))?;
        // The failure records of earlier receives stay: the receipt beside them says the
        // job was delivered in the end, and the history is the job's story.
        Ok(())
    }

    async fn permanent_failure(&self, job_id: &str) -> Option<FailureRecord> {
        let bytes = self.store.get(&keys::failure(job_id)).await.ok()??;
        let record: FailureRecord = serde_json::from_slice(&bytes).ok()?;
        (record.class == ErrorClass::Permanent).then_some(record)
    }

    /// SAP MRP replaces its planned orders with the newest file it reads, so a file with
    /// no rows, or fewer than `MIN_ROWS`, would wipe the plan.
    fn check_row_counts(&self, files: &[ExportedFile]) -> Result<()> {
        for file in files {
            if file.file.stats.rows < self.settings.min_rows {
                return Err(Error::permanent(
                    Step::Fetch,
                    format!(
                        "worksheet {:?} has {} rows, fewer than MIN_ROWS={}: not delivered, as SAP would replace \
                         its planned orders with it",
                        file.file.worksheet, file.file.stats.rows, self.settings.min_rows
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A newer batch that claimed the job's destination, read only (none under
    /// `STALE_BATCH=deliver`).
    async fn newer_batch(&self, run: &Run, manifest: &Manifest) -> Result<Option<Refusal>> {
        let destination = self.destination(run, manifest, &[]);
        let (newer, _) = self
            .settings
            .retry
            .run(run.work_deadline, Step::Deliver, "read the destination's claim", |_| destination.newer_batch())
            .await?;
        Ok(newer)
    }

    /// A job refused as older than a batch that claimed its destination first, per
    /// `STALE_BATCH`: a permanent failure naming both jobs (`fail`), or a receipt saying why
    /// (`skip`); counted as `JobsStale` either way. Its temporaries go first.
    async fn refused(
        &self,
        run: &Run,
        manifest: &Manifest,
        refusal: Refusal,
        files: &[ExportedFile],
        folder: Option<D::Folder>,
    ) -> Result<JobOutcome> {
        run.stale.store(true, Ordering::SeqCst);
        self.remove_refused_temporaries(run, manifest, files, folder).await;
        let policy = if self.settings.stale_batch == StaleBatch::Skip { "skip" } else { "fail" };
        let why = format!("{} (STALE_BATCH={policy})", refusal.why);
        tracing::warn!(newer_job = %refusal.newer_job, newer_received = %refusal.newer_received_at, "{why}");
        if self.settings.stale_batch != StaleBatch::Skip {
            return Err(Error::permanent(Step::Deliver, why));
        }
        let receipt = Receipt { skipped: Some(why), ..self.receipt_of(run, manifest) };
        self.write_receipt(run, &receipt).await?;
        Ok(JobOutcome::Skipped(receipt))
    }

    /// The CSVs of an earlier attempt, when staging completed; downloaded into `dir`.
    async fn staged_files(&self, run: &Run, dir: &Path) -> Result<Option<Vec<ExportedFile>>> {
        let retry = &self.settings.retry;
        let index_key = run.records.staged_index();
        let (index, _) =
            retry.run(run.work_deadline, Step::Stage, "read staged index", |_| self.store.get(&index_key)).await?;
        let Some(index) = index else { return Ok(None) };
        let staged: Vec<StagedFile> =
            serde_json::from_slice(&index).or_permanent(Step::Stage, "the staged index is not valid")?;
        let mut files = Vec::with_capacity(staged.len());
        for file in staged {
            let path = dir.join(&file.file_name);
            let key = run.records.staged_file(&file.file_name);
            let (found, _) = retry
                .run(run.work_deadline, Step::Stage, "restore staged CSV", |_| self.store.download_file(&key, &path))
                .await?;
            if !found {
                return Err(Error::permanent(Step::Stage, format!("{key} is listed as staged but missing")));
            }
            files.push(ExportedFile { file, path });
        }
        Ok(Some(files))
    }

    /// The index that marks staging complete, once every CSV is staged.
    async fn write_staged_index(&self, run: &Run, files: &[ExportedFile]) -> Result<()> {
        let retry = &self.settings.retry;
        let index: Vec<&StagedFile> = files.iter().map(|f| &f.file).collect();
        let bytes = serde_json::to_vec_pretty(&index).or_permanent(Step::Stage, "serialising the staged index")?;
        let index_key = run.records.staged_index();
        retry
            .run(run.work_deadline, Step::Stage, "stage index", |_| {
                self.store.put(&index_key, bytes.clone(), "application/json")
            })
            .await?;
        Ok(())
    }

    /// Every file's delivery record, `None` where no attempt reached the intent.
    async fn delivery_records(&self, run: &Run, files: &[ExportedFile]) -> Result<Vec<Option<DeliveryRecord>>> {
        let read = || async {
            let mut records = Vec::with_capacity(files.len());
            for file in files {
                records.push(delivery::record(&self.store, &run.records, &file.file.file_name).await?);
            }
            Ok::<_, Error>(records)
        };
        let (records, _) =
            self.settings.retry.run(run.work_deadline, Step::Deliver, "read delivery records", |_| read()).await?;
        Ok(records)
    }

    /// Delivers every file not yet delivered (per its record) to the job's destination; the
    /// records make the receipt.
    async fn deliver(
        &self,
        run: &Run,
        files: &[ExportedFile],
        records: Vec<Option<DeliveryRecord>>,
        temporaries: &stream::Temporaries,
        folder: Option<D::Folder>,
        destination: &Destination<'_, S>,
    ) -> Result<(Vec<DeliveryRecord>, u32)> {
        let manifest = destination.manifest();
        let trigger = self.settings.profiles.for_target(&manifest.target).trigger.as_ref();
        // Done: every data file delivered, and its trigger settled where one is asked for.
        let finished = |r: &DeliveryRecord| {
            r.state == DeliveryState::Delivered
                && (trigger.is_none() || r.trigger.as_ref().is_some_and(|t| t.settled()))
        };
        if let Some(done) = records.iter().map(|r| r.clone().filter(finished)).collect::<Option<Vec<_>>>() {
            tracing::info!(files = done.len(), "every file was delivered by an earlier attempt");
            return Ok((done, 0));
        }
        // The upload stops itself at the work deadline and removes its temporary; cutting the
        // attempt at that same instant would drop it before it can. So the attempt is cut a
        // little later, still well inside the margin, and no blocking SFTP call outlasts that.
        let cut_at = run.work_deadline + self.settings.deadline_margin / 4;
        // The folder the export streamed into serves the first try.
        let streamed_into = Mutex::new(folder);
        let deliver_all = || async {
            let reused = lock(&streamed_into).take();
            let mut folder = match reused {
                Some(folder) => folder,
                None => self.open_target(&manifest.target, cut_at).await?,
            };
            // Read again: an earlier try of this run may have moved a record forward.
            let records = self.delivery_records(run, files).await?;
            let mut delivered = Vec::with_capacity(files.len());
            for (file, earlier) in files.iter().zip(records) {
                let streamed = temporaries.get(&file.file.file_name).map(String::as_str);
                let attempt = match &earlier {
                    // This run's own stream: the intent keeps its attempt number.
                    Some(r) if r.state == DeliveryState::Streaming && streamed == Some(r.temp_name.as_str()) => {
                        r.attempt
                    }
                    earlier => earlier.as_ref().map_or(1, |r| r.attempt + 1),
                };
                let one = FileDelivery {
                    store: &self.store,
                    records: &run.records,
                    file,
                    policy: self.settings.existing_file,
                    attempt,
                    deadline: run.work_deadline,
                    trigger,
                    streamed,
                    destination,
                };
                let record = one.run(&mut folder, earlier).await?;
                tracing::info!(remote = %record.remote_path, uploaded = record.uploaded, taken_by_sap = record.taken_by_sap, "file delivered");
                delivered.push(record);
            }
            Ok::<_, Error>(delivered)
        };
        self.settings.retry.run(cut_at, Step::Deliver, "sftp deliver", |_| deliver_all()).await
    }
}

/// How the message of a permanent failure met again from the queue begins.
const REPEATED: &str = "failed permanently before and not retried from the queue: ";

/// The records a run works on: a re-send's own (named by its id, the Lambda request id when
/// none is given), or the job's.
fn records_of(job_id: &JobId, rerun: Option<&RerunRequest>) -> std::result::Result<Records, String> {
    let Some(rerun) = rerun.filter(|r| r.resend) else { return Ok(Records::of_job(job_id.clone())) };
    let id = match &rerun.resend_id {
        Some(id) => id.clone(),
        None => REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| format!("r{:016x}", fastrand::u64(..))),
    };
    let resend =
        ResendId::parse(&id).ok_or_else(|| format!("resendId {id:?} is not 1 to 64 letters, digits, '-' or '_'"))?;
    Ok(Records::of_resend(job_id.clone(), resend, rerun.fresh_export))
}

fn no_staged_copy(index: &str) -> String {
    format!("{index} is not there (nothing was staged, or the copy expired after 30 days): ask for resend with a fresh export")
}

/// A key right in the folder `prefix`, not in one below it (a re-send's `resends/`).
fn directly_under(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| !rest.contains('/'))
}

fn asks_fresh_export(run: &Run) -> bool {
    run.rerun.as_ref().is_some_and(|r| r.fresh_export)
}

fn allows_stale(run: &Run) -> bool {
    run.rerun.as_ref().is_some_and(|r| r.allow_stale)
}

#[cfg(test)]
mod tests;
