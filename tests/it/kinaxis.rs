//! Kinaxis client and streaming export against the simulator over HTTP.

use std::path::Path;
use std::time::Duration;

use maestro_relay::csv_out::CsvOptions;
use maestro_relay::error::{ErrorClass, Step};
use maestro_relay::export::{ExportedFile, Exporter};
use maestro_relay::job::{FileNameTemplate, Manifest};
use maestro_relay::kinaxis::{KinaxisClient, KinaxisOptions, PagingStyle};
use maestro_relay::retry::RetryPolicy;
use maestro_relay::secrets::KinaxisCredentials;
use secrecy::SecretString;

use crate::helpers::Sim;

fn manifest(worksheets: &[&str]) -> Manifest {
    serde_json::from_value(serde_json::json!({
        "jobId": "0123456789abcdef0123456789abcdef",
        "receivedAt": "2026-11-24T06:00:07Z",
        "target": "PF2",
        "contentSha256": "00",
        "eventId": null,
        "fileName": "PlannedOrders-PF",
        "workbook": {"name": "PlannedOrders Export", "scope": "Public"},
        "worksheets": worksheets,
        "scenario": {"name": "Enterprise Data", "scope": "Public"},
        "siteGroup": "All Sites",
        "filter": null,
        "variables": {}
    }))
    .expect("manifest")
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 3,
        initial_delay: Duration::from_millis(5),
        factor: 2.0,
        max_delay: Duration::from_millis(20),
        jitter: 0.0,
    }
}

struct Export {
    page_size: u64,
    in_flight: usize,
    paging: PagingStyle,
    worksheets: Vec<&'static str>,
    retry: RetryPolicy,
}

impl Default for Export {
    fn default() -> Self {
        Self { page_size: 300, in_flight: 4, paging: PagingStyle::Query, worksheets: vec![], retry: fast_retry() }
    }
}

impl Export {
    async fn run(&self, sim: &Sim, dir: &Path) -> maestro_relay::error::Result<Vec<ExportedFile>> {
        let credentials =
            KinaxisCredentials { client_id: "relay-client".into(), client_secret: SecretString::from("relay-secret") };
        let options = KinaxisOptions {
            base_url: sim.url.clone(),
            page_size: self.page_size,
            pages_in_flight: self.in_flight,
            paging: self.paging,
            ..KinaxisOptions::default()
        };
        let client = KinaxisClient::new(credentials, options)?;
        let exporter = Exporter {
            client: &client,
            csv: &CsvOptions::default(),
            names: &FileNameTemplate::default(),
            retry: &self.retry,
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        };
        exporter.export(&manifest(&self.worksheets), dir).await
    }
}

/// The export of the same rows with every row in the workbook answer: the reference.
async fn reference_csv(rows: u64) -> Vec<u8> {
    let sim = Sim::start(&["--rows", &rows.to_string(), "--first-page", &rows.to_string()]);
    let dir = tempfile::tempdir().expect("dir");
    let files = Export::default().run(&sim, dir.path()).await.expect("reference export");
    std::fs::read(&files[0].path).expect("reference file")
}

#[tokio::test]
async fn paged_exports_equal_a_single_page_export_at_every_page_boundary() {
    for (rows, first_page) in [(1000u64, 100u64), (1001, 100), (100, 100), (0, 0), (7, 0)] {
        let sim = Sim::start(&["--rows", &rows.to_string(), "--first-page", &first_page.to_string()]);
        let dir = tempfile::tempdir().expect("dir");
        let files = Export::default().run(&sim, dir.path()).await.expect("export");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].file.stats.rows, rows, "rows {rows} first page {first_page}");
        let bytes = std::fs::read(&files[0].path).expect("file");
        assert_eq!(bytes, reference_csv(rows).await, "rows {rows} first page {first_page}");
        assert_eq!(files[0].file.stats.bytes, bytes.len() as u64);
    }
}

