//! Kinaxis Maestro REST API simulator, written from `shared/kinaxis-api.md`: OAuth
//! client-credentials token, workbook POST and worksheet paging with deterministic
//! planned-order rows full of awkward values, bulk export of a table in delimited pages,
//! and fault injection (errors inside a 200, page caps, revoked tokens, rotated secrets…). A dev tool for local runs, tests and benchmarks; never deployed.
//!
//! It prints `listening on http://127.0.0.1:PORT` as its first line.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const USAGE: &str = "kinaxis-sim [--port P] [--rows N] [--first-page K] [--worksheets 'A,B'] \
[--workbook NAME] [--client-id ID] [--client-secret S] [--token-ttl SECS] [--latency-ms MS] \
[--fail-first K] [--expire-token-after-ms MS] [--truncate-calls 'N,M'] [--workbook-status CODE] \
[--page-status CODE] [--short-by N] [--bad-width-row R] [--reject-all-tokens] [--vary-per-workbook-call] [--page-cap N] [--revoke-on-issue] [--markup-values] \
[--throttle-calls 'N,M'] [--throttle-status 429|408] [--retry-after SECONDS|HTTP-DATE] \
[--table NS::NAME] [--error-in-200 script-workbook|no-worksheets|script-page|no-rows|bulk-failure|bulk-partial|error-rows-page] \
[--rotate-secret-after-tokens N --rotated-secret S] [--omit-worksheets 'A,B'] [--redirect-to BASE-URL]";

/// The table bulk export reads, and the worksheet column each field takes its values from.
const TABLE_FIELDS: [(&str, usize); 6] =
    [("Order.Id", 0), ("Part.Name", 1), ("Site.Value", 2), ("Quantity", 3), ("DueDate", 4), ("Description", 5)];

