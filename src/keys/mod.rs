//! Key management: master-key providers (local, AWS KMS), the keystore of
//! wrapped data keys (a PostgreSQL table), and the [`KeyManager`] that caches
//! unwrapped data keys and hands them to the crypto core.
//!
//! Hierarchy (docs/crypto.md): master key (never leaves its provider) wraps
//! data keys (random 256-bit, one per table or (table, tenant) and version),
//! which encrypt values through per-value derived keys. Blind-index keys are
//! a separate secret ([`crate::crypto::BlindIndexRoot`]).

mod aws;
mod error;
mod keystore;
mod local;
mod manager;
mod provider;

use std::path::Path;

use zeroize::Zeroizing;

pub use aws::AwsKmsProvider;
pub use error::KeyError;
pub use keystore::{KeyRecord, Keystore};
pub use local::LocalProvider;
pub use manager::{KeyManager, KeyManagerOptions};
pub use provider::{MasterKeyProvider, WrapContext, WrappedKey};

use crate::config::SecretRef;
use crate::crypto::{BlindIndexRoot, ColumnContext, CryptoError};

/// What one data key protects: a table (`schema.table`) and, for tables
/// with `tenant:` in the policy, one tenant. All columns of a table share
/// the data key; the AAD still binds each value to its column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyScope {
    /// `schema.table`.
    pub table: String,
    /// Tenant id, for tables with `tenant:` in the policy.
    pub tenant: Option<String>,
}

impl KeyScope {
    /// The scope of `schema.table` and, if given, one tenant.
    pub fn new(schema: &str, table: &str, tenant: Option<&str>) -> KeyScope {
        KeyScope {
            table: format!("{schema}.{table}"),
            tenant: tenant.map(str::to_string),
        }
    }

    /// The scope a column context's value is encrypted in.
    pub fn of(ctx: &ColumnContext) -> KeyScope {
        KeyScope {
            table: ctx.qualified_table(),
            tenant: ctx.tenant.clone(),
        }
    }
}

impl std::fmt::Display for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{} tenant {t:?}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

/// Read a secret named by the config: an environment variable or a file
/// (relative to `base_dir`). Errors name `what` and the variable or file,
/// never the content.
pub fn load_secret(
    r: &SecretRef,
    base_dir: &Path,
    what: &str,
) -> Result<Zeroizing<String>, KeyError> {
    match (&r.env, &r.file) {
        (Some(var), None) => std::env::var(var.as_str())
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Config(format!(
                "{what}: environment variable {var} is not set (or not UTF-8): export it with the hex key, e.g. from `pgveil keys generate`"
            ))),
        (None, Some(file)) => {
            let p = Path::new(file.as_str());
            let p = if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
            std::fs::read_to_string(&p)
                .map(Zeroizing::new)
                .map_err(|e| KeyError::Config(format!("{what}: cannot read {}: {e}", p.display())))
        }
        _ => Err(KeyError::Config(format!("{what}: give exactly one of env: or file:"))),
    }
}

/// Load the blind-index root from the config's `keys.blind_index_key` (hex
/// in an environment variable or a file; relative paths resolve against
/// `base_dir`). Here rather than in `crypto`, so that the crypto core is
/// handed the secret and does not call back into `keys`.
pub fn blind_index_root(r: &SecretRef, base_dir: &Path) -> Result<BlindIndexRoot, CryptoError> {
    let s = load_secret(r, base_dir, "keys.blind_index_key")
        .map_err(|e| CryptoError::Secret(e.to_string()))?;
    BlindIndexRoot::from_hex(&s)
}

/// Whether `s` is a hex 256-bit key (for `policy check`).
pub fn check_key_hex(s: &str, what: &str) -> Result<(), KeyError> {
    decode_key_hex(s, what).map(|_| ())
}

/// Decode a hex 256-bit key (whitespace around it ignored).
pub(crate) fn decode_key_hex(s: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(s.trim(), &mut out[..]).map_err(|_| {
        KeyError::Config(format!(
            "{what}: expected 64 hex digits (a 256-bit key, as printed by `pgveil keys generate`)"
        ))
    })?;
    Ok(out)
}

/// A new random 256-bit key as hex, for `pgveil keys generate`.
pub fn generate_key_hex() -> String {
    let mut b = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut b[..]).expect("AWS-LC CSPRNG");
    hex::encode(&b[..])
}

#[cfg(test)]
mod tests;
