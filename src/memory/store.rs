//! The staging bucket in memory (`ObjectStore`), conditional writes and multipart included.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{self};
use crate::ports::{CreateOutcome, FilePart, Guarded, Listed, ObjectStore, Tagged};

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
    /// When each key was last written; a test may set it back (`age`).
    modified: Mutex<BTreeMap<String, time::OffsetDateTime>>,
    uploads: Mutex<BTreeMap<String, OpenUpload>>,
    versions: AtomicU64,
    pub crash: Crash,
    faults: Faults,
    landed_faults: Faults,
    landed_refusals: Faults,
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

    /// The next `times` conditional writes of `operation` (`replace`) on matching keys land
    /// and answer `Refused`: the SDK retried a write whose answer was lost and met its own ETag.
    pub fn refuse_after_landing(&self, operation: &'static str, key_contains: &str, times: u32) {
        self.landed_refusals.add(operation, key_contains, times, true);
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
        self.written(key, bytes, version);
    }

    fn written(&self, key: &str, bytes: Vec<u8>, version: u64) {
        self.written_in(&mut lock(&self.objects), key, bytes, version);
    }

    /// As `written`, under the objects' lock already taken (a conditional write decides and
    /// writes in one step).
    fn written_in(&self, objects: &mut BTreeMap<String, (Vec<u8>, u64)>, key: &str, bytes: Vec<u8>, version: u64) {
        objects.insert(key.to_owned(), (bytes, version));
        lock(&self.modified).insert(key.to_owned(), time::OffsetDateTime::now_utc());
    }

    /// Time passes for `key`: it was last written `seconds` ago.
    pub fn age(&self, key: &str, seconds: i64) {
        lock(&self.modified).insert(key.to_owned(), time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds));
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
        let modified = lock(&self.modified).get(key).copied();
        let found = lock(&self.objects).get(key).map(|(bytes, v)| Tagged {
            bytes: bytes.clone(),
            etag: v.to_string(),
            modified,
        });
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
                self.written_in(&mut objects, key, bytes, version);
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
                    self.written_in(&mut objects, key, bytes, version);
                    Guarded::Written
                }
                _ => Guarded::Refused,
            }
        };
        self.leave("replace", key).await?;
        if self.landed_refusals.take("replace", key, Step::Stage).is_err() {
            return Ok(Guarded::Refused);
        }
        Ok(outcome)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.enter("list", prefix).await?;
        let modified = lock(&self.modified).clone();
        let objects = lock(&self.objects);
        let listed = objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (bytes, _))| Listed {
                key: key.clone(),
                size: bytes.len() as u64,
                modified: modified.get(key).copied(),
            })
            .collect();
        Ok(listed)
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

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<Guarded> {
        self.enter("delete_if_match", key).await?;
        let outcome = {
            let mut objects = lock(&self.objects);
            match objects.get(key) {
                Some((_, current)) if current.to_string() == etag => {
                    objects.remove(key);
                    Guarded::Written
                }
                _ => Guarded::Refused,
            }
        };
        self.leave("delete_if_match", key).await?;
        Ok(outcome)
    }

    async fn upload_file(&self, key: &str, path: &Path, _content_type: &str) -> Result<()> {
        self.enter("upload_file", key).await?;
        let bytes = std::fs::read(path).or_transient(Step::Stage, format!("reading {}", path.display()))?;
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

    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, part: &FilePart) -> Result<String> {
        self.enter("upload_part", key).await?;
        let bytes = read_region(part)?;
        let etag = job::sha256_hex(&bytes);
        match lock(&self.uploads).get_mut(upload_id) {
            Some(upload) if upload.key == key && number >= 1 => {
                upload.parts.insert(number, (bytes, etag.clone()));
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
        std::fs::write(path, bytes).or_transient(Step::Stage, format!("writing {}", path.display()))?;
        Ok(true)
    }
}

/// The bytes of a file part, as the S3 adapter reads them and S3 checks them: a region short
/// of its length, or not matching its CRC32, is an error.
fn read_region(part: &FilePart) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let what = || format!("reading {} bytes at {} of {}", part.length, part.offset, part.path.display());
    let mut file = std::fs::File::open(&part.path).or_transient(Step::Stage, what())?;
    file.seek(SeekFrom::Start(part.offset)).or_transient(Step::Stage, what())?;
    let mut bytes = Vec::with_capacity(part.length as usize);
    file.take(part.length).read_to_end(&mut bytes).or_transient(Step::Stage, what())?;
    if bytes.len() as u64 != part.length {
        return Err(Error::transient(Step::Stage, format!("{}: the file is shorter", what())));
    }
    // S3's BadDigest: the bytes are not the ones the checksum was taken of.
    if part.crc32.is_some_and(|crc| crc != crc32fast::hash(&bytes)) {
        return Err(Error::permanent(Step::Stage, format!("{}: the bytes do not match the part's CRC32", what())));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn a_part_is_read_from_its_region_and_one_past_the_files_end_or_with_a_wrong_crc32_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.csv");
        std::fs::write(&path, b"0123456789").unwrap();
        let part = |offset, length, crc32| FilePart { path: path.clone(), offset, length, crc32 };
        assert_eq!(read_region(&part(2, 5, Some(crc32fast::hash(b"23456")))).unwrap(), b"23456");
        assert_eq!(read_region(&part(8, 2, None)).unwrap(), b"89");

        let short = read_region(&part(8, 5, None)).unwrap_err();
        assert_eq!(short.class, ErrorClass::Transient, "{}", short.chain());
        assert!(short.message.contains("shorter"), "{}", short.chain());
        let wrong = read_region(&part(2, 5, Some(crc32fast::hash(b"23457")))).unwrap_err();
        assert_eq!(wrong.class, ErrorClass::Permanent, "{}", wrong.chain());
        assert!(wrong.message.contains("CRC32"), "{}", wrong.chain());
    }
}
