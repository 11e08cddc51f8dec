//! The export streamed while Kinaxis pages arrive, on real parts: the converter's bytes go
//! through the outlets into a multipart staging upload on moto (several 5 MiB parts, S3's
//! smallest) and into the SFTP temporary on sshd, and an export that ends short leaves
//! nothing behind (no rename, no open upload, no temporary).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_relay::aws::S3Store;
use maestro_relay::error::Result;
use maestro_relay::ports::{CreateOutcome, FilePart, Guarded, ObjectStore, Tagged};
use maestro_relay::worker::stream::StreamOptions;
use serde_json::Value;

use crate::helpers::{sqs_event_for, TestApp};

const PF: &str = "webhook-http-api-pf.json";

/// The app's bucket, every call and every delivery record written kept in order.
#[derive(Clone)]
struct Recording {
    inner: S3Store,
    calls: Arc<Mutex<Vec<String>>>,
    records: Arc<Mutex<Vec<Value>>>,
}

impl Recording {
    fn new(app: &TestApp) -> Self {
        Self { inner: S3Store::from_sdk_config(&app.sdk, &app.bucket), calls: Arc::default(), records: Arc::default() }
    }

    fn note(&self, operation: &str, key: &str) {
        self.calls.lock().unwrap().push(format!("{operation} {key}"));
    }

    fn count(&self, operation: &str, key_contains: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.starts_with(&format!("{operation} ")) && c.contains(key_contains)).count()
    }
}

