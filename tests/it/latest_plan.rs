//! The latest plan wins across jobs, through the real `worker` binary on moto_server, sshd
//! and the simulator: an older batch A and a newer batch B of one file name (B received a
//! second later), in the cases that used to let A reach SAP after B, or leave A with a
//! receipt for a file SAP never got, or lose a job whose run died holding its lease.

use std::process::Child;
use std::time::Duration;

use serde_json::{json, Value};

use crate::exactly_once::{answer_of, distinct_event, short_invocations, spawn_worker, spawn_worker_via};
use crate::helpers::{sqs_event_for, StallingProxy, TestApp, ThrottlingProxy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    Timestamped,
    /// `FILE_NAME_TEMPLATE={fileName}.csv` with `SFTP_EXISTING_FILE=overwrite`.
    FixedOverwrite,
}

async fn app_with(names: Names, sim_flags: &[&str]) -> TestApp {
    let mut app = TestApp::start(sim_flags).await;
    if names == Names::FixedOverwrite {
        app.env.insert("FILE_NAME_TEMPLATE".into(), "{fileName}.csv".into());
        app.env.insert("SFTP_EXISTING_FILE".into(), "overwrite".into());
    }
    app
}

/// Two batches of one file name through the webhook, the second a second later: (A, B).
async fn older_and_newer(app: &TestApp) -> (String, String) {
    let mut ids = Vec::new();
    for n in 0..2 {
        let (status, body) = app.post_webhook(&distinct_event(n, &app.whsec)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["jobId"].as_str().expect("jobId").to_owned());
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    (ids.remove(0), ids.remove(0))
}

/// The bytes job `job_id` staged, by file name (the simulator varies its rows per export,
/// so two batches' files differ).
async fn staged(app: &TestApp, job_id: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for key in app.keys(&format!("staging/{job_id}/")).await {
        if key.ends_with("_staged.json") {
            continue;
        }
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        files.push((name, app.object(&key).await.expect("staged")));
    }
    files
}

/// What SAP's folder shows: each visible file with its bytes.
fn visible(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let folder = app.sshd.folder("PF2");
    app.sshd.files("PF2").into_iter().map(|n| (n.clone(), std::fs::read(folder.join(&n)).unwrap_or_default())).collect()
}

fn temporaries(app: &TestApp) -> Vec<String> {
    app.sshd.all_files("PF2").into_iter().filter(|n| n.ends_with(".part")).collect()
}

fn kill(worker: &Child) {
    // SAFETY: kill(2) of the test's own child process group.
    unsafe {
        libc::kill(-(worker.id() as i32), libc::SIGKILL);
    }
}

/// The refused older batch: no receipt, a permanent failure naming both jobs, on the DLQ.
async fn assert_refused(app: &TestApp, older: &str, newer: &str, printed: &str) {
    assert!(app.object(&format!("receipts/{older}.json")).await.is_none(), "a receipt for the older batch:\n{printed}");
    let failure = app.json_object(&format!("failed/{older}.json")).await.expect("a failure record");
    let message = failure["message"].as_str().unwrap_or_default();
    assert_eq!(failure["class"], "permanent", "{failure}");
    assert!(message.contains(older) && message.contains(newer) && message.contains("older than"), "{message}");
    assert!(printed.contains("\"JobsStale\":1.0"), "no JobsStale metric:\n{printed}");
    assert!(app.dead_letters().await.iter().any(|(body, _)| body.contains(older)), "not on the DLQ");
}

#[tokio::test]
async fn an_older_batch_whose_upload_crawls_while_the_newer_is_delivered_never_reaches_sap_after_it() {
    for names in [Names::Timestamped, Names::FixedOverwrite] {
        let app = app_with(names, &["--rows", "3000", "--first-page", "500", "--vary-per-workbook-call"]).await;
        let (older, newer) = older_and_newer(&app).await;
        let dir = tempfile::tempdir().expect("dir");
        // A's link to SAP crawls; B's does not.
        let proxy = ThrottlingProxy::start(app.sshd.port, 24 * 1024);
        let mut slow = app.sshd.secret("PF2");
        slow["port"] = json!(proxy.port);
        let slow_secret = app.put_secret("sftp-pf2-slow", slow).await;
        let event = sqs_event_for(&older, "m-a");
        let slow_a = app
            .invocation(env!("CARGO_BIN_EXE_worker"), &event, &dir.path().join("a.json"))
            .env("SFTP_SECRET_ID_PF2", &slow_secret)
            .env("LAMBDA_RIE_TIMEOUT_S", "90")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("worker A");
        let begun = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            temporaries(&app).iter().any(|t| t.contains(&older))
        });
        assert!(begun, "{names:?}: A's upload never began");

        let (answer_b, printed_b) = answer_of(spawn_worker(&app, &sqs_event_for(&newer, "m-b"), 60, &dir, "b"));
        assert_eq!(answer_b, json!({"batchItemFailures": []}), "{names:?}:\n{printed_b}");
        assert!(temporaries(&app).iter().any(|t| t.contains(&older)), "{names:?}: A finished before B; no overlap");
        let (answer_a, printed_a) = answer_of(slow_a);
        assert_eq!(answer_a, json!({"batchItemFailures": []}), "{names:?}: dead-lettered, acknowledged:\n{printed_a}");

        let newest = staged(&app, &newer).await;
        assert_eq!(visible(&app), newest, "{names:?}: SAP's folder holds anything but B's file:\n{printed_a}");
        assert!(temporaries(&app).is_empty(), "{names:?}: {:?}", temporaries(&app));
        assert_refused(&app, &older, &newer, &printed_a).await;
    }
}

