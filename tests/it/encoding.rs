//! Each file encoding byte for byte against an independent writer and encoder: Python's
//! `csv` module and its codecs, run from the project venv.

use std::io::Write;
use std::process::{Command, Stdio};

use maestro_relay::csv_out::{CsvError, CsvOptions, CsvSink, Encoding};
use serde_json::{json, Value};

use crate::helpers::ROOT;

/// Writes `rows` (the first is the header) with Python's csv writer (RFC 4180 quoting, CRLF)
/// and encodes the text with `codec`: `{"bytes": hex, "replaced": n}`, or with
/// `errors=strict`, `{"error": [row, column, character]}` for the first character the
/// codec refuses (row 0 is the header).
const PYTHON: &str = r#"
import csv, io, json, sys
job = json.load(sys.stdin)
codec, errors, rows = job["codec"], job["errors"], job["rows"]
out = io.StringIO(newline="")
csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
text = out.getvalue()
if errors == "strict":
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            for ch in value:
                try:
                    ch.encode(codec)
                except UnicodeEncodeError:
                    print(json.dumps({"error": [r, c, ch]}))
                    sys.exit(0)
def ok(ch):
    try:
        ch.encode(codec)
        return True
    except UnicodeEncodeError:
        return False
replaced = sum(0 if ok(ch) else 1 for ch in text)
print(json.dumps({"bytes": text.encode(codec, errors=errors).hex(), "replaced": replaced}))
"#;

fn python(codec: &str, errors: &str, rows: &[Vec<String>]) -> Value {
    let mut child = Command::new(format!("{ROOT}/.venv/bin/python"))
        .args(["-c", PYTHON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the project venv's python (run scripts/bootstrap.sh)");
    let job = json!({"codec": codec, "errors": errors, "rows": rows});
    child.stdin.take().expect("stdin").write_all(job.to_string().as_bytes()).expect("write to python");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "python failed");
    serde_json::from_slice(&out.stdout).expect("python's JSON")
}

fn rust(encoding: Encoding, replacement: Option<char>, rows: &[Vec<String>]) -> Result<(Vec<u8>, u64), CsvError> {
    let options = CsvOptions { encoding, replacement, ..CsvOptions::default() };
    let mut sink = CsvSink::new(Vec::new(), &options, &rows[0])?;
    for row in &rows[1..] {
        sink.write_row(row)?;
    }
    let (bytes, stats) = sink.finish()?;
    assert_eq!(stats.bytes, bytes.len() as u64);
    assert_eq!(stats.sha256, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
    assert_eq!(stats.encoding, encoding.name());
    Ok((bytes, stats.replaced_characters))
}

/// Every code point from space to U+02FF, the windows-1252 typographic set, C1 controls and
/// the quoting characters, in fields of two to four characters across four columns.
fn sweep(extra: &[&str]) -> Vec<Vec<String>> {
    let mut chars: Vec<char> = (0x20u32..0x300).filter_map(char::from_u32).collect();
    chars.extend("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ\r\n\"".chars());
    let mut rows = vec![vec!["Order".to_owned(), "Part".to_owned(), "Text".to_owned(), "Qty".to_owned()]];
    for (i, chunk) in chars.chunks(12).enumerate() {
        let fields: Vec<String> = chunk.chunks(3).map(|c| format!("{i}{}", c.iter().collect::<String>())).collect();
        let mut row = fields;
        row.resize(4, "x".to_owned());
        rows.push(row);
    }
    rows.push(extra.iter().map(|s| s.to_string()).collect());
    rows
}

const CODECS: [(Encoding, &str); 4] = [
    (Encoding::Utf8, "utf-8"),
    (Encoding::Utf8Bom, "utf-8-sig"),
    (Encoding::Latin1, "latin-1"),
    (Encoding::Windows1252, "cp1252"),
];

#[test]
fn every_encoding_writes_the_bytes_python_writes_where_every_character_is_representable() {
    for (encoding, codec) in CODECS {
        // What the encoding can hold: the sweep, less what Python's codec refuses.
        let rows: Vec<Vec<String>> = sweep(&["PO-1", "Grüße, \"Ü\"", "ÿ", "1"])
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|f| f.chars().filter(|c| c.to_string().len() == 1 || ok(codec, *c)).collect())
                    .collect()
            })
            .collect();
        let expected = python(codec, "strict", &rows);
        let (bytes, replaced) = rust(encoding, None, &rows).unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(hex::encode(&bytes), expected["bytes"].as_str().expect("bytes"), "{codec}");
        assert_eq!(replaced, 0);
    }
}

/// Whether Python's codec holds `c`, asked once per codec and cached.
fn ok(codec: &str, c: char) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("cache");
    let held = cache.entry(codec.to_owned()).or_insert_with(|| {
        let script = format!(
            "import sys\nfor i in range(0x80, 0x300):\n  c = chr(i)\n  try:\n    c.encode('{codec}'); sys.stdout.write(c)\n  except UnicodeEncodeError: pass\nfor c in '€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ漢😀':\n  try:\n    c.encode('{codec}'); sys.stdout.write(c)\n  except UnicodeEncodeError: pass\n"
        );
        let out = Command::new(format!("{ROOT}/.venv/bin/python"))
            .env("PYTHONIOENCODING", "utf-8")
            .args(["-c", &script])
            .output()
            .expect("python");
        String::from_utf8(out.stdout).expect("utf-8")
    });
    held.contains(c)
}

#[test]
fn an_unrepresentable_character_fails_where_python_fails_naming_row_and_column() {
    for (encoding, codec) in [(Encoding::Latin1, "latin-1"), (Encoding::Windows1252, "cp1252")] {
        let rows = sweep(&["PO-9", "Łódź", "漢字", "😀"]);
        let expected = python(codec, "strict", &rows);
        let [row, column, character] = [0, 1, 2].map(|i| expected["error"][i].clone());
        let err = rust(encoding, None, &rows).expect_err(codec);
        match err {
            CsvError::Unrepresentable { row: r, column: c, character: ch, encoding: e } => {
                assert_eq!(json!(r), row, "{codec}");
                assert_eq!(json!(c), json!(rows[0][column.as_u64().expect("column") as usize]), "{codec}");
                assert_eq!(json!(ch.to_string()), character, "{codec}");
                assert_eq!(e, encoding.name());
            }
            other => panic!("{codec}: {other}"),
        }
    }
    // A header the encoding cannot hold fails as row 0.
    let rows = vec![vec!["Menge€".to_owned()], vec!["1".to_owned()]];
    let err = rust(Encoding::Latin1, None, &rows).expect_err("header");
    assert!(err.to_string().starts_with("row 0, column \"Menge€\""), "{err}");
}

#[test]
fn with_a_replacement_character_each_unrepresentable_one_is_replaced_and_counted_as_python_does() {
    for (encoding, codec) in [(Encoding::Latin1, "latin-1"), (Encoding::Windows1252, "cp1252")] {
        let rows = sweep(&["PO-9", "Łódź", "漢字", "😀"]);
        let expected = python(codec, "replace", &rows);
        let (bytes, replaced) = rust(encoding, Some('?'), &rows).expect(codec);
        assert_eq!(hex::encode(&bytes), expected["bytes"].as_str().expect("bytes"), "{codec}");
        assert_eq!(replaced, expected["replaced"].as_u64().expect("replaced"), "{codec}");
        assert!(replaced >= 4, "{codec}: {replaced}");
    }
}
