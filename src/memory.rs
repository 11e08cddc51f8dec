//! In-memory adapters of every port, for tests and benchmarks: a job can be stopped at any
//! point (a crash: the run's future never resumes, as under SIGKILL) and the world it leaves
//! behind inspected, in milliseconds. Never wired into the Lambda binaries.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::csv_out::FileStats;
use crate::error::{Error, Result, Step};
use crate::export::ExportedFile;
use crate::job::{self, Manifest, StagedFile};
use crate::ports::{
    CreateOutcome, FileDrop, Guarded, JobQueue, ObjectStore, Outlets, RemoteEntry, RemoteFolder, Replaced,
    SecretSource, Tagged, WorkbookSource,
};
use crate::secrets::{KinaxisLogin, SftpCredentials};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has already failed; keep its state readable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a crash strikes: the first operation named `operation` on a key or file name
/// containing `name_contains`, before it takes effect or just after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub operation: &'static str,
    pub name_contains: String,
    pub after: bool,
    /// Matching operations to let through first.
    pub skip: u32,
}

/// Arms one crash and tells when it struck. A struck operation never returns, so the run
/// stops there and nothing after it happens, as when Lambda kills the process.
#[derive(Debug, Default)]
pub struct Crash {
    armed: Mutex<Option<CrashPoint>>,
    struck: Notify,
    has_struck: std::sync::atomic::AtomicBool,
}

impl Crash {
    pub fn arm(&self, operation: &'static str, name_contains: impl Into<String>, after: bool) {
        self.arm_nth(operation, name_contains, after, 0);
    }

    /// As `arm`, striking the match after `skip` matching operations went through.
    pub fn arm_nth(&self, operation: &'static str, name_contains: impl Into<String>, after: bool, skip: u32) {
        *lock(&self.armed) = Some(CrashPoint { operation, name_contains: name_contains.into(), after, skip });
        self.has_struck.store(false, Ordering::SeqCst);
    }

    /// Resolves once the armed crash has struck.
    pub async fn struck(&self) {
        loop {
            let notified = self.struck.notified();
            if self.has_struck.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Disarms and strikes when `operation` on `name` matches, at the `after` moment.
    fn check(&self, operation: &str, name: &str, after: bool) -> bool {
        let mut armed = lock(&self.armed);
        let Some(point) = armed.as_mut() else { return false };
        if point.operation != operation || point.after != after || !name.contains(&point.name_contains) {
            return false;
        }
        if point.skip > 0 {
            point.skip -= 1;
            return false;
        }
        *armed = None;
        self.has_struck.store(true, Ordering::SeqCst);
        self.struck.notify_waiters();
        true
    }

    async fn point(&self, operation: &str, name: &str, after: bool) {
        if self.check(operation, name, after) {
            std::future::pending::<()>().await;
        }
    }
}

/// A failure to inject: the next `times` calls of `operation` on a matching name fail.
#[derive(Debug, Clone)]
struct Fault {
    operation: &'static str,
    name_contains: String,
    /// Matching calls to let through first.
    skip: u32,
    times: u32,
    transient: bool,
}

#[derive(Debug, Default)]
struct Faults(Mutex<Vec<Fault>>);

impl Faults {
    fn add(&self, operation: &'static str, name_contains: &str, times: u32, transient: bool) {
        self.add_nth(operation, name_contains, 0, times, transient);
    }

    fn add_nth(&self, operation: &'static str, name_contains: &str, skip: u32, times: u32, transient: bool) {
        lock(&self.0).push(Fault { operation, name_contains: name_contains.to_owned(), skip, times, transient });
    }

    fn take(&self, operation: &str, name: &str, step: Step) -> Result<()> {
        let mut faults = lock(&self.0);
        let Some(fault) =
            faults.iter_mut().find(|f| f.operation == operation && f.times > 0 && name.contains(&f.name_contains))
        else {
            return Ok(());
        };
        if fault.skip > 0 {
            fault.skip -= 1;
            return Ok(());
        }
        fault.times -= 1;
        let message = format!("{operation} {name}: injected failure");
        Err(if fault.transient { Error::transient(step, message) } else { Error::permanent(step, message) })
    }
}

// ------------------------------------------------------------------------ object store

/// A multipart upload under way: its key and the parts received so far.
#[derive(Debug, Default)]
struct OpenUpload {
    key: String,
    parts: BTreeMap<u32, (Vec<u8>, String)>,
}

/// A bucket in memory, with S3's conditional writes (ETags as version numbers) and its
/// multipart uploads (an object only once completed).
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    uploads: Mutex<BTreeMap<String, OpenUpload>>,
    versions: AtomicU64,
    pub crash: Crash,
    faults: Faults,
    landed_faults: Faults,
    /// Every call, as "operation key", in order.
    calls: Mutex<Vec<String>>,
}

impl MemoryStore {
    /// Calls made so far, as "operation key".
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next `times` calls of `operation` (`get`, `put`, `create`, `replace`, `delete`,
    /// `upload_file`, …) on keys containing `key_contains` fail, transient or permanent.
    pub fn fail(&self, operation: &'static str, key_contains: &str, times: u32, transient: bool) {
        self.faults.add(operation, key_contains, times, transient);
    }

    /// As `fail`, but the write lands first: S3 took it, the answer was lost (a timeout
    /// after the PUT, a reset connection).
    pub fn fail_after_landing(&self, operation: &'static str, key_contains: &str, times: u32) {
        self.landed_faults.add(operation, key_contains, times, true);
    }

    /// As `fail_after_landing`, after `skip` matching calls went through.
    pub fn fail_after_landing_nth(&self, operation: &'static str, key_contains: &str, skip: u32, times: u32) {
        self.landed_faults.add_nth(operation, key_contains, skip, times, true);
    }

    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.objects).get(key).map(|(bytes, _)| bytes.clone())
    }

    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        self.object(key).and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        lock(&self.objects).keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    /// Keys of the multipart uploads neither completed nor aborted (storage S3 would bill).
    pub fn open_uploads(&self) -> Vec<String> {
        lock(&self.uploads).values().map(|u| u.key.clone()).collect()
    }

