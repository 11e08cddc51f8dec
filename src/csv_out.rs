//! Streaming CSV writer: the dialect and column mapping from configuration, with row count,
//! byte count and SHA-256 computed on the way so nothing is read twice; the column plan
//! (selection, renaming, dates, decimals) it shares with the XML writer (`xml_out`).

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

/// The bytes a file is written in. Single-byte encodings are a few lines each: ISO-8859-1 is
/// the first 256 code points, windows-1252 the same but for its 0x80–0x9F table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Utf8,
    /// UTF-8 behind a byte-order mark (SAP's guideline for `OPEN DATASET … ENCODING UTF-8`).
    Utf8Bom,
    Latin1,
    Windows1252,
}

impl Encoding {
    pub const NAMES: &'static str = "utf-8, utf-8-bom, iso-8859-1, windows-1252";

    pub fn name(self) -> &'static str {
        match self {
            Self::Utf8 => "utf-8",
            Self::Utf8Bom => "utf-8-bom",
            Self::Latin1 => "iso-8859-1",
            Self::Windows1252 => "windows-1252",
        }
    }

    /// The byte for `c`, or `None` where the encoding has none; UTF-8 never calls this.
    pub fn single_byte(self, c: char) -> Option<u8> {
        let code = c as u32;
        if code < 0x80 {
            return Some(code as u8);
        }
        match self {
            Self::Utf8 | Self::Utf8Bom => None,
            Self::Latin1 => u8::try_from(code).ok(),
            Self::Windows1252 if (0xA0..=0xFF).contains(&code) => Some(code as u8),
            // 0x80–0x9F hold typographic characters, five of them unassigned; the C1
            // control characters themselves have no byte.
            Self::Windows1252 => WINDOWS_1252_HIGH.iter().position(|&t| t == c).map(|i| 0x80 + i as u8),
        }
    }

    pub(crate) fn is_utf8(self) -> bool {
        matches!(self, Self::Utf8 | Self::Utf8Bom)
    }
}

/// windows-1252 bytes 0x80–0x9F; `\0` where the code page assigns nothing (0x81, 0x8D, 0x8F,
/// 0x90, 0x9D), which no `char` above 0x7F equals.
const WINDOWS_1252_HIGH: [char; 32] = [
    '\u{20AC}', '\0', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{02C6}', '\u{2030}',
    '\u{0160}', '\u{2039}', '\u{0152}', '\0', '\u{017D}', '\0', '\0', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}',
    '\u{2022}', '\u{2013}', '\u{2014}', '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\0', '\u{017E}',
    '\u{0178}',
];

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "utf-8" => Ok(Self::Utf8),
            "utf-8-bom" => Ok(Self::Utf8Bom),
            "iso-8859-1" => Ok(Self::Latin1),
            "windows-1252" => Ok(Self::Windows1252),
            _ => Err(format!("{s:?} is not one of {}", Self::NAMES)),
        }
    }
}

/// What a target's files are: CSV, or XML (`xml_out`) with the same columns, dates,
/// decimals and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileFormat {
    #[default]
    Csv,
    Xml,
}

impl std::str::FromStr for FileFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "xml" => Ok(Self::Xml),
            _ => Err(format!("{s:?} is not csv or xml")),
        }
    }
}

/// The CSV dialect and mapping. The defaults are RFC 4180 and every column as it comes.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// The profile these options come from (`default` or a target's name), for the receipt.
    pub profile: String,
    /// CSV, or XML; the dialect knobs (delimiter, quoting, header, line ending) are CSV's only.
    pub format: FileFormat,
    pub delimiter: u8,
    pub quoting: Quoting,
    pub header: bool,
    pub line_ending: LineEnding,
    pub encoding: Encoding,
    /// Stands in for a character the encoding cannot represent, each one counted; `None`:
    /// such a character fails the file, naming row and column.
    pub replacement: Option<char>,
    /// `None`: every column in Kinaxis order under its own id.
    pub columns: Option<Vec<ColumnMapping>>,
    /// Columns whose `YYYY-MM-DD` values are rewritten with `date_format`; date tokens
    /// (`Undefined`, `Past`, `Future`, `Today`) and blanks pass through unchanged.
    pub date_columns: Vec<String>,
    pub date_format: Option<OwnedFormatItem>,
    /// Written for the `.` of a decimal number (`1234.5` → `1234,5`) in numeric columns.
    pub decimal_separator: u8,
    /// The columns whose decimal numbers take `decimal_separator`; `None`: every column,
    /// where a value is a plain decimal number (digits, one `.`, digits, optional sign).
    pub numeric_columns: Option<Vec<String>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            profile: "default".to_owned(),
            format: FileFormat::Csv,
            delimiter: b',',
            quoting: Quoting::Necessary,
            header: true,
            line_ending: LineEnding::Crlf,
            encoding: Encoding::Utf8,
            replacement: None,
            columns: None,
            date_columns: Vec::new(),
            date_format: None,
            decimal_separator: b'.',
            numeric_columns: None,
        }
    }
}

