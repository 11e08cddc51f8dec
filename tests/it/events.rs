//! Delivery events on the local stack: a rule on a real EventBridge bus (moto_server)
//! forwards to a queue the test reads; every event is checked against the published JSON
//! Schema (docs/events.schema.json) with Python's `jsonschema`. The pickup watchdog stats
//! files on the real sshd.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{sqs_event_for, unique, TestApp};

/// A bus with a rule sending every `maestro-relay` event to a fresh queue; the bus's name
/// and the queue's URL.
async fn bus_with_listener(app: &TestApp) -> (String, String) {
    let events = aws_sdk_eventbridge::Client::new(&app.sdk);
    let bus = unique("relay-events");
    events.create_event_bus().name(&bus).send().await.expect("create bus");
    let queue_url = app.queue("events").await;
    let arn = app.queue_arn(&queue_url).await;
    let rule = unique("all");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(json!({"source": ["maestro-relay"]}).to_string())
        .send()
        .await
        .expect("put rule");
    let target = aws_sdk_eventbridge::types::Target::builder().id("listener").arn(arn).build().expect("target");
    events.put_targets().rule(&rule).event_bus_name(&bus).targets(target).send().await.expect("put targets");
    (bus, queue_url)
}

/// Every event on the listener's queue until one receive brings nothing.
async fn heard(app: &TestApp, queue_url: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let received = app
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        if received.messages().is_empty() {
            return events;
        }
        for message in received.messages() {
            events.push(serde_json::from_str(message.body().unwrap_or_default()).expect("an event"));
            let handle = message.receipt_handle().unwrap_or_default();
            app.sqs.delete_message().queue_url(queue_url).receipt_handle(handle).send().await.expect("delete");
        }
    }
}

/// The schema's verdict on `event`: `None` when valid, else the validator's message.
fn schema_problem(event: &Value) -> Option<String> {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.schema.json");
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  jsonschema.Draft202012Validator.check_schema(schema)\n\
                  errors = [e.message for e in jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).iter_errors(json.load(sys.stdin))]\n\
                  print('; '.join(errors))";
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let mut child = Command::new(python)
        .args(["-c", script, schema])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().expect("stdin").write_all(event.to_string().as_bytes()).expect("write event");
    let output = child.wait_with_output().expect("python ran");
    assert!(output.status.success(), "the validator failed: {output:?}");
    let problems = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!problems.is_empty()).then_some(problems)
}

async fn with_bus(bus: &str) -> TestApp {
    let mut app = TestApp::start(&["--rows", "250"]).await;
    app.env.insert("EVENT_BUS_NAME".into(), bus.to_owned());
    app
}

#[tokio::test]
async fn a_delivered_file_is_announced_once_with_every_field_right_and_a_repeat_receive_announces_nothing() {
    let probe = TestApp::start(&["--rows", "250"]).await;
    let (bus, listener) = bus_with_listener(&probe).await;
    let mut app = probe;
    app.env.insert("EVENT_BUS_NAME".into(), bus.clone());

    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let answer = app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let answer = app.worker().handle_json(&sqs_event_for(&job_id, "m-2"), app.deadline()).await.expect("answer");
    assert_eq!(answer, json!({"batchItemFailures": []}));

    let events = heard(&app, &listener).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(schema_problem(event), None, "{event:#}");
    assert_eq!(
        (event["source"].as_str(), event["detail-type"].as_str()),
        (Some("maestro-relay"), Some("File Delivered"))
    );
    let receipt = app.json_object(&format!("receipts/{job_id}.json")).await.expect("a receipt");
    let file = &receipt["files"][0];
    let name = file["fileName"].as_str().expect("file name");
    let delivered = std::fs::read(app.sshd.folder("PF2").join(name)).expect("the delivered file");
    let detail = &event["detail"];
    assert_eq!(detail["jobId"], json!(job_id));
    assert_eq!(detail["eventId"], receipt["eventId"]);
    assert_eq!(detail["target"], json!("PF2"));
    assert_eq!(detail["fileName"], json!(name));
    assert_eq!(detail["remotePath"], file["remotePath"]);
    assert_eq!(
        detail["remoteDirectory"].as_str(),
        file["remotePath"].as_str().and_then(|p| p.rsplit_once('/')).map(|(dir, _)| dir)
    );
    assert_eq!(detail["bytes"], json!(delivered.len()));
    assert_eq!(detail["rows"], json!(250));
    assert_eq!(detail["sha256"], json!(hex::encode(Sha256::digest(&delivered))));
    assert_eq!(detail["statusCode"], json!("COMPLETED"));
    assert_eq!((detail["failureCode"].clone(), detail["failureMessage"].clone()), (Value::Null, Value::Null));
    assert_eq!(detail["endTimestamp"], file["updatedAt"]);
    assert_eq!(detail["stagedObject"], json!({"bucket": app.bucket, "key": format!("staging/{job_id}/{name}")}));
    let staged = app.object(&format!("staging/{job_id}/{name}")).await.expect("the staged copy");
    assert_eq!(staged, delivered);
}