#[derive(Debug, Clone)]
struct Settings {
    port: u16,
    rows: u64,
    first_page: u64,
    worksheets: Vec<String>,
    workbook: String,
    client_id: String,
    client_secret: String,
    token_ttl: u64,
    latency: Duration,
    /// The first K data calls (workbook and pages) answer 503.
    fail_first: u64,
    /// A token is refused (401) once it is this old, whatever `expires_in` promised:
    /// a token expiring or revoked mid-export.
    expire_token_after: Option<Duration>,
    /// Data calls (1-based) whose JSON body is cut in half.
    truncate_calls: HashSet<u64>,
    workbook_status: Option<u16>,
    page_status: Option<u16>,
    /// TotalRowCount claims this many more rows than are served.
    short_by: u64,
    /// This row gets one value too many.
    bad_width_row: Option<u64>,
    /// Every data call answers 401, whatever the token.
    reject_all_tokens: bool,
    /// The rows of the workbook answer carry the workbook call's number as Quantity: two
    /// exports of one job differ, as two reads of a plan being edited do.
    vary_per_workbook_call: bool,
    /// A page request is served at most this many rows, whatever pageSize asks (servers cap
    /// page sizes; kinaxis-api.md: "advance by the rows received").
    page_cap: Option<u64>,
    /// Issuing a token revokes every token issued before it.
    revoke_on_issue: bool,
    /// Data calls (1-based) answered `throttle_status` with `Retry-After: retry_after`.
    throttle_calls: HashSet<u64>,
    throttle_status: u16,
    retry_after: Option<String>,
    /// `Namespace::Name` of the one table bulk export knows.
    table: String,
    /// An error answered inside an HTTP 200 (kinaxis-api.md, "Errors inside a 200").
    error_in_200: Option<String>,
    /// After this many tokens are issued, only `rotated_secret` is accepted: the secret was
    /// rotated on the Kinaxis side (and, by the test, in the secret store).
    rotate_secret_after_tokens: Option<u64>,
    rotated_secret: String,
    /// Worksheets left out of the workbook answer without a word, though asked for.
    omit_worksheets: Vec<String>,
    /// Every API call (token included) answered `307 Temporary Redirect` to the same path
    /// under this base: a moved or hijacked endpoint.
    redirect_to: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 0,
            rows: 1000,
            first_page: 500,
            worksheets: vec!["Planned Orders".into()],
            workbook: "PlannedOrders Export".into(),
            client_id: "relay-client".into(),
            client_secret: "relay-secret".into(),
            token_ttl: 3600,
            latency: Duration::ZERO,
            fail_first: 0,
            expire_token_after: None,
            truncate_calls: HashSet::new(),
            workbook_status: None,
            page_status: None,
            short_by: 0,
            bad_width_row: None,
            reject_all_tokens: false,
            vary_per_workbook_call: false,
            page_cap: None,
            revoke_on_issue: false,
            throttle_calls: HashSet::new(),
            throttle_status: 429,
            retry_after: None,
            table: "Mfg::PlannedOrder".into(),
            error_in_200: None,
            rotate_secret_after_tokens: None,
            rotated_secret: "rotated-secret".into(),
            omit_worksheets: Vec::new(),
            redirect_to: None,
        }
    }
}

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        if flag == "--reject-all-tokens" {
            s.reject_all_tokens = true;
            continue;
        }
        if flag == "--vary-per-workbook-call" {
            s.vary_per_workbook_call = true;
            continue;
        }
        if flag == "--revoke-on-issue" {
            s.revoke_on_issue = true;
            continue;
        }
        if flag == "--markup-values" {
            MARKUP_VALUES.store(true, Ordering::Relaxed);
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag} {v:?} is not a whole number"));
        match flag.as_str() {
            "--port" => s.port = num(&value)? as u16,
            "--rows" => s.rows = num(&value)?,
            "--first-page" => s.first_page = num(&value)?,
            "--worksheets" => s.worksheets = value.split(',').map(|w| w.trim().to_owned()).collect(),
            "--workbook" => s.workbook = value,
            "--client-id" => s.client_id = value,
            "--client-secret" => s.client_secret = value,
            "--token-ttl" => s.token_ttl = num(&value)?,
            "--latency-ms" => s.latency = Duration::from_millis(num(&value)?),
            "--fail-first" => s.fail_first = num(&value)?,
            "--expire-token-after-ms" => s.expire_token_after = Some(Duration::from_millis(num(&value)?)),
            "--truncate-calls" => {
                s.truncate_calls = value.split(',').map(|v| num(v.trim())).collect::<Result<_, _>>()?
            }
            "--workbook-status" => s.workbook_status = Some(num(&value)? as u16),
            "--page-status" => s.page_status = Some(num(&value)? as u16),
            "--short-by" => s.short_by = num(&value)?,
            "--bad-width-row" => s.bad_width_row = Some(num(&value)?),
            "--page-cap" => s.page_cap = Some(num(&value)?),
            "--throttle-calls" => {
                s.throttle_calls = value.split(',').map(|v| num(v.trim())).collect::<Result<_, _>>()?
            }
            "--throttle-status" => s.throttle_status = num(&value)? as u16,
            "--retry-after" => s.retry_after = Some(value),
            "--table" => s.table = value,
            "--error-in-200" => s.error_in_200 = Some(value),
            "--rotate-secret-after-tokens" => s.rotate_secret_after_tokens = Some(num(&value)?),
            "--rotated-secret" => s.rotated_secret = value,
            "--omit-worksheets" => s.omit_worksheets = value.split(',').map(|w| w.trim().to_owned()).collect(),
            "--redirect-to" => s.redirect_to = Some(value.trim_end_matches('/').to_owned()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(s)
}

#[derive(Default)]
struct Counters {
    token_calls: AtomicU64,
    data_calls: AtomicU64,
    workbook_calls: AtomicU64,
    page_calls: AtomicU64,
    unauthorized: AtomicU64,
    unavailable: AtomicU64,
    tokens_issued: AtomicU64,
    bulk_exports: AtomicU64,
    bulk_pages: AtomicU64,
    finish_calls: AtomicU64,
}

/// A bulk export started and not yet finished.
struct BulkExport {
    fields: Vec<usize>,
}

struct State {
    settings: Settings,
    counters: Counters,
    /// Issued tokens and when.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Bulk exports by id (without the `#`).
    exports: Mutex<HashMap<String, BulkExport>>,
}

impl State {
    fn error_in_200(&self, kind: &str) -> bool {
        self.settings.error_in_200.as_deref() == Some(kind)
    }
}

const COLUMNS: [&str; 6] = ["Order", "Part", "Site", "Quantity", "DueDate", "Description"];

/// `--markup-values`: descriptions from `MARKUP_DESCRIPTIONS`, for a file format with markup
/// (XML). A process-wide switch, as `fill_row` is called from every handler.
static MARKUP_VALUES: AtomicBool = AtomicBool::new(false);

/// Markup characters, references that must stay text, controls XML cannot hold, line
/// breaks and tabs, Latin-1 and beyond, an empty value: each in any 10 rows.
const MARKUP_DESCRIPTIONS: [&str; 10] = [
    "<b>bold</b> & \"double\" 'single'",
    "&amp; &#38; &lt; ]]> <![CDATA[x]]>",
    "bell\u{7} nul\u{0} esc\u{1B} vt\u{B} ff\u{C} us\u{1F} noncharacter\u{FFFF}",
    "tab\there CRLF\r\nCR\rLF\nend",
    "Grüße ÄÖÜ ß é ÿ ¤",
    "€ Łódź 東京 🚚",
    "del\u{7F} c1\u{85}\u{9F} nbsp\u{A0}",
    "",
    "  spaces around  ",
    "plain",
];

/// Row `i` of worksheet `w`: deterministic, and every awkward value appears in any 20 rows.
fn row(w: usize, i: u64) -> Vec<String> {
    let mut values = Default::default();
    fill_row(w, i, &mut values);
    values.to_vec()
}

/// Row `i` of worksheet `w` written into `values`, whose strings are reused from row to
/// row: a page renders without allocating per value (allocation was half the simulator's
/// CPU, which benchmarks share with what they measure).
fn fill_row(w: usize, i: u64, values: &mut [String; 6]) {
    use std::fmt::Write;
    let site = ["", "SITE-A", "Werk Köln", "SITE,B"][(i % 4) as usize];
    let description = if MARKUP_VALUES.load(Ordering::Relaxed) {
        MARKUP_DESCRIPTIONS[(i % 10) as usize]
    } else {
        ["Standard order", "Contains \"quotes\"", "Line one\r\nLine two", "Grüße aus 東京 🚚", ""][(i % 5) as usize]
    };
    values.iter_mut().for_each(String::clear);
    // Writing to a String cannot fail.
    let _ = write!(values[0], "PO-{w}-{i:08}");
    let _ = write!(values[1], "P-{:05}", (i * 7919) % 100_000);
    values[2].push_str(site);
    let _ = write!(values[3], "{}.{:03}", i % 1000, (i * 37) % 1000);
    let _ = match i % 7 {
        0..=2 => write!(values[4], "2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
        3 => values[4].write_str("Undefined"),
        4 => values[4].write_str("Past"),
        5 => values[4].write_str("Future"),
        _ => values[4].write_str("Today"),
    };
    values[5].push_str(description);
}

/// Rows `start..start + count` (as far as there are rows) as the API writes them,
/// `[{"Values":[…]},…]`, byte for byte what serializing `rows_out` gives, straight into `out`.
fn write_rows(state: &State, w: usize, start: u64, count: u64, out: &mut Vec<u8>) {
    let mut values: [String; 6] = Default::default();
    out.push(b'[');
    for i in start..(start + count).min(state.settings.rows) {
        if i > start {
            out.push(b',');
        }
        fill_row(w, i, &mut values);
        out.extend_from_slice(b"{\"Values\":[");
        for (k, value) in values.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            write_json_str(out, value);
        }
        if state.settings.bad_width_row == Some(i) {
            out.extend_from_slice(b",\"extra\"");
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
}

fn write_json_str(out: &mut Vec<u8>, value: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A row as the API writes it.
#[derive(serde::Serialize)]
struct RowOut {
    #[serde(rename = "Values")]
    values: Vec<String>,
}

fn rows_out(state: &State, w: usize, start: u64, count: u64, version: Option<u64>) -> Vec<RowOut> {
    let served = state.settings.rows;
    (start..(start + count).min(served))
        .map(|i| {
            let mut values = row(w, i);
            if let Some(version) = version {
                values[3] = version.to_string();
            }
            if state.settings.bad_width_row == Some(i) {
                values.push("extra".into());
            }
            RowOut { values }
        })
        .collect()
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}

fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer(status, json!({ "Message": message }))
}

fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |b: &u8| (*b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the bearer token of a data call; `None` when it is accepted.
fn refuse_token(state: &State, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let tokens = state.tokens.lock().ok()?;
    let accepted = !state.settings.reject_all_tokens
        && token
            .as_ref()
            .and_then(|t| tokens.get(t))
            .is_some_and(|issued| state.settings.expire_token_after.is_none_or(|life| issued.elapsed() < life));
    if accepted {
        None
    } else {
        state.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        Some(error(401, "token expired or invalid"))
    }
}

/// The fault for this data call, if any: 503 for the first K calls; the throttled calls'
/// status with their Retry-After.
fn injected_unavailable(state: &State, call: u64) -> Option<Response<Full<Bytes>>> {
    if state.settings.throttle_calls.contains(&call) {
        state.counters.unavailable.fetch_add(1, Ordering::SeqCst);
        let mut response = error(state.settings.throttle_status, "throttled (injected)");
        if let Some(after) = state.settings.retry_after.as_deref().and_then(|a| a.parse().ok()) {
            response.headers_mut().insert("retry-after", after);
        }
        return Some(response);
    }
    (call <= state.settings.fail_first).then(|| {
        state.counters.unavailable.fetch_add(1, Ordering::SeqCst);
        error(503, "service unavailable (injected)")
    })
}

/// The JSON answer, or its first half when this call is one to cut short.
fn json_answer(state: &State, call: u64, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    bytes_answer(state, call, serde_json::to_vec(body).unwrap_or_default())
}

/// As `json_answer`, for a body already written.
fn bytes_answer(state: &State, call: u64, mut bytes: Vec<u8>) -> Response<Full<Bytes>> {
    if state.settings.truncate_calls.contains(&call) {
        bytes.truncate(bytes.len() / 2);
    }
    whole_answer(bytes)
}

/// A 200 with this JSON body, never cut short.
fn whole_answer(bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if !state.settings.latency.is_zero() {
        tokio::time::sleep(state.settings.latency).await;
    }
    let path = req.uri().path().to_owned();
    let base = path.find("/oauth2/").or_else(|| path.find("/integration/V1/")).unwrap_or(0);
    let endpoint = path[base..].to_owned();
    if let Some(elsewhere) = state.settings.redirect_to.as_deref().filter(|_| !endpoint.starts_with("/_sim/")) {
        let mut moved = error(307, "moved");
        let location = format!("{elsewhere}{endpoint}");
        if let Ok(value) = location.parse() {
            moved.headers_mut().insert("location", value);
        }
        return Ok(moved);
    }
    let response = match (req.method().clone(), endpoint.as_str()) {
        (Method::POST, "/oauth2/token") => token(&state, req).await,
        (Method::POST, "/integration/V1/data/workbook") => workbook(&state, req).await,
        (Method::GET, "/integration/V1/data/worksheet") => page(&state, req, None),
        (Method::GET, p) if p.starts_with("/integration/V1/data/worksheet/") => {
            let id = p.trim_start_matches("/integration/V1/data/worksheet/").to_owned();
            page(&state, req, Some(percent_decode(&id)))
        }
        (Method::POST, "/integration/V1/bulk/export") => bulk_export(&state, req).await,
        (Method::GET, p) if p.starts_with("/integration/V1/bulk/export/") => {
            let id = percent_decode(p.trim_start_matches("/integration/V1/bulk/export/"));
            bulk_page(&state, req, &id)
        }
        (Method::GET, "/_sim/stats") => answer(
            StatusCode::OK,
            json!({
                "tokenCalls": state.counters.token_calls.load(Ordering::SeqCst),
                "dataCalls": state.counters.data_calls.load(Ordering::SeqCst),
                "workbookCalls": state.counters.workbook_calls.load(Ordering::SeqCst),
                "pageCalls": state.counters.page_calls.load(Ordering::SeqCst),
                "unauthorized": state.counters.unauthorized.load(Ordering::SeqCst),
                "unavailable": state.counters.unavailable.load(Ordering::SeqCst),
                "bulkExports": state.counters.bulk_exports.load(Ordering::SeqCst),
                "bulkPages": state.counters.bulk_pages.load(Ordering::SeqCst),
                "finishCalls": state.counters.finish_calls.load(Ordering::SeqCst),
                "openExports": state.exports.lock().map(|e| e.len()).unwrap_or_default(),
            }),
        ),
        (_, _) => error(404, "no such endpoint"),
    };
    Ok(response)
}

async fn token(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let n = state.counters.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let issued = state.counters.tokens_issued.load(Ordering::SeqCst);
    let secret = match state.settings.rotate_secret_after_tokens {
        Some(after) if issued >= after => &state.settings.rotated_secret,
        _ => &state.settings.client_secret,
    };
    let expected = format!("{}:{secret}", state.settings.client_id);
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64).ok());
    if given.as_deref() != Some(expected.as_bytes()) {
        return error(401, "invalid client credentials");
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !String::from_utf8_lossy(&body).contains("grant_type=client_credentials") {
        return error(400, "grant_type must be client_credentials");
    }
    state.counters.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("sim-token-{n}");
    if let Ok(mut tokens) = state.tokens.lock() {
        if state.settings.revoke_on_issue {
            tokens.clear();
        }
        tokens.insert(token.clone(), Instant::now());
    }
    answer(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": state.settings.token_ttl}),
    )
}

async fn workbook(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let call = state.counters.data_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let workbook_call = state.counters.workbook_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let version = state.settings.vary_per_workbook_call.then_some(workbook_call);
    if let Some(refused) = refuse_token(state, &req) {
        return refused;
    }
    if let Some(unavailable) = injected_unavailable(state, call) {
        return unavailable;
    }
    if let Some(status) = state.settings.workbook_status {
        return error(status, "workbook status (injected)");
    }
    if state.error_in_200("script-workbook") {
        let script = json!({"Code": "WS-404", "Message": "Worksheet 'Planned Orders' was not found (injected)"});
        return answer(StatusCode::OK, json!({ "ScriptError": script }));
    }
    if state.error_in_200("no-worksheets") {
        return answer(StatusCode::OK, json!({ "Message": "no worksheets (injected)" }));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "request body is not JSON");
    };
    let params = &request["WorkbookParameters"];
    if params["Workbook"]["Name"].as_str() != Some(state.settings.workbook.as_str()) {
        return error(404, "unknown workbook");
    }
    let wanted: Vec<String> = params["WorksheetNames"]
        .as_array()
        .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut sheets = Vec::new();
    for (w, name) in state.settings.worksheets.iter().enumerate() {
        if (!wanted.is_empty() && !wanted.contains(name)) || state.settings.omit_worksheets.contains(name) {
            continue;
        }
        sheets.push(json!({
            "Name": name,
            "QueryHandle": { "QueryID": format!("#q{w}") },
            "TotalRowCount": state.settings.rows + state.settings.short_by,
            "Columns": COLUMNS.iter().map(|c| json!({"Id": c, "IsEditable": false})).collect::<Vec<_>>(),
            "Rows": rows_out(state, w, 0, state.settings.first_page, version),
        }));
    }
    if let Some(missing) = wanted.iter().find(|n| !state.settings.worksheets.contains(n)) {
        return error(404, &format!("unknown worksheet {missing}"));
    }
    json_answer(state, call, &json!({ "Worksheets": sheets }))
}

/// An answer of the simulator.
type Reply = Response<Full<Bytes>>;

/// What every page call goes through first, worksheet or bulk: counted, then the token,
/// the injected unavailability and page status; `Ok` with the call's number and query.
fn page_call(
    state: &State,
    req: &Request<Incoming>,
    counter: &AtomicU64,
) -> Result<(u64, HashMap<String, String>), Box<Reply>> {
    let call = state.counters.data_calls.fetch_add(1, Ordering::SeqCst) + 1;
    counter.fetch_add(1, Ordering::SeqCst);
    if let Some(refused) = refuse_token(state, req) {
        return Err(Box::new(refused));
    }
    if let Some(unavailable) = injected_unavailable(state, call) {
        return Err(Box::new(unavailable));
    }
    if let Some(status) = state.settings.page_status {
        return Err(Box::new(error(status, "page status (injected)")));
    }
    Ok((call, query_params(req)))
}

fn page(state: &State, req: Request<Incoming>, path_id: Option<String>) -> Response<Full<Bytes>> {
    let (call, params) = match page_call(state, &req, &state.counters.page_calls) {
        Ok(call) => call,
        Err(refused) => return *refused,
    };
    let query_id = path_id.or_else(|| params.get("queryId").cloned()).unwrap_or_default();
    let Some(w) = query_id
        .trim_start_matches('#')
        .strip_prefix('q')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|w| *w < state.settings.worksheets.len())
    else {
        return error(404, "unknown query");
    };
    let number = |key: &str| params.get(key).and_then(|v| v.parse::<u64>().ok());
    let (Some(start), Some(count)) = (number("startRow"), number("pageSize").or_else(|| number("numRows"))) else {
        return error(400, "startRow and pageSize are required");
    };
    if state.error_in_200("script-page") {
        let script = json!({"Code": "Q-17", "Message": "query expired (injected)"});
        return answer(StatusCode::OK, json!({ "ScriptError": script }));
    }
    if state.error_in_200("no-rows") {
        return answer(StatusCode::OK, json!({ "Status": "Success" }));
    }
    let count = state.settings.page_cap.map_or(count, |cap| count.min(cap));
    if state.error_in_200("error-rows-page") {
        let rows = rows_out(state, w, start, count, None);
        return answer(
            StatusCode::OK,
            json!({ "Rows": rows.iter().map(|r| json!({"Values": r.values})).collect::<Vec<_>>(), "ErrorRowCount": 1 }),
        );
    }
    let mut body = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(100_000) * 128 + 16);
    body.extend_from_slice(b"{\"Rows\":");
    write_rows(state, w, start, count, &mut body);
    body.push(b'}');
    bytes_answer(state, call, body)
}

