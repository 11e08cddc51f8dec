//! Streaming XML writer (`FILE_FORMAT=xml`): a worksheet or table as one document, one
//! element per row and one child per column, in the target's encoding, with the columns,
//! dates and decimals of the CSV path (`csv_out::ColumnPlan`) and the row count, byte count
//! and SHA-256 computed on the way. The shape and rules are in docs/xml.md.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use crate::csv_out::{ColumnPlan, CsvError, CsvOptions, Encoding, FileStats, HashingWriter};

/// The row element's name.
pub const ROW_ELEMENT: &str = "Row";

/// What the root element names: `<Worksheet name="…" totalRowCount="…">` (or `<Table …>`).
#[derive(Debug, Clone, Copy)]
pub struct XmlRoot<'a> {
    /// `Worksheet` for a workbook's worksheet, `Table` for a bulk-exported table.
    pub element: &'static str,
    pub name: &'a str,
    pub total_row_count: u64,
}

/// The name XML's `encoding="…"` declares for the bytes `encoding` writes.
pub fn declared_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Utf8 | Encoding::Utf8Bom => "UTF-8",
        Encoding::Latin1 => "ISO-8859-1",
        Encoding::Windows1252 => "windows-1252",
    }
}

/// A column's header as an element name: ASCII letters, digits, `_`, `-` and `.` kept, any
/// other character `_`; a name that would not start with a letter or `_`, or would start
/// with `xml` (reserved, in any case), gets a leading `_`. ASCII only, so the name is the
/// same bytes in every encoding: `1st Order` → `_1st_Order`, `Teil:Nr` → `Teil_Nr`,
/// `Menge€` → `Menge_`, `` → `_`.
pub fn element_name(header: &str) -> String {
    let mut name: String = header
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect();
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let reserved = name.get(..3).is_some_and(|prefix| prefix.eq_ignore_ascii_case("xml"));
    if !starts_well || reserved {
        name.insert(0, '_');
    }
    name
}

/// Every output column's element name; two columns mapped to one name are refused, as a
/// reader could not tell their values apart.
fn element_names(plan: &ColumnPlan) -> Result<Vec<String>, CsvError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut names = Vec::with_capacity(plan.len());
    for column in 0..plan.len() {
        let name = element_name(plan.header(column));
        if let Some(&first) = seen.get(&name) {
            return Err(CsvError::ElementClash {
                first: plan.header(first).to_owned(),
                second: plan.header(column).to_owned(),
                element: name,
            });
        }
        seen.insert(name.clone(), column);
        names.push(name);
    }
    Ok(names)
}

/// Characters XML 1.0 cannot hold at all, escaped or not (its `Char` production): the C0
/// controls but tab, LF and CR, and U+FFFE, U+FFFF.
pub fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// How text is escaped into the document's bytes.
#[derive(Debug, Clone, Copy)]
struct Escaping {
    encoding: Encoding,
    replacement: Option<char>,
    /// In an attribute value a parser turns tab and line breaks into spaces and ends the
    /// value at `"`: all written as references there.
    attribute: bool,
}

impl Escaping {
    /// Appends `value` to `out`; `Err` with the first character XML cannot hold when there is
    /// no replacement for it. `replaced` counts the replaced ones.
    fn push(self, out: &mut Vec<u8>, value: &str, replaced: &mut u64) -> Result<(), char> {
        if value.bytes().all(|b| (0x20..0x7F).contains(&b) && !matches!(b, b'<' | b'>' | b'&' | b'"')) {
            out.extend_from_slice(value.as_bytes());
            return Ok(());
        }
        let replacement = self.replacement.filter(|r| !is_forbidden(*r));
        for c in value.chars() {
            let c = match (is_forbidden(c), replacement) {
                (false, _) => c,
                (true, Some(r)) => {
                    *replaced += 1;
                    r
                }
                (true, None) => return Err(c),
            };
            self.push_char(out, c);
        }
        Ok(())
    }

