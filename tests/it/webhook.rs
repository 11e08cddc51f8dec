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
    assert_eq!(job_id, maestro_relay::job::job_id("msg_planned_orders_pf_0600").as_str());
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

/// Through the Lambda entry at a fixed clock: a test at the edge of the time window cannot
/// straddle a second boundary.
async fn post_at(app: &TestApp, event: &Value, at: i64) -> (u16, Value) {
    let request = lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event");
    let now = time::OffsetDateTime::from_unix_timestamp(at).expect("a timestamp");
    let response = app.webhook().handle_lambda_at(request, now).await;
    let status = response.status().as_u16();
    (status, serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null))
}

const NOW: i64 = 1_764_000_000;

#[tokio::test]
async fn unauthenticated_deliveries_get_401_and_stage_nothing() {
    let app = TestApp::start(&[]).await;
    let mut good = load_event(PF_EVENT);
    let body = event_body(&good);
    sign_event(&mut good, &app.whsec, &body, NOW);

    let mut tampered = good.clone();
    tampered["body"] = json!(good["body"].as_str().unwrap_or_default().replace("PF", "WP"));
    let mut stale = load_event(PF_EVENT);
    sign_event(&mut stale, &app.whsec, &body, NOW - 301);
    let mut future = load_event(PF_EVENT);
    sign_event(&mut future, &app.whsec, &body, NOW + 301);
    let mut wrong_key = load_event(PF_EVENT);
    sign_event(&mut wrong_key, "whsec_c2VjcmV0LW9sZC1rZXktZm9yLXJvdGF0aW9u", &body, NOW);
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
        let (status, problem) = post_at(&app, &event, NOW).await;
        assert_eq!(status, 401, "{case}: {problem}");
        assert_eq!(problem["status"], 401);
        assert!(!problem.to_string().contains("whsec_"), "{case}: secret in the answer");
    }
    assert_no_job(&app).await;

    // The edges of the window are inside it: the refusals above were the second past it.
    for at in [NOW - 300, NOW + 300] {
        let mut edge = load_event(PF_EVENT);
        sign_event(&mut edge, &app.whsec, &body, at);
        let (status, answer) = post_at(&app, &edge, NOW).await;
        assert!(status == 202 || status == 200, "signed at {at}: {answer}");
    }
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

/// Through the Lambda entry at a fixed clock, with the response headers.
async fn post_full(app: &TestApp, event: &Value, at: i64) -> (u16, lambda_http::http::HeaderMap, Value) {
    let request = lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event");
    let now = time::OffsetDateTime::from_unix_timestamp(at).expect("a timestamp");
    let response = app.webhook().handle_lambda_at(request, now).await;
    let status = response.status().as_u16();
    let body = serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null);
    (status, response.headers().clone(), body)
}

/// The PF event with `body`, signed at `at` under `id`.
fn pf_with(app: &TestApp, id: &str, body: &Value, at: i64) -> Value {
    let mut event = load_event(PF_EVENT);
    event["headers"]["webhook-id"] = json!(id);
    sign_event(&mut event, &app.whsec, body.to_string().as_bytes(), at);
    event
}

fn pf_body() -> Value {
    serde_json::from_slice(&event_body(&load_event(PF_EVENT))).expect("the PF body")
}

