//! The webhook function: source → size → credentials → authentication → content type →
//! fields → route → allow-list → budget → stage, answered in milliseconds with
//! `application/problem+json` on every error. Nothing is staged before every check passed,
//! and nothing but the source address and the size is looked at before authentication.
//! A scheduled start (`schedule`) takes the same fields → route → allow-list → budget →
//! stage for its configured request.

pub mod auth;
pub mod budget;
pub mod policy;
pub mod request;
pub mod schedule;

use std::net::IpAddr;
use std::time::Duration;

use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::{Body, LambdaEvent, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::Step;
use crate::job::{self, keys, JobRequest, Manifest};
use crate::ports::{CreateOutcome, ObjectStore};
use crate::routing::{RoutingTable, Target};
use crate::secrets::{parse_secret, CachedSecrets, SecretSource, WebhookCredentials};
use crate::telemetry::{self, Metric, MetricScope};
use auth::AuthMode;
use policy::{AllowList, Cidr};

/// What the webhook needs from configuration.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub secret_id: String,
    pub auth_mode: AuthMode,
    pub max_body_bytes: usize,
    pub timestamp_tolerance: Duration,
    pub routes: RoutingTable,
    /// The CloudFormation stack: a dimension of every metric.
    pub stack_name: String,
    /// Worksheets of a request that names none (`WORKSHEETS`); empty: such a request is a 400.
    pub default_worksheets: Vec<String>,
    /// Networks that may call (`ALLOWED_SOURCE_CIDRS`); empty: any source.
    pub allowed_sources: Vec<Cidr>,
    /// What each target accepts (`ALLOWED_REQUESTS`).
    pub allow_list: AllowList,
    /// Jobs per UTC day and `(fileName, target)` (`DAILY_JOB_BUDGET`); `None`: no budget.
    pub daily_job_budget: Option<u32>,
    /// Jobs per UTC day and target, all file names together (`DAILY_TARGET_BUDGET`).
    pub daily_target_budget: Option<u32>,
    /// The scheduled start (`SCHEDULE_MODE`); `None`: off, a scheduled start is refused.
    pub schedule: Option<schedule::ScheduleSettings>,
}

/// An HTTP answer before it is dressed for API Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds for a `Retry-After` header (a spent daily budget).
    pub retry_after: Option<u64>,
}

impl Answer {
    fn problem(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({
                "type": "about:blank",
                "title": status.canonical_reason().unwrap_or("Error"),
                "status": status.as_u16(),
                "detail": detail.into(),
            }),
            retry_after: None,
        }
    }

    /// A refusal that names the request field it is about.
    fn field_problem(status: StatusCode, field: &str, detail: impl Into<String>) -> Self {
        let mut answer = Self::problem(status, detail);
        answer.body["field"] = json!(field);
        answer
    }

    fn ok(status: StatusCode, body: Value) -> Self {
        Self { status, body, retry_after: None }
    }

    pub fn is_problem(&self) -> bool {
        !self.status.is_success()
    }

    pub fn into_response(self) -> Response<Body> {
        let content_type = if self.is_problem() { "application/problem+json" } else { "application/json" };
        let mut response = Response::new(Body::Text(self.body.to_string()));
        *response.status_mut() = self.status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert("content-type", value);
        }
        if let Some(value) = self.retry_after.and_then(|s| s.to_string().parse().ok()) {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}

/// The webhook's logic, generic over the bucket and the secret store.
pub struct Webhook<S, K> {
    store: S,
    secrets: CachedSecrets<K>,
    settings: WebhookSettings,
    /// When a misconfigured secret was last dropped from the cache.
    misconfigured_reread_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A misconfigured secret is read again at most this often: the fix is picked up by the
/// next request after it, while unauthenticated callers cannot turn every request into a
/// Secrets Manager call.
const MISCONFIGURED_REREAD: Duration = Duration::from_secs(10);

impl<S: ObjectStore, K: SecretSource> Webhook<S, K> {
    pub fn new(store: S, secrets: CachedSecrets<K>, settings: WebhookSettings) -> Self {
        Self { store, secrets, settings, misconfigured_reread_at: std::sync::Mutex::new(None) }
    }

    fn reread_misconfigured_secret(&self, secret_id: &str) {
        let mut last = self.misconfigured_reread_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|at| at.elapsed() >= MISCONFIGURED_REREAD) {
            self.secrets.invalidate(secret_id);
            *last = Some(std::time::Instant::now());
        }
    }

