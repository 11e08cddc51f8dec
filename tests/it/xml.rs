//! XML targets end to end: the delivered file parsed by a real XML parser (Python's
//! ElementTree on expat, which decodes the bytes as the declaration says) and every value
//! compared with the CSV the same worksheet and settings give.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::{sqs_event_for, TestApp, ROOT};

/// The document as JSON: the declaration's encoding, the root's tag and attributes, each
/// row's tag and its children as `[tag, text]` (an empty element's text is `""`).
const PARSE: &str = r#"
import json, re, sys, xml.etree.ElementTree as ET
raw = open(sys.argv[1], "rb").read()
declared = re.match(rb'(?:\xef\xbb\xbf)?<\?xml version="1.0" encoding="([^"]+)"\?>', raw)
root = ET.fromstring(raw)
rows = [[row.tag, [[c.tag, c.text or "", len(c)] for c in row]] for row in root]
print(json.dumps({"declared": declared.group(1).decode() if declared else None,
                  "tag": root.tag, "attrib": root.attrib, "rows": rows}))
"#;

fn parse_xml(path: &std::path::Path) -> Value {
    let out = Command::new(format!("{ROOT}/.venv/bin/python"))
        .args(["-c", PARSE])
        .arg(path)
        .output()
        .expect("the project venv's python (run scripts/bootstrap.sh)");
    assert!(out.status.success(), "the XML parser refused the file: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// Renamed into ids that are not XML names; dates and decimals rewritten.
const SETTINGS: [(&str, &str); 6] = [
    (
        "CSV_COLUMNS",
        "Order:1st Order,Part:Teil:Nr,Site:Werk/Ort,Quantity:Menge,DueDate:Due Date,Description:Beschreibung-Text",
    ),
    ("CSV_DATE_COLUMNS", "DueDate"),
    ("CSV_DATE_FORMAT", "[day].[month].[year]"),
    ("CSV_DECIMAL_SEPARATOR", ","),
    ("CSV_NUMERIC_COLUMNS", "Quantity"),
    ("CSV_REPLACEMENT_CHAR", "?"),
];

const ELEMENTS: [&str; 6] = ["_1st_Order", "Teil_Nr", "Werk_Ort", "Menge", "Due_Date", "Beschreibung-Text"];

/// One worksheet delivered twice: as UTF-8 CSV to PF2 (the reference: every value exact) and
/// as XML in `encoding` to WP2, with the same columns, dates and decimals.
async fn csv_and_xml(encoding: &str) -> (TestApp, Vec<csv::StringRecord>, Vec<u8>, Value, String) {
    let mut app = TestApp::start(&["--rows", "30", "--first-page", "7", "--markup-values"]).await;
    for (key, value) in SETTINGS.into_iter().chain([("FILE_FORMAT_WP2", "xml"), ("CSV_ENCODING_WP2", encoding)]) {
        app.env.insert(key.into(), value.into());
    }
    let pf = app.accepted_job("webhook-http-api-pf.json").await;
    let wp = app.accepted_job("webhook-http-api-wp.json").await;
    for job_id in [&pf, &wp] {
        let answer = app.worker().handle_json(&sqs_event_for(job_id, "m-1"), app.deadline()).await.expect("answer");
        let failure = app.json_object(&format!("failed/{job_id}.json")).await;
        assert_eq!(answer, json!({"batchItemFailures": []}), "{failure:?}");
    }
    let csv_name = &app.sshd.files("PF2")[0];
    let csv_bytes = std::fs::read(app.sshd.folder("PF2").join(csv_name)).expect("PF2 file");
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let header = reader.headers().expect("header").clone();
    let mut records = vec![header];
    records.extend(reader.records().map(|r| r.expect("record")));

    let xml_files = app.sshd.files("WP2");
    assert_eq!(xml_files.len(), 1, "{xml_files:?}");
    let name = &xml_files[0];
    assert!(name.starts_with("PlannedOrders-WP_") && name.ends_with(".xml"), "{name}");
    let path = app.sshd.folder("WP2").join(name);
    let bytes = std::fs::read(&path).expect("WP2 file");
    let parsed = parse_xml(&path);
    (app, records, bytes, parsed, wp)
}

/// What XML holds of a CSV value: the characters XML 1.0 cannot hold replaced.
fn xml_value(csv: &str) -> String {
    csv.chars().map(|c| if maestro_relay::xml_out::is_forbidden(c) { '?' } else { c }).collect()
}

async fn every_value_matches_the_csv(encoding: &str, declared: &str) {
    let (app, csv, bytes, xml, wp) = csv_and_xml(encoding).await;
    assert_eq!(xml["declared"], declared);
    assert_eq!((xml["tag"].as_str(), xml["attrib"]["name"].as_str()), (Some("Worksheet"), Some("Planned Orders")));
    assert_eq!(xml["attrib"]["totalRowCount"], "30");
    let rows = xml["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 30);
    assert_eq!(csv.len(), 31, "a header and 30 rows");
    let headers: Vec<&str> = csv[0].iter().collect();
    let mapped: Vec<String> = headers.iter().map(|h| maestro_relay::xml_out::element_name(h)).collect();
    assert_eq!(mapped, ELEMENTS, "the documented mapping of {headers:?}");

    let mut replaced = 0;
    for (index, (row, record)) in rows.iter().zip(&csv[1..]).enumerate() {
        assert_eq!(row[0], "Row");
        let children = row[1].as_array().expect("children");
        let tags: Vec<&str> = children.iter().map(|c| c[0].as_str().expect("tag")).collect();
        assert_eq!(tags, ELEMENTS, "row {index}");
        for (child, value) in children.iter().zip(record.iter()) {
            assert_eq!(child[2], 0, "a column element holds text only");
            assert_eq!(child[1].as_str(), Some(xml_value(value).as_str()), "row {index}, <{}>", child[0]);
            replaced += value.chars().filter(|c| maestro_relay::xml_out::is_forbidden(*c)).count();
        }
    }
    // The awkward values were there to be compared (the simulator's --markup-values).
    let all: Vec<&str> = csv[1..].iter().flat_map(|r| r.iter()).collect();
    for needle in ["<b>", "&amp;", "]]>", "\r\n", "\rLF", "\t", "\u{7}", "\u{FFFF}", "€", "ü", "🚚", "\u{85}", ".2026"]
    {
        assert!(all.iter().any(|v| v.contains(needle)), "{needle:?} never came");
    }
    assert!(all.contains(&"") && all.iter().any(|v| v.contains(',')), "an empty value and a decimal comma");
    assert_eq!(replaced, 7 * 3, "seven characters XML cannot hold, in 3 of 30 rows");

    let receipt = app.json_object(&format!("receipts/{wp}.json")).await.expect("receipt");
    let file = &receipt["files"][0];
    assert_eq!((receipt["rows"].as_u64(), receipt["bytes"].as_u64()), (Some(30), Some(bytes.len() as u64)));
    assert_eq!(file["sha256"], maestro_relay::job::sha256_hex(&bytes));
    assert_eq!(receipt["reconciliation"][0]["replacedCharacters"], replaced);
    assert_eq!(receipt["reconciliation"][0]["matches"], true);
    check_bytes(encoding, &bytes);
}

/// The bytes are the declared encoding's: Latin-1 letters as single bytes, what Latin-1 lacks
/// as references; UTF-8 as UTF-8.
fn check_bytes(encoding: &str, bytes: &[u8]) {
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    match encoding {
        "iso-8859-1" => {
            assert!(has(b"Gr\xfc\xdfe \xc4\xd6\xdc \xdf \xe9 \xff \xa4"), "Latin-1 letters as single bytes");
            assert!(has(b"&#8364; &#321;\xf3d&#378; &#26481;&#20140; &#128666;"), "the rest as references");
            assert!(std::str::from_utf8(bytes).is_err(), "not UTF-8");
        }
        "windows-1252" => {
            assert!(has(b"\x80 &#321;\xf3d&#378; &#26481;&#20140; &#128666;"), "€ its byte, the rest references");
            assert!(has(b"c1&#133;&#159;"), "C1 controls, which windows-1252 has no byte for, as references");
        }
        _ => {
            let text = std::str::from_utf8(bytes).expect("UTF-8");
            assert!(text.contains("€ Łódź 東京 🚚") && !text.contains("&#8364;"), "UTF-8 as itself");
        }
    }
}

#[tokio::test]
async fn an_xml_file_in_utf_8_holds_every_awkward_value_of_the_csv() {
    every_value_matches_the_csv("utf-8", "UTF-8").await;
}

#[tokio::test]
async fn an_xml_file_in_iso_8859_1_holds_every_awkward_value_of_the_csv() {
    every_value_matches_the_csv("iso-8859-1", "ISO-8859-1").await;
}

#[tokio::test]
async fn an_xml_file_in_windows_1252_holds_every_awkward_value_of_the_csv() {
    every_value_matches_the_csv("windows-1252", "windows-1252").await;
}

#[tokio::test]
async fn a_control_character_xml_cannot_hold_fails_the_job_permanently_without_a_replacement() {
    let mut app = TestApp::start(&["--rows", "30", "--first-page", "7", "--markup-values"]).await;
    app.env.insert("FILE_FORMAT".into(), "xml".into());
    let job_id = app.accepted_job("webhook-http-api-pf.json").await;
    app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("answer");
    let failure = app.json_object(&format!("failed/{job_id}.json")).await.expect("failure record");
    assert_eq!(failure["class"], "permanent");
    let message = failure["message"].as_str().expect("message");
    for part in ["worksheet \"Planned Orders\"", "row 3, column \"Description\"", "U+0007", "CSV_REPLACEMENT_CHAR"] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert!(app.sshd.all_files("PF2").is_empty(), "nothing is sent");
}

#[tokio::test]
async fn a_table_read_by_bulk_export_is_delivered_as_xml_under_a_table_root() {
    let mut app = TestApp::start(&["--rows", "1234", "--page-cap", "500"]).await;
    app.env.insert(
        "ALLOWED_REQUESTS".into(),
        json!({"*": {"workbooks": ["PlannedOrders Export"], "tables": ["Mfg::PlannedOrder"]}}).to_string(),
    );
    app.env.insert("FILE_FORMAT_WP2".into(), "xml".into());
    app.env.insert("TRIGGER_FILE_WP2".into(), "{stem}.trg".into());
    let job_id = app.accepted_job("webhook-http-api-bulk-wp.json").await;
    let answer = app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline()).await.expect("worker");
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let files = app.sshd.files("WP2");
    assert_eq!(files.len(), 2, "{files:?}");
    let data = files.iter().find(|f| f.ends_with(".xml")).expect("the .xml file");
    assert!(files.contains(&data.replace(".xml", ".trg")), "{files:?}: the trigger's {{stem}} drops .xml");
    let parsed = parse_xml(&app.sshd.folder("WP2").join(data));
    assert_eq!((parsed["tag"].as_str(), parsed["attrib"]["name"].as_str()), (Some("Table"), Some("Mfg::PlannedOrder")));
    assert_eq!(parsed["attrib"]["totalRowCount"], "1234");
    let rows = parsed["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1234);
    let first: BTreeMap<&str, &str> = rows[0][1]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| (c[0].as_str().unwrap_or(""), c[1].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        ["Description", "DueDate", "Order.Id", "Part.Name", "Quantity", "Site.Value"]
    );
    assert_eq!(first["Order.Id"], "PO-0-00000000");
}
