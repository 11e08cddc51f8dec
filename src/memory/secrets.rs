//! Secrets in memory (`SecretSource`).

use std::collections::HashMap;

use secrecy::SecretString;

use crate::error::{Error, Result, Step};
use crate::secrets::SecretSource;

/// Secrets by id, as JSON strings.
#[derive(Debug, Default)]
pub struct MemorySecrets(pub HashMap<String, String>);

impl SecretSource for MemorySecrets {
    async fn secret_string(&self, secret_id: &str) -> Result<SecretString> {
        self.0
            .get(secret_id)
            .map(|value| SecretString::from(value.clone()))
            .ok_or_else(|| Error::permanent(Step::Secrets, format!("secret {secret_id} does not exist")))
    }
}
