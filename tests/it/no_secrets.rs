//! Secrets never reach the output ops read: the real `webhook` and `worker` binaries run
//! through the Lambda Runtime API stand-in at TRACE, the most a level setting can ask for
//! (where `lambda_runtime` would log every raw event), in each authentication mode, on
//! deliveries that succeed and on ones that fail because of a secret, and nothing they
//! print holds a secret's value.

use serde_json::{json, Value};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::helpers::{load_event, signed_event, sqs_event_for, TestApp, WHSEC};

const BEARER_TOKEN: &str = "bearer-token-9e4c1f";
const BASIC_PASSWORD: &str = "basic-password-2b7d";

/// Runs one event through a function binary as Lambda would, logging at TRACE; returns
/// its answer and everything the binary and the runtime stand-in printed.
fn invoke(app: &TestApp, binary: &str, event: &Value) -> (bool, String) {
    invoke_logging(app, binary, event, &[("RUST_LOG", "trace")])
}

fn invoke_logging(app: &TestApp, binary: &str, event: &Value, level: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = app
        .invocation(binary, event, &dir.path().join("event.json"))
        .env_remove("RUST_LOG")
        .envs(level.iter().copied())
        .output()
        .expect("scripts/lambda_rie.py (run scripts/bootstrap.sh)");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

#[tokio::test]
async fn no_secret_value_appears_in_what_the_functions_print_when_they_succeed_or_fail() {
    let mut app = TestApp::start(&["--rows", "30"]).await;
    let (webhook, worker) = (env!("CARGO_BIN_EXE_webhook"), env!("CARGO_BIN_EXE_worker"));
    let mut printed = String::new();

    let (_, out) = invoke(&app, webhook, &signed_event("webhook-http-api-pf.json", WHSEC));
    printed.push_str(&out);
    let mut forged = load_event("webhook-http-api-wp.json");
    forged["headers"]["webhook-signature"] = json!("v1,bm90IHRoZSByaWdodCBzaWduYXR1cmU=");
    let (_, out) = invoke(&app, webhook, &forged);
    printed.push_str(&out);

    // Bearer and HTTP Basic: the credential rides in the event's Authorization header, which
    // a raw-event log would print. Accepted and refused, at each way of asking for TRACE.
    let tokens = app
        .put_secret(
            "webhook-tokens",
            json!({"bearer_tokens": [BEARER_TOKEN], "basic": [{"username": "maestro", "password": BASIC_PASSWORD}]}),
        )
        .await;
    let hmac_secret = app.env.insert("WEBHOOK_SECRET_ID".into(), tokens).expect("the HMAC secret id");
    let basic = format!("Basic {}", STANDARD.encode(format!("maestro:{BASIC_PASSWORD}")));
    let levels: [&[(&str, &str)]; 3] =
        [&[("RUST_LOG", "trace")], &[("AWS_LAMBDA_LOG_LEVEL", "TRACE")], &[("RUST_LOG", "lambda_runtime=trace,trace")]];
    for (mode, good, level) in [("bearer", format!("Bearer {BEARER_TOKEN}"), levels[0]), ("basic", basic, levels[1])] {
        app.env.insert("WEBHOOK_AUTH_MODE".into(), mode.into());
        for (case, authorization) in [("good", good.clone()), ("wrong", format!("{good}x"))] {
            let mut event = load_event("webhook-unsigned.json");
            event["headers"]["webhook-id"] = json!(format!("msg_{mode}_{case}"));
            event["headers"]["authorization"] = json!(authorization);
            for level in [level, levels[2]] {
                let (_, out) = invoke_logging(&app, webhook, &event, level);
                assert!(
                    out.contains("webhook accepted") || out.contains("webhook refused"),
                    "{mode}: no answer:\n{out}"
                );
                printed.push_str(&out);
            }
        }
    }
    // A secret that cannot authenticate in the active mode is an ERROR line naming it.
    app.env.insert("WEBHOOK_AUTH_MODE".into(), "hmac".into());
    let (_, out) = invoke(&app, webhook, &signed_event("webhook-http-api-wp.json", WHSEC));
    assert!(out.contains("webhook misconfigured") && out.contains("webhook-secret-no-credential"), "{out}");
    assert!(out.contains(r#""level":"ERROR""#), "the misconfiguration is not an ERROR line:\n{out}");
    printed.push_str(&out);
    app.env.insert("WEBHOOK_SECRET_ID".into(), hmac_secret);

    let delivered = maestro_relay::job::job_id("msg_planned_orders_pf_0600");
    assert!(app.object(&format!("jobs/{delivered}.json")).await.is_some(), "the webhook staged no job:\n{printed}");
    let (answered, out) = invoke(&app, worker, &sqs_event_for(&delivered, "m-ok"));
    assert!(answered && out.contains(r#""outcome":"delivered""#), "the delivery did not happen:\n{out}");
    printed.push_str(&out);

    // Kinaxis refuses a client secret; the SFTP target's password and passphrase are wrong.
    let refused_secret = "refused-client-secret-7c1d";
    let kinaxis =
        app.put_secret("kinaxis-wrong", json!({"client_id": "relay-client", "client_secret": refused_secret})).await;
    let mut sftp = app.sshd.secret("PF2");
    sftp["password"] = json!("sftp-password-3f9a");
    sftp["passphrase"] = json!("key-passphrase-51be");
    app.set_secret(&app.env["SFTP_SECRET_ID_PF2"].clone(), sftp).await;
    let refused_job = app.accepted_job("webhook-rest-api-pf.json").await;
    app.env.insert("KINAXIS_SECRET_ID".into(), kinaxis);
    let (_, out) = invoke(&app, worker, &sqs_event_for(&refused_job, "m-refused"));
    assert!(out.contains("401"), "the refused token is not reported:\n{out}");
    printed.push_str(&out);

    // Asked for in every way a level can be set, the runtime's raw-event log stays off.
    assert!(printed.contains("TRACE"), "the functions did not log at TRACE: the test would prove nothing");
    assert!(!printed.contains("raw JSON event"), "lambda_runtime logged a raw event");

    let whsec_key = WHSEC.trim_start_matches("whsec_");
    let private_key_line = app.sshd.client_key.lines().nth(2).expect("a line of the client key");
    for (which, value) in [
        ("the webhook HMAC key", whsec_key),
        ("the webhook bearer token", BEARER_TOKEN),
        ("the webhook Basic password", BASIC_PASSWORD),
        ("the webhook Basic credentials, encoded", &STANDARD.encode(format!("maestro:{BASIC_PASSWORD}"))),
        ("the Kinaxis client secret", "relay-secret"),
        ("the refused Kinaxis client secret", refused_secret),
        ("the SFTP password", "sftp-password-3f9a"),
        ("the SFTP key passphrase", "key-passphrase-51be"),
        ("the SFTP private key", private_key_line),
    ] {
        // Named, not quoted: the test's own output must not carry the value either.
        assert!(!printed.contains(value), "{which} was printed by a function");
    }
}