    /// One allowed character. A CR is a reference, as a parser reads a literal one as LF; a
    /// character the encoding lacks is a numeric reference, which keeps the value exact.
    fn push_char(self, out: &mut Vec<u8>, c: char) {
        let reference: &[u8] = match c {
            '<' => b"&lt;",
            '>' => b"&gt;",
            '&' => b"&amp;",
            '\r' => b"&#13;",
            '"' if self.attribute => b"&quot;",
            '\t' if self.attribute => b"&#9;",
            '\n' if self.attribute => b"&#10;",
            _ => b"",
        };
        if !reference.is_empty() {
            out.extend_from_slice(reference);
        } else if c.is_ascii() || self.encoding.is_utf8() {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        } else if let Some(byte) = self.encoding.single_byte(c) {
            out.push(byte);
        } else {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "&#{};", c as u32);
        }
    }
}

/// Writes one worksheet as an XML document, row by row: nothing but the current row is held.
pub struct XmlSink<W: Write> {
    out: BufWriter<HashingWriter<W>>,
    plan: ColumnPlan,
    elements: Vec<String>,
    root: &'static str,
    escaping: Escaping,
    encoding: Encoding,
    profile: String,
    rows: u64,
    replaced: u64,
    field: String,
    encoded: Vec<u8>,
}

impl<W: Write> XmlSink<W> {
    /// Starts the document: BOM where configured, declaration, root element. The columns are
    /// checked (mapping, element names) before a byte is written.
    pub fn new(inner: W, options: &CsvOptions, source_columns: &[String], root: XmlRoot<'_>) -> Result<Self, CsvError> {
        let plan = ColumnPlan::new(options, source_columns)?;
        let elements = element_names(&plan)?;
        let mut out = BufWriter::with_capacity(64 * 1024, HashingWriter::new(inner));
        if options.encoding == Encoding::Utf8Bom {
            out.write_all("\u{feff}".as_bytes())?;
        }
        let escaping = Escaping { encoding: options.encoding, replacement: options.replacement, attribute: true };
        let mut replaced = 0;
        let mut head = format!(
            "<?xml version=\"1.0\" encoding=\"{}\"?>\n<{} name=\"",
            declared_name(options.encoding),
            root.element
        )
        .into_bytes();
        escaping.push(&mut head, root.name, &mut replaced).map_err(|character| CsvError::NotXml {
            row: 0,
            column: format!("{} name", root.element),
            character,
        })?;
        writeln!(head, "\" totalRowCount=\"{}\">", root.total_row_count)?;
        out.write_all(&head)?;
        Ok(Self {
            out,
            plan,
            elements,
            root: root.element,
            escaping: Escaping { attribute: false, ..escaping },
            encoding: options.encoding,
            profile: options.profile.clone(),
            rows: 0,
            replaced,
            field: String::new(),
            encoded: Vec::with_capacity(1024),
        })
    }

