//! Name resolution: which relation a table name is ([`RelKind`]: a policy
//! table, an inheritance child or partition planned as its root, a view over
//! protected data, a subquery or CTE, or a plain relation), and which
//! protected column, tenant column or whole row a column reference is in the
//! current scopes.
//!
//! Resolution follows PostgreSQL's rules where they decide what a name
//! means: CTEs before tables, an alias hides the relation's own name, a
//! column before a whole-row reference of the same name. An ambiguous name
//! (two protected tables or views in different schemas) is refused rather
//! than guessed.

use sqlparser::ast::{Expr, Ident, ObjectName};

use super::{
    Cx, ProtCol, R, Rel, RelKind, Scope, Via, internal, make_ident, name_parts, norm, strip_nested,
};
use crate::policy::TablePolicy;
use crate::policy::catalog::ChildOf;
use crate::sql::{Analyzer, ColumnRef, Reject, ViewDef};

impl<'a> Cx<'a> {
    pub(super) fn table_kind(
        &self,
        parts: &[String],
        sc: &[Scope<'a>],
    ) -> R<(Option<String>, String, RelKind<'a>)> {
        let an: &'a Analyzer = self.an;
        let pol = &an.policy;
        match parts {
            [t] => {
                for s in sc.iter().rev() {
                    if let Some((_, k)) = s.ctes.iter().rev().find(|(n, _)| n == t) {
                        return Ok((None, t.clone(), k.clone()));
                    }
                }
                let cands: Vec<&'a TablePolicy> =
                    pol.tables.iter().filter(|x| &x.table == t).collect();
                match cands.as_slice() {
                    [one] => {
                        if let Some(Err(msg)) = an.children.get(&(one.schema.clone(), t.clone())) {
                            return Err(Reject::unsupported(msg.clone()));
                        }
                        return Ok((Some(one.schema.clone()), t.clone(), RelKind::Table(one)));
                    }
                    [] => {}
                    many => {
                        return Err(Reject::unsupported(format!(
                            "pgveil: table name {t} is ambiguous between protected tables {}: qualify it with its schema",
                            many.iter()
                                .map(|x| x.qualified())
                                .collect::<Vec<_>>()
                                .join(" and ")
                        )));
                    }
                }
                let children: Vec<(&'a (String, String), &'a ChildOf)> =
                    an.children.iter().filter(|(k, _)| &k.1 == t).collect();
                match children.as_slice() {
                    [(k, v)] => return self.child_kind(k, v),
                    [] => {}
                    _ => {
                        return Err(Reject::unsupported(format!(
                            "pgveil: table name {t} is ambiguous between tables that inherit from protected tables: qualify it with its schema"
                        )));
                    }
                }
                let views: Vec<&'a ViewDef> = an.views.values().filter(|v| &v.name == t).collect();
                if let [v] = views.as_slice() {
                    return Ok((Some(v.schema.clone()), t.clone(), RelKind::View(v)));
                }
                if views.len() > 1 {
                    return Err(Reject::unsupported(format!(
                        "pgveil: view name {t} is ambiguous: qualify it with its schema"
                    )));
                }
                Ok((None, t.clone(), RelKind::Plain))
            }
            [.., s, t] => {
                if let Some(tp) = pol.table(s, t) {
                    if let Some(Err(msg)) = an.children.get(&(s.clone(), t.clone())) {
                        return Err(Reject::unsupported(msg.clone()));
                    }
                    return Ok((Some(s.clone()), t.clone(), RelKind::Table(tp)));
                }
                if let Some((k, v)) = an.children.get_key_value(&(s.clone(), t.clone())) {
                    return self.child_kind(k, v);
                }
                if let Some(v) = an.views.get(&(s.clone(), t.clone())) {
                    return Ok((Some(s.clone()), t.clone(), RelKind::View(v)));
                }
                Ok((Some(s.clone()), t.clone(), RelKind::Plain))
            }
            [] => Ok((None, String::new(), RelKind::Plain)),
        }
    }

    /// An inheritance child or partition of a protected table: planned as
    /// the policy table at the root of its lineage (same columns, same
    /// associated data, blind indexes maintained), or refused.
    pub(super) fn child_kind(
        &self,
        key: &'a (String, String),
        verdict: &'a ChildOf,
    ) -> R<(Option<String>, String, RelKind<'a>)> {
        match verdict {
            Ok((rs, rt)) => match self.an.policy.table(rs, rt) {
                Some(tp) => Ok((Some(key.0.clone()), key.1.clone(), RelKind::Table(tp))),
                None => Err(internal()),
            },
            Err(msg) => Err(Reject::unsupported(msg.clone())),
        }
    }

    pub(super) fn column_in(&self, rel: &Rel<'a>, col: &str) -> Option<ProtCol<'a>> {
        match &rel.kind {
            RelKind::Table(t) => t.column(col).map(|_| ProtCol {
                col: ColumnRef::new(&t.schema, &t.table, col),
                via: Via::Base,
            }),
            RelKind::View(v) => v.columns.iter().find(|c| c.0 == col).and_then(|c| {
                let base = c.1.as_ref()?;
                let tp = self.an.policy.table(&base.schema, &base.table)?;
                tp.column(&base.column)?;
                Some(ProtCol {
                    col: base.clone(),
                    via: Via::View(v),
                })
            }),
            RelKind::Derived(cols) => cols
                .iter()
                .find(|c| c.name.as_deref() == Some(col))
                .and_then(|c| c.prot.clone())
                .map(|p| ProtCol {
                    col: p.col,
                    via: Via::Derived,
                }),
            RelKind::Plain => None,
        }
    }

    pub(super) fn rel_matches(rel: &Rel, qual: &[String]) -> bool {
        match qual {
            [q] => match &rel.alias {
                Some(a) => a == q,
                None => &rel.name == q,
            },
            [.., s, t] => {
                rel.alias.is_none() && &rel.name == t && rel.schema.as_deref() == Some(s.as_str())
            }
            [] => false,
        }
    }

    pub(super) fn resolve(&self, ids: &[Ident], sc: &[Scope<'a>]) -> Option<ProtCol<'a>> {
        let parts: Vec<String> = ids.iter().map(norm).collect();
        let (col, qual) = parts.split_last()?;
        for s in sc.iter().rev() {
            if qual.is_empty() {
                for r in &s.rels {
                    if let Some(p) = self.column_in(r, col) {
                        return Some(p);
                    }
                }
            } else if let Some(r) = s.rels.iter().find(|r| Self::rel_matches(r, qual)) {
                return self.column_in(r, col);
            }
        }
        None
    }

    /// Whether `rel` holds protected data (ciphertext, blind indexes or
    /// columns pgveil cannot map), so that its whole row carries them.
    pub(super) fn rel_is_hot(rel: &Rel<'a>) -> bool {
        match &rel.kind {
            RelKind::Table(_) => true,
            RelKind::View(v) => !v.unknown.is_empty() || v.columns.iter().any(|c| c.1.is_some()),
            RelKind::Derived(cols) => cols.iter().any(|c| c.prot.is_some()),
            RelKind::Plain => false,
        }
    }

    /// Whether `rel` has a column `col`: `None` when pgveil does not know
    /// its columns (a plain table, or no catalog).
    pub(super) fn rel_has_column(&self, rel: &Rel<'a>, col: &str) -> Option<bool> {
        match &rel.kind {
            RelKind::Table(t) => self
                .an
                .table_columns
                .get(&(t.schema.clone(), t.table.clone()))
                .map(|cols| cols.iter().any(|c| c == col)),
            RelKind::View(v) => Some(v.columns.iter().any(|c| c.0 == col)),
            RelKind::Derived(cols) => Some(cols.iter().any(|c| c.name.as_deref() == Some(col))),
            RelKind::Plain => None,
        }
    }

    /// A reference PostgreSQL reads as the whole row of a relation in scope
    /// that holds protected data: `u` or `public.users` where no column of
    /// that name exists (PostgreSQL tries columns first), `u.*` inside an
    /// expression (`ROW(u.*)`), or `u.f` where `f` is no column of `u`
    /// (PostgreSQL's functional notation: `u.to_jsonb` is `to_jsonb(u)`).
    /// The row would carry ciphertext and blind indexes into an expression
    /// pgveil cannot analyze (`to_jsonb(u)->>'email_bidx'`, `u::text`,
    /// `(u).email = 'x'`). Returns the relation's name for the refusal.
    pub(super) fn whole_row(&self, e: &Expr, sc: &[Scope<'a>]) -> Option<String> {
        let show = |r: &Rel<'a>| r.alias.clone().unwrap_or_else(|| r.name.clone());
        let parts: Vec<String> = match e {
            Expr::Identifier(i) => vec![norm(i)],
            Expr::CompoundIdentifier(ids) => ids.iter().map(norm).collect(),
            Expr::QualifiedWildcard(n, _) => {
                let parts = name_parts(n);
                return sc.iter().rev().find_map(|s| {
                    s.rels
                        .iter()
                        .find(|r| Self::rel_matches(r, &parts))
                        .filter(|r| Self::rel_is_hot(r))
                        .map(show)
                });
            }
            _ => return None,
        };
        let (last, qual) = parts.split_last()?;
        if qual.is_empty() {
            // A column of that name anywhere in scope wins.
            let is_column = sc.iter().any(|s| {
                s.rels
                    .iter()
                    .any(|r| self.rel_has_column(r, last) == Some(true))
            });
            if is_column {
                return None;
            }
            let one = [last.clone()];
            return sc.iter().rev().find_map(|s| {
                s.rels
                    .iter()
                    .find(|r| Self::rel_matches(r, &one))
                    .filter(|r| Self::rel_is_hot(r))
                    .map(show)
            });
        }
        // `qual.last`: a relation qualifier and a column — or, when the
        // qualifier names a relation without that column, a function of its
        // whole row. (`schema.table` alone, the whole row of a
        // schema-qualified table, is matched the same way below.)
        for s in sc.iter().rev() {
            if let Some(r) = s.rels.iter().find(|r| Self::rel_matches(r, qual)) {
                return (Self::rel_is_hot(r) && self.rel_has_column(r, last) == Some(false))
                    .then(|| show(r));
            }
        }
        if qual.len() == 1 {
            let whole = [qual[0].clone(), last.clone()];
            return sc.iter().rev().find_map(|s| {
                s.rels
                    .iter()
                    .find(|r| Self::rel_matches(r, &whole))
                    .filter(|r| Self::rel_is_hot(r))
                    .map(show)
            });
        }
        None
    }

    pub(super) fn whole_row_reject(rel: &str) -> Reject {
        Reject::unsupported(format!(
            "pgveil: a whole-row reference to {rel}, which holds protected columns, is not supported (a bare table name or alias used as a value, {rel}.* inside an expression, or {rel}.f for a function f of the row): it would carry ciphertext and blind indexes into an expression pgveil cannot analyze; name the columns you need"
        ))
    }

    pub(super) fn expr_resolve(&self, e: &Expr, sc: &[Scope<'a>]) -> Option<ProtCol<'a>> {
        match e {
            Expr::Identifier(i) => self.resolve(std::slice::from_ref(i), sc),
            Expr::CompoundIdentifier(ids) => self.resolve(ids, sc),
            _ => None,
        }
    }

    /// `c` when it is the tenant column of a protected table.
    pub(super) fn tenant_column(&self, c: &ColumnRef) -> Option<ColumnRef> {
        let t = self.an.policy.table(&c.schema, &c.table)?;
        (t.tenant.as_deref() == Some(c.column.as_str())).then(|| c.clone())
    }

    /// The tenant column of a protected table that `e` is a bare reference
    /// to (resolved as [`Self::resolve`] resolves protected columns).
    pub(super) fn tenant_ref(&self, e: &Expr, sc: &[Scope<'a>]) -> Option<ColumnRef> {
        let parts = ref_parts(e)?;
        let (col, qual) = parts.split_last()?;
        // `Some(t)`: the relation has the column (`t`: the tenant column it
        // is); `None`: it has not, or pgveil does not know.
        let tenant_in = |r: &Rel<'a>| -> Option<Option<ColumnRef>> {
            match &r.kind {
                RelKind::Table(t) if t.tenant.as_deref() == Some(col.as_str()) => {
                    Some(Some(ColumnRef::new(&t.schema, &t.table, col)))
                }
                RelKind::View(v) => v
                    .columns
                    .iter()
                    .find(|c| &c.0 == col)
                    .map(|c| c.1.as_ref().and_then(|b| self.tenant_column(b))),
                RelKind::Derived(cols) => cols
                    .iter()
                    .find(|c| c.name.as_deref() == Some(col.as_str()))
                    .map(|c| c.tenant_of.clone()),
                _ => self.rel_has_column(r, col).filter(|h| *h).map(|_| None),
            }
        };
        for s in sc.iter().rev() {
            if qual.is_empty() {
                if let Some(t) = s.rels.iter().find_map(tenant_in) {
                    return t;
                }
            } else if let Some(r) = s.rels.iter().find(|r| Self::rel_matches(r, qual)) {
                return tenant_in(r).flatten();
            }
        }
        None
    }

    /// A reference to a view column computed from protected data that
    /// pgveil cannot map: the view and the column.
    pub(super) fn unknown_ref(&self, e: &Expr, sc: &[Scope<'a>]) -> Option<(&'a ViewDef, String)> {
        let parts = ref_parts(e)?;
        let (col, qual) = parts.split_last()?;
        let hit = |r: &Rel<'a>| match &r.kind {
            RelKind::View(v) if v.unknown.iter().any(|u| u == col) => Some((*v, col.clone())),
            _ => None,
        };
        for s in sc.iter().rev() {
            if qual.is_empty() {
                if let Some(h) = s.rels.iter().find_map(hit) {
                    return Some(h);
                }
                if s.rels.iter().any(|r| self.column_in(r, col).is_some()) {
                    return None;
                }
            } else if let Some(r) = s.rels.iter().find(|r| Self::rel_matches(r, qual)) {
                return hit(r);
            }
        }
        None
    }

    pub(super) fn unknown_reject(v: &ViewDef, col: &str) -> Reject {
        Reject::unsupported(format!(
            "pgveil: column {}.{}.{col} is computed from protected data in a way pgveil cannot map to one protected column (a set operation, an expression or a whole-row reference in the view): it can only be shown as stored in a plain SELECT list; compare, search or write the base table's column instead",
            v.schema, v.name
        ))
    }

    /// Rename a column reference to `new` (keeping its qualifier).
    pub(super) fn rename(e: &mut Expr, new: &str) {
        match strip_nested(e) {
            Expr::Identifier(i) => *i = make_ident(new),
            Expr::CompoundIdentifier(ids) => {
                if let Some(l) = ids.last_mut() {
                    *l = make_ident(new);
                }
            }
            _ => {}
        }
    }

    pub(super) fn is_protected_relation(&self, n: &ObjectName, sc: &[Scope<'a>]) -> bool {
        let parts = name_parts(n);
        !matches!(self.table_kind(&parts, sc), Ok((_, _, RelKind::Plain)))
    }
}

/// The normalised parts of a column reference (`a`, `t.a`, `s.t.a`).
pub(super) fn ref_parts(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Identifier(i) => Some(vec![norm(i)]),
        Expr::CompoundIdentifier(ids) => Some(ids.iter().map(norm).collect()),
        _ => None,
    }
}
