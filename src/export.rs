//! Fetch → CSV: the workbook's worksheets written as CSV files on local disk, page by page
//! in order, a bounded number of pages in flight, memory independent of the row count; and
//! `KinaxisExport`, the Kinaxis adapter of the `WorkbookSource` port.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::csv_out::{CsvError, CsvOptions, CsvSink};
use crate::error::{Error, Result, Step};
use crate::job::{self, FileNameTemplate, Manifest, StagedFile};
use crate::kinaxis::client::{data_fault, WorksheetRef};
use crate::kinaxis::model::{NameScope, WorkbookParameters, WorkbookRequest, WorksheetAnswer};
use crate::kinaxis::page::PageBuffer;
use crate::kinaxis::{KinaxisClient, KinaxisOptions};
use crate::ports::WorkbookSource;
use crate::retry::RetryPolicy;
use crate::secrets::KinaxisCredentials;

/// A CSV written to local disk, ready to stage.
#[derive(Debug, Clone)]
pub struct ExportedFile {
    pub file: StagedFile,
    pub path: PathBuf,
}

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
    pub profiles: crate::config::Profiles,
    pub retry: RetryPolicy,
}

impl KinaxisExport {
    pub fn new(config: &crate::config::WorkerConfig) -> Self {
        Self { kinaxis: config.kinaxis.clone(), profiles: config.profiles.clone(), retry: config.retry.clone() }
    }
}

impl WorkbookSource for KinaxisExport {
    async fn export(
        &self,
        manifest: &Manifest,
        credentials: KinaxisCredentials,
        dir: &Path,
        deadline: Instant,
    ) -> Result<Vec<ExportedFile>> {
        let client = KinaxisClient::new(credentials, self.kinaxis.clone())?;
        let profile = self.profiles.for_target(&manifest.target);
        let exporter =
            Exporter { client: &client, csv: &profile.csv, names: &profile.file_names, retry: &self.retry, deadline };
        exporter.export(manifest, dir).await
    }
}

pub fn workbook_request(manifest: &Manifest) -> WorkbookRequest {
    let scope = |s: &job::NamedScope| NameScope { name: s.name.clone(), scope: s.scope.clone() };
    let request = &manifest.request;
    WorkbookRequest {
        scenario: scope(&request.scenario),
        workbook_parameters: WorkbookParameters {
            workbook: scope(&request.workbook),
            site_group: request.site_group.clone(),
            filter: request.filter.as_ref().map(scope),
            variable_values: request.variables.clone(),
            worksheet_names: request.worksheets.clone(),
        },
    }
}

