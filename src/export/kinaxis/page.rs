//! Kinaxis answers parsed in place — worksheet pages, the workbook answer with its first
//! page, bulk-export pages of delimited rows: values are borrowed from the body, not copied
//! (only a value with JSON escapes is decoded, into a buffer kept from page to page), and
//! nothing is written before the whole body parsed (so a page cut short can be fetched
//! again without duplicating rows). An error Kinaxis reports inside a 200 is kept for the
//! caller to turn into a failure.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Where a value lies: `start..end` in the body as sent, or, with `DECODED` set in `end`,
/// in the escape buffer. Eight bytes a value: a page holds tens of thousands of values and
/// several parsed pages are alive at once (the export's memory, docs/performance.md). The
/// offsets fit in 31 bits: a body of `MAX_BODY_BYTES` or more is refused before its parse,
/// and the escape buffer never outgrows its body.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

const DECODED: u32 = 1 << 31;

/// The largest page body a span can address.
pub const MAX_BODY_BYTES: usize = DECODED as usize;

impl Span {
    fn body(range: Range<usize>) -> Self {
        Self { start: range.start as u32, end: range.end as u32 }
    }

    fn decoded(range: Range<usize>) -> Self {
        Self { start: range.start as u32, end: range.end as u32 | DECODED }
    }
}

/// An error Kinaxis answered with HTTP 200 (docs/kinaxis-api.md, "Errors inside a 200").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// `ScriptError {Code, Message}`.
    Script { code: String, message: String },
    /// A bulk `Status` of `Failure` or `Partial Success`.
    Status { status: String, error_rows: Option<u64>, message: String },
    /// `ErrorRowCount` > 0 under any other status.
    ErrorRows { count: u64, message: String },
}

impl Reported {
    /// A bulk `Status` of `Failure` / `Partial Success`, or `ErrorRowCount` > 0; `None` for
    /// any other status.
    pub fn of_status(status: Option<&str>, error_rows: Option<u64>, message: Option<String>) -> Option<Self> {
        let message = message.unwrap_or_default();
        let failed = status.is_some_and(|s| {
            let s = s.trim();
            s.eq_ignore_ascii_case("Failure") || s.eq_ignore_ascii_case("Partial Success")
        });
        if failed {
            let status = status.unwrap_or_default().to_owned();
            Some(Self::Status { status, error_rows, message })
        } else {
            error_rows.filter(|n| *n > 0).map(|count| Self::ErrorRows { count, message })
        }
    }

    /// `ScriptError` as an object `{Code, Message, …}` or, seen in the wild, a bare string.
    pub fn script(error: &serde_json::Value) -> Self {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        match error {
            serde_json::Value::Object(fields) => Self::Script {
                code: fields.get("Code").map(text).unwrap_or_default(),
                message: fields.get("Message").map(text).unwrap_or_default(),
            },
            other => Self::Script { code: String::new(), message: text(other) },
        }
    }
}

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Script { code, message } => write!(f, "ScriptError {code}: {message}"),
            Self::Status { status, error_rows: Some(rows), message } => {
                write!(f, "Status {status:?} with ErrorRowCount {rows}: {message}")
            }
            Self::Status { status, error_rows: None, message } => write!(f, "Status {status:?}: {message}"),
            Self::ErrorRows { count, message } => write!(f, "ErrorRowCount {count}: {message}"),
        }
    }
}

/// One worksheet of the workbook answer; its first rows are `Workbook::rows`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SheetHead {
    pub name: String,
    /// `QueryHandle.QueryID`, when the worksheet has one.
    pub query_id: Option<String>,
    pub total_row_count: u64,
    /// The column ids, in Kinaxis order.
    pub columns: Vec<String>,
    /// Which of the buffer's rows are this worksheet's.
    rows: Range<usize>,
}

/// The buffers an answer is parsed into, kept from page to page so that, once grown to a
/// page's size, parsing allocates nothing.
#[derive(Debug, Default)]
pub struct PageBuffer {
    spans: Vec<Span>,
    row_ends: Vec<usize>,
    decoded: String,
    /// The addresses of the body being parsed: a borrowed value's offset is its address
    /// less the start.
    body_at: Range<usize>,
    sheets: Vec<SheetHead>,
    reported: Option<Reported>,
    /// Bulk rows: one string each, values split by this.
    delimiter: Option<char>,
    /// Bulk answers: `Status`, `ErrorRowCount`, `Message`, folded into `reported` at the end.
    status: Option<String>,
    error_rows: Option<u64>,
    message: Option<String>,
    /// The answer held its `Rows` / `Worksheets`.
    seen_data: bool,
}