#[tokio::test]
async fn the_path_paging_style_and_one_page_in_flight_give_the_same_file() {
    let sim = Sim::start(&["--rows", "950", "--first-page", "50", "--latency-ms", "2"]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { paging: PagingStyle::Path, in_flight: 1, page_size: 77, ..Export::default() };
    let files = export.run(&sim, dir.path()).await.expect("export");
    assert_eq!(std::fs::read(&files[0].path).expect("file"), reference_csv(950).await);
}

#[tokio::test]
async fn several_worksheets_become_one_file_each_named_after_the_worksheet() {
    let sim = Sim::start(&["--rows", "30", "--worksheets", "Planned Orders,Firm Orders"]);
    let dir = tempfile::tempdir().expect("dir");
    let files = Export::default().run(&sim, dir.path()).await.expect("export");
    let names: Vec<&str> = files.iter().map(|f| f.file.file_name.as_str()).collect();
    assert_eq!(
        names,
        ["PlannedOrders-PF_Planned_Orders_20261124060007.csv", "PlannedOrders-PF_Firm_Orders_20261124060007.csv"]
    );
}

#[tokio::test]
async fn an_expired_token_mid_export_is_refreshed_and_the_export_completes() {
    let sim =
        Sim::start(&["--rows", "2000", "--first-page", "100", "--latency-ms", "10", "--expire-token-after-ms", "60"]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { in_flight: 1, ..Export::default() };
    let files = export.run(&sim, dir.path()).await.expect("export");
    assert_eq!(files[0].file.stats.rows, 2000);
    let stats = sim.stats().await;
    assert!(stats["tokenCalls"].as_u64() > Some(1), "{stats}");
    assert!(stats["unauthorized"].as_u64() >= Some(1), "{stats}");
}

#[tokio::test]
async fn unavailable_answers_that_clear_within_the_retries_are_retried() {
    let sim = Sim::start(&["--rows", "900", "--first-page", "100", "--fail-first", "2"]);
    let dir = tempfile::tempdir().expect("dir");
    let files = Export::default().run(&sim, dir.path()).await.expect("export");
    assert_eq!(files[0].file.stats.rows, 900);
    assert_eq!(sim.stats().await["unavailable"], 2);
}

#[tokio::test]
async fn unavailable_answers_that_persist_end_as_a_transient_error_after_the_retries() {
    let sim = Sim::start(&["--rows", "10", "--fail-first", "1000"]);
    let dir = tempfile::tempdir().expect("dir");
    let err = Export::default().run(&sim, dir.path()).await.unwrap_err();
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Fetch), "{}", err.chain());
    assert_eq!(sim.stats().await["workbookCalls"], 4, "one try and three retries");
}

#[tokio::test]
async fn a_page_cut_short_is_fetched_again() {
    let sim = Sim::start(&["--rows", "900", "--first-page", "100", "--truncate-calls", "2,3"]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { in_flight: 1, ..Export::default() };
    let files = export.run(&sim, dir.path()).await.expect("export");
    assert_eq!(std::fs::read(&files[0].path).expect("file"), reference_csv(900).await);
}

#[tokio::test]
async fn a_workbook_answer_cut_short_every_time_is_transient() {
    let sim = Sim::start(&["--rows", "10", "--truncate-calls", "1,2,3,4,5"]);
    let dir = tempfile::tempdir().expect("dir");
    let err = Export::default().run(&sim, dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    assert!(err.message.contains("cut short"), "{}", err.chain());
}

#[tokio::test]
async fn malformed_or_refused_answers_are_permanent_and_named() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--rows", "500", "--first-page", "100", "--bad-width-row", "250"],
            "\"Planned Orders\": row 250 has 7 values",
        ),
        (&["--rows", "500", "--first-page", "100", "--short-by", "5"], "ended short of TotalRowCount 505"),
        (&["--workbook-status", "404"], "404"),
        (&["--workbook-status", "403"], "403"),
        (&["--reject-all-tokens"], "freshly issued token"),
    ];
    for (flags, expected) in cases {
        let sim = Sim::start(flags);
        let dir = tempfile::tempdir().expect("dir");
        let err = Export::default().run(&sim, dir.path()).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{flags:?}: {}", err.chain());
        assert!(err.chain().contains(expected), "{flags:?}: {}", err.chain());
    }
}