impl Exporter<'_> {
    /// Writes every worksheet of the job's workbook into `dir`.
    pub async fn export(&self, manifest: &Manifest, dir: &Path) -> Result<Vec<ExportedFile>> {
        let request = workbook_request(manifest);
        let (answer, _) =
            self.retry.run(self.deadline, Step::Fetch, "kinaxis workbook", |_| self.client.workbook(&request)).await?;
        if answer.worksheets.is_empty() {
            return Err(Error::permanent(
                Step::Fetch,
                format!("workbook {:?} returned no worksheets", manifest.request.workbook.name),
            ));
        }
        let several = answer.worksheets.len() > 1;
        let mut files = Vec::with_capacity(answer.worksheets.len());
        for sheet in &answer.worksheets {
            let file_name = job::csv_file_name(self.names, manifest, &sheet.name, several);
            let path = dir.join(&file_name);
            let stats = self.write_worksheet(manifest, sheet, &path).await?;
            tracing::info!(worksheet = %sheet.name, file = %file_name, rows = stats.rows, bytes = stats.bytes, "worksheet converted");
            files.push(ExportedFile { file: StagedFile { worksheet: sheet.name.clone(), file_name, stats }, path });
        }
        Ok(files)
    }

    async fn write_worksheet(
        &self,
        manifest: &Manifest,
        sheet: &WorksheetAnswer,
        path: &Path,
    ) -> Result<crate::csv_out::FileStats> {
        let named = |e: CsvError| convert_error(e, &sheet.name);
        let columns: Vec<String> = sheet.columns.iter().map(|c| c.id.clone()).collect();
        let file = File::create(path)
            .map_err(|e| Error::transient(Step::Convert, format!("creating {}", path.display())).caused_by(e))?;
        let mut sink = CsvSink::new(BufWriter::with_capacity(256 * 1024, file), self.csv, &columns).map_err(named)?;
        for row in &sheet.rows {
            sink.write_row(&row.values).map_err(named)?;
        }

        let total = sheet.total_row_count;
        if sink.rows() < total {
            let query_id = sheet.query_handle.as_ref().map(|h| h.query_id.clone()).ok_or_else(|| {
                Error::permanent(
                    Step::Fetch,
                    format!("worksheet {:?} has {total} rows but no QueryHandle to page them", sheet.name),
                )
            })?;
            let sheet_ref = WorksheetRef {
                workbook_name: manifest.request.workbook.name.clone(),
                workbook_scope: manifest.request.workbook.scope.clone(),
                worksheet_name: sheet.name.clone(),
                query_id,
            };
            let page_size = self.client.options().page_size.max(1);
            let first = sink.rows();
            let starts = (first..total).step_by(page_size as usize);
            let mut pages = stream::iter(starts)
                .map(|start| {
                    let rows = page_size.min(total - start);
                    let sheet_ref = &sheet_ref;
                    async move { (start, rows, self.fetch_page(sheet_ref, start, rows).await) }
                })
                .buffered(self.client.options().pages_in_flight.max(1));
            let mut buffer = PageBuffer::default();
            let mut cap_reported = false;
            while let Some((start, rows, body)) = pages.next().await {
                let what = format!("worksheet {:?} rows from {start}", sheet.name);
                let body = body?;
                // Declared out here so a page fetched again outlives the match; the rare
                // refetch parses into a buffer of its own, as `buffer` is still lent out.
                let refetched;
                let mut refetched_buffer = PageBuffer::default();
                let page = match buffer.parse(&body) {
                    Ok(page) => page,
                    Err(err) => {
                        let err = data_fault(err, &what);
                        if !err.is_transient() {
                            return Err(err);
                        }
                        tracing::warn!(error = %err.chain(), "page unreadable, fetching it again");
                        refetched = self.fetch_parsable_page(&sheet_ref, start, rows).await?;
                        refetched_buffer.parse(&refetched).map_err(|e| data_fault(e, &what))?
                    }
                };
                let got = page_rows(page.len(), rows, &what, total)?;
                page.try_for_each_row(|row| sink.write_row(row)).map_err(named)?;
                // A server may serve fewer rows than asked (a page cap): the rest of this
                // page's range is read from where the rows ended, before the next page.
                let mut next = start + got;
                if next < start + rows && !cap_reported {
                    cap_reported = true;
                    tracing::warn!(
                        worksheet = %sheet.name,
                        asked = rows,
                        served = got,
                        "Kinaxis serves fewer rows per page than asked; reading on from where each page ends \
                         (set KINAXIS_PAGE_SIZE to the server's cap to keep pages in flight)"
                    );
                }
                let mut rest_buffer = PageBuffer::default();
                while next < start + rows {
                    let what = format!("worksheet {:?} rows from {next}", sheet.name);
                    let body = self.fetch_parsable_page(&sheet_ref, next, start + rows - next).await?;
                    let rest = rest_buffer.parse(&body).map_err(|e| data_fault(e, &what))?;
                    let got = page_rows(rest.len(), start + rows - next, &what, total)?;
                    rest.try_for_each_row(|row| sink.write_row(row)).map_err(named)?;
                    next += got;
                }
            }
        } else if sink.rows() > total {
            return Err(Error::permanent(
                Step::Fetch,
                format!(
                    "worksheet {:?} returned {} rows, more than its TotalRowCount {total}",
                    sheet.name,
                    sink.rows()
                ),
            ));
        }
        let (_, mut stats) = sink.finish().map_err(named)?;
        stats.kinaxis_total_row_count = Some(total);
        Ok(stats)
    }

    async fn fetch_page(&self, sheet: &WorksheetRef, start: u64, rows: u64) -> Result<bytes::Bytes> {
        let what = format!("kinaxis page {start}");
        let (body, _) =
            self.retry.run(self.deadline, Step::Fetch, &what, |_| self.client.page(sheet, start, rows)).await?;
        Ok(body)
    }

    /// As `fetch_page`, counting an unparsable body as a failed attempt.
    async fn fetch_parsable_page(&self, sheet: &WorksheetRef, start: u64, rows: u64) -> Result<bytes::Bytes> {
        let what = format!("kinaxis page {start}");
        let (body, _) = self
            .retry
            .run(self.deadline, Step::Fetch, &what, |_| {
                let what = &what;
                async move {
                    let body = self.client.page(sheet, start, rows).await?;
                    PageBuffer::default().parse(&body).map_err(|e| data_fault(e, what))?;
                    Ok(body)
                }
            })
            .await?;
        Ok(body)
    }
}

/// The rows a page brought, when they are a usable answer to asking for `asked`: none at
/// all before `TotalRowCount` means the export ended short, more than asked is not an
/// answer to the request; both permanent.
fn page_rows(len: usize, asked: u64, what: &str, total: u64) -> Result<u64> {
    let got = len as u64;
    if got == 0 {
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what}: the page has no rows: the export ended short of TotalRowCount {total}"),
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

fn convert_error(err: CsvError, worksheet: &str) -> Error {
    match err {
        CsvError::Io(io) => {
            Error::transient(Step::Convert, format!("writing the CSV of worksheet {worksheet:?}")).caused_by(io)
        }
        other => Error::permanent(Step::Convert, format!("worksheet {worksheet:?}: {other}")),
    }
}
