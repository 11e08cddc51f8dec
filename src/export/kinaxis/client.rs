//! HTTP client of the Kinaxis API: a cached token fetched by one request at a time however
//! many calls are in flight, refreshed once per call on a 401, the client secret read again
//! once when the token endpoint refuses it; the workbook POST, worksheet pages, bulk export
//! and its pages; every failure classed and naming what it was fetching.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use reqwest::{Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::model::{BulkExportRequest, TokenAnswer, WorkbookRequest};
use crate::error::{Error, Result, ResultExt, Step};
use crate::retry::retry_after;
use crate::secrets::{KinaxisCredentials, KinaxisLogin, RereadCredentials};

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
    /// Rows per bulk-export page: a row is one string, so pages can be larger.
    pub bulk_page_size: u64,
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
            bulk_page_size: 20_000,
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

#[derive(Clone)]
struct Token {
    value: SecretString,
    refresh_at: Instant,
}

/// A token request in flight, awaited by every call that needs a token meanwhile. Whoever
/// awaits it drives it, so a caller outside the stream of pages in flight cannot wait on a
/// request that nobody polls.
type TokenRequest = Shared<BoxFuture<'static, Result<(Token, Option<KinaxisCredentials>), Arc<Error>>>>;

struct TokenState {
    /// The credentials the next token request sends: those of the job, or those read again
    /// after the token endpoint refused them.
    credentials: KinaxisCredentials,
    current: Option<Token>,
    in_flight: Option<TokenRequest>,
}

/// Tokens are refreshed this long before Kinaxis says they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
const DEFAULT_TOKEN_LIFETIME: u64 = 3600;
/// A longer `expires_in` is read as this: the token is asked for again at least daily, and
/// no arithmetic on the server's number can overflow.
const MAX_TOKEN_LIFETIME: u64 = 86_400;

pub struct KinaxisClient {
    http: reqwest::Client,
    reread: Option<RereadCredentials>,
    options: KinaxisOptions,
    token: Mutex<TokenState>,
}

impl KinaxisClient {
    pub fn new(login: impl Into<KinaxisLogin>, options: KinaxisOptions) -> Result<Self> {
        let login = login.into();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .or_permanent(Step::Config, "building the Kinaxis HTTP client")?;
        let token = TokenState { credentials: login.credentials, current: None, in_flight: None };
        Ok(Self { http, reread: login.reread, options, token: Mutex::new(token) })
    }

