//! The whole path on real parts: webhook → S3 → SQS → worker → simulator → CSV → S3 → sshd.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{sqs_event_for, TestApp};

/// Wires the app's bucket to a fresh queue, as the SAM template does, and returns its URL.
async fn notify_queue(app: &TestApp) -> String {
    let queue = app.sqs.create_queue().queue_name(crate::helpers::unique("jobs")).send().await.expect("create queue");
    let url = queue.queue_url().expect("queue url").to_owned();
    let arn = app.queue_arn(&url).await;
    use aws_sdk_s3::types::*;
    let rule = FilterRule::builder().name(FilterRuleName::Prefix).value("jobs/").build();
    let config = QueueConfiguration::builder()
        .queue_arn(arn)
        .events(Event::S3ObjectCreated)
        .filter(
            NotificationConfigurationFilter::builder().key(S3KeyFilter::builder().filter_rules(rule).build()).build(),
        )
        .build()
        .expect("queue configuration");
    app.s3
        .put_bucket_notification_configuration()
        .bucket(&app.bucket)
        .notification_configuration(NotificationConfiguration::builder().queue_configurations(config).build())
        .send()
        .await
        .expect("bucket notification");
    url
}

/// The queue's messages as the SQS event source hands them to the worker (batch of one).
async fn next_job_message(app: &TestApp, queue_url: &str) -> Value {
    for _ in 0..20 {
        let received =
            app.sqs.receive_message().queue_url(queue_url).wait_time_seconds(1).send().await.expect("receive");
        for message in received.messages() {
            let body = message.body().unwrap_or_default();
            let event = json!({"Records": [{
                "messageId": message.message_id().unwrap_or_default(),
                "receiptHandle": message.receipt_handle().unwrap_or_default(),
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            }]});
            if !body.contains("s3:TestEvent") {
                return event;
            }
        }
    }
    panic!("no job notification arrived on the queue");
}

#[tokio::test]
async fn a_pf_file_travels_from_the_webhook_through_sqs_to_the_pf2_folder_identical_to_its_staged_csv() {
    let app = TestApp::start(&["--rows", "1234", "--first-page", "500"]).await;
    let queue_url = notify_queue(&app).await;

    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let event = next_job_message(&app, &queue_url).await;
    let answer = app.worker().handle_json(&event, app.deadline()).await.expect("worker answer");
    assert_eq!(answer, json!({"batchItemFailures": []}));

    let delivered = app.sshd.files("PF2");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].starts_with("PlannedOrders-PF_") && delivered[0].ends_with(".csv"));
    assert!(app.sshd.files("WP2").is_empty());
    let remote = std::fs::read(app.sshd.folder("PF2").join(&delivered[0])).expect("delivered file");
    let staged = app.object(&format!("staging/{job_id}/{}", delivered[0])).await.expect("staged CSV");
    assert_eq!(remote, staged, "the delivered file differs from the staged CSV");

    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    assert_eq!(receipt["rows"], 1234);
    assert_eq!(receipt["bytes"], remote.len());
    assert_eq!(receipt["target"], "PF2");
    assert_eq!(receipt["files"][0]["sha256"], maestro_relay::job::sha256_hex(&remote));
    assert!(app.keys("failed/").await.is_empty());
}

#[tokio::test]
async fn a_wp_file_ends_in_the_wp2_folder() {
    let app = TestApp::start(&["--rows", "40", "--first-page", "40"]).await;
    let job_id = app.accepted_job("webhook-http-api-wp.json").await;
    let answer = app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("worker answer");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert!(app.sshd.files("PF2").is_empty());
    let delivered = app.sshd.files("WP2");
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].starts_with("PlannedOrders-WP_"));
}

