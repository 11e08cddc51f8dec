//! The operator's `maestro-relay`, the real binary, on moto_server, sshd and the simulator,
//! with delivered, failed (permanent and transient), stranded and dead-lettered jobs at once.

use serde_json::{json, Value};

use crate::helpers::{sqs_event_for, TestApp};

const PF: &str = "webhook-http-api-pf.json";
const WP: &str = "webhook-http-api-wp.json";

fn json_of(printed: &str) -> Value {
    serde_json::from_str(printed).unwrap_or_else(|e| panic!("not JSON ({e}):\n{printed}"))
}

/// The worker on one receive of the job's notification, as the queue hands it over.
async fn from_queue(app: &TestApp, job_id: &str, receive_count: u32) -> Value {
    let mut event = sqs_event_for(job_id, &format!("m-{job_id}"));
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = json!(receive_count.to_string());
    // On the heap: the worker's future is large in a debug build, and the test's own
    // future holds several.
    Box::pin(app.worker().handle_json(&event, app.deadline())).await.expect("an SQS answer")
}

/// Every message on the queue, visible or held, without receiving any.
async fn messages_on(app: &TestApp, queue: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName::{ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible};
    let got = app
        .sqs
        .get_queue_attributes()
        .queue_url(&app.env[queue])
        .attribute_names(ApproximateNumberOfMessages)
        .attribute_names(ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let count = |name| got.attributes().and_then(|a| a.get(&name)).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    count(ApproximateNumberOfMessages) + count(ApproximateNumberOfMessagesNotVisible)
}

fn state_of<'a>(jobs: &'a Value, job_id: &str) -> &'a str {
    let row = jobs.as_array().and_then(|rows| rows.iter().find(|r| r["jobId"] == job_id));
    row.and_then(|r| r["state"].as_str()).unwrap_or("absent")
}

/// Four jobs: delivered (PF2), failed for good (WP2's host key wrong), failed on its last
/// receive with SFTP down (transient), and one accepted but never run (stranded).
struct Jobs {
    delivered: String,
    permanent: String,
    transient: String,
    stranded: String,
}

