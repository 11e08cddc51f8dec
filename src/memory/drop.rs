//! An SAP folder in memory (`FileDrop`, `RemoteFolder`), with SAP's pickup and crashes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::*;
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::Replaced;
use crate::ports::{FileDrop, Guarded, RemoteEntry, RemoteFolder};
use crate::secrets::SftpCredentials;

#[derive(Debug, Default)]
struct FolderState {
    files: BTreeMap<String, Vec<u8>>,
    /// When each file was last written (seconds since the epoch).
    modified: BTreeMap<String, u64>,
    /// Every name a rename has ever made appear (what SAP could have picked up).
    appeared: Vec<String>,
    /// The same, with the SHA-256 of what appeared: which batch SAP would read last.
    arrivals: Vec<(String, String)>,
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

    /// Every final name that ever appeared with the SHA-256 of its bytes, in order.
    pub fn arrivals(&self) -> Vec<(String, String)> {
        lock(&self.state).arrivals.clone()
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
        let bytes = std::fs::read(local).or_transient(Step::Deliver, format!("reading {}", local.display()))?;
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
                state.arrivals.push((to.to_owned(), hex::encode(Sha256::digest(&bytes))));
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
            state.arrivals.push((to.to_owned(), hex::encode(Sha256::digest(&bytes))));
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
