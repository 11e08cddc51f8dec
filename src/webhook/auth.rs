//! Caller authentication: Standard Webhooks signatures (`v1` HMAC-SHA256 and `v1a`
//! ed25519), bearer token or HTTP Basic; shared secrets compared in constant time.
//!
//! Hand-written rather than the `standardwebhooks` crate: we need several of our own keys
//! valid at once (rotation) on top of the several signatures the spec allows; the interop
//! tests sign with the reference Python library (`v1`) and Python's `cryptography` (`v1a`).
//! ed25519 is verified by aws-lc-rs, already built for rustls: no new crate.

use std::time::Duration;

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
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

/// A webhook secret that cannot authenticate anyone in the active mode: the operator's
/// problem, never the sender's. `class` names it in the 503 and the ERROR line; `detail`
/// says which entry, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {detail}")]
pub struct Misconfigured {
    pub class: &'static str,
    pub detail: String,
}

pub const UNPARSABLE: &str = "webhook-secret-unparsable";
pub const NO_CREDENTIAL: &str = "webhook-secret-no-credential";
pub const BAD_KEY: &str = "webhook-secret-bad-key";

/// Whether the credentials can authenticate a caller in `mode`: at least one credential of
/// the mode, and every entry of it well-formed (a bad new key during a rotation is found at
/// once, not when the sender switches to it).
pub fn check_credentials(mode: AuthMode, credentials: &WebhookCredentials) -> Result<(), Misconfigured> {
    let bad = |detail: String| Err(Misconfigured { class: BAD_KEY, detail });
    let none = |detail: &str| Err(Misconfigured { class: NO_CREDENTIAL, detail: detail.to_owned() });
    match mode {
        AuthMode::Hmac => {
            for (i, secret) in credentials.hmac_secrets.iter().enumerate() {
                if hmac_key(secret.expose_secret()).is_none() {
                    return bad(format!("hmac_secrets[{i}] is not whsec_<base64>"));
                }
            }
            for (i, key) in credentials.ed25519_public_keys.iter().enumerate() {
                if public_key(key).is_none() {
                    return bad(format!("ed25519_public_keys[{i}] is not whpk_<base64 of a 32-byte ed25519 key>"));
                }
            }
            if credentials.hmac_secrets.is_empty() && credentials.ed25519_public_keys.is_empty() {
                return none("mode hmac (Standard Webhooks) needs hmac_secrets (v1) or ed25519_public_keys (v1a)");
            }
        }
        AuthMode::Bearer => {
            if credentials.bearer_tokens.iter().any(|t| t.expose_secret().trim().is_empty()) {
                return bad("a bearer_tokens entry is blank".to_owned());
            }
            if credentials.bearer_tokens.is_empty() {
                return none("mode bearer needs bearer_tokens");
            }
        }
        AuthMode::Basic => {
            if credentials.basic.iter().any(|c| c.username.is_empty() || c.password.expose_secret().is_empty()) {
                return bad("a basic entry has a blank username or password".to_owned());
            }
            if credentials.basic.is_empty() {
                return none("mode basic needs basic [{username, password}]");
            }
        }
    }
    Ok(())
}

/// The HMAC key of `whsec_<base64>` (the prefix optional, as senders differ).
fn hmac_key(encoded: &str) -> Option<Vec<u8>> {
    let key = STANDARD.decode(encoded.trim().strip_prefix("whsec_").unwrap_or(encoded.trim())).ok()?;
    (!key.is_empty()).then_some(key)
}

/// The ed25519 public key of `whpk_<base64>`.
fn public_key(encoded: &str) -> Option<[u8; 32]> {
    let key = STANDARD.decode(encoded.trim().strip_prefix("whpk_")?).ok()?;
    key.try_into().ok()
}

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

/// The longest `webhook-id` accepted.
pub const MAX_WEBHOOK_ID_LEN: usize = 256;

