//! Key rotation around `pgveil rotate`:
//! - `pgveil keys rotate [--table T] [--tenant X]`: a new data-key version
//!   per (table, tenant) for new writes (older versions keep decrypting);
//! - `pgveil keys rewrap`: master-key rotation, re-wrapping data keys only;
//! - [`KeyStates`]: which key versions `pgveil rotate` must move values off
//!   (the retired ones).

use std::collections::{BTreeSet, HashMap};

use crate::crypto::KeyRef;
use crate::keys::{KeyManager, KeyScope};

/// State of each key version, read from the keystore (nothing unwrapped).
#[derive(Debug, Default)]
pub struct KeyStates {
    /// (key id, version) → (retired, destroyed).
    map: HashMap<(u32, u32), (bool, bool)>,
}

impl KeyStates {
    /// True before the first [`refresh`](Self::refresh).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Read every key version's state from the keystore again.
    pub async fn refresh(&mut self, keys: &KeyManager) -> Result<(), String> {
        let recs = keys
            .list_keys(None)
            .await
            .map_err(|e| format!("keystore: {e}"))?;
        self.map = recs
            .iter()
            .map(|r| ((r.key_id, r.version), (r.retired, r.destroyed)))
            .collect();
        Ok(())
    }

    /// True if the value must be re-encrypted: its version is retired (a
    /// newer one exists) and not destroyed. Versions created after the last
    /// refresh trigger one re-read of the keystore.
    pub async fn is_stale(&mut self, keys: &KeyManager, key: &KeyRef) -> Result<bool, String> {
        let id = (key.key_id, key.version);
        if !self.map.contains_key(&id) {
            self.refresh(keys).await?;
        }
        match self.map.get(&id) {
            Some(&(retired, destroyed)) => Ok(retired && !destroyed),
            None => Err(format!(
                "{key} is not in the keystore: is keys.keystore the database these values were written with?"
            )),
        }
    }
}

/// Does a keystore scope (`schema.table`) match `--table` (`schema.table`
/// or a bare table name)?
pub fn table_matches(scope_table: &str, filter: &str) -> bool {
    if filter.contains('.') {
        scope_table == filter
    } else {
        scope_table.rsplit_once('.').map(|(_, t)| t) == Some(filter)
    }
}

/// Create a new data-key version for every (table, tenant) in the keystore
/// that matches the filters (`tables`: `schema.table` or bare names, empty
/// for all). A table named in `tables` that has no key yet (and no tenant
/// filter) gets its first version. Returns the new versions.
pub async fn new_versions(
    keys: &KeyManager,
    tables: &[String],
    tenant: Option<&str>,
) -> Result<Vec<(KeyScope, KeyRef)>, String> {
    let recs = keys
        .list_keys(tenant)
        .await
        .map_err(|e| format!("keystore: {e}"))?;
    let mut scopes: BTreeSet<KeyScope> = recs
        .iter()
        .filter(|r| !r.destroyed)
        .filter(|r| tables.is_empty() || tables.iter().any(|t| table_matches(&r.table, t)))
        .map(|r| KeyScope {
            table: r.table.clone(),
            tenant: r.tenant.clone(),
        })
        .collect();
    for t in tables {
        if let Some((s, n)) = t.split_once('.')
            && !scopes.iter().any(|sc| sc.table == *t)
        {
            scopes.insert(KeyScope::new(s, n, tenant));
        }
    }
    let mut out = vec![];
    for scope in scopes {
        let k = keys
            .rotate_data_key(&scope)
            .await
            .map_err(|e| format!("{scope}: {e}"))?;
        out.push((scope, k));
    }
    Ok(out)
}

/// `pgveil keys rotate`.
pub async fn keys_rotate(keys: &KeyManager, table: Option<&str>, tenant: Option<&str>) -> i32 {
    let tables: Vec<String> = table.map(|t| vec![t.to_string()]).unwrap_or_default();
    match new_versions(keys, &tables, tenant).await {
        Ok(v) if v.is_empty() => {
            eprintln!(
                "no data keys matched{}{}: nothing rotated (keys are created on first write; name a table as schema.table to create its first version)",
                table.map(|t| format!(" --table {t}")).unwrap_or_default(),
                tenant.map(|t| format!(" --tenant {t}")).unwrap_or_default()
            );
            1
        }
        Ok(v) => {
            for (scope, k) in &v {
                println!(
                    "{scope}: new writes now use data key {} v{}",
                    k.key_id, k.version
                );
            }
            println!(
                "{} data key(s) rotated; older versions still decrypt. Wait keys.cache_ttl for every pgveil instance to switch, then run `pgveil rotate --database …` to re-encrypt existing rows",
                v.len()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `pgveil keys rewrap`: master-key rotation (no rows touched).
pub async fn keys_rewrap(keys: &KeyManager) -> i32 {
    match keys.rewrap_all().await {
        Ok(n) => {
            println!(
                "re-wrapped {n} data key version(s) under the current master key; the old master key can be removed from keys.local.master_keys once every instance runs with the new config"
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::table_matches;

    #[test]
    fn table_filter() {
        assert!(table_matches("public.users", "users"));
        assert!(table_matches("public.users", "public.users"));
        assert!(!table_matches("public.users", "phi.users"));
        assert!(!table_matches("public.users2", "users"));
    }
}
