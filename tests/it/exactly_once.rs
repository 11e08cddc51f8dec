//! Exactly once and nothing lost, with the real `worker` binary run as Lambda runs it
//! (scripts/lambda_rie.py) on moto_server, sshd and the simulator: killed right after the
//! file appears and SAP then taking it, two runs of one job at once, and the deadline.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{event_body, load_event, now, sign_event, sqs_event_for, StallingProxy, TestApp};

/// The real worker binary on one event, with the invocation's timeout; its own process
/// group, so that a kill takes the runtime stand-in and the function together.
pub(crate) fn spawn_worker(app: &TestApp, event: &Value, timeout_s: u64, dir: &tempfile::TempDir, name: &str) -> Child {
    spawn_worker_via(&app.endpoint, app, event, timeout_s, dir, name)
}

/// As `spawn_worker`, with every AWS call going to `endpoint`.
pub(crate) fn spawn_worker_via(
    endpoint: &str,
    app: &TestApp,
    event: &Value,
    timeout_s: u64,
    dir: &tempfile::TempDir,
    name: &str,
) -> Child {
    app.invocation(env!("CARGO_BIN_EXE_worker"), event, &dir.path().join(format!("{name}.json")))
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("LAMBDA_RIE_TIMEOUT_S", timeout_s.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("scripts/lambda_rie.py (run scripts/bootstrap.sh)")
}

/// Waits for the invocation; its answer (the last line the stand-in prints) and all output.
pub(crate) fn answer_of(child: Child) -> (Value, String) {
    let out = child.wait_with_output().expect("worker output");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned();
    (serde_json::from_str(&last).unwrap_or(Value::Null), printed)
}

/// A deliberately short-lived invocation: margins scaled down with it.
pub(crate) fn short_invocations(app: &mut TestApp, margin_s: &str) {
    app.env.insert("SFTP_IO_TIMEOUT_SECS".into(), "1".into());
    app.env.insert("RETRY_DEADLINE_MARGIN_SECS".into(), margin_s.into());
    app.env.insert("LEASE_GRACE_SECS".into(), "0".into());
}

/// Every appearance of a visible file in a folder, polled every millisecond: a file taken
/// away and delivered again counts twice.
pub(crate) struct Watcher {
    appearances: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub(crate) fn start(folder: std::path::PathBuf) -> Self {
        let appearances = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (appearances_in, stop_in) = (Arc::clone(&appearances), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut present = BTreeSet::new();
            while !stop_in.load(Ordering::SeqCst) {
                let now: BTreeSet<String> = std::fs::read_dir(&folder)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with('.'))
                    .collect();
                for name in now.difference(&present) {
                    appearances_in.lock().map(|mut a| a.push(name.clone())).ok();
                }
                present = now;
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { appearances, stop, thread: Some(thread) }
    }

    pub(crate) fn appearances(&self) -> Vec<String> {
        self.appearances.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_worker_killed_between_the_rename_and_its_record_then_sap_taking_the_file_leaves_one_file_ever_and_one_receipt(
) {
    let mut app = TestApp::start(&["--rows", "3000", "--first-page", "500"]).await;
    short_invocations(&mut app, "5");
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let dir = tempfile::tempdir().expect("dir");

    // S3 answers every call but the delivered mark (the third `deliveries/` PUT: streaming, intent, delivered), which it
    // holds: the worker is then stopped between the rename and its record, and killed there.
    let stalling = StallingProxy::start(&app.endpoint, "PUT ", "/deliveries/", 2);
    let watcher = Watcher::start(app.sshd.folder("PF2"));
    let worker = spawn_worker_via(&stalling.endpoint, &app, &sqs_event_for(&job_id, "m-1"), 15, &dir, "killed");
    assert!(stalling.wait_for_stall(Duration::from_secs(12)), "the delivered mark was never written");
    // SAFETY: kill(2) of the test's own child process group.
    unsafe {
        libc::kill(-(worker.id() as i32), libc::SIGKILL);
    }
    let (_, printed) = answer_of(worker);
    let seen = watcher.appearances();
    assert_eq!(seen.len(), 1, "the file did not appear before the kill:\n{printed}");
    // The kill fell between the rename and the delivered mark: the window this is about.
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_none(), "killed too late:\n{printed}");
    let record = app.json_object(&format!("deliveries/{job_id}/{}.json", seen[0])).await.expect("the intent");
    assert_eq!(record["state"], "intent", "killed too late: {record}");

    // SAP's inbound job takes the file; time passes until the dead run's lease runs out.
    for name in app.sshd.files("PF2") {
        std::fs::remove_file(app.sshd.folder("PF2").join(name)).expect("SAP takes the file");
    }
    app.until_the_lease_runs_out(&job_id).await;

    let (from_queue, printed) = answer_of(spawn_worker(&app, &sqs_event_for(&job_id, "m-1"), 15, &dir, "queue"));
    assert_eq!(from_queue, json!({"batchItemFailures": []}), "{printed}");
    let (from_console, printed) =
        answer_of(spawn_worker(&app, &json!({"jobKey": format!("jobs/{job_id}.json")}), 15, &dir, "console"));
    assert_eq!(from_console["status"], "already-delivered", "{printed}");

    assert_eq!(watcher.appearances(), seen, "a file was delivered again");
    let record = app.json_object(&format!("deliveries/{job_id}/{}.json", seen[0])).await.expect("the record");
    assert_eq!((record["state"].as_str(), record["takenBySap"].as_bool()), (Some("delivered"), Some(true)), "{record}");
    assert!(app.sshd.all_files("PF2").is_empty(), "sent again or a temporary left: {:?}", app.sshd.all_files("PF2"));
    assert_eq!(app.keys("receipts/").await, [format!("receipts/{job_id}.json")]);
    assert!(app.keys("failed/").await.is_empty());
}

/// The PF event with its own delivery id, signed now.
pub(crate) fn distinct_event(n: usize, whsec: &str) -> Value {
    let mut event = load_event("webhook-http-api-pf.json");
    let mut body: Value = serde_json::from_slice(&event_body(&event)).expect("body");
    body["eventId"] = json!(format!("overlap-{n}"));
    event["headers"]["webhook-id"] = json!(format!("msg_overlap_{n}"));
    let body = serde_json::to_vec(&body).expect("body");
    sign_event(&mut event, whsec, &body, now());
    event
}

#[tokio::test]
async fn two_workers_started_together_on_one_job_20_times_deliver_one_file_and_one_receipt_each_time() {
    let mut app =
        TestApp::start(&["--rows", "200", "--first-page", "200", "--vary-per-workbook-call", "--latency-ms", "30"])
            .await;
    app.env.insert("FILE_NAME_TEMPLATE".into(), "{fileName}_{jobId}.csv".into());
    app.env.insert("STALE_BATCH".into(), "deliver".into());
    let dir = tempfile::tempdir().expect("dir");
    for n in 0..20 {
        let (status, body) = app.post_webhook(&distinct_event(n, &app.whsec)).await;
        assert_eq!(status, 202, "{body}");
        let job_id = body["jobId"].as_str().expect("jobId").to_owned();
        let event = sqs_event_for(&job_id, "m-1");
        let (a, b) = (spawn_worker(&app, &event, 60, &dir, "a"), spawn_worker(&app, &event, 60, &dir, "b"));
        let ((answer_a, out_a), (answer_b, out_b)) = (answer_of(a), answer_of(b));
        let failed = |a: &Value| a["batchItemFailures"].as_array().map(Vec::len);
        let failures = [failed(&answer_a), failed(&answer_b)];
        assert!(failures.contains(&Some(0)), "run {n}: neither delivered:\n{out_a}\n{out_b}");

        let files: Vec<String> = app.sshd.files("PF2").into_iter().filter(|f| f.contains(&job_id)).collect();
        assert_eq!(files.len(), 1, "run {n}: {files:?}");
        assert!(app.object(&format!("receipts/{job_id}.json")).await.is_some(), "run {n}: no receipt");
        assert!(app.object(&format!("failed/{job_id}.json")).await.is_none(), "run {n}: failure beside the receipt");
        let delivered = std::fs::read(app.sshd.folder("PF2").join(&files[0])).expect("file");
        let staged = app.object(&format!("staging/{job_id}/{}", files[0])).await.expect("staged");
        assert_eq!(delivered, staged, "run {n}: the delivered file is not the staged export");
    }
    assert_eq!(app.sshd.all_files("PF2").len(), 20, "{:?}", app.sshd.all_files("PF2"));
    let exports = app.sim.stats().await["workbookCalls"].as_u64().unwrap_or(0);
    assert_eq!(exports, 20, "a losing run exported");
}

#[tokio::test]
async fn a_job_with_a_5_s_deadline_against_2_s_pages_records_its_failure_before_the_deadline_and_leaves_nothing() {
    let mut app = TestApp::start(&["--rows", "3000", "--first-page", "100", "--latency-ms", "2000"]).await;
    short_invocations(&mut app, "3");
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let dir = tempfile::tempdir().expect("dir");
    let started = Instant::now();
    let deadline_utc = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let (answer, printed) = answer_of(spawn_worker(&app, &sqs_event_for(&job_id, "m-1"), 5, &dir, "deadline"));
    assert!(started.elapsed() < Duration::from_secs(5), "answered after the deadline:\n{printed}");
    assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]}), "{printed}");

    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("a failure record");
    assert_eq!((failure["class"].as_str(), failure["step"].as_str()), (Some("transient"), Some("fetch")), "{failure}");
    let failed_at = time::OffsetDateTime::parse(
        failure["failedAt"].as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("failedAt");
    assert!(failed_at < deadline_utc, "recorded at {failed_at}, deadline {deadline_utc}");
    assert!(printed.contains("JobsFailed"), "no metric:\n{printed}");
    let summary = printed.lines().find(|l| l.contains("\"job summary\"")).unwrap_or_default();
    assert!(summary.contains("\"requestId\":\""), "the job summary lacks the Lambda request id: {summary}");
    assert!(app.sshd.all_files("PF2").is_empty(), "{:?}", app.sshd.all_files("PF2"));
    assert!(app.object(&format!("receipts/{job_id}.json")).await.is_none());
    assert!(app.keys("locks/").await.is_empty(), "the lease was not released");
}
