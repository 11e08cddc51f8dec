//! Conversion benchmarks (issue 4), printed side by side with their baselines:
//! 1. JSON pages → CSV throughput vs the bare serde_json parse of the same bytes and vs a
//!    plain Python json + csv baseline, and the same conversion with sonic-rs (SIMD JSON)
//!    running the page's visitor in place of serde_json (issue 14);
//! 2. peak RSS of a full export of 100k, 1M and 10M rows from the simulator, each in a
//!    process of its own (its VmHWM: its own peak, not one inherited from this process);
//! 3. a 1M-row export at 20 ms latency per page, 4 pages in flight vs one at a time.
//!
//! `make bench-conversion` (release build). Not a test: it asserts nothing about speed.

#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use maestro_relay::csv_out::{CsvOptions, CsvSink};
use maestro_relay::export::Exporter;
use maestro_relay::job::FileNameTemplate;
use maestro_relay::kinaxis::page::PageBuffer;
use maestro_relay::kinaxis::{KinaxisClient, KinaxisOptions};
use maestro_relay::retry::RetryPolicy;
use maestro_relay::secrets::KinaxisCredentials;
use secrecy::SecretString;
use serde_json::json;

/// The ordinary way to read a page with serde: owned, typed rows.
#[derive(serde::Deserialize)]
struct TypedPage {
    #[serde(rename = "Rows")]
    rows: Vec<TypedRow>,
}

#[derive(serde::Deserialize)]
struct TypedRow {
    #[serde(rename = "Values")]
    values: Vec<String>,
}

const COLUMNS: [&str; 6] = ["Order", "Part", "Site", "Quantity", "DueDate", "Description"];

/// Pages as Kinaxis sends them: the simulator's row shapes, 5000 rows a page.
fn page_stream(rows: u64, page_size: u64) -> Vec<Vec<u8>> {
    let descriptions = ["Standard order", "Contains \"quotes\"", "Line one\r\nLine two", "Grüße aus 東京 🚚", ""];
    let sites = ["", "SITE-A", "Werk Köln", "SITE,B"];
    (0..rows)
        .step_by(page_size as usize)
        .map(|start| {
            let page: Vec<_> = (start..(start + page_size).min(rows))
                .map(|i| {
                    json!({"Values": [
                        format!("PO-0-{i:08}"),
                        format!("P-{:05}", (i * 7919) % 100_000),
                        sites[(i % 4) as usize],
                        format!("{}.{:03}", i % 1000, (i * 37) % 1000),
                        if i % 7 < 3 { format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28) } else { "Future".into() },
                        descriptions[(i % 5) as usize],
                    ]})
                })
                .collect();
            serde_json::to_vec(&json!({ "Rows": page })).expect("page JSON")
        })
        .collect()
}

fn best_of<F: FnMut() -> u64>(runs: usize, mut f: F) -> (Duration, u64) {
    let mut best = Duration::MAX;
    let mut out = 0;
    for _ in 0..runs {
        let started = Instant::now();
        out = f();
        best = best.min(started.elapsed());
    }
    (best, out)
}

