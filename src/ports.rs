//! The seams to the outside world (object store, secrets): the domain talks to these traits,
//! adapters in `aws/` implement them on the SDK clients.

use std::future::Future;
use std::path::Path;

use secrecy::SecretString;

use crate::error::Result;

/// Outcome of a conditional create (`If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    AlreadyExists,
}

/// The staging bucket: job manifests, staged CSVs, receipts and failure records.
pub trait ObjectStore: Send + Sync {
    /// The object's bytes, or `None` when there is no such key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> impl Future<Output = Result<()>> + Send;
    /// Writes only when the key does not exist yet; the store decides atomically.
    fn create(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> impl Future<Output = Result<CreateOutcome>> + Send;
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Uploads a local file (multipart when large) without reading it into memory.
    fn upload_file(&self, key: &str, path: &Path, content_type: &str) -> impl Future<Output = Result<()>> + Send;
    /// Streams the object into a local file; `false` when there is no such key.
    fn download_file(&self, key: &str, path: &Path) -> impl Future<Output = Result<bool>> + Send;
}

/// Secrets Manager: a secret's string by its id.
pub trait SecretSource: Send + Sync {
    fn secret_string(&self, secret_id: &str) -> impl Future<Output = Result<SecretString>> + Send;
}
