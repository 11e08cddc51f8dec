//! Webhook benchmark (issue 3): 1,000 signed requests through the handler against
//! moto_server — p50/p99 of the whole handler, of our own code alone (the same handler on
//! an in-memory store) and of the S3 conditional PUT alone; then the release binary's cold
//! start (process start to first answered event) and size; and what an unauthenticated
//! request can cost: junk `v1a` signatures against two ed25519 keys over a 250 KiB body, one
//! entry against 8 and 100 (issue 25). `make bench-webhook`.

#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use lambda_http::http::{HeaderMap, HeaderValue};
use maestro_relay::aws::SecretsManager;
use maestro_relay::config::WebhookConfig;
use maestro_relay::memory::MemoryStore;
use maestro_relay::ports::ObjectStore;
use maestro_relay::secrets::CachedSecrets;
use maestro_relay::webhook::Webhook;

const REQUESTS: usize = 1000;

fn requests(whsec: &str) -> Vec<(HeaderMap, Vec<u8>)> {
    let now = helpers::now();
    (0..REQUESTS)
        .map(|i| {
            let body = format!(
                r#"{{"eventId":"bench-{i}","fileName":"PlannedOrders-PF","workbook":{{"name":"PlannedOrders Export","scope":"Public"}},"worksheets":["Planned Orders"]}}"#
            )
            .into_bytes();
            let id = format!("msg_bench_{i}_{}", std::process::id());
            let signature = maestro_relay::webhook::auth::sign(whsec, &id, now, &body).expect("sign");
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers.insert("webhook-id", HeaderValue::from_str(&id).expect("id"));
            headers.insert("webhook-timestamp", HeaderValue::from_str(&now.to_string()).expect("ts"));
            headers.insert("webhook-signature", HeaderValue::from_str(&signature).expect("sig"));
            (headers, body)
        })
        .collect()
}

fn percentiles(mut micros: Vec<f64>) -> (f64, f64, f64) {
    micros.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), micros.iter().sum::<f64>() / micros.len() as f64)
}

async fn timed<S: ObjectStore>(webhook: &Webhook<S, SecretsManager>, requests: &[(HeaderMap, Vec<u8>)]) -> Vec<f64> {
    let mut times = Vec::with_capacity(requests.len());
    for (headers, body) in requests {
        let started = Instant::now();
        let answer = webhook.handle(headers, body).await;
        times.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    }
    times
}

