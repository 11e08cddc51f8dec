//! Fetch → CSV: the workbook's worksheets, or a table by bulk export, written as CSV files
//! on local disk (and, as they are written, to the outlets that stream them on), page by
//! page in order, a bounded number of pages in flight, memory independent of the row
//! count; conversion runs on a blocking thread of its own fed by a bounded channel of
//! parsed pages; and `KinaxisExport`, the Kinaxis adapter of the `WorkbookSource` port.

pub mod kinaxis;

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use self::kinaxis::client::{data_fault, WorksheetRef};
use self::kinaxis::model::{
    BulkExportAnswer, BulkExportRequest, NameScope, TableName, WorkbookParameters, WorkbookRequest,
};
use self::kinaxis::page::{Page, ParsedAnswer, Reported, SheetHead};
use self::kinaxis::{KinaxisClient, KinaxisOptions};
use crate::csv_out::{CsvError, CsvOptions, CsvSink, FileFormat, FileStats};
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{
    self, DataSource, ExportedFile, FileNameTemplate, Manifest, NamedScope, Profiles, StagedFile, TableRequest,
};
use crate::outlet::{Outlet, Outlets};
use crate::ports::WorkbookSource;
use crate::retry::RetryPolicy;
use crate::secrets::KinaxisLogin;
use crate::xml_out::{XmlRoot, XmlSink};

pub struct Exporter<'a> {
    pub client: &'a KinaxisClient,
    pub csv: &'a CsvOptions,
    pub names: &'a FileNameTemplate,
    pub retry: &'a RetryPolicy,
    pub deadline: Instant,
}

/// The Kinaxis REST API as a `WorkbookSource`: a client per export (its token lives as long
/// as the job), pages converted to CSV as they arrive.
#[derive(Debug, Clone)]
pub struct KinaxisExport {
    pub kinaxis: KinaxisOptions,
    /// The CSV dialect and file names, per target.
    pub profiles: Profiles,
    pub retry: RetryPolicy,
}

impl KinaxisExport {
    pub fn new(kinaxis: KinaxisOptions, profiles: Profiles, retry: RetryPolicy) -> Self {
        Self { kinaxis, profiles, retry }
    }
}

impl WorkbookSource for KinaxisExport {
    async fn export(
        &self,
        manifest: &Manifest,
        login: KinaxisLogin,
        dir: &Path,
        deadline: Instant,
        outlets: &Outlets,
    ) -> Result<Vec<ExportedFile>> {
        let client = KinaxisClient::new(login, self.kinaxis.clone())?;
        let profile = self.profiles.for_target(&manifest.target);
        let exporter =
            Exporter { client: &client, csv: &profile.csv, names: &profile.file_names, retry: &self.retry, deadline };
        exporter.export_to(manifest, dir, outlets).await
    }
}

pub fn workbook_request(manifest: &Manifest, workbook: &NamedScope) -> WorkbookRequest {
    let scope = |s: &job::NamedScope| NameScope { name: s.name.clone(), scope: s.scope.clone() };
    let request = &manifest.request;
    WorkbookRequest {
        scenario: scope(&request.scenario),
        workbook_parameters: WorkbookParameters {
            workbook: scope(workbook),
            site_group: request.site_group.clone(),
            filter: request.filter.as_ref().map(scope),
            variable_values: request.variables.clone(),
            worksheet_names: request.worksheets.clone(),
        },
    }
}

pub fn bulk_export_request(manifest: &Manifest, table: &TableRequest) -> BulkExportRequest {
    let scenario = &manifest.request.scenario;
    BulkExportRequest {
        scenario: NameScope { name: scenario.name.clone(), scope: scenario.scope.clone() },
        table: TableName { namespace: table.namespace.clone(), name: table.name.clone() },
        fields: table.fields.clone(),
        filter: table.filter.clone(),
    }
}

/// Bulk rows come as one string each, values split by this (docs/kinaxis-api.md: tab).
pub const BULK_DELIMITER: char = '\t';

