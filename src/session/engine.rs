//! Process-wide engine state: the policy, the crypto bridge, the audit log,
//! and per database the catalog seen through the policy ([`CatalogEntry`]),
//! shared by every session of that database and reloaded when stale. A
//! catalog query that failed in one session is never cached for the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::database::CatalogEntry;
use crate::policy::Policy;
use crate::policy::catalog::Catalog;
use crate::seal::ValueCrypto;

/// What every session of one policy shares: the policy, the value crypto, the audit log and the catalog entry per database.
pub struct Engine {
    pub policy: Arc<Policy>,
    pub crypto: Arc<ValueCrypto>,
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    catalogs: Mutex<HashMap<String, Arc<CatalogEntry>>>,
    generation: AtomicU64,
}

impl Engine {
    /// An engine with no catalog loaded yet.
    pub fn new(
        policy: Arc<Policy>,
        crypto: Arc<ValueCrypto>,
        audit: Option<Arc<crate::audit::AuditLog>>,
    ) -> Engine {
        Engine {
            policy,
            crypto,
            audit,
            catalogs: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The catalog of `database` if it is still fresh.
    pub fn cached(&self, database: &str) -> Option<Arc<CatalogEntry>> {
        let map = self.catalogs.lock().expect("catalog map");
        let e = map.get(database)?;
        e.is_fresh(self.generation.load(Ordering::Acquire))
            .then(|| e.clone())
    }

    /// Every database's catalog that is still fresh (a reload checks a new
    /// policy against them).
    pub fn fresh_catalogs(&self) -> Vec<(String, Arc<CatalogEntry>)> {
        let generation = self.generation.load(Ordering::Acquire);
        let map = self.catalogs.lock().expect("catalog map");
        map.iter()
            .filter(|(_, e)| e.is_fresh(generation))
            .map(|(db, e)| (db.clone(), e.clone()))
            .collect()
    }

    /// Whether `entry` should be reloaded.
    pub fn is_stale(&self, entry: &CatalogEntry) -> bool {
        !entry.is_fresh(self.generation.load(Ordering::Acquire))
    }

    /// Build and cache the catalog of `database` from the rows of
    /// [`Catalog::simple_query`] (names hex-encoded).
    ///
    /// The query runs inside a client's session (pgveil holds no
    /// credentials of its own for the data databases: the keystore may live
    /// in another cluster, and `auth.user` is optional), yet the result is
    /// shared by every session of the database. That is sound because the
    /// query's answer does not depend on the session: see
    /// [`Catalog::simple_query`] (pinned `search_path`, qualified names and
    /// operators, no temporary relations, hex names).
    pub fn install(&self, database: &str, rows: Vec<Vec<Option<String>>>) -> Arc<CatalogEntry> {
        let catalog = Catalog::from_hex_rows(&self.policy, rows);
        for p in &catalog.problems {
            tracing::warn!(database, problem = %p, "policy does not match the schema; run `pgveil policy check --database`");
        }
        let entry = Arc::new(CatalogEntry::new(
            self.policy.clone(),
            catalog,
            self.generation.load(Ordering::Acquire),
        ));
        self.catalogs
            .lock()
            .expect("catalog map")
            .insert(database.to_string(), entry.clone());
        entry
    }

    /// The catalog query failed in this session (a timeout, a broken
    /// connection, a revoked catalog privilege …): an empty catalog for this
    /// session only, so that its statements on protected tables are refused,
    /// and nothing is cached (one session's failure must not become every
    /// session's catalog).
    pub fn failed_catalog(&self) -> Arc<CatalogEntry> {
        Arc::new(CatalogEntry::new(
            self.policy.clone(),
            Catalog::from_rows(&self.policy, vec![]),
            self.generation.load(Ordering::Acquire),
        ))
    }

    /// DDL ran somewhere: every database's catalog must be reloaded.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
