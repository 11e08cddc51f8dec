//! A workbook in memory (`WorkbookSource`): rows written as the export would, through the outlets.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::csv_out::FileStats;
use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{self, ExportedFile, Manifest, StagedFile};
use crate::outlet::Outlets;
use crate::ports::WorkbookSource;
use crate::secrets::KinaxisLogin;

/// Exports generated worksheets. Each export's rows carry the export's number, so two
/// exports of one job differ, as two reads of a live plan can.
#[derive(Debug)]
pub struct MemorySource {
    pub worksheets: Vec<(String, u64)>,
    /// How long one export takes, in milliseconds (sleeping; a deadline can cut it).
    latency_ms: AtomicU64,
    exports: AtomicU64,
    faults: Faults,
    /// How the files are named (the default's timestamped names, unless a test says).
    file_names: std::sync::Mutex<job::FileNameTemplate>,
}

impl MemorySource {
    /// One worksheet of `rows` rows.
    pub fn new(rows: u64) -> Arc<Self> {
        Self::with_worksheets(&[("Planned Orders", rows)])
    }

    pub fn with_worksheets(worksheets: &[(&str, u64)]) -> Arc<Self> {
        Arc::new(Self {
            worksheets: worksheets.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            latency_ms: AtomicU64::new(0),
            exports: AtomicU64::new(0),
            faults: Faults::default(),
            file_names: std::sync::Mutex::new(job::FileNameTemplate::default()),
        })
    }

    pub fn with_latency(self: Arc<Self>, latency: Duration) -> Arc<Self> {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::SeqCst);
        self
    }

    /// Files named by `template` (as `FILE_NAME_TEMPLATE` names them), e.g. fixed names.
    pub fn with_file_names(self: Arc<Self>, template: job::FileNameTemplate) -> Arc<Self> {
        *lock(&self.file_names) = template;
        self
    }

    /// How many exports were started.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::SeqCst)
    }

    /// The next `times` exports fail.
    pub fn fail(&self, times: u32, transient: bool) {
        self.faults.add("export", "", times, transient);
    }

    /// The next `times` exports fail halfway through writing their first file (a page
    /// that never comes): what was streamed so far must not reach SAP.
    pub fn fail_midway(&self, times: u32, transient: bool) {
        self.faults.add("midway", "", times, transient);
    }
}

/// The generated file is handed to the outlet in pieces of this size, as a converter
/// writes a file page by page.
const MEMORY_SOURCE_PIECE: usize = 64;

impl WorkbookSource for Arc<MemorySource> {
    async fn export(
        &self,
        manifest: &Manifest,
        _login: KinaxisLogin,
        dir: &Path,
        deadline: Instant,
        outlets: &Outlets,
    ) -> Result<Vec<ExportedFile>> {
        let number = self.exports.fetch_add(1, Ordering::SeqCst) + 1;
        self.faults.take("export", "", Step::Fetch)?;
        if tokio::time::timeout_at(
            deadline,
            tokio::time::sleep(Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))),
        )
        .await
        .is_err()
        {
            return Err(crate::retry::deadline_reached(Step::Fetch, "exporting from the in-memory source"));
        }
        let several = self.worksheets.len() > 1;
        let file_names = lock(&self.file_names).clone();
        let mut files = Vec::new();
        for (worksheet, rows) in &self.worksheets {
            let file_name = job::csv_file_name(&file_names, manifest, worksheet, several);
            let mut csv = String::from("Order,Quantity\r\n");
            for row in 0..*rows {
                csv.push_str(&format!("PO-{row},{number}\r\n"));
            }
            let path = dir.join(&file_name);
            // The outlet is a blocking writer: written from a blocking thread, as the
            // converter writes it; it writes the file too.
            let mut outlet = outlets.open(worksheet, &file_name, &path);
            outlet.create_spool().or_transient(Step::Convert, format!("creating {}", path.display()))?;
            let midway = if files.is_empty() { self.faults.take("midway", "", Step::Fetch).err() } else { None };
            let bytes = csv.clone().into_bytes();
            let streamed = tokio::task::spawn_blocking(move || {
                let half = bytes.len() / 2;
                for (index, piece) in bytes.chunks(MEMORY_SOURCE_PIECE).enumerate() {
                    if midway.is_some() && index * MEMORY_SOURCE_PIECE >= half {
                        return Err(midway.unwrap_or_else(|| Error::transient(Step::Fetch, "cut")));
                    }
                    std::io::Write::write_all(&mut outlet, piece).or_transient(Step::Convert, "writing the file")?;
                }
                outlet.finish().or_transient(Step::Convert, "writing the file")
            })
            .await
            .or_transient(Step::Convert, "the writing thread stopped")?;
            streamed?;
            let stats = FileStats {
                rows: *rows,
                bytes: csv.len() as u64,
                sha256: job::sha256_hex(csv.as_bytes()),
                kinaxis_total_row_count: Some(*rows),
                ..FileStats::default()
            };
            files.push(ExportedFile { file: StagedFile { worksheet: worksheet.clone(), file_name, stats }, path });
        }
        Ok(files)
    }
}
