//! The seams the functions talk through, traits only: the staging bucket, Kinaxis, the SAP
//! folder and the jobs queue (secrets have theirs in `secrets`). Adapters implement them on
//! the SDK clients (`aws/`), reqwest (`export`) and libssh2 (`delivery::sftp`), and `memory`
//! in memory for tests that stop a job at any point.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, Result, Step};
use crate::job::{ExportedFile, Manifest, Replaced};
use crate::outlet::Outlets;
use crate::secrets::{KinaxisLogin, SftpCredentials};

/// Parts of one file uploaded at once to the staging bucket: enough to hide a part's round
/// trip, few enough that memory stays a few parts.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Outcome of a conditional create (`If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    AlreadyExists,
}

/// Outcome of a write guarded by a precondition (an ETag, an absent target name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    Written,
    /// The precondition no longer held: somebody else changed the object first.
    Refused,
}

/// An object with the ETag that a later conditional write names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub bytes: Vec<u8>,
    pub etag: String,
    /// When the object was last written, when the store tells.
    pub modified: Option<time::OffsetDateTime>,
}

/// One key of a listing, with what S3 lists of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified: Option<time::OffsetDateTime>,
}

/// A region of a local file: what a staging part is read from, so that no part is held
/// in memory while it goes up (and a retry can read it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    pub path: PathBuf,
    pub offset: u64,
    pub length: u64,
    /// The region's CRC32, when known before the upload: the store checks the bytes it
    /// received against it.
    pub crc32: Option<u32>,
}