/// What a run of pages is read from.
#[derive(Debug, Clone, Copy)]
enum Paged<'a> {
    Worksheet(&'a WorksheetRef),
    /// Every page is asked for with `finishExport=false`; the finishing call is separate.
    Bulk {
        export_id: &'a str,
    },
}

impl Paged<'_> {
    fn parse(&self, body: bytes::Bytes) -> Result<ParsedAnswer, serde_json::Error> {
        match self {
            Paged::Worksheet(_) => ParsedAnswer::page(body),
            Paged::Bulk { .. } => ParsedAnswer::delimited(body, BULK_DELIMITER),
        }
    }
}

/// An error Kinaxis reported inside a 200: nothing a retry would change, so permanent,
/// with the server's words.
fn reported_error(reported: &Reported, what: &str) -> Error {
    Error::permanent(Step::Fetch, format!("{what}: Kinaxis answered 200 with an error: {reported}"))
}

impl Exporter<'_> {
    /// Writes every worksheet of the job's workbook, or its table, into `dir`.
    pub async fn export(&self, manifest: &Manifest, dir: &Path) -> Result<Vec<ExportedFile>> {
        self.export_to(manifest, dir, &Outlets::none()).await
    }

    /// As `export`, each file's bytes also handed to `outlets` as they are written.
    pub async fn export_to(&self, manifest: &Manifest, dir: &Path, outlets: &Outlets) -> Result<Vec<ExportedFile>> {
        match manifest.request.source() {
            Some(DataSource::Workbook(workbook)) => self.export_workbook(manifest, workbook, dir, outlets).await,
            Some(DataSource::Table(table)) => {
                self.export_table(manifest, table, dir, outlets).await.map(|file| vec![file])
            }
            None => Err(Error::permanent(
                Step::Fetch,
                "the job's manifest names both a workbook and a table, or neither: nothing to export",
            )),
        }
    }

    async fn export_workbook(
        &self,
        manifest: &Manifest,
        workbook: &NamedScope,
        dir: &Path,
        outlets: &Outlets,
    ) -> Result<Vec<ExportedFile>> {
        let request = workbook_request(manifest, workbook);
        let what = format!("workbook {:?}", workbook.name);
        let (answer, _) = self
            .retry
            .run(self.deadline, Step::Fetch, "kinaxis workbook", |_| {
                let (request, what) = (&request, &what);
                async move {
                    let body = self.client.workbook(request).await?;
                    // A body cut short is a failed attempt, fetched again.
                    ParsedAnswer::workbook(body).map_err(|e| data_fault(e, what))
                }
            })
            .await?;
        if let Some(reported) = answer.reported() {
            return Err(reported_error(reported, &what));
        }
        let sheets = answer.as_workbook().sheets().to_vec();
        if sheets.is_empty() {
            return Err(Error::permanent(Step::Fetch, format!("{what} returned no worksheets")));
        }
        let first_rows: Vec<u64> =
            (0..sheets.len()).map(|index| answer.as_workbook().rows(index).len() as u64).collect();
        // The answer owns its parse, so each sheet's first rows can go to the converter.
        let parsed = Parsed { answer, sheet: None };
        let several = sheets.len() > 1;
        let names: Vec<String> =
            sheets.iter().map(|sheet| job::csv_file_name(self.names, manifest, &sheet.name, several)).collect();
        check_worksheets(&manifest.request.worksheets, &sheets, &names, &what)?;
        let mut files = Vec::with_capacity(sheets.len());
        for ((index, sheet), file_name) in sheets.iter().enumerate().zip(names) {
            let path = dir.join(&file_name);
            let outlet = outlets.open(&sheet.name, &file_name, &path);
            let first = Parsed { sheet: Some(index), ..parsed.clone() };
            let stats = self.write_worksheet(workbook, sheet, (first, first_rows[index]), &path, outlet).await?;
            tracing::info!(worksheet = %sheet.name, file = %file_name, rows = stats.rows, bytes = stats.bytes, "worksheet converted");
            files.push(ExportedFile { file: StagedFile { worksheet: sheet.name.clone(), file_name, stats }, path });
        }
        Ok(files)
    }

    async fn write_worksheet(
        &self,
        workbook: &NamedScope,
        sheet: &SheetHead,
        (first, first_rows): (Parsed, u64),
        path: &Path,
        outlet: Outlet,
    ) -> Result<FileStats> {
        let source = format!("worksheet {:?}", sheet.name);
        let total = sheet.total_row_count;
        let what = format!("worksheet {:?}", sheet.name);
        let root = XmlRoot { element: "Worksheet", name: &sheet.name, total_row_count: total };
        let plan = self.create_sink(path, &sheet.columns, root, outlet);
        let mut sink = Converter::start(plan, CONVERTER_QUEUE, total, what.clone(), source.clone()).await?;
        sink.send(first, first_rows).await?;

        if sink.rows() < total {
            let query_id = sheet.query_id.clone().ok_or_else(|| {
                Error::permanent(Step::Fetch, format!("{what} has {total} rows but no QueryHandle to page them"))
            })?;
            let sheet_ref = WorksheetRef {
                workbook_name: workbook.name.clone(),
                workbook_scope: workbook.scope.clone(),
                worksheet_name: sheet.name.clone(),
                query_id,
            };
            let page_size = self.client.options().page_size;
            self.read_pages(&mut sink, Paged::Worksheet(&sheet_ref), total, page_size, &what).await?;
        }
        sink.finish().await
    }

    /// A table by bulk export: started, then read page by page, the last request telling
    /// Kinaxis the export is finished.
    async fn export_table(
        &self,
        manifest: &Manifest,
        table: &TableRequest,
        dir: &Path,
        outlets: &Outlets,
    ) -> Result<ExportedFile> {
        let request = bulk_export_request(manifest, table);
        let qualified = table.qualified_name();
        let what = format!("bulk export of table {qualified}");
        // A start whose answer was lost (cut, timed out) is retried: the lost export cannot be
        // finished, as its id never arrived, and is left for Kinaxis to expire.
        let (body, _) = self
            .retry
            .run(self.deadline, Step::Fetch, "kinaxis bulk export", |_| {
                let (request, what) = (&request, &what);
                async move {
                    let body = self.client.bulk_export(request).await?;
                    bulk_started(&body, what)?;
                    Ok(body)
                }
            })
            .await?;
        let (export_id, total) = bulk_started(&body, &what)?;
        tracing::info!(table = %qualified, rows = total, "bulk export started");

        let file_name = job::csv_file_name(self.names, manifest, &qualified, false);
        let path = dir.join(&file_name);
        let source = format!("table {qualified}");
        let read = async {
            let root = XmlRoot { element: "Table", name: &qualified, total_row_count: total };
            let plan = self.create_sink(&path, &table.fields, root, outlets.open(&qualified, &file_name, &path));
            let options = self.client.options();
            let page_size = options.bulk_page_size;
            let queue = pages_for_rows(CONVERTER_QUEUE, options.page_size, page_size);
            let mut sink = Converter::start(plan, queue, total, what.clone(), source.clone()).await?;
            let paged = Paged::Bulk { export_id: &export_id };
            self.read_pages(&mut sink, paged, total, page_size, &what).await?;
            sink.finish().await
        };
        let read: Result<FileStats> = read.await;
        // Finished whether the read succeeded or not, so Kinaxis can release it at once.
        self.finish_bulk_export(&export_id, total, &what).await;
        let stats = read?;
        tracing::info!(table = %qualified, file = %file_name, rows = stats.rows, bytes = stats.bytes, "table converted");
        Ok(ExportedFile { file: StagedFile { worksheet: qualified, file_name, stats }, path })
    }

    /// Tells Kinaxis the export is finished (`finishExport=true`), in a call of its own after
    /// every row arrived: a server may release the export on it, which would refuse a page
    /// still in flight or one read again after a cap or a cut body. It asks for the last row
    /// again (or the first, of an empty export) and ignores it. Best effort: the rows are
    /// complete either way, so a failure is a WARN, not a failed job.
    async fn finish_bulk_export(&self, export_id: &str, total: u64, what: &str) {
        let start = total.saturating_sub(1);
        let call = self.client.bulk_page(export_id, start, 1, BULK_DELIMITER, true);
        match tokio::time::timeout_at(self.deadline, call).await {
            Ok(Ok(_)) => tracing::debug!(what, "bulk export finished"),
            Ok(Err(err)) => {
                tracing::warn!(what, error = %err.chain(), "finishing the bulk export failed; Kinaxis will expire it")
            }
            Err(_) => tracing::warn!(what, "no time left to finish the bulk export; Kinaxis will expire it"),
        }
    }

    /// What the converter's thread opens the file with: creating it, writing the header
    /// and handing it to the outlet are blocking work, never done on the executor.
    fn create_sink(&self, path: &Path, columns: &[String], root: XmlRoot<'_>, outlet: Outlet) -> SinkPlan {
        SinkPlan {
            path: path.to_owned(),
            csv: self.csv.clone(),
            columns: columns.to_vec(),
            root: (root.element, root.name.to_owned(), root.total_row_count),
            outlet,
        }
    }

    /// Reads rows `sink.rows()..total` in pages of `page_size`, a bounded number in flight,
    /// written in order. A server that serves fewer rows than asked (a page cap) is read on
    /// from where each page ended; a page of no rows before `total` ends the export short.
    async fn read_pages(
        &self,
        sink: &mut Converter,
        paged: Paged<'_>,
        total: u64,
        page_size: u64,
        what: &str,
    ) -> Result<()> {
        let page_size = page_size.max(1);
        let options = self.client.options();
        let first = sink.rows();
        let starts = (first..total).step_by(usize::try_from(page_size).unwrap_or(usize::MAX));
        let mut pages = stream::iter(starts)
            .map(|start| {
                let rows = page_size.min(total - start);
                async move { (start, rows, self.fetch_page(paged, start, rows).await) }
            })
            .buffered(pages_for_rows(options.pages_in_flight, options.page_size, page_size));
        let mut cap_reported = false;
        while let Some((start, rows, body)) = pages.next().await {
            let page_what = format!("{what} rows from {start}");
            // Each page parses into a buffer of its own: the parse goes to the converter
            // with its body while the next page is read.
            let answer = match paged.parse(body?) {
                Ok(answer) => answer,
                Err(err) => {
                    let err = data_fault(err, &page_what);
                    if !err.is_transient() {
                        return Err(err);
                    }
                    tracing::warn!(error = %err.chain(), "page unreadable, fetching it again");
                    self.fetch_parsable_page(paged, start, rows).await?
                }
            };
            let got = page_rows(&answer.rows(None), rows, &page_what, total)?;
            sink.send(Parsed { answer, sheet: None }, got).await?;
            // A server may serve fewer rows than asked (a page cap): the rest of this
            // page's range is read from where the rows ended, before the next page.
            let mut next = start + got;
            if next < start + rows && !cap_reported {
                cap_reported = true;
                tracing::warn!(
                    what,
                    asked = rows,
                    served = got,
                    "Kinaxis serves fewer rows per page than asked; reading on from where each page ends \
                     (set the page size to the server's cap to keep pages in flight)"
                );
            }
            while next < start + rows {
                let rest_what = format!("{what} rows from {next}");
                let rest = self.fetch_parsable_page(paged, next, start + rows - next).await?;
                let got = page_rows(&rest.rows(None), start + rows - next, &rest_what, total)?;
                sink.send(Parsed { answer: rest, sheet: None }, got).await?;
                next += got;
            }
        }
        Ok(())
    }

    async fn fetch_page(&self, paged: Paged<'_>, start: u64, rows: u64) -> Result<bytes::Bytes> {
        let what = format!("kinaxis page {start}");
        let (body, _) =
            self.retry.run(self.deadline, Step::Fetch, &what, |_| self.request_page(paged, start, rows)).await?;
        Ok(body)
    }

    async fn request_page(&self, paged: Paged<'_>, start: u64, rows: u64) -> Result<bytes::Bytes> {
        match paged {
            Paged::Worksheet(sheet) => self.client.page(sheet, start, rows).await,
            Paged::Bulk { export_id } => self.client.bulk_page(export_id, start, rows, BULK_DELIMITER, false).await,
        }
    }

    /// As `fetch_page`, counting an unparsable body as a failed attempt; the page parsed.
    async fn fetch_parsable_page(&self, paged: Paged<'_>, start: u64, rows: u64) -> Result<ParsedAnswer> {
        let what = format!("kinaxis page {start}");
        let (answer, _) = self
            .retry
            .run(self.deadline, Step::Fetch, &what, |_| {
                let what = &what;
                async move {
                    let body = self.request_page(paged, start, rows).await?;
                    paged.parse(body).map_err(|e| data_fault(e, what))
                }
            })
            .await?;
        Ok(answer)
    }
}

