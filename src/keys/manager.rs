//! [`KeyManager`]: data keys for the crypto core, with a TTL cache,
//! single-flight misses and encryption counting.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::{
    AwsKmsProvider, KeyError, KeyRecord, KeyScope, Keystore, LocalProvider, MasterKeyProvider,
};
use crate::config::{KeyProvider, Keys};
use crate::crypto::{ColumnContext, DataKey, KeyRef};

/// Tunables of a [`KeyManager`].
#[derive(Debug, Clone)]
pub struct KeyManagerOptions {
    /// How long an unwrapped data key stays in memory (`keys.cache_ttl`).
    pub cache_ttl: Duration,
    /// Encryptions reserved in the keystore at a time per data key.
    pub reserve_batch: u64,
    /// Encryptions after which a data key version is retired and a new one
    /// created (at most 2^32, NIST SP 800-38D's bound for random nonces).
    pub max_encryptions: u64,
}

impl Default for KeyManagerOptions {
    fn default() -> Self {
        KeyManagerOptions {
            cache_ttl: Duration::from_secs(300),
            reserve_batch: 1 << 16,
            max_encryptions: 1 << 32,
        }
    }
}

type Loaded = Result<Arc<DataKey>, KeyError>;
type SharedLoad = Shared<BoxFuture<'static, Loaded>>;

struct Cached {
    dek: Arc<DataKey>,
    expires: Instant,
}

/// The current encryption key of one scope, with encryptions left in the
/// reserved batch.
struct EncSlot {
    key_ref: KeyRef,
    dek: Arc<DataKey>,
    remaining: u64,
    expires: Instant,
}

struct Inner {
    provider: Arc<dyn MasterKeyProvider>,
    store: Keystore,
    opts: KeyManagerOptions,
    /// Unwrapped keys by (key_id, version).
    cache: Mutex<HashMap<(u32, u32), Cached>>,
    /// Misses being loaded: later callers await the same future.
    inflight: Mutex<HashMap<(u32, u32), SharedLoad>>,
    enc: Mutex<HashMap<KeyScope, EncSlot>>,
    /// One refill at a time per scope.
    enc_locks: Mutex<HashMap<KeyScope, Arc<tokio::sync::Mutex<()>>>>,
    /// Tenant of each key id seen (key ids are never reused).
    tenants: Mutex<HashMap<u32, Option<String>>>,
}

/// Hands out data keys. Cheap to clone (an `Arc`), `Send + Sync`.
///
/// - Unwrapped keys live in memory for `cache_ttl`, then are dropped (and
///   zeroized); they are never logged or written anywhere.
/// - A miss makes one keystore read and one provider call, however many
///   tasks miss the same key at once (single flight).
/// - Each [`encryption_key`](Self::encryption_key) call accounts for one
///   encryption; counts are reserved in the keystore in batches, and a data
///   key version is retired before `max_encryptions`.
#[derive(Clone)]
pub struct KeyManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("provider", &self.inner.provider.kind())
            .field("keystore", &self.inner.store)
            .finish()
    }
}

fn now() -> Instant {
    Instant::now()
}

