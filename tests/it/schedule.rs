//! The scheduled start against real moto_server: EventBridge Scheduler's event staged as one
//! job per slot through the webhook's own checks, and the catch-up that stays quiet when the
//! slot's webhook came.

use std::time::Duration;

use maestro_relay::config::WebhookConfig;
use maestro_relay::webhook::schedule::ScheduledStart;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::helpers::{load_event, sqs_event_for, TestApp};

/// What `SCHEDULE_REQUEST` holds: a webhook body (worksheets from `WORKSHEETS`).
const REQUEST: &str = r#"{"fileName":"PlannedOrders-PF","workbook":{"name":"PlannedOrders Export"}}"#;

async fn app_scheduled(mode: &str) -> TestApp {
    let mut app = TestApp::start(&[]).await;
    for (key, value) in
        [("SCHEDULE_MODE", mode), ("SCHEDULE_REQUEST", REQUEST), ("SCHEDULE_CATCH_UP_WINDOW_MINUTES", "1440")]
    {
        app.env.insert(key.to_owned(), value.to_owned());
    }
    app
}

fn slot(at: OffsetDateTime) -> ScheduledStart {
    ScheduledStart { scheduled_time: at.replace_nanosecond(0).unwrap_or(at) }
}

async fn start(app: &TestApp, at: OffsetDateTime) -> Result<Value, maestro_relay::Error> {
    app.webhook().start_on_schedule(&slot(at), OffsetDateTime::now_utc()).await
}