/// Rows of one parsed answer, each a run of values borrowed from the body or the buffer.
#[derive(Debug)]
pub struct Page<'a> {
    body: &'a str,
    buffer: &'a PageBuffer,
    rows: Range<usize>,
}

/// The workbook answer: each worksheet's head and first rows.
#[derive(Debug)]
pub struct Workbook<'a> {
    body: &'a str,
    buffer: &'a PageBuffer,
}

/// What the top level of an answer must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"Rows": [{"Values": […]}, …]}`
    Page,
    /// `{"Rows": ["v1<d>v2", …]}`
    Delimited,
    /// `{"Worksheets": [{"Name", "QueryHandle", "TotalRowCount", "Columns", "Rows"}, …]}`
    Workbook,
}

/// A parsed answer that owns its body and its parse, so it can cross to the converter's
/// thread and be viewed there again. The body is checked as UTF-8 once, by the parse: the
/// views need no second check (it was 3 % of the worker's CPU in a 1M-row job's profile).
#[derive(Debug, Clone)]
pub struct ParsedAnswer {
    body: Bytes,
    buffer: Arc<PageBuffer>,
}

impl ParsedAnswer {
    /// A worksheet page `{"Rows": [{"Values": […]}, …]}`.
    pub fn page(body: Bytes) -> Result<Self, serde_json::Error> {
        Self::parse(body, Shape::Page, None)
    }

    /// A bulk-export page `{"Rows": ["v1<delimiter>v2", …]}`.
    pub fn delimited(body: Bytes, delimiter: char) -> Result<Self, serde_json::Error> {
        Self::parse(body, Shape::Delimited, Some(delimiter))
    }

    /// The workbook answer, its first pages included.
    pub fn workbook(body: Bytes) -> Result<Self, serde_json::Error> {
        Self::parse(body, Shape::Workbook, None)
    }

    fn parse(body: Bytes, shape: Shape, delimiter: Option<char>) -> Result<Self, serde_json::Error> {
        let mut buffer = PageBuffer::default();
        buffer.parse_as(&body, shape, delimiter)?;
        Ok(Self { body, buffer: Arc::new(buffer) })
    }

    fn text(&self) -> &str {
        debug_assert!(std::str::from_utf8(&self.body).is_ok(), "a ParsedAnswer built without its check");
        // SAFETY: `parse` built this value only after `parse_as` checked these very bytes
        // as UTF-8 (`std::str::from_utf8`), and `Bytes` never changes the bytes it holds.
        unsafe { std::str::from_utf8_unchecked(&self.body) }
    }

    /// The rows of a page, or of worksheet `sheet` of a workbook answer.
    pub fn rows(&self, sheet: Option<usize>) -> Page<'_> {
        let rows = match sheet {
            None => 0..self.buffer.row_ends.len(),
            Some(index) => self.buffer.sheets.get(index).map_or(0..0, |s| s.rows.clone()),
        };
        Page { body: self.text(), buffer: &self.buffer, rows }
    }

    /// The workbook answer's view: its worksheets' heads and first rows.
    pub fn as_workbook(&self) -> Workbook<'_> {
        Workbook { body: self.text(), buffer: &self.buffer }
    }

    /// What Kinaxis reported as an error inside the 200, if it did.
    pub fn reported(&self) -> Option<&Reported> {
        self.buffer.reported.as_ref()
    }
}

impl PageBuffer {
    /// Parses a worksheet page `{"Rows": [{"Values": ["…", …]}, …]}`, replacing the
    /// previous one. An error reported inside the 200 is `Page::reported`.
    pub fn parse<'a>(&'a mut self, body: &'a [u8]) -> Result<Page<'a>, serde_json::Error> {
        let text = self.parse_as(body, Shape::Page, None)?;
        Ok(Page { body: text, rows: 0..self.row_ends.len(), buffer: self })
    }

    /// Parses a bulk-export page `{"Rows": ["v1\tv2", …]}`, each row split by `delimiter`.
    /// The tests' way, into a buffer they keep; the export parses with `ParsedAnswer`.
    #[cfg(test)]
    pub fn parse_delimited<'a>(&'a mut self, body: &'a [u8], delimiter: char) -> Result<Page<'a>, serde_json::Error> {
        let text = self.parse_as(body, Shape::Delimited, Some(delimiter))?;
        Ok(Page { body: text, rows: 0..self.row_ends.len(), buffer: self })
    }

