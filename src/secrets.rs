//! Secret shapes (Kinaxis client, SFTP targets, webhook credentials), the port they are read
//! through (`SecretSource`) and a per-container
//! cache with a TTL in front of it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result, Step};

/// Secrets Manager: a secret's string by its id.
pub trait SecretSource: Send + Sync {
    fn secret_string(&self, secret_id: &str) -> impl Future<Output = Result<SecretString>> + Send;
}

/// `KINAXIS_SECRET_ID`: the OAuth client of the Kinaxis integration user.
#[derive(Debug, Clone, Deserialize)]
pub struct KinaxisCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Reads the Kinaxis credentials again from the secret store, past any cache.
pub type RereadCredentials =
    std::sync::Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<KinaxisCredentials>> + Send + Sync>;

/// The Kinaxis credentials a job starts with, and how to read them again when the token
/// endpoint refuses them: a secret rotated since they were read is picked up mid-job.
#[derive(Clone)]
pub struct KinaxisLogin {
    pub credentials: KinaxisCredentials,
    pub reread: Option<RereadCredentials>,
}

impl std::fmt::Debug for KinaxisLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinaxisLogin")
            .field("credentials", &self.credentials)
            .field("reread", &self.reread.is_some())
            .finish()
    }
}

impl From<KinaxisCredentials> for KinaxisLogin {
    fn from(credentials: KinaxisCredentials) -> Self {
        Self { credentials, reread: None }
    }
}

/// `SFTP_SECRET_ID_<TARGET>`: one SAP SFTP server.
#[derive(Debug, Clone, Deserialize)]
pub struct SftpCredentials {
    pub host: String,
    #[serde(default = "default_sftp_port")]
    pub port: u16,
    pub username: String,
    #[serde(default)]
    pub private_key: Option<SecretString>,
    #[serde(default)]
    pub passphrase: Option<SecretString>,
    #[serde(default)]
    pub password: Option<SecretString>,
    /// OpenSSH form, `SHA256:<base64 without padding>`; mandatory. Several (a list, or
    /// one string with `,` between) while a host key is rotated: any of them is accepted.
    pub host_key_sha256: HostKeyPins,
    pub remote_dir: String,
}

/// The pinned host key fingerprints of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyPins(pub Vec<String>);

impl From<&str> for HostKeyPins {
    fn from(pins: &str) -> Self {
        Self(pins.split([',', ' ', '\n', '\t']).map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
    }
}

impl<'de> Deserialize<'de> for HostKeyPins {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let pins = match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(one) => Self::from(one.as_str()),
            OneOrMany::Many(many) => Self(many.iter().flat_map(|p| Self::from(p.as_str()).0).collect()),
        };
        if pins.0.is_empty() {
            return Err(serde::de::Error::custom("host_key_sha256 names no fingerprint"));
        }
        Ok(pins)
    }
}

fn default_sftp_port() -> u16 {
    22
}

/// `WEBHOOK_SECRET_ID`: what a caller must prove, per authentication mode. Lists hold
/// several entries so a key can be rotated without downtime (old and new both valid).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhookCredentials {
    /// Standard Webhooks secrets as the spec writes them: `whsec_<base64>`.
    #[serde(default)]
    pub hmac_secrets: Vec<SecretString>,
    #[serde(default)]
    pub bearer_tokens: Vec<SecretString>,
    #[serde(default)]
    pub basic: Vec<BasicCredential>,
    /// Standard Webhooks `v1a`: the sender's ed25519 public keys, `whpk_<base64>`. Not
    /// secret (a leak signs nothing); kept here so one secret holds all a sender may use.
    #[serde(default)]
    pub ed25519_public_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BasicCredential {
    pub username: String,
    pub password: SecretString,
}

