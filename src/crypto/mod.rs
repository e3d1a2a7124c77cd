//! Crypto core: canonical plaintext encoding, the envelope format (AES-256-GCM)
//! and the blind index. See `docs/crypto.md` for the byte-level description a
//! reviewer can audit.
//!
//! Nothing in this module logs, and no error it returns contains a plaintext
//! value or key material.

pub mod blind_index;
pub mod canonical;
pub mod envelope;
mod error;
pub mod types;

pub use blind_index::{BlindIndexKey, BlindIndexRoot};
pub use canonical::{Format, canonicalize, render};
pub use envelope::{DataKey, KeyRef};
pub use error::CryptoError;
pub use types::{Normalizer, Oid, PgType, Storage};

/// The logical place a protected value belongs to. Bound into every
/// envelope's associated data by *name* (not OID), so a `pg_dump` restored
/// into another cluster still decrypts, while a value copied into another
/// column or tenant does not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnContext {
    /// Schema of the protected column's table, as the policy names it.
    pub schema: String,
    /// Table of the protected column, as the policy names it.
    pub table: String,
    /// The protected column's name.
    pub column: String,
    /// Plaintext type declared by the policy.
    pub ty: PgType,
    /// Tenant id of the row, for tables with `tenant:` in the policy.
    pub tenant: Option<String>,
}

impl ColumnContext {
    /// A context for `schema.table.column` of type `ty`, without a tenant.
    pub fn new(schema: &str, table: &str, column: &str, ty: PgType) -> Self {
        ColumnContext {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
            ty,
            tenant: None,
        }
    }

    /// The same context for the row of `tenant`.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// `schema.table`: the data-key scope (see [`crate::keys::KeyScope`]).
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests;