    pub fn insert(&self, key: &str, bytes: Vec<u8>) {
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.objects).insert(key.to_owned(), (bytes, version));
    }

    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }

    async fn enter(&self, operation: &str, key: &str) -> Result<()> {
        // Every call gives way once, as a network call would: concurrent runs interleave.
        tokio::task::yield_now().await;
        lock(&self.calls).push(format!("{operation} {key}"));
        self.crash.point(operation, key, false).await;
        self.faults.take(operation, key, Step::Stage)
    }

    async fn leave(&self, operation: &str, key: &str) -> Result<()> {
        self.crash.point(operation, key, true).await;
        self.landed_faults.take(operation, key, Step::Stage)
    }
}

impl ObjectStore for Arc<MemoryStore> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.enter("get", key).await?;
        Ok(self.object(key))
    }

    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>> {
        self.enter("get", key).await?;
        let found = lock(&self.objects).get(key).map(|(bytes, v)| Tagged { bytes: bytes.clone(), etag: v.to_string() });
        Ok(found)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<()> {
        self.enter("put", key).await?;
        self.insert(key, bytes);
        self.leave("put", key).await
    }

    async fn create(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<CreateOutcome> {
        self.enter("create", key).await?;
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = {
            let mut objects = lock(&self.objects);
            if objects.contains_key(key) {
                CreateOutcome::AlreadyExists
            } else {
                objects.insert(key.to_owned(), (bytes, version));
                CreateOutcome::Created
            }
        };
        self.leave("create", key).await?;
        Ok(outcome)
    }

    async fn replace(&self, key: &str, bytes: Vec<u8>, _content_type: &str, etag: &str) -> Result<Guarded> {
        self.enter("replace", key).await?;
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = {
            let mut objects = lock(&self.objects);
            match objects.get(key) {
                Some((_, current)) if current.to_string() == etag => {
                    objects.insert(key.to_owned(), (bytes, version));
                    Guarded::Written
                }
                _ => Guarded::Refused,
            }
        };
        self.leave("replace", key).await?;
        Ok(outcome)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.enter("exists", key).await?;
        Ok(lock(&self.objects).contains_key(key))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.enter("delete", key).await?;
        self.remove(key);
        self.leave("delete", key).await
    }

    async fn upload_file(&self, key: &str, path: &Path, _content_type: &str) -> Result<()> {
        self.enter("upload_file", key).await?;
        let bytes = std::fs::read(path)
            .map_err(|e| Error::transient(Step::Stage, format!("reading {}", path.display())).caused_by(e))?;
        self.insert(key, bytes);
        self.leave("upload_file", key).await
    }

    async fn start_multipart(&self, key: &str, _content_type: &str) -> Result<String> {
        self.enter("start_multipart", key).await?;
        let id = format!("upload-{}", self.versions.fetch_add(1, Ordering::SeqCst) + 1);
        lock(&self.uploads).insert(id.clone(), OpenUpload { key: key.to_owned(), parts: BTreeMap::new() });
        self.leave("start_multipart", key).await?;
        Ok(id)
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, bytes: bytes::Bytes) -> Result<String> {
        self.enter("upload_part", key).await?;
        let etag = job::sha256_hex(&bytes);
        match lock(&self.uploads).get_mut(upload_id) {
            Some(upload) if upload.key == key && number >= 1 => {
                upload.parts.insert(number, (bytes.to_vec(), etag.clone()));
            }
            _ => return Err(Error::permanent(Step::Stage, format!("{key}: no such upload {upload_id}"))),
        }
        self.leave("upload_part", key).await?;
        Ok(etag)
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<()> {
        self.enter("complete_multipart", key).await?;
        let joined = {
            let mut uploads = lock(&self.uploads);
            let upload = uploads
                .get(upload_id)
                .filter(|u| u.key == key)
                .ok_or_else(|| Error::permanent(Step::Stage, format!("{key}: no such upload {upload_id}")))?;
            // As S3: the listed parts, numbered upwards, each as uploaded (its ETag).
            let mut joined = Vec::new();
            let mut previous = 0;
            for (number, etag) in parts {
                match upload.parts.get(number) {
                    Some((bytes, tag)) if tag == etag && *number > previous => joined.extend_from_slice(bytes),
                    _ => return Err(Error::permanent(Step::Stage, format!("{key}: part {number} is not as listed"))),
                }
                previous = *number;
            }
            uploads.remove(upload_id);
            joined
        };
        self.insert(key, joined);
        self.leave("complete_multipart", key).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.enter("abort_multipart", key).await?;
        lock(&self.uploads).remove(upload_id);
        self.leave("abort_multipart", key).await
    }

    async fn download_file(&self, key: &str, path: &Path) -> Result<bool> {
        self.enter("download_file", key).await?;
        let Some(bytes) = self.object(key) else { return Ok(false) };
        std::fs::write(path, bytes)
            .map_err(|e| Error::transient(Step::Stage, format!("writing {}", path.display())).caused_by(e))?;
        Ok(true)
    }
}

// ------------------------------------------------------------------------ secrets

/// Secrets by id, as JSON strings.
#[derive(Debug, Default)]
pub struct MemorySecrets(pub HashMap<String, String>);

impl SecretSource for MemorySecrets {
    async fn secret_string(&self, secret_id: &str) -> Result<SecretString> {
        self.0
            .get(secret_id)
            .map(|value| SecretString::from(value.clone()))
            .ok_or_else(|| Error::permanent(Step::Secrets, format!("secret {secret_id} does not exist")))
    }
}

// ------------------------------------------------------------------------ Kinaxis

/// Exports generated worksheets. Each export's rows carry the export's number, so two
/// exports of one job differ, as two reads of a live plan can.
#[derive(Debug)]
pub struct MemorySource {
    pub worksheets: Vec<(String, u64)>,
    /// How long one export takes, in milliseconds (sleeping; a deadline can cut it).
    latency_ms: AtomicU64,
    exports: AtomicU64,
    faults: Faults,
}

impl MemorySource {
    /// One worksheet of `rows` rows.
    pub fn new(rows: u64) -> Arc<Self> {
        Self::with_worksheets(&[("Planned Orders", rows)])
    }

    pub fn with_worksheets(worksheets: &[(&str, u64)]) -> Arc<Self> {
        Arc::new(Self {
            worksheets: worksheets.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            latency_ms: AtomicU64::new(0),
            exports: AtomicU64::new(0),
            faults: Faults::default(),
        })
    }

    pub fn with_latency(self: Arc<Self>, latency: Duration) -> Arc<Self> {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::SeqCst);
        self
    }

    /// How many exports were started.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::SeqCst)
    }

    /// The next `times` exports fail.
    pub fn fail(&self, times: u32, transient: bool) {
        self.faults.add("export", "", times, transient);
    }

    /// The next `times` exports fail halfway through writing their first file (a page
    /// that never comes): what was streamed so far must not reach SAP.
    pub fn fail_midway(&self, times: u32, transient: bool) {
        self.faults.add("midway", "", times, transient);
    }
}

