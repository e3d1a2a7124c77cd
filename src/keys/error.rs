use thiserror::Error;

use crate::crypto::CryptoError;

/// Key-management errors. Messages name key ids, tables, tenants, variables
/// and files; never key material or values. `Clone` so that one provider
/// call's failure can be handed to every waiter of a single-flight miss.
#[derive(Debug, Error, Clone)]
pub enum KeyError {
    #[error("{0}")]
    Config(String),
    #[error(
        "{key} was wrapped by master key {master_key_id:?}, which is not configured: add it back to keys.local.master_keys (newest first) to unwrap it"
    )]
    MasterKeyNotConfigured { master_key_id: String, key: String },
    #[error(
        "master key {master_key_id:?} could not unwrap {key}: the key material configured for {master_key_id:?} is not the one that wrapped it, or the keystore row was altered"
    )]
    WrongMasterKey { master_key_id: String, key: String },
    #[error(
        "{provider} is unreachable ({detail}); data keys already cached keep working, others cannot be created or unwrapped until it is back"
    )]
    ProviderUnavailable {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} refused to unwrap {key}: {detail}")]
    UnwrapRejected {
        provider: &'static str,
        key: String,
        detail: String,
    },
    #[error("{provider} error: {detail}")]
    Provider {
        provider: &'static str,
        detail: String,
    },
    #[error("keystore: {0}")]
    Keystore(String),
    #[error("{key}: key destroyed (the tenant was shredded); the value can no longer be decrypted")]
    KeyDestroyed { key: String },
    #[error(
        "{key} is not in the keystore: is keys.keystore the database these values were written with?"
    )]
    UnknownKey { key: String },
    #[error("{key} belongs to {actual}, but the value names {claimed}: the envelope was altered")]
    ScopeMismatch {
        key: String,
        actual: String,
        claimed: String,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<tokio_postgres::Error> for KeyError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Include the server's message (a keystore error never carries key
        // material: wrapped keys are sent as bind parameters).
        let mut s = e.to_string();
        if let Some(db) = e.as_db_error() {
            s = format!("{}: {}", db.code().code(), db.message());
        } else if let Some(src) = std::error::Error::source(&e) {
            s = format!("{s}: {src}");
        }
        KeyError::Keystore(s)
    }
}