#[tokio::test]
async fn a_caller_outside_the_allowed_sources_gets_403_before_authentication_and_nothing_is_staged() {
    let mut app = TestApp::start(&[]).await;
    app.env.insert("ALLOWED_SOURCE_CIDRS".into(), "198.51.100.0/24, 2001:db8::/32".into());
    // The events come from 203.0.113.10: signed or not, HTTP API or REST API, the answer
    // is the same 403, so the source learns nothing about its credentials.
    let mut rest = load_event("webhook-rest-api-pf.json");
    let rest_body = event_body(&rest);
    sign_event(&mut rest, &app.whsec, &rest_body, NOW);
    let mut signed = load_event(PF_EVENT);
    let signed_body = event_body(&signed);
    sign_event(&mut signed, &app.whsec, &signed_body, NOW);
    for (case, event) in [("signed", signed.clone()), ("unsigned", load_event("webhook-unsigned.json")), ("REST", rest)]
    {
        let (status, headers, problem) = post_full(&app, &event, NOW).await;
        assert_eq!(status, 403, "{case}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json", "{case}");
        assert_eq!(problem["status"], 403);
    }
    // No source address at all (not through API Gateway) is refused too.
    let mut sourceless = signed.clone();
    sourceless["requestContext"]["http"].as_object_mut().expect("http").remove("sourceIp");
    assert_eq!(post_full(&app, &sourceless, NOW).await.0, 403);
    assert_no_job(&app).await;

    app.env.insert("ALLOWED_SOURCE_CIDRS".into(), "198.51.100.0/24, 203.0.113.0/24".into());
    let (status, _, answer) = post_full(&app, &signed, NOW).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn requests_outside_the_allow_list_get_422_naming_the_field_and_nothing_is_staged() {
    let mut app = TestApp::start(&[]).await;
    let mut other_workbook = pf_body();
    other_workbook["workbook"] = json!({"name": "Payroll", "scope": "Public"});
    // The default: the planned-orders workbook only.
    let (status, problem) = post_at(&app, &pf_with(&app, "m-default", &other_workbook, NOW), NOW).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("workbook")), "{problem}");

    app.env.insert(
        "ALLOWED_REQUESTS".into(),
        json!({
            "PF2": {"workbooks": ["PlannedOrders Export"], "worksheets": ["Planned Orders"],
                    "scenarios": ["Enterprise Data"], "filters": [{"name": "Late Orders", "scope": "Public"}]},
            "WP2": {"workbooks": ["*"]}
        })
        .to_string(),
    );
    let mut private = pf_body();
    private["workbook"]["scope"] = json!("Private");
    let mut sheets = pf_body();
    sheets["worksheets"] = json!(["Planned Orders", "Salaries"]);
    let mut scenario = pf_body();
    scenario["scenario"] = json!({"name": "What-if 3", "scope": "Public"});
    let mut filter = pf_body();
    filter["filter"] = json!({"name": "Everything", "scope": "Public"});
    for (id, body, field) in [
        ("m-workbook", other_workbook.clone(), "workbook"),
        ("m-scope", private, "workbook"),
        ("m-sheets", sheets, "worksheets[1]"),
        ("m-scenario", scenario, "scenario"),
        ("m-filter", filter, "filter"),
    ] {
        let (status, headers, problem) = post_full(&app, &pf_with(&app, id, &body, NOW), NOW).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{id}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    assert_no_job(&app).await;

    let mut listed_filter = pf_body();
    listed_filter["filter"] = json!({"name": "Late Orders", "scope": "Public"});
    assert_eq!(post_at(&app, &pf_with(&app, "m-listed", &listed_filter, NOW), NOW).await.0, 202);
    // WP2 takes any workbook.
    let mut wp = other_workbook;
    wp["fileName"] = json!("PlannedOrders-WP");
    assert_eq!(post_at(&app, &pf_with(&app, "m-wp", &wp, NOW), NOW).await.0, 202);
}

#[tokio::test]
async fn a_site_group_or_variable_outside_the_allow_list_gets_422_naming_it_and_nothing_is_staged() {
    let mut app = TestApp::start(&[]).await;
    let mut horizon = pf_body();
    horizon["variables"] = json!({"Horizon": "30"});
    // The default admits no variable.
    let (status, problem) = post_at(&app, &pf_with(&app, "m-var-default", &horizon, NOW), NOW).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("variables.Horizon")), "{problem}");

    app.env.insert(
        "ALLOWED_REQUESTS".into(),
        json!({"*": {"workbooks": ["PlannedOrders Export"], "siteGroups": ["All Sites"], "variables": {"Horizon": ["30"]}}})
            .to_string(),
    );
    let mut other_sites = pf_body();
    other_sites["siteGroup"] = json!("Plant 2000");
    let mut long_horizon = pf_body();
    long_horizon["variables"] = json!({"Horizon": "3650"});
    let mut unlisted = pf_body();
    unlisted["variables"] = json!({"Horizon": "30", "Site": "2000"});
    for (id, body, field) in [
        ("m-sites", other_sites, "siteGroup"),
        ("m-horizon", long_horizon, "variables.Horizon"),
        ("m-unlisted", unlisted, "variables.Site"),
    ] {
        let (status, problem) = post_at(&app, &pf_with(&app, id, &body, NOW), NOW).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{id}: {problem}");
    }
    assert_no_job(&app).await;
    assert_eq!(post_at(&app, &pf_with(&app, "m-listed-var", &horizon, NOW), NOW).await.0, 202);
}

#[tokio::test]
async fn more_than_twenty_worksheets_get_400_naming_the_field() {
    let app = TestApp::start(&[]).await;
    let mut body = pf_body();
    body["worksheets"] = json!((0..21).map(|i| format!("Sheet {i}")).collect::<Vec<_>>());
    let (status, problem) = post_at(&app, &pf_with(&app, "m-21", &body, NOW), NOW).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("worksheets")), "{problem}");
    assert_no_job(&app).await;
}