/// The bulk export's handle and size, or the error Kinaxis reported starting it.
fn bulk_started(body: &[u8], what: &str) -> Result<(String, u64)> {
    let answer: BulkExportAnswer = serde_json::from_slice(body).map_err(|e| data_fault(e, what))?;
    let reported = match &answer.script_error {
        Some(error) => Some(Reported::script(error)),
        None => Reported::of_status(answer.status.as_deref(), answer.error_row_count, answer.message.clone()),
    };
    if let Some(reported) = reported {
        return Err(reported_error(&reported, what));
    }
    match (answer.export_id, answer.total_rows) {
        (Some(id), Some(total)) if !id.trim().is_empty() => Ok((id, total)),
        _ => Err(Error::permanent(
            Step::Fetch,
            format!(
                "{what}: Kinaxis answered 200 without an ExportId and TotalRows (Status {:?})",
                answer.status.unwrap_or_default()
            ),
        )),
    }
}

/// The worksheets Kinaxis answered are the ones asked for, each once, each to a file of its
/// own: a worksheet left out would be a job delivered without it, two of one name or two
/// names cleaned to one file name would overwrite each other.
fn check_worksheets(asked: &[String], sheets: &[SheetHead], names: &[String], what: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for sheet in sheets {
        if !seen.insert(sheet.name.as_str()) {
            return Err(Error::permanent(Step::Fetch, format!("{what} returned worksheet {:?} twice", sheet.name)));
        }
        if !asked.is_empty() && !asked.contains(&sheet.name) {
            return Err(Error::permanent(
                Step::Fetch,
                format!("{what} returned worksheet {:?}, which was not asked for", sheet.name),
            ));
        }
    }
    if let Some(missing) = asked.iter().find(|name| !seen.contains(name.as_str())) {
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what} answered without worksheet {missing:?}, which was asked for"),
        ));
    }
    let mut files = std::collections::HashSet::new();
    if let Some(clash) = names.iter().find(|name| !files.insert(name.as_str())) {
        return Err(Error::permanent(
            Step::Convert,
            format!("two worksheets of {what} would both be written as {clash:?}; rename one in Maestro"),
        ));
    }
    Ok(())
}

