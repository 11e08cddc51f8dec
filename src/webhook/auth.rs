//! Caller authentication: Standard Webhooks HMAC, bearer token or HTTP Basic, all compared
//! in constant time.
//!
//! Hand-written rather than the `standardwebhooks` crate: we need several of our own keys
//! valid at once (rotation) on top of the several signatures the spec allows; the interop
//! test signs with the reference Python library.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{KeyInit, Mac};
use lambda_http::http::HeaderMap;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::secrets::WebhookCredentials;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Hmac,
    Bearer,
    Basic,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "hmac" => Ok(Self::Hmac),
            "bearer" => Ok(Self::Bearer),
            "basic" => Ok(Self::Basic),
            other => Err(format!("{other:?} is not one of hmac, bearer, basic")),
        }
    }
}

/// Why a caller was refused; safe to log and to answer (it never holds a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFailure(pub &'static str);

/// Checks the request against every configured credential of the mode.
pub fn verify(
    mode: AuthMode,
    credentials: &WebhookCredentials,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), AuthFailure> {
    match mode {
        AuthMode::Hmac => verify_hmac(credentials, headers, body, now_unix, tolerance),
        AuthMode::Bearer => verify_bearer(credentials, headers),
        AuthMode::Basic => verify_basic(credentials, headers),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn verify_hmac(
    credentials: &WebhookCredentials,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), AuthFailure> {
    let id = header(headers, "webhook-id").ok_or(AuthFailure("missing webhook-id header"))?;
    let timestamp = header(headers, "webhook-timestamp").ok_or(AuthFailure("missing webhook-timestamp header"))?;
    let signatures = header(headers, "webhook-signature").ok_or(AuthFailure("missing webhook-signature header"))?;
    let sent_at: i64 =
        timestamp.parse().map_err(|_| AuthFailure("webhook-timestamp is not a whole number of seconds"))?;
    if now_unix.abs_diff(sent_at) > tolerance.as_secs() {
        return Err(AuthFailure("webhook-timestamp is outside the accepted window"));
    }
    let offered: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|sig| sig.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    if offered.is_empty() {
        return Err(AuthFailure("webhook-signature holds no v1 signature"));
    }
    for secret in &credentials.hmac_secrets {
        let encoded = secret.expose_secret();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        let Ok(key) = STANDARD.decode(encoded) else {
            tracing::error!("a configured webhook HMAC secret is not whsec_<base64>; it is skipped");
            continue;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&key) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        if offered.iter().any(|sig| bool::from(sig.as_slice().ct_eq(expected.as_slice()))) {
            return Ok(());
        }
    }
    Err(AuthFailure("no webhook signature matches"))
}

/// The credentials of an `Authorization: {scheme} …` header.
fn authorization<'a>(headers: &'a HeaderMap, scheme: &str, wrong: &'static str) -> Result<&'a str, AuthFailure> {
    let value = header(headers, "authorization").ok_or(AuthFailure("missing Authorization header"))?;
    let (given, rest) = value.split_once(' ').ok_or(AuthFailure(wrong))?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim()).ok_or(AuthFailure(wrong))
}

fn verify_bearer(credentials: &WebhookCredentials, headers: &HeaderMap) -> Result<(), AuthFailure> {
    let token = authorization(headers, "Bearer", "Authorization is not a Bearer token")?;
    let matched = credentials
        .bearer_tokens
        .iter()
        .fold(false, |hit, t| hit | bool::from(t.expose_secret().as_bytes().ct_eq(token.as_bytes())));
    matched.then_some(()).ok_or(AuthFailure("bearer token not accepted"))
}

fn verify_basic(credentials: &WebhookCredentials, headers: &HeaderMap) -> Result<(), AuthFailure> {
    let encoded = authorization(headers, "Basic", "Authorization is not HTTP Basic")?;
    let decoded = STANDARD.decode(encoded).map_err(|_| AuthFailure("HTTP Basic credentials are not base64"))?;
    let (user, password) = match decoded.iter().position(|&b| b == b':') {
        Some(colon) => (&decoded[..colon], &decoded[colon + 1..]),
        None => return Err(AuthFailure("HTTP Basic credentials have no ':'")),
    };
    let matched = credentials.basic.iter().fold(false, |hit, c| {
        let user_ok = c.username.as_bytes().ct_eq(user);
        let password_ok = c.password.expose_secret().as_bytes().ct_eq(password);
        hit | bool::from(user_ok & password_ok)
    });
    matched.then_some(()).ok_or(AuthFailure("HTTP Basic credentials not accepted"))
}

/// Signs like a Standard Webhooks sender: `v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">`.
/// Used by the demo, the benchmarks and the tests to act as Kinaxis.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok()?;
    let mut mac = HmacSha256::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::BasicCredential;
    use lambda_http::http::HeaderValue;
    use secrecy::SecretString;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OLD_SECRET: &str = "whsec_c2VjcmV0LW9sZC1rZXktZm9yLXJvdGF0aW9u";
    const NOW: i64 = 1_764_000_000;

    fn creds() -> WebhookCredentials {
        WebhookCredentials {
            hmac_secrets: vec![SecretString::from(SECRET)],
            bearer_tokens: vec![SecretString::from("tok-123")],
            basic: vec![BasicCredential { username: "maestro".into(), password: SecretString::from("pw") }],
        }
    }

    fn signed(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(&ts.to_string()).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    fn check(h: &HeaderMap, body: &[u8]) -> Result<(), AuthFailure> {
        verify(AuthMode::Hmac, &creds(), h, body, NOW, Duration::from_secs(300))
    }

    #[test]
    fn the_standard_webhooks_reference_vector_verifies() {
        // The example of the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_valid_signature_within_the_window_is_accepted() {
        let body = b"{}";
        let h = signed("msg_1", NOW - 299, &sign(SECRET, "msg_1", NOW - 299, body).unwrap());
        assert_eq!(check(&h, body), Ok(()));
    }

    #[test]
    fn a_tampered_body_stale_or_future_timestamp_or_wrong_key_is_refused() {
        let body = b"{}";
        let good = sign(SECRET, "msg_1", NOW, body).unwrap();
        assert!(check(&signed("msg_1", NOW, &good), b"{ }").is_err());
        assert!(check(&signed("msg_2", NOW, &good), body).is_err());
        let stale = sign(SECRET, "msg_1", NOW - 301, body).unwrap();
        assert_eq!(
            check(&signed("msg_1", NOW - 301, &stale), body).unwrap_err().0,
            "webhook-timestamp is outside the accepted window"
        );
        let future = sign(SECRET, "msg_1", NOW + 301, body).unwrap();
        assert!(check(&signed("msg_1", NOW + 301, &future), body).is_err());
        let wrong = sign(OLD_SECRET, "msg_1", NOW, body).unwrap();
        assert!(check(&signed("msg_1", NOW, &wrong), body).is_err());
    }

    #[test]
    fn one_valid_signature_among_several_suffices_and_both_rotated_keys_work() {
        let body = b"{}";
        let old = sign(OLD_SECRET, "m", NOW, body).unwrap();
        let new = sign(SECRET, "m", NOW, body).unwrap();
        assert!(check(&signed("m", NOW, &format!("v1,AAAA {old} {new}")), body).is_ok());
        let mut rotated = creds();
        rotated.hmac_secrets.push(SecretString::from(OLD_SECRET));
        let h = signed("m", NOW, &old);
        assert!(verify(AuthMode::Hmac, &rotated, &h, body, NOW, Duration::from_secs(300)).is_ok());
    }

    #[test]
    fn missing_headers_are_named() {
        let mut h = signed("m", NOW, "v1,AAAA");
        h.remove("webhook-signature");
        assert_eq!(check(&h, b"").unwrap_err().0, "missing webhook-signature header");
        h.remove("webhook-timestamp");
        assert_eq!(check(&h, b"").unwrap_err().0, "missing webhook-timestamp header");
        assert_eq!(check(&HeaderMap::new(), b"").unwrap_err().0, "missing webhook-id header");
    }

    #[test]
    fn bearer_and_basic_accept_only_the_configured_credentials() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok-123"));
        assert!(verify(AuthMode::Bearer, &creds(), &h, b"", NOW, Duration::ZERO).is_ok());
        h.insert("authorization", HeaderValue::from_static("Bearer tok-124"));
        assert!(verify(AuthMode::Bearer, &creds(), &h, b"", NOW, Duration::ZERO).is_err());
        let good = format!("Basic {}", STANDARD.encode("maestro:pw"));
        h.insert("authorization", HeaderValue::from_str(&good).unwrap());
        assert!(verify(AuthMode::Basic, &creds(), &h, b"", NOW, Duration::ZERO).is_ok());
        let bad = format!("Basic {}", STANDARD.encode("maestro:px"));
        h.insert("authorization", HeaderValue::from_str(&bad).unwrap());
        assert!(verify(AuthMode::Basic, &creds(), &h, b"", NOW, Duration::ZERO).is_err());
    }
}