/// The generated file is handed to the outlet in pieces of this size, as a converter
/// writes a file page by page.
const MEMORY_SOURCE_PIECE: usize = 64;

impl WorkbookSource for Arc<MemorySource> {
    async fn export(
        &self,
        manifest: &Manifest,
        _login: KinaxisLogin,
        dir: &Path,
        deadline: Instant,
        outlets: &Outlets,
    ) -> Result<Vec<ExportedFile>> {
        let number = self.exports.fetch_add(1, Ordering::SeqCst) + 1;
        self.faults.take("export", "", Step::Fetch)?;
        if tokio::time::timeout_at(
            deadline,
            tokio::time::sleep(Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))),
        )
        .await
        .is_err()
        {
            return Err(crate::retry::deadline_reached(Step::Fetch, "exporting from the in-memory source"));
        }
        let several = self.worksheets.len() > 1;
        let mut files = Vec::new();
        for (worksheet, rows) in &self.worksheets {
            let file_name = job::csv_file_name(&job::FileNameTemplate::default(), manifest, worksheet, several);
            let mut csv = String::from("Order,Quantity\r\n");
            for row in 0..*rows {
                csv.push_str(&format!("PO-{row},{number}\r\n"));
            }
            let path = dir.join(&file_name);
            std::fs::write(&path, &csv)
                .map_err(|e| Error::transient(Step::Convert, format!("writing {}", path.display())).caused_by(e))?;
            // The outlet is a blocking writer: written from a blocking thread, as the
            // converter writes it.
            let mut outlet = outlets.open(worksheet, &file_name);
            let midway = if files.is_empty() { self.faults.take("midway", "", Step::Fetch).err() } else { None };
            let bytes = csv.clone().into_bytes();
            let streamed = tokio::task::spawn_blocking(move || {
                let half = bytes.len() / 2;
                for (index, piece) in bytes.chunks(MEMORY_SOURCE_PIECE).enumerate() {
                    if midway.is_some() && index * MEMORY_SOURCE_PIECE >= half {
                        return Err(midway.unwrap_or_else(|| Error::transient(Step::Fetch, "cut")));
                    }
                    let _ = std::io::Write::write_all(&mut outlet, piece);
                }
                outlet.finish();
                Ok(())
            })
            .await
            .map_err(|e| Error::transient(Step::Convert, "the writing thread stopped").caused_by(e))?;
            streamed?;
            let stats = FileStats {
                rows: *rows,
                bytes: csv.len() as u64,
                sha256: job::sha256_hex(csv.as_bytes()),
                kinaxis_total_row_count: Some(*rows),
                ..FileStats::default()
            };
            files.push(ExportedFile { file: StagedFile { worksheet: worksheet.clone(), file_name, stats }, path });
        }
        Ok(files)
    }
}