/// Closes the file once every row is there: fewer than `total` is an export that ended
/// short, more is not the export Kinaxis described; both permanent.
fn finish<W: Write>(
    sink: FileSink<W>,
    total: u64,
    what: &str,
    named: &impl Fn(CsvError) -> Error,
) -> Result<(W, FileStats)> {
    if sink.rows() != total {
        let relation = if sink.rows() > total { "more" } else { "fewer" };
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what} returned {} rows, {relation} than its total row count {total}", sink.rows()),
        ));
    }
    let (inner, mut stats) = sink.finish().map_err(named)?;
    stats.kinaxis_total_row_count = Some(total);
    Ok((inner, stats))
}

/// A parsed answer on its way to the converter; `sheet`: that worksheet's first rows of a
/// workbook answer.
#[derive(Clone)]
struct Parsed {
    answer: ParsedAnswer,
    sheet: Option<usize>,
}

/// Parsed worksheet pages waiting for the converter, beyond the one it converts.
const CONVERTER_QUEUE: usize = 2;

/// How many pages of `page_size` rows may be at hand at once where `pages` worksheet pages
/// (of `worksheet_page_size`) may: as many rows, so memory, and the rows each round trip
/// brings, follow rows rather than pages. A bulk page of 20,000 rows counts as four of
/// 5,000; never fewer than one, never more than `pages`.
fn pages_for_rows(pages: usize, worksheet_page_size: u64, page_size: u64) -> usize {
    let rows = (pages as u64).saturating_mul(worksheet_page_size);
    usize::try_from(rows / page_size.max(1)).unwrap_or(usize::MAX).clamp(1, pages.max(1))
}

