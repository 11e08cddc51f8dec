//! The webhook function against real moto_server: every row of the status table.

use std::sync::Arc;

use maestro_relay::aws::{S3Store, SecretsManager};
use maestro_relay::config::WebhookConfig;
use maestro_relay::secrets::CachedSecrets;
use maestro_relay::webhook::Webhook;
use serde_json::{json, Value};

use crate::helpers::{event_body, free_port, load_event, now, sdk_config, sign_event, signed_event, TestApp, WHSEC};

const PF_EVENT: &str = "webhook-http-api-pf.json";

/// The PF event carrying `body`, signed; a body that is not UTF-8 can only travel
/// base64-encoded, as API Gateway sends binary bodies.
fn with_body(app: &TestApp, body: &[u8]) -> Value {
    let file = if std::str::from_utf8(body).is_ok() { PF_EVENT } else { "webhook-http-api-base64.json" };
    let mut event = load_event(file);
    sign_event(&mut event, &app.whsec, body, now());
    event
}

async fn assert_no_job(app: &TestApp) {
    assert!(app.keys("jobs/").await.is_empty(), "a job was staged");
}

#[tokio::test]
async fn a_signed_delivery_is_accepted_and_staged_as_a_manifest_with_its_target() {
    let app = TestApp::start(&[]).await;
    let event = signed_event(PF_EVENT, &app.whsec);
    let (status, body) = app.post_webhook(&event).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["target"], "PF2");
    let job_id = body["jobId"].as_str().expect("jobId");
    assert_eq!(job_id, maestro_relay::job::job_id("msg_planned_orders_pf_0600"));
    let manifest = app.json_object(&format!("jobs/{job_id}.json")).await.expect("manifest");
    assert_eq!(manifest["target"], "PF2");
    assert_eq!(manifest["fileName"], "PlannedOrders-PF");
    assert_eq!(manifest["workbook"], json!({"name": "PlannedOrders Export", "scope": "Public"}));
    assert_eq!(manifest["contentSha256"], maestro_relay::job::sha256_hex(&event_body(&event)));
    assert!(manifest["receivedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn base64_encoded_http_api_bodies_and_rest_api_events_are_accepted() {
    let app = TestApp::start(&[]).await;
    for file in ["webhook-http-api-base64.json", "webhook-rest-api-pf.json"] {
        let (status, body) = app.post_webhook(&signed_event(file, &app.whsec)).await;
        assert_eq!(status, 202, "{file}: {body}");
    }
    assert_eq!(app.keys("jobs/").await.len(), 2);
}

#[tokio::test]
async fn the_same_delivery_again_is_a_duplicate_and_another_body_under_its_id_a_conflict() {
    let app = TestApp::start(&[]).await;
    let (first, _) = app.post_webhook(&signed_event(PF_EVENT, &app.whsec)).await;
    let (again, body) = app.post_webhook(&signed_event(PF_EVENT, &app.whsec)).await;
    assert_eq!((first, again), (202, 200));
    assert_eq!(body["status"], "duplicate");
    let (status, problem) = app.post_webhook(&signed_event("webhook-conflict.json", &app.whsec)).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(app.keys("jobs/").await.len(), 1);
}

#[tokio::test]
async fn a_hundred_concurrent_deliveries_of_one_webhook_make_exactly_one_job() {
    let app = TestApp::start(&[]).await;
    let webhook = Arc::new(app.webhook());
    let event = signed_event(PF_EVENT, &app.whsec).to_string();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let webhook = webhook.clone();
            let event = event.clone();
            tokio::spawn(async move {
                let request = lambda_http::request::from_str(&event).expect("event");
                webhook.handle_lambda(request).await.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 99, "{statuses:?}");
    assert_eq!(app.keys("jobs/").await.len(), 1);
}

#[tokio::test]
async fn unauthenticated_deliveries_get_401_and_stage_nothing() {
    let app = TestApp::start(&[]).await;
    let good = signed_event(PF_EVENT, &app.whsec);

    let mut tampered = good.clone();
    tampered["body"] = json!(good["body"].as_str().unwrap_or_default().replace("PF", "WP"));
    let mut stale = load_event(PF_EVENT);
    let body = event_body(&stale);
    sign_event(&mut stale, &app.whsec, &body, now() - 301);
    let mut future = load_event(PF_EVENT);
    sign_event(&mut future, &app.whsec, &body, now() + 301);
    let mut wrong_key = load_event(PF_EVENT);
    sign_event(&mut wrong_key, "whsec_c2VjcmV0LW9sZC1rZXktZm9yLXJvdGF0aW9u", &body, now());
    let unsigned = load_event("webhook-unsigned.json");
    let mut no_timestamp = good.clone();
    no_timestamp["headers"].as_object_mut().expect("headers").remove("webhook-timestamp");

    for (case, event) in [
        ("tampered body", tampered),
        ("stale timestamp", stale),
        ("future timestamp", future),
        ("wrong key", wrong_key),
        ("missing signature", unsigned),
        ("missing timestamp", no_timestamp),
    ] {
        let (status, problem) = app.post_webhook(&event).await;
        assert_eq!(status, 401, "{case}: {problem}");
        assert_eq!(problem["status"], 401);
        assert!(!problem.to_string().contains("whsec_"), "{case}: secret in the answer");
    }
    assert_no_job(&app).await;
}

#[tokio::test]
async fn a_rotated_key_is_accepted_while_both_keys_are_configured() {
    let app = TestApp::start(&[]).await;
    let old = "whsec_c2VjcmV0LW9sZC1rZXktZm9yLXJvdGF0aW9u";
    let secret_id = app.env["WEBHOOK_SECRET_ID"].clone();
    app.set_secret(&secret_id, json!({"hmac_secrets": [app.whsec, old]})).await;
    let (status, body) = app.post_webhook(&signed_event(PF_EVENT, old)).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_before_authentication() {
    let app = TestApp::start(&[]).await;
    // Unsigned as well: the size is refused before the signature is even looked at.
    let event = load_event("webhook-too-large.json");
    assert!(event_body(&event).len() > 256 * 1024);
    let (status, problem) = app.post_webhook(&event).await;
    assert_eq!(status, 413, "{problem}");
    assert_no_job(&app).await;
}

#[tokio::test]
async fn a_non_json_content_type_gets_415_and_a_missing_one_is_read_as_json() {
    let app = TestApp::start(&[]).await;
    let mut event = signed_event("webhook-not-json.json", &app.whsec);
    assert_eq!(app.post_webhook(&event).await.0, 415);
    assert_no_job(&app).await;
    event["headers"].as_object_mut().expect("headers").remove("content-type");
    assert_eq!(app.post_webhook(&event).await.0, 202);
}

#[tokio::test]
async fn malformed_empty_non_utf8_or_invalid_bodies_get_400_naming_the_field() {
    let app = TestApp::start(&[]).await;
    let (status, problem) = app.post_webhook(&signed_event("webhook-invalid-field.json", &app.whsec)).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("fileName")), "{problem}");
    for (body, field) in [
        (&b"{\"fileName\": "[..], "body"),
        (b"", "body"),
        (b"\xff\xfe\x00{}", "body"),
        (br#"{"workbook":{"name":"W"}}"#, "fileName"),
        (br#"{"fileName":"../../etc/passwd-PF","workbook":{"name":"W"}}"#, "fileName"),
        (br#"{"fileName":"A-PF","workbook":{"scope":"Public"}}"#, "workbook.name"),
        (br#"{"fileName":"A-PF","workbook":{"name":"W"},"worksheets":"Planned Orders"}"#, "worksheets"),
    ] {
        let event = with_body(&app, body);
        let (status, problem) = app.post_webhook(&event).await;
        assert_eq!(status, 400, "{field}: {problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    assert_no_job(&app).await;
}

#[tokio::test]
async fn a_file_name_without_a_known_suffix_gets_422() {
    let app = TestApp::start(&[]).await;
    let (status, problem) = app.post_webhook(&signed_event("webhook-unknown-suffix.json", &app.whsec)).await;
    assert_eq!(status, 422, "{problem}");
    for name in ["PlannedOrders-XX", "Setupf", "PF"] {
        let body = format!(r#"{{"fileName":"{name}","workbook":{{"name":"W"}}}}"#);
        let (status, problem) = app.post_webhook(&with_body(&app, body.as_bytes())).await;
        assert_eq!(status, 422, "{name}: {problem}");
    }
    assert_no_job(&app).await;
}

#[tokio::test]
async fn s3_unavailable_gets_503_and_no_job() {
    let app = TestApp::start(&[]).await;
    let config = WebhookConfig::from_lookup(&|name| app.env.get(name).cloned()).expect("config");
    let dead_s3 = sdk_config(&format!("http://127.0.0.1:{}", free_port())).await;
    let webhook = Webhook::new(
        S3Store::from_sdk_config(&dead_s3, &config.staging_bucket),
        CachedSecrets::new(SecretsManager::from_sdk_config(&app.sdk), config.secret_cache_ttl),
        config.settings,
    );
    let event = signed_event(PF_EVENT, &app.whsec).to_string();
    let response = webhook.handle_lambda(lambda_http::request::from_str(&event).expect("event")).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_no_job(&app).await;
}

#[tokio::test]
async fn secrets_manager_unavailable_gets_503() {
    let app = TestApp::start(&[]).await;
    let config = WebhookConfig::from_lookup(&|name| app.env.get(name).cloned()).expect("config");
    let dead = sdk_config(&format!("http://127.0.0.1:{}", free_port())).await;
    let webhook = Webhook::new(
        S3Store::from_sdk_config(&app.sdk, &config.staging_bucket),
        CachedSecrets::new(SecretsManager::from_sdk_config(&dead), config.secret_cache_ttl),
        config.settings,
    );
    let event = signed_event(PF_EVENT, &app.whsec).to_string();
    let response = webhook.handle_lambda(lambda_http::request::from_str(&event).expect("event")).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_no_job(&app).await;
}

/// Signs with the Standard Webhooks reference library (Python, from the project venv) or
/// verifies our signature with it.
fn reference_library(script: &str, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(format!("{}/.venv/bin/python", crate::helpers::ROOT))
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python with standardwebhooks (scripts/bootstrap.sh)");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write body");
    let out = child.wait_with_output().expect("reference library");
    assert!(out.status.success(), "the reference library failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn deliveries_signed_by_the_standard_webhooks_reference_library_are_accepted_and_ours_verify_there() {
    let app = TestApp::start(&[]).await;
    let mut event = load_event(PF_EVENT);
    let body = event_body(&event);
    let timestamp = now();
    let signature = reference_library(
        "import sys, datetime\nfrom standardwebhooks.webhooks import Webhook\n\
         ts = datetime.datetime.fromtimestamp(int(sys.argv[3]), tz=datetime.timezone.utc)\n\
         print(Webhook(sys.argv[1]).sign(sys.argv[2], ts, sys.stdin.read()))",
        &[&app.whsec, "msg_planned_orders_pf_0600", &timestamp.to_string()],
        &body,
    );
    event["headers"]["webhook-timestamp"] = json!(timestamp.to_string());
    event["headers"]["webhook-signature"] = json!(signature);
    let (status, answer) = app.post_webhook(&event).await;
    assert_eq!(status, 202, "{answer}");

    let ours = maestro_relay::webhook::auth::sign(&app.whsec, "msg_1", timestamp, &body).expect("sign");
    let verdict = reference_library(
        "import sys\nfrom standardwebhooks.webhooks import Webhook\n\
         headers = {'webhook-id': 'msg_1', 'webhook-timestamp': sys.argv[2], 'webhook-signature': sys.argv[3]}\n\
         Webhook(sys.argv[1]).verify(sys.stdin.read(), headers)\nprint('verified')",
        &[&app.whsec, &timestamp.to_string(), &ours],
        &body,
    );
    assert_eq!(verdict, "verified");
}

#[tokio::test]
async fn bearer_and_basic_modes_accept_their_credentials_and_refuse_others() {
    let mut app = TestApp::start(&[]).await;
    let secret = app
        .put_secret(
            "webhook-tokens",
            json!({"bearer_tokens": ["tok-1"], "basic": [{"username": "maestro", "password": "pw"}]}),
        )
        .await;
    app.env.insert("WEBHOOK_SECRET_ID".into(), secret);
    let basic_ok =
        format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "maestro:pw"));
    for (mode, good, bad) in
        [("bearer", "Bearer tok-1".to_owned(), "Bearer tok-2"), ("basic", basic_ok, "Basic bWFlc3RybzpweA==")]
    {
        app.env.insert("WEBHOOK_AUTH_MODE".into(), mode.into());
        let mut event = load_event("webhook-unsigned.json");
        event["headers"]["webhook-id"] = json!(format!("msg_{mode}"));
        event["headers"]["authorization"] = json!(bad);
        assert_eq!(app.post_webhook(&event).await.0, 401, "{mode}");
        event["headers"]["authorization"] = json!(good);
        let (status, body) = app.post_webhook(&event).await;
        assert_eq!(status, 202, "{mode}: {body}");
    }
}

#[tokio::test]
async fn a_request_without_worksheets_takes_the_configured_default_or_is_refused_naming_the_field() {
    let mut app = TestApp::start(&[]).await;
    let mut event = load_event("webhook-http-api-pf.json");
    let mut body: Value = serde_json::from_slice(&event_body(&event)).expect("body");
    body.as_object_mut().expect("object").remove("worksheets");
    let body = serde_json::to_vec(&body).expect("body");
    sign_event(&mut event, WHSEC, &body, now());

    app.env.remove("WORKSHEETS");
    let (status, answer) = app.post_webhook(&event).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "worksheets");
    assert!(app.keys("jobs/").await.is_empty(), "nothing staged");

    app.env.insert("WORKSHEETS".into(), "Planned Orders, Firm Orders".into());
    let (status, answer) = app.post_webhook(&event).await;
    assert_eq!(status, 202, "{answer}");
    let manifest = app.json_object(&format!("jobs/{}.json", answer["jobId"].as_str().unwrap_or_default())).await;
    assert_eq!(manifest.expect("manifest")["worksheets"], serde_json::json!(["Planned Orders", "Firm Orders"]));
}
