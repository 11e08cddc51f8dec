//! A worksheet page parsed in place: values are borrowed from the body, not copied (only
//! a value with JSON escapes is decoded, into a buffer kept from page to page), and nothing
//! is written before the whole page parsed (so a page cut short can be fetched again
//! without duplicating rows).

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Where a value lies: in the body as sent, or decoded into the escape buffer.
#[derive(Debug, Clone)]
enum Span {
    Body(Range<usize>),
    Decoded(Range<usize>),
}

/// The buffers a page is parsed into, kept from page to page so that, once grown to a
/// page's size, parsing allocates nothing.
#[derive(Debug, Default)]
pub struct PageBuffer {
    spans: Vec<Span>,
    row_ends: Vec<usize>,
    decoded: String,
    /// The addresses of the body being parsed: a borrowed value's offset is its address
    /// less the start.
    body_at: Range<usize>,
}

/// One parsed page: its rows, each a run of values borrowed from the body or the buffer.
#[derive(Debug)]
pub struct Page<'a> {
    body: &'a str,
    buffer: &'a PageBuffer,
}

impl PageBuffer {
    /// Parses `{"Rows": [{"Values": ["…", …]}, …]}`, replacing the previous page.
    pub fn parse<'a>(&'a mut self, body: &'a [u8]) -> Result<Page<'a>, serde_json::Error> {
        let Ok(text) = std::str::from_utf8(body) else {
            // serde_json's own verdict on these bytes: end of input for a body cut inside
            // a character, a syntax error for a stray byte.
            return Err(serde_json::from_slice::<serde_json::Value>(body)
                .err()
                .unwrap_or_else(|| de::Error::custom("the page is not UTF-8")));
        };
        self.parse_with(text, |text, seed| {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut deserializer)?;
            deserializer.end()
        })
    }

    /// Parses `text` with the page's visitor on the JSON deserializer `deserialize` makes
    /// of it: how the conversion benchmark measures other JSON crates through the same
    /// visitor (issue 14). `parse` is this with serde_json.
    pub fn parse_with<'a, E>(
        &'a mut self,
        text: &'a str,
        deserialize: impl FnOnce(&'a str, PageSeed<'_>) -> Result<(), E>,
    ) -> Result<Page<'a>, E> {
        self.spans.clear();
        self.row_ends.clear();
        self.decoded.clear();
        let start = text.as_ptr() as usize;
        self.body_at = start..start + text.len();
        deserialize(text, PageSeed(self))?;
        Ok(Page { body: text, buffer: self })
    }

    /// `value` lies inside the body; should serde_json ever hand over a string from
    /// elsewhere, it is copied instead.
    fn push_borrowed(&mut self, value: &str) {
        let at = value.as_ptr() as usize;
        if self.body_at.start <= at && at + value.len() <= self.body_at.end {
            let start = at - self.body_at.start;
            self.spans.push(Span::Body(start..start + value.len()));
        } else {
            self.push_decoded(value);
        }
    }

    fn push_decoded(&mut self, value: &str) {
        let start = self.decoded.len();
        self.decoded.push_str(value);
        self.spans.push(Span::Decoded(start..self.decoded.len()));
    }
}

impl<'a> Page<'a> {
    pub fn len(&self) -> usize {
        self.buffer.row_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.row_ends.is_empty()
    }

    fn value(&self, span: &Span) -> &'a str {
        match span {
            Span::Body(range) => &self.body[range.clone()],
            Span::Decoded(range) => &self.buffer.decoded[range.clone()],
        }
    }

    /// Calls `write` with each row's values in order, stopping at its first error.
    pub fn try_for_each_row<E>(&self, mut write: impl FnMut(&[&'a str]) -> Result<(), E>) -> Result<(), E> {
        let mut row: Vec<&'a str> = Vec::new();
        let mut start = 0;
        for &end in &self.buffer.row_ends {
            row.clear();
            row.extend(self.buffer.spans[start..end].iter().map(|span| self.value(span)));
            write(&row)?;
            start = end;
        }
        Ok(())
    }
}

/// The page's visitor, for `PageBuffer::parse_with`.
pub struct PageSeed<'a>(&'a mut PageBuffer);

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a page object with Rows")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen_rows = false;
        while let Some(key) = map.next_key::<Key>()? {
            if key.0 {
                map.next_value_seed(RowsSeed(&mut *self.0))?;
                seen_rows = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if seen_rows {
            Ok(())
        } else {
            Err(de::Error::missing_field("Rows"))
        }
    }
}

/// A map key, told apart without allocating: `true` for the one we look for (`Rows` at
/// the top, `Values` in a row; the two never occur at the other level).
struct Key(bool);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key(key == "Rows" || key == "Values"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
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
        while seq.next_element_seed(RowSeed(&mut *self.0))?.is_some() {
            let end = self.0.spans.len();
            self.0.row_ends.push(end);
        }
        Ok(())
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
            if key.0 && !seen_values {
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

    proptest::proptest! {
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
