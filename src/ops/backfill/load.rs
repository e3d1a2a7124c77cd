//! What a run loads before it walks anything: the policy and keys of the
//! config ([`Setup`], built as `crate::engine` builds them for the proxy),
//! the tables `--table` selects, and the catalog of the policy's tables.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::Config;
use crate::keys::KeyManager;
use crate::ops::db;
use crate::policy::catalog::Catalog;
use crate::policy::{Policy, TablePolicy};
use crate::seal::ValueCrypto;

/// The policy, the crypto bridge and the key manager, built from a config
/// the same way the proxy builds them.
pub struct Setup {
    pub policy: Arc<Policy>,
    pub crypto: Arc<ValueCrypto>,
}

/// Load the policy and keys of `config` (as `crate::engine::build` does).
pub async fn setup(config: &Config) -> Result<Setup, String> {
    let Some(policy_path) = config.policy_path() else {
        return Err(format!(
            "{}: no `policy:` configured: add `policy: <file>`",
            config.path.display()
        ));
    };
    let policy = Policy::load(&policy_path).map_err(|e| e.to_string())?;
    let keys = key_manager(config).await?;
    let kc = config.keys.as_ref().expect("checked by key_manager");
    let bidx_root = match &kc.blind_index_key {
        Some(r) => Some(
            crate::keys::blind_index_root(r, &config.base_dir)
                .map_err(|e| format!("keys.blind_index_key: {e}"))?,
        ),
        None => None,
    };
    Ok(Setup {
        policy: Arc::new(policy),
        crypto: Arc::new(ValueCrypto::new(keys, bidx_root)),
    })
}

/// The key manager of `config` (keystore + master-key provider).
pub async fn key_manager(config: &Config) -> Result<KeyManager, String> {
    let Some(keys) = &config.keys else {
        return Err(format!(
            "{}: `keys:` is missing: add keys.provider, its master keys and keys.keystore",
            config.path.display()
        ));
    };
    KeyManager::from_config(keys, &config.base_dir)
        .await
        .map_err(|e| format!("keys: {e}"))
}

/// The policy tables selected by `--table`.
pub fn select_tables<'p>(
    policy: &'p Policy,
    table: Option<&str>,
) -> Result<Vec<&'p TablePolicy>, String> {
    let Some(name) = table else {
        return Ok(policy.tables.iter().collect());
    };
    let found: Vec<&TablePolicy> = match name.split_once('.') {
        Some((s, t)) => policy.table(s, t).into_iter().collect(),
        None => policy.tables.iter().filter(|t| t.table == name).collect(),
    };
    match found.len() {
        1 => Ok(found),
        0 => Err(format!(
            "--table {name}: not a protected table of the policy (protected: {})",
            policy
                .tables
                .iter()
                .map(|t| t.qualified())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "--table {name} is ambiguous: write it as schema.table ({})",
            found
                .iter()
                .map(|t| t.qualified())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Read the catalog of the policy's tables through `client`.
pub async fn load_catalog(policy: &Policy, client: &Client) -> Result<Catalog, String> {
    crate::policy::check::load_catalog(policy, client)
        .await
        .map_err(|e| format!("cannot read the database catalog: {}", db::describe(&e)))
}
