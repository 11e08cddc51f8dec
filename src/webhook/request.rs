//! The webhook body: parsed and validated field by field, each error naming its field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::job::rules::MAX_WORKSHEETS;
use crate::job::{public_scope, JobRequest, NamedScope, TableRequest};

pub use crate::job::rules::FieldError;
use crate::job::rules::{self, bad, MAX_FIELDS};

pub const DEFAULT_SCENARIO: &str = "Enterprise Data";
pub const DEFAULT_SITE_GROUP: &str = "All Sites";

/// Parses and validates the body (already known to be UTF-8 JSON text or not).
pub fn parse(body: &[u8]) -> Result<JobRequest, FieldError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("body", "is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(bad("body", "is empty"));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad("body", format!("is not valid JSON (line {} column {})", e.line(), e.column())))?;
    let Value::Object(root) = value else {
        return Err(bad("body", "must be a JSON object"));
    };

    let file_name = required_text(&root, "fileName")?;
    rules::check_file_name(&file_name)?;
    let workbook = match root.get("workbook") {
        None | Some(Value::Null) => None,
        Some(value) => Some(named_scope(value, "workbook")?),
    };
    let table = match root.get("table") {
        None | Some(Value::Null) => None,
        Some(value) => Some(table_request(value)?),
    };
    match (&workbook, &table) {
        (None, None) => return Err(bad("workbook", "is required (or table, for a bulk export)")),
        (Some(_), Some(_)) => return Err(bad("table", "a request names either a workbook or a table, not both")),
        (None, Some(_)) => {
            // The workbook's parameters have no meaning for a table: refused, not ignored.
            for field in ["worksheets", "filter", "variables", "siteGroup"] {
                if root.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(bad(field, "applies to a workbook only; a table takes table.filter"));
                }
            }
        }
        (Some(_), None) => {}
    }
    let scenario = match root.get("scenario") {
        None | Some(Value::Null) => NamedScope { name: DEFAULT_SCENARIO.to_owned(), scope: public_scope() },
        Some(value) => named_scope(value, "scenario")?,
    };
    let filter = match root.get("filter") {
        None | Some(Value::Null) => None,
        Some(value) => Some(named_scope(value, "filter")?),
    };
    let worksheets = match root.get("worksheets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() > MAX_WORKSHEETS => {
            return Err(bad("worksheets", format!("names {} worksheets; at most {MAX_WORKSHEETS}", items.len())))
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| text_value(item, &format!("worksheets[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("worksheets", "must be an array of strings")),
    };
    let variables = match root.get("variables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad(&format!("variables.{k}"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("variables", "must be an object of strings")),
    };
    let request = JobRequest {
        event_id: optional_text(&root, "eventId")?,
        file_name,
        workbook,
        table,
        worksheets,
        scenario,
        site_group: optional_text(&root, "siteGroup")?.unwrap_or_else(|| DEFAULT_SITE_GROUP.to_owned()),
        filter,
        variables,
    };
    // The content rules the worker applies again to the manifest.
    rules::check_request(&request)?;
    Ok(request)
}

fn text_value(value: &Value, field: &str) -> Result<String, FieldError> {
    match value {
        Value::String(s) => rules::check_text(field, s).map(|()| s.clone()),
        _ => Err(bad(field, "must be a string")),
    }
}

fn required_text(obj: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(bad(field, "is required")),
        Some(value) => text_value(value, field),
    }
}

fn optional_text(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => text_value(value, field).map(Some),
    }
}