/// The file about to be written, opened on the converter's thread.
struct SinkPlan {
    path: PathBuf,
    csv: CsvOptions,
    columns: Vec<String>,
    /// The XML root's element, name and total row count.
    root: (&'static str, String, u64),
    outlet: Outlet,
}

impl SinkPlan {
    fn open(self, named: &impl Fn(CsvError) -> Error) -> Result<FileSink<Outlet>> {
        let SinkPlan { path, csv, columns, root, mut outlet } = self;
        outlet.create_spool().or_transient(Step::Convert, format!("creating {}", path.display()))?;
        // The columns contract (CSV_COLUMNS, CSV_DATE_COLUMNS, XML element names) is checked
        // here, before any row is written.
        match csv.format {
            FileFormat::Csv => CsvSink::new(outlet, &csv, &columns).map(|sink| FileSink::Csv(Box::new(sink))),
            FileFormat::Xml => {
                let root = XmlRoot { element: root.0, name: &root.1, total_row_count: root.2 };
                XmlSink::new(outlet, &csv, &columns, root).map(|sink| FileSink::Xml(Box::new(sink)))
            }
        }
        .map_err(named)
    }
}

/// The target's writer: CSV or XML, fed the same rows. (One per file: the box costs nothing.)
enum FileSink<W: Write> {
    Csv(Box<CsvSink<W>>),
    Xml(Box<XmlSink<W>>),
}

impl<W: Write> FileSink<W> {
    fn write_row(&mut self, values: &[&str]) -> Result<(), CsvError> {
        match self {
            Self::Csv(sink) => sink.write_row(values),
            Self::Xml(sink) => sink.write_row(values),
        }
    }