/// `POST …/bulk/export`: `{"Scenario", "Table": {"Namespace", "Name"}, "Fields", "Filter"}`.
async fn bulk_export(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let call = state.counters.data_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let n = state.counters.bulk_exports.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(refused) = refuse_token(state, &req) {
        return refused;
    }
    if let Some(unavailable) = injected_unavailable(state, call) {
        return unavailable;
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "request body is not JSON");
    };
    let table = format!(
        "{}::{}",
        request["Table"]["Namespace"].as_str().unwrap_or_default(),
        request["Table"]["Name"].as_str().unwrap_or_default()
    );
    if table != state.settings.table {
        return error(404, &format!("unknown table {table}"));
    }
    let Some(names) = request["Fields"].as_array().filter(|f| !f.is_empty()) else {
        return error(400, "Fields are required");
    };
    let mut fields = Vec::new();
    for name in names {
        let name = name.as_str().unwrap_or_default();
        match TABLE_FIELDS.iter().find(|(field, _)| *field == name) {
            Some((_, column)) => fields.push(*column),
            None => return error(400, &format!("unknown field {name}")),
        }
    }
    let total = state.settings.rows + state.settings.short_by;
    if state.error_in_200("bulk-failure") {
        return answer(
            StatusCode::OK,
            json!({"ExportId": format!("#e{n}"), "TotalRows": 0, "Status": "Failure", "Message": "export failed (injected)"}),
        );
    }
    if let Ok(mut exports) = state.exports.lock() {
        exports.insert(format!("e{n}"), BulkExport { fields });
    }
    answer(StatusCode::OK, json!({"ExportId": format!("#e{n}"), "TotalRows": total, "Status": "Success"}))
}