/// `{"namespace", "name", "fields": [..], "filter"?}`.
fn table_request(value: &Value) -> Result<TableRequest, FieldError> {
    let Value::Object(obj) = value else {
        return Err(bad("table", "must be an object with namespace, name and fields"));
    };
    let inner = |e: FieldError| bad(&format!("table.{}", e.field), e.problem);
    let fields = match obj.get("fields") {
        None | Some(Value::Null) => return Err(bad("table.fields", "is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad("table.fields", "must name at least one field"))
        }
        Some(Value::Array(items)) if items.len() > MAX_FIELDS => {
            return Err(bad("table.fields", format!("must name at most {MAX_FIELDS} fields")))
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| text_value(item, &format!("table.fields[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("table.fields", "must be an array of strings")),
    };
    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            rules::check_filter_expression("table.filter", s)?;
            Some(s.clone())
        }
        Some(_) => return Err(bad("table.filter", "must be a string")),
    };
    Ok(TableRequest {
        namespace: required_text(obj, "namespace").map_err(inner)?,
        name: required_text(obj, "name").map_err(inner)?,
        fields,
        filter,
    })
}

fn named_scope(value: &Value, field: &str) -> Result<NamedScope, FieldError> {
    let Value::Object(obj) = value else {
        return Err(bad(field, "must be an object with name and scope"));
    };
    Ok(NamedScope {
        name: required_text(obj, "name").map_err(|e| bad(&format!("{field}.{}", e.field), e.problem))?,
        scope: optional_text(obj, "scope")
            .map_err(|e| bad(&format!("{field}.{}", e.field), e.problem))?
            .unwrap_or_else(public_scope),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_minimal_request_gets_the_documented_defaults() {
        let req = parse(br#"{"fileName":"PlannedOrders-PF","workbook":{"name":"PlannedOrders Export"}}"#).unwrap();
        assert_eq!(req.workbook.as_ref().unwrap().scope, "Public");
        assert!(req.table.is_none());
        assert_eq!(req.scenario.name, "Enterprise Data");
        assert_eq!(req.site_group, "All Sites");
        assert!(req.worksheets.is_empty() && req.filter.is_none() && req.variables.is_empty());
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(field_of(r#"{"workbook":{"name":"W"}}"#), "fileName");
        assert_eq!(field_of(r#"{"fileName":"A-PF"}"#), "workbook");
        assert_eq!(field_of(r#"{"fileName":"A-PF","workbook":{}}"#), "workbook.name");
        assert_eq!(field_of(r#"{"fileName":"A-PF","workbook":{"name":"W","scope":3}}"#), "workbook.scope");
        assert_eq!(field_of(r#"{"fileName":"A-PF","workbook":{"name":"W"},"worksheets":["a",""]}"#), "worksheets[1]");
        assert_eq!(field_of(r#"{"fileName":"A-PF","workbook":{"name":"W"},"variables":{"x":1}}"#), "variables.x");
        assert_eq!(field_of(r#"{"fileName":"A-PF","workbook":{"name":"W"},"scenario":"S"}"#), "scenario");
        assert_eq!(field_of(r#"{"fileName":7,"workbook":{"name":"W"}}"#), "fileName");
    }

    #[test]
    fn a_table_request_is_a_bulk_export_and_every_field_of_it_is_named() {
        let req = parse(
            br#"{"fileName":"Orders-WP","table":{"namespace":"Mfg","name":"PlannedOrder","fields":["Order.Id","Quantity"],"filter":"Quantity > 0"}}"#,
        )
        .unwrap();
        let table = req.table.unwrap();
        assert_eq!((table.qualified_name().as_str(), table.fields.len()), ("Mfg::PlannedOrder", 2));
        assert_eq!(table.filter.as_deref(), Some("Quantity > 0"));
        assert!(req.workbook.is_none());
        let t = r#""table":{"namespace":"Mfg","name":"PlannedOrder","fields":["F"]}"#;
        assert_eq!(field_of(&format!(r#"{{"fileName":"A-PF","workbook":{{"name":"W"}},{t}}}"#)), "table");
        assert_eq!(field_of(r#"{"fileName":"A-PF"}"#), "workbook");
        assert_eq!(field_of(&format!(r#"{{"fileName":"A-PF",{t},"worksheets":["S"]}}"#)), "worksheets");
        assert_eq!(field_of(&format!(r#"{{"fileName":"A-PF",{t},"filter":{{"name":"F"}}}}"#)), "filter");
        assert_eq!(field_of(&format!(r#"{{"fileName":"A-PF",{t},"variables":{{}}}}"#)), "variables");
        assert_eq!(field_of(&format!(r#"{{"fileName":"A-PF",{t},"siteGroup":"All"}}"#)), "siteGroup");
        assert_eq!(field_of(r#"{"fileName":"A-PF","table":[]}"#), "table");
        assert_eq!(field_of(r#"{"fileName":"A-PF","table":{"name":"T","fields":["F"]}}"#), "table.namespace");
        assert_eq!(field_of(r#"{"fileName":"A-PF","table":{"namespace":"N","fields":["F"]}}"#), "table.name");
        assert_eq!(field_of(r#"{"fileName":"A-PF","table":{"namespace":"N","name":"T"}}"#), "table.fields");
        assert_eq!(field_of(r#"{"fileName":"A-PF","table":{"namespace":"N","name":"T","fields":[]}}"#), "table.fields");
        assert_eq!(
            field_of(r#"{"fileName":"A-PF","table":{"namespace":"N","name":"T","fields":["F",""]}}"#),
            "table.fields[1]"
        );
        assert_eq!(
            field_of(r#"{"fileName":"A-PF","table":{"namespace":"N","name":"T","fields":["F"],"filter":7}}"#),
            "table.filter"
        );
    }

    #[test]
    fn twenty_worksheets_are_accepted_and_twenty_one_refused_naming_the_field() {
        let body = |n: usize| {
            let sheets: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
            serde_json::json!({"fileName": "A-PF", "workbook": {"name": "W"}, "worksheets": sheets}).to_string()
        };
        assert_eq!(parse(body(MAX_WORKSHEETS).as_bytes()).unwrap().worksheets.len(), 20);
        let refused = parse(body(MAX_WORKSHEETS + 1).as_bytes()).unwrap_err();
        assert_eq!(
            (refused.field.as_str(), refused.problem.as_str()),
            ("worksheets", "names 21 worksheets; at most 20")
        );
    }

    #[test]
    fn file_names_that_could_escape_the_remote_directory_are_refused() {
        for name in ["../etc/passwd", ".hidden-PF", "a..b-PF", "a/b-PF", "a b-PF", "", &"x".repeat(101)] {
            assert!(rules::check_file_name(name).is_err(), "{name:?}");
        }
        assert!(rules::check_file_name("PlannedOrders-PF.csv").is_ok());
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused_as_the_body() {
        for body in [&b""[..], b"   ", b"[1]", b"{", b"\xff\xfe", b"null"] {
            assert_eq!(parse(body).unwrap_err().field, "body");
        }
    }
}
