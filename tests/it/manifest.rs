//! What the worker reads is not trusted blindly, through the real `worker` binary on
//! moto_server: a manifest written into the bucket by other means than the webhook, and a
//! Kinaxis host that redirects elsewhere.

use serde_json::json;

use crate::exactly_once::{answer_of, spawn_worker};
use crate::helpers::{sqs_event_for, TestApp};

#[tokio::test]
async fn a_manifest_put_straight_into_the_bucket_with_a_path_in_its_file_name_is_refused_for_good_and_nothing_is_written(
) {
    let app = TestApp::start(&["--rows", "20"]).await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let key = format!("jobs/{job_id}.json");
    let mut manifest = app.json_object(&key).await.expect("the manifest");
    manifest["fileName"] = json!("../../../../tmp/evil-PF");
    app.s3
        .put_object()
        .bucket(&app.bucket)
        .key(&key)
        .body(manifest.to_string().into_bytes().into())
        .send()
        .await
        .expect("overwrite the manifest");

    let dir = tempfile::tempdir().expect("dir");
    let (answer, printed) = answer_of(spawn_worker(&app, &sqs_event_for(&job_id, "m-1"), 30, &dir, "tampered"));
    assert_eq!(answer, json!({"batchItemFailures": []}), "dead-lettered and acknowledged:\n{printed}");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("a failure record");
    assert_eq!(
        (failure["class"].as_str(), failure["step"].as_str()),
        (Some("permanent"), Some("manifest")),
        "{failure}"
    );
    assert!(failure["message"].as_str().unwrap_or_default().contains("fileName:"), "{failure}");
    for prefix in ["staging/", "deliveries/", "locks/", "latest/", "receipts/"] {
        assert!(app.keys(prefix).await.is_empty(), "{prefix} written:\n{printed}");
    }
    assert!(app.sshd.all_files("PF2").is_empty());
    assert_eq!(app.sim.stats().await["workbookCalls"].as_u64(), Some(0), "Kinaxis was called");
    let reasons: Vec<String> = app.dead_letters().await.into_iter().map(|(_, reason)| reason).collect();
    assert!(reasons.iter().any(|r| r.contains("fileName")), "{reasons:?}");
}

/// The Kinaxis host answers 307 to another server (a second simulator, which counts calls):
/// the worker follows nowhere, so the client credentials never reach it.
#[tokio::test]
async fn a_kinaxis_redirect_is_followed_nowhere_and_fails_for_good_naming_the_status_and_host() {
    let elsewhere = crate::helpers::Sim::start(&[]);
    let app = TestApp::start(&["--redirect-to", &elsewhere.url]).await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let dir = tempfile::tempdir().expect("dir");
    let (answer, printed) = answer_of(spawn_worker(&app, &sqs_event_for(&job_id, "m-1"), 30, &dir, "redirected"));
    assert_eq!(answer, json!({"batchItemFailures": []}), "dead-lettered and acknowledged:\n{printed}");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("a failure record");
    let message = failure["message"].as_str().unwrap_or_default();
    assert_eq!((failure["class"].as_str(), failure["step"].as_str()), (Some("permanent"), Some("fetch")), "{failure}");
    assert!(message.contains("307") && message.contains("127.0.0.1"), "{message}");
    let reached = elsewhere.stats().await;
    assert_eq!((reached["tokenCalls"].as_u64(), reached["dataCalls"].as_u64()), (Some(0), Some(0)), "{reached}");
    assert!(app.sshd.all_files("PF2").is_empty());
}
