//! Where protected data could leave what pgveil masks: blind indexes a role
//! may not search, view columns pgveil cannot map, and query results that
//! leave the masked path (set operations, rows copied into other tables,
//! COPY (query) TO, cursors) or fill a new relation pgveil does not yet know
//! holds protected data.
//!
//! Invariant (with the check on the statement's tokens for blind-index
//! names, which runs before the walk): a blind index reaches only roles with
//! `search` on its column, through `*`, a view column, a subquery or CTE
//! output, an ordinal or an alias as much as by its name.

use sqlparser::ast::Expr;

use super::scope::ref_parts;
use super::{Cx, OutCol, R, Rel, RelKind, Scope};
use crate::sql::{ColumnRef, Reject, ViewDef};

impl<'a> Cx<'a> {
    /// Rows that leave what pgveil can mask: a set operation's result (its
    /// columns name no table), rows copied into another table, COPY (query)
    /// TO, a cursor (FETCH is not planned). None of their columns may be a
    /// blind index the role may not search, or a column pgveil cannot tell
    /// apart (a `*` whose columns it does not know, an unmappable view
    /// column).
    pub(super) fn exported(&self, outs: &[OutCol<'a>], what: &str) -> R<()> {
        for o in outs {
            if let Some(p) = &o.bidx
                && !self.searches_all(std::slice::from_ref(p))
            {
                return Err(Reject::privilege(format!(
                    "pgveil: {what} would carry the blind index of protected column {p}, which role {} may not search: only pgveil and roles with search access may use it; list the columns you need without it",
                    self.role
                )));
            }
            if o.many || o.unknown {
                return Err(Reject::unsupported(format!(
                    "pgveil: {what} over all columns of a protected table, or over a view column pgveil cannot map, is not supported: pgveil cannot tell which of them are protected or blind indexes; list the columns you need"
                )));
            }
        }
        // Its columns are matched by position (to a table's columns, the
        // other side of a set operation, COPY's fields).
        if let Some(o) = Self::after_opaque(outs, outs.len()) {
            return Err(Self::position_reject(o, what));
        }
        Ok(())
    }

    /// A new relation filled from a query (CREATE TABLE … AS, SELECT …
    /// INTO, CREATE MATERIALIZED VIEW) completes with the tag `SELECT n`,
    /// and pgveil learns of it only at its next catalog refresh: until then
    /// (for a table, for ever) its protected columns and blind indexes would
    /// be read as plain. Refused when the query's columns carry protected
    /// data of any kind.
    pub(super) fn no_protected_copy(outs: &[OutCol<'a>], what: &str) -> R<()> {
        if let Some(o) = outs
            .iter()
            .find(|o| o.prot.is_some() || o.bidx.is_some() || o.unknown || o.many)
        {
            let which = match (&o.prot, &o.bidx) {
                (Some(p), _) => format!("protected column {}", p.col),
                (_, Some(b)) => format!("the blind index of protected column {b}"),
                _ => "columns pgveil cannot map".to_string(),
            };
            return Err(Reject::unsupported(format!(
                "pgveil: {what} over {which} is not supported: the new relation would hold protected data pgveil does not know is there; select only unprotected columns, or create it directly on PostgreSQL (a view or materialized view over protected tables is protected after pgveil's next catalog refresh)"
            )));
        }
        Ok(())
    }

    /// Whether the role may search every protected column in `cols`.
    pub(super) fn searches_all(&self, cols: &[ColumnRef]) -> bool {
        cols.iter().all(|c| {
            self.an
                .policy
                .table(&c.schema, &c.table)
                .and_then(|t| t.column(&c.column))
                .is_some_and(|cp| self.access(cp).search)
        })
    }

    /// Columns of view `v` that pgveil cannot map may carry a blind index:
    /// they are shown as stored only to a role that may search every blind
    /// index the view reads.
    pub(super) fn may_show_as_stored(&self, v: &ViewDef) -> bool {
        self.searches_all(&v.blind_indexes)
    }

    /// `*` over view `v`: refused when it would show a column pgveil cannot
    /// map where that is not allowed (below the top-level select list, or to
    /// a role that may not search every blind index the view reads), or a
    /// mapped blind-index column the role may not search.
    pub(super) fn view_wildcard(&self, v: &ViewDef, top: bool) -> R<()> {
        if let Some(u) = v.unknown.first()
            && !(top && self.may_show_as_stored(v))
        {
            return Err(Self::unknown_reject(v, u));
        }
        if let Some((name, _)) = v.columns.iter().find(|(_, b)| {
            b.as_ref()
                .and_then(|b| self.blind_index_of(b))
                .is_some_and(|p| !self.searches_all(std::slice::from_ref(&p)))
        }) {
            return Err(self.view_bidx_reject(v, name));
        }
        Ok(())
    }

    /// The protected column whose blind index (current or `next`) `c` is.
    pub(super) fn blind_index_of(&self, c: &ColumnRef) -> Option<ColumnRef> {
        let t = self.an.policy.table(&c.schema, &c.table)?;
        let (cp, _) = t.blind_index_owner(&c.column)?;
        Some(ColumnRef::new(&t.schema, &t.table, &cp.name))
    }

    /// A reference to a view column that is a blind index the role may not
    /// search (a view can show one under another name).
    pub(super) fn view_bidx_ref(&self, e: &Expr, sc: &[Scope<'a>]) -> Option<Reject> {
        let parts = ref_parts(e)?;
        let (col, qual) = parts.split_last()?;
        let hit = |r: &Rel<'a>| -> Option<Reject> {
            match &r.kind {
                RelKind::View(v) => {
                    let (name, base) = v.columns.iter().find(|(n, _)| n == col)?;
                    let p = self.blind_index_of(base.as_ref()?)?;
                    (!self.searches_all(std::slice::from_ref(&p)))
                        .then(|| self.view_bidx_reject(v, name))
                }
                RelKind::Derived(cols) => {
                    let o = cols.iter().find(|o| o.name.as_deref() == Some(col))?;
                    let p = o.bidx.as_ref()?;
                    (!self.searches_all(std::slice::from_ref(p))).then(|| {
                        Reject::privilege(format!(
                            "pgveil: {col} is the blind index of protected column {p} (through a subquery or WITH query), which role {} may not search: only pgveil and roles with search access may use it",
                            self.role
                        ))
                    })
                }
                RelKind::Table(_) | RelKind::Plain => None,
            }
        };
        for s in sc.iter().rev() {
            if qual.is_empty() {
                if let Some(r) = s.rels.iter().find_map(hit) {
                    return Some(r);
                }
            } else if let Some(r) = s.rels.iter().find(|r| Self::rel_matches(r, qual)) {
                return hit(r);
            }
        }
        None
    }

    pub(super) fn view_bidx_reject(&self, v: &ViewDef, col: &str) -> Reject {
        let base = v
            .columns
            .iter()
            .find(|(n, _)| n == col)
            .and_then(|(_, b)| b.as_ref())
            .and_then(|b| self.blind_index_of(b))
            .map(|p| p.to_string())
            .unwrap_or_default();
        Reject::privilege(format!(
            "pgveil: column {}.{}.{col} is the blind index of protected column {base}, which role {} may not search: only pgveil and roles with search access may use it; look the value up with = on the protected column (pgveil rewrites it) from a role with search access, or name the view's other columns",
            v.schema, v.name, self.role
        ))
    }
}
