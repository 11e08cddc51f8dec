//! Conversion benchmarks (issue 4), printed side by side with their baselines:
//! 1. JSON pages → CSV throughput vs the bare serde_json parse of the same bytes and vs a
//!    plain Python json + csv baseline, and the same conversion with sonic-rs (SIMD JSON)
//!    running the page's visitor in place of serde_json (issue 14);
//! 2. peak RSS of a full export of 100k, 1M and 10M rows from the simulator, each in a
//!    process of its own (its VmHWM: its own peak, not one inherited from this process);
//! 3. a 1M-row export at 20 ms latency per page, 4 pages in flight vs one at a time.
//!
//! `make bench-conversion` (release build); `BENCH_SECTIONS=1` (or `1,3`…) runs only those.
//! Not a test: it asserts nothing about speed.

#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use maestro_relay::csv_out::{CsvOptions, CsvSink};
use maestro_relay::export::kinaxis::page::PageBuffer;
use maestro_relay::export::kinaxis::{KinaxisClient, KinaxisOptions};
use maestro_relay::export::Exporter;
use maestro_relay::job::FileNameTemplate;
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
    (0..rows)
        .step_by(page_size as usize)
        .map(|start| {
            let page: Vec<_> =
                (start..(start + page_size).min(rows)).map(|i| json!({"Values": row_values(i)})).collect();
            serde_json::to_vec(&json!({ "Rows": page })).expect("page JSON")
        })
        .collect()
}

/// Row `i` of the simulator's shapes: quotes, line breaks, non-ASCII, a delimiter, blanks.
fn row_values(i: u64) -> [String; 6] {
    let descriptions = ["Standard order", "Contains \"quotes\"", "Line one\r\nLine two", "Grüße aus 東京 🚚", ""];
    let sites = ["", "SITE-A", "Werk Köln", "SITE,B"];
    [
        format!("PO-0-{i:08}"),
        format!("P-{:05}", (i * 7919) % 100_000),
        sites[(i % 4) as usize].to_owned(),
        format!("{}.{:03}", i % 1000, (i * 37) % 1000),
        if i % 7 < 3 { format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28) } else { "Future".into() },
        descriptions[(i % 5) as usize].to_owned(),
    ]
}

/// Seconds of several runs: min, median, max.
#[derive(Debug, Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(mut secs: Vec<f64>) -> Self {
        secs.sort_by(|a, b| a.total_cmp(b));
        match secs.as_slice() {
            [] => Self { min: f64::NAN, median: f64::NAN, max: f64::NAN },
            all => Self { min: all[0], median: all[all.len() / 2], max: all[all.len() - 1] },
        }
    }
}

fn runs_of<F: FnMut() -> u64>(runs: usize, mut f: F) -> (Spread, u64) {
    let mut secs = Vec::new();
    let mut out = 0;
    for _ in 0..runs {
        let started = Instant::now();
        out = f();
        secs.push(started.elapsed().as_secs_f64());
    }
    (Spread::of(secs), out)
}

