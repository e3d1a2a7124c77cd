use futures::future::BoxFuture;

use super::KeyError;
use crate::crypto::DataKey;

/// What a data key is for; bound to its wrapping (AES-GCM AAD for the local
/// provider, KMS encryption context for AWS), so a wrapped key copied to
/// another keystore row does not unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapContext {
    /// Data-key id (one per table, or table and tenant).
    pub key_id: u32,
    /// Version of that data key.
    pub version: u32,
    /// `schema.table`.
    pub table: String,
    /// Tenant the key belongs to (`None`: a table without tenants).
    pub tenant: Option<String>,
}

impl WrapContext {
    /// The (sorted) key/value pairs: the KMS encryption context.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("pgveil:key-id", self.key_id.to_string()),
            ("pgveil:key-version", self.version.to_string()),
            ("pgveil:purpose", "data-key".to_string()),
            ("pgveil:table", self.table.clone()),
        ];
        if let Some(t) = &self.tenant {
            v.push(("pgveil:tenant", t.clone()));
        }
        v
    }

    /// Human name for errors: `data key 3 v2`.
    pub fn describe(&self) -> String {
        format!("data key {} v{}", self.key_id, self.version)
    }
}

/// A data key wrapped by a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The master key that wrapped it (local id, or KMS key ARN).
    pub master_key_id: String,
    /// The ciphertext of the data key, in the provider's own format.
    pub blob: Vec<u8>,
}

/// A holder of master keys (key-encryption keys) that never hands them out.
/// Object-safe: futures are boxed.
pub trait MasterKeyProvider: Send + Sync {
    /// `local` or `aws-kms`, for messages and metrics.
    fn kind(&self) -> &'static str;

    /// The master key that wraps new data keys (resolved to the id stored
    /// with wrapped keys, e.g. a KMS key ARN).
    fn current_master_key_id(&self) -> BoxFuture<'_, Result<String, KeyError>>;

    /// A fresh data key and its wrapping under the current master key.
    fn generate<'a>(
        &'a self,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        Box::pin(async move {
            let dek = DataKey::generate();
            let w = self.wrap(&dek, ctx).await?;
            Ok((dek, w))
        })
    }

    /// Wrap an existing data key under the current master key.
    fn wrap<'a>(
        &'a self,
        dek: &'a DataKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<WrappedKey, KeyError>>;

    /// Unwrap with the master key named in `wrapped` and the same context.
    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>>;
}
