//! Streaming CSV writer: the dialect and column mapping from configuration, with row count,
//! byte count and SHA-256 computed on the way so nothing is read twice.

use std::io::{self, Write};

use sha2::{Digest, Sha256};
use time::format_description::OwnedFormatItem;

/// How a field is quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// RFC 4180: only a field holding the delimiter, `"`, CR or LF.
    Necessary,
    Always,
    NonNumeric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Crlf,
    Lf,
}

/// One output column: which Kinaxis column feeds it and the header it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    pub source: String,
    pub header: String,
}

/// The CSV dialect and mapping. The defaults are RFC 4180 and every column as it comes.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub quoting: Quoting,
    pub header: bool,
    pub line_ending: LineEnding,
    pub bom: bool,
    /// `None`: every column in Kinaxis order under its own id.
    pub columns: Option<Vec<ColumnMapping>>,
    /// Columns whose `YYYY-MM-DD` values are rewritten with `date_format`; date tokens
    /// (`Undefined`, `Past`, `Future`, `Today`) and blanks pass through unchanged.
    pub date_columns: Vec<String>,
    pub date_format: Option<OwnedFormatItem>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quoting: Quoting::Necessary,
            header: true,
            line_ending: LineEnding::Crlf,
            bom: false,
            columns: None,
            date_columns: Vec::new(),
            date_format: None,
        }
    }
}

/// What was written: the receipt's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStats {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// A row that does not fit, or a mapping that names a column the worksheet lacks.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("column {0:?} named in the CSV mapping is not in the worksheet (columns: {1})")]
    UnknownColumn(String, String),
    #[error("row {row} has {found} values but the worksheet has {expected} columns")]
    RowWidth { row: u64, found: usize, expected: usize },
    #[error("writing the CSV")]
    Io(#[from] io::Error),
}

/// Counts bytes and hashes them while passing them on.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one worksheet as CSV, row by row.
pub struct CsvSink<W: Write> {
    writer: csv::Writer<HashingWriter<W>>,
    /// For each output column, the index of its source value and whether it is a date.
    plan: Vec<(usize, bool)>,
    source_width: usize,
    date_format: Option<OwnedFormatItem>,
    rows: u64,
    field: String,
}

impl<W: Write> CsvSink<W> {
    /// Starts the file: BOM and header as configured. `source_columns` are the worksheet's
    /// column ids in Kinaxis order.
    pub fn new(inner: W, options: &CsvOptions, source_columns: &[String]) -> Result<Self, CsvError> {
        let index_of = |name: &str| {
            source_columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| CsvError::UnknownColumn(name.to_owned(), source_columns.join(", ")))
        };
        let mapping: Vec<ColumnMapping> = match &options.columns {
            Some(columns) => columns.clone(),
            None => source_columns.iter().map(|c| ColumnMapping { source: c.clone(), header: c.clone() }).collect(),
        };
        let mut plan = Vec::with_capacity(mapping.len());
        for column in &mapping {
            plan.push((index_of(&column.source)?, options.date_columns.contains(&column.source)));
        }
        for date_column in &options.date_columns {
            index_of(date_column)?;
        }

        let mut sink = HashingWriter::new(inner);
        if options.bom {
            sink.write_all("\u{feff}".as_bytes())?;
        }
        let writer = csv::WriterBuilder::new()
            .delimiter(options.delimiter)
            .quote_style(match options.quoting {
                Quoting::Necessary => csv::QuoteStyle::Necessary,
                Quoting::Always => csv::QuoteStyle::Always,
                Quoting::NonNumeric => csv::QuoteStyle::NonNumeric,
            })
            .terminator(match options.line_ending {
                LineEnding::Crlf => csv::Terminator::CRLF,
                LineEnding::Lf => csv::Terminator::Any(b'\n'),
            })
            .buffer_capacity(64 * 1024)
            .from_writer(sink);
        let mut this = Self {
            writer,
            plan,
            source_width: source_columns.len(),
            date_format: options.date_format.clone(),
            rows: 0,
            field: String::new(),
        };
        if options.header {
            this.writer.write_record(mapping.iter().map(|c| c.header.as_bytes())).map_err(csv_io)?;
        }
        Ok(this)
    }

    /// Writes one row given in the worksheet's column order.
    pub fn write_row<S: AsRef<str>>(&mut self, values: &[S]) -> Result<(), CsvError> {
        if values.len() != self.source_width {
            return Err(CsvError::RowWidth { row: self.rows, found: values.len(), expected: self.source_width });
        }
        for &(index, is_date) in &self.plan {
            let value = values[index].as_ref();
            match (&self.date_format, is_date) {
                (Some(format), true) => {
                    self.field.clear();
                    reformat_date(value, format, &mut self.field);
                    self.writer.write_field(self.field.as_bytes()).map_err(csv_io)?;
                }
                _ => self.writer.write_field(value.as_bytes()).map_err(csv_io)?,
            }
        }
        self.writer.write_record(None::<&[u8]>).map_err(csv_io)?;
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and returns the inner writer with the file's figures.
    pub fn finish(self) -> Result<(W, FileStats), CsvError> {
        let sink = self.writer.into_inner().map_err(|e| CsvError::Io(e.into_error()))?;
        let HashingWriter { mut inner, hasher, bytes } = sink;
        inner.flush()?;
        let stats = FileStats { rows: self.rows, bytes, sha256: hex::encode(hasher.finalize()) };
        Ok((inner, stats))
    }
}