async fn four_jobs(app: &mut TestApp) -> Jobs {
    let delivered = Box::pin(app.accepted_job(PF)).await;
    from_queue(app, &delivered, 1).await;

    let wp2 = app.env["SFTP_SECRET_ID_WP2"].clone();
    let mut wrong = app.sshd.secret("WP2");
    wrong["host_key_sha256"] = json!("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    app.set_secret(&wp2, wrong).await;
    let permanent = Box::pin(app.accepted_job(WP)).await;
    from_queue(app, &permanent, 1).await;

    let mut event = crate::helpers::load_event(PF);
    event["headers"]["webhook-id"] = json!("msg_planned_orders_pf_1200");
    let body = crate::helpers::event_body(&event);
    crate::helpers::sign_event(&mut event, &app.whsec, &body, crate::helpers::now());
    let (status, answer) = Box::pin(app.post_webhook(&event)).await;
    assert_eq!(status, 202, "{answer}");
    let transient = answer["jobId"].as_str().expect("jobId").to_owned();
    app.sshd.stop();
    from_queue(app, &transient, 5).await;
    app.sshd.resume();

    let mut event = crate::helpers::load_event(PF);
    event["headers"]["webhook-id"] = json!("msg_planned_orders_pf_1800");
    let body = crate::helpers::event_body(&event);
    crate::helpers::sign_event(&mut event, &app.whsec, &body, crate::helpers::now());
    let (_, answer) = Box::pin(app.post_webhook(&event)).await;
    let stranded = answer["jobId"].as_str().expect("jobId").to_owned();
    Jobs { delivered, permanent, transient, stranded }
}

#[tokio::test]
async fn jobs_show_and_dlq_tell_each_jobs_state_and_dlq_apply_moves_each_kind_its_way_once() {
    let mut app = TestApp::start(&["--rows", "40"]).await;
    let jobs = Box::pin(four_jobs(&mut app)).await;
    let dir = tempfile::tempdir().expect("dir");
    let env = app.env_file(dir.path());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let (code, out, err) = app.tool(&env, &["jobs", "--json", "--stranded-after", "1s"]);
    assert_eq!(code, 0, "{err}");
    let listed = json_of(&out);
    let states = [&jobs.delivered, &jobs.permanent, &jobs.transient, &jobs.stranded].map(|id| state_of(&listed, id));
    assert_eq!(states, ["delivered", "failed", "failed", "stranded"], "{out}");
    let delivered_row = listed.as_array().and_then(|r| r.iter().find(|r| r["jobId"] == jobs.delivered.as_str()));
    assert_eq!(delivered_row.map(|r| r["rows"].clone()), Some(json!(40)), "{out}");

    // The table for people: only the failed ones, with class and step.
    let (code, table, err) = app.tool(&env, &["jobs", "--state", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(table.lines().count(), 3, "a header and two jobs:\n{table}");
    assert!(table.contains("permanent/deliver") && table.contains("transient/deliver"), "{table}");
    assert!(!table.contains('\x1b'), "no colours off a terminal");

    // Found by the sender's webhook-id; the dead-letter message and the log query with it.
    let (code, out, err) = app.tool(&env, &["show", "msg_planned_orders_wp_0600", "--json"]);
    assert_eq!(code, 0, "{err}");
    let story = json_of(&out);
    assert_eq!(story["story"]["jobId"], jobs.permanent.as_str());
    assert_eq!(story["deadLetters"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(story["logsInsightsQuery"].as_str().unwrap_or_default().contains(&jobs.permanent));
    let (code, _, err) = app.tool(&env, &["show", "no-such-batch"]);
    assert_eq!(code, 3, "a job that does not exist: {err}");
    assert!(err.contains("no job"), "{err}");

    // The dry run changes nothing.
    let (code, out, err) = app.tool(&env, &["dlq", "--json"]);
    assert_eq!(code, 0, "{err}");
    let actions: Vec<(String, String)> = json_of(&out)
        .as_array()
        .expect("triage")
        .iter()
        .map(|t| {
            (
                t["jobIds"][0].as_str().unwrap_or_default().to_owned(),
                t["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(actions.contains(&(jobs.permanent.clone(), "leave".into())), "{actions:?}");
    assert!(actions.contains(&(jobs.transient.clone(), "send-back".into())), "{actions:?}");
    assert_eq!(messages_on(&app, "DEAD_LETTER_QUEUE_URL").await, 2, "a dry run moved something");

    // A message of a job delivered since: deleted by --apply.
    let stale = sqs_event_for(&jobs.delivered, "x")["Records"][0]["body"].as_str().expect("body").to_owned();
    app.sqs.send_message().queue_url(&app.env["DEAD_LETTER_QUEUE_URL"]).message_body(stale).send().await.expect("send");

    let (code, out, err) = app.tool(&env, &["dlq", "--apply"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted") && out.contains("sent back") && out.contains("leave"), "{out}");
    assert_eq!(messages_on(&app, "DEAD_LETTER_QUEUE_URL").await, 1, "only the permanent failure stays");

    // The transient job is on the jobs queue again, and delivers from there.
    let received = app.sqs.receive_message().queue_url(&app.env["JOBS_QUEUE_URL"]).send().await.expect("receive");
    let bodies: Vec<&str> = received.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains(&jobs.transient) && !bodies[0].contains("leaseChecks"), "{bodies:?}");
    from_queue(&app, &jobs.transient, 1).await;
    let (_, out, _) = app.tool(&env, &["jobs", "--json"]);
    assert_eq!(state_of(&json_of(&out), &jobs.transient), "delivered");

    // A second run finds nothing to do but the permanent failure.
    let (code, out, err) = app.tool(&env, &["dlq", "--apply", "--json"]);
    assert_eq!(code, 0, "{err}");
    let again = json_of(&out);
    assert_eq!(again.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(again[0]["jobIds"][0], jobs.permanent.as_str());
    assert_eq!((again[0]["action"].as_str(), again[0]["applied"].as_bool()), (Some("leave"), Some(false)));
    assert_eq!(messages_on(&app, "DEAD_LETTER_QUEUE_URL").await, 1);
}

#[tokio::test]
async fn rerun_resend_delivers_a_delivered_job_once_more_under_its_own_records_and_a_mistyped_job_is_not_run() {
    let app = TestApp::start(&["--rows", "40"]).await;
    let job_id = Box::pin(app.accepted_job(PF)).await;
    from_queue(&app, &job_id, 1).await;
    let first = app.sshd.files("PF2");
    assert_eq!(first.len(), 1);
    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("a receipt");
    // SAP took the file, then lost it.
    for name in &first {
        std::fs::remove_file(app.sshd.folder("PF2").join(name)).expect("take the file");
    }
    let dir = tempfile::tempdir().expect("dir");
    let env = app.env_file(dir.path());

    // A plain re-run of a delivered job sends nothing.
    let (code, out, err) = app.tool(&env, &["rerun", &job_id]);
    assert_eq!((code, json_of(&out)["status"].clone()), (0, json!("already-delivered")), "{err}");
    assert!(app.sshd.files("PF2").is_empty());

    let (code, out, err) = app.tool(&env, &["rerun", &job_id, "--resend"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer = json_of(&out);
    assert_eq!(answer["status"], "delivered", "{out}");
    assert_eq!(answer["receipt"]["rerun"]["requestedBy"].as_str().map(|s| s.starts_with("test-operator")), Some(true));
    assert_eq!(app.sshd.files("PF2"), first, "the same file, once more");
    let resends = app.keys(&format!("receipts/{job_id}/resends/")).await;
    assert_eq!(resends.len(), 1, "{resends:?}");
    assert_eq!(app.json_object(&format!("receipts/{job_id}.json")).await, Some(receipt), "the job's own receipt");

    // The same re-send asked for again (by the id its answer printed) delivers nothing more.
    let resend_id = answer["resendId"].as_str().expect("the answer names its re-send").to_owned();
    let (code, out, err) = app.tool(&env, &["rerun", &job_id, "--resend", "--resend-id", &resend_id]);
    assert_eq!((code, json_of(&out)["status"].clone()), (0, json!("already-delivered")), "{out}{err}");
    assert_eq!(app.sshd.files("PF2"), first, "not sent twice for one re-send");

    // A job id that does not exist: not run, nothing recorded, nobody paged.
    let (code, out, _) = app.tool(&env, &["rerun", "0123456789abcdef0123456789abcdef"]);
    assert_ne!(code, 0);
    assert_eq!(json_of(&out)["status"], "not-run", "{out}");
    assert!(app.keys("failed/").await.is_empty());
    assert!(app.keys("locks/0123456789abcdef0123456789abcdef").await.is_empty());
}

#[tokio::test]
async fn send_test_stages_a_job_under_a_fresh_webhook_id_each_time() {
    let app = TestApp::start(&["--rows", "40"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let env = app.env_file(dir.path());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, out, err) = app.tool(&env, &["send-test", "events/webhook-http-api-pf.json"]);
        assert_eq!(code, 0, "{out}{err}");
        let answer = json_of(&out);
        assert_eq!(answer["status"], 202, "{out}");
        ids.push(answer["answer"]["jobId"].as_str().expect("jobId").to_owned());
    }
    assert_ne!(ids[0], ids[1], "the second send is a new job, not a duplicate");
    for id in &ids {
        assert!(app.object(&format!("jobs/{id}.json")).await.is_some(), "{id} not staged");
    }

    // Printed instead, the signed event is what the real webhook binary takes as Lambda would.
    let (code, out, err) = app.tool(&env, &["send-test", "--print-event", "events/webhook-http-api-wp.json"]);
    assert_eq!(code, 0, "{err}");
    let event = json_of(&out);
    let answer = app
        .invocation(env!("CARGO_BIN_EXE_webhook"), &event, &dir.path().join("signed.json"))
        .output()
        .expect("the webhook binary");
    let printed = String::from_utf8_lossy(&answer.stdout);
    let last = printed.lines().last().unwrap_or_default();
    assert!(last.contains("\"statusCode\":202") && last.contains("WP2"), "{printed}");
}

#[tokio::test]
async fn jobs_pages_through_listings_of_more_than_a_thousand_jobs() {
    use futures_util::stream::{self, StreamExt};
    let app = TestApp::start(&["--rows", "40"]).await;
    let first = Box::pin(app.accepted_job(PF)).await;
    let manifest = app.json_object(&format!("jobs/{first}.json")).await.expect("the manifest");
    // S3 lists at most 1,000 keys a page: 1,050 jobs take two pages of every listing.
    let ids: Vec<String> = (1..1050).map(|n| maestro_relay::job::job_id(&format!("msg_{n}")).to_string()).collect();
    stream::iter(&ids)
        .map(|id| {
            let mut copy = manifest.clone();
            copy["jobId"] = json!(id);
            app.s3
                .put_object()
                .bucket(&app.bucket)
                .key(format!("jobs/{id}.json"))
                .body(copy.to_string().into_bytes().into())
                .send()
        })
        .buffer_unordered(16)
        .for_each(|put| async move {
            put.expect("put a manifest");
        })
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let env = app.env_file(dir.path());
    let (code, out, err) = app.tool(&env, &["jobs", "--json", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    let rows = json_of(&out);
    assert_eq!(rows.as_array().map(Vec::len), Some(1050));
    assert!(ids.iter().chain([&first]).all(|id| state_of(&rows, id) == "pending"));
}