    /// Writes one row given in the worksheet's column order: `<Row><Col>…</Col>…</Row>`, an
    /// empty value as `<Col/>`.
    pub fn write_row<S: AsRef<str>>(&mut self, values: &[S]) -> Result<(), CsvError> {
        self.plan.check_width(values.len(), self.rows)?;
        let row = self.rows + 1;
        self.encoded.clear();
        self.encoded.extend_from_slice(b"<Row>");
        for column in 0..self.plan.len() {
            let value = self.plan.shaped(column, values, &mut self.field);
            let element = self.elements[column].as_bytes();
            self.encoded.push(b'<');
            self.encoded.extend_from_slice(element);
            if value.is_empty() {
                self.encoded.extend_from_slice(b"/>");
                continue;
            }
            self.encoded.push(b'>');
            self.escaping.push(&mut self.encoded, value, &mut self.replaced).map_err(|character| CsvError::NotXml {
                row,
                column: self.plan.header(column).to_owned(),
                character,
            })?;
            self.encoded.extend_from_slice(b"</");
            self.encoded.extend_from_slice(element);
            self.encoded.push(b'>');
        }
        self.encoded.extend_from_slice(b"</Row>\n");
        self.out.write_all(&self.encoded)?;
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the root element, flushes and returns the inner writer with the file's figures.
    pub fn finish(mut self) -> Result<(W, FileStats), CsvError> {
        writeln!(self.out, "</{}>", self.root)?;
        let sink = self.out.into_inner().map_err(|e| CsvError::Io(e.into_error()))?;
        let (mut inner, sha256, bytes) = sink.into_parts();
        inner.flush()?;
        let stats = FileStats {
            rows: self.rows,
            bytes,
            sha256,
            encoding: self.encoding.name().to_owned(),
            replaced_characters: self.replaced,
            profile: self.profile,
            kinaxis_total_row_count: None,
        };
        Ok((inner, stats))
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::csv_out::ColumnMapping;

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const SHEET: XmlRoot<'static> = XmlRoot { element: "Worksheet", name: "Planned Orders", total_row_count: 2 };

    fn write(options: &CsvOptions, cols: &[&str], rows: &[&[&str]]) -> Result<(Vec<u8>, FileStats), CsvError> {
        let mut sink = XmlSink::new(Vec::new(), options, &columns(cols), SHEET)?;
        for row in rows {
            sink.write_row(row)?;
        }
        sink.finish()
    }

    #[test]
    fn a_worksheet_is_one_element_per_row_with_a_child_per_column_and_markup_escaped() {
        let rows: &[&[&str]] = &[&["PO-1", "<b>&amp;</b> \"q\" 'a' ]]>"], &["PO-2", ""], &["", "a\r\nb\tc"]];
        let (bytes, stats) = write(&CsvOptions::default(), &["Order", "Text"], rows).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Worksheet name=\"Planned Orders\" totalRowCount=\"2\">\n\
             <Row><Order>PO-1</Order><Text>&lt;b&gt;&amp;amp;&lt;/b&gt; \"q\" 'a' ]]&gt;</Text></Row>\n\
             <Row><Order>PO-2</Order><Text/></Row>\n\
             <Row><Order/><Text>a&#13;\nb\tc</Text></Row>\n\
             </Worksheet>\n"
        );
        assert_eq!((stats.rows, stats.bytes), (3, bytes.len() as u64));
        assert_eq!(stats.sha256, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn iso_8859_1_is_declared_and_written_with_references_for_what_it_lacks() {
        let options = CsvOptions { encoding: Encoding::Latin1, ..CsvOptions::default() };
        let root = XmlRoot { element: "Table", name: "Grüße \"€\"\t<x>", total_row_count: 1 };
        let mut sink = XmlSink::new(Vec::new(), &options, &columns(&["Text"]), root).unwrap();
        sink.write_row(&["Grüße € 東 🚚 ÿ"]).unwrap();
        let (bytes, stats) = sink.finish().unwrap();
        let expected: &[u8] = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n\
            <Table name=\"Gr\xfc\xdfe &quot;&#8364;&quot;&#9;&lt;x&gt;\" totalRowCount=\"1\">\n\
            <Row><Text>Gr\xfc\xdfe &#8364; &#26481; &#128666; \xff</Text></Row>\n</Table>\n";
        assert_eq!(bytes, expected, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!((stats.encoding.as_str(), stats.replaced_characters), ("iso-8859-1", 0));
    }

    #[test]
    fn windows_1252_and_the_bom_are_declared_as_written() {
        let cp1252 = CsvOptions { encoding: Encoding::Windows1252, ..CsvOptions::default() };
        let (bytes, _) = write(&cp1252, &["T"], &[&["€ ł"]]).unwrap();
        assert!(bytes.starts_with(b"<?xml version=\"1.0\" encoding=\"windows-1252\"?>\n"));
        assert!(bytes.windows(11).any(|w| w == b"<T>\x80 &#322;"), "{}", String::from_utf8_lossy(&bytes));
        let bom = CsvOptions { encoding: Encoding::Utf8Bom, ..CsvOptions::default() };
        let (bytes, _) = write(&bom, &["T"], &[&["€"]]).unwrap();
        assert!(bytes.starts_with("\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>".as_bytes()));
    }

    #[test]
    fn a_control_character_xml_cannot_hold_fails_naming_row_and_column_unless_a_replacement_is_set() {
        let rows: &[&[&str]] = &[&["PO-1", "fine\t"], &["PO-2", "bell\u{7}"]];
        let err = write(&CsvOptions::default(), &["Order", "Text"], rows).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 2, column \"Text\": '\\u{7}' (U+0007) cannot be written in XML (set CSV_REPLACEMENT_CHAR to replace such characters)"
        );
        let err = write(&CsvOptions::default(), &["T"], &[&["\u{FFFF}"]]).unwrap_err();
        assert!(matches!(err, CsvError::NotXml { row: 1, character: '\u{FFFF}', .. }), "{err}");

        let options = CsvOptions { replacement: Some('?'), encoding: Encoding::Latin1, ..CsvOptions::default() };
        let (bytes, stats) = write(&options, &["T"], &[&["a\u{0}b\u{1F}c\u{B}\u{FFFE}"], &["\u{7F}\u{85}"]]).unwrap();
        let text: String = bytes.iter().map(|&b| b as char).collect();
        assert!(text.contains("<Row><T>a?b?c??</T></Row>\n<Row><T>\u{7F}\u{85}</T></Row>"), "{text}");
        assert_eq!(stats.replaced_characters, 4);
    }

    /// Counts what reaches it and keeps nothing.
    struct Counting<'a>(&'a std::cell::Cell<u64>);

    impl Write for Counting<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.set(self.0.get() + buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rows_reach_the_writer_as_they_are_written_with_no_more_than_a_buffer_held_back() {
        let passed = std::cell::Cell::new(0);
        let mut sink = XmlSink::new(Counting(&passed), &CsvOptions::default(), &columns(&["A", "B"]), SHEET).unwrap();
        let mut written = 0u64;
        for i in 0..100_000u64 {
            let a = format!("PO-{i:08}");
            sink.write_row(&[a.as_str(), "<&>"]).unwrap();
            written += "<Row><A>PO-00000000</A><B>&lt;&amp;&gt;</B></Row>\n".len() as u64;
            assert!(
                written.saturating_sub(passed.get()) <= 64 * 1024 + 200,
                "row {i}: {} held back",
                written - passed.get()
            );
        }
        let (_, stats) = sink.finish().unwrap();
        assert_eq!(stats.bytes, passed.get());
        assert!(stats.bytes - written < 200, "the rows are {written} of the {} bytes", stats.bytes);
        assert_eq!(stats.rows, 100_000);
    }

    #[test]
    fn column_ids_that_are_not_xml_names_map_to_documented_names() {
        let cases = [
            ("Order", "Order"),
            ("Due Date", "Due_Date"),
            ("1st", "_1st"),
            ("Teil:Nr", "Teil_Nr"),
            ("Part.Name", "Part.Name"),
            ("-x", "_-x"),
            (".x", "_.x"),
            ("Menge€", "Menge_"),
            ("Grüße", "Gr__e"),
            ("xmlData", "_xmlData"),
            ("XML", "_XML"),
            ("<a&b>", "_a_b_"),
            ("", "_"),
            ("_ok", "_ok"),
        ];
        for (id, name) in cases {
            assert_eq!(element_name(id), name, "{id:?}");
        }
        let (bytes, _) = write(&CsvOptions::default(), &["1st", "Due Date"], &[&["a", "b"]]).unwrap();
        assert!(String::from_utf8(bytes).unwrap().contains("<Row><_1st>a</_1st><Due_Date>b</Due_Date></Row>"));
    }

    #[test]
    fn two_columns_mapped_to_one_element_name_are_refused_before_a_byte_is_written() {
        let mut out = Vec::new();
        let err = XmlSink::new(&mut out, &CsvOptions::default(), &columns(&["Due Date", "Due_Date"]), SHEET).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some(
                "columns \"Due Date\" and \"Due_Date\" would both be XML element <Due_Date>; rename one (CSV_COLUMNS)"
            )
        );
        assert!(out.is_empty());
    }

    #[test]
    fn the_column_mapping_dates_and_decimals_apply_as_they_do_to_the_csv() {
        let options = CsvOptions {
            columns: Some(vec![
                ColumnMapping { source: "Qty".into(), header: "MENGE".into() },
                ColumnMapping { source: "Due".into(), header: "Due Date".into() },
            ]),
            date_columns: vec!["Due".into()],
            date_format: Some(time::format_description::parse_owned::<2>("[day].[month].[year]").unwrap()),
            decimal_separator: b',',
            numeric_columns: Some(vec!["Qty".into()]),
            ..CsvOptions::default()
        };
        let rows: &[&[&str]] = &[&["PO-1", "2026-11-24", "12.5"], &["PO-2", "Past", "7"]];
        let (bytes, _) = write(&options, &["Order", "Due", "Qty"], rows).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("<Row><MENGE>12,5</MENGE><Due_Date>24.11.2026</Due_Date></Row>\n"), "{text}");
        assert!(text.contains("<Row><MENGE>7</MENGE><Due_Date>Past</Due_Date></Row>\n"), "{text}");
        let err = write(&options, &["Order", "Due", "Qty"], &[&["PO-1", "x"]]).unwrap_err();
        assert_eq!(err.to_string(), "row 0 has 2 values but the worksheet has 3 columns");
    }
}