    /// The Lambda entry: an API Gateway request in, a response out; never an `Err`, so
    /// API Gateway never turns a failure into a bare 500.
    pub async fn handle_lambda(&self, request: lambda_http::Request) -> Response<Body> {
        self.handle_lambda_at(request, OffsetDateTime::now_utc()).await
    }

    /// As `handle_lambda`, with the clock given (tests at the edges of the time window).
    pub async fn handle_lambda_at(&self, request: lambda_http::Request, now: OffsetDateTime) -> Response<Body> {
        let source = source_ip(&request);
        let (parts, body) = request.into_parts();
        self.handle_from(source, &parts.headers, body.as_ref(), now).await.into_response()
    }

    /// The function's one entry: EventBridge Scheduler's event to the scheduled start, any
    /// other through lambda_http's own conversion of API Gateway events and responses (its
    /// `Adapter`, what `lambda_http::run` wraps a handler in), so the webhook answers as before.
    pub async fn handle_invocation(&self, event: LambdaEvent<Value>) -> Result<Value, lambda_http::Error> {
        use lambda_http::Service;
        let LambdaEvent { payload, context } = event;
        if let Some(start) = schedule::scheduled_start(&payload) {
            return Ok(self.start_on_schedule(&start?, OffsetDateTime::now_utc()).await?);
        }
        let request: lambda_http::request::LambdaRequest = serde_json::from_value(payload)?;
        let handler = lambda_http::service_fn(|request: lambda_http::Request| async move {
            Ok::<_, std::convert::Infallible>(self.handle_lambda(request).await)
        });
        let response = lambda_http::Adapter::from(handler).call(LambdaEvent::new(request, context)).await?;
        Ok(serde_json::to_value(response)?)
    }

    /// A request from an unknown source (benchmarks; refused when sources are restricted).
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Answer {
        self.handle_from(None, headers, body, OffsetDateTime::now_utc()).await
    }

    /// As `handle`, with the clock given (tests of the timestamp window).
    pub async fn handle_at(&self, headers: &HeaderMap, body: &[u8], now: OffsetDateTime) -> Answer {
        self.handle_from(None, headers, body, now).await
    }

    /// The whole decision for a request from `source`, logged once.
    pub async fn handle_from(
        &self,
        source: Option<IpAddr>,
        headers: &HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let answer = self.decide(source, headers, body, now).await;
        let status = answer.status.as_u16();
        let job_id = answer.body.get("jobId").and_then(Value::as_str).unwrap_or("");
        let source = source.map(|ip| ip.to_string()).unwrap_or_default();
        if answer.status.is_server_error() {
            tracing::error!(status, detail = %answer.body["detail"], "webhook refused for a server-side reason");
        } else if answer.is_problem() {
            tracing::warn!(status, source, detail = %answer.body["detail"], "webhook refused");
        } else {
            // Authenticated by now: the sender's ids are worth joining on (never the signature).
            let sent: Value = serde_json::from_slice(body).unwrap_or_default();
            tracing::info!(
                status,
                jobId = job_id,
                webhookId = auth::webhook_id(headers).ok().flatten().unwrap_or(""),
                eventId = sent["eventId"].as_str().unwrap_or(""),
                fileName = sent["fileName"].as_str().unwrap_or(""),
                outcome = answer.body["status"].as_str().unwrap_or(""),
                "webhook accepted"
            );
        }
        answer
    }

    async fn decide(&self, source: Option<IpAddr>, headers: &HeaderMap, body: &[u8], now: OffsetDateTime) -> Answer {
        match self.accept(source, headers, body, now).await {
            Ok(manifest) => self.stage(manifest).await,
            Err(refusal) => refusal,
        }
    }