impl KeyManager {
    /// A manager over `provider` and `store`; nothing is cached or connected yet.
    pub fn new(
        provider: Arc<dyn MasterKeyProvider>,
        store: Keystore,
        opts: KeyManagerOptions,
    ) -> KeyManager {
        KeyManager {
            inner: Arc::new(Inner {
                provider,
                store,
                opts,
                cache: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                enc: Mutex::new(HashMap::new()),
                enc_locks: Mutex::new(HashMap::new()),
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Build from the config's `keys:` section. Secrets are read now (a
    /// missing variable or bad key is reported at startup); the keystore is
    /// connected on first use.
    pub async fn from_config(keys: &Keys, base_dir: &Path) -> Result<KeyManager, KeyError> {
        let provider: Arc<dyn MasterKeyProvider> = match keys.provider {
            KeyProvider::Local => {
                let l = keys.local.as_ref().ok_or_else(|| {
                    KeyError::Config("keys.provider is local but keys.local is missing".into())
                })?;
                Arc::new(LocalProvider::from_config(l, base_dir)?)
            }
            KeyProvider::AwsKms => {
                let a = keys.aws_kms.as_ref().ok_or_else(|| {
                    KeyError::Config("keys.provider is aws-kms but keys.aws_kms is missing".into())
                })?;
                Arc::new(AwsKmsProvider::from_config(a).await?)
            }
        };
        let ks = keys.keystore.as_ref().ok_or_else(|| {
            KeyError::Config(
                "keys.keystore.database is missing: name the database that holds wrapped data keys (keep it out of the data database's backups)".into(),
            )
        })?;
        let store = Keystore::new(ks.database.as_str())?;
        let mut opts = KeyManagerOptions::default();
        if let Some(t) = &keys.cache_ttl {
            opts.cache_ttl = t.0;
        }
        Ok(KeyManager::new(provider, store, opts))
    }

    /// The master-key provider that wraps and unwraps data keys.
    pub fn provider(&self) -> &Arc<dyn MasterKeyProvider> {
        &self.inner.provider
    }

    /// The keystore holding the wrapped data keys.
    pub fn keystore(&self) -> &Keystore {
        &self.inner.store
    }

    /// The key to encrypt one value of `ctx` (its table and tenant), creating
    /// the first data key of that scope on first use. Accounts for one
    /// encryption.
    pub async fn encryption_key(
        &self,
        ctx: &ColumnContext,
    ) -> Result<(KeyRef, Arc<DataKey>), KeyError> {
        self.encryption_key_for(&KeyScope::of(ctx), 1).await
    }

    /// The key to encrypt `n` values of `scope` (e.g. one backfill batch).
    pub async fn encryption_key_for(
        &self,
        scope: &KeyScope,
        n: u64,
    ) -> Result<(KeyRef, Arc<DataKey>), KeyError> {
        if scope
            .tenant
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.len() > 255)
        {
            return Err(KeyError::Config(format!(
                "{}: tenant ids must be 1 to 255 bytes long",
                scope.table
            )));
        }
        let n = n.max(1);
        if let Some(hit) = self.take_slot(scope, n) {
            return Ok(hit);
        }
        let lock = {
            let mut locks = self.inner.enc_locks.lock().expect("enc_locks");
            locks.entry(scope.clone()).or_default().clone()
        };
        let _g = lock.lock().await;
        if let Some(hit) = self.take_slot(scope, n) {
            return Ok(hit);
        }
        let opts = &self.inner.opts;
        let batch = opts.reserve_batch.max(n);
        // Same version as before if it is still fresh, else whatever the
        // keystore says is current (another instance may have rotated).
        let prev = {
            let enc = self.inner.enc.lock().expect("enc");
            enc.get(scope)
                .filter(|s| s.expires > now())
                .map(|s| (s.key_ref.clone(), s.dek.clone()))
        };
        let (mut key_ref, mut dek) = match prev {
            Some(p) => p,
            None => self.current(scope, false).await?,
        };
        let mut rotated = false;
        loop {
            match self
                .inner
                .store
                .reserve(key_ref.key_id, key_ref.version, batch, opts.max_encryptions)
                .await?
            {
                Some(_) => break,
                None if !rotated => {
                    tracing::info!(
                        key_id = key_ref.key_id,
                        version = key_ref.version,
                        "data key reached its encryption limit or was retired: using a new version"
                    );
                    (key_ref, dek) = self.current(scope, false).await?;
                    // If the keystore still calls it current, it is exhausted: rotate.
                    if self
                        .inner
                        .store
                        .reserve(key_ref.key_id, key_ref.version, batch, opts.max_encryptions)
                        .await?
                        .is_some()
                    {
                        break;
                    }
                    (key_ref, dek) = self.current(scope, true).await?;
                    rotated = true;
                }
                None => {
                    return Err(KeyError::Keystore(format!(
                        "could not reserve encryptions under a new version of the data key of {scope}"
                    )));
                }
            }
        }
        let mut enc = self.inner.enc.lock().expect("enc");
        let t = now();
        enc.retain(|_, s| s.expires > t);
        enc.insert(
            scope.clone(),
            EncSlot {
                key_ref: key_ref.clone(),
                dek: dek.clone(),
                remaining: batch - n,
                expires: t + opts.cache_ttl,
            },
        );
        Ok((key_ref, dek))
    }

    fn take_slot(&self, scope: &KeyScope, n: u64) -> Option<(KeyRef, Arc<DataKey>)> {
        let mut enc = self.inner.enc.lock().expect("enc");
        let s = enc.get_mut(scope)?;
        if s.expires <= now() || s.remaining < n {
            return None;
        }
        s.remaining -= n;
        Some((s.key_ref.clone(), s.dek.clone()))
    }

    /// Current (or, with `rotate`, a new) version of `scope`, unwrapped.
    async fn current(
        &self,
        scope: &KeyScope,
        rotate: bool,
    ) -> Result<(KeyRef, Arc<DataKey>), KeyError> {
        let (rec, fresh) = self
            .inner
            .store
            .current_or_create(
                scope,
                self.inner.provider.as_ref(),
                rotate,
                self.inner.opts.max_encryptions,
            )
            .await?;
        let key_ref = rec.key_ref();
        self.inner
            .tenants
            .lock()
            .expect("tenants")
            .insert(rec.key_id, rec.tenant.clone());
        let dek = match fresh {
            Some(d) => {
                let d = Arc::new(d);
                self.inner.cache.lock().expect("cache").insert(
                    (rec.key_id, rec.version),
                    Cached {
                        dek: d.clone(),
                        expires: now() + self.inner.opts.cache_ttl,
                    },
                );
                d
            }
            None => self.decryption_key(&key_ref).await?,
        };
        Ok((key_ref, dek))
    }

    /// The key an envelope names (see [`crate::crypto::envelope::peek_key`]).
    /// Fails with "key destroyed" for shredded tenants.
    pub async fn decryption_key(&self, key_ref: &KeyRef) -> Result<Arc<DataKey>, KeyError> {
        let id = (key_ref.key_id, key_ref.version);
        {
            let cache = self.inner.cache.lock().expect("cache");
            if let Some(c) = cache.get(&id)
                && c.expires > now()
            {
                metrics::counter!("pgveil_key_cache_hits_total").increment(1);
                return Ok(c.dek.clone());
            }
        }
        metrics::counter!("pgveil_key_cache_misses_total").increment(1);
        let fut = {
            let mut inflight = self.inner.inflight.lock().expect("inflight");
            match inflight.get(&id) {
                Some(f) => f.clone(),
                None => {
                    let inner = self.inner.clone();
                    let f: BoxFuture<'static, Loaded> = Box::pin(async move {
                        let r = load(&inner, id).await;
                        if let Ok(d) = &r {
                            let mut cache = inner.cache.lock().expect("cache");
                            let t = now();
                            cache.retain(|_, c| c.expires > t);
                            cache.insert(
                                id,
                                Cached {
                                    dek: d.clone(),
                                    expires: t + inner.opts.cache_ttl,
                                },
                            );
                        }
                        inner.inflight.lock().expect("inflight").remove(&id);
                        r
                    });
                    let f = f.shared();
                    inflight.insert(id, f.clone());
                    f
                }
            }
        };
        let dek = fut.await?;
        // The key id fixes the tenant: an envelope naming another tenant
        // was tampered with (its AAD check would fail anyway).
        self.check_tenant(key_ref, dek)
    }

    fn check_tenant(&self, key_ref: &KeyRef, d: Arc<DataKey>) -> Result<Arc<DataKey>, KeyError> {
        let tenants = self.inner.tenants.lock().expect("tenants");
        match tenants.get(&key_ref.key_id) {
            Some(t) if *t != key_ref.tenant => Err(KeyError::ScopeMismatch {
                key: format!("data key {} v{}", key_ref.key_id, key_ref.version),
                actual: match t {
                    Some(t) => format!("tenant {t:?}"),
                    None => "a table without tenants".into(),
                },
                claimed: match &key_ref.tenant {
                    Some(t) => format!("tenant {t:?}"),
                    None => "no tenant".into(),
                },
            }),
            _ => Ok(d),
        }
    }

    /// Create a new data-key version of `scope` for new writes; older
    /// versions still decrypt. Returns the new version.
    pub async fn rotate_data_key(&self, scope: &KeyScope) -> Result<KeyRef, KeyError> {
        let lock = {
            let mut locks = self.inner.enc_locks.lock().expect("enc_locks");
            locks.entry(scope.clone()).or_default().clone()
        };
        let _g = lock.lock().await;
        let (key_ref, _) = self.current(scope, true).await?;
        self.inner.enc.lock().expect("enc").remove(scope);
        Ok(key_ref)
    }

    /// Master-key rotation: re-wrap every live data key not wrapped by the
    /// provider's current master key. Rows are not touched. Returns how many
    /// were re-wrapped.
    pub async fn rewrap_all(&self) -> Result<usize, KeyError> {
        let current = self.inner.provider.current_master_key_id().await?;
        let mut n = 0;
        for rec in self.inner.store.list(None).await? {
            let Some(old) = rec.wrapped_key() else {
                continue;
            };
            if rec.master_key_id == current {
                continue;
            }
            let ctx = rec.wrap_context();
            let dek = self.inner.provider.unwrap(&old, &ctx).await?;
            let new = self.inner.provider.wrap(&dek, &ctx).await?;
            if self.inner.store.replace_wrapping(&rec, &old, &new).await? {
                tracing::info!(key_id = rec.key_id, version = rec.version,
                    from = %rec.master_key_id, to = %new.master_key_id, "data key re-wrapped");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Crypto-shredding: destroy every wrapped data key of `tenant` in the
    /// keystore and drop them from this process's caches. Other running
    /// instances drop theirs within `cache_ttl`. Returns the number of key
    /// versions destroyed.
    pub async fn shred_tenant(&self, tenant: &str) -> Result<u64, KeyError> {
        let n = self.inner.store.destroy_tenant(tenant).await?;
        let ids: Vec<u32> = {
            let tenants = self.inner.tenants.lock().expect("tenants");
            tenants
                .iter()
                .filter(|(_, t)| t.as_deref() == Some(tenant))
                .map(|(k, _)| *k)
                .collect()
        };
        self.inner
            .cache
            .lock()
            .expect("cache")
            .retain(|(k, _), _| !ids.contains(k));
        self.inner
            .enc
            .lock()
            .expect("enc")
            .retain(|s, _| s.tenant.as_deref() != Some(tenant));
        tracing::info!(versions = n, "tenant data keys destroyed");
        Ok(n)
    }

    /// Key versions in the keystore (optionally one tenant's), without
    /// unwrapping anything.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyError> {
        self.inner.store.list(tenant).await
    }

    /// Drop every cached data key now (they are zeroized when the last
    /// user's `Arc` goes).
    pub fn clear_cache(&self) {
        self.inner.cache.lock().expect("cache").clear();
        self.inner.enc.lock().expect("enc").clear();
    }
}

/// Keystore read + provider unwrap for one key version.
async fn load(inner: &Inner, id: (u32, u32)) -> Loaded {
    let name = format!("data key {} v{}", id.0, id.1);
    let rec = inner
        .store
        .get(id.0, id.1)
        .await?
        .ok_or_else(|| KeyError::UnknownKey { key: name.clone() })?;
    inner
        .tenants
        .lock()
        .expect("tenants")
        .insert(rec.key_id, rec.tenant.clone());
    let Some(wrapped) = rec.wrapped_key() else {
        return Err(KeyError::KeyDestroyed {
            key: match &rec.tenant {
                Some(t) => format!("{name} of {} tenant {t:?}", rec.table),
                None => format!("{name} of {}", rec.table),
            },
        });
    };
    tracing::debug!(
        key_id = id.0,
        version = id.1,
        provider = inner.provider.kind(),
        "unwrapping data key"
    );
    let started = std::time::Instant::now();
    let dek = inner.provider.unwrap(&wrapped, &rec.wrap_context()).await;
    metrics::histogram!("pgveil_kms_seconds", "op" => "unwrap")
        .record(started.elapsed().as_secs_f64());
    let dek = dek.inspect_err(|_| metrics::counter!("pgveil_kms_errors_total").increment(1))?;
    Ok(Arc::new(dek))
}
