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
    stall: Duration,
}

impl Outlets {
    pub fn none() -> Self {
        Self::default()
    }

    /// Files announced on the receiver; bytes handed on in chunks of `chunk_bytes`, at most
    /// `depth` chunks waiting per destination; a destination that has kept the writer
    /// waiting `stall` in all is dropped (its stream then falls back), so the export never
    /// waits longer on it.
    pub fn new(chunk_bytes: usize, depth: usize, stall: Duration) -> (Self, mpsc::UnboundedReceiver<StreamedFile>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { files: Some(tx), chunk_bytes: chunk_bytes.max(1), depth: depth.max(1), stall }, rx)
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
        Outlet {
            senders: vec![
                Destination { name: "staging", sender: staging_tx, waited: Duration::ZERO },
                Destination { name: "sftp", sender: remote_tx, waited: Duration::ZERO },
            ],
            buffer: BytesMut::with_capacity(self.chunk_bytes),
            chunk_bytes: self.chunk_bytes,
            stall: self.stall,
            file_name: file_name.to_owned(),
        }
    }
}

/// A blocking writer that hands its bytes on in chunks to every destination still
/// listening. A destination that stops listening (its upload failed), or has kept the
/// writer waiting for `stall` in all (its upload is stuck, or slower than the export), is
/// dropped: its channel then ends short of the file, which its stream sees by the byte
/// count. The writer itself never fails and waits at most `stall` per destination and
/// file, so neither staging nor SFTP can fail or hold up the export.
#[derive(Debug, Default)]
pub struct Outlet {
    senders: Vec<Destination>,
    buffer: BytesMut,
    chunk_bytes: usize,
    stall: Duration,
    file_name: String,
}

impl Outlet {
    fn hand_on(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let chunk = self.buffer.split().freeze();
        let (stall, file_name) = (self.stall, &self.file_name);
        self.senders.retain_mut(|destination| {
            let started = std::time::Instant::now();
            let handed = send_within(&destination.sender, chunk.clone(), stall.saturating_sub(destination.waited));
            destination.waited += started.elapsed();
            match handed {
                Handed::Sent => true,
                Handed::Closed => false,
                Handed::Stalled => {
                    tracing::warn!(
                        file = %file_name,
                        destination = destination.name,
                        stall_ms = stall.as_millis() as u64,
                        "a stream kept the export waiting too long; it stops here and the file goes the ordinary way"
                    );
                    false
                }
            }
        });
    }

    /// The file is complete: the last bytes go, and the channels end.
    pub fn finish(mut self) {
        self.hand_on();
    }

    /// Destinations still listening.
    pub fn listening(&self) -> usize {
        self.senders.len()
    }
}

#[derive(Debug)]
struct Destination {
    name: &'static str,
    sender: mpsc::Sender<Bytes>,
    /// How long the writer has waited on it so far.
    waited: Duration,
}

enum Handed {
    Sent,
    Closed,
    Stalled,
}

/// Sends without waiting when there is room, else waits at most `bound` for it. Blocks the
/// calling thread (parked, not spinning): call it from a blocking thread.
fn send_within(sender: &mpsc::Sender<Bytes>, chunk: Bytes, bound: Duration) -> Handed {
    use mpsc::error::TrySendError;
    match sender.try_send(chunk) {
        Ok(()) => Handed::Sent,
        Err(TrySendError::Closed(_)) => Handed::Closed,
        Err(TrySendError::Full(chunk)) => match block_within(sender.reserve(), bound) {
            Some(Ok(permit)) => {
                permit.send(chunk);
                Handed::Sent
            }
            Some(Err(_)) => Handed::Closed,
            None => Handed::Stalled,
        },
    }
}

/// Drives `future` on this (blocking) thread until it completes or `bound` passes; `None`
/// on the bound. The thread sleeps between wake-ups. Channel futures need no runtime, so a
/// blocking thread can wait on one with a limit, which `blocking_send`/`blocking_recv`
/// cannot.
pub fn block_within<F: Future>(future: F, bound: Duration) -> Option<F::Output> {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let until = std::time::Instant::now() + bound;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = std::time::Instant::now();
        if now >= until {
            return None;
        }
        // A spurious wake-up only polls again.
        std::thread::park_timeout(until - now);
    }
}

impl Write for Outlet {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.senders.is_empty() {
            return Ok(buf.len());
        }
        // A chunk is filled in place, in a buffer allocated at its full size: grown write by
        // write it would be copied on each doubling. What does not fit goes in the next one
        // (chunks may so be a little short; staging regroups them into parts).
        if self.buffer.capacity() - self.buffer.len() < buf.len() {
            self.hand_on();
            self.buffer.reserve(self.chunk_bytes.max(buf.len()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_that_stays_full_is_dropped_after_the_bound_and_the_other_gets_every_byte() {
        let (outlets, mut announced) = Outlets::new(4, 1, Duration::from_millis(30));
        let mut outlet = outlets.open("Sheet", "sheet.csv");
        let StreamedFile { mut staging, remote, .. } = announced.try_recv().expect("announced");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(chunk) = staging.blocking_recv() {
                got.extend_from_slice(&chunk);
            }
            got
        });
        let data: Vec<u8> = (0..200u8).collect();
        for piece in data.chunks(3) {
            outlet.write_all(piece).unwrap();
        }
        // `remote` is never read: held, not dropped, as by a stalled upload.
        assert_eq!(outlet.listening(), 1, "the stalled destination is dropped, the live one kept");
        outlet.finish();
        assert_eq!(reader.join().unwrap(), data);
        drop(remote);
    }

    #[test]
    fn a_destination_slower_than_the_writer_is_dropped_once_it_kept_the_writer_waiting_the_bound_in_all() {
        let (outlets, mut announced) = Outlets::new(1, 1, Duration::from_millis(50));
        let mut outlet = outlets.open("Sheet", "sheet.csv");
        let StreamedFile { mut staging, remote, .. } = announced.try_recv().expect("announced");
        drop(remote);
        // Each chunk is taken, but 5 ms late: no single wait is long, their sum is.
        let reader = std::thread::spawn(move || {
            let mut got = 0;
            while let Some(chunk) = staging.blocking_recv() {
                got += chunk.len();
                std::thread::sleep(Duration::from_millis(5));
            }
            got
        });
        let data = vec![7u8; 400];
        for piece in data.chunks(1) {
            outlet.write_all(piece).unwrap();
        }
        assert_eq!(outlet.listening(), 0, "the slow destination is dropped");
        outlet.finish();
        let got = reader.join().unwrap();
        assert!(got < data.len(), "it got {got} of {} bytes: its stream ends short", data.len());
    }

    #[test]
    fn a_wait_within_a_bound_returns_what_arrives_in_time_and_none_after() {
        let (tx, mut rx) = mpsc::channel::<u8>(1);
        assert_eq!(block_within(rx.recv(), Duration::from_millis(20)), None);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.blocking_send(7).unwrap();
        });
        assert_eq!(block_within(rx.recv(), Duration::from_secs(5)), Some(Some(7)));
        sender.join().unwrap();
        assert_eq!(block_within(rx.recv(), Duration::from_secs(5)), Some(None), "the channel ended");
    }
}