    fn rows(&self) -> u64 {
        match self {
            Self::Csv(sink) => sink.rows(),
            Self::Xml(sink) => sink.rows(),
        }
    }

    fn finish(self) -> Result<(W, FileStats), CsvError> {
        match self {
            Self::Csv(sink) => sink.finish(),
            Self::Xml(sink) => sink.finish(),
        }
    }
}

/// The converter's thread ended without an answer: a panic is a defect, which a retry
/// would only repeat; a cancelled thread (the runtime shutting down) may do better later.
fn converter_stopped(err: tokio::task::JoinError) -> Error {
    if err.is_panic() {
        Error::permanent(Step::Convert, "the converter panicked (a defect; retrying would repeat it)").caused_by(err)
    } else {
        Error::transient(Step::Convert, "the converter thread stopped").caused_by(err)
    }
}

/// The CSV writer on a blocking thread of its own, fed parsed pages through a bounded
/// channel: mapping, encoding, hashing and writing (to the spool file and the outlets,
/// which may block) never hold the executor, so the pages in flight keep arriving while a
/// page converts.
struct Converter {
    pages: Option<tokio::sync::mpsc::Sender<Parsed>>,
    thread: tokio::task::JoinHandle<Result<FileStats>>,
    /// Rows handed over so far: what the reading side counts by.
    rows: u64,
}

impl Converter {
    /// Starts the thread, which opens the file (its header checked and written) before
    /// this returns; when the pages end it checks that `total` rows were written, closes
    /// the file and only then sends the outlet's last bytes.
    async fn start(plan: SinkPlan, queue: usize, total: u64, what: String, source: String) -> Result<Self> {
        let (pages, mut received) = tokio::sync::mpsc::channel::<Parsed>(queue.max(1));
        let (opened, ready) = tokio::sync::oneshot::channel::<()>();
        let span = tracing::Span::current();
        let mut thread = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let named = |e: CsvError| convert_error(e, &source);
            let mut sink = plan.open(&named)?;
            let _ = opened.send(());
            while let Some(parsed) = received.blocking_recv() {
                parsed.answer.rows(parsed.sheet).try_for_each_row(|row| sink.write_row(row)).map_err(named)?;
            }
            let (outlet, stats) = finish(sink, total, &what, &named)?;
            outlet.finish().map_err(|e| named(CsvError::Io(e)))?;
            Ok(stats)
        });
        if ready.await.is_err() {
            // The thread ended before the file was open: its error is the export's.
            return Err(match (&mut thread).await {
                Ok(Err(err)) => err,
                Ok(Ok(_)) => Error::transient(Step::Convert, "the converter ended before opening its file"),
                Err(err) => converter_stopped(err),
            });
        }
        Ok(Self { pages: Some(pages), thread, rows: 0 })
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    /// Hands a page of `rows` rows over; waits while the queue is full.
    async fn send(&mut self, parsed: Parsed, rows: u64) -> Result<()> {
        let sent = match &self.pages {
            Some(pages) => pages.send(parsed).await.is_ok(),
            None => false,
        };
        if !sent {
            // The converter stopped on an error of its own: that error is the export's.
            self.pages = None;
            return Err(match (&mut self.thread).await {
                Ok(Err(err)) => err,
                Ok(Ok(_)) => Error::transient(Step::Convert, "the converter ended before its last page"),
                Err(err) => converter_stopped(err),
            });
        }
        self.rows += rows;
        Ok(())
    }