    /// The job a request asks for, or the answer that refuses it; checked in this order, so
    /// that nothing is learnt before authentication.
    async fn accept(
        &self,
        source: Option<IpAddr>,
        headers: &HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Manifest, Answer> {
        self.admit(source, body)?;
        let webhook_id = auth::webhook_id(headers)
            .map_err(|detail| Answer::field_problem(StatusCode::BAD_REQUEST, "webhook-id", detail))?;
        self.authenticate(headers, body, now).await?;
        check_content_type(headers)?;
        let (request, target) = checked_request(&self.settings, body)?;
        let idempotency_key =
            webhook_id.map(str::to_owned).or_else(|| request.event_id.clone()).unwrap_or_else(|| job::sha256_hex(body));
        let manifest = Manifest {
            job_id: job::job_id(&idempotency_key),
            received_at: now.replace_nanosecond(0).unwrap_or(now),
            target,
            content_sha256: job::sha256_hex(body),
            request,
        };
        self.budgeted(manifest, now).await
    }

    /// The manifest once counted against the daily budgets, or the answer refusing it.
    async fn budgeted(&self, manifest: Manifest, now: OffsetDateTime) -> Result<Manifest, Answer> {
        if self.settings.daily_job_budget.is_some() || self.settings.daily_target_budget.is_some() {
            if let Some(refusal) = self.spend_budget(&manifest, now).await {
                return Err(refusal);
            }
        }
        Ok(manifest)
    }

    /// The source address and the body's size, before authentication: a caller from
    /// elsewhere learns nothing, not even whether its signature would have passed.
    fn admit(&self, source: Option<IpAddr>, body: &[u8]) -> Result<(), Answer> {
        if !self.settings.allowed_sources.is_empty() {
            let admitted = source.is_some_and(|ip| self.settings.allowed_sources.iter().any(|net| net.contains(ip)));
            if !admitted {
                return Err(Answer::problem(
                    StatusCode::FORBIDDEN,
                    "the source address is not allowed to call this webhook",
                ));
            }
        }
        if body.len() > self.settings.max_body_bytes {
            return Err(Answer::problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is {} bytes; the limit is {}", body.len(), self.settings.max_body_bytes),
            ));
        }
        Ok(())
    }

    async fn authenticate(&self, headers: &HeaderMap, body: &[u8], now: OffsetDateTime) -> Result<(), Answer> {
        let credentials = self.credentials().await?;
        auth::verify(
            self.settings.auth_mode,
            &credentials,
            headers,
            body,
            now.unix_timestamp(),
            self.settings.timestamp_tolerance,
        )
        .map_err(|failure| Answer::problem(StatusCode::UNAUTHORIZED, failure.0))
    }