fn throughput() {
    let rows = 500_000;
    let pages = page_stream(rows, 5000);
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let mb = bytes as f64 / 1e6;
    println!("\n1. conversion of {rows} rows in {} pages, {mb:.1} MB of JSON (best of 5)", pages.len());

    let (bare, _) = best_of(5, || {
        pages.iter().map(|p| serde_json::from_slice::<serde::de::IgnoredAny>(p).map(|_| 1).unwrap_or(0)).sum()
    });
    let (typed, _) = best_of(5, || {
        pages
            .iter()
            .map(|p| {
                serde_json::from_slice::<TypedPage>(p)
                    .map(|pg| pg.rows.iter().map(|r| r.values.len() as u64).sum())
                    .unwrap_or(0)
            })
            .sum()
    });
    let mut buffer = PageBuffer::default();
    let (ours_parse, _) =
        best_of(5, || pages.iter().map(|p| buffer.parse(p).map(|page| page.len() as u64).unwrap_or(0)).sum());
    let columns: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let (ours, csv_bytes) = best_of(5, || {
        let mut sink = CsvSink::new(std::io::sink(), &CsvOptions::default(), &columns).expect("sink");
        for body in &pages {
            let page = buffer.parse(body).expect("page");
            page.try_for_each_row(|row| sink.write_row(row)).expect("rows");
        }
        sink.finish().expect("finish").1.bytes
    });

    // sonic-rs through the same visitor: values borrowed from the body, escapes decoded.
    let sonic = |buffer: &mut PageBuffer, body: &[u8], f: &mut dyn FnMut(&maestro_relay::kinaxis::page::Page)| {
        let text = std::str::from_utf8(body).expect("UTF-8 page");
        let page = buffer
            .parse_with(text, |text, seed| {
                use serde::de::DeserializeSeed;
                let mut deserializer = sonic_rs::Deserializer::from_str(text);
                seed.deserialize(&mut deserializer)?;
                deserializer.end()
            })
            .expect("sonic-rs page");
        f(&page);
    };
    let (sonic_parse, _) = best_of(5, || {
        let mut rows = 0;
        for body in &pages {
            sonic(&mut buffer, body, &mut |page| rows += page.len() as u64);
        }
        rows
    });
    let (sonic_full, sonic_csv_bytes) = best_of(5, || {
        let mut sink = CsvSink::new(std::io::sink(), &CsvOptions::default(), &columns).expect("sink");
        for body in &pages {
            sonic(&mut buffer, body, &mut |page| page.try_for_each_row(|row| sink.write_row(row)).expect("rows"));
        }
        sink.finish().expect("finish").1.bytes
    });
    assert_eq!(sonic_csv_bytes, csv_bytes, "sonic-rs and serde_json must write the same CSV");

    let dir = tempfile::tempdir().expect("dir");
    let stream_path = dir.path().join("pages.jsonl");
    let mut file = std::fs::File::create(&stream_path).expect("file");
    for page in &pages {
        file.write_all(page).and_then(|_| file.write_all(b"\n")).expect("write");
    }
    let python = Command::new(format!("{}/.venv/bin/python", helpers::ROOT))
        .arg(format!("{}/benches/baseline_convert.py", helpers::ROOT))
        .arg(&stream_path)
        .output()
        .expect("python baseline");
    let python_secs: f64 = String::from_utf8_lossy(&python.stdout).trim().parse().unwrap_or(f64::NAN);

    let rate = |d: Duration| (mb / d.as_secs_f64(), rows as f64 / d.as_secs_f64());
    println!("   {:<44} {:>9} {:>10} {:>12}", "", "ms", "MB/s", "rows/s");
    for (name, secs) in [
        ("serde_json to IgnoredAny (validate only)", bare.as_secs_f64()),
        ("serde_json to owned typed rows (baseline)", typed.as_secs_f64()),
        ("ours: parse, values borrowed from the body", ours_parse.as_secs_f64()),
        ("ours: parse + CSV + SHA-256 + counts", ours.as_secs_f64()),
        ("sonic-rs, same visitor: parse only", sonic_parse.as_secs_f64()),
        ("sonic-rs, same visitor: parse + CSV + SHA", sonic_full.as_secs_f64()),
        ("Python json + csv + hashlib", python_secs),
    ] {
        let (mbs, rps) = rate(Duration::from_secs_f64(secs));
        println!("   {name:<44} {:>9.1} {mbs:>10.1} {rps:>12.0}", secs * 1e3);
    }
    println!(
        "   full conversion vs bare typed parse: {:.2}   vs validate-only parse: {:.2}   vs Python: {:.1}x   ({:.1} MB CSV)",
        typed.as_secs_f64() / ours.as_secs_f64(),
        bare.as_secs_f64() / ours.as_secs_f64(),
        python_secs / ours.as_secs_f64(),
        csv_bytes as f64 / 1e6
    );
    println!(
        "   sonic-rs vs serde_json through the same visitor: parse {:.2}x, whole conversion {:.2}x (> 1: sonic-rs faster)",
        ours_parse.as_secs_f64() / sonic_parse.as_secs_f64(),
        ours.as_secs_f64() / sonic_full.as_secs_f64()
    );
}

