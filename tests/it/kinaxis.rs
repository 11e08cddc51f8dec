//! Kinaxis client and streaming export against the simulator over HTTP.

use std::path::Path;
use std::time::Duration;

use maestro_relay::csv_out::CsvOptions;
use maestro_relay::error::{ErrorClass, Step};
use maestro_relay::export::kinaxis::{KinaxisClient, KinaxisOptions, PagingStyle};
use maestro_relay::export::Exporter;
use maestro_relay::job::ExportedFile;
use maestro_relay::job::{FileNameTemplate, Manifest};
use maestro_relay::retry::RetryPolicy;
use maestro_relay::secrets::{KinaxisCredentials, KinaxisLogin, RereadCredentials};
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

/// A bulk-export job of the simulator's table.
fn table_manifest(fields: &[&str]) -> Manifest {
    serde_json::from_value(serde_json::json!({
        "jobId": "0123456789abcdef0123456789abcdef",
        "receivedAt": "2026-11-24T06:00:07Z",
        "target": "WP2",
        "contentSha256": "00",
        "eventId": null,
        "fileName": "PlannedOrders-WP",
        "table": {"namespace": "Mfg", "name": "PlannedOrder", "fields": fields, "filter": "Quantity > 0"},
        "scenario": {"name": "Enterprise Data", "scope": "Public"},
        "siteGroup": "All Sites",
        "filter": null,
        "variables": {}
    }))
    .expect("table manifest")
}

const ALL_FIELDS: [&str; 6] = ["Order.Id", "Part.Name", "Site.Value", "Quantity", "DueDate", "Description"];

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
    /// Bulk export of these fields instead of the workbook.
    table: Option<Vec<&'static str>>,
    secret: &'static str,
    reread: Option<RereadCredentials>,
}

impl Default for Export {
    fn default() -> Self {
        Self {
            page_size: 300,
            in_flight: 4,
            paging: PagingStyle::Query,
            worksheets: vec![],
            retry: fast_retry(),
            table: None,
            secret: "relay-secret",
            reread: None,
        }
    }
}

impl Export {
    async fn run(&self, sim: &Sim, dir: &Path) -> maestro_relay::error::Result<Vec<ExportedFile>> {
        let credentials =
            KinaxisCredentials { client_id: "relay-client".into(), client_secret: SecretString::from(self.secret) };
        let options = KinaxisOptions {
            base_url: sim.url.clone(),
            page_size: self.page_size,
            bulk_page_size: self.page_size,
            pages_in_flight: self.in_flight,
            paging: self.paging,
            ..KinaxisOptions::default()
        };
        let client = KinaxisClient::new(KinaxisLogin { credentials, reread: self.reread.clone() }, options)?;
        let exporter = Exporter {
            client: &client,
            csv: &CsvOptions::default(),
            names: &FileNameTemplate::default(),
            retry: &self.retry,
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        };
        let manifest = match &self.table {
            Some(fields) => table_manifest(fields),
            None => manifest(&self.worksheets),
        };
        exporter.export(&manifest, dir).await
    }
}

/// Reads the credentials "from the secret store" again: the test's stand-in for the
/// worker's cache bypass, counting how often it is asked.
fn reread_as(secret: &'static str, calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> RereadCredentials {
    std::sync::Arc::new(move || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Ok(KinaxisCredentials { client_id: "relay-client".into(), client_secret: SecretString::from(secret) })
        })
    })
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
        (&["--rows", "500", "--first-page", "100", "--short-by", "5"], "ended short of its total row count 505"),
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

