//! The plan cache of one database's [`CatalogEntry`]: plans per statement
//! text, role and declared parameter types, looked up by `&str` so that a
//! hit allocates nothing. Cleared whole when full; statements longer than
//! `PLAN_CACHE_MAX_TEXT` are never cached (their text and literals would
//! outlive the memory budget that released them).

use std::sync::Arc;

use super::database::CatalogEntry;
use crate::crypto::Oid;
use crate::sql::{Mode, StatementPlan};

/// Plans kept per database before the cache is cleared.
const PLAN_CACHE_MAX: usize = 10_000;

/// Statements longer than this are planned every time, not cached: the
/// cache would keep their text (and the literals in their plans) after the
/// memory budget released them, and texts that long (bulk literals) are
/// not sent twice.
const PLAN_CACHE_MAX_TEXT: usize = 64 * 1024;

pub(super) struct PlanEntry {
    role: String,
    /// `None` for the simple protocol.
    params: Option<Vec<Oid>>,
    plans: Arc<Vec<StatementPlan>>,
}

impl CatalogEntry {
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
}