    /// The webhook credentials, checked for the active mode. A store that does not answer
    /// is a 503 to retry; a secret that cannot authenticate anyone is a 503 naming the
    /// misconfiguration (every sender would get 401 otherwise, and look guilty).
    async fn credentials(&self) -> Result<WebhookCredentials, Answer> {
        let secret_id = &self.settings.secret_id;
        let secret = match self.secrets.get(secret_id).await {
            Ok(secret) => secret,
            Err(err) => {
                tracing::error!(error = %err.chain(), "webhook credentials unavailable");
                return Err(Answer::problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "credentials store unavailable; retry later",
                ));
            }
        };
        let checked = parse_secret::<WebhookCredentials>(secret_id, &secret)
            .map_err(|err| auth::Misconfigured { class: auth::UNPARSABLE, detail: err.message })
            .and_then(|credentials| {
                auth::check_credentials(self.settings.auth_mode, &credentials).map(|()| credentials)
            });
        checked.map_err(|problem| {
            // Read again soon: the fix should not wait for the cache to expire; but not on
            // every request, which anyone could send, each a Secrets Manager call.
            self.reread_misconfigured_secret(secret_id);
            tracing::error!(problem = problem.class, detail = %problem.detail, "webhook misconfigured");
            // The caller is not authenticated: the class only, the detail (which names the
            // secret) stays in the log.
            let mut answer = Answer::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the webhook is misconfigured ({}); the operator must fix WEBHOOK_SECRET_ID", problem.class),
            );
            answer.body["type"] = json!(format!("urn:maestro-relay:problem:{}", problem.class));
            answer.body["title"] = json!("Webhook misconfigured");
            answer.body["problem"] = json!(problem.class);
            answer
        })
    }

    /// Counts the job against today's budgets, its file name's then its target's; `Some`
    /// refuses. A repeat of a job already counted passes, to be answered as a duplicate or
    /// conflict.
    async fn spend_budget(&self, manifest: &Manifest, now: OffsetDateTime) -> Option<Answer> {
        let file_name = &manifest.request.file_name;
        let target = &manifest.target;
        if let Some(limit) = self.settings.daily_job_budget {
            let spent = budget::reserve(&self.store, limit, target, file_name, &manifest.job_id, now).await;
            let what = format!("the daily budget of {limit} jobs for {file_name} to {target} (DAILY_JOB_BUDGET)");
            if let Some(refusal) = self.refused_by_budget(manifest, spent, &what) {
                return Some(refusal);
            }
        }
        if let Some(limit) = self.settings.daily_target_budget {
            let spent = budget::reserve_target(&self.store, limit, target, &manifest.job_id, now).await;
            let what = format!("the daily budget of {limit} jobs to {target}, all file names (DAILY_TARGET_BUDGET)");
            return self.refused_by_budget(manifest, spent, &what);
        }
        None
    }

    /// A 429 with `Retry-After` for a spent budget, a 503 when it could not be counted.
    fn refused_by_budget(
        &self,
        manifest: &Manifest,
        spent: crate::error::Result<budget::Spent>,
        what: &str,
    ) -> Option<Answer> {
        match spent {
            Ok(budget::Spent::Within) => None,
            Ok(budget::Spent::Exhausted { retry_after }) => {
                let detail = format!("{what} is spent; it renews at 00:00 UTC");
                let mut answer = Answer::field_problem(StatusCode::TOO_MANY_REQUESTS, "fileName", detail);
                answer.retry_after = Some(retry_after.as_secs());
                Some(answer)
            }
            Err(err) => Some(self.unavailable(manifest, &err)),
        }
    }

    fn unavailable(&self, manifest: &Manifest, err: &crate::error::Error) -> Answer {
        tracing::error!(jobId = %manifest.job_id, error = %err.chain(), "staging the job failed");
        Answer::problem(StatusCode::SERVICE_UNAVAILABLE, "staging store unavailable; retry later")
    }

    async fn stage(&self, manifest: Manifest) -> Answer {
        let key = keys::manifest(&manifest.job_id);
        let bytes = match serde_json::to_vec_pretty(&manifest) {
            Ok(bytes) => bytes,
            Err(err) => return Answer::problem(StatusCode::INTERNAL_SERVER_ERROR, format!("manifest: {err}")),
        };
        match self.store.create(&key, bytes, "application/json").await {
            Ok(CreateOutcome::Created) => {
                let scope = MetricScope {
                    stack: &self.settings.stack_name,
                    function: "webhook",
                    target: Some(manifest.target.as_str()),
                };
                telemetry::emit(&telemetry::emf_record(
                    scope,
                    &[("JobsAccepted", Metric::Count(1.0))],
                    &[("jobId", json!(manifest.job_id)), ("target", json!(manifest.target))],
                ));
                Answer::ok(
                    StatusCode::ACCEPTED,
                    json!({"jobId": manifest.job_id, "status": "accepted", "target": manifest.target}),
                )
            }
            Ok(CreateOutcome::AlreadyExists) => self.compare_with_existing(&key, &manifest).await,
            Err(err) => {
                let err = err.at(Step::Webhook);
                tracing::error!(jobId = %manifest.job_id, error = %err.chain(), "staging the job failed");
                Answer::problem(StatusCode::SERVICE_UNAVAILABLE, "staging store unavailable; retry later")
            }
        }
    }

    /// A second delivery of a key: the same body is a duplicate, another body a conflict.
    async fn compare_with_existing(&self, key: &str, manifest: &Manifest) -> Answer {
        let existing = match self.store.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Manifest>(&bytes).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::error!(jobId = %manifest.job_id, error = %err.chain(), "reading the existing job failed");
                return Answer::problem(StatusCode::SERVICE_UNAVAILABLE, "staging store unavailable; retry later");
            }
        };
        match existing {
            Some(existing) if existing.content_sha256 == manifest.content_sha256 => {
                Answer::ok(StatusCode::OK, json!({"jobId": manifest.job_id, "status": "duplicate"}))
            }
            Some(_) => Answer::problem(
                StatusCode::CONFLICT,
                format!("job {} exists with a different body for the same idempotency key", manifest.job_id),
            ),
            None => Answer::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("job {} exists but could not be read back; retry later", manifest.job_id),
            ),
        }
    }
}

/// A body in another media type than JSON is refused before it is read; none named is JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), Answer> {
    if let Some(content_type) = headers.get("content-type") {
        if !is_json_media_type(content_type.to_str().unwrap_or("")) {
            return Err(Answer::problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"));
        }
    }
    Ok(())
}