async fn export(sim: &helpers::Sim, page_size: u64, in_flight: usize) -> (Duration, u64) {
    let dir = tempfile::tempdir().expect("dir");
    let credentials =
        KinaxisCredentials { client_id: "relay-client".into(), client_secret: SecretString::from("relay-secret") };
    let options = KinaxisOptions {
        base_url: sim.url.clone(),
        page_size,
        pages_in_flight: in_flight,
        ..KinaxisOptions::default()
    };
    let client = KinaxisClient::new(credentials, options).expect("client");
    let exporter = Exporter {
        client: &client,
        csv: &CsvOptions::default(),
        names: &FileNameTemplate::default(),
        retry: &RetryPolicy::default(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(600),
    };
    let manifest = serde_json::from_value(json!({
        "jobId": "0123456789abcdef0123456789abcdef", "receivedAt": "2026-11-24T06:00:07Z", "target": "PF2",
        "contentSha256": "00", "eventId": null, "fileName": "PlannedOrders-PF",
        "workbook": {"name": "PlannedOrders Export", "scope": "Public"}, "worksheets": [],
        "scenario": {"name": "Enterprise Data", "scope": "Public"}, "siteGroup": "All Sites",
        "filter": null, "variables": {}
    }))
    .expect("manifest");
    let started = Instant::now();
    let files = exporter.export(&manifest, dir.path()).await.expect("export");
    (started.elapsed(), files[0].file.stats.rows)
}

/// This process's peak resident set, VmHWM. Not getrusage's `ru_maxrss`: Linux carries that
/// across fork and exec, so a child started by this benchmark (which holds 500k rows of
/// pages) reported the parent's peak, 55.6 MB at any size. VmHWM belongs to the address
/// space, which exec replaces.
fn peak_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:").and_then(|v| v.trim().strip_suffix("kB")))
                .and_then(|kib| kib.trim().parse().ok())
        })
        .unwrap_or(-1)
}

/// Child mode: export `rows` from a fresh simulator and print this process's peak RSS.
async fn child_export(rows: u64) {
    let sim = helpers::Sim::start(&["--rows", &rows.to_string(), "--first-page", "5000"]);
    let (took, exported) = export(&sim, 5000, 4).await;
    println!("{exported} {} {}", peak_rss_kib(), took.as_millis());
}

fn memory() {
    println!("\n2. peak RSS (VmHWM) of a full export (a process of its own each, 5000-row pages, 4 in flight)");
    let exe = std::env::current_exe().expect("exe");
    let mut peaks = Vec::new();
    for rows in [100_000u64, 1_000_000, 10_000_000] {
        let out = Command::new(&exe).args(["--child-export", &rows.to_string()]).output().expect("child");
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        let rss_mb = fields.get(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0;
        println!(
            "   {rows:>9} rows: peak RSS {rss_mb:>6.1} MB, {} rows written in {} ms",
            fields.first().unwrap_or(&"?"),
            fields.get(2).unwrap_or(&"?")
        );
        peaks.push(rss_mb);
    }
    println!(
        "   1M − 100k: {:+.1} MB, 10M − 100k: {:+.1} MB (goal: within 20 MB)",
        peaks[1] - peaks[0],
        peaks[2] - peaks[0]
    );
}

async fn in_flight() {
    println!("\n3. 1M-row export, simulator at 20 ms per call, 5000-row pages");
    let sim = helpers::Sim::start(&["--rows", "1000000", "--first-page", "5000", "--latency-ms", "20"]);
    let (one, rows) = export(&sim, 5000, 1).await;
    let (four, _) = export(&sim, 5000, 4).await;
    println!("   one page at a time: {:>7.2} s", one.as_secs_f64());
    println!("   4 pages in flight:  {:>7.2} s   ({rows} rows)", four.as_secs_f64());
    println!("   speed-up: {:.2}x (goal: at least 3x)", one.as_secs_f64() / four.as_secs_f64());
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-export") {
        let rows = args.get(i + 1).and_then(|r| r.parse().ok()).unwrap_or(100_000);
        child_export(rows).await;
        return;
    }
    throughput();
    memory();
    in_flight().await;
}