/// The webhook's configuration from the app's environment with `changes`, or its error.
fn config_with(app: &TestApp, changes: &[(&str, &str)]) -> Result<WebhookConfig, maestro_relay::Error> {
    let mut env = app.env.clone();
    for (key, value) in changes {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    WebhookConfig::from_lookup(&|name| env.get(name).cloned())
}

#[tokio::test]
async fn the_same_slot_started_twice_is_one_job_which_the_worker_delivers() {
    let app = app_scheduled("always").await;
    let at = OffsetDateTime::now_utc();
    let first = start(&app, at).await.expect("the first start");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = start(&app, at).await.expect("the repeated start");
    assert_eq!((first["status"].as_str(), again["status"].as_str()), (Some("accepted"), Some("duplicate")));
    assert_eq!(first["jobId"], again["jobId"]);
    let job_id = first["jobId"].as_str().expect("jobId");
    assert_eq!(app.keys("jobs/").await, vec![format!("jobs/{job_id}.json")]);
    let manifest = app.json_object(&format!("jobs/{job_id}.json")).await.expect("manifest");
    assert_eq!((manifest["target"].as_str(), manifest["fileName"].as_str()), (Some("PF2"), Some("PlannedOrders-PF")));
    assert_eq!(manifest["worksheets"], json!(["Planned Orders"]));
    let slot_text = slot(at).scheduled_time.format(&time::format_description::well_known::Rfc3339).expect("rfc3339");
    assert_eq!(manifest["receivedAt"].as_str(), Some(slot_text.as_str()), "the slot, not the clock");

    let answer = app.worker().handle_json(&sqs_event_for(job_id, "m-1"), app.deadline()).await.expect("worker");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    assert!(app.json_object(&format!("receipts/{job_id}.json")).await.is_some(), "delivered");
    assert_eq!(app.sshd.files("PF2").len(), 1);
}

#[tokio::test]
async fn the_webhook_binary_takes_the_schedulers_event_from_events_and_stages_one_job_for_two_invocations() {
    let app = app_scheduled("always").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let event = load_event("schedule-start.json");
    let mut answers = Vec::new();
    for n in 0..2 {
        let out = app
            .invocation(env!("CARGO_BIN_EXE_webhook"), &event, &dir.path().join(format!("schedule-{n}.json")))
            .output()
            .expect("the webhook binary");
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        answers.push(printed.lines().last().unwrap_or_default().to_owned());
    }
    assert!(answers[0].contains("\"accepted\"") && answers[1].contains("\"duplicate\""), "{answers:?}");
    let expected = maestro_relay::job::job_id("schedule\u{1f}PlannedOrders-PF\u{1f}2026-12-07T06:30:00Z");
    assert_eq!(app.keys("jobs/").await, vec![format!("jobs/{expected}.json")]);
}

#[tokio::test]
async fn a_catch_up_after_a_delivery_since_the_previous_slot_stages_nothing_and_one_after_it_a_job() {
    let app = app_scheduled("catch-up").await;
    // The slot's webhook came and was delivered.
    let (status, body) = app.post_webhook(&crate::helpers::signed_event("webhook-http-api-pf.json", &app.whsec)).await;
    assert_eq!(status, 202, "{body}");
    let delivered = body["jobId"].as_str().expect("jobId").to_owned();
    let answer = app.worker().handle_json(&sqs_event_for(&delivered, "m-1"), app.deadline()).await.expect("worker");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");

    // An hour later: the previous slot (a day before) is older than the delivered batch.
    let now = OffsetDateTime::now_utc();
    let skipped = start(&app, now + Duration::from_secs(3600)).await.expect("a quiet catch-up");
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert!(skipped["reason"].as_str().is_some_and(|r| r.contains(&delivered) && r.contains("was delivered")));
    assert_eq!(app.keys("jobs/").await, vec![format!("jobs/{delivered}.json")], "no second job");

    // Two days later, the batch is older than the previous slot: the webhook was lost.
    let caught_up = start(&app, now + Duration::from_secs(2 * 86_400)).await.expect("a catch-up");
    assert_eq!(caught_up["status"], "accepted", "{caught_up}");
    assert_eq!(app.keys("jobs/").await.len(), 2);
}

#[tokio::test]
async fn a_catch_up_for_a_destination_never_delivered_to_stages_the_slots_job() {
    let app = app_scheduled("catch-up").await;
    let answer = start(&app, OffsetDateTime::now_utc()).await.expect("a catch-up");
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(app.keys("jobs/").await.len(), 1);
}

#[tokio::test]
async fn a_scheduled_request_the_allow_list_refuses_is_refused_for_good_and_nothing_is_staged() {
    let app = app_scheduled("always").await;
    // Allowed when the function started; the slot checks again (an allow-list cannot be
    // walked around by what configuration held at start-up).
    let mut config = config_with(&app, &[]).expect("config");
    if let Some(schedule) = config.settings.schedule.as_mut() {
        schedule.request = r#"{"fileName":"PlannedOrders-PF","workbook":{"name":"Payroll"}}"#.to_owned();
    }
    let webhook = maestro_relay::app::webhook(config, &app.sdk);
    let err = webhook.start_on_schedule(&slot(OffsetDateTime::now_utc()), OffsetDateTime::now_utc()).await.unwrap_err();
    assert!(!err.is_transient(), "{}", err.chain());
    assert!(err.chain().contains("(422, workbook") && err.chain().contains("SCHEDULE_REQUEST"), "{}", err.chain());
    assert!(app.keys("jobs/").await.is_empty(), "a job was staged");
}

#[tokio::test]
async fn a_configured_request_that_would_be_refused_leaves_the_webhook_up_and_fails_each_slot_naming_the_field() {
    let mut app = TestApp::start(&[]).await;
    app.env.insert("SCHEDULE_MODE".into(), "always".into());
    for (request, field) in [
        (r#"{"fileName":"PlannedOrders-PF","workbook":{"name":"Payroll"}}"#, "(422, workbook"),
        (
            r#"{"fileName":"PlannedOrders-PF","workbook":{"name":"PlannedOrders Export"},"worksheets":"x"}"#,
            "(400, worksheets)",
        ),
        (r#"{"fileName":"Plan-XX","workbook":{"name":"PlannedOrders Export"}}"#, "(422, fileName)"),
        ("not json", "(400, body)"),
    ] {
        app.env.insert("SCHEDULE_REQUEST".into(), request.into());
        // A later allow-list or routes change must not take the webhooks down with the schedule.
        assert!(config_with(&app, &[]).is_ok(), "{request}: the webhook did not start");
        let err = start(&app, OffsetDateTime::now_utc()).await.expect_err("the slot is refused");
        assert!(!err.is_transient(), "{request}: {}", err.chain());
        assert!(err.chain().contains("SCHEDULE_REQUEST") && err.chain().contains(field), "{request}: {}", err.chain());
    }
    assert!(app.keys("jobs/").await.is_empty(), "nothing staged");
    app.env.remove("SCHEDULE_REQUEST");
    let err = config_with(&app, &[]).map(|_| ()).unwrap_err();
    assert!(err.message.contains("SCHEDULE_REQUEST is required"), "{}", err.message);
    let err =
        config_with(&app, &[("SCHEDULE_MODE", "catch-up"), ("SCHEDULE_REQUEST", REQUEST)]).map(|_| ()).unwrap_err();
    assert!(err.message.contains("SCHEDULE_CATCH_UP_WINDOW_MINUTES"), "{}", err.message);
    let too_long =
        [("SCHEDULE_MODE", "catch-up"), ("SCHEDULE_REQUEST", REQUEST), ("SCHEDULE_CATCH_UP_WINDOW_MINUTES", "10081")];
    let err = config_with(&app, &too_long).map(|_| ()).unwrap_err();
    assert!(err.message.contains("SCHEDULE_CATCH_UP_WINDOW_MINUTES=10081"), "{}", err.message);
    let err = config_with(&app, &[("SCHEDULE_MODE", "daily")]).map(|_| ()).unwrap_err();
    assert!(err.message.contains("SCHEDULE_MODE"), "{}", err.message);
    // Off (the default) reads none of them.
    assert!(config_with(&app, &[("SCHEDULE_MODE", "off"), ("SCHEDULE_REQUEST", "not json")]).is_ok());
}

#[tokio::test]
async fn a_scheduled_start_while_the_schedule_is_off_is_refused_and_stages_nothing() {
    let app = TestApp::start(&[]).await;
    let err = start(&app, OffsetDateTime::now_utc()).await.unwrap_err();
    assert!(!err.is_transient() && err.chain().contains("SCHEDULE_MODE is off"), "{}", err.chain());
    assert!(app.keys("jobs/").await.is_empty());
}