#[tokio::test]
async fn an_unknown_worksheet_is_a_permanent_404() {
    let sim = Sim::start(&["--rows", "5"]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { worksheets: vec!["No Such Sheet"], ..Export::default() };
    let err = export.run(&sim, dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.chain().contains("404"), "{}", err.chain());
}

#[tokio::test]
async fn a_server_that_caps_page_sizes_is_read_on_from_where_each_page_ends() {
    for (paging, in_flight) in [(PagingStyle::Query, 4), (PagingStyle::Path, 1)] {
        let sim = Sim::start(&["--rows", "1000", "--first-page", "50", "--page-cap", "70"]);
        let dir = tempfile::tempdir().expect("dir");
        let export = Export { paging, in_flight, page_size: 300, ..Export::default() };
        let files = export.run(&sim, dir.path()).await.expect("export");
        assert_eq!(files[0].file.stats.rows, 1000, "{paging:?}");
        assert_eq!(std::fs::read(&files[0].path).expect("file"), reference_csv(1000).await, "{paging:?}");
    }
}

#[tokio::test]
async fn a_server_that_revokes_older_tokens_on_issue_is_read_to_the_end_with_pages_in_flight() {
    let sim = Sim::start(&[
        "--rows",
        "6000",
        "--first-page",
        "100",
        "--latency-ms",
        "20",
        "--expire-token-after-ms",
        "70",
        "--revoke-on-issue",
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { in_flight: 4, page_size: 200, ..Export::default() };
    let files = export.run(&sim, dir.path()).await.expect("every page read despite revocations");
    assert_eq!(std::fs::read(&files[0].path).expect("file"), reference_csv(6000).await);
    let stats = sim.stats().await;
    assert!(stats["unauthorized"].as_u64() >= Some(1), "no token expired during the export: {stats}");
}

/// A retry policy whose longest pause is long enough to honour a Retry-After of seconds.
fn patient_retry() -> RetryPolicy {
    RetryPolicy { max_delay: Duration::from_secs(5), ..fast_retry() }
}

#[tokio::test]
async fn throttled_answers_are_retried_after_their_retry_after_in_seconds_or_as_a_date() {
    for (status, after) in [("429", "1"), ("408", "1"), ("429", "date")] {
        // A date two seconds ahead of this case's start: at least a second's wait.
        let after = match after {
            "date" => httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2)),
            seconds => seconds.to_owned(),
        };
        let sim = Sim::start(&[
            "--rows",
            "600",
            "--first-page",
            "100",
            "--throttle-calls",
            "2",
            "--throttle-status",
            status,
            "--retry-after",
            &after,
        ]);
        let dir = tempfile::tempdir().expect("dir");
        let started = std::time::Instant::now();
        let export = Export { in_flight: 1, retry: patient_retry(), ..Export::default() };
        let files = export.run(&sim, dir.path()).await.expect("export");
        assert_eq!(files[0].file.stats.rows, 600);
        assert_eq!(sim.stats().await["unavailable"], 1, "{status} {after}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{status} {after}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_retry_after_of_u64_max_seconds_is_clamped_to_the_longest_pause_not_a_panic() {
    let sim = Sim::start(&[
        "--rows",
        "300",
        "--first-page",
        "100",
        "--throttle-calls",
        "2",
        "--retry-after",
        "18446744073709551615",
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let files = Export::default().run(&sim, dir.path()).await.expect("export");
    assert_eq!(files[0].file.stats.rows, 300);
}