/// Parses a secret's JSON; the error names the secret and the field, never the value.
pub fn parse_secret<T: DeserializeOwned>(secret_id: &str, secret: &SecretString) -> Result<T> {
    use secrecy::ExposeSecret;
    serde_json::from_str(secret.expose_secret()).map_err(|e| {
        // serde_json's message can quote input: keep only its category and position.
        Error::permanent(
            Step::Secrets,
            format!(
                "secret {secret_id} is not the expected JSON ({:?} error at line {} column {}; \
                 see docs/deploy.md for its shape)",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// Fetches each secret once per container and keeps it for `ttl`, so a rotation is picked
/// up without a redeploy while a warm container makes no Secrets Manager call per request.
pub struct CachedSecrets<S> {
    source: S,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, SecretString)>>,
}

impl<S: SecretSource> CachedSecrets<S> {
    pub fn new(source: S, ttl: Duration) -> Self {
        Self { source, ttl, cache: Mutex::new(HashMap::new()) }
    }

    pub async fn get(&self, secret_id: &str) -> Result<SecretString> {
        if let Some(hit) = self.lookup(secret_id) {
            return Ok(hit);
        }
        let fresh = self.source.secret_string(secret_id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(secret_id.to_owned(), (Instant::now(), fresh.clone()));
        }
        Ok(fresh)
    }

    /// Fetches and parses a JSON secret.
    pub async fn get_json<T: DeserializeOwned>(&self, secret_id: &str) -> Result<T> {
        let secret = self.get(secret_id).await?;
        parse_secret(secret_id, &secret)
    }

    /// Drops a cached value, e.g. after the remote side refused it.
    pub fn invalidate(&self, secret_id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(secret_id);
        }
    }

    fn lookup(&self, secret_id: &str) -> Option<SecretString> {
        let cache = self.cache.lock().ok()?;
        let (at, value) = cache.get(secret_id)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingSource(AtomicUsize);

    impl SecretSource for CountingSource {
        async fn secret_string(&self, _secret_id: &str) -> Result<SecretString> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(SecretString::from(format!("value-{n}")))
        }
    }

    #[tokio::test]
    async fn a_cached_secret_is_fetched_once_within_its_ttl_and_again_after_invalidation() {
        use secrecy::ExposeSecret;
        let cache = CachedSecrets::new(CountingSource(AtomicUsize::new(0)), Duration::from_secs(60));
        assert_eq!(cache.get("a").await.unwrap().expose_secret(), "value-0");
        assert_eq!(cache.get("a").await.unwrap().expose_secret(), "value-0");
        cache.invalidate("a");
        assert_eq!(cache.get("a").await.unwrap().expose_secret(), "value-1");
    }

    #[test]
    fn host_key_pins_are_one_string_a_comma_separated_string_or_a_list_but_never_none() {
        let pins = |value: serde_json::Value| serde_json::from_value::<HostKeyPins>(value).map(|p| p.0);
        assert_eq!(pins(serde_json::json!("SHA256:a")).unwrap(), ["SHA256:a"]);
        assert_eq!(pins(serde_json::json!("SHA256:a, SHA256:b")).unwrap(), ["SHA256:a", "SHA256:b"]);
        assert_eq!(pins(serde_json::json!(["SHA256:a", "SHA256:b"])).unwrap(), ["SHA256:a", "SHA256:b"]);
        assert!(pins(serde_json::json!([])).is_err());
        assert!(pins(serde_json::json!(" , ")).is_err());
    }

    #[test]
    fn a_malformed_secret_is_refused_without_quoting_its_value() {
        let secret = SecretString::from(r#"{"client_id": "x", "client_secret": 12345678}"#);
        let err = parse_secret::<KinaxisCredentials>("kinaxis/prod", &secret).unwrap_err();
        assert!(err.message.contains("kinaxis/prod"));
        assert!(!err.chain().contains("12345678"));
    }

    #[test]
    fn debug_output_of_credentials_redacts_the_secret() {
        let secret = SecretString::from(r#"{"client_id": "x", "client_secret": "hunter2"}"#);
        let creds: KinaxisCredentials = parse_secret("k", &secret).unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
