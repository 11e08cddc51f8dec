//! A worksheet page parsed into reusable buffers: no allocation per row or value once the
//! buffers have grown to a page's size, and nothing written before the whole page parsed
//! (so a page cut short can be fetched again without duplicating rows).

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The values of one page, row after row, in buffers kept from page to page.
#[derive(Debug, Default)]
pub struct PageBuffer {
    values: Vec<String>,
    used: usize,
    row_ends: Vec<usize>,
}

impl PageBuffer {
    /// Parses `{"Rows": [{"Values": ["…", …]}, …]}`, replacing the previous page.
    pub fn parse(&mut self, body: &[u8]) -> Result<(), serde_json::Error> {
        self.used = 0;
        self.row_ends.clear();
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        PageSeed(self).deserialize(&mut deserializer)?;
        deserializer.end()
    }

    pub fn len(&self) -> usize {
        self.row_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row_ends.is_empty()
    }

    pub fn rows(&self) -> impl Iterator<Item = &[String]> {
        let starts = std::iter::once(0).chain(self.row_ends.iter().copied());
        starts.zip(self.row_ends.iter().copied()).map(|(start, end)| &self.values[start..end])
    }

    fn push_value(&mut self, value: &str) {
        if self.used == self.values.len() {
            self.values.push(String::with_capacity(value.len()));
        }
        let slot = &mut self.values[self.used];
        slot.clear();
        slot.push_str(value);
        self.used += 1;
    }
}

struct PageSeed<'a>(&'a mut PageBuffer);

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
            let end = self.0.used;
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

impl Visitor<'_> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string value")
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push_value(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(buffer: &PageBuffer) -> Vec<Vec<String>> {
        buffer.rows().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn a_page_is_read_row_by_row_with_escapes_and_extra_keys_ignored() {
        let mut buffer = PageBuffer::default();
        buffer
            .parse(br#"{"Rows":[{"Values":["a","b\"c"],"X":1},{"Values":["line\r\nbreak","\u00fc"]}],"More":true}"#)
            .unwrap();
        assert_eq!(rows(&buffer), [vec!["a", "b\"c"], vec!["line\r\nbreak", "ü"]]);
    }

    #[test]
    fn buffers_are_reused_and_replaced_from_page_to_page() {
        let mut buffer = PageBuffer::default();
        buffer.parse(br#"{"Rows":[{"Values":["1","2","3"]},{"Values":["4"]}]}"#).unwrap();
        buffer.parse(br#"{"Rows":[{"Values":["x"]}]}"#).unwrap();
        assert_eq!(rows(&buffer), [vec!["x"]]);
        buffer.parse(br#"{"Rows":[]}"#).unwrap();
        assert!(buffer.is_empty());
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
}