    /// No more pages: the file's figures once the converter has written and checked it.
    async fn finish(mut self) -> Result<FileStats> {
        self.pages = None;
        (&mut self.thread).await.map_err(converter_stopped)?
    }
}

/// The rows a page brought, when they are a usable answer to asking for `asked`: an error
/// reported inside the 200 is the server's; none at all before the total means the export
/// ended short, more than asked is not an answer to the request; all permanent.
fn page_rows(page: &Page<'_>, asked: u64, what: &str, total: u64) -> Result<u64> {
    if let Some(reported) = page.reported() {
        return Err(reported_error(reported, what));
    }
    let got = page.len() as u64;
    if got == 0 {
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what}: the page has no rows: the export ended short of its total row count {total}"),
        ));
    }
    if got > asked {
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what}: the page has {got} rows, more than the {asked} asked"),
        ));
    }
    Ok(got)
}

fn convert_error(err: CsvError, source: &str) -> Error {
    match err {
        CsvError::Io(io) => Error::transient(Step::Convert, format!("writing the file of {source}")).caused_by(io),
        other => Error::permanent(Step::Convert, format!("{source}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn bulk_pages_in_flight_and_waiting_hold_as_many_rows_as_worksheet_pages_do() {
        assert_eq!(pages_for_rows(4, 5000, 5000), 4, "worksheet pages: as configured");
        assert_eq!(pages_for_rows(4, 5000, 20_000), 1);
        assert_eq!(pages_for_rows(4, 5000, 10_000), 2);
        assert_eq!(pages_for_rows(2, 5000, 20_000), 1, "never fewer than one");
        assert_eq!(pages_for_rows(4, 5000, 1000), 4, "never more than configured");
        assert_eq!(pages_for_rows(8, 5000, 500_000), 1);
    }

    #[tokio::test]
    async fn a_converter_that_panics_is_a_permanent_failure_and_one_cancelled_a_transient_one() {
        let panicked = tokio::task::spawn_blocking(|| panic!("a defect")).await.unwrap_err();
        let err = converter_stopped(panicked);
        assert_eq!((err.class, err.step), (ErrorClass::Permanent, Step::Convert), "{}", err.chain());
        let never = tokio::spawn(std::future::pending::<()>());
        never.abort();
        let err = converter_stopped(never.await.unwrap_err());
        assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    }
}