    pub fn options(&self) -> &KinaxisOptions {
        &self.options
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.options.base_url.trim_end_matches('/'))
    }

    fn token_state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.token.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A valid bearer token: from the cache while it is fresh, else from the one token
    /// request in flight (started here if there is none). A server that revokes older tokens
    /// when it issues one would otherwise refuse the calls holding a token fetched a moment
    /// earlier by a parallel refresh.
    async fn token(&self) -> Result<SecretString> {
        let request = {
            let mut state = self.token_state();
            if let Some(token) = state.current.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                return Ok(token.value.clone());
            }
            match &state.in_flight {
                Some(request) => request.clone(),
                None => {
                    let request = request_token(
                        self.http.clone(),
                        self.url("oauth2/token"),
                        state.credentials.clone(),
                        self.reread.clone(),
                    )
                    .boxed()
                    .shared();
                    state.in_flight = Some(request.clone());
                    request
                }
            }
        };
        let outcome = request.clone().await;
        let mut state = self.token_state();
        if state.in_flight.as_ref().is_some_and(|r| r.ptr_eq(&request)) {
            state.in_flight = None;
            if let Ok((token, reread)) = &outcome {
                state.current = Some(token.clone());
                if let Some(credentials) = reread {
                    state.credentials = credentials.clone();
                }
            }
        }
        outcome.map(|(t, _)| t.value).map_err(|e| unshared(&e))
    }

    /// Forgets `used` if it is still the cached token, so the next call fetches a new one;
    /// calls refused with it after a new one arrived simply take the new one.
    fn forget_token(&self, used: &SecretString) {
        let mut state = self.token_state();
        if state.current.as_ref().is_some_and(|t| t.value.expose_secret() == used.expose_secret()) {
            state.current = None;
        }
    }

    /// Sends a data request with a bearer token; on a 401, once more with a fresh token.
    async fn send_authorized<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
    {
        for attempt in 0..2 {
            let token = self.token().await?;
            let response = build(token.expose_secret()).send().await.map_err(|e| transport(e, what))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return check_status(response, what, Quote::Body).await;
            }
            if attempt == 0 {
                tracing::info!(what, "Kinaxis refused the token; fetching a new one");
                self.forget_token(&token);
            }
        }
        Err(Error::permanent(Step::Fetch, format!("{what}: Kinaxis refused a freshly issued token (401 twice)")))
    }

    /// `POST integration/V1/data/workbook`: the worksheets' columns, totals and first rows,
    /// as the raw body; parsed by the caller without copying.
    pub async fn workbook(&self, request: &WorkbookRequest) -> Result<Bytes> {
        let what = format!("reading workbook {:?}", request.workbook_parameters.workbook.name);
        let url = self.url("integration/V1/data/workbook");
        let response =
            self.send_authorized(&what, |token| self.http.post(&url).bearer_auth(token).json(request)).await?;
        response.bytes().await.map_err(|e| transport(e, &what))
    }

    /// `POST integration/V1/bulk/export`: starts a table export; the raw answer
    /// (`ExportId`, `TotalRows`, `Status`).
    pub async fn bulk_export(&self, request: &BulkExportRequest) -> Result<Bytes> {
        let what = format!("starting the bulk export of table {}::{}", request.table.namespace, request.table.name);
        let url = self.url("integration/V1/bulk/export");
        let response =
            self.send_authorized(&what, |token| self.http.post(&url).bearer_auth(token).json(request)).await?;
        response.bytes().await.map_err(|e| transport(e, &what))
    }

    /// One page of a bulk export: rows as strings of values split by `delimiter`.
    /// `finish` tells Kinaxis this is the last page it will be asked for.
    pub async fn bulk_page(
        &self,
        export_id: &str,
        start_row: u64,
        rows: u64,
        delimiter: char,
        finish: bool,
    ) -> Result<Bytes> {
        let what = format!("reading bulk export rows from {start_row}");
        let url = self.url(&format!("integration/V1/bulk/export/{}", path_segment(export_id)));
        let response = self
            .send_authorized(&what, |token| {
                self.http
                    .get(&url)
                    .query(&[
                        ("startRow", start_row.to_string().as_str()),
                        ("pageSize", rows.to_string().as_str()),
                        ("delimiter", delimiter.to_string().as_str()),
                        ("finishExport", if finish { "true" } else { "false" }),
                    ])
                    .bearer_auth(token)
            })
            .await?;
        read_page(response, &what).await
    }

    /// One page of a worksheet as the raw body; parsed by the caller without copying.
    pub async fn page(&self, sheet: &WorksheetRef, start_row: u64, rows: u64) -> Result<Bytes> {
        let what = format!("reading worksheet {:?} rows from {start_row}", sheet.worksheet_name);
        let response =
            self.send_authorized(&what, |token| self.page_request(sheet, start_row, rows).bearer_auth(token)).await?;
        read_page(response, &what).await
    }

    /// The page request in the configured paging style, without its token. The handle
    /// goes without its leading `#` (as docs/kinaxis-api.md's query form has it), encoded.
    fn page_request(&self, sheet: &WorksheetRef, start_row: u64, rows: u64) -> reqwest::RequestBuilder {
        let query_id = sheet.query_id.trim_start_matches('#');
        match self.options.paging {
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
                .get(self.url(&format!("integration/V1/data/worksheet/{}", path_segment(query_id))))
                .query(&[("startRow", start_row), ("numRows", rows)]),
        }
    }
}

/// A token; when the token endpoint refused the credentials and the ones read again were
/// accepted, those too, for the requests that follow.
async fn request_token(
    http: reqwest::Client,
    url: String,
    credentials: KinaxisCredentials,
    reread: Option<RereadCredentials>,
) -> Result<(Token, Option<KinaxisCredentials>), Arc<Error>> {
    let what = "requesting a Kinaxis token";
    let send = |credentials: &KinaxisCredentials| {
        http.post(&url)
            .basic_auth(&credentials.client_id, Some(credentials.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let mut response = send(&credentials).await.map_err(|e| Arc::new(transport(e, what)))?;
    let mut reread_credentials = None;
    if response.status() == StatusCode::UNAUTHORIZED {
        if let Some(reread) = reread {
            // The secret may have been rotated since the job read it: read it once more.
            let fresh = reread().await.map_err(Arc::new)?;
            let unchanged = fresh.client_id == credentials.client_id
                && fresh.client_secret.expose_secret() == credentials.client_secret.expose_secret();
            if unchanged {
                return Err(Arc::new(Error::permanent(
                    Step::Fetch,
                    format!(
                        "{what}: Kinaxis answered 401: client id or secret refused \
                         (read again from the secret store: unchanged)"
                    ),
                )));
            }
            tracing::info!("Kinaxis refused the client credentials; trying them as read again from the secret store");
            response = send(&fresh).await.map_err(|e| Arc::new(transport(e, what)))?;
            reread_credentials = Some(fresh);
        }
    }
    // The token endpoint's body may echo what was sent: only its error code is kept.
    let response = check_status(response, what, Quote::CodeOnly).await.map_err(Arc::new)?;
    let body = response.bytes().await.map_err(|e| Arc::new(transport(e, "reading the Kinaxis token")))?;
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
        Arc::new(Error::permanent(Step::Fetch, "the Kinaxis token answer is not the expected JSON").caused_by(e))
    })?;
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).min(MAX_TOKEN_LIFETIME));
    let refresh_in = lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2));
    Ok((Token { value: answer.access_token, refresh_at: Instant::now() + refresh_in }, reread_credentials))
}