impl ObjectStore for Recording {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>> {
        self.inner.get_tagged(key).await
    }
    async fn replace(&self, key: &str, bytes: Vec<u8>, content_type: &str, etag: &str) -> Result<Guarded> {
        self.inner.replace(key, bytes, content_type, etag).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.note("put", key);
        if key.starts_with("deliveries/") {
            self.records.lock().unwrap().push(serde_json::from_slice(&bytes).unwrap());
        }
        self.inner.put(key, bytes, content_type).await
    }
    async fn create(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<CreateOutcome> {
        self.inner.create(key, bytes, content_type).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<maestro_relay::ports::Listed>> {
        self.inner.list(prefix).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<Guarded> {
        self.inner.delete_if_match(key, etag).await
    }
    async fn upload_file(&self, key: &str, path: &Path, content_type: &str) -> Result<()> {
        self.note("upload_file", key);
        self.inner.upload_file(key, path, content_type).await
    }
    async fn download_file(&self, key: &str, path: &Path) -> Result<bool> {
        self.inner.download_file(key, path).await
    }
    async fn start_multipart(&self, key: &str, content_type: &str) -> Result<String> {
        self.note("start_multipart", key);
        self.inner.start_multipart(key, content_type).await
    }
    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, part: &FilePart) -> Result<String> {
        self.note("upload_part", key);
        self.inner.upload_part(key, upload_id, number, part).await
    }
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<()> {
        self.note("complete_multipart", key);
        self.inner.complete_multipart(key, upload_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.note("abort_multipart", key);
        self.inner.abort_multipart(key, upload_id).await
    }
}

/// S3's smallest parts, so a file of a few MiB streams as several.
fn several_parts(chunk_bytes: usize) -> StreamOptions {
    StreamOptions {
        part_bytes: 5 * 1024 * 1024,
        parts_in_flight: 2,
        chunk_bytes,
        depth: 16,
        // Generous: a healthy stream on a loaded machine must not be dropped here.
        stall: Duration::from_secs(30),
        call_timeout: Duration::from_secs(60),
        sftp: true,
    }
}

fn failed_items(answer: &Value) -> usize {
    answer["batchItemFailures"].as_array().map(Vec::len).unwrap_or(usize::MAX)
}

async fn open_uploads(app: &TestApp) -> usize {
    let listed = app.s3.list_multipart_uploads().bucket(&app.bucket).send().await.expect("list uploads");
    listed.uploads().len()
}

#[tokio::test]
async fn a_file_of_several_parts_streams_into_staging_and_its_sftp_temporary_and_that_temporary_is_renamed() {
    let app = TestApp::start(&["--rows", "200000", "--latency-ms", "2"]).await;
    let job_id = app.accepted_job(PF).await;
    let store = Recording::new(&app);
    let worker = app.worker_on(store.clone()).with_stream_options(several_parts(64 * 1024));
    let answer = worker.handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("an answer");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await;
    assert_eq!(failed_items(&answer), 0, "{answer}: {failure:?}");

    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    let file_name = receipt["files"][0]["fileName"].as_str().expect("file name").to_owned();
    let bytes = receipt["bytes"].as_u64().expect("bytes");
    assert!(bytes > 10 * 1024 * 1024, "{bytes} bytes: not several 5 MiB parts");
    let staged_key = format!("staging/{job_id}/{file_name}");
    let parts = store.count("upload_part", &staged_key);
    assert!(parts >= 3, "{parts} parts: {:?}", store.calls.lock().unwrap());
    assert_eq!(store.count("complete_multipart", &staged_key), 1);
    assert_eq!(store.count("upload_file", &staged_key), 0, "staged whole instead of streamed");
    assert_eq!(open_uploads(&app).await, 0);

    // The temporary named in the `streaming` record is the one the intent and the
    // delivered mark name: the file was written during the export, not sent afterwards.
    let records = store.records.lock().unwrap().clone();
    let states: Vec<&str> = records.iter().filter_map(|r| r["state"].as_str()).collect();
    assert_eq!(states, ["streaming", "intent", "delivered"], "{records:?}");
    let temps: Vec<&str> = records.iter().filter_map(|r| r["tempName"].as_str()).collect();
    assert!(temps.iter().all(|t| *t == temps[0]), "{temps:?}");
    assert_eq!(records[0]["uploaded"], false, "a streaming record claims nothing of the file");

    let staged = app.object(&staged_key).await.expect("staged");
    let delivered = std::fs::read(app.sshd.folder("PF2").join(&file_name)).expect("delivered");
    assert_eq!(staged.len() as u64, bytes);
    assert!(staged == delivered, "the delivered file is not the staged one");
    assert_eq!(app.sshd.all_files("PF2"), [file_name]);
}

#[tokio::test]
async fn a_byte_order_mark_longer_than_a_chunk_is_handed_on_off_the_executor() {
    // The mark is written when the sink opens: with chunks of 2 bytes it is handed on at
    // once, which must happen on the converter's thread (a blocking send on the executor
    // panics).
    let mut app = TestApp::start(&["--rows", "300"]).await;
    app.env.insert("CSV_ENCODING".into(), "utf-8-bom".into());
    let job_id = app.accepted_job(PF).await;
    let worker = app.worker().with_stream_options(several_parts(2));
    let answer = worker.handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("an answer");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await;
    assert_eq!(failed_items(&answer), 0, "{answer}: {failure:?}");
    let files = app.sshd.files("PF2");
    assert_eq!(files.len(), 1);
    let delivered = std::fs::read(app.sshd.folder("PF2").join(&files[0])).expect("delivered");
    assert!(delivered.starts_with("\u{feff}".as_bytes()));
}

#[tokio::test]
async fn an_export_that_ends_short_renames_nothing_aborts_its_staging_upload_and_leaves_no_temporary() {
    // Kinaxis announces 10 rows more than it serves: the export fails permanently at its
    // end, after parts and the temporary were already streamed.
    let app = TestApp::start(&["--rows", "200000", "--short-by", "10"]).await;
    let job_id = app.accepted_job(PF).await;
    let store = Recording::new(&app);
    let worker = app.worker_on(store.clone()).with_stream_options(several_parts(64 * 1024));
    let answer = worker.handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("an answer");
    assert_eq!(failed_items(&answer), 0, "permanent: to the dead-letter queue at once: {answer}");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("a failure record");
    assert_eq!(failure["class"], "permanent", "{failure}");
    assert!(failure["message"].as_str().unwrap_or_default().contains("ended short"), "{failure}");

    assert!(store.count("upload_part", "staging/") >= 1, "parts went up before the end");
    assert!(store.count("abort_multipart", "staging/") >= 1, "{:?}", store.calls.lock().unwrap());
    assert_eq!(store.count("complete_multipart", "staging/"), 0);
    assert_eq!(open_uploads(&app).await, 0, "a multipart upload left open");
    assert!(app.keys(&format!("staging/{job_id}/")).await.is_empty(), "nothing staged");
    let records = store.records.lock().unwrap().clone();
    assert_eq!(records.first().map(|r| r["state"].clone()), Some("streaming".into()), "the temporary was streamed");
    assert!(app.sshd.all_files("PF2").is_empty(), "left on SAP's server: {:?}", app.sshd.all_files("PF2"));
}
