//! The Kinaxis API's JSON requests (workbook, bulk export) and small answers, as serde types;
//! the answers that carry rows are read by `page`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkbookRequest {
    pub scenario: NameScope,
    pub workbook_parameters: WorkbookParameters,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameScope {
    pub name: String,
    pub scope: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkbookParameters {
    pub workbook: NameScope,
    pub site_group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<NameScope>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub variable_values: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worksheet_names: Vec<String>,
}

/// `POST integration/V1/bulk/export`: a table's fields, filtered, in the scenario.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BulkExportRequest {
    pub scenario: NameScope,
    pub table: TableName,
    pub fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableName {
    pub namespace: String,
    pub name: String,
}

/// The answer that starts a bulk export. Its handle and size are optional here so that an
/// error reported inside the 200 (which may come without them) is what the caller sees;
/// a field of the wrong type is the wrong shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BulkExportAnswer {
    #[serde(default)]
    pub export_id: Option<String>,
    #[serde(default)]
    pub total_rows: Option<u64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub error_row_count: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub script_error: Option<serde_json::Value>,
}

/// The token endpoint's answer; the token is a secret (redacted in `Debug`, never logged).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenAnswer {
    pub access_token: secrecy::SecretString,
    #[serde(default)]
    pub expires_in: Option<u64>,
}