fn csv_io(err: csv::Error) -> CsvError {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => CsvError::Io(io),
        other => CsvError::Io(io::Error::other(format!("{other:?}"))),
    }
}

/// `YYYY-MM-DD` → the configured format; anything else (tokens, blanks) unchanged.
fn reformat_date(value: &str, format: &OwnedFormatItem, out: &mut String) {
    const ISO: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(value, ISO).ok().and_then(|d| d.format(format).ok()) {
        Some(formatted) => out.push_str(&formatted),
        None => out.push_str(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn write(options: &CsvOptions, cols: &[&str], rows: &[&[&str]]) -> (String, FileStats) {
        let mut sink = CsvSink::new(Vec::new(), options, &columns(cols)).unwrap();
        for row in rows {
            sink.write_row(row).unwrap();
        }
        let (bytes, stats) = sink.finish().unwrap();
        (String::from_utf8(bytes).unwrap(), stats)
    }

    #[test]
    fn the_default_dialect_is_rfc_4180_with_crlf_after_every_record() {
        let (text, stats) = write(
            &CsvOptions::default(),
            &["Order", "Part"],
            &[&["PO-1", "a,b"], &["PO-2", "say \"hi\""], &["PO-3", "two\r\nlines"], &["", "Grüße"]],
        );
        assert_eq!(
            text,
            "Order,Part\r\nPO-1,\"a,b\"\r\nPO-2,\"say \"\"hi\"\"\"\r\nPO-3,\"two\r\nlines\"\r\n,Grüße\r\n"
        );
        assert_eq!(stats.rows, 4);
        assert_eq!(stats.bytes, text.len() as u64);
        assert_eq!(stats.sha256, hex::encode(Sha256::digest(text.as_bytes())));
    }

    #[test]
    fn dialect_knobs_change_delimiter_line_ending_bom_header_and_quoting() {
        let options = CsvOptions {
            delimiter: b';',
            line_ending: LineEnding::Lf,
            bom: true,
            header: false,
            quoting: Quoting::Always,
            ..CsvOptions::default()
        };
        let (text, _) = write(&options, &["A", "B"], &[&["1", "x;y"]]);
        assert_eq!(text, "\u{feff}\"1\";\"x;y\"\n");
    }

    #[test]
    fn a_column_mapping_selects_renames_and_reorders() {
        let options = CsvOptions {
            columns: Some(vec![
                ColumnMapping { source: "Part".into(), header: "MATNR".into() },
                ColumnMapping { source: "Order".into(), header: "PLNUM".into() },
            ]),
            ..CsvOptions::default()
        };
        let (text, _) = write(&options, &["Order", "Site", "Part"], &[&["PO-1", "S1", "P-9"]]);
        assert_eq!(text, "MATNR,PLNUM\r\nP-9,PO-1\r\n");
    }

    #[test]
    fn dates_are_reformatted_and_date_tokens_and_blanks_pass_through() {
        let options = CsvOptions {
            date_columns: vec!["Due".into()],
            date_format: Some(time::format_description::parse_owned::<2>("[year][month][day]").unwrap()),
            ..CsvOptions::default()
        };
        let (text, _) = write(&options, &["Due"], &[&["2026-11-24"], &["Past"], &["Undefined"], &[""]]);
        assert_eq!(text, "Due\r\n20261124\r\nPast\r\nUndefined\r\n\"\"\r\n");
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused_with_its_number() {
        let mut sink = CsvSink::new(Vec::new(), &CsvOptions::default(), &columns(&["A", "B"])).unwrap();
        sink.write_row(&["1", "2"]).unwrap();
        let err = sink.write_row(&["1"]).unwrap_err();
        assert_eq!(err.to_string(), "row 1 has 1 values but the worksheet has 2 columns");
    }

    #[test]
    fn a_mapping_that_names_an_unknown_column_is_refused() {
        let options = CsvOptions {
            columns: Some(vec![ColumnMapping { source: "Nope".into(), header: "X".into() }]),
            ..CsvOptions::default()
        };
        let err = CsvSink::new(Vec::new(), &options, &columns(&["A"])).err().unwrap();
        assert!(err.to_string().contains("\"Nope\""));
    }
}