#[tokio::test]
async fn a_job_that_fails_for_good_is_announced_as_failed_and_its_redrive_is_not() {
    let probe = TestApp::start(&["--workbook-status", "403"]).await;
    let (bus, listener) = bus_with_listener(&probe).await;
    let mut app = probe;
    app.env.insert("EVENT_BUS_NAME".into(), bus);
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    for message in ["m-1", "m-2"] {
        app.worker().handle_json(&sqs_event_for(&job_id, message), app.deadline()).await.expect("answer");
    }
    let events = heard(&app, &listener).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(schema_problem(&events[0]), None, "{:#}", events[0]);
    let detail = &events[0]["detail"];
    assert_eq!(events[0]["detail-type"], json!("Job Failed"));
    assert_eq!((detail["jobId"].as_str(), detail["statusCode"].as_str()), (Some(job_id.as_str()), Some("FAILED")));
    assert_eq!(detail["failureCode"], json!("permanent:fetch"));
    assert!(detail["failureMessage"].as_str().is_some_and(|m| m.contains("403")), "{detail:#}");
    assert!(app.sshd.files("PF2").is_empty());
}

#[tokio::test]
async fn a_bus_that_does_not_exist_leaves_the_delivery_intact_and_is_logged_and_counted() {
    let app = with_bus("no-such-bus").await;
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = app
        .invocation(env!("CARGO_BIN_EXE_worker"), &sqs_event_for(&job_id, "m-1"), &dir.path().join("event.json"))
        .output()
        .expect("the worker binary through scripts/lambda_rie.py");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("\"batchItemFailures\":[]"), "the message is acknowledged: {printed}");
    assert_eq!(app.sshd.files("PF2").len(), 1);
    assert!(app.json_object(&format!("receipts/{job_id}.json")).await.is_some());
    assert!(app.keys("failed/").await.is_empty(), "{:?}", app.keys("failed/").await);
    assert!(printed.contains("\"EventsNotPublished\":1"), "counted: {printed}");
    assert!(printed.contains("delivery events not published"), "logged: {printed}");
    assert!(printed.contains("no-such-bus"), "the log names the bus: {printed}");
}

/// The receipt as if its files had been put in place `minutes` ago.
async fn delivered_earlier(app: &TestApp, job_id: &str, minutes: i64) {
    let key = format!("receipts/{job_id}.json");
    let mut receipt = app.json_object(&key).await.expect("a receipt");
    let then = time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes);
    let then = then.format(&time::format_description::well_known::Rfc3339).expect("rfc3339");
    for file in receipt["files"].as_array_mut().expect("files") {
        file["updatedAt"] = json!(then);
    }
    app.s3
        .put_object()
        .bucket(&app.bucket)
        .key(&key)
        .body(serde_json::to_vec(&receipt).expect("json").into())
        .send()
        .await
        .expect("put receipt");
}

