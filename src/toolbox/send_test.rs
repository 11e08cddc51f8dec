//! `maestro-relay send-test`: an event of `events/` signed now as Maestro signs it (the
//! webhook secret's first HMAC secret, a fresh `webhook-id`), for the webhook of the local
//! stack to stage as a job.

use lambda_http::http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::webhook::auth;

/// The headers and body of `event` (an API Gateway event, as in `events/`), signed with
/// `whsec` under `webhook_id` at `now`.
pub fn signed_request(
    event: &Value,
    whsec: &SecretString,
    webhook_id: &str,
    now: i64,
) -> Result<(HeaderMap, Vec<u8>), String> {
    let body = body_of(event)?;
    let signature = auth::sign(whsec.expose_secret(), webhook_id, now, &body)
        .ok_or("the webhook secret's first hmac_secrets entry is not whsec_<base64>")?;
    let mut headers = HeaderMap::new();
    let sent = event["headers"].as_object().into_iter().flatten().filter_map(|(k, v)| Some((k, v.as_str()?)));
    let signing = [
        ("webhook-id", webhook_id.to_owned()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", signature),
    ];
    for (name, value) in sent.map(|(k, v)| (k.as_str(), v.to_owned())).chain(signing) {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
        let value = HeaderValue::from_str(&value).map_err(|e| format!("header {name}: {e}"))?;
        headers.insert(name, value);
    }
    Ok((headers, body))
}

fn body_of(event: &Value) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body = event["body"].as_str().ok_or("the event has no body: is it an API Gateway event from events/?")?;
    if event["isBase64Encoded"].as_bool() == Some(true) {
        return base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("the event's body: {e}"));
    }
    Ok(body.as_bytes().to_vec())
}

/// `event` with `headers` (as `signed_request` made them) in place of its own, for a Lambda
/// runtime to hand the webhook function.
pub fn signed_event(mut event: Value, headers: &HeaderMap) -> Value {
    let as_json = headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), Value::from(v.to_str().ok()?))));
    event["headers"] = Value::Object(as_json.collect());
    if let Some(multi) = event.get_mut("multiValueHeaders").and_then(Value::as_object_mut) {
        for (name, value) in headers {
            if let Ok(value) = value.to_str() {
                multi.insert(name.as_str().to_owned(), Value::from(vec![value]));
            }
        }
    }
    event
}

/// A `webhook-id` no earlier test used: the same id again is answered as a duplicate.
pub fn fresh_webhook_id(now: i64) -> String {
    format!("msg_test_{now}_{:08x}", fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_fresh_id_the_time_and_the_body_and_the_events_headers_stay() {
        let event = serde_json::json!({"headers": {"content-type": "application/json", "webhook-id": "old"},
                                       "body": "{\"fileName\":\"X-PF\"}", "isBase64Encoded": false});
        let whsec = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (headers, body) = signed_request(&event, &whsec, "msg_1", 1_700_000_000).unwrap();
        assert_eq!(body, b"{\"fileName\":\"X-PF\"}");
        assert_eq!(headers["webhook-id"], "msg_1");
        assert_eq!(headers["content-type"], "application/json");
        let expected = auth::sign(whsec.expose_secret(), "msg_1", 1_700_000_000, &body).unwrap();
        assert_eq!(headers["webhook-signature"], expected.as_str());
        assert!(signed_request(&serde_json::json!({}), &whsec, "m", 1).unwrap_err().contains("no body"));
        assert_ne!(fresh_webhook_id(1), fresh_webhook_id(1));
        let printed = signed_event(event, &headers);
        assert_eq!(printed["headers"]["webhook-signature"], expected.as_str());
        assert_eq!(printed["body"], "{\"fileName\":\"X-PF\"}");
    }
}
