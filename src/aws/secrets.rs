//! Secrets Manager: a secret's string by id, wrapped in `SecretString` at once.

use secrecy::SecretString;

use super::classify;
use crate::error::{Error, Result, Step};
use crate::secrets::SecretSource;

#[derive(Clone)]
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(config) }
    }
}

impl SecretSource for SecretsManager {
    async fn secret_string(&self, secret_id: &str) -> Result<SecretString> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| classify(e, Step::Secrets, &format!("reading secret {secret_id}")))?;
        output
            .secret_string()
            .map(SecretString::from)
            .ok_or_else(|| Error::permanent(Step::Secrets, format!("secret {secret_id} has no string value")))
    }
}