fn throughput() {
    let rows = 500_000;
    let pages = page_stream(rows, 5000);
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let mb = bytes as f64 / 1e6;
    println!("\n1. conversion of {rows} rows in {} pages, {mb:.1} MB of JSON (5 runs each)", pages.len());

    let (bare, _) = runs_of(5, || {
        pages.iter().map(|p| serde_json::from_slice::<serde::de::IgnoredAny>(p).map(|_| 1).unwrap_or(0)).sum()
    });
    let (typed, _) = runs_of(5, || {
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
        runs_of(5, || pages.iter().map(|p| buffer.parse(p).map(|page| page.len() as u64).unwrap_or(0)).sum());
    let columns: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let (ours, csv_bytes) = runs_of(5, || {
        let mut sink = CsvSink::new(std::io::sink(), &CsvOptions::default(), &columns).expect("sink");
        for body in &pages {
            let page = buffer.parse(body).expect("page");
            page.try_for_each_row(|row| sink.write_row(row)).expect("rows");
        }
        sink.finish().expect("finish").1.bytes
    });

    let csv_only = csv_only(rows, &columns, csv_bytes);
    let sonic = sonic_rs(&pages, &columns, csv_bytes);

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
    let python =
        Spread::of(String::from_utf8_lossy(&python.stdout).split_whitespace().filter_map(|v| v.parse().ok()).collect());

    let nan = Spread::of(Vec::new());
    println!("   {:<44} {:>24} {:>10} {:>10}", "", "ms min / median / max", "MB/s", "rows/s");
    for (name, spread) in [
        ("serde_json to IgnoredAny (validate only)", bare),
        ("serde_json to owned typed rows (baseline)", typed),
        ("ours: parse, values borrowed from the body", ours_parse),
        ("ours: parse + CSV + SHA-256 + counts", ours),
        ("ours: CSV + SHA-256 of rows already parsed", csv_only),
        ("SHA-256 alone, as many bytes as the CSV", sha_only(csv_bytes)),
        ("sonic-rs, same visitor: parse only", sonic.map_or(nan, |s| s.0)),
        ("sonic-rs, same visitor: parse + CSV + SHA", sonic.map_or(nan, |s| s.1)),
        ("Python json + csv + hashlib", python),
    ] {
        let ms = format!("{:.1} / {:.1} / {:.1}", spread.min * 1e3, spread.median * 1e3, spread.max * 1e3);
        let (mbs, rps) = (mb / spread.median, rows as f64 / spread.median);
        println!("   {name:<44} {ms:>24} {mbs:>10.1} {rps:>10.0}");
    }
    println!("   (MB/s and rows/s at the median; ratios of medians)");
    println!(
        "   full conversion vs bare typed parse: {:.2}   vs validate-only parse: {:.2}   vs Python: {:.1}x   ({:.1} MB CSV)",
        typed.median / ours.median,
        bare.median / ours.median,
        python.median / ours.median,
        csv_bytes as f64 / 1e6
    );
    match sonic {
        Some((sonic_parse, sonic_full)) => println!(
            "   sonic-rs vs serde_json through the same visitor: parse {:.2}x, whole conversion {:.2}x (> 1: sonic-rs faster)",
            ours_parse.median / sonic_parse.median,
            ours.median / sonic_full.median
        ),
        None => println!("   (sonic-rs rows: run with --features bench-sonic, as make bench-conversion does)"),
    }
}

/// The CSV sink alone (hashing included) over the same rows, held as text and spans so
/// the figure carries no parse and no allocation per value.
fn csv_only(rows: u64, columns: &[String], csv_bytes: u64) -> Spread {
    let (mut text, mut spans) = (String::new(), Vec::new());
    for i in 0..rows {
        for value in row_values(i) {
            spans.push((text.len(), text.len() + value.len()));
            text.push_str(&value);
        }
    }
    let (spread, written) = runs_of(5, || {
        let mut sink = CsvSink::new(std::io::sink(), &CsvOptions::default(), columns).expect("sink");
        for row in spans.chunks_exact(COLUMNS.len()) {
            let values: [&str; COLUMNS.len()] = std::array::from_fn(|c| &text[row[c].0..row[c].1]);
            sink.write_row(&values).expect("row");
        }
        sink.finish().expect("finish").1.bytes
    });
    assert_eq!(written, csv_bytes, "the CSV of parsed pages and of the same rows held must match");
    spread
}

/// SHA-256 alone over that much CSV: the part of the sink's figure that is not CSV.
fn sha_only(csv_bytes: u64) -> Spread {
    use sha2::Digest;
    let file = vec![b'x'; csv_bytes as usize];
    runs_of(5, || sha2::Sha256::digest(&file)[0] as u64).0
}

/// sonic-rs through the page's own visitor (values borrowed from the body, escapes
/// decoded): parse only, and the whole conversion. With `--features bench-sonic` only.
#[cfg(feature = "bench-sonic")]
fn sonic_rs(pages: &[Vec<u8>], columns: &[String], csv_bytes: u64) -> Option<(Spread, Spread)> {
    let mut buffer = PageBuffer::default();
    // sonic-rs through the same visitor: values borrowed from the body, escapes decoded.
    let sonic =
        |buffer: &mut PageBuffer, body: &[u8], f: &mut dyn FnMut(&maestro_relay::export::kinaxis::page::Page)| {
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
    let (sonic_parse, _) = runs_of(5, || {
        let mut rows = 0;
        for body in pages {
            sonic(&mut buffer, body, &mut |page| rows += page.len() as u64);
        }
        rows
    });
    let (sonic_full, sonic_csv_bytes) = runs_of(5, || {
        let mut sink = CsvSink::new(std::io::sink(), &CsvOptions::default(), columns).expect("sink");
        for body in pages {
            sonic(&mut buffer, body, &mut |page| page.try_for_each_row(|row| sink.write_row(row)).expect("rows"));
        }
        sink.finish().expect("finish").1.bytes
    });
    assert_eq!(sonic_csv_bytes, csv_bytes, "sonic-rs and serde_json must write the same CSV");
    Some((sonic_parse, sonic_full))
}

#[cfg(not(feature = "bench-sonic"))]
fn sonic_rs(_: &[Vec<u8>], _: &[String], _: u64) -> Option<(Spread, Spread)> {
    None
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
    const RUNS: usize = 3;
    println!(
        "\n2. peak RSS (VmHWM) of a full export, a process of its own each, 5000-row pages, 4 in flight; \
         min / median / max of {RUNS}"
    );
    let exe = std::env::current_exe().expect("exe");
    let mut medians = Vec::new();
    for rows in [100_000u64, 1_000_000, 10_000_000] {
        let (mut peaks, mut secs, mut written) = (Vec::new(), Vec::new(), String::from("?"));
        for _ in 0..RUNS {
            let out = Command::new(&exe).args(["--child-export", &rows.to_string()]).output().expect("child");
            let text = String::from_utf8_lossy(&out.stdout);
            let fields: Vec<&str> = text.split_whitespace().collect();
            written = fields.first().unwrap_or(&"?").to_string();
            peaks.push(fields.get(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0);
            secs.push(fields.get(2).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1e3);
        }
        let (peak, took) = (Spread::of(peaks), Spread::of(secs));
        println!(
            "   {rows:>9} rows: peak RSS {:.1} / {:.1} / {:.1} MB, {written} rows written in {:.2} / {:.2} / {:.2} s",
            peak.min, peak.median, peak.max, took.min, took.median, took.max
        );
        medians.push(peak.median);
    }
    println!(
        "   medians, 1M − 100k: {:+.1} MB, 10M − 100k: {:+.1} MB (goal: within 20 MB)",
        medians[1] - medians[0],
        medians[2] - medians[0]
    );
}

async fn in_flight() {
    const RUNS: usize = 3;
    println!(
        "\n3. 1M-row export, simulator at 20 ms per call, 5000-row pages; min / median / max of {RUNS}, alternating"
    );
    let sim = helpers::Sim::start(&["--rows", "1000000", "--first-page", "5000", "--latency-ms", "20"]);
    let (mut one, mut four, mut ratios, mut rows) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..RUNS {
        let (a, exported) = export(&sim, 5000, 1).await;
        let (b, _) = export(&sim, 5000, 4).await;
        one.push(a.as_secs_f64());
        four.push(b.as_secs_f64());
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        rows = exported;
    }
    let (one, four, ratio) = (Spread::of(one), Spread::of(four), Spread::of(ratios));
    println!("   one page at a time: {:.2} / {:.2} / {:.2} s", one.min, one.median, one.max);
    println!("   4 pages in flight:  {:.2} / {:.2} / {:.2} s   ({rows} rows)", four.min, four.median, four.max);
    println!("   speed-up: {:.2} / {:.2} / {:.2}x (goal: at least 3x)", ratio.min, ratio.median, ratio.max);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-export") {
        let rows = args.get(i + 1).and_then(|r| r.parse().ok()).unwrap_or(100_000);
        child_export(rows).await;
        return;
    }
    // BENCH_SECTIONS=1 (or 1,3…): only those sections, for an A/B of one of them.
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "1,2,3".into());
    let wanted = |n: &str| sections.split(',').any(|s| s.trim() == n);
    if wanted("1") {
        throughput();
    }
    if wanted("2") {
        memory();
    }
    if wanted("3") {
        in_flight().await;
    }
}
