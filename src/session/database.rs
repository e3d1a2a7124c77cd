//! One database's catalog seen through the policy ([`CatalogEntry`]): its
//! protected columns by name and by (OID, attnum), its tenant column types,
//! and how long it is trusted ([`CATALOG_TTL`], or until DDL bumps the
//! engine's generation). Its plan cache is in `plan_cache`, the map of
//! entries per database in `engine`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::plan_cache::PlanEntry;
use crate::crypto::Oid;
use crate::policy::Policy;
use crate::policy::catalog::{Catalog, ProtectedAttr};
use crate::sql::{Analyzer, ColumnRef};

/// How long a database's catalog is trusted before a session reloads it
/// (DDL seen through pgveil invalidates it at once).
pub const CATALOG_TTL: Duration = Duration::from_secs(60);

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
    pub(super) plans: Mutex<HashMap<String, Vec<PlanEntry>>>,
    loaded_at: Instant,
    generation: u64,
}

impl CatalogEntry {
    /// The entry for `catalog` as loaded at engine generation `generation`, with an empty plan cache.
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

    pub(super) fn is_fresh(&self, generation: u64) -> bool {
        self.generation == generation && self.loaded_at.elapsed() < CATALOG_TTL
    }

    /// The protected column `c` names, if it is one.
    pub fn column(&self, c: &ColumnRef) -> Option<&Arc<ProtectedAttr>> {
        self.by_column.get(c)
    }
}