/// A cut after its intent, before its rename (S3 took the intent, the answer never came,
/// the function was killed); B is delivered; A runs again. Timestamped names with A's
/// temporary 40 minutes old by then and SAP taking B's file first; fixed names with B's
/// file still there.
#[tokio::test]
async fn an_older_batch_cut_before_its_rename_is_refused_on_its_rerun_and_never_gets_a_receipt() {
    for (names, sap_takes) in [(Names::Timestamped, true), (Names::FixedOverwrite, false)] {
        let case = format!("{names:?}, SAP takes B's file: {sap_takes}");
        let mut app = app_with(names, &["--rows", "300", "--vary-per-workbook-call"]).await;
        short_invocations(&mut app, "5");
        let (older, newer) = older_and_newer(&app).await;
        let dir = tempfile::tempdir().expect("dir");
        // Streaming record, then the intent: the intent lands, its answer is held.
        let stalling = StallingProxy::start_landing(&app.endpoint, "PUT ", format!("/deliveries/{older}/").leak(), 1);
        let a = spawn_worker_via(&stalling.endpoint, &app, &sqs_event_for(&older, "m-a"), 15, &dir, "a");
        assert!(stalling.wait_for_stall(Duration::from_secs(12)), "{case}: the intent was never written");
        tokio::time::sleep(Duration::from_millis(300)).await;
        kill(&a);
        let (_, printed) = answer_of(a);
        let intents: Vec<Value> = {
            let mut records = Vec::new();
            for key in app.keys(&format!("deliveries/{older}/")).await {
                records.push(app.json_object(&key).await.unwrap_or(Value::Null));
            }
            records
        };
        assert!(intents.iter().any(|r| r["state"] == "intent"), "{case}: cut elsewhere: {intents:?}\n{printed}");
        let a_temporary = temporaries(&app).into_iter().find(|t| t.contains(&older)).expect("A's temporary");
        assert!(visible(&app).is_empty(), "{case}: A was renamed");
        let aged = std::process::Command::new("touch")
            .args(["-d", "40 minutes ago"])
            .arg(app.sshd.folder("PF2").join(&a_temporary))
            .status()
            .expect("touch");
        assert!(aged.success());
        app.until_the_lease_runs_out(&older).await;

        let (answer_b, printed_b) = answer_of(spawn_worker(&app, &sqs_event_for(&newer, "m-b"), 30, &dir, "b"));
        assert_eq!(answer_b, json!({"batchItemFailures": []}), "{case}:\n{printed_b}");
        assert!(temporaries(&app).contains(&a_temporary), "{case}: B removed A's temporary");
        let newest = staged(&app, &newer).await;
        assert_eq!(visible(&app), newest, "{case}");
        if sap_takes {
            for (name, _) in visible(&app) {
                std::fs::remove_file(app.sshd.folder("PF2").join(name)).expect("SAP takes B's file");
            }
        }

        let (answer_a, printed_a) = answer_of(spawn_worker(&app, &sqs_event_for(&older, "m-a"), 30, &dir, "a2"));
        assert_eq!(answer_a, json!({"batchItemFailures": []}), "{case}: dead-lettered, acknowledged:\n{printed_a}");
        assert_refused(&app, &older, &newer, &printed_a).await;
        let expected = if sap_takes { Vec::new() } else { newest };
        assert_eq!(visible(&app), expected, "{case}: A's bytes reached SAP's folder:\n{printed_a}");
        assert!(temporaries(&app).is_empty(), "{case}: left {:?}", temporaries(&app));
    }
}

#[tokio::test]
async fn a_console_run_killed_holding_the_lease_cannot_make_the_job_vanish_on_the_queues_last_receive() {
    let mut app = TestApp::start(&["--rows", "300"]).await;
    short_invocations(&mut app, "5");
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let dir = tempfile::tempdir().expect("dir");
    // The console run stops at its staged index, holding the lease, and is killed there.
    let stalling = StallingProxy::start(&app.endpoint, "PUT ", "/_staged.json", 0);
    let console = json!({"jobKey": format!("jobs/{job_id}.json")});
    let run = spawn_worker_via(&stalling.endpoint, &app, &console, 15, &dir, "console");
    assert!(stalling.wait_for_stall(Duration::from_secs(12)), "the console run never staged");
    kill(&run);
    let _ = answer_of(run);

    // The queue's last receive of the job (MAX_RECEIVE_COUNT is 5).
    let mut last = sqs_event_for(&job_id, "m-1");
    last["Records"][0]["attributes"]["ApproximateReceiveCount"] = json!("5");
    let (answer, printed) = answer_of(spawn_worker(&app, &last, 30, &dir, "last"));
    assert_eq!(answer, json!({"batchItemFailures": []}), "{printed}");
    assert!(printed.contains("checked again after its lease"), "{printed}");

    // The check comes back on the jobs queue once the dead run's lease has run out.
    let mut check = None;
    for _ in 0..20 {
        let received = app
            .sqs
            .receive_message()
            .queue_url(&app.env["JOBS_QUEUE_URL"])
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive from the jobs queue");
        if let Some(message) = received.messages().first() {
            check = message.body().map(str::to_owned);
            break;
        }
    }
    let check = check.expect("no later check on the jobs queue");
    assert_eq!(serde_json::from_str::<Value>(&check).expect("body")["leaseChecks"], 1, "{check}");
    let mut event = sqs_event_for(&job_id, "m-2");
    event["Records"][0]["body"] = json!(check);
    let (answer, printed) = answer_of(spawn_worker(&app, &event, 30, &dir, "check"));
    assert_eq!(answer, json!({"batchItemFailures": []}), "{printed}");
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_some(), "not delivered:\n{printed}");
    assert_eq!(app.sshd.files("PF2").len(), 1);
}
