//! HTTP client of the Kinaxis API: a cached token refreshed once on a 401, the workbook
//! POST and worksheet pages; every failure classed and naming what it was fetching.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Response, StatusCode};
use secrecy::ExposeSecret;
use std::sync::Mutex;
use tokio::time::Instant;

use super::model::{TokenAnswer, WorkbookAnswer, WorkbookRequest};
use crate::error::{Error, Result, Step};
use crate::secrets::KinaxisCredentials;

/// Where worksheet pages are read: community clients disagree, so it is configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingStyle {
    /// `GET …/worksheet?queryId=…&workbookName=…&Scope=…&worksheetName=…&startRow=n&pageSize=k`
    Query,
    /// `GET …/worksheet/{QueryID}?startRow=n&numRows=k`
    Path,
}

#[derive(Debug, Clone)]
pub struct KinaxisOptions {
    /// `https://{host}/{instance}`
    pub base_url: String,
    pub page_size: u64,
    pub pages_in_flight: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub paging: PagingStyle,
}

impl Default for KinaxisOptions {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            page_size: 5000,
            pages_in_flight: 4,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            paging: PagingStyle::Query,
        }
    }
}

/// Which worksheet a page belongs to.
#[derive(Debug, Clone)]
pub struct WorksheetRef {
    pub workbook_name: String,
    pub workbook_scope: String,
    pub worksheet_name: String,
    pub query_id: String,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// Tokens are refreshed this long before Kinaxis says they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
const DEFAULT_TOKEN_LIFETIME: u64 = 3600;

pub struct KinaxisClient {
    http: reqwest::Client,
    credentials: KinaxisCredentials,
    options: KinaxisOptions,
    token: Mutex<Option<Token>>,
}

impl KinaxisClient {
    pub fn new(credentials: KinaxisCredentials, options: KinaxisOptions) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| Error::permanent(Step::Config, "building the Kinaxis HTTP client").caused_by(e))?;
        Ok(Self { http, credentials, options, token: Mutex::new(None) })
    }

    pub fn options(&self) -> &KinaxisOptions {
        &self.options
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.options.base_url.trim_end_matches('/'))
    }

    /// A valid bearer token, from the cache while it is fresh.
    ///
    /// No lock is held while a token is requested: page requests in flight are polled by
    /// one stream, and a request suspended while holding a lock would block every other
    /// (a deadlock seen with a page re-fetch during a token refresh). Two requests may
    /// then fetch a token at the same moment; the later one is kept.
    async fn token(&self) -> Result<String> {
        let fresh = self
            .token
            .lock()
            .ok()
            .and_then(|cached| cached.as_ref().filter(|t| Instant::now() < t.refresh_at).map(|t| t.value.clone()));
        if let Some(value) = fresh {
            return Ok(value);
        }
        let response = self
            .http
            .post(self.url("oauth2/token"))
            .basic_auth(&self.credentials.client_id, Some(self.credentials.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| transport(e, "requesting a Kinaxis token"))?;
        let response = check_status(response, "requesting a Kinaxis token").await?;
        let body = response.bytes().await.map_err(|e| transport(e, "reading the Kinaxis token"))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Error::permanent(Step::Fetch, "the Kinaxis token answer is not the expected JSON").caused_by(e)
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME));
        let refresh_in = lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2));
        let value = answer.access_token;
        if let Ok(mut cached) = self.token.lock() {
            *cached = Some(Token { value: value.clone(), refresh_at: Instant::now() + refresh_in });
        }
        Ok(value)
    }

    /// Forgets `used` if it is still the cached token, so the next call fetches a new one.
    fn forget_token(&self, used: &str) {
        if let Ok(mut cached) = self.token.lock() {
            if cached.as_ref().is_some_and(|t| t.value == used) {
                *cached = None;
            }
        }
    }

    /// Sends a data request with a bearer token; on a 401, once more with a fresh token.
    async fn send_authorized<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
    {
        for attempt in 0..2 {
            let token = self.token().await?;
            let response = build(&token).send().await.map_err(|e| transport(e, what))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return check_status(response, what).await;
            }
            if attempt == 0 {
                tracing::info!(what, "Kinaxis refused the token; fetching a new one");
                self.forget_token(&token);
            }
        }
        Err(Error::permanent(Step::Fetch, format!("{what}: Kinaxis refused a freshly issued token (401 twice)")))
    }

    /// `POST integration/V1/data/workbook`: the worksheets' columns, totals and first rows.
    pub async fn workbook(&self, request: &WorkbookRequest) -> Result<WorkbookAnswer> {
        let what = format!("reading workbook {:?}", request.workbook_parameters.workbook.name);
        let url = self.url("integration/V1/data/workbook");
        let response =
            self.send_authorized(&what, |token| self.http.post(&url).bearer_auth(token).json(request)).await?;
        let body = response.bytes().await.map_err(|e| transport(e, &what))?;
        serde_json::from_slice(&body).map_err(|e| data_fault(e, &what))
    }

    /// One page of a worksheet as the raw body; parsed by the caller without copying.
    pub async fn page(&self, sheet: &WorksheetRef, start_row: u64, rows: u64) -> Result<Bytes> {
        let what = format!("reading worksheet {:?} rows from {start_row}", sheet.worksheet_name);
        let query_id = sheet.query_id.trim_start_matches('#');
        let response = self
            .send_authorized(&what, |token| {
                let request = match self.options.paging {
                    PagingStyle::Query => self.http.get(self.url("integration/V1/data/worksheet")).query(&[
                        ("queryId", query_id),
                        ("workbookName", sheet.workbook_name.as_str()),
                        ("Scope", sheet.workbook_scope.as_str()),
                        ("worksheetName", sheet.worksheet_name.as_str()),
                        ("startRow", start_row.to_string().as_str()),
                        ("pageSize", rows.to_string().as_str()),
                    ]),
                    PagingStyle::Path => self
                        .http
                        .get(self.url(&format!("integration/V1/data/worksheet/{query_id}")))
                        .query(&[("startRow", start_row), ("numRows", rows)]),
                };
                request.bearer_auth(token)
            })
            .await?;
        response.bytes().await.map_err(|e| transport(e, &what))
    }
}

