//! Process-wide engine state: the policy, the crypto bridge, and per
//! database the catalog mapped through the policy plus a plan cache keyed by
//! (role, statement text, declared parameter types).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crypto::Oid;
use crate::policy::Policy;
use crate::policy::catalog::{Catalog, ProtectedAttr};
use crate::seal::ValueCrypto;
use crate::sql::{Analyzer, ColumnRef, Mode, StatementPlan};

/// How long a database's catalog is trusted before a session reloads it
/// (DDL seen through pgveil invalidates it at once).
pub const CATALOG_TTL: Duration = Duration::from_secs(60);

/// Plans kept per database before the cache is cleared.
const PLAN_CACHE_MAX: usize = 10_000;
/// Statements longer than this are planned every time, not cached: the
/// cache would keep their text (and the literals in their plans) after the
/// memory budget released them, and texts that long (bulk literals) are
/// not sent twice.
const PLAN_CACHE_MAX_TEXT: usize = 64 * 1024;

pub struct Engine {
    pub policy: Arc<Policy>,
    pub crypto: Arc<ValueCrypto>,
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    catalogs: Mutex<HashMap<String, Arc<CatalogEntry>>>,
    generation: AtomicU64,
}

impl Engine {
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

/// One database's catalog seen through the policy, and its plan cache.
pub struct CatalogEntry {
    pub catalog: Catalog,
    pub analyzer: Analyzer,
    /// Base-table protected columns by name.
    pub by_column: HashMap<ColumnRef, Arc<ProtectedAttr>>,
    /// (table or view OID, attnum) → protected column.
    pub by_attr: HashMap<(Oid, i16), Arc<ProtectedAttr>>,
    /// `schema.table` → SQL type of its tenant column (for binary params).
    pub tenant_types: HashMap<(String, String), String>,
    /// Statement text → plans per (role, declared parameter types). Looked
    /// up by `&str`, so a cache hit allocates nothing.
    plans: Mutex<HashMap<String, Vec<PlanEntry>>>,
    loaded_at: Instant,
    generation: u64,
}

struct PlanEntry {
    role: String,
    /// `None` for the simple protocol.
    params: Option<Vec<Oid>>,
    plans: Arc<Vec<StatementPlan>>,
}

impl CatalogEntry {
    pub fn new(policy: Arc<Policy>, catalog: Catalog, generation: u64) -> CatalogEntry {
        let analyzer = Analyzer::with_catalog(policy.clone(), &catalog);
        let mut by_column = HashMap::new();
        let mut by_attr = HashMap::new();
        for (k, attr) in &catalog.protected {
            let a = Arc::new(attr.clone());
            by_column
                .entry(a.column.clone())
                .or_insert_with(|| a.clone());
            by_attr.insert(*k, a);
        }
        // Prefer the base table's own entry for names (views share names).
        for t in &policy.tables {
            if let Some(rel) = catalog.relation(&t.schema, &t.table) {
                for (attnum, name, _) in &rel.columns {
                    if let Some(a) = by_attr.get(&(rel.oid, *attnum))
                        && a.column.column == *name
                    {
                        by_column.insert(a.column.clone(), a.clone());
                    }
                }
            }
        }
        let mut tenant_types = HashMap::new();
        for t in &policy.tables {
            if let (Some(tc), Some(rel)) = (&t.tenant, catalog.relation(&t.schema, &t.table))
                && let Some((_, _, ty)) = rel.columns.iter().find(|c| &c.1 == tc)
            {
                tenant_types.insert((t.schema.clone(), t.table.clone()), ty.clone());
            }
        }
        CatalogEntry {
            catalog,
            analyzer,
            by_column,
            by_attr,
            tenant_types,
            plans: Mutex::new(HashMap::new()),
            loaded_at: Instant::now(),
            generation,
        }
    }

    fn is_fresh(&self, generation: u64) -> bool {
        self.generation == generation && self.loaded_at.elapsed() < CATALOG_TTL
    }

    /// Plans for `sql`, from the cache when this (role, text, types) was
    /// planned before.
    pub fn plan(&self, sql: &str, role: &str, mode: Mode<'_>) -> Arc<Vec<StatementPlan>> {
        let params = match mode {
            Mode::Simple => None,
            Mode::Extended { param_types } => Some(param_types),
        };
        if let Some(entries) = self.plans.lock().expect("plan cache").get(sql)
            && let Some(e) = entries
                .iter()
                .find(|e| e.role == role && e.params.as_deref() == params)
        {
            crate::metrics::hot().plan_cache_hits.increment(1);
            return e.plans.clone();
        }
        crate::metrics::hot().plan_cache_misses.increment(1);
        let plans = Arc::new(self.analyzer.plan(sql, role, mode));
        if sql.len() > PLAN_CACHE_MAX_TEXT {
            return plans;
        }
        let mut cache = self.plans.lock().expect("plan cache");
        if cache.len() >= PLAN_CACHE_MAX {
            cache.clear();
        }
        cache.entry(sql.to_string()).or_default().push(PlanEntry {
            role: role.to_string(),
            params: params.map(<[Oid]>::to_vec),
            plans: plans.clone(),
        });
        plans
    }

    pub fn column(&self, c: &ColumnRef) -> Option<&Arc<ProtectedAttr>> {
        self.by_column.get(c)
    }
}