// ------------------------------------------------------------------------ SAP folder

#[derive(Debug, Default)]
struct FolderState {
    files: BTreeMap<String, Vec<u8>>,
    /// When each file was last written (seconds since the epoch).
    modified: BTreeMap<String, u64>,
    /// Every name a rename has ever made appear (what SAP could have picked up).
    appeared: Vec<String>,
    /// Every operation, in order: `upload .x.part`, `rename x.csv`, …
    operations: Vec<String>,
}

/// One SAP folder in memory; `take` is SAP's inbound job moving a file away.
#[derive(Debug, Default)]
pub struct MemoryDrop {
    state: Mutex<FolderState>,
    pub crash: Crash,
    faults: Faults,
    /// Bytes written per step of an upload, and the pause after each (a slow link).
    pub upload_chunk: usize,
    pub upload_pause: Duration,
    /// A server without `posix-rename@openssh.com`: `replace` removes, then renames.
    pub no_atomic_rename: std::sync::atomic::AtomicBool,
}

impl MemoryDrop {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { upload_chunk: 64 * 1024, ..Self::default() })
    }

    /// An upload link so slow that a deadline can fall in the middle of a file.
    pub fn slow(chunk: usize, pause: Duration) -> Arc<Self> {
        Arc::new(Self { upload_chunk: chunk.max(1), upload_pause: pause, ..Self::default() })
    }

    /// The next `times` calls of `operation` (`open`, `upload`, `rename`, …) on matching
    /// names fail.
    pub fn fail(&self, operation: &'static str, name_contains: &str, times: u32, transient: bool) {
        self.faults.add(operation, name_contains, times, transient);
    }

    /// The visible files (what SAP's pickup would take): every name but hidden ones.
    pub fn files(&self) -> Vec<String> {
        lock(&self.state).files.keys().filter(|n| !n.starts_with('.')).cloned().collect()
    }

    pub fn all_files(&self) -> Vec<String> {
        lock(&self.state).files.keys().cloned().collect()
    }

    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.state).files.get(name).cloned()
    }

    /// Every final name that ever appeared, once per appearance.
    pub fn appeared(&self) -> Vec<String> {
        lock(&self.state).appeared.clone()
    }

    /// SAP's inbound job takes every visible file away.
    pub fn take_all(&self) -> Vec<String> {
        let mut state = lock(&self.state);
        let visible: Vec<String> = state.files.keys().filter(|n| !n.starts_with('.')).cloned().collect();
        for name in &visible {
            state.files.remove(name);
        }
        visible
    }

    /// SAP's inbound job takes one file away (a trigger it deletes before reading the data);
    /// whether it was there.
    pub fn take(&self, name: &str) -> bool {
        lock(&self.state).files.remove(name).is_some()
    }

    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let mut state = lock(&self.state);
        state.files.insert(name.to_owned(), bytes.to_vec());
        state.modified.insert(name.to_owned(), now_secs());
    }

    /// Backdates a file, as if it had been written `seconds` ago.
    pub fn age(&self, name: &str, seconds: u64) {
        let mut state = lock(&self.state);
        if let Some(modified) = state.modified.get_mut(name) {
            *modified = modified.saturating_sub(seconds);
        }
    }

    pub fn operations(&self) -> Vec<String> {
        lock(&self.state).operations.clone()
    }

    async fn enter(&self, operation: &str, name: &str) -> Result<()> {
        self.crash.point(operation, name, false).await;
        self.faults.take(operation, name, Step::Deliver)?;
        lock(&self.state).operations.push(format!("{operation} {name}"));
        Ok(())
    }
}