#[tokio::test]
async fn a_client_secret_rotated_mid_export_is_read_again_once_and_the_export_completes() {
    // The first token expires after 150 ms; by then Kinaxis accepts only the rotated secret.
    let sim = Sim::start(&[
        "--rows",
        "3000",
        "--first-page",
        "100",
        "--latency-ms",
        "20",
        "--expire-token-after-ms",
        "150",
        "--rotate-secret-after-tokens",
        "1",
        "--rotated-secret",
        "rotated-secret",
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let rereads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let export = Export {
        in_flight: 2,
        page_size: 100,
        reread: Some(reread_as("rotated-secret", rereads.clone())),
        ..Export::default()
    };
    let files = export.run(&sim, dir.path()).await.expect("export with the rotated secret");
    assert_eq!(std::fs::read(&files[0].path).expect("file"), reference_csv(3000).await);
    assert_eq!(rereads.load(std::sync::atomic::Ordering::SeqCst), 1, "the secret is read again exactly once");
    assert!(sim.stats().await["tokenCalls"].as_u64() >= Some(3), "old secret refused, then the rotated one taken");
}

#[tokio::test]
async fn a_refused_client_secret_that_reads_back_unchanged_is_permanent_and_says_so() {
    let sim = Sim::start(&["--rows", "10", "--client-secret", "what-kinaxis-expects"]);
    let dir = tempfile::tempdir().expect("dir");
    let rereads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let export = Export { reread: Some(reread_as("relay-secret", rereads.clone())), ..Export::default() };
    let err = export.run(&sim, dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.chain().contains("unchanged"), "{}", err.chain());
    assert!(!err.chain().contains("relay-secret"), "the secret is never in an error: {}", err.chain());
    assert_eq!(rereads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(sim.stats().await["tokenCalls"], 1, "an unchanged secret is not sent again");
}

#[tokio::test]
async fn errors_inside_a_200_fail_the_export_permanently_with_the_servers_words_and_no_file() {
    let cases: [(&str, bool, &str); 8] = [
        ("script-workbook", false, "Worksheet 'Planned Orders' was not found (injected)"),
        ("no-worksheets", false, "missing field `Worksheets`"),
        ("script-page", false, "query expired (injected)"),
        ("no-rows", false, "missing field `Rows`"),
        ("error-rows-page", false, "ErrorRowCount 1"),
        ("bulk-failure", true, "Status \"Failure\": export failed (injected)"),
        ("no-rows", true, "missing field `Rows`"),
        ("bulk-partial", true, "\"Partial Success\" with ErrorRowCount 2: 2 rows could not be read (injected)"),
    ];
    for (kind, bulk, expected) in cases {
        let sim = Sim::start(&["--rows", "500", "--first-page", "100", "--error-in-200", kind]);
        let dir = tempfile::tempdir().expect("dir");
        let export = Export { table: bulk.then(|| ALL_FIELDS.to_vec()), ..Export::default() };
        let err = export.run(&sim, dir.path()).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{kind}: {}", err.chain());
        assert_eq!(err.step, Step::Fetch, "{kind}");
        assert!(err.chain().contains(expected), "{kind}: {}", err.chain());
        // The exporter stops before finishing a file; the worker's spool folder goes with the job.
        assert_eq!(sim.stats().await["unavailable"], 0, "{kind}: not retried as transient");
    }
}

/// The bulk export of every row in one page: the reference for paged bulk exports.
async fn reference_bulk_csv(rows: u64) -> Vec<u8> {
    let sim = Sim::start(&["--rows", &rows.to_string()]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { table: Some(ALL_FIELDS.to_vec()), page_size: rows.max(1), in_flight: 1, ..Export::default() };
    let files = export.run(&sim, dir.path()).await.expect("reference bulk export");
    std::fs::read(&files[0].path).expect("reference file")
}

#[tokio::test]
async fn a_table_is_read_by_bulk_export_in_order_every_row_once_and_the_export_finished() {
    let reference = reference_bulk_csv(2500).await;
    let text = String::from_utf8(reference.clone()).expect("UTF-8");
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some("Order.Id,Part.Name,Site.Value,Quantity,DueDate,Description"));
    assert_eq!(lines.next(), Some("PO-0-00000000,P-00000,,0.000,2026-01-01,Standard order"));
    assert_eq!(
        lines.nth(1),
        Some("PO-0-00000002,P-15838,Werk Köln,2.074,2026-03-03,Line one  Line two"),
        "{text:.400}"
    );
    // Independent of the bulk path: the worksheet export of the same rows, read back, with
    // the line breaks a delimited row cannot carry turned into spaces.
    let records = |csv_bytes: &[u8]| -> Vec<Vec<String>> {
        csv::Reader::from_reader(csv_bytes)
            .records()
            .map(|r| r.expect("record").iter().map(|v| v.replace(['\r', '\n'], " ")).collect())
            .collect()
    };
    assert_eq!(records(&reference), records(&reference_csv(2500).await), "bulk rows equal worksheet rows");
    for (flags, page_size, in_flight) in [
        (vec![], 300, 4),
        // The last page (rows 2400-2499) capped too: read on from row 2470.
        (vec!["--page-cap", "70"], 300, 4),
        (vec!["--latency-ms", "20", "--expire-token-after-ms", "70", "--revoke-on-issue"], 200, 4),
        (vec!["--fail-first", "2", "--truncate-calls", "4"], 500, 2),
        // The finishing call (the 7th: start, 5 pages, finish) cut short: best effort, no refetch.
        (vec!["--truncate-calls", "7"], 500, 4),
    ] {
        let mut args = vec!["--rows", "2500"];
        args.extend(flags.iter().copied());
        let sim = Sim::start(&args);
        let dir = tempfile::tempdir().expect("dir");
        let export = Export { table: Some(ALL_FIELDS.to_vec()), page_size, in_flight, ..Export::default() };
        let files = export.run(&sim, dir.path()).await.unwrap_or_else(|e| panic!("{flags:?}: {}", e.chain()));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].file.worksheet, "Mfg::PlannedOrder");
        assert_eq!(files[0].file.file_name, "PlannedOrders-WP_20261124060007.csv");
        assert_eq!(files[0].file.stats.rows, 2500, "{flags:?}");
        assert_eq!(std::fs::read(&files[0].path).expect("file"), reference, "{flags:?}");
        let stats = sim.stats().await;
        assert_eq!(stats["openExports"], 0, "{flags:?}: the export was finished: {stats}");
        assert_eq!(stats["finishCalls"], 1, "{flags:?}: one finishing call, after every page: {stats}");
    }
}

#[tokio::test]
async fn an_empty_table_gives_a_header_only_file_and_its_export_is_finished() {
    let sim = Sim::start(&["--rows", "0"]);
    let dir = tempfile::tempdir().expect("dir");
    let files = Export { table: Some(vec!["Order.Id", "Quantity"]), ..Export::default() }
        .run(&sim, dir.path())
        .await
        .expect("export");
    assert_eq!(files[0].file.stats.rows, 0);
    assert_eq!(std::fs::read(&files[0].path).expect("file"), b"Order.Id,Quantity\r\n");
    let stats = sim.stats().await;
    assert_eq!((stats["finishCalls"].as_u64(), stats["openExports"].as_u64()), (Some(1), Some(0)), "{stats}");
}

#[tokio::test]
async fn a_failed_bulk_read_still_finishes_its_export() {
    let sim = Sim::start(&["--rows", "500", "--bad-width-row", "250"]);
    let dir = tempfile::tempdir().expect("dir");
    let err = Export { table: Some(ALL_FIELDS.to_vec()), ..Export::default() }.run(&sim, dir.path()).await.unwrap_err();
    assert!(err.chain().contains("row 250"), "{}", err.chain());
    assert_eq!(sim.stats().await["openExports"], 0, "released for Kinaxis");
}

#[tokio::test]
async fn a_workbook_answer_missing_an_asked_worksheet_or_clashing_file_names_is_permanent_and_named() {
    let sim = Sim::start(&["--rows", "20", "--worksheets", "Planned Orders,Stock", "--omit-worksheets", "Stock"]);
    let dir = tempfile::tempdir().expect("dir");
    let export = Export { worksheets: vec!["Planned Orders", "Stock"], ..Export::default() };
    let err = export.run(&sim, dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.chain().contains("without worksheet \"Stock\""), "{}", err.chain());

    let sim = Sim::start(&["--rows", "20", "--worksheets", "A B,A_B"]);
    let export = Export { worksheets: vec!["A B", "A_B"], ..Export::default() };
    let err = export.run(&sim, dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.chain().contains("PlannedOrders-PF_A_B_20261124060007.csv"), "{}", err.chain());
}

#[tokio::test]
async fn a_bulk_export_that_is_short_wide_or_of_an_unknown_table_is_permanent_and_named() {
    let cases: [(&[&str], Vec<&str>, &str); 4] = [
        (&["--rows", "500", "--short-by", "5"], ALL_FIELDS.to_vec(), "ended short of its total row count 505"),
        (&["--rows", "500", "--bad-width-row", "250"], ALL_FIELDS.to_vec(), "row 250 has 7 values"),
        (&["--rows", "5", "--table", "Mfg::Other"], ALL_FIELDS.to_vec(), "404"),
        (&["--rows", "5"], vec!["Order.Id", "No.Such"], "unknown field No.Such"),
    ];
    for (flags, fields, expected) in cases {
        let sim = Sim::start(flags);
        let dir = tempfile::tempdir().expect("dir");
        let export = Export { table: Some(fields), ..Export::default() };
        let err = export.run(&sim, dir.path()).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{flags:?}: {}", err.chain());
        assert!(err.chain().contains(expected), "{flags:?}: {}", err.chain());
    }
}

#[tokio::test]
async fn a_csv_columns_contract_naming_a_column_the_worksheet_lacks_fails_before_any_row() {
    let sim = Sim::start(&["--rows", "50"]);
    let dir = tempfile::tempdir().expect("dir");
    let credentials =
        KinaxisCredentials { client_id: "relay-client".into(), client_secret: SecretString::from("relay-secret") };
    let client =
        KinaxisClient::new(credentials, KinaxisOptions { base_url: sim.url.clone(), ..KinaxisOptions::default() })
            .expect("client");
    let csv = CsvOptions {
        columns: Some(vec![maestro_relay::csv_out::ColumnMapping { source: "Plant".into(), header: "WERKS".into() }]),
        ..CsvOptions::default()
    };
    let exporter = Exporter {
        client: &client,
        csv: &csv,
        names: &FileNameTemplate::default(),
        retry: &fast_retry(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    };
    let err = exporter.export(&manifest(&[]), dir.path()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.chain().contains("\"Plant\""), "{}", err.chain());
    assert_eq!(sim.stats().await["pageCalls"], 0, "no page fetched once the contract failed");
}
