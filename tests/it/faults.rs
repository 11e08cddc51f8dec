//! The worker under faults, on real parts: every job ends delivered exactly once, or not
//! delivered with its reason in `failed/` and its message failed — never lost, never half-sent.

use std::path::Path;

use maestro_relay::aws::S3Store;
use maestro_relay::error::{Error, ErrorClass, Result, Step};
use maestro_relay::ports::{CreateOutcome, Guarded, ObjectStore, Tagged};
use maestro_relay::worker::Trigger;
use serde_json::{json, Value};

use crate::helpers::{sqs_event_for, OwnMoto, TestApp};

const PF: &str = "webhook-http-api-pf.json";

fn failed_items(answer: &Value) -> usize {
    answer["batchItemFailures"].as_array().map(Vec::len).unwrap_or(usize::MAX)
}

async fn run_from_queue(app: &TestApp, job_id: &str) -> Value {
    app.worker().handle_json(&sqs_event_for(job_id, "m-1"), app.deadline()).await.expect("an SQS answer")
}

/// Asserts the job was delivered, showing its failure record when it was not.
async fn assert_delivered(app: &TestApp, job_id: &str, answer: &Value) {
    let record = app.json_object(&format!("failed/{job_id}.json")).await;
    assert_eq!(failed_items(answer), 0, "{answer}: {record:?}");
}

async fn failure(app: &TestApp, job_id: &str) -> Value {
    app.json_object(&format!("failed/{job_id}.json")).await.expect("a failure record")
}

#[tokio::test]
async fn kinaxis_503s_that_clear_within_the_retries_still_deliver() {
    let app = TestApp::start(&["--rows", "700", "--first-page", "100", "--fail-first", "3"]).await;
    let job_id = app.accepted_job(PF).await;
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0);
    assert_eq!(app.sshd.files("PF2").len(), 1);
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_some());
}

#[tokio::test]
async fn kinaxis_503s_that_persist_fail_the_message_with_a_transient_record_and_no_file() {
    let app = TestApp::start(&["--fail-first", "1000"]).await;
    let job_id = app.accepted_job(PF).await;
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 1);
    let record = failure(&app, &job_id).await;
    assert_eq!((record["class"].as_str(), record["step"].as_str()), (Some("transient"), Some("fetch")));
    assert!(app.sshd.files("PF2").is_empty());
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_none());
}

#[tokio::test]
async fn a_token_expiring_mid_export_and_a_truncated_answer_still_deliver() {
    let app = TestApp::start(&[
        "--rows",
        "6000",
        "--first-page",
        "100",
        // A token lives several round trips, so a fresh one is never stale on arrival (a
        // loaded machine could make that two refusals in a row), yet the export outlasts it.
        "--latency-ms",
        "40",
        "--expire-token-after-ms",
        "150",
        "--truncate-calls",
        "3",
    ])
    .await;
    let job_id = app.accepted_job(PF).await;
    assert_delivered(&app, &job_id, &run_from_queue(&app, &job_id).await).await;
    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    assert_eq!(receipt["rows"], 6000);
    let stats = app.sim.stats().await;
    assert!(stats["unauthorized"].as_u64() >= Some(1), "no token expired during the export: {stats}");
}

#[tokio::test]
async fn sshd_down_fails_the_message_and_the_redelivery_resumes_at_sftp_without_fetching_again() {
    let mut app = TestApp::start(&["--rows", "300"]).await;
    let job_id = app.accepted_job(PF).await;
    app.sshd.stop();
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 1);
    let record = failure(&app, &job_id).await;
    assert_eq!((record["class"].as_str(), record["step"].as_str()), (Some("transient"), Some("deliver")));
    assert!(app.object(&format!("staging/{job_id}/_staged.json")).await.is_some());
    let fetched = app.sim.stats().await["dataCalls"].clone();

    app.sshd.resume();
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0);
    assert_eq!(app.sshd.files("PF2").len(), 1);
    assert_eq!(app.sim.stats().await["dataCalls"], fetched, "the staged CSV was reused");
    // The failure stays in the job's story; the receipt says it came before.
    let receipt = app.object(&format!("receipts/{job_id}.json")).await.expect("a receipt");
    let receipt: serde_json::Value = serde_json::from_slice(&receipt).expect("receipt JSON");
    assert_eq!(receipt["earlierFailures"][0]["step"], "deliver", "{receipt}");
    assert!(app.object(&format!("failed/{job_id}.json")).await.is_some(), "the failure record is kept");
}

#[tokio::test]
async fn a_lost_receipt_is_rebuilt_from_the_delivery_records_without_touching_the_delivered_file() {
    let app = TestApp::start(&["--rows", "50"]).await;
    let job_id = app.accepted_job(PF).await;
    run_from_queue(&app, &job_id).await;
    let name = app.sshd.files("PF2")[0].clone();
    let modified = std::fs::metadata(app.sshd.folder("PF2").join(&name)).and_then(|m| m.modified()).expect("mtime");
    app.s3.delete_object().bucket(&app.bucket).key(format!("receipts/{job_id}.json")).send().await.expect("delete");

    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0);
    assert_eq!(app.sshd.files("PF2"), std::slice::from_ref(&name));
    let again = std::fs::metadata(app.sshd.folder("PF2").join(&name)).and_then(|m| m.modified()).expect("mtime");
    assert_eq!(again, modified, "not pushed twice");
    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    assert_eq!(receipt["files"][0]["state"], "delivered");
}

