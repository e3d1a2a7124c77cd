//! Composition root of the session layer: policy + keys + audit → Engine.
//! The pieces are public so that a reload (`proxy::reload`) validates and
//! builds exactly as startup does. It sits above `session`, `keys` and
//! `audit` and is used by `proxy::server` (startup), `proxy::reload` and
//! `ops::demo`, so the proxy does not depend on the command line.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::keys::KeyManager;
use crate::policy::Policy;
use crate::seal::ValueCrypto;
use crate::session::Engine;

/// Build the engine when the config names a policy; `None` means pgveil runs
/// as a pure pass-through proxy.
pub async fn build(config: &Config) -> Result<Option<Arc<Engine>>, String> {
    let Some(policy) = load_policy(config)? else {
        return Ok(None);
    };
    let crypto = crypto(config, &policy).await?;
    let audit = audit(config)?;
    Ok(Some(Arc::new(Engine::new(Arc::new(policy), crypto, audit))))
}

/// The configured policy, validated (`file:line` errors).
pub fn load_policy(config: &Config) -> Result<Option<Policy>, String> {
    config
        .policy_path()
        .map(|p| Policy::load(&p).map_err(|e| e.to_string()))
        .transpose()
}

/// The key manager and blind-index root of `config`'s `keys:` section, for
/// `policy`.
pub async fn crypto(config: &Config, policy: &Policy) -> Result<Arc<ValueCrypto>, String> {
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
            crate::keys::blind_index_root(r, &config.base_dir)
                .map_err(|e| format!("keys.blind_index_key: {e}"))?,
        ),
        None => {
            check_blind_index_key(config, policy)?;
            None
        }
    };
    Ok(Arc::new(ValueCrypto::new(manager, bidx_root)))
}

/// A policy with blind indexes needs `keys.blind_index_key`.
pub fn check_blind_index_key(config: &Config, policy: &Policy) -> Result<(), String> {
    let configured = config
        .keys
        .as_ref()
        .is_some_and(|k| k.blind_index_key.is_some());
    let needed = policy
        .tables
        .iter()
        .any(|t| t.columns.iter().any(|c| c.blind_index.is_some()));
    if needed && !configured {
        return Err(
            "the policy declares blind indexes but keys.blind_index_key is missing: add it (env: or file:)"
                .into(),
        );
    }
    Ok(())
}

/// The audit log of `config`, opened (and its writer thread started).
pub fn audit(config: &Config) -> Result<Option<Arc<AuditLog>>, String> {
    match &config.audit {
        Some(a) => Ok(Some(Arc::new(
            AuditLog::open(&config.resolve(a.path.as_str()), a)
                .map_err(|e| format!("audit.path {}: {e}", a.path))?,
        ))),
        None => Ok(None),
    }
}