/// A body as a job request, its target and the allow-list's consent: the one path every
/// request takes, the webhook's authenticated body and the scheduled start's configured one
/// (at start-up and on each slot).
pub fn checked_request(settings: &WebhookSettings, body: &[u8]) -> Result<(JobRequest, Target), Answer> {
    let mut request = request::parse(body)
        .map_err(|err| Answer::field_problem(StatusCode::BAD_REQUEST, &err.field, err.to_string()))?;
    // Kinaxis needs WorksheetNames: a job without them could only fail later, so it is
    // not accepted unless configuration names the worksheets to take.
    if request.workbook.is_some() && request.worksheets.is_empty() {
        if settings.default_worksheets.is_empty() {
            return Err(Answer::field_problem(
                StatusCode::BAD_REQUEST,
                "worksheets",
                "worksheets: is required (no WORKSHEETS default is configured, and Kinaxis needs the names)",
            ));
        }
        request.worksheets = settings.default_worksheets.clone();
    }
    let target = settings
        .routes
        .route(&request.file_name)
        .map_err(|reason| Answer::field_problem(StatusCode::UNPROCESSABLE_ENTITY, "fileName", reason))?;
    settings.allow_list.check(&target, &request).map_err(|refused| {
        Answer::field_problem(StatusCode::UNPROCESSABLE_ENTITY, &refused.field, refused.to_string())
    })?;
    Ok((request, target))
}

/// The caller's address as API Gateway saw the connection (`requestContext`), not a header
/// a caller could write.
fn source_ip(request: &lambda_http::Request) -> Option<IpAddr> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let text = match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(context) => context.identity.source_ip.as_deref(),
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    text.trim().parse().ok()
}

/// `application/json`, `application/<anything>+json`, any parameters.
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised_with_parameters_and_suffixes() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/cloudevents+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
    }
}

#[cfg(test)]
mod properties {
    use super::auth::{sign, verify, AuthMode};
    use super::request::parse;
    use crate::routing::RoutingTable;
    use crate::secrets::WebhookCredentials;
    use lambda_http::http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;
    use secrecy::SecretString;
    use std::time::Duration;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn credentials() -> WebhookCredentials {
        WebhookCredentials { hmac_secrets: vec![SecretString::from(SECRET)], ..WebhookCredentials::default() }
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in [("webhook-id", id), ("webhook-timestamp", timestamp), ("webhook-signature", signature)] {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.insert(name, value);
            }
        }
        map
    }

    /// JSON-ish bodies: structured values with the fields the parser looks at.
    fn json_body() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("fileName".to_owned()),
                        Just("workbook".to_owned()),
                        Just("name".to_owned()),
                        Just("worksheets".to_owned()),
                        Just("variables".to_owned()),
                        "[a-z]{1,8}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        value.prop_map(|v| v.to_string().into_bytes())
    }

    proptest! {
        #[test]
        fn the_parser_never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body);
        }

        #[test]
        fn the_parser_never_panics_on_json_of_any_shape_and_every_refusal_names_a_field(body in json_body()) {
            if let Err(err) = parse(&body) {
                prop_assert!(!err.field.is_empty());
            }
        }

        #[test]
        fn an_accepted_request_has_a_routable_safe_file_name_or_a_clear_refusal(name in "[A-Za-z0-9._-]{0,110}") {
            let body = format!(r#"{{"fileName":"{name}","workbook":{{"name":"W"}}}}"#);
            if let Ok(request) = parse(body.as_bytes()) {
                prop_assert!(!request.file_name.contains("..") && !request.file_name.starts_with('.'));
                prop_assert!(request.file_name.len() <= 100);
                let _ = RoutingTable::default().route(&request.file_name);
            }
        }

        #[test]
        fn the_verifier_never_panics_and_refuses_whatever_it_was_not_signed_for(
            id in ".{0,40}", timestamp in ".{0,20}", signature in ".{0,120}",
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let verdict = verify(AuthMode::Hmac, &credentials(), &headers(&id, &timestamp, &signature), &body, 1_764_000_000, Duration::from_secs(300));
            prop_assert!(verdict.is_err());
        }

        #[test]
        fn a_signature_verifies_only_for_its_own_body(
            body in prop::collection::vec(any::<u8>(), 0..256),
            other in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let now = 1_764_000_000;
            let signature = sign(SECRET, "msg_1", now, &body).unwrap_or_default();
            let h = headers("msg_1", &now.to_string(), &signature);
            prop_assert!(verify(AuthMode::Hmac, &credentials(), &h, &body, now, Duration::from_secs(300)).is_ok());
            prop_assert_eq!(verify(AuthMode::Hmac, &credentials(), &h, &other, now, Duration::from_secs(300)).is_ok(), other == body);
        }
    }
}