/// A handle as one URL path segment: a `#` (or `/`, `?`, a space) left raw would end the
/// path, and the server would never see the rest.
fn path_segment(handle: &str) -> String {
    percent_encoding::utf8_percent_encode(handle, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The error a shared token request ended with, for each of its waiters: the same class,
/// step and text, the causes folded into the message.
fn unshared(err: &Error) -> Error {
    let mut message = err.message.clone();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    Error::new(err.class, err.step, message).with_retry_after(err.retry_after)
}

/// A network-level failure: always worth another try.
/// A page's body grown no further than this from its `Content-Length` before it arrives: a
/// header cannot make the worker reserve more than a page could hold.
const MAX_RESERVED_PAGE: u64 = 64 << 20;

/// A page's whole body in one buffer, its chunks copied in as they arrive: collected
/// first and joined at the end, the body would be held twice at once (several pages are in
/// flight; the export's memory, docs/performance.md).
async fn read_page(mut response: reqwest::Response, what: &str) -> Result<Bytes> {
    let expected = response.content_length().unwrap_or(0).min(MAX_RESERVED_PAGE);
    let mut body = bytes::BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, what))? {
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

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

/// How much of an error answer's body goes into the error (and so into logs and `failed/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// Its first 200 characters.
    Body,
    /// Only the error code it names (Kinaxis' `Code`, OAuth's `error`).
    CodeOnly,
}

/// The error code an error answer names, as a short token of safe characters.
fn error_code(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = ["Code", "code", "error"].iter().find_map(|k| value.get(k).and_then(|v| v.as_str())).unwrap_or("");
    let code: String =
        code.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).take(64).collect();
    if code.is_empty() {
        "no error code".to_owned()
    } else {
        format!("code {code}")
    }
}

/// Non-success statuses as classed errors: 5xx, 429 and 408 transient (with `Retry-After`),
/// 403 and 404 permanent and named, other 4xx permanent with the start of the body (or only
/// its error code, per `quote`).
async fn check_status(response: Response, what: &str, quote: Quote) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    if status.is_redirection() {
        // Never followed: the token request carries the client credentials. Host only, as a
        // redirect's query may hold anything.
        let host = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| reqwest::Url::parse(v).ok())
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "no absolute Location".to_owned());
        return Err(Error::permanent(
            Step::Fetch,
            format!("{what}: Kinaxis answered {status} redirecting to {host}; redirects are not followed"),
        ));
    }
    let body = response.text().await.unwrap_or_default();
    let snippet: String = match quote {
        Quote::Body => body.chars().take(200).collect(),
        Quote::CodeOnly => error_code(&body),
    };
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

    fn answered(status: u16, body: &'static str) -> Response {
        let response = lambda_http::http::Response::builder().status(status).body(body).unwrap();
        Response::from(response)
    }

    #[tokio::test]
    async fn the_token_endpoints_error_body_stays_out_of_the_error_but_its_code_and_status_are_named() {
        let body = r#"{"error": "invalid_client", "error_description": "client relay-client secret s3cr3t"}"#;
        let err = check_status(answered(400, body), "requesting a Kinaxis token", Quote::CodeOnly).await.unwrap_err();
        assert!(err.message.contains("400") && err.message.contains("code invalid_client"), "{}", err.message);
        assert!(!err.message.contains("s3cr3t") && !err.message.contains("relay-client"), "{}", err.message);
        let err = check_status(answered(400, "<html>s3cr3t</html>"), "token", Quote::CodeOnly).await.unwrap_err();
        assert!(err.message.contains("no error code") && !err.message.contains("s3cr3t"), "{}", err.message);
        // A data call's answer is quoted, as Kinaxis explains its refusals there.
        let err = check_status(answered(400, r#"{"Message": "bad scenario"}"#), "page", Quote::Body).await.unwrap_err();
        assert!(err.message.contains("bad scenario"), "{}", err.message);
    }

    #[test]
    fn handles_never_reach_a_url_with_a_raw_hash() {
        assert_eq!(path_segment("a1#b/c d"), "a1%23b%2Fc%20d");
        for paging in [PagingStyle::Query, PagingStyle::Path] {
            let options = KinaxisOptions { base_url: "https://k.example/ACME".into(), paging, ..Default::default() };
            let credentials = KinaxisCredentials { client_id: "c".into(), client_secret: "s".to_owned().into() };
            let client = KinaxisClient::new(credentials, options).unwrap();
            let sheet = WorksheetRef {
                workbook_name: "W #1".into(),
                workbook_scope: "Public".into(),
                worksheet_name: "S#2".into(),
                query_id: "#q#0".into(),
            };
            let url = client.page_request(&sheet, 5, 10).bearer_auth("t").build().unwrap().url().to_string();
            assert!(!url.contains('#'), "{url}");
            assert!(url.contains("q%230"), "{url}");
        }
    }

    #[test]
    fn a_body_cut_short_is_transient_and_a_wrong_shape_is_permanent() {
        let mut buffer = super::super::page::PageBuffer::default();
        let cut = buffer.parse_workbook(br#"{"Worksheets":[{"Name":"#).unwrap_err();
        assert!(data_fault(cut, "w").is_transient());
        let shape = buffer.parse_workbook(br#"{"Worksheets":7}"#).unwrap_err();
        assert!(!data_fault(shape, "w").is_transient());
    }
}