/// The `webhook-id` header, read one way for the signature and the job id: 1–256 visible
/// ASCII characters (`!`..=`~`), nothing trimmed; `None` when the header is absent.
pub fn webhook_id(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get("webhook-id") else { return Ok(None) };
    let id = value.to_str().map_err(|_| "webhook-id must be visible ASCII characters")?;
    if id.is_empty() || id.len() > MAX_WEBHOOK_ID_LEN {
        return Err("webhook-id must be 1 to 256 characters");
    }
    if !id.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Err("webhook-id must be visible ASCII characters, without whitespace");
    }
    Ok(Some(id))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The most `v1` signatures a request may carry; more is refused before any hashing. One
/// HMAC per secret is compared against every entry, so entries cost a comparison each.
pub const MAX_V1_SIGNATURES: usize = 8;

/// The most `v1a` signatures a request may carry; more is refused before any hashing. Each
/// ed25519 verification hashes the whole body again (per entry and key), so this is what an
/// unauthenticated caller can buy: 4 leaves room for a sender signing with up to four keys
/// during a rotation, and caps the cost at 4 × keys verifications.
pub const MAX_V1A_SIGNATURES: usize = 4;

/// The `v1` and `v1a` entries of `webhook-signature` worth verifying: each decoded to its
/// scheme's length (32 bytes HMAC-SHA256, 64 bytes ed25519), the others dropped, duplicates
/// once.
struct Signatures {
    v1: Vec<[u8; 32]>,
    v1a: Vec<[u8; 64]>,
}

fn signatures_of(header: &str) -> Result<Signatures, AuthFailure> {
    let mut v1_entries: Vec<&str> = Vec::new();
    let mut v1a_entries: Vec<&str> = Vec::new();
    for entry in header.split(' ') {
        let (entries, b64, most, refusal) = if let Some(b64) = entry.strip_prefix("v1,") {
            (&mut v1_entries, b64, MAX_V1_SIGNATURES, "webhook-signature holds more than 8 v1 signatures")
        } else if let Some(b64) = entry.strip_prefix("v1a,") {
            (&mut v1a_entries, b64, MAX_V1A_SIGNATURES, "webhook-signature holds more than 4 v1a signatures")
        } else {
            continue;
        };
        if !entries.contains(&b64) {
            if entries.len() == most {
                return Err(AuthFailure(refusal));
            }
            entries.push(b64);
        }
    }
    fn decoded<const N: usize>(entries: &[&str]) -> Vec<[u8; N]> {
        let mut out: Vec<[u8; N]> = Vec::new();
        for sig in entries.iter().filter_map(|b64| STANDARD.decode(b64).ok()?.try_into().ok()) {
            if !out.contains(&sig) {
                out.push(sig);
            }
        }
        out
    }
    Ok(Signatures { v1: decoded(&v1_entries), v1a: decoded(&v1a_entries) })
}