impl FileDrop for Arc<MemoryDrop> {
    type Folder = MemoryFolder;

    async fn open(&self, credentials: SftpCredentials, _deadline: Instant) -> Result<MemoryFolder> {
        self.enter("open", &credentials.host).await?;
        Ok(MemoryFolder { drop: Arc::clone(self), dir: credentials.remote_dir.trim_end_matches('/').to_owned() })
    }
}

pub struct MemoryFolder {
    drop: Arc<MemoryDrop>,
    dir: String,
}

impl RemoteFolder for MemoryFolder {
    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    async fn size(&mut self, name: &str) -> Result<Option<u64>> {
        self.drop.enter("size", name).await?;
        Ok(lock(&self.drop.state).files.get(name).map(|b| b.len() as u64))
    }

    async fn sha256(&mut self, name: &str) -> Result<Option<String>> {
        self.drop.enter("sha256", name).await?;
        Ok(lock(&self.drop.state).files.get(name).map(|b| hex::encode(Sha256::digest(b))))
    }

    async fn upload(&mut self, local: &Path, name: &str, deadline: Instant) -> Result<()> {
        self.drop.enter("upload", name).await?;
        let bytes = std::fs::read(local)
            .map_err(|e| Error::transient(Step::Deliver, format!("reading {}", local.display())).caused_by(e))?;
        {
            let mut state = lock(&self.drop.state);
            state.files.insert(name.to_owned(), Vec::new());
            state.modified.insert(name.to_owned(), now_secs());
        }
        for chunk in bytes.chunks(self.drop.upload_chunk.max(1)) {
            if Instant::now() >= deadline {
                lock(&self.drop.state).files.remove(name);
                return Err(crate::retry::deadline_reached(Step::Deliver, &format!("uploading {name}")));
            }
            if let Some(file) = lock(&self.drop.state).files.get_mut(name) {
                file.extend_from_slice(chunk);
            }
            if !self.drop.upload_pause.is_zero() {
                tokio::time::sleep(self.drop.upload_pause).await;
            }
        }
        self.drop.crash.point("upload", name, true).await;
        Ok(())
    }