/// A network-level failure: always worth another try.
fn transport(err: reqwest::Error, what: &str) -> Error {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    Error::transient(Step::Fetch, format!("{what}: {kind}")).caused_by(err.without_url())
}

/// A body Kinaxis cut short or that is not JSON is transient (a cut connection looks the
/// same); JSON of the wrong shape is permanent.
pub fn data_fault(err: serde_json::Error, what: &str) -> Error {
    use serde_json::error::Category;
    match err.classify() {
        Category::Eof | Category::Syntax | Category::Io => {
            Error::transient(Step::Fetch, format!("{what}: the answer is cut short or not JSON")).caused_by(err)
        }
        Category::Data => {
            Error::permanent(Step::Fetch, format!("{what}: the answer has an unexpected shape")).caused_by(err)
        }
    }
}

/// Non-success statuses as classed errors: 5xx, 429 and 408 transient (with `Retry-After`),
/// 403 and 404 permanent and named, other 4xx permanent with the start of the body.
async fn check_status(response: Response, what: &str) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    let transient =
        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT;
    let message = match status {
        StatusCode::FORBIDDEN => format!("{what}: Kinaxis answered 403: the integration user has no right to it"),
        StatusCode::NOT_FOUND => format!("{what}: Kinaxis answered 404: unknown workbook, worksheet or scenario"),
        StatusCode::UNAUTHORIZED => format!("{what}: Kinaxis answered 401: client id or secret refused"),
        _ => format!("{what}: Kinaxis answered {status}: {snippet}"),
    };
    let err = if transient {
        Error::transient(Step::Fetch, message).with_retry_after(retry_after)
    } else {
        Error::permanent(Step::Fetch, message)
    };
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_cut_short_is_transient_and_a_wrong_shape_is_permanent() {
        let cut = serde_json::from_slice::<WorkbookAnswer>(br#"{"Worksheets":[{"Name":"#).unwrap_err();
        assert!(data_fault(cut, "w").is_transient());
        let shape = serde_json::from_slice::<WorkbookAnswer>(br#"{"Worksheets":7}"#).unwrap_err();
        assert!(!data_fault(shape, "w").is_transient());
    }
}