#[tokio::test]
async fn the_same_message_delivered_twice_at_once_makes_one_final_file_and_the_loser_retries_later() {
    let app = TestApp::start(&["--rows", "4000", "--first-page", "500", "--latency-ms", "20"]).await;
    let job_id = app.accepted_job(PF).await;
    let (first, second) = tokio::join!(run_from_queue(&app, &job_id), run_from_queue(&app, &job_id));
    let failed = failed_items(&first) + failed_items(&second);
    assert!(failed <= 1, "{first} {second}");
    assert_eq!(app.sshd.files("PF2").len(), 1, "{:?}", app.sshd.files("PF2"));
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_some());
    assert!(app.object(&format!("failed/{job_id}.json")).await.is_none(), "no failure record beside the receipt");
}

#[tokio::test]
async fn an_invalid_manifest_is_permanent_and_recorded() {
    let app = TestApp::start(&[]).await;
    let job_id = maestro_relay::job::job_id("not-a-real-job");
    app.s3
        .put_object()
        .bucket(&app.bucket)
        .key(format!("jobs/{job_id}.json"))
        .body(b"{\"jobId\": 7}".to_vec().into())
        .send()
        .await
        .expect("put");
    // Permanent: on the dead-letter queue at once, with its reason, and acknowledged.
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0);
    let record = failure(&app, &job_id).await;
    assert_eq!((record["class"].as_str(), record["step"].as_str()), (Some("permanent"), Some("manifest")));
    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].0.contains(job_id.as_str()) && dead[0].1.contains("not a valid job manifest"), "{dead:?}");
}

#[tokio::test]
async fn a_wrong_host_key_is_permanent_is_not_refetched_from_the_queue_and_a_console_rerun_tries_again() {
    let app = TestApp::start(&["--rows", "20"]).await;
    let secret_id = app.env["SFTP_SECRET_ID_PF2"].clone();
    let mut wrong = app.sshd.secret("PF2");
    wrong["host_key_sha256"] = json!("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    app.set_secret(&secret_id, wrong).await;
    let job_id = app.accepted_job(PF).await;

    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0, "permanent: to the DLQ at once");
    let record = failure(&app, &job_id).await;
    assert_eq!((record["class"].as_str(), record["step"].as_str()), (Some("permanent"), Some("deliver")));
    assert!(app.sshd.files("PF2").is_empty());
    assert_eq!(app.dead_letters().await.len(), 1);

    let fetched = app.sim.stats().await["dataCalls"].clone();
    assert_eq!(failed_items(&run_from_queue(&app, &job_id).await), 0);
    assert_eq!(app.sim.stats().await["dataCalls"], fetched, "no fetch for a permanently failed job");

    app.set_secret(&secret_id, app.sshd.secret("PF2")).await;
    let rerun = app
        .worker()
        .handle_json(&json!({"jobKey": format!("jobs/{job_id}.json")}), app.deadline())
        .await
        .expect("console re-run");
    assert_eq!(rerun["status"], "delivered");
    assert_eq!(app.sshd.files("PF2").len(), 1);
}

/// The real bucket, with staging uploads refused as an outage would refuse them.
struct StagingOutage(S3Store);

impl ObjectStore for StagingOutage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(key).await
    }
    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>> {
        self.0.get_tagged(key).await
    }
    async fn replace(&self, key: &str, bytes: Vec<u8>, content_type: &str, etag: &str) -> Result<Guarded> {
        self.0.replace(key, bytes, content_type, etag).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.0.put(key, bytes, content_type).await
    }
    async fn create(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<CreateOutcome> {
        self.0.create(key, bytes, content_type).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<maestro_relay::ports::Listed>> {
        self.0.list(prefix).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.0.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<Guarded> {
        self.0.delete_if_match(key, etag).await
    }
    async fn upload_file(&self, key: &str, _path: &Path, _content_type: &str) -> Result<()> {
        Err(Error::transient(Step::Stage, format!("uploading {key}: 503 Slow Down (injected)")))
    }
    async fn download_file(&self, key: &str, path: &Path) -> Result<bool> {
        self.0.download_file(key, path).await
    }
}

#[tokio::test]
async fn s3_unavailable_at_staging_fails_the_message_and_sends_nothing() {
    let app = TestApp::start(&["--rows", "20"]).await;
    let job_id = app.accepted_job(PF).await;
    let worker = app.worker_on(StagingOutage(S3Store::from_sdk_config(&app.sdk, &app.bucket)));
    let answer = worker.handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    assert_eq!(failed_items(&answer), 1);
    assert!(app.sshd.files("PF2").is_empty(), "nothing is sent before it is staged");
    let record = failure(&app, &job_id).await;
    assert_eq!((record["class"].as_str(), record["step"].as_str()), (Some("transient"), Some("stage")));
}

#[tokio::test]
async fn s3_going_down_during_the_fetch_fails_the_message_at_staging_and_sends_nothing() {
    let mut moto = OwnMoto::start();
    // Slow pages keep the worker fetching for over a second after its last S3 read.
    let app =
        TestApp::start_on(&moto.endpoint, &["--rows", "3000", "--first-page", "100", "--latency-ms", "300"]).await;
    let job_id = app.accepted_job(PF).await;
    let worker = app.worker();
    let job_key = format!("jobs/{job_id}.json");
    let run = worker.run_job(&job_key, app.deadline(), Trigger::Queue { receive_count: 1 });
    let outage = async {
        while app.sim.stats().await["dataCalls"].as_u64().unwrap_or(0) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        moto.stop();
    };
    let (outcome, ()) = tokio::join!(run, outage);
    let err = outcome.expect_err("the job cannot be staged");
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Stage), "{}", err.chain());
    assert!(app.sshd.files("PF2").is_empty(), "nothing is sent before it is staged");
    assert!(app.sshd.all_files("PF2").is_empty(), "not even a temporary");
}