/// What was written: the receipt's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStats {
    pub rows: u64,
    pub bytes: u64,
    /// Of the bytes sent: the encoded file, BOM included.
    pub sha256: String,
    #[serde(default = "default_encoding_name")]
    pub encoding: String,
    /// Characters the encoding could not represent, written as the configured replacement.
    #[serde(default)]
    pub replaced_characters: u64,
    /// The configuration profile the file was written with (`default` or the target's).
    #[serde(default = "default_profile_name")]
    pub profile: String,
    /// The worksheet's `TotalRowCount` as Kinaxis reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinaxis_total_row_count: Option<u64>,
}

impl Default for FileStats {
    fn default() -> Self {
        Self {
            rows: 0,
            bytes: 0,
            sha256: String::new(),
            encoding: default_encoding_name(),
            replaced_characters: 0,
            profile: default_profile_name(),
            kinaxis_total_row_count: None,
        }
    }
}

fn default_encoding_name() -> String {
    Encoding::Utf8.name().to_owned()
}

fn default_profile_name() -> String {
    "default".to_owned()
}

/// A row that does not fit, or a mapping that names a column the worksheet lacks (of a CSV
/// or an XML file).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("column {0:?} named in the CSV mapping is not in the worksheet (columns: {1})")]
    UnknownColumn(String, String),
    #[error("row {row} has {found} values but the worksheet has {expected} columns")]
    RowWidth { row: u64, found: usize, expected: usize },
    /// `row` counts data rows from 1; 0 is the header.
    #[error("row {row}, column {column:?}: {character:?} (U+{code:04X}) cannot be written in {encoding} (set CSV_REPLACEMENT_CHAR to replace such characters)", code = *character as u32)]
    Unrepresentable { row: u64, column: String, character: char, encoding: &'static str },
    /// XML 1.0 has no way to write most C0 control characters, not even as `&#1;`.
    #[error("row {row}, column {column:?}: {character:?} (U+{code:04X}) cannot be written in XML (set CSV_REPLACEMENT_CHAR to replace such characters)", code = *character as u32)]
    NotXml { row: u64, column: String, character: char },
    #[error("columns {first:?} and {second:?} would both be XML element <{element}>; rename one (CSV_COLUMNS)")]
    ElementClash { first: String, second: String, element: String },
    #[error("writing the file")]
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

    /// The inner writer, the hex SHA-256 and the count of the bytes passed on.
    pub fn into_parts(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
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

/// One output column as the sink writes it.
struct PlannedColumn {
    /// The index of its value in a worksheet row.
    index: usize,
    header: String,
    date: bool,
    numeric: bool,
}

/// The output columns and how their values are shaped (dates, decimals): what the CSV and
/// the XML writer share, so both files of one worksheet and settings hold the same values.
pub struct ColumnPlan {
    columns: Vec<PlannedColumn>,
    source_width: usize,
    date_format: Option<OwnedFormatItem>,
    decimal_separator: u8,
}

impl ColumnPlan {
    /// The mapping of `options` over the worksheet's `source_columns` (Kinaxis order); a
    /// column it names that the worksheet lacks is refused.
    pub fn new(options: &CsvOptions, source_columns: &[String]) -> Result<Self, CsvError> {
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
        let mut columns = Vec::with_capacity(mapping.len());
        for column in &mapping {
            columns.push(PlannedColumn {
                index: index_of(&column.source)?,
                header: column.header.clone(),
                date: options.date_columns.contains(&column.source),
                numeric: options.numeric_columns.as_ref().is_none_or(|n| n.contains(&column.source)),
            });
        }
        for column in options.date_columns.iter().chain(options.numeric_columns.iter().flatten()) {
            index_of(column)?;
        }
        Ok(Self {
            columns,
            source_width: source_columns.len(),
            date_format: options.date_format.clone(),
            decimal_separator: options.decimal_separator,
        })
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Output column `column`'s header (its renamed id).
    pub fn header(&self, column: usize) -> &str {
        &self.columns[column].header
    }

    /// A row of the wrong width is refused; `row` counts data rows from 0.
    pub fn check_width(&self, found: usize, row: u64) -> Result<(), CsvError> {
        if found == self.source_width {
            return Ok(());
        }
        Err(CsvError::RowWidth { row, found, expected: self.source_width })
    }

    /// Output column `column`'s value in `values` (a worksheet row), dates and decimals
    /// rewritten into `scratch` where configured, else the value itself.
    pub fn shaped<'v, S: AsRef<str>>(&self, column: usize, values: &'v [S], scratch: &'v mut String) -> &'v str {
        let planned = &self.columns[column];
        let value = values[planned.index].as_ref();
        match &self.date_format {
            Some(format) if planned.date => {
                scratch.clear();
                reformat_date(value, format, scratch);
                scratch
            }
            _ if planned.numeric && self.decimal_separator != b'.' && is_plain_decimal(value) => {
                scratch.clear();
                scratch.extend(value.chars().map(|c| if c == '.' { self.decimal_separator as char } else { c }));
                scratch
            }
            _ => value,
        }
    }
}

/// Writes one worksheet as CSV, row by row.
pub struct CsvSink<W: Write> {
    writer: csv::Writer<HashingWriter<W>>,
    plan: ColumnPlan,
    encoding: Encoding,
    replacement: Option<char>,
    profile: String,
    rows: u64,
    replaced: u64,
    field: String,
    encoded: Vec<u8>,
}

impl<W: Write> CsvSink<W> {
    /// Starts the file: BOM and header as configured. `source_columns` are the worksheet's
    /// column ids in Kinaxis order.
    pub fn new(inner: W, options: &CsvOptions, source_columns: &[String]) -> Result<Self, CsvError> {
        let plan = ColumnPlan::new(options, source_columns)?;
        let mut sink = HashingWriter::new(inner);
        if options.encoding == Encoding::Utf8Bom {
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
            encoding: options.encoding,
            replacement: options.replacement,
            profile: options.profile.clone(),
            rows: 0,
            replaced: 0,
            field: String::new(),
            encoded: Vec::new(),
        };
        if options.header {
            for column in 0..this.plan.len() {
                let header = this.plan.header(column).to_owned();
                this.write_field(&header, 0, column)?;
            }
            this.writer.write_record(None::<&[u8]>).map_err(csv_io)?;
        }
        Ok(this)
    }

    /// Writes one row given in the worksheet's column order.
    pub fn write_row<S: AsRef<str>>(&mut self, values: &[S]) -> Result<(), CsvError> {
        self.plan.check_width(values.len(), self.rows)?;
        let row = self.rows + 1;
        let mut field = std::mem::take(&mut self.field);
        for column in 0..self.plan.len() {
            let value = self.plan.shaped(column, values, &mut field);
            if let Err(err) = self.write_field(value, row, column) {
                self.field = field;
                return Err(err);
            }
        }
        self.field = field;
        self.writer.write_record(None::<&[u8]>).map_err(csv_io)?;
        self.rows += 1;
        Ok(())
    }

    /// One field in the file's encoding. The csv writer quotes on bytes: the delimiter,
    /// quote and line breaks are ASCII, the same byte in every supported encoding, and no
    /// byte of a non-ASCII character is ASCII in any of them.
    fn write_field(&mut self, value: &str, row: u64, column: usize) -> Result<(), CsvError> {
        if self.encoding.is_utf8() || value.is_ascii() {
            return self.writer.write_field(value.as_bytes()).map_err(csv_io);
        }
        self.encoded.clear();
        for c in value.chars() {
            match (self.encoding.single_byte(c), self.replacement.and_then(|r| self.encoding.single_byte(r))) {
                (Some(byte), _) => self.encoded.push(byte),
                (None, Some(byte)) => {
                    self.encoded.push(byte);
                    self.replaced += 1;
                }
                (None, None) => {
                    return Err(CsvError::Unrepresentable {
                        row,
                        column: self.plan.header(column).to_owned(),
                        character: c,
                        encoding: self.encoding.name(),
                    })
                }
            }
        }
        self.writer.write_field(&self.encoded).map_err(csv_io)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and returns the inner writer with the file's figures.
    pub fn finish(self) -> Result<(W, FileStats), CsvError> {
        let sink = self.writer.into_inner().map_err(|e| CsvError::Io(e.into_error()))?;
        let HashingWriter { mut inner, hasher, bytes } = sink;
        inner.flush()?;
        let stats = FileStats {
            rows: self.rows,
            bytes,
            sha256: hex::encode(hasher.finalize()),
            encoding: self.encoding.name().to_owned(),
            replaced_characters: self.replaced,
            profile: self.profile,
            kinaxis_total_row_count: None,
        };
        Ok((inner, stats))
    }
}

/// `12`, `-3.5`, `+0.25`, `.5`: what Kinaxis writes for a quantity. Exponents, thousands
/// separators and anything else are left as they are.
fn is_plain_decimal(value: &str) -> bool {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    !(whole.is_empty() && fraction.is_empty())
        && digits.contains('.')
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
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
            encoding: Encoding::Utf8Bom,
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
    fn a_decimal_comma_is_written_in_numeric_values_and_quoted_where_it_is_also_the_delimiter() {
        let comma = CsvOptions { decimal_separator: b',', ..CsvOptions::default() };
        let rows: &[&[&str]] = &[&["PO-1", "12.5", "-0.25"], &["v1.2", "1.2.3", "1e5"], &["+.5", "7", "."]];
        let (text, _) = write(&comma, &["Order", "Qty", "Price"], rows);
        assert_eq!(text, "Order,Qty,Price\r\nPO-1,\"12,5\",\"-0,25\"\r\nv1.2,1.2.3,1e5\r\n\"+,5\",7,.\r\n");

        let semicolon = CsvOptions { delimiter: b';', ..comma.clone() };
        let (text, _) = write(&semicolon, &["Order", "Qty", "Price"], &[&["PO-1", "12.5", "3.0"]]);
        assert_eq!(text, "Order;Qty;Price\r\nPO-1;12,5;3,0\r\n");

        let only_qty = CsvOptions { numeric_columns: Some(vec!["Qty".into()]), ..semicolon };
        let (text, _) = write(&only_qty, &["Order", "Qty", "Price"], &[&["1.5", "12.5", "3.0"]]);
        assert_eq!(text, "Order;Qty;Price\r\n1.5;12,5;3.0\r\n");
    }

    #[test]
    fn dates_stay_as_configured_when_a_decimal_comma_is_set() {
        let options = CsvOptions {
            decimal_separator: b',',
            date_columns: vec!["Due".into()],
            date_format: Some(time::format_description::parse_owned::<2>("[day].[month].[year]").unwrap()),
            ..CsvOptions::default()
        };
        let (text, _) = write(&options, &["Due", "Qty"], &[&["2026-11-24", "2.5"]]);
        assert_eq!(text, "Due,Qty\r\n24.11.2026,\"2,5\"\r\n");
    }

    #[test]
    fn a_numeric_column_the_worksheet_lacks_is_refused() {
        let options = CsvOptions { numeric_columns: Some(vec!["Nope".into()]), ..CsvOptions::default() };
        let err = CsvSink::new(Vec::new(), &options, &columns(&["A"])).err().unwrap();
        assert!(err.to_string().contains("\"Nope\""));
    }

    #[test]
    fn the_stats_name_the_encoding_profile_and_replacements() {
        let options = CsvOptions {
            encoding: Encoding::Latin1,
            replacement: Some('?'),
            profile: "PF2".into(),
            ..CsvOptions::default()
        };
        let mut sink = CsvSink::new(Vec::new(), &options, &columns(&["A"])).unwrap();
        sink.write_row(&["€uro Ä"]).unwrap();
        let (bytes, stats) = sink.finish().unwrap();
        assert_eq!(bytes, b"A\r\n?uro \xc4\r\n");
        assert_eq!(
            (stats.encoding.as_str(), stats.profile.as_str(), stats.replaced_characters),
            ("iso-8859-1", "PF2", 1)
        );
    }

    /// A writer whose bytes the test still holds when the sink is dropped without `finish`.
    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What the csv crate writes for `records` with `options`, each value encoded by a
    /// plain loop of its own; `None` with the bytes so far where a character cannot be
    /// written (the csv writer dropped there, as the sink is after its error). Else the
    /// bytes and the count of replaced characters.
    fn csv_crate(options: &CsvOptions, records: &[Vec<String>]) -> (Vec<u8>, Option<u64>) {
        let out = Shared::default();
        if options.encoding == Encoding::Utf8Bom {
            out.0.borrow_mut().extend_from_slice("\u{feff}".as_bytes());
        }
        let mut writer = csv::WriterBuilder::new()
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
            .from_writer(out.clone());
        let mut replaced = 0;
        for record in records {
            for value in record {
                let mut field = Vec::new();
                for c in value.chars() {
                    let byte = match options.encoding {
                        Encoding::Utf8 | Encoding::Utf8Bom => {
                            field.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                            continue;
                        }
                        encoding => encoding.single_byte(c),
                    };
                    match (byte, options.replacement.and_then(|r| options.encoding.single_byte(r))) {
                        (Some(b), _) => field.push(b),
                        (None, Some(r)) => {
                            field.push(r);
                            replaced += 1;
                        }
                        (None, None) => {
                            drop(writer);
                            return (out.0.take(), None);
                        }
                    }
                }
                writer.write_field(&field).unwrap();
            }
            writer.write_record(None::<&[u8]>).unwrap();
        }
        writer.flush().unwrap();
        drop(writer);
        (out.0.take(), Some(replaced))
    }

    /// Quoting triggers and near-numbers, mostly short; now and then one long enough to
    /// cross the 64 KiB buffer.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[a-z0-9 ,;\t|\"\r\n#.eE+\\-äÿĀ€‚東🚚\u{80}\u{9d}]{0,12}",
            4 => proptest::sample::select(vec![
                "", " ", "  x  ", "1", "-0.5", "+.5", "5.", "1e5", "1E-3", "inf", "-Infinity", "NaN", "1,5", "1;5",
                "0x10", "1_000", "٣", "340282366920938463463374607431768211456", "12345678901234567890123456789012345678",
                "#", "#x", "\"", "\"\"", "\r", "\n", "\r\n", "a\"b",
            ])
            .prop_map(str::to_owned),
            1 => ("[a,\"\r\n ä€]{1,4}", 1000..12_000usize).prop_map(|(s, n)| s.repeat(n)),
        ]
    }

    /// A header (distinct names: a repeated source column would feed both outputs from the
    /// first) and rows of its width; one column, often, for the `""` of an empty record.
    fn sheet() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>)> {
        prop_oneof![1 => Just(0usize), 3 => Just(1usize), 4 => 2..=5usize].prop_flat_map(|width| {
            let header = proptest::collection::vec(value(), width).prop_map(|mut names| {
                for i in 0..names.len() {
                    while names[..i].contains(&names[i]) {
                        names[i].push('~');
                    }
                }
                names
            });
            (header, proptest::collection::vec(proptest::collection::vec(value(), width), 0..12))
        })
    }

    fn dialect() -> impl Strategy<Value = CsvOptions> {
        use proptest::sample::select;
        let replacement =
            prop_oneof![Just(None), select(vec!['?', ',', '"', '\n', ' ', 'é', '€', '東']).prop_map(Some)];
        (
            select(vec![b',', b';', b'\t', b'|', b' ', b'#', b'.', b'0', b'e']),
            select(vec![Quoting::Necessary, Quoting::Always, Quoting::NonNumeric]),
            select(vec![LineEnding::Crlf, LineEnding::Lf]),
            select(vec![Encoding::Utf8, Encoding::Utf8Bom, Encoding::Latin1, Encoding::Windows1252]),
            replacement,
            any::<bool>(),
        )
            .prop_map(|(delimiter, quoting, line_ending, encoding, replacement, header)| CsvOptions {
                delimiter,
                quoting,
                line_ending,
                encoding,
                replacement,
                header,
                ..CsvOptions::default()
            })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The file is byte for byte the csv crate's over values encoded by a plain loop, for
        /// every dialect, encoding and header setting, with its stats; where a character
        /// cannot be written, the bytes that reach the file before the error are the same
        /// too. The proof any writer of our own in place of `csv::Writer` has to pass.
        #[test]
        fn the_sink_writes_what_the_csv_crate_wrote((header, rows) in sheet(), options in dialect()) {
            let records: Vec<Vec<String>> =
                if options.header { std::iter::once(header.clone()).chain(rows.iter().cloned()).collect() } else { rows.clone() };
            let (expected, replaced) = csv_crate(&options, &records);
            let out = Shared::default();
            let written = CsvSink::new(out.clone(), &options, &header)
                .and_then(|mut sink| rows.iter().try_for_each(|row| sink.write_row(row)).map(|()| sink))
                .and_then(CsvSink::finish);
            match (written, replaced) {
                (Ok((_, stats)), Some(replaced)) => {
                    prop_assert_eq!(&stats.sha256, &hex::encode(Sha256::digest(&expected)));
                    prop_assert_eq!((stats.bytes, stats.rows, stats.replaced_characters), (expected.len() as u64, rows.len() as u64, replaced));
                }
                (Err(CsvError::Unrepresentable { .. }), None) => {}
                (written, replaced) => prop_assert!(false, "sink {:?}, csv crate replaced {:?}", written.map(|w| w.1), replaced),
            }
            prop_assert_eq!(out.0.take(), expected);
        }
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