/// The staging bucket: job manifests, staged CSVs, delivery records, leases, receipts and
/// failure records.
pub trait ObjectStore: Send + Sync {
    /// The object's bytes, or `None` when there is no such key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// The object with its ETag, or `None` when there is no such key.
    fn get_tagged(&self, key: &str) -> impl Future<Output = Result<Option<Tagged>>> + Send;
    fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> impl Future<Output = Result<()>> + Send;
    /// Writes only when the key does not exist yet; the store decides atomically.
    fn create(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> impl Future<Output = Result<CreateOutcome>> + Send;
    /// Writes only while the object still has `etag` (`If-Match`); the store decides atomically.
    fn replace(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        etag: &str,
    ) -> impl Future<Output = Result<Guarded>> + Send;
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Every key under `prefix`, in key order, page after page.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Listed>>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes the object only while it still has `etag` (`If-Match`); `Refused` when it
    /// changed or is gone.
    fn delete_if_match(&self, key: &str, etag: &str) -> impl Future<Output = Result<Guarded>> + Send;
    /// Uploads a local file (multipart when large) without reading it into memory.
    fn upload_file(&self, key: &str, path: &Path, content_type: &str) -> impl Future<Output = Result<()>> + Send;
    /// Streams the object into a local file; `false` when there is no such key.
    fn download_file(&self, key: &str, path: &Path) -> impl Future<Output = Result<bool>> + Send;

    /// Starts a multipart upload written while the CSV is still being produced; its id. A
    /// store without the capability says so, and the file is staged whole afterwards.
    fn start_multipart(&self, key: &str, _content_type: &str) -> impl Future<Output = Result<String>> + Send {
        let key = key.to_owned();
        async move { Err(Error::transient(Step::Stage, format!("{key}: this store stages whole files only"))) }
    }
    /// Uploads part `number` (from 1) of an upload, read from a region of a local file;
    /// the part's ETag. Parts may go up concurrently; every part but the last holds at
    /// least 5 MiB.
    fn upload_part(
        &self,
        key: &str,
        _upload_id: &str,
        number: u32,
        _part: &FilePart,
    ) -> impl Future<Output = Result<String>> + Send {
        let key = key.to_owned();
        async move { Err(Error::transient(Step::Stage, format!("{key}: part {number}: no multipart uploads here"))) }
    }
    /// Joins the parts, in number order, into the object: only now does it exist.
    fn complete_multipart(
        &self,
        key: &str,
        _upload_id: &str,
        _parts: &[(u32, String)],
    ) -> impl Future<Output = Result<()>> + Send {
        let key = key.to_owned();
        async move { Err(Error::transient(Step::Stage, format!("{key}: no multipart uploads here"))) }
    }
    /// Drops an upload and its parts; nothing of it becomes an object.
    fn abort_multipart(&self, _key: &str, _upload_id: &str) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// Kinaxis: the job's worksheets, fetched and written as CSV files into `dir`, each with its
/// row count, byte count and SHA-256; while each file is written, its bytes also go to
/// `outlets.open(…)` (a blocking writer: write it from a blocking thread, never the executor).
pub trait WorkbookSource: Send + Sync {
    fn export(
        &self,
        manifest: &Manifest,
        login: KinaxisLogin,
        dir: &Path,
        deadline: Instant,
        outlets: &Outlets,
    ) -> impl Future<Output = Result<Vec<ExportedFile>>> + Send;
}

/// An SAP system's inbound folder (SFTP). `open` connects and checks the server is the
/// pinned one; the folder then answers by file name within its directory, and no call on it
/// outlasts `deadline` by more than a moment (a blocking call cannot be cut from outside).
pub trait FileDrop: Send + Sync {
    type Folder: RemoteFolder;
    fn open(
        &self,
        credentials: SftpCredentials,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Folder>> + Send;
}

/// An entry of the remote folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub name: String,
    /// Seconds since the epoch, when the server tells.
    pub modified: Option<u64>,
}

/// One open connection to an SAP inbound folder.
pub trait RemoteFolder: Send {
    /// The full remote path of `name`, for receipts and logs.
    fn path_of(&self, name: &str) -> String;
    /// The size of `name`, `None` when there is no such file.
    fn size(&mut self, name: &str) -> impl Future<Output = Result<Option<u64>>> + Send;
    /// The SHA-256 (hex) of `name` read back, `None` when there is no such file.
    fn sha256(&mut self, name: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Writes the local file to `name`. Stops at `deadline` (checked between chunks) and on
    /// any failure, removing what it wrote.
    fn upload(&mut self, local: &Path, name: &str, deadline: Instant) -> impl Future<Output = Result<()>> + Send;
    /// Writes the chunks arriving on `chunks` to `name` until the channel ends; the bytes
    /// written. Stops at `deadline` and on any failure, removing what it wrote; a failure
    /// drops `chunks`, which tells the sender.
    fn upload_stream(
        &mut self,
        chunks: mpsc::Receiver<Bytes>,
        name: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Renames `from` to `to`; `Refused` when `to` exists (OpenSSH never overwrites on rename).
    fn rename(&mut self, from: &str, to: &str) -> impl Future<Output = Result<Guarded>> + Send;
    /// Renames `from` to `to`, replacing a file under `to`: in one step where the server
    /// can, else removing it first (and saying so).
    fn replace(&mut self, from: &str, to: &str) -> impl Future<Output = Result<Replaced>> + Send;
    /// Removes `name`; no error when it is already gone.
    fn remove(&mut self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn list(&mut self) -> impl Future<Output = Result<Vec<RemoteEntry>>> + Send;
}

/// The jobs queue and its dead-letter queue, for failures the queue should understand.
pub trait JobQueue: Send + Sync {
    /// Keeps the received message invisible for `delay`: its next receive comes then.
    fn retry_later(&self, receipt_handle: &str, delay: Duration) -> impl Future<Output = Result<()>> + Send;
    /// Puts the message on the dead-letter queue now, with `reason` as an attribute.
    fn dead_letter(&self, body: &str, reason: &str) -> impl Future<Output = Result<()>> + Send;
    /// Puts a new message with `body` on the jobs queue, handed out after `delay` (SQS caps
    /// it at 15 minutes).
    fn send_later(&self, body: &str, delay: Duration) -> impl Future<Output = Result<()>> + Send;
}

/// One message of the dead-letter queue, held from other readers while it is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// The worker's `FailureReason` attribute; the queue's own redrive sets none.
    pub reason: Option<String>,
}

/// The dead-letter queue as an operator works it: read, delete, put back, or send the job
/// to the jobs queue again.
pub trait DeadLetters: Send + Sync {
    /// Up to 10 messages, each hidden from other readers for `hold`.
    fn receive(&self, hold: Duration) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;
    fn delete(&self, receipt_handle: &str) -> impl Future<Output = Result<()>> + Send;
    /// Visible again at once: left for later.
    fn release(&self, receipt_handle: &str) -> impl Future<Output = Result<()>> + Send;
    /// The body onto the jobs queue, to be run again.
    fn send_back(&self, body: &str) -> impl Future<Output = Result<()>> + Send;
}