#[tokio::test]
async fn the_daily_budget_takes_its_jobs_then_answers_429_with_retry_after_and_a_repeat_is_not_counted() {
    let mut app = TestApp::start(&[]).await;
    app.env.insert("DAILY_JOB_BUDGET".into(), "2".into());
    // 22:00:00 UTC: the budget renews in two hours.
    let at = NOW + 6 * 3600;
    let body = pf_body();
    for id in ["m-1", "m-2"] {
        let (status, _, answer) = post_full(&app, &pf_with(&app, id, &body, at), at).await;
        assert_eq!(status, 202, "{id}: {answer}");
    }
    let (status, _, answer) = post_full(&app, &pf_with(&app, "m-1", &body, at), at).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "a repeat is answered, not counted");
    let (status, headers, problem) = post_full(&app, &pf_with(&app, "m-3", &body, at), at).await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(headers["retry-after"], "7200");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem["field"], "fileName");
    assert_eq!(app.keys("jobs/").await.len(), 2, "the refused job was not staged");
    // Another file name and target has a budget of its own; tomorrow the PF one renews.
    let mut wp = body.clone();
    wp["fileName"] = json!("PlannedOrders-WP");
    assert_eq!(post_full(&app, &pf_with(&app, "m-wp", &wp, at), at).await.0, 202);
    let tomorrow = at + 7200;
    assert_eq!(post_full(&app, &pf_with(&app, "m-3", &body, tomorrow), tomorrow).await.0, 202);
}

#[tokio::test]
async fn a_sender_varying_file_names_is_stopped_by_the_targets_daily_total() {
    let mut app = TestApp::start(&[]).await;
    app.env.insert("DAILY_JOB_BUDGET".into(), "5".into());
    app.env.insert("DAILY_TARGET_BUDGET".into(), "2".into());
    let at = NOW + 6 * 3600;
    for (id, name) in [("m-a", "PlannedOrders-PF"), ("m-b", "OtherOrders-PF")] {
        let mut body = pf_body();
        body["fileName"] = json!(name);
        assert_eq!(post_full(&app, &pf_with(&app, id, &body, at), at).await.0, 202, "{id}");
    }
    let mut third = pf_body();
    third["fileName"] = json!("ThirdName-PF");
    let (status, headers, problem) = post_full(&app, &pf_with(&app, "m-c", &third, at), at).await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(headers["retry-after"], "7200");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("DAILY_TARGET_BUDGET"), "{problem}");
    assert_eq!(app.keys("jobs/").await.len(), 2, "the refused job was not staged");
    // WP2 has a total of its own.
    let mut wp = pf_body();
    wp["fileName"] = json!("PlannedOrders-WP");
    assert_eq!(post_full(&app, &pf_with(&app, "m-wp", &wp, at), at).await.0, 202);
}