    /// Parses the workbook answer, its first pages included. The tests' way, as above.
    #[cfg(test)]
    pub fn parse_workbook<'a>(&'a mut self, body: &'a [u8]) -> Result<Workbook<'a>, serde_json::Error> {
        let text = self.parse_as(body, Shape::Workbook, None)?;
        Ok(Workbook { body: text, buffer: self })
    }

    /// Parses `text` as a worksheet page with the page's visitor on the JSON deserializer
    /// `deserialize` makes of it: how the conversion benchmark measures other JSON crates
    /// through the same visitor (issue 14). `parse` is this with serde_json.
    pub fn parse_with<'a, E: de::Error>(
        &'a mut self,
        text: &'a str,
        deserialize: impl FnOnce(&'a str, PageSeed<'_>) -> Result<(), E>,
    ) -> Result<Page<'a>, E> {
        self.reset(text, None)?;
        deserialize(text, PageSeed(TopSeed { buffer: self, shape: Shape::Page }))?;
        self.conclude(Shape::Page)?;
        Ok(Page { body: text, rows: 0..self.row_ends.len(), buffer: self })
    }

    fn parse_as<'a>(
        &mut self,
        body: &'a [u8],
        shape: Shape,
        delimiter: Option<char>,
    ) -> Result<&'a str, serde_json::Error> {
        let Ok(text) = std::str::from_utf8(body) else {
            // serde_json's own verdict on these bytes: end of input for a body cut inside
            // a character, a syntax error for a stray byte.
            return Err(serde_json::from_slice::<serde_json::Value>(body)
                .err()
                .unwrap_or_else(|| de::Error::custom("the answer is not UTF-8")));
        };
        self.reset(text, delimiter)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        TopSeed { buffer: self, shape }.deserialize(&mut deserializer)?;
        deserializer.end()?;
        self.conclude(shape)?;
        Ok(text)
    }

    /// Empties the buffers for `text`, about to be parsed; a body too large for a span is
    /// refused (no Kinaxis page comes near it).
    fn reset<E: de::Error>(&mut self, text: &str, delimiter: Option<char>) -> Result<(), E> {
        if text.len() >= MAX_BODY_BYTES {
            return Err(E::custom(format!("a page of {} bytes; at most {MAX_BODY_BYTES} are read", text.len())));
        }
        self.spans.clear();
        self.row_ends.clear();
        self.decoded.clear();
        self.sheets.clear();
        self.reported = None;
        self.delimiter = delimiter;
        self.status = None;
        self.error_rows = None;
        self.message = None;
        self.seen_data = false;
        let start = text.as_ptr() as usize;
        self.body_at = start..start + text.len();
        Ok(())
    }

    /// After the parse: an error reported inside the 200 is kept; an answer that reports
    /// none must have held its data.
    fn conclude<E: de::Error>(&mut self, shape: Shape) -> Result<(), E> {
        self.fold_status();
        if !self.seen_data && self.reported.is_none() {
            let field = if shape == Shape::Workbook { "Worksheets" } else { "Rows" };
            return Err(E::missing_field(field));
        }
        Ok(())
    }

    /// A bulk status of failure, or error rows, is an error whatever else came with it.
    fn fold_status(&mut self) {
        if self.reported.is_none() {
            self.reported = Reported::of_status(self.status.as_deref(), self.error_rows, self.message.take());
        }
    }

    /// `value` lies inside the body; should serde_json ever hand over a string from
    /// elsewhere, it is copied instead.
    fn push_borrowed(&mut self, value: &str) {
        let at = value.as_ptr() as usize;
        if self.body_at.start <= at && at + value.len() <= self.body_at.end {
            let start = at - self.body_at.start;
            self.spans.push(Span::body(start..start + value.len()));
        } else {
            self.push_decoded(value);
        }
    }

    fn push_decoded(&mut self, value: &str) {
        let start = self.decoded.len();
        self.decoded.push_str(value);
        self.spans.push(Span::decoded(start..self.decoded.len()));
    }

    /// A bulk row given as the JSON text between its quotes (checked, borrowed from the
    /// body): one span per value between delimiters, raw or escaped (`\t`, `\u0009`), each
    /// value borrowed unless it has escapes of its own. `false`, with nothing pushed, where
    /// this cannot be done (text not in the body, a delimiter that is not ASCII).
    fn split_escaped<E: de::Error>(&mut self, text: &str, delimiter: char) -> Result<bool, E> {
        let at = text.as_ptr() as usize;
        if !delimiter.is_ascii() || at < self.body_at.start || at + text.len() > self.body_at.end {
            return Ok(false);
        }
        let base = at - self.body_at.start;
        let (bytes, delimiter) = (text.as_bytes(), delimiter as u8);
        let (mut from, mut escaped, mut i) = (0, false, 0);
        while i <= bytes.len() {
            // The end of a value: the row's end, a raw delimiter or an escaped one.
            let (end, next) = match bytes.get(i) {
                None => (i, i + 1),
                Some(b'\\') => match escape_at(bytes, i) {
                    (Some(c), len) if c == delimiter => (i, i + len),
                    (_, len) => {
                        (escaped, i) = (true, i + len);
                        continue;
                    }
                },
                // Unescaped: never a backslash or a quote, which JSON text always escapes.
                Some(&b) if b == delimiter => (i, i + 1),
                Some(_) => {
                    i += 1 + memchr::memchr2(b'\\', delimiter, &bytes[i + 1..]).unwrap_or(bytes.len() - i - 1);
                    continue;
                }
            };
            if escaped {
                // The parse checked the escapes but not that a `\u` surrogate has its pair.
                let value: String = serde_json::from_str(&format!("\"{}\"", &text[from..end])).map_err(|err| {
                    E::custom(format_args!(
                        "the bulk row value at byte {} of the answer holds an invalid escape ({err})",
                        base + from
                    ))
                })?;
                self.push_decoded(&value);
            } else {
                self.spans.push(Span::body(base + from..base + end));
            }
            (from, escaped, i) = (next, false, next);
        }
        Ok(true)
    }

    /// A bulk row, decoded: one span per value between delimiters, copied into the buffer.
    fn push_delimited(&mut self, row: &str, delimiter: char) {
        let base = self.decoded.len();
        self.decoded.push_str(row);
        let mut from = 0;
        for (at, c) in row.char_indices().filter(|(_, c)| *c == delimiter).chain([(row.len(), delimiter)]) {
            self.spans.push(Span::decoded(base + from..base + at));
            from = at + c.len_utf8();
        }
    }
}