/// `GET …/bulk/export/{ExportId}?startRow&pageSize&delimiter&finishExport`: rows as one
/// string each. The id is accepted with its `#` (sent as `%23`) or without, as the two
/// public clients send it. A finishing call releases the export.
fn bulk_page(state: &State, req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
    let (call, params) = match page_call(state, &req, &state.counters.bulk_pages) {
        Ok(call) => call,
        Err(refused) => return *refused,
    };
    let number = |key: &str| params.get(key).and_then(|v| v.parse::<u64>().ok());
    let (Some(start), Some(count)) = (number("startRow"), number("pageSize")) else {
        return error(400, "startRow and pageSize are required");
    };
    let Some(delimiter) = params.get("delimiter").filter(|d| !d.is_empty()) else {
        return error(400, "delimiter is required");
    };
    let finish = params.get("finishExport").is_some_and(|f| f.eq_ignore_ascii_case("true"));
    let id = id.trim_start_matches('#');
    let Ok(mut exports) = state.exports.lock() else {
        return error(500, "state lock");
    };
    let Some(export) = exports.get(id) else {
        return error(404, "unknown or finished export");
    };
    let count = state.settings.page_cap.map_or(count, |cap| count.min(cap));
    let served_end = (start + count).min(state.settings.rows).max(start);
    let fields = export.fields.clone();
    // kinaxis-api.md assumes finishing ends the export: released on any finishing call,
    // whatever it asked for, so a page read after it (in flight, or again) is refused.
    if finish {
        state.counters.finish_calls.fetch_add(1, Ordering::SeqCst);
        exports.remove(id);
    }
    drop(exports);
    if state.error_in_200("no-rows") {
        return answer(StatusCode::OK, json!({ "Status": "Success" }));
    }
    let (mut values, mut line): ([String; 6], String) = Default::default();
    let mut body = Vec::with_capacity(usize::try_from(served_end - start).unwrap_or(0).min(100_000) * 96 + 16);
    body.extend_from_slice(b"{\"Rows\":[");
    for i in start..served_end {
        if i > start {
            body.push(b',');
        }
        fill_row(0, i, &mut values);
        line.clear();
        for (k, &c) in fields.iter().enumerate() {
            if k > 0 {
                line.push_str(delimiter);
            }
            // The delimited form cannot hold a line break or the delimiter: a real table
            // exported this way would not have them either.
            let value = &values[c];
            if value.contains(['\r', '\n']) || value.contains(delimiter.as_str()) {
                line.push_str(&value.replace(['\r', '\n'], " ").replace(delimiter.as_str(), " "));
            } else {
                line.push_str(value);
            }
        }
        if state.settings.bad_width_row == Some(i) {
            line.push_str(delimiter);
            line.push_str("extra");
        }
        write_json_str(&mut body, &line);
    }
    body.push(b']');
    if state.error_in_200("bulk-partial") {
        // As before pages were written in place: this answer is never cut short.
        body.extend_from_slice(
            b",\"Status\":\"Partial Success\",\"ErrorRowCount\":2,\"Message\":\"2 rows could not be read (injected)\"}",
        );
        return whole_answer(body);
    }
    body.push(b'}');
    bytes_answer(state, call, body)
}