#[tokio::test]
async fn the_watchdog_reports_a_file_sap_left_once_and_then_nothing_once_sap_took_it() {
    let probe = TestApp::start(&["--rows", "40"]).await;
    let (bus, listener) = bus_with_listener(&probe).await;
    let mut app = probe;
    app.env.insert("EVENT_BUS_NAME".into(), bus);
    app.env.insert("PICKUP_SLA_MINUTES_PF2".into(), "30".into());
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    assert_eq!(heard(&app, &listener).await.len(), 1, "the delivery's own event");
    let name = app.sshd.files("PF2").pop().expect("delivered");
    let check = crate::helpers::load_event("worker-pickup-check.json");

    delivered_earlier(&app, &job_id, 45).await;
    // The scheduled check as Lambda runs it: the real binary, its metric and log on stdout.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = app
        .invocation(env!("CARGO_BIN_EXE_worker"), &check, &dir.path().join("check.json"))
        .output()
        .expect("the worker binary through scripts/lambda_rie.py");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    let metric = printed.lines().find(|l| l.contains("\"FilesNotPickedUp\"")).expect("the metric record");
    let metric: Value = serde_json::from_str(metric).expect("an EMF record");
    assert_eq!((metric["FilesNotPickedUp"].as_f64(), metric["Target"].as_str()), (Some(1.0), Some("PF2")), "{metric}");
    assert!(printed.contains("delivered file not picked up by SAP") && printed.contains(&name), "logged: {printed}");
    let answer: Value = printed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("notPickedUp").is_some())
        .expect("the check's answer");
    assert_eq!(answer["notPickedUp"].as_array().map(Vec::len), Some(1), "{answer:#}");
    assert_eq!(answer["notPickedUp"][0]["target"], json!("PF2"));
    assert!(answer["notPickedUp"][0]["remotePath"].as_str().is_some_and(|p| p.ends_with(&name)), "{answer:#}");
    let events = heard(&app, &listener).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["detail-type"], json!("File Not Picked Up"));
    assert_eq!(schema_problem(&events[0]), None, "{:#}", events[0]);
    assert_eq!(events[0]["detail"]["pickupSlaMinutes"], json!(30));
    assert!(app.sshd.files("PF2").contains(&name), "the watchdog never touches a file");

    // SAP's inbound job moves the file to its archive.
    std::fs::remove_file(app.sshd.folder("PF2").join(&name)).expect("SAP takes the file");
    let answer = app.worker().handle_json(&check, app.deadline()).await.expect("a report");
    assert_eq!((answer["pickedUp"].as_u64(), answer["notPickedUp"].as_array().map(Vec::len)), (Some(1), Some(0)));
    let record = app.json_object(&format!("pickups/{job_id}.json")).await.expect("the pickup record");
    assert_eq!(record["done"], json!(true));
    let answer = app.worker().handle_json(&check, app.deadline()).await.expect("a report");
    assert_eq!(answer["checked"], json!(0), "a file gone is not looked at again: {answer:#}");
    assert!(heard(&app, &listener).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A sample event, what is broken in it, and how.
type Breakage = (&'static str, &'static str, fn(&mut Value));

#[test]
fn the_published_schema_admits_the_sample_events_and_refuses_each_broken_one() {
    let samples = ["event-file-delivered.json", "event-job-failed.json", "event-file-not-picked-up.json"];
    for sample in samples {
        let event = crate::helpers::load_event(sample);
        assert_eq!(schema_problem(&event), None, "{sample}");
    }
    let breakages: [Breakage; 6] = [
        ("event-file-delivered.json", "an unknown status", |e| e["detail"]["statusCode"] = json!("DONE")),
        ("event-file-delivered.json", "a field too many", |e| e["detail"]["surprise"] = json!(1)),
        ("event-file-delivered.json", "no sha256", |e| e["detail"]["sha256"] = Value::Null),
        ("event-job-failed.json", "a failure without its code", |e| e["detail"]["failureCode"] = Value::Null),
        ("event-file-not-picked-up.json", "no waiting time", |e| {
            e["detail"].as_object_mut().map(|d| d.remove("waitingMinutes"));
        }),
        ("event-file-delivered.json", "another source", |e| e["source"] = json!("someone-else")),
    ];
    for (sample, what, breakage) in breakages {
        let mut event = crate::helpers::load_event(sample);
        breakage(&mut event);
        assert!(schema_problem(&event).is_some(), "{what} passed the schema");
    }
}