impl<'a> Page<'a> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// What Kinaxis reported as an error inside the 200, if it did.
    pub fn reported(&self) -> Option<&'a Reported> {
        self.buffer.reported.as_ref()
    }

    fn value(&self, span: &Span) -> &'a str {
        let range = span.start as usize..(span.end & !DECODED) as usize;
        if span.end & DECODED == 0 {
            &self.body[range]
        } else {
            &self.buffer.decoded[range]
        }
    }

    /// Calls `write` with each row's values in order, stopping at its first error.
    pub fn try_for_each_row<E>(&self, mut write: impl FnMut(&[&'a str]) -> Result<(), E>) -> Result<(), E> {
        let mut row: Vec<&'a str> = Vec::new();
        let mut start = if self.rows.start == 0 { 0 } else { self.buffer.row_ends[self.rows.start - 1] };
        for &end in &self.buffer.row_ends[self.rows.clone()] {
            row.clear();
            row.extend(self.buffer.spans[start..end].iter().map(|span| self.value(span)));
            write(&row)?;
            start = end;
        }
        Ok(())
    }
}

impl<'a> Workbook<'a> {
    pub fn sheets(&self) -> &'a [SheetHead] {
        &self.buffer.sheets
    }

    /// The first rows of worksheet `index` (of `sheets()`).
    pub fn rows(&self, index: usize) -> Page<'a> {
        let rows = self.buffer.sheets.get(index).map_or(0..0, |s| s.rows.clone());
        Page { body: self.body, buffer: self.buffer, rows }
    }

    /// What Kinaxis reported as an error inside the 200, if it did.
    pub fn reported(&self) -> Option<&'a Reported> {
        self.buffer.reported.as_ref()
    }
}

/// The keys this parser acts on, told apart without allocating; any other is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Rows,
    Values,
    Worksheets,
    ScriptError,
    Status,
    ErrorRowCount,
    Message,
    Name,
    QueryHandle,
    QueryId,
    TotalRowCount,
    Columns,
    Id,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "Rows" => Key::Rows,
                    "Values" => Key::Values,
                    "Worksheets" => Key::Worksheets,
                    "ScriptError" => Key::ScriptError,
                    "Status" => Key::Status,
                    "ErrorRowCount" => Key::ErrorRowCount,
                    "Message" => Key::Message,
                    "Name" => Key::Name,
                    "QueryHandle" => Key::QueryHandle,
                    "QueryID" => Key::QueryId,
                    "TotalRowCount" => Key::TotalRowCount,
                    "Columns" => Key::Columns,
                    "Id" => Key::Id,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct TopSeed<'a> {
    buffer: &'a mut PageBuffer,
    shape: Shape,
}

