//! Composition root of the session layer: policy + keys + audit → Engine.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::crypto::blind_index::BlindIndexRoot;
use crate::keys::KeyManager;
use crate::policy::Policy;
use crate::session::Engine;
use crate::session::values::ValueCrypto;

/// Build the engine when the config names a policy; `None` means pgveil runs
/// as a pure pass-through proxy.
pub async fn build(config: &Config) -> Result<Option<Arc<Engine>>, String> {
    let Some(policy_path) = config.policy_path() else {
        return Ok(None);
    };
    let policy = Policy::load(&policy_path).map_err(|e| e.to_string())?;
    let Some(keys) = &config.keys else {
        return Err(format!(
            "{}: a policy is configured but `keys:` is missing: add keys.provider and its master keys",
            config.path.display()
        ));
    };
    let manager = KeyManager::from_config(keys, &config.base_dir)
        .await
        .map_err(|e| format!("keys: {e}"))?;
    let bidx_root = match &keys.blind_index_key {
        Some(r) => Some(
            BlindIndexRoot::from_secret_ref(r, &config.base_dir)
                .map_err(|e| format!("keys.blind_index_key: {e}"))?,
        ),
        None => {
            if policy
                .tables
                .iter()
                .any(|t| t.columns.iter().any(|c| c.blind_index.is_some()))
            {
                return Err(
                    "the policy declares blind indexes but keys.blind_index_key is missing: add it (env: or file:)"
                        .into(),
                );
            }
            None
        }
    };
    let audit = match &config.audit {
        Some(a) => Some(Arc::new(
            AuditLog::open(&config.resolve(a.path.as_str()), a.max_bytes, a.keep)
                .map_err(|e| format!("audit.path {}: {e}", a.path))?,
        )),
        None => None,
    };
    let crypto = Arc::new(ValueCrypto::new(manager, bidx_root));
    Ok(Some(Arc::new(Engine::new(Arc::new(policy), crypto, audit))))
}