#[tokio::test]
async fn a_webhook_secret_that_cannot_authenticate_anyone_is_a_503_naming_the_problem_not_a_401() {
    let app = TestApp::start(&[]).await;
    let secret_id = app.env["WEBHOOK_SECRET_ID"].clone();
    let mut event = load_event(PF_EVENT);
    let body = event_body(&event);
    sign_event(&mut event, &app.whsec, &body, NOW);
    for (secret, class) in [
        (json!({"bearer_tokens": ["tok-1"]}), "webhook-secret-no-credential"),
        (json!({"hmac_secrets": [app.whsec, "whsec_***not base64***"]}), "webhook-secret-bad-key"),
        (json!({"ed25519_public_keys": ["whpk_c2hvcnQ="]}), "webhook-secret-bad-key"),
        (json!(["not", "an", "object"]), "webhook-secret-unparsable"),
    ] {
        app.set_secret(&secret_id, secret).await;
        let (status, headers, problem) = post_full(&app, &event, NOW).await;
        assert_eq!(status, 503, "{class}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["problem"], class, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("misconfigured") && !detail.contains("retry later"), "{detail}");
        assert!(!problem.to_string().contains("tok-1") && !problem.to_string().contains("not base64"));
    }
    assert_no_job(&app).await;
    // Fixed: the next request reads the secret again instead of a cached bad copy.
    app.set_secret(&secret_id, json!({"hmac_secrets": [app.whsec]})).await;
    let webhook = app.webhook();
    let bad = json!({"bearer_tokens": ["tok-1"]});
    app.set_secret(&secret_id, bad).await;
    let request = |e: &Value| lambda_http::request::from_str(&e.to_string()).expect("event");
    let at = time::OffsetDateTime::from_unix_timestamp(NOW).expect("time");
    assert_eq!(webhook.handle_lambda_at(request(&event), at).await.status().as_u16(), 503);
    app.set_secret(&secret_id, json!({"hmac_secrets": [app.whsec]})).await;
    assert_eq!(webhook.handle_lambda_at(request(&event), at).await.status().as_u16(), 202);
    // The unauthenticated caller learns the class, never which secret: the ARN stays in the log.
    app.set_secret(&secret_id, json!(["not", "an", "object"])).await;
    let (_, _, problem) = post_full(&app, &event, NOW).await;
    assert!(!problem.to_string().contains(&secret_id), "{problem}");
}

#[tokio::test]
async fn an_unsigned_request_gets_401_whatever_else_is_wrong_with_it() {
    let app = TestApp::start(&[]).await;
    let unsigned = load_event("webhook-unsigned.json");
    let mut text_plain = unsigned.clone();
    text_plain["headers"]["content-type"] = json!("text/plain");
    let mut broken_json = unsigned.clone();
    broken_json["body"] = json!("{\"fileName\": ");
    let mut unknown_suffix = unsigned.clone();
    unknown_suffix["body"] = json!(r#"{"fileName":"Orders-XX","workbook":{"name":"Payroll"}}"#);
    let mut many_sheets = unsigned.clone();
    let sheets: Vec<String> = (0..21).map(|i| format!("S{i}")).collect();
    many_sheets["body"] =
        json!(json!({"fileName": "A-PF", "workbook": {"name": "W"}, "worksheets": sheets}).to_string());
    for (case, event) in [
        ("bad content type", text_plain),
        ("bad JSON", broken_json),
        ("unknown suffix, other workbook", unknown_suffix),
        ("21 worksheets", many_sheets),
    ] {
        let (status, problem) = post_at(&app, &event, NOW).await;
        assert_eq!(status, 401, "{case}: {problem}");
    }
    assert_no_job(&app).await;
}

/// Signs `body` as a Standard Webhooks `v1a` sender with Python's `cryptography`, exactly as
/// the specification says: ed25519 over `{id}.{timestamp}.{body}`, `v1a,<base64>`, the
/// public key as `whpk_<base64 of its 32 raw bytes>`. Prints the key, then the signature.
const PYTHON_V1A_SIGNER: &str = "import sys, base64\n\
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
from cryptography.hazmat.primitives import serialization\n\
key = Ed25519PrivateKey.generate()\n\
raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)\n\
signed = sys.argv[1].encode() + b'.' + sys.argv[2].encode() + b'.' + sys.stdin.buffer.read()\n\
print('whpk_' + base64.b64encode(raw).decode())\n\
print('v1a,' + base64.b64encode(key.sign(signed)).decode())";

#[tokio::test]
async fn v1a_deliveries_signed_with_pythons_cryptography_verify_against_the_public_key_alone() {
    let app = TestApp::start(&[]).await;
    let secret_id = app.env["WEBHOOK_SECRET_ID"].clone();
    let mut event = load_event(PF_EVENT);
    let body = event_body(&event);
    let id = event["headers"]["webhook-id"].as_str().expect("webhook-id").to_owned();
    let printed = reference_library(PYTHON_V1A_SIGNER, &[&id, &NOW.to_string()], &body);
    let (public_key, signature) = printed.split_once('\n').expect("key and signature");
    assert!(public_key.starts_with("whpk_") && signature.starts_with("v1a,"), "{printed}");
    event["headers"]["webhook-timestamp"] = json!(NOW.to_string());

    // Only the public key in the store: nothing there could sign.
    app.set_secret(&secret_id, json!({"ed25519_public_keys": [public_key]})).await;
    let mut tampered = event.clone();
    tampered["headers"]["webhook-signature"] = json!(signature);
    tampered["body"] = json!(String::from_utf8_lossy(&body).replace("Enterprise Data", "What-if"));
    assert_eq!(post_at(&app, &tampered, NOW).await.0, 401, "a signature over another body");
    event["headers"]["webhook-signature"] = json!(signature);
    let (status, answer) = post_at(&app, &event, NOW).await;
    assert_eq!(status, 202, "{answer}");

    // During a migration both kinds are configured and either signature suffices.
    app.set_secret(&secret_id, json!({"hmac_secrets": [app.whsec], "ed25519_public_keys": [public_key]})).await;
    let v1 = maestro_relay::webhook::auth::sign(&app.whsec, &id, NOW, &body).expect("v1");
    for header in [v1.clone(), format!("{v1} {signature}"), signature.to_owned()] {
        event["headers"]["webhook-signature"] = json!(header);
        let (status, answer) = post_at(&app, &event, NOW).await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{header}: {answer}");
    }

    // And what we sign as v1a (the demo, the tests) verifies with `cryptography`.
    let (ours, our_key) = maestro_relay::webhook::auth::sign_v1a(&[9; 32], "msg_1", NOW, &body).expect("sign");
    let verdict = reference_library(
        "import sys, base64\n\
         from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey\n\
         key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[1].removeprefix('whpk_')))\n\
         key.verify(base64.b64decode(sys.argv[2].removeprefix('v1a,')), b'msg_1.' + sys.argv[3].encode() + b'.' + sys.stdin.buffer.read())\n\
         print('verified')",
        &[&our_key, &ours, &NOW.to_string()],
        &body,
    );
    assert_eq!(verdict, "verified");
}

#[tokio::test]
async fn a_table_request_is_refused_by_the_default_allow_list_and_one_naming_both_sources_is_a_400() {
    let app = TestApp::start(&[]).await;
    let (status, problem) = app.post_webhook(&signed_event("webhook-http-api-bulk-wp.json", &app.whsec)).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("table")), "{problem}");
    let (status, problem) = app.post_webhook(&signed_event("webhook-both-sources.json", &app.whsec)).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("table")), "{problem}");
    assert_no_job(&app).await;
}