/// The worksheet page's visitor, for `PageBuffer::parse_with`.
pub struct PageSeed<'a>(TopSeed<'a>);

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.0.deserialize(deserializer)
    }
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Workbook => f.write_str("a workbook answer with Worksheets"),
            Shape::Page | Shape::Delimited => f.write_str("a page object with Rows"),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let buffer = self.buffer;
        let mut seen = false;
        while let Some(key) = map.next_key::<Key>()? {
            match (key, self.shape) {
                (Key::Rows, Shape::Page | Shape::Delimited) if !seen => {
                    map.next_value_seed(RowsSeed(&mut *buffer))?;
                    seen = true;
                }
                (Key::Worksheets, Shape::Workbook) if !seen => {
                    map.next_value_seed(SheetsSeed(&mut *buffer))?;
                    seen = true;
                }
                (Key::ScriptError, _) => {
                    let error: serde_json::Value = map.next_value()?;
                    buffer.reported = Some(Reported::script(&error));
                }
                (Key::Status, _) => buffer.status = map.next_value::<Option<String>>()?,
                (Key::ErrorRowCount, _) => buffer.error_rows = map.next_value::<Option<u64>>()?,
                (Key::Message, _) => buffer.message = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        buffer.seen_data = seen;
        Ok(())
    }
}

struct SheetsSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for SheetsSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SheetsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of worksheets")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(SheetSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct SheetSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for SheetSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SheetSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a worksheet with Name, TotalRowCount, Columns and Rows")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        #[derive(serde::Deserialize)]
        struct Handle {
            #[serde(rename = "QueryID")]
            query_id: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct ColumnId {
            #[serde(rename = "Id")]
            id: String,
        }
        let buffer = self.0;
        let (mut name, mut total, mut columns, mut rows) = (None, None, None, None);
        let mut query_id = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Name => name = Some(map.next_value::<String>()?),
                Key::QueryHandle => query_id = map.next_value::<Option<Handle>>()?.and_then(|h| h.query_id),
                Key::TotalRowCount => total = Some(map.next_value::<u64>()?),
                Key::Columns => {
                    columns = Some(map.next_value::<Vec<ColumnId>>()?.into_iter().map(|c| c.id).collect::<Vec<_>>())
                }
                Key::Rows if rows.is_none() => {
                    let first = buffer.row_ends.len();
                    map.next_value_seed(RowsSeed(&mut *buffer))?;
                    rows = Some(first..buffer.row_ends.len());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        buffer.sheets.push(SheetHead {
            name: name.ok_or_else(|| de::Error::missing_field("Name"))?,
            query_id,
            total_row_count: total.ok_or_else(|| de::Error::missing_field("TotalRowCount"))?,
            columns: columns.ok_or_else(|| de::Error::missing_field("Columns"))?,
            rows: rows.ok_or_else(|| de::Error::missing_field("Rows"))?,
        });
        Ok(())
    }
}

/// The escape at `bytes[i]` (a backslash) of checked JSON string text: the ASCII byte it
/// stands for (`None` for anything else) and its length.
fn escape_at(bytes: &[u8], i: usize) -> (Option<u8>, usize) {
    match bytes.get(i + 1) {
        Some(b'u') => {
            let code = std::str::from_utf8(bytes.get(i + 2..i + 6).unwrap_or_default())
                .ok()
                .and_then(|hex| u8::from_str_radix(hex.strip_prefix("00")?, 16).ok());
            (code.filter(u8::is_ascii), 6)
        }
        Some(b't') => (Some(b'\t'), 2),
        Some(b'n') => (Some(b'\n'), 2),
        Some(b'r') => (Some(b'\r'), 2),
        Some(b'b') => (Some(0x08), 2),
        Some(b'f') => (Some(0x0c), 2),
        Some(&c) => (Some(c), 2),
        None => (None, 1),
    }
}

struct RowsSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let more = match self.0.delimiter {
                Some(delimiter) => seq.next_element_seed(DelimitedRowSeed(&mut *self.0, delimiter))?.is_some(),
                None => seq.next_element_seed(RowSeed(&mut *self.0))?.is_some(),
            };
            if !more {
                return Ok(());
            }
            let end = self.0.spans.len();
            self.0.row_ends.push(end);
        }
    }
}

struct DelimitedRowSeed<'a>(&'a mut PageBuffer, char);