    /// Each chunk is a `stream_chunk` operation (crash and fault points within the stream).
    async fn upload_stream(
        &mut self,
        mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        name: &str,
        deadline: Instant,
    ) -> Result<u64> {
        self.drop.enter("upload_stream", name).await?;
        {
            let mut state = lock(&self.drop.state);
            state.files.insert(name.to_owned(), Vec::new());
            state.modified.insert(name.to_owned(), now_secs());
        }
        let mut sent = 0u64;
        let written: Result<()> = async {
            loop {
                let chunk = match tokio::time::timeout_at(deadline, chunks.recv()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => return Ok(()),
                    Err(_) => return Err(crate::retry::deadline_reached(Step::Deliver, &format!("streaming {name}"))),
                };
                self.drop.crash.point("stream_chunk", name, false).await;
                self.drop.faults.take("stream_chunk", name, Step::Deliver)?;
                for piece in chunk.chunks(self.drop.upload_chunk.max(1)) {
                    if Instant::now() >= deadline {
                        return Err(crate::retry::deadline_reached(Step::Deliver, &format!("streaming {name}")));
                    }
                    if let Some(file) = lock(&self.drop.state).files.get_mut(name) {
                        file.extend_from_slice(piece);
                    }
                    sent += piece.len() as u64;
                    if !self.drop.upload_pause.is_zero() {
                        tokio::time::sleep(self.drop.upload_pause).await;
                    }
                }
            }
        }
        .await;
        if let Err(err) = written {
            lock(&self.drop.state).files.remove(name);
            return Err(err);
        }
        self.drop.crash.point("upload_stream", name, true).await;
        Ok(sent)
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<Guarded> {
        self.drop.enter("rename", to).await?;
        let outcome = {
            let mut state = lock(&self.drop.state);
            if state.files.contains_key(to) {
                Guarded::Refused
            } else if let Some(bytes) = state.files.remove(from) {
                let modified = state.modified.remove(from).unwrap_or_else(now_secs);
                state.files.insert(to.to_owned(), bytes);
                state.modified.insert(to.to_owned(), modified);
                state.appeared.push(to.to_owned());
                Guarded::Written
            } else {
                return Err(Error::permanent(Step::Deliver, format!("renaming {from}: no such file")));
            }
        };
        self.drop.crash.point("rename", to, true).await;
        Ok(outcome)
    }

    async fn replace(&mut self, from: &str, to: &str) -> Result<Replaced> {
        if self.drop.no_atomic_rename.load(Ordering::SeqCst) {
            self.remove(to).await?;
            return match self.rename(from, to).await? {
                Guarded::Written => Ok(Replaced::RemovedFirst),
                Guarded::Refused => Err(Error::transient(Step::Deliver, format!("{to} reappeared while replacing it"))),
            };
        }
        self.drop.enter("replace", to).await?;
        {
            let mut state = lock(&self.drop.state);
            let bytes = state
                .files
                .remove(from)
                .ok_or_else(|| Error::permanent(Step::Deliver, format!("replacing {to} with {from}: no such file")))?;
            let modified = state.modified.remove(from).unwrap_or_else(now_secs);
            state.files.insert(to.to_owned(), bytes);
            state.modified.insert(to.to_owned(), modified);
            state.appeared.push(to.to_owned());
        }
        self.drop.crash.point("replace", to, true).await;
        Ok(Replaced::Atomically)
    }

    async fn remove(&mut self, name: &str) -> Result<()> {
        self.drop.enter("remove", name).await?;
        lock(&self.drop.state).files.remove(name);
        Ok(())
    }

    async fn list(&mut self) -> Result<Vec<RemoteEntry>> {
        self.drop.enter("list", &self.dir).await?;
        let state = lock(&self.drop.state);
        Ok(state
            .files
            .keys()
            .map(|name| RemoteEntry { name: name.clone(), modified: state.modified.get(name).copied() })
            .collect())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ------------------------------------------------------------------------ queue

/// What the worker told the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCall {
    RetryLater { receipt_handle: String, delay: Duration },
    DeadLetter { body: String, reason: String },
}

#[derive(Debug, Default)]
pub struct MemoryQueue {
    calls: Mutex<Vec<QueueCall>>,
    faults: Faults,
}

impl MemoryQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn calls(&self) -> Vec<QueueCall> {
        lock(&self.calls).clone()
    }

    /// The next `times` calls of `retry_later` or `dead_letter` fail (transient).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults.add(operation, "", times, true);
    }
}

impl JobQueue for Arc<MemoryQueue> {
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<()> {
        self.faults.take("retry_later", "", Step::Queue)?;
        lock(&self.calls).push(QueueCall::RetryLater { receipt_handle: receipt_handle.to_owned(), delay });
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        self.faults.take("dead_letter", "", Step::Queue)?;
        lock(&self.calls).push(QueueCall::DeadLetter { body: body.to_owned(), reason: reason.to_owned() });
        Ok(())
    }
}