#[cfg(test)]
thread_local! {
    /// How many HMACs and ed25519 verifications this thread ran: the tests' proof that a
    /// refused or dropped entry cost nothing.
    static VERIFICATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn counted_verification() {
    #[cfg(test)]
    VERIFICATIONS.with(|n| n.set(n.get() + 1));
}

fn verify_hmac(
    credentials: &WebhookCredentials,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), AuthFailure> {
    let id = webhook_id(headers).map_err(AuthFailure)?.ok_or(AuthFailure("missing webhook-id header"))?;
    let timestamp = header(headers, "webhook-timestamp").ok_or(AuthFailure("missing webhook-timestamp header"))?;
    let signatures = header(headers, "webhook-signature").ok_or(AuthFailure("missing webhook-signature header"))?;
    let sent_at: i64 =
        timestamp.parse().map_err(|_| AuthFailure("webhook-timestamp is not a whole number of seconds"))?;
    if now_unix.abs_diff(sent_at) > tolerance.as_secs() {
        return Err(AuthFailure("webhook-timestamp is outside the accepted window"));
    }
    let Signatures { v1, v1a } = signatures_of(signatures)?;
    if v1.is_empty() && v1a.is_empty() {
        return Err(AuthFailure("webhook-signature holds no v1 or v1a signature of the right length"));
    }
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    if !v1.is_empty() {
        for secret in &credentials.hmac_secrets {
            // `check_credentials` refused a secret that does not decode before we get here.
            let Some(key) = hmac_key(secret.expose_secret()) else { continue };
            let Ok(mut mac) = HmacSha256::new_from_slice(&key) else { continue };
            counted_verification();
            mac.update(&signed);
            let expected = mac.finalize().into_bytes();
            if v1.iter().any(|sig| bool::from(sig.as_slice().ct_eq(expected.as_slice()))) {
                return Ok(());
            }
        }
    }
    for key in credentials.ed25519_public_keys.iter().filter_map(|k| public_key(k)) {
        let key = UnparsedPublicKey::new(&ED25519, key);
        if v1a.iter().any(|sig| {
            counted_verification();
            key.verify(&signed, sig).is_ok()
        }) {
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

/// Signs like a Standard Webhooks `v1a` sender with the ed25519 key of `seed` (32 bytes):
/// `v1a,<base64 signature of "{id}.{ts}.{body}">`, and its public key as `whpk_<base64>`.
/// For tests and the demo; a real sender's private key never comes near this code.
pub fn sign_v1a(seed: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Option<(String, String)> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let signature = STANDARD.encode(pair.sign(&message).as_ref());
    Some((format!("v1a,{signature}"), format!("whpk_{}", STANDARD.encode(pair.public_key().as_ref()))))
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
            ed25519_public_keys: Vec::new(),
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

    fn with_header(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_bearer_token_or_basic_login_listed_twice_is_still_accepted() {
        let mut twice = creds();
        twice.bearer_tokens.push(SecretString::from("tok-123"));
        twice.basic.push(BasicCredential { username: "maestro".into(), password: SecretString::from("pw") });
        let bearer = with_header("authorization", "Bearer tok-123");
        assert!(verify(AuthMode::Bearer, &twice, &bearer, b"", NOW, Duration::from_secs(300)).is_ok());
        let basic = with_header("authorization", &format!("Basic {}", STANDARD.encode("maestro:pw")));
        assert!(verify(AuthMode::Basic, &twice, &basic, b"", NOW, Duration::from_secs(300)).is_ok());
        let wrong = with_header("authorization", &format!("Basic {}", STANDARD.encode("maestro:nope")));
        assert!(verify(AuthMode::Basic, &twice, &wrong, b"", NOW, Duration::from_secs(300)).is_err());
    }

    #[test]
    fn a_timestamp_exactly_at_the_tolerance_is_accepted_and_one_second_past_it_is_not() {
        let body = br#"{"a":1}"#;
        for (sent_at, accepted) in [(NOW - 300, true), (NOW + 300, true), (NOW - 301, false), (NOW + 301, false)] {
            let sig = sign(SECRET, "msg_1", sent_at, body).unwrap();
            assert_eq!(check(&signed("msg_1", sent_at, &sig), body).is_ok(), accepted, "sent at {sent_at}");
        }
    }

    #[test]
    fn a_basic_entry_blank_in_either_its_username_or_its_password_alone_is_a_misconfiguration() {
        for (username, password) in [("", "pw"), ("maestro", "")] {
            let mut credentials = creds();
            credentials.basic =
                vec![BasicCredential { username: username.into(), password: SecretString::from(password) }];
            assert!(check_credentials(AuthMode::Basic, &credentials).is_err(), "{username:?}:{password:?}");
        }
        assert!(check_credentials(AuthMode::Basic, &creds()).is_ok());
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

    const SEED: [u8; 32] = [7; 32];

    #[test]
    fn a_v1a_signature_verifies_with_the_senders_public_key_alone_and_for_its_own_message_only() {
        let body = br#"{"fileName":"A-PF"}"#;
        let (sig, public) = sign_v1a(&SEED, "msg_1", NOW, body).unwrap();
        assert!(public.starts_with("whpk_") && sig.starts_with("v1a,"));
        let only_public =
            WebhookCredentials { ed25519_public_keys: vec![public.clone()], ..WebhookCredentials::default() };
        let check = |h: &HeaderMap, b: &[u8]| verify(AuthMode::Hmac, &only_public, h, b, NOW, Duration::from_secs(300));
        assert_eq!(check(&signed("msg_1", NOW, &sig), body), Ok(()));
        assert!(check(&signed("msg_2", NOW, &sig), body).is_err());
        assert!(check(&signed("msg_1", NOW, &sig), b"{}").is_err());
        let (other, _) = sign_v1a(&[8; 32], "msg_1", NOW, body).unwrap();
        assert!(check(&signed("msg_1", NOW, &other), body).is_err());
        // A v1 signature is not checked against an ed25519 key, nor v1a against HMAC keys.
        let v1 = sign(SECRET, "msg_1", NOW, body).unwrap();
        assert!(check(&signed("msg_1", NOW, &v1), body).is_err());
        assert!(
            verify(AuthMode::Hmac, &creds(), &signed("msg_1", NOW, &sig), body, NOW, Duration::from_secs(300)).is_err()
        );
    }

    #[test]
    fn v1_and_v1a_configured_together_each_verify_during_a_migration() {
        let body = b"{}";
        let (v1a, public) = sign_v1a(&SEED, "m", NOW, body).unwrap();
        let mut both = creds();
        both.ed25519_public_keys.push(public);
        let v1 = sign(SECRET, "m", NOW, body).unwrap();
        for header in [v1.clone(), v1a.clone(), format!("{v1} {v1a}"), format!("v1a,AAAA {v1}")] {
            let h = signed("m", NOW, &header);
            assert_eq!(verify(AuthMode::Hmac, &both, &h, body, NOW, Duration::from_secs(300)), Ok(()), "{header}");
        }
    }

    #[test]
    fn credentials_without_one_for_the_mode_or_with_a_malformed_entry_are_misconfigured() {
        let class = |mode, c: &WebhookCredentials| check_credentials(mode, c).err().map(|m| m.class);
        let empty = WebhookCredentials::default();
        for mode in [AuthMode::Hmac, AuthMode::Bearer, AuthMode::Basic] {
            assert_eq!(class(mode, &empty), Some(NO_CREDENTIAL), "{mode:?}");
            assert_eq!(class(mode, &creds()), None, "{mode:?}");
        }
        let mut bad_hmac = creds();
        bad_hmac.hmac_secrets.push(SecretString::from("whsec_not base64!"));
        assert_eq!(class(AuthMode::Hmac, &bad_hmac), Some(BAD_KEY));
        for key in ["whpk_AAAA", "not-a-key", "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="] {
            let c = WebhookCredentials { ed25519_public_keys: vec![key.into()], ..WebhookCredentials::default() };
            assert_eq!(class(AuthMode::Hmac, &c), Some(BAD_KEY), "{key}");
        }
        let detail = check_credentials(AuthMode::Hmac, &bad_hmac).unwrap_err().detail;
        assert!(detail.contains("hmac_secrets[1]") && !detail.contains("not base64"), "{detail}");
    }

    fn verifications_during(f: impl FnOnce()) -> usize {
        let before = VERIFICATIONS.with(|n| n.get());
        f();
        VERIFICATIONS.with(|n| n.get()) - before
    }

    /// `v1` (32 bytes) or `v1a` (64 bytes) entries of the right length that match nothing.
    fn junk(scheme: &str, count: usize) -> Vec<String> {
        let len = if scheme == "v1" { 32 } else { 64 };
        (0..count).map(|i| format!("{scheme},{}", STANDARD.encode(vec![i as u8 + 1; len]))).collect()
    }

    fn with_v1a_key() -> (WebhookCredentials, String) {
        let (sig, public) = sign_v1a(&SEED, "m", NOW, b"{}").unwrap();
        (WebhookCredentials { ed25519_public_keys: vec![public], ..creds() }, sig)
    }

    #[test]
    fn nine_v1_or_five_v1a_signatures_are_refused_before_any_verification_even_with_a_valid_one() {
        let (credentials, v1a) = with_v1a_key();
        let v1 = sign(SECRET, "m", NOW, b"{}").unwrap();
        let cases = [
            ("v1", &v1, MAX_V1_SIGNATURES, "webhook-signature holds more than 8 v1 signatures"),
            ("v1a", &v1a, MAX_V1A_SIGNATURES, "webhook-signature holds more than 4 v1a signatures"),
        ];
        for (scheme, valid, most, refusal) in cases {
            let mut entries = junk(scheme, most);
            entries.push(valid.clone());
            let h = signed("m", NOW, &entries.join(" "));
            let mut answer = Ok(());
            let spent = verifications_during(|| {
                answer = verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300));
            });
            assert_eq!(answer, Err(AuthFailure(refusal)));
            assert_eq!(spent, 0, "{scheme}");
            // The most allowed are still looked at, the valid one among them.
            entries.remove(0);
            let h = signed("m", NOW, &entries.join(" "));
            assert_eq!(verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300)), Ok(()));
        }
        const { assert!(MAX_V1_SIGNATURES == 8 && MAX_V1A_SIGNATURES == 4, "the refusals' details say 8 and 4") };
    }

    #[test]
    fn a_request_at_the_v1a_limit_costs_at_most_four_verifications_per_key() {
        let (mut credentials, _) = with_v1a_key();
        credentials.ed25519_public_keys.push(sign_v1a(&[9; 32], "k", 0, b"").unwrap().1);
        let h = signed("m", NOW, &junk("v1a", MAX_V1A_SIGNATURES).join(" "));
        let spent = verifications_during(|| {
            assert!(verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300)).is_err());
        });
        assert_eq!(spent, 8, "4 entries × 2 keys");
    }

    #[test]
    fn entries_of_the_wrong_length_are_dropped_before_any_hashing() {
        let (credentials, _) = with_v1a_key();
        let short_and_long =
            format!("v1,AAAA v1a,AAAA v1,{} v1a,{}", STANDARD.encode([1; 64]), STANDARD.encode([1; 32]));
        let h = signed("m", NOW, &short_and_long);
        let mut answer = Ok(());
        let spent = verifications_during(|| {
            answer = verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300));
        });
        assert_eq!(answer, Err(AuthFailure("webhook-signature holds no v1 or v1a signature of the right length")));
        assert_eq!(spent, 0);
        // Beside a valid v1 entry the wrong-length v1a ones cost no ed25519 verification.
        let v1 = sign(SECRET, "m", NOW, b"{}").unwrap();
        let h = signed("m", NOW, &format!("{short_and_long} {v1}"));
        let spent = verifications_during(|| {
            answer = verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300));
        });
        assert_eq!((answer, spent), (Ok(()), 1), "one HMAC for the one secret");
    }

    #[test]
    fn duplicate_entries_are_counted_and_verified_once() {
        let (credentials, v1a) = with_v1a_key();
        let repeated = vec![junk("v1a", 1)[0].clone(); 20].join(" ");
        let h = signed("m", NOW, &repeated);
        let spent = verifications_during(|| {
            assert!(verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300)).is_err());
        });
        assert_eq!(spent, 1, "one ed25519 verification for one distinct entry and one key");
        // Three distinct junk entries, the valid one twice: four, not five.
        let mut entries = junk("v1a", 3);
        entries.extend([v1a.clone(), v1a]);
        let h = signed("m", NOW, &entries.join(" "));
        assert_eq!(verify(AuthMode::Hmac, &credentials, &h, b"{}", NOW, Duration::from_secs(300)), Ok(()));
    }

    #[test]
    fn a_webhook_id_is_one_to_256_visible_ascii_characters_read_untrimmed() {
        let id_of = |id: &str| webhook_id(&signed(id, NOW, "v1,AAAA")).map(|v| v.map(str::to_owned));
        assert_eq!(id_of("msg_1"), Ok(Some("msg_1".to_owned())));
        assert_eq!(id_of(&"a".repeat(256)), Ok(Some("a".repeat(256))));
        for bad in ["", "msg 1", " msg_1", "msg_1\t", &"a".repeat(257)] {
            assert!(id_of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(webhook_id(&HeaderMap::new()), Ok(None));
        // The signature is checked over the id as sent, not a trimmed copy.
        let sig = sign(SECRET, "msg_1", NOW, b"{}").unwrap();
        assert!(check(&signed(" msg_1", NOW, &sig), b"{}").is_err());
    }
}
