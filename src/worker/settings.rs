//! The worker's own settings: secrets to read, retries and the deadline margin, the queue's
//! redelivery schedule, stale batches, leases, profiles and streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::job::{ExistingFilePolicy, Profiles};
use crate::retry::RetryPolicy;
use crate::routing::Target;
use crate::worker::stream::StreamOptions;

/// What the worker's job lifecycle is told at start-up (from `config`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The CloudFormation stack: a dimension of every metric.
    pub stack_name: String,
    pub kinaxis_secret_id: String,
    pub sftp_secret_ids: BTreeMap<Target, String>,
    pub retry: RetryPolicy,
    /// Kept free before the function's timeout to record the outcome: every step stops
    /// this long before it (`RETRY_DEADLINE_MARGIN_SECS`).
    pub deadline_margin: Duration,
    /// How the jobs queue is told about failures.
    pub queue: QueueSettings,
    /// A job older than the latest delivered batch of its file name and target.
    pub stale_batch: StaleBatch,
    /// A worksheet with fewer rows is not delivered (`MIN_ROWS`).
    pub min_rows: u64,
    /// How long past the function's deadline a lease still holds (`LEASE_GRACE_SECS`).
    pub lease_grace: Duration,
    /// The CSV dialect, encoding, file names and trigger file, per target.
    pub profiles: Profiles,
    /// Where CSVs are written before staging (Lambda's ephemeral `/tmp`).
    pub spool_dir: PathBuf,
    /// How the export streams to staging and SFTP while it runs (`STREAM_*`).
    pub stream: StreamOptions,
    /// What to do when the final file is already on the server (`SFTP_EXISTING_FILE`).
    pub existing_file: ExistingFilePolicy,
    /// How often a job waiting for another job to finish writing its SAP destination looks
    /// again.
    pub destination_poll: Duration,
    /// The SAP pickup watchdog's settings.
    pub pickup: PickupSettings,
}

/// What the SAP pickup watchdog looks at: files delivered within `lookback`, each target's
/// checked once its limit has passed since the delivery (a zero limit: not watched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupSettings {
    pub lookback: Duration,
    pub sla: BTreeMap<Target, Duration>,
}

/// Time kept after the last step to write `failed/` and emit the metric.
pub const RECORD_OUTCOME_BUDGET: Duration = Duration::from_secs(2);

/// How failures reach the jobs queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub jobs_queue_url: String,
    pub dead_letter_queue_url: String,
    /// The queue's `maxReceiveCount`: a transient failure on this receive is the last.
    pub max_receive_count: u32,
    /// How long a message waits before its next receive, by the receive that failed
    /// (the last entry repeats): `RETRY_VISIBILITY_SECS`.
    pub visibility_delays: Vec<Duration>,
    /// How many times the last receive of a job held by another run is checked again later,
    /// before it goes to the dead-letter queue.
    pub lease_checks: u32,
}

impl QueueSettings {
    /// The wait before the receive after `receive_count` (1-based).
    pub fn delay_after(&self, receive_count: u32) -> Duration {
        let index = (receive_count.max(1) as usize - 1).min(self.visibility_delays.len().saturating_sub(1));
        self.visibility_delays.get(index).copied().unwrap_or(Duration::from_secs(300))
    }
}

/// What to do with a job older than the latest batch already delivered for its file name
/// and target: SAP MRP replaces planned orders with the newest file it reads, so an older
/// batch delivered after a newer one rolls the plan back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleBatch {
    /// Not delivered: a permanent failure naming both jobs.
    Fail,
    /// Not delivered: the job ends with a receipt that says why.
    Skip,
    /// Delivered anyway.
    Deliver,
}

impl FromStr for StaleBatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            "deliver" => Ok(Self::Deliver),
            other => Err(format!("{other:?} is not one of fail, skip, deliver")),
        }
    }
}