#[tokio::test]
async fn a_hundred_junk_v1a_entries_get_401_at_once_even_beside_a_valid_one_and_stage_nothing() {
    use base64::Engine;
    let app = TestApp::start(&[]).await;
    let secret_id = app.env["WEBHOOK_SECRET_ID"].clone();
    let mut event = load_event(PF_EVENT);
    let body = event_body(&event);
    let id = event["headers"]["webhook-id"].as_str().expect("webhook-id").to_owned();
    let (valid, public_key) = maestro_relay::webhook::auth::sign_v1a(&[9; 32], &id, NOW, &body).expect("sign");
    app.set_secret(&secret_id, json!({"ed25519_public_keys": [public_key]})).await;
    event["headers"]["webhook-timestamp"] = json!(NOW.to_string());
    // Of the right length (64 bytes), each different: nothing but the count refuses them.
    let junk: Vec<String> =
        (0..100u8).map(|i| format!("v1a,{}", base64::engine::general_purpose::STANDARD.encode([i; 64]))).collect();
    for (case, header) in
        [("100 junk", junk.join(" ")), ("100 junk and a valid one", format!("{} {valid}", junk.join(" ")))]
    {
        event["headers"]["webhook-signature"] = json!(header);
        let (status, problem) = post_at(&app, &event, NOW).await;
        assert_eq!(status, 401, "{case}: {problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains("more than 4 v1a"), "{case}: {problem}");
    }
    assert_no_job(&app).await;
    event["headers"]["webhook-signature"] = json!(valid);
    let (status, answer) = post_at(&app, &event, NOW).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn a_webhook_id_with_whitespace_or_over_256_characters_gets_400_naming_it_and_nothing_is_staged() {
    let app = TestApp::start(&[]).await;
    let body = event_body(&load_event(PF_EVENT));
    for id in ["msg planned".to_owned(), " msg_planned".to_owned(), "m".repeat(257)] {
        let mut event = load_event(PF_EVENT);
        event["headers"]["webhook-id"] = json!(id);
        event["headers"]["webhook-timestamp"] = json!(NOW.to_string());
        let signature = maestro_relay::webhook::auth::sign(&app.whsec, &id, NOW, &body).expect("sign");
        event["headers"]["webhook-signature"] = json!(signature);
        let (status, problem) = post_at(&app, &event, NOW).await;
        assert_eq!(status, 400, "{id:?}: {problem}");
        assert_eq!(problem["field"], "webhook-id", "{id:?}: {problem}");
    }
    assert_no_job(&app).await;
    let id = "m".repeat(256);
    let mut event = load_event(PF_EVENT);
    event["headers"]["webhook-id"] = json!(id);
    sign_event(&mut event, &app.whsec, &body, NOW);
    let (status, answer) = post_at(&app, &event, NOW).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(app.keys("jobs/").await.len(), 1);
}