#[tokio::test]
async fn every_awkward_kinaxis_value_survives_the_round_trip_through_a_csv_reader() {
    let app = TestApp::start(&["--rows", "20", "--first-page", "7"]).await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("worker");
    let name = &app.sshd.files("PF2")[0];
    let bytes = std::fs::read(app.sshd.folder("PF2").join(name)).expect("file");
    assert!(bytes.ends_with(b"\r\n"));
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let header: Vec<String> = reader.headers().expect("header").iter().map(str::to_owned).collect();
    assert_eq!(header, ["Order", "Part", "Site", "Quantity", "DueDate", "Description"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(rows.len(), 20);
    let column = |i: usize| rows.iter().map(|r| r[i].to_owned()).collect::<Vec<_>>();
    for expected in ["Contains \"quotes\"", "Line one\r\nLine two", "Grüße aus 東京 🚚", ""] {
        assert!(column(5).iter().any(|v| v == expected), "{expected:?} missing");
    }
    for expected in ["SITE,B", "Werk Köln", ""] {
        assert!(column(2).iter().any(|v| v == expected), "{expected:?} missing");
    }
    for token in ["Undefined", "Past", "Future", "Today"] {
        assert!(column(4).iter().any(|v| v == token), "{token} missing");
    }
    let orders = column(0);
    let mut sorted = orders.clone();
    sorted.sort();
    assert_eq!(orders, sorted, "rows must be written in Kinaxis order");
}

#[tokio::test]
async fn a_redelivered_message_of_a_delivered_job_is_acknowledged_without_a_second_file() {
    let app = TestApp::start(&["--rows", "10"]).await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let worker = app.worker();
    let event = sqs_event_for(&job_id, "m-1");
    worker.handle_json(&event, app.deadline()).await.expect("first");
    let pages_after_first = app.sim.stats().await["dataCalls"].clone();
    let again = worker.handle_json(&event, app.deadline()).await.expect("second");
    assert_eq!(again, json!({"batchItemFailures": []}));
    assert_eq!(app.sshd.files("PF2").len(), 1);
    assert_eq!(app.sim.stats().await["dataCalls"], pages_after_first, "no second fetch");
    let direct = worker
        .handle_json(&json!({"jobKey": format!("jobs/{job_id}.json")}), app.deadline())
        .await
        .expect("console re-run");
    assert_eq!(direct["status"], "already-delivered");
}

#[tokio::test]
async fn the_s3_test_event_is_acknowledged_and_ignored() {
    let app = TestApp::start(&[]).await;
    let event = crate::helpers::load_event("worker-sqs-s3-test-event.json");
    let answer = app.worker().handle_json(&event, app.deadline()).await.expect("answer");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert!(app.keys("").await.is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn a_csv_larger_than_one_multipart_part_is_staged_in_parts_and_delivered_identical() {
    let mut app = TestApp::start(&["--rows", "300000", "--first-page", "5000"]).await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    app.env.insert("KINAXIS_PAGE_SIZE".into(), "5000".into());
    let worker = app.worker();
    let answer = worker.handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await;
    assert_eq!(answer, json!({"batchItemFailures": []}), "{failure:?}");
    let name = &app.sshd.files("PF2")[0];
    let remote = std::fs::read(app.sshd.folder("PF2").join(name)).expect("delivered");
    assert!(remote.len() as u64 > maestro_relay::aws::s3::MULTIPART_PART_BYTES, "{} bytes", remote.len());
    let staged = app.object(&format!("staging/{job_id}/{name}")).await.expect("staged");
    assert_eq!(staged, remote);
}

/// A webhook for `event_file` with its `fileName` set to `file_name`, signed now.
fn event_named(event_file: &str, file_name: &str, whsec: &str) -> Value {
    let mut event = crate::helpers::load_event(event_file);
    let mut body: Value = serde_json::from_slice(&crate::helpers::event_body(&event)).expect("body JSON");
    body["fileName"] = json!(file_name);
    body["eventId"] = json!(format!("{}-{file_name}", body["eventId"].as_str().unwrap_or_default()));
    crate::helpers::sign_event(&mut event, whsec, body.to_string().as_bytes(), crate::helpers::now());
    event
}

#[tokio::test]
async fn each_target_gets_the_files_of_its_own_profile_with_a_reconciled_receipt() {
    let mut app = TestApp::start(&["--rows", "20", "--first-page", "7"]).await;
    for (key, value) in [
        ("CSV_ENCODING_PF2", "iso-8859-1"),
        ("CSV_REPLACEMENT_CHAR_PF2", "?"),
        ("CSV_DELIMITER_PF2", ";"),
        ("CSV_DECIMAL_SEPARATOR_PF2", ","),
        ("CSV_NUMERIC_COLUMNS_PF2", "Quantity"),
        ("TRIGGER_FILE_PF2", "sha256"),
        ("CSV_ENCODING_WP2", "utf-8-bom"),
        ("FILE_NAME_TEMPLATE_WP2", "{fileName}-{timestamp}.csv"),
        ("TRIGGER_FILE_WP2", "done"),
    ] {
        app.env.insert(key.into(), value.into());
    }
    let pf = app.accepted_job("webhook-http-api-pf.json").await;
    let (status, body) = app.post_webhook(&event_named("webhook-http-api-wp.json", "orders_wp.csv", &app.whsec)).await;
    assert_eq!(status, 202, "{body}");
    let wp = body["jobId"].as_str().expect("jobId").to_owned();
    for job_id in [&pf, &wp] {
        let answer = app.worker().handle_json(&sqs_event_for(job_id, "m-1"), app.deadline()).await.expect("answer");
        let failure = app.json_object(&format!("failed/{job_id}.json")).await;
        assert_eq!(answer, json!({"batchItemFailures": []}), "{failure:?}");
    }

    // PF2: ISO-8859-1, `;`, decimal comma, 東京 🚚 replaced (3 characters in 4 of 20 rows).
    let pf_files = app.sshd.files("PF2");
    assert_eq!(pf_files.len(), 2, "{pf_files:?}");
    let (data, trigger) = (&pf_files[0], &pf_files[1]);
    assert_eq!(trigger, &format!("{data}.sha256"));
    let bytes = std::fs::read(app.sshd.folder("PF2").join(data)).expect("PF2 file");
    assert!(bytes.starts_with(b"Order;Part;Site;Quantity;DueDate;Description\r\n"));
    let latin1: String = bytes.iter().map(|&b| b as char).collect();
    assert!(latin1.contains(";Gr\u{fc}\u{df}e aus ?? ?\r\n"), "{latin1}");
    assert!(latin1.contains(";Werk K\u{f6}ln;2,074;"), "{latin1}");
    assert!(!latin1.contains("2.074"));
    let check = std::process::Command::new("sha256sum")
        .args(["-c", trigger])
        .current_dir(app.sshd.folder("PF2"))
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "sha256sum -c {trigger}");
    let receipt = app.json_object(&format!("receipts/{pf}.json")).await.expect("PF receipt");
    let line = &receipt["reconciliation"][0];
    assert_eq!(line["profile"], "PF2");
    assert_eq!(line["encoding"], "iso-8859-1");
    assert_eq!(line["replacedCharacters"], 12);
    assert_eq!(line["kinaxisTotalRowCount"], 20);
    assert_eq!(line["rowsWritten"], 20);
    assert_eq!(line["bytes"], bytes.len());
    assert_eq!(line["remoteSizeAfterRename"], bytes.len());
    assert_eq!(line["sha256"], maestro_relay::job::sha256_hex(&bytes));
    assert_eq!(line["matches"], true);
    assert_eq!(receipt["files"][0]["trigger"]["written"], true);

    // WP2: UTF-8 behind a BOM, its own file name (no `.csv` doubled), an empty `.done`.
    let wp_files = app.sshd.files("WP2");
    assert_eq!(wp_files.len(), 2, "{wp_files:?}");
    let (data, done) = (&wp_files[0], &wp_files[1]);
    assert!(data.starts_with("orders_wp-2") && data.ends_with(".csv") && !data.contains(".csv-"), "{data}");
    assert_eq!(done, &format!("{data}.done"));
    assert_eq!(std::fs::read(app.sshd.folder("WP2").join(done)).expect("done"), b"");
    let bytes = std::fs::read(app.sshd.folder("WP2").join(data)).expect("WP2 file");
    assert!(bytes.starts_with(b"\xef\xbb\xbfOrder,Part,Site,Quantity,DueDate,Description\r\n"));
    assert!(String::from_utf8(bytes[3..].to_vec()).expect("UTF-8").contains("Grüße aus 東京 🚚"));
    let receipt = app.json_object(&format!("receipts/{wp}.json")).await.expect("WP receipt");
    let line = &receipt["reconciliation"][0];
    assert_eq!((line["profile"].as_str(), line["encoding"].as_str()), (Some("WP2"), Some("utf-8-bom")));
    assert_eq!((line["replacedCharacters"].as_u64(), line["matches"].as_bool()), (Some(0), Some(true)));
    assert_eq!(
        line["sha256"],
        maestro_relay::job::sha256_hex(&bytes),
        "the SHA-256 is of the bytes sent, BOM included"
    );
}

#[tokio::test]
async fn a_character_the_target_encoding_cannot_hold_fails_the_job_permanently_naming_worksheet_row_and_column() {
    let mut app = TestApp::start(&["--rows", "20", "--first-page", "7"]).await;
    app.env.insert("CSV_ENCODING_PF2".into(), "windows-1252".into());
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("failure record");
    assert_eq!(failure["class"], "permanent");
    let message = failure["message"].as_str().expect("message");
    for part in ["worksheet \"Planned Orders\"", "row 4, column \"Description\"", "'東'", "windows-1252"] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(app.sshd.all_files("PF2").is_empty(), "nothing is sent");
}

/// The app with the simulator's table allowed for WP2 (the default allow-list admits no table).
async fn app_allowing_the_table(sim_flags: &[&str]) -> TestApp {
    let mut app = TestApp::start(sim_flags).await;
    app.env.insert(
        "ALLOWED_REQUESTS".into(),
        json!({"*": {"workbooks": ["PlannedOrders Export"], "tables": ["Mfg::PlannedOrder"]}}).to_string(),
    );
    app.env.insert("KINAXIS_BULK_PAGE_SIZE".into(), "700".into());
    app
}

#[tokio::test]
async fn a_table_job_is_read_by_bulk_export_and_delivered_to_wp2_with_every_row_reconciled() {
    let app = app_allowing_the_table(&["--rows", "2345", "--page-cap", "500"]).await;
    let job_id = app.accepted_job("webhook-http-api-bulk-wp.json").await;
    let manifest = app.json_object(&format!("jobs/{job_id}.json")).await.expect("manifest");
    assert_eq!(manifest["table"]["name"], "PlannedOrder", "{manifest}");
    assert!(manifest.get("workbook").is_none() && manifest["worksheets"] == json!([]), "{manifest}");

    let answer = app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("worker");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let delivered = app.sshd.files("WP2");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].starts_with("PlannedOrdersBulk-WP_"), "{delivered:?}");
    let text = std::fs::read_to_string(app.sshd.folder("WP2").join(&delivered[0])).expect("delivered file");
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().expect("header").iter().map(str::to_owned).collect();
    assert_eq!(header, ["Order.Id", "Part.Name", "Site.Value", "Quantity", "DueDate", "Description"]);
    let orders: Vec<String> = reader.records().map(|r| r.expect("record")[0].to_owned()).collect();
    let expected: Vec<String> = (0..2345).map(|i| format!("PO-0-{i:08}")).collect();
    assert_eq!(orders, expected, "every row once, in order");

    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    assert_eq!(receipt["rows"], 2345);
    assert_eq!(receipt["files"][0]["worksheet"], "Mfg::PlannedOrder");
    let stats = app.sim.stats().await;
    assert_eq!((stats["bulkExports"].as_u64(), stats["openExports"].as_u64()), (Some(1), Some(0)), "{stats}");
}

#[tokio::test]
async fn a_kinaxis_secret_rotated_while_the_worker_runs_is_read_again_from_secrets_manager_and_the_job_delivers() {
    // Kinaxis takes the rotated secret once it has issued one token; the first token dies
    // after 300 ms, mid-export, so the worker must ask for a token with the secret it holds.
    let mut app = TestApp::start(&[
        "--rows",
        "4000",
        "--first-page",
        "100",
        "--latency-ms",
        "25",
        "--expire-token-after-ms",
        "300",
        "--rotate-secret-after-tokens",
        "1",
        "--rotated-secret",
        "rotated-in-flight",
    ])
    .await;
    // One page of 100 at a time: about a second of export, past the first token's life.
    app.env.insert("KINAXIS_PAGE_SIZE".into(), "100".into());
    app.env.insert("KINAXIS_PAGES_IN_FLIGHT".into(), "1".into());
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let worker = app.worker();
    let rotate = async {
        // The operator's rotation lands in Secrets Manager after the worker read the secret.
        while app.sim.stats().await["tokenCalls"].as_u64() < Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kinaxis = app.env["KINAXIS_SECRET_ID"].clone();
        app.set_secret(&kinaxis, json!({"client_id": "relay-client", "client_secret": "rotated-in-flight"})).await;
    };
    let event = sqs_event_for(&job_id, "m-1");
    let (answer, ()) = tokio::join!(worker.handle_json(&event, app.deadline()), rotate);
    assert_eq!(answer.expect("worker"), json!({"batchItemFailures": []}));
    assert_eq!(app.sshd.files("PF2").len(), 1);
    let stats = app.sim.stats().await;
    assert!(stats["tokenCalls"].as_u64() >= Some(3), "the old secret was refused mid-job: {stats}");
    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("receipt");
    assert_eq!(receipt["rows"], 4000);
}