impl<'de> DeserializeSeed<'de> for DelimitedRowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // The row as JSON text, borrowed from the body (serde_json has checked it): every
        // bulk row holds escaped delimiters (`\t`), so a decoded row would be a copy of it
        // all; split on the escapes, only values with escapes of their own are decoded.
        let raw = <&serde_json::value::RawValue>::deserialize(deserializer)?;
        let Some(text) = raw.get().strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return Err(de::Error::invalid_type(de::Unexpected::Other(raw.get()), &self));
        };
        if !self.0.split_escaped(text, self.1)? {
            let row: String = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
            self.0.push_delimited(&row, self.1);
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for DelimitedRowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row as one delimited string")
    }
}

struct RowSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object with Values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen_values = false;
        while let Some(key) = map.next_key::<Key>()? {
            if key == Key::Values && !seen_values {
                map.next_value_seed(ValuesSeed(&mut *self.0))?;
                seen_values = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if seen_values {
            Ok(())
        } else {
            Err(de::Error::missing_field("Values"))
        }
    }
}

struct ValuesSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of string values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ValueSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct ValueSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string value")
    }
    /// A value without escapes: it stands in the body as it is.
    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<(), E> {
        self.0.push_borrowed(value);
        Ok(())
    }
    /// A value with escapes, decoded by serde_json into its scratch space.
    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push_decoded(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(page: &Page<'_>) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        page.try_for_each_row(|row| {
            rows.push(row.iter().map(|v| v.to_string()).collect());
            Ok::<_, ()>(())
        })
        .unwrap();
        rows
    }

    #[test]
    fn a_page_is_read_row_by_row_with_escapes_and_extra_keys_ignored() {
        let mut buffer = PageBuffer::default();
        let page = buffer
            .parse(
                r#"{"Rows":[{"Values":["a","b\"c"],"X":1},{"Values":["line\r\nbreak","\u00fc","Köln"]}],"More":true}"#
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(rows(&page), [vec!["a", "b\"c"], vec!["line\r\nbreak", "ü", "Köln"]]);
    }

    #[test]
    fn buffers_are_reused_and_replaced_from_page_to_page() {
        let mut buffer = PageBuffer::default();
        assert_eq!(buffer.parse(br#"{"Rows":[{"Values":["1","2\t","3"]},{"Values":["4"]}]}"#).unwrap().len(), 2);
        let page = buffer.parse(br#"{"Rows":[{"Values":["x\n"]}]}"#).unwrap();
        assert_eq!(rows(&page), [vec!["x\n"]]);
        assert!(buffer.parse(br#"{"Rows":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn a_cut_body_is_an_eof_error_and_a_wrong_shape_a_data_error() {
        use serde_json::error::Category;
        let mut buffer = PageBuffer::default();
        let cut = buffer.parse(br#"{"Rows":[{"Values":["a","#).unwrap_err();
        assert_eq!(cut.classify(), Category::Eof);
        for wrong in [&br#"{"Rows":7}"#[..], br#"{"Rows":[{"Values":[1]}]}"#, br#"{"Rows":[{}]}"#, br#"{}"#] {
            assert_eq!(
                buffer.parse(wrong).unwrap_err().classify(),
                Category::Data,
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
    }

    #[test]
    fn a_body_cut_inside_a_character_is_cut_short_and_a_stray_byte_is_a_syntax_error() {
        use serde_json::error::Category;
        let mut buffer = PageBuffer::default();
        let cut = buffer.parse(b"{\"Rows\":[{\"Values\":[\"K\xc3").unwrap_err();
        assert_eq!(cut.classify(), Category::Eof);
        let stray = buffer.parse(b"{\"Rows\":[{\"Values\":[\"K\xff\"]}]}").unwrap_err();
        assert_eq!(stray.classify(), Category::Syntax);
    }

    #[test]
    fn an_owned_answer_is_refused_unless_its_body_is_utf_8_and_views_the_rows_a_plain_parse_gives() {
        use serde_json::error::Category;
        let cut = ParsedAnswer::page(Bytes::from_static(b"{\"Rows\":[{\"Values\":[\"K\xc3")).unwrap_err();
        assert_eq!(cut.classify(), Category::Eof);
        let stray = ParsedAnswer::delimited(Bytes::from_static(b"{\"Rows\":[\"K\xff\"]}"), '\t').unwrap_err();
        assert_eq!(stray.classify(), Category::Syntax);

        let body: &[u8] = r#"{"Rows":[{"Values":["Gr\u00fc\u00dfe","Köln",""]},{"Values":["a","b","c"]}]}"#.as_bytes();
        let answer = ParsedAnswer::page(Bytes::from_static(body)).unwrap();
        let mut buffer = PageBuffer::default();
        assert_eq!(rows(&answer.rows(None)), rows(&buffer.parse(body).unwrap()));
        assert_eq!(rows(&answer.clone().rows(None))[0], ["Grüße", "Köln", ""]);
        let bulk = ParsedAnswer::delimited(Bytes::from_static(b"{\"Rows\":[\"x\\ty\"]}"), '\t').unwrap();
        assert_eq!(rows(&bulk.rows(None)), [vec!["x", "y"]]);
    }

    #[test]
    fn the_workbook_answer_gives_each_worksheet_its_head_and_its_own_first_rows() {
        let mut buffer = PageBuffer::default();
        let body = br##"{"Worksheets":[
            {"Name":"A","QueryHandle":{"QueryID":"#q0"},"TotalRowCount":3,"Columns":[{"Id":"X","IsEditable":false},{"Id":"Y"}],
             "Rows":[{"Values":["1","a\"b"]},{"Values":["2","c"]}]},
            {"Name":"B","TotalRowCount":1,"Columns":[{"Id":"Z"}],"Rows":[{"Values":["z"]}],"Extra":{"Rows":7}}]}"##;
        let workbook = buffer.parse_workbook(body).unwrap();
        let sheets = workbook.sheets();
        assert_eq!(sheets.len(), 2);
        assert_eq!(
            (sheets[0].name.as_str(), sheets[0].query_id.as_deref(), sheets[0].total_row_count),
            ("A", Some("#q0"), 3)
        );
        assert_eq!(sheets[0].columns, ["X", "Y"]);
        assert_eq!((sheets[1].query_id.as_deref(), sheets[1].columns.as_slice()), (None, &["Z".to_owned()][..]));
        assert_eq!(rows(&workbook.rows(0)), [vec!["1", "a\"b"], vec!["2", "c"]]);
        assert_eq!(rows(&workbook.rows(1)), [vec!["z"]]);
        assert!(workbook.reported().is_none());
    }

    #[test]
    fn a_worksheet_without_rows_or_an_answer_without_worksheets_is_the_wrong_shape() {
        use serde_json::error::Category;
        let mut buffer = PageBuffer::default();
        for wrong in [
            &br#"{}"#[..],
            br#"{"Worksheets":[{"Name":"A","TotalRowCount":0,"Columns":[]}]}"#,
            br#"{"Worksheets":[{"Name":"A","Columns":[],"Rows":[]}]}"#,
            br#"{"Status":"Success"}"#,
        ] {
            let err = buffer.parse_workbook(wrong).unwrap_err();
            assert_eq!(err.classify(), Category::Data, "{}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn errors_reported_inside_a_200_are_kept_with_the_servers_words() {
        let mut buffer = PageBuffer::default();
        let script = buffer.parse_workbook(br#"{"ScriptError":{"Code":"E42","Message":"Worksheet 'X' not found"}}"#);
        assert_eq!(script.unwrap().reported().unwrap().to_string(), "ScriptError E42: Worksheet 'X' not found");
        let bare = buffer.parse(br#"{"Rows":[],"ScriptError":"boom"}"#).unwrap();
        assert_eq!(bare.reported(), Some(&Reported::Script { code: String::new(), message: "boom".into() }));
        let partial = buffer
            .parse_delimited(br#"{"Status":"Partial Success","ErrorRowCount":3,"Message":"3 rows failed"}"#, '\t');
        assert_eq!(
            partial.unwrap().reported().unwrap().to_string(),
            "Status \"Partial Success\" with ErrorRowCount 3: 3 rows failed"
        );
        let failure = buffer.parse_delimited(br##"{"ExportId":"#e","Status":"Failure"}"##, '\t').unwrap();
        assert!(matches!(failure.reported(), Some(Reported::Status { .. })));
        let error_rows = buffer.parse(br#"{"Rows":[{"Values":["a"]}],"ErrorRowCount":1}"#).unwrap();
        assert!(matches!(error_rows.reported(), Some(Reported::ErrorRows { count: 1, .. })));
        let fine = buffer.parse(br#"{"Rows":[],"Status":"Success","ErrorRowCount":0}"#).unwrap();
        assert!(fine.reported().is_none());
    }

    #[test]
    fn delimited_rows_are_split_into_values_escaped_or_not() {
        let mut buffer = PageBuffer::default();
        let page = buffer.parse_delimited(br#"{"Rows":["a\tb\t","K\u00f6ln\t\t\"x\"","single"]}"#, '\t').unwrap();
        assert_eq!(rows(&page), [vec!["a", "b", ""], vec!["Köln", "", "\"x\""], vec!["single"]]);
        let piped = buffer.parse_delimited(br#"{"Rows":["a|b","|"]}"#, '|').unwrap();
        assert_eq!(rows(&piped), [vec!["a", "b"], vec!["", ""]]);
        let spelled = buffer.parse_delimited(br#"{"Rows":["a\u0009b\u00e9\\t", "\u00091"]}"#, '\t').unwrap();
        assert_eq!(rows(&spelled), [vec!["a", "bé\\t"], vec!["", "1"]]);
        let other = buffer.parse_delimited("{\"Rows\":[\"a§b\"]}".as_bytes(), '§').unwrap();
        assert_eq!(rows(&other), [vec!["a", "b"]], "a delimiter that is not ASCII: the row decoded, then split");
        for wrong in [&br#"{"Rows":[7]}"#[..], br#"{"Rows":[["a"]]}"#, br#"{"Rows":[null]}"#] {
            let err = buffer.parse_delimited(wrong, '\t').unwrap_err();
            assert_eq!(err.classify(), serde_json::error::Category::Data, "{}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn a_bulk_row_with_a_lone_surrogate_is_refused_naming_where_it_lies() {
        use serde_json::error::Category;
        let mut buffer = PageBuffer::default();
        let body = br#"{"Rows":["ok\tfine","a\ud800b\tc"]}"#;
        let err = buffer.parse_delimited(body, '\t').unwrap_err();
        assert_eq!(err.classify(), Category::Data, "{err}");
        assert!(err.to_string().contains("at byte 21 of the answer holds an invalid escape"), "{err}");
    }

    #[test]
    fn bulk_values_without_escapes_of_their_own_are_borrowed_from_the_body_not_copied() {
        let mut buffer = PageBuffer::default();
        let page = buffer.parse_delimited(br#"{"Rows":["PO-1\tP-7\t\t12.5","PO-2\tP-8\tx\t3"]}"#, '\t').unwrap();
        assert_eq!(rows(&page), [vec!["PO-1", "P-7", "", "12.5"], vec!["PO-2", "P-8", "x", "3"]]);
        assert!(buffer.decoded.is_empty(), "copied: {:?}", buffer.decoded);
        let page = buffer.parse_delimited(br#"{"Rows":["a\"b\tc"]}"#, '\t').unwrap();
        assert_eq!(rows(&page), [vec!["a\"b", "c"]]);
        assert_eq!(buffer.decoded, "a\"b", "only the value with an escape of its own");
    }

    proptest::proptest! {
        #[test]
        fn every_bulk_page_reads_back_the_values_its_rows_were_joined_from(
            written in proptest::collection::vec(proptest::collection::vec("\\PC{0,12}|[\"\\\\\r\n,é東🚚\u{1}]{0,6}", 1..6), 0..20),
            delimiter in proptest::sample::select(vec!['\t', '|', ',', '"', '\\', '\n', 'A', '0', 'n', 'u', '/', '§']),
        ) {
            let written: Vec<Vec<String>> = written
                .into_iter()
                .map(|values| values.into_iter().map(|v| v.replace(delimiter, "")).collect())
                .collect();
            let rows_json: Vec<String> = written.iter().map(|values| values.join(&delimiter.to_string())).collect();
            let body = serde_json::to_vec(&serde_json::json!({"Rows": rows_json})).unwrap();
            let mut buffer = PageBuffer::default();
            let parsed = buffer.parse_delimited(&body, delimiter).unwrap();
            proptest::prop_assert_eq!(rows(&parsed), written);
        }

        #[test]
        fn every_page_reads_back_the_values_it_was_written_from(
            written in proptest::collection::vec(proptest::collection::vec("\\PC{0,12}|[\"\\\\\r\n\t,é東🚚]{0,6}", 0..6), 0..20),
            pretty in proptest::bool::ANY,
        ) {
            let page = serde_json::json!({
                "Rows": written.iter().map(|values| serde_json::json!({"Values": values, "Extra": [1, {"Values": "x"}]})).collect::<Vec<_>>(),
                "Total": written.len(),
            });
            let body = if pretty { serde_json::to_vec_pretty(&page) } else { serde_json::to_vec(&page) }.unwrap();
            let mut buffer = PageBuffer::default();
            buffer.parse(br#"{"Rows":[{"Values":["left over from the page before"]}]}"#).unwrap();
            let parsed = buffer.parse(&body).unwrap();
            proptest::prop_assert_eq!(rows(&parsed), written);
        }
    }
}
