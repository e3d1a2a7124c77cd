//! Views over protected tables. A view's columns are resolved by parsing
//! its `pg_get_viewdef`: a column that shows a base column (protected,
//! blind-index or tenant) unchanged is mapped to it, so it decrypts and is
//! looked up as the base column; one computed from protected data in a way
//! pgveil cannot map to one base column is `unknown` (shown as stored,
//! refused in writes, lookups and comparisons). Whatever cannot be analysed
//! is unknown. Views over views are resolved until nothing changes; each
//! view also gets the blind indexes its rows may carry.

use std::collections::HashSet;

use sqlparser::ast::{Expr, ObjectNamePart, Select, SelectItem, SetExpr, Statement, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{Catalog, ProtectedAttr, Relation, ViewColumn};
use crate::policy::{ColumnRef, Policy, TablePolicy};

/// A relation of a view's FROM: (alias, (schema, table)).
type FromRel = (String, (String, String));

impl Catalog {
    /// Resolve the columns of every view returned (`order`: the relations
    /// in the order the rows named them), their blind indexes, and map the
    /// columns that show a protected column by the view's (OID, attnum).
    pub(super) fn map_views(&mut self, policy: &Policy, order: &[(String, String)]) {
        // Views, possibly over other views: resolve until nothing changes.
        let view_keys: Vec<(String, String)> = order
            .iter()
            .filter(|k| self.relations[*k].is_view())
            .cloned()
            .collect();
        for _ in 0..=view_keys.len() {
            let mut changed = false;
            for k in &view_keys {
                let cols = self.resolve_view(policy, &self.relations[k]);
                if self.views.get(k) != Some(&cols) {
                    self.views.insert(k.clone(), cols);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for k in &view_keys {
            let b = self.blind_indexes_read(policy, k, 0);
            self.view_blind_indexes.insert(k.clone(), b);
        }
        for k in &view_keys {
            let rel = &self.relations[k];
            self.names.insert(rel.name.to_lowercase());
            let Some(cols) = self.views.get(k) else {
                continue;
            };
            for (i, vc) in cols.iter().enumerate() {
                let Some(base) = &vc.base else { continue };
                let Some(attr) = self.base_attr(base) else {
                    continue;
                };
                let attnum = rel.columns.get(i).map(|c| c.0).unwrap_or(i as i16 + 1);
                self.protected.insert((rel.oid, attnum), attr);
            }
        }
    }

    /// The protected columns whose blind index rows of `key` may carry:
    /// its own (a policy table), its root's (a planned child), those of
    /// everything a view reads, and every one in the policy for a relation
    /// pgveil refuses (a child it cannot plan, an ancestor) or a view whose
    /// reads it does not know.
    fn blind_indexes_read(
        &self,
        policy: &Policy,
        key: &(String, String),
        depth: usize,
    ) -> Vec<ColumnRef> {
        let all = || -> Vec<ColumnRef> {
            policy
                .tables
                .iter()
                .flat_map(|t| {
                    t.columns
                        .iter()
                        .filter(|c| c.blind_index.is_some())
                        .map(|c| ColumnRef::new(&t.schema, &t.table, &c.name))
                })
                .collect()
        };
        let own = |t: &TablePolicy| -> Vec<ColumnRef> {
            t.columns
                .iter()
                .filter(|c| c.blind_index.is_some())
                .map(|c| ColumnRef::new(&t.schema, &t.table, &c.name))
                .collect()
        };
        if depth > 64 {
            return all();
        }
        if let Some(t) = policy.table(&key.0, &key.1) {
            return match self.children.get(key) {
                Some(Err(_)) => all(),
                _ => own(t),
            };
        }
        match self.children.get(key) {
            Some(Ok((rs, rt))) => return policy.table(rs, rt).map(own).unwrap_or_else(all),
            Some(Err(_)) => return all(),
            None => {}
        }
        let Some(rel) = self.relations.get(key) else {
            return vec![];
        };
        if !rel.is_view() {
            return vec![];
        }
        if rel.reads.is_empty() {
            return all();
        }
        let mut out: Vec<ColumnRef> = vec![];
        for oid in &rel.reads {
            let Some(r) = self.relations.values().find(|r| r.oid == *oid) else {
                // Not returned: it holds no protected data.
                continue;
            };
            let k = (r.schema.clone(), r.name.clone());
            for c in self.blind_indexes_read(policy, &k, depth + 1) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The protected column `base` as mapped in its own table.
    fn base_attr(&self, base: &ColumnRef) -> Option<ProtectedAttr> {
        let rel = self.relation(&base.schema, &base.table)?;
        let (attnum, _, _) = rel.columns.iter().find(|c| c.1 == base.column)?;
        self.protected.get(&(rel.oid, *attnum)).cloned()
    }

    /// Resolve which columns of a view expose a base column (protected,
    /// blind-index or tenant) unchanged, by parsing `pg_get_viewdef`, and
    /// which are computed from protected data in a way that cannot be mapped
    /// (those are `unknown`). Whatever cannot be analysed is unknown.
    fn resolve_view(&self, policy: &Policy, rel: &Relation) -> Vec<ViewColumn> {
        let all_unknown = || -> Vec<ViewColumn> {
            rel.columns
                .iter()
                .map(|c| ViewColumn {
                    name: c.1.clone(),
                    base: None,
                    unknown: true,
                })
                .collect()
        };
        let mut out: Vec<ViewColumn> = rel
            .columns
            .iter()
            .map(|c| ViewColumn {
                name: c.1.clone(),
                base: None,
                unknown: false,
            })
            .collect();
        let Some(sel) = rel.viewdef.as_deref().and_then(plain_select) else {
            return all_unknown();
        };
        let Some(rels) = self.view_from(&sel, &rel.schema) else {
            // A subquery, function or nested join in FROM: unknown shapes.
            return all_unknown();
        };
        // Names that carry protected data in this view's FROM: protected
        // (or unknown) columns, and the aliases of relations holding them
        // (a whole-row reference carries every column).
        let mut hot_cols: HashSet<String> = HashSet::new();
        let mut hot_rels: HashSet<String> = HashSet::new();
        for (alias, (s, t)) in &rels {
            let cols = self.hot_columns(policy, s, t);
            if !cols.is_empty() {
                hot_rels.insert(alias.clone());
                hot_rels.insert(t.clone());
            }
            hot_cols.extend(cols);
        }
        for (i, item) in sel.projection.iter().enumerate() {
            let origin = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    self.item_origin(policy, e, &rels, &hot_cols, &hot_rels)
                }
                _ => Origin::Unknown,
            };
            if let Some(vc) = out.get_mut(i) {
                match origin {
                    Origin::Base(b) => vc.base = Some(b),
                    Origin::Unknown => vc.unknown = true,
                    Origin::Plain => {}
                }
            }
        }
        out
    }

    /// The relations of a view's FROM, each with the name it is referred to
    /// by; `None` when an item is not a table named by one or two parts (a
    /// subquery, a function or a nested join: unknown shapes).
    fn view_from(&self, sel: &Select, own_schema: &str) -> Option<Vec<FromRel>> {
        let mut rels: Vec<FromRel> = vec![];
        for twj in &sel.from {
            for tf in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                let TableFactor::Table { name, alias, .. } = tf else {
                    return None;
                };
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(i) => Some(i.value.clone()),
                        _ => None,
                    })
                    .collect();
                let (schema, table) = match parts.as_slice() {
                    [t] => (self.guess_schema(t, own_schema), t.clone()),
                    [s, t] => (s.clone(), t.clone()),
                    _ => return None,
                };
                let alias = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| table.clone());
                rels.push((alias, (schema, table)));
            }
        }
        Some(rels)
    }

    /// Where the view column computed by `e` comes from: a column of `rels`
    /// named bare or qualified (what that column is), a bare relation name
    /// holding protected data (the whole row: unknown), or an expression
    /// (unknown when it mentions `hot_cols` or `hot_rels`).
    fn item_origin(
        &self,
        policy: &Policy,
        e: &Expr,
        rels: &[FromRel],
        hot_cols: &HashSet<String>,
        hot_rels: &HashSet<String>,
    ) -> Origin {
        let simple = match e {
            Expr::Identifier(id) => Some((None, id.value.clone())),
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => Some((
                Some(ids[ids.len() - 2].value.clone()),
                ids[ids.len() - 1].value.clone(),
            )),
            _ => None,
        };
        let Some((qual, col)) = simple else {
            return if expr_mentions(e, hot_cols, hot_rels) {
                Origin::Unknown
            } else {
                Origin::Plain
            };
        };
        let mut origin = Origin::Plain;
        let candidates: Vec<&(String, String)> = rels
            .iter()
            .filter(|(a, _)| qual.as_ref().is_none_or(|q| q == a))
            .map(|(_, t)| t)
            .collect();
        for (s, t) in candidates {
            match self.column_origin(policy, s, t, &col) {
                Origin::Plain => {}
                o => {
                    origin = o;
                    break;
                }
            }
        }
        if qual.is_none() && matches!(origin, Origin::Plain) && hot_rels.contains(&col) {
            // A bare relation name: the whole row.
            origin = Origin::Unknown;
        }
        origin
    }

    /// Names of the columns of `schema.table` that hold protected data
    /// (mapped or unknown).
    fn hot_columns(&self, policy: &Policy, s: &str, t: &str) -> Vec<String> {
        let (s, t) = match self.children.get(&(s.to_string(), t.to_string())) {
            Some(Ok((rs, rt))) => (rs.as_str(), rt.as_str()),
            Some(Err(_)) => {
                return self
                    .relation(s, t)
                    .map(Relation::column_names)
                    .unwrap_or_default();
            }
            None => (s, t),
        };
        if let Some(tp) = policy.table(s, t) {
            return tp.columns.iter().map(|c| c.name.clone()).collect();
        }
        let Some(cols) = self.views.get(&(s.to_string(), t.to_string())) else {
            return vec![];
        };
        cols.iter()
            .filter(|c| {
                c.unknown
                    || c.base.as_ref().is_some_and(|b| {
                        policy
                            .table(&b.schema, &b.table)
                            .is_some_and(|tp| tp.column(&b.column).is_some())
                    })
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// Whether `schema.table.col` is (or exposes) a protected, blind-index or
    /// tenant column (its base column), or protected data pgveil cannot map.
    fn column_origin(&self, policy: &Policy, s: &str, t: &str, col: &str) -> Origin {
        let (s, t) = match self.children.get(&(s.to_string(), t.to_string())) {
            Some(Ok((rs, rt))) => (rs.as_str(), rt.as_str()),
            Some(Err(_)) => return Origin::Unknown,
            None => (s, t),
        };
        if let Some(tp) = policy.table(s, t) {
            let is_known = tp.column(col).is_some()
                || tp.blind_index_owner(col).is_some()
                || tp.tenant.as_deref() == Some(col);
            return if is_known {
                Origin::Base(ColumnRef::new(s, t, col))
            } else {
                Origin::Plain
            };
        }
        let Some(cols) = self.views.get(&(s.to_string(), t.to_string())) else {
            return Origin::Plain;
        };
        match cols.iter().find(|c| c.name == col) {
            Some(c) if c.unknown => Origin::Unknown,
            Some(ViewColumn { base: Some(b), .. }) => Origin::Base(b.clone()),
            _ => Origin::Plain,
        }
    }

    /// The schema of a table a view definition names without one: the only
    /// schema with a relation of that name in the result, else the view's
    /// own when it is among several, else `public`.
    fn guess_schema(&self, table: &str, own: &str) -> String {
        let cands: Vec<&String> = self
            .relations
            .keys()
            .filter(|(_, n)| n == table)
            .map(|(s, _)| s)
            .collect();
        match cands.as_slice() {
            [one] => (*one).clone(),
            many if many.iter().any(|s| *s == own) => own.to_string(),
            _ => "public".to_string(),
        }
    }
}

/// Where a view column comes from.
enum Origin {
    Base(ColumnRef),
    Unknown,
    Plain,
}

/// Whether `e` mentions one of `cols` (as a column) or `rels` (as a whole
/// row or qualifier), or holds a subquery (whose relations the view's FROM
/// does not show): then it may compute on protected data.
fn expr_mentions(e: &Expr, cols: &HashSet<String>, rels: &HashSet<String>) -> bool {
    use std::ops::ControlFlow;
    if cols.is_empty() && rels.is_empty() {
        return false;
    }
    let r = sqlparser::ast::visit_expressions(e, |x| {
        let hit = match x {
            Expr::Identifier(i) => cols.contains(&i.value) || rels.contains(&i.value),
            Expr::CompoundIdentifier(ids) => ids
                .last()
                .is_some_and(|i| cols.contains(&i.value) || rels.contains(&i.value)),
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. }
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..) => true,
            _ => false,
        };
        if hit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    r.is_break()
}

/// The SELECT of a view definition when it is one plain SELECT: `None` when
/// it does not parse, or is a set operation (UNION / INTERSECT / EXCEPT),
/// VALUES or has a WITH clause (no column maps to one base column then).
fn plain_select(def: &str) -> Option<Select> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, def).ok()?;
    let Some(Statement::Query(q)) = stmts.into_iter().next() else {
        return None;
    };
    if q.with.is_some() {
        return None;
    }
    match *q.body {
        SetExpr::Select(sel) => Some(*sel),
        _ => None,
    }
}
