//! What a job request may hold: one set of content rules (names, lengths, characters,
//! counts), checked by the webhook before it stages a job and by the worker again on every
//! manifest it reads, so a manifest written into the bucket by other means (or edited there)
//! cannot put a path or a control character anywhere. The allow-list (`ALLOWED_REQUESTS`,
//! what a target may export) is the webhook's alone; the bucket policy keeps manifests
//! write-once.

use crate::job::JobRequest;

/// A 400: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

pub fn bad(field: &str, problem: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), problem: problem.into() }
}

pub const MAX_TEXT: usize = 256;
/// A Kinaxis filter expression may be longer than a name.
pub const MAX_FILTER_EXPRESSION: usize = 4096;
pub const MAX_FIELDS: usize = 500;
/// Worksheets one job may export (each is a Kinaxis call and a file).
pub const MAX_WORKSHEETS: usize = 20;
/// Workbook variables one job may set.
pub const MAX_VARIABLES: usize = 50;

/// A name or other text field: not blank, at most `MAX_TEXT` characters, no control ones.
pub fn check_text(field: &str, text: &str) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(bad(field, "must not be blank"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(bad(field, format!("is longer than {MAX_TEXT} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(field, "must not hold control characters"));
    }
    Ok(())
}

/// 1–100 of `A-Z a-z 0-9 . _ -`, not starting with `.`, without `..`: it becomes part of a
/// remote path, a spool path and S3 keys.
pub fn check_file_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > 100 {
        return Err(bad("fileName", "must be 1 to 100 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(bad("fileName", "may only hold A-Z a-z 0-9 . _ -"));
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(bad("fileName", "must not start with '.' or contain '..'"));
    }
    Ok(())
}

/// A Kinaxis filter expression: not blank, at most `MAX_FILTER_EXPRESSION` characters.
pub fn check_filter_expression(field: &str, text: &str) -> Result<(), FieldError> {
    if text.chars().count() > MAX_FILTER_EXPRESSION {
        return Err(bad(field, format!("is longer than {MAX_FILTER_EXPRESSION} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(field, "must not hold control characters"));
    }
    if text.trim().is_empty() {
        return Err(bad(field, "must not be blank"));
    }
    Ok(())
}

/// Every rule a request's content must meet, field by field; the first failure names its field.
pub fn check_request(request: &JobRequest) -> Result<(), FieldError> {
    check_file_name(&request.file_name)?;
    if let Some(event_id) = &request.event_id {
        check_text("eventId", event_id)?;
    }
    match (&request.workbook, &request.table) {
        (None, None) => return Err(bad("workbook", "is required (or table, for a bulk export)")),
        (Some(_), Some(_)) => return Err(bad("table", "a request names either a workbook or a table, not both")),
        (Some(workbook), None) => check_scope("workbook", &workbook.name, &workbook.scope)?,
        (None, Some(table)) => {
            check_text("table.namespace", &table.namespace)?;
            check_text("table.name", &table.name)?;
            if table.fields.is_empty() {
                return Err(bad("table.fields", "must name at least one field"));
            }
            if table.fields.len() > MAX_FIELDS {
                return Err(bad("table.fields", format!("must name at most {MAX_FIELDS} fields")));
            }
            for (i, field) in table.fields.iter().enumerate() {
                check_text(&format!("table.fields[{i}]"), field)?;
            }
            if let Some(filter) = &table.filter {
                check_filter_expression("table.filter", filter)?;
            }
        }
    }
    check_scope("scenario", &request.scenario.name, &request.scenario.scope)?;
    if let Some(filter) = &request.filter {
        check_scope("filter", &filter.name, &filter.scope)?;
    }
    check_text("siteGroup", &request.site_group)?;
    if request.worksheets.len() > MAX_WORKSHEETS {
        let count = request.worksheets.len();
        return Err(bad("worksheets", format!("names {count} worksheets; at most {MAX_WORKSHEETS}")));
    }
    for (i, worksheet) in request.worksheets.iter().enumerate() {
        check_text(&format!("worksheets[{i}]"), worksheet)?;
    }
    if request.variables.len() > MAX_VARIABLES {
        let count = request.variables.len();
        return Err(bad("variables", format!("sets {count} variables; at most {MAX_VARIABLES}")));
    }
    for (name, value) in &request.variables {
        check_text("variables", name).map_err(|e| bad(&format!("variables.{name}"), format!("name {}", e.problem)))?;
        check_text(&format!("variables.{name}"), value)?;
    }
    Ok(())
}

fn check_scope(field: &str, name: &str, scope: &str) -> Result<(), FieldError> {
    check_text(&format!("{field}.name"), name)?;
    check_text(&format!("{field}.scope"), scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{NamedScope, TableRequest};
    use std::collections::BTreeMap;

    type Tamper = dyn Fn(&mut JobRequest);

    fn request() -> JobRequest {
        JobRequest {
            event_id: None,
            file_name: "PlannedOrders-PF".into(),
            workbook: Some(NamedScope { name: "W".into(), scope: "Public".into() }),
            table: None,
            worksheets: vec!["Planned Orders".into()],
            scenario: NamedScope { name: "S".into(), scope: "Public".into() },
            site_group: "All Sites".into(),
            filter: None,
            variables: BTreeMap::new(),
        }
    }

    #[test]
    fn a_request_the_webhook_accepts_passes_and_each_broken_field_is_named() {
        assert_eq!(check_request(&request()), Ok(()));
        let cases: Vec<(&str, Box<Tamper>)> = vec![
            ("fileName", Box::new(|r| r.file_name = "../../../../tmp/evil-PF".into())),
            ("fileName", Box::new(|r| r.file_name = ".hidden-PF".into())),
            ("worksheets[0]", Box::new(|r| r.worksheets = vec!["a\nb".into()])),
            ("worksheets", Box::new(|r| r.worksheets = vec!["w".into(); MAX_WORKSHEETS + 1])),
            ("siteGroup", Box::new(|r| r.site_group = " ".into())),
            ("workbook.name", Box::new(|r| r.workbook = Some(NamedScope { name: "x".repeat(257), scope: "P".into() }))),
            ("workbook", Box::new(|r| r.workbook = None)),
            (
                "table",
                Box::new(|r| {
                    r.table =
                        Some(TableRequest { namespace: "N".into(), name: "T".into(), fields: vec![], filter: None })
                }),
            ),
            ("variables.Horizon", Box::new(|r| r.variables = BTreeMap::from([("Horizon".into(), "\u{7}".into())]))),
            (
                "variables",
                Box::new(|r| r.variables = (0..=MAX_VARIABLES).map(|i| (format!("v{i}"), "1".into())).collect()),
            ),
        ];
        for (field, break_it) in cases {
            let mut broken = request();
            break_it(&mut broken);
            let err = check_request(&broken).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