#[tokio::main]
async fn main() {
    let settings = match parse_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let address = SocketAddr::from(([127, 0, 0, 1], settings.port));
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("kinaxis-sim: cannot listen on {address}: {err}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(settings.port);
    println!("listening on http://127.0.0.1:{bound}");
    let state = Arc::new(State {
        settings,
        counters: Counters::default(),
        tokens: Mutex::new(HashMap::new()),
        exports: Mutex::new(HashMap::new()),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(state.clone(), req));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rows: u64, bad_width_row: Option<u64>) -> State {
        State {
            settings: Settings { rows, bad_width_row, ..Settings::default() },
            counters: Counters::default(),
            tokens: Mutex::new(HashMap::new()),
            exports: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn pages_written_in_place_are_byte_for_byte_the_serialized_rows() {
        let state = state(1_000, Some(37));
        for (w, start, count) in [(0, 0, 50), (1, 25, 100), (0, 990, 50), (0, 1_000, 10), (2, 3, 0)] {
            let mut written = Vec::new();
            write_rows(&state, w, start, count, &mut written);
            let serialized = serde_json::to_vec(&rows_out(&state, w, start, count, None)).expect("serialized");
            assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&serialized), "{w} {start} {count}");
        }
    }

    #[test]
    fn rows_filled_into_strings_reused_from_a_longer_row_are_the_documented_rows() {
        let mut values: [String; 6] = Default::default();
        for (w, i, expected) in [
            (0, 3, ["PO-0-00000003", "P-23757", "SITE,B", "3.111", "Undefined", "Grüße aus 東京 🚚"]),
            (1, 20, ["PO-1-00000020", "P-58380", "", "20.740", "Today", "Standard order"]),
            (2, 2, ["PO-2-00000002", "P-15838", "Werk Köln", "2.074", "2026-03-03", "Line one\r\nLine two"]),
            (0, 14, ["PO-0-00000014", "P-10866", "Werk Köln", "14.518", "2026-03-15", ""]),
        ] {
            fill_row(7, 123_456_789, &mut values);
            fill_row(w, i, &mut values);
            assert_eq!(values, expected.map(String::from), "worksheet {w} row {i}");
        }
    }
}
