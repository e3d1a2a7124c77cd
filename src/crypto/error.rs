use thiserror::Error;

use super::PgType;

/// Errors of the crypto core. Messages name types, columns and key ids, never
/// a plaintext value or key material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// A wire value could not be parsed as the column's plaintext type.
    #[error("invalid {format} input for type {ty}: {reason}")]
    InvalidInput {
        ty: PgType,
        format: &'static str,
        reason: &'static str,
    },
    /// The value is a well-formed envelope header but the rest is not.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The envelope was written by a newer pgveil.
    #[error("unsupported envelope format version {0}: upgrade pgveil")]
    UnsupportedVersion(u8),
    /// Tag check failed: wrong key, wrong column/tenant, or altered bytes.
    #[error(
        "decryption failed for {column} (key {key}): the value was altered, copied from another column or tenant, or the key is wrong"
    )]
    DecryptFailed { column: String, key: String },
    /// A secret could not be loaded (names the variable or file, never the value).
    #[error("{0}")]
    Secret(String),
    /// Key material of the wrong length or form.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
}

impl CryptoError {
    /// An [`CryptoError::InvalidInput`] for a `ty` value in `format` that `reason` rejects.
    pub(crate) fn input(ty: PgType, format: super::Format, reason: &'static str) -> Self {
        CryptoError::InvalidInput {
            ty,
            format: match format {
                super::Format::Text => "text",
                super::Format::Binary => "binary",
            },
            reason,
        }
    }
}
