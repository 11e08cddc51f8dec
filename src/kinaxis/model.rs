//! The Kinaxis workbook API's JSON, as serde types.

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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkbookAnswer {
    pub worksheets: Vec<WorksheetAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorksheetAnswer {
    pub name: String,
    #[serde(default)]
    pub query_handle: Option<QueryHandle>,
    pub total_row_count: u64,
    pub columns: Vec<Column>,
    #[serde(default)]
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueryHandle {
    #[serde(rename = "QueryID")]
    pub query_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Column {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Row {
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}