#[tokio::main]
async fn main() {
    let app = helpers::TestApp::start(&[]).await;
    let config = WebhookConfig::from_lookup(&|name| app.env.get(name).cloned()).expect("config");
    let secrets = || CachedSecrets::new(SecretsManager::from_sdk_config(&app.sdk), Duration::from_secs(300));

    let warm = requests(&app.whsec);
    let against_moto = app.webhook();
    let _ = against_moto.handle(&warm[0].0, &warm[0].1).await;
    let in_memory = Webhook::new(MemoryStore::new(), secrets(), config.settings.clone());
    let _ = in_memory.handle(&warm[0].0, &warm[0].1).await;

    let batch = requests(&app.whsec);
    let memory_batch: Vec<_> = batch.clone();
    let whole = percentiles(timed(&against_moto, &batch[1..]).await);
    let own = percentiles(timed(&in_memory, &memory_batch[1..]).await);

    let store = maestro_relay::aws::S3Store::from_sdk_config(&app.sdk, &app.bucket);
    let mut puts = Vec::new();
    for i in 0..REQUESTS {
        let started = Instant::now();
        store.create(&format!("bench/{i}.json"), vec![b'{'; 700], "application/json").await.expect("create");
        puts.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let s3 = percentiles(puts);

    println!("\nwebhook handler, {} signed requests each (µs)", REQUESTS - 1);
    println!("   {:<46} {:>9} {:>9} {:>9}", "", "p50", "p99", "mean");
    for (name, (p50, p99, mean)) in [
        ("whole handler against moto_server", whole),
        ("our code alone (in-memory store)", own),
        ("S3 conditional PUT alone (moto_server)", s3),
    ] {
        println!("   {name:<46} {p50:>9.1} {p99:>9.1} {mean:>9.1}");
    }
    println!("   our share of the handler at p50: {:.1} %", 100.0 * own.0 / whole.0);

    unauthenticated_cost(&app, &config).await;

    // Cold start of the release binary through the Lambda Runtime API stand-in.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("webhook")))
        .expect("release webhook path");
    let dir = tempfile::tempdir().expect("dir");
    let events_path = dir.path().join("events.jsonl");
    let lines: Vec<String> = (0..10)
        .map(|i| {
            let mut event = helpers::load_event("webhook-http-api-pf.json");
            event["headers"]["webhook-id"] = serde_json::json!(format!("msg_cold_{i}_{}", std::process::id()));
            let body = helpers::event_body(&event);
            helpers::sign_event(&mut event, &app.whsec, &body, helpers::now());
            event.to_string()
        })
        .collect();
    std::fs::write(&events_path, lines.join("\n")).expect("events");
    let mut command = std::process::Command::new(format!("{}/.venv/bin/python", helpers::ROOT));
    command.arg(format!("{}/benches/cold_start.py", helpers::ROOT)).arg(&binary).arg(&events_path).arg("10");
    for (key, value) in &app.env {
        command.env(key, value);
    }
    command
        .env("AWS_ENDPOINT_URL", &helpers::moto().endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-central-1")
        .env("RUST_LOG", "warn");
    let out = command.output().expect("cold start script");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.lines().last().unwrap_or_default().split_whitespace().collect();
    if fields.len() == 3 {
        println!(
            "\ncold start of {} (release, {} MB): best {} ms, median {} ms of 10 \
             (process start → first 202, incl. one Secrets Manager read and one S3 PUT on moto)",
            binary.display(),
            fields[2],
            fields[0],
            fields[1]
        );
    } else {
        println!("\ncold start failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
}

/// A request that fails authentication with `entries` junk `v1a` signatures (valid length,
/// `S < L`, so each would be verified in full) over `body`.
fn junk_request(entries: usize, body: &[u8], n: usize) -> (HeaderMap, Vec<u8>) {
    use base64::Engine;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let id = format!("msg_junk_{entries}_{n}_{}", std::process::id());
    headers.insert("webhook-id", HeaderValue::from_str(&id).expect("id"));
    headers.insert("webhook-timestamp", HeaderValue::from_str(&helpers::now().to_string()).expect("ts"));
    let junk: Vec<String> = (0..entries)
        .map(|i| {
            let mut signature = [0u8; 64];
            signature[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            format!("v1a,{}", base64::engine::general_purpose::STANDARD.encode(signature))
        })
        .collect();
    headers.insert("webhook-signature", HeaderValue::from_str(&junk.join(" ")).expect("sig"));
    (headers, body.to_vec())
}

async fn unauthenticated_cost(app: &helpers::TestApp, config: &WebhookConfig) {
    let body = vec![b'x'; 250 * 1024];
    let keys: Vec<String> = [[1u8; 32], [2u8; 32]]
        .iter()
        .map(|seed| maestro_relay::webhook::auth::sign_v1a(seed, "k", 0, b"").expect("key").1)
        .collect();
    let secret_id = &app.env["WEBHOOK_SECRET_ID"];
    app.set_secret(secret_id, serde_json::json!({"hmac_secrets": [app.whsec], "ed25519_public_keys": keys})).await;
    let secrets = CachedSecrets::new(SecretsManager::from_sdk_config(&app.sdk), Duration::from_secs(300));
    let webhook = Webhook::new(MemoryStore::new(), secrets, config.settings.clone());
    let mut rows = Vec::new();
    let most = maestro_relay::webhook::auth::MAX_V1A_SIGNATURES;
    for entries in [1usize, most, most + 1, 100] {
        let requests: Vec<_> = (0..200).map(|n| junk_request(entries, &body, n)).collect();
        let _ = webhook.handle(&requests[0].0, &requests[0].1).await;
        let mut times = Vec::new();
        for (headers, body) in &requests[1..] {
            let started = Instant::now();
            let answer = webhook.handle(headers, body).await;
            times.push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(answer.status.as_u16(), 401, "{}", answer.body);
        }
        rows.push((entries, percentiles(times)));
    }
    let baseline = rows[0].1 .0;
    println!("\nunauthenticated requests, 250 KiB body, 2 ed25519 keys, 199 each (µs; all answered 401)");
    println!("   {:<46} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p99", "mean", "p50 ×");
    for (entries, (p50, p99, mean)) in rows {
        let name = format!("{entries} junk v1a entr{}", if entries == 1 { "y" } else { "ies" });
        println!("   {name:<46} {p50:>9.1} {p99:>9.1} {mean:>9.1} {:>9.2}", p50 / baseline);
    }
}
