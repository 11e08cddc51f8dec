//! The seams to the outside world: the staging bucket, secrets, Kinaxis, the SAP folder and
//! the jobs queue. The domain talks to these traits; adapters implement them on the SDK
//! clients (`aws/`), reqwest (`export`) and libssh2 (`sftp`), and `memory` implements them
//! in memory for tests that stop a job at any point.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, Result, Step};
use crate::export::ExportedFile;
use crate::job::Manifest;
use crate::secrets::{KinaxisLogin, SftpCredentials};

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

/// How `RemoteFolder::replace` replaced the file that stood under the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replaced {
    /// In one step (`posix-rename@openssh.com`): a reader always saw one complete file.
    Atomically,
    /// The server lacks an atomic rename: removed, then renamed; for a moment there was none.
    RemovedFirst,
}

/// An object with the ETag that a later conditional write names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub bytes: Vec<u8>,
    pub etag: String,
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
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
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
    /// Uploads part `number` (from 1) of an upload; the part's ETag. Parts may go up
    /// concurrently; every part but the last holds at least 5 MiB.
    fn upload_part(
        &self,
        key: &str,
        _upload_id: &str,
        number: u32,
        _bytes: Bytes,
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

/// Secrets Manager: a secret's string by its id.
pub trait SecretSource: Send + Sync {
    fn secret_string(&self, secret_id: &str) -> impl Future<Output = Result<SecretString>> + Send;
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

/// One CSV on its way while the export writes it: the same bytes, in order, to the staging
/// upload and to the SFTP temporary. A channel that ends without `Outlet::finish` having
/// been called belongs to an export that failed.
#[derive(Debug)]
pub struct StreamedFile {
    pub worksheet: String,
    pub file_name: String,
    pub staging: mpsc::Receiver<Bytes>,
    pub remote: mpsc::Receiver<Bytes>,
}

/// Where the export announces each file it starts writing; `none()` streams nothing.
#[derive(Debug, Clone, Default)]
pub struct Outlets {
    files: Option<mpsc::UnboundedSender<StreamedFile>>,
    chunk_bytes: usize,
    depth: usize,
}

impl Outlets {
    pub fn none() -> Self {
        Self::default()
    }

    /// Files announced on the receiver; bytes handed on in chunks of `chunk_bytes`, at most
    /// `depth` chunks waiting per destination (the writer blocks beyond that).
    pub fn new(chunk_bytes: usize, depth: usize) -> (Self, mpsc::UnboundedReceiver<StreamedFile>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { files: Some(tx), chunk_bytes: chunk_bytes.max(1), depth: depth.max(1) }, rx)
    }

    /// The writer for a file that starts now.
    pub fn open(&self, worksheet: &str, file_name: &str) -> Outlet {
        let Some(files) = &self.files else { return Outlet::default() };
        let (staging_tx, staging) = mpsc::channel(self.depth);
        let (remote_tx, remote) = mpsc::channel(self.depth);
        let announced = files.send(StreamedFile {
            worksheet: worksheet.to_owned(),
            file_name: file_name.to_owned(),
            staging,
            remote,
        });
        if announced.is_err() {
            return Outlet::default();
        }
        Outlet { senders: vec![staging_tx, remote_tx], buffer: BytesMut::new(), chunk_bytes: self.chunk_bytes }
    }
}

/// A blocking writer that hands its bytes on in chunks to every destination still
/// listening. A destination that stops listening (its upload failed) is dropped; the
/// writer itself never fails, so neither staging nor SFTP can fail the export.
#[derive(Debug, Default)]
pub struct Outlet {
    senders: Vec<mpsc::Sender<Bytes>>,
    buffer: BytesMut,
    chunk_bytes: usize,
}

impl Outlet {
    fn hand_on(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let chunk = self.buffer.split().freeze();
        // Blocks while a destination is `depth` chunks behind: back-pressure on the export.
        self.senders.retain(|sender| sender.blocking_send(chunk.clone()).is_ok());
    }

    /// The file is complete: the last bytes go, and the channels end.
    pub fn finish(mut self) {
        self.hand_on();
    }
}

impl Write for Outlet {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.senders.is_empty() {
            return Ok(buf.len());
        }
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= self.chunk_bytes {
            self.hand_on();
        }
        Ok(buf.len())
    }

    /// Chunks go at their size or at `finish`: a flush sends nothing early.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
}
