//! UPDATE and DELETE on protected tables, and the SET list they share with
//! `INSERT … ON CONFLICT DO UPDATE`.
//!
//! A protected column may be set to a literal or a parameter (encrypted for
//! the row's tenant, its blind indexes set alongside by pgveil), to NULL, or
//! to `EXCLUDED.col` under ON CONFLICT on the same tenant. The tenant of an
//! UPDATE comes from `WHERE tenant = <literal or $n>`; changing the tenant
//! column, assigning a blind-index column pgveil maintains, writing part of
//! a column, or updating through a view over protected data is refused.

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Expr, FromTable, Ident, ObjectName,
    ObjectNamePart, UpdateTableFromKind, Value,
};

use super::{Cx, OutCol, R, Rel, RelKind, Scope, make_ident, norm, strip_nested};
use crate::policy::TablePolicy;
use crate::sql::{ColumnRef, Reject, TenantSource, Use};

impl<'a> Cx<'a> {
    /// SET list of UPDATE / ON CONFLICT DO UPDATE on protected table `t`.
    pub(super) fn assignments(
        &mut self,
        t: &'a TablePolicy,
        list: &mut Vec<Assignment>,
        sc: &[Scope<'a>],
        tenant: TenantSource,
        excluded_same_tenant: bool,
        stmt: &str,
    ) -> R<()> {
        let qualified = t.qualified();
        let mut extra: Vec<Assignment> = vec![];
        let assigned: Vec<String> = list
            .iter()
            .filter_map(|a| match &a.target {
                AssignmentTarget::ColumnName(n) => Some(self.written_column(n, t)),
                _ => None,
            })
            .collect::<R<_>>()?;
        for a in list.iter_mut() {
            let col = match &a.target {
                AssignmentTarget::ColumnName(n) => self.written_column(n, t)?,
                AssignmentTarget::Tuple(ns) => {
                    for n in ns {
                        let c = self.written_column(n, t)?;
                        if t.column(&c).is_some() || t.tenant.as_deref() == Some(c.as_str()) {
                            return Err(Reject::unsupported(format!(
                                "pgveil: assigning protected column {qualified}.{c} in a column tuple is not supported: write SET {c} = $1 separately"
                            )));
                        }
                    }
                    let c = self.expr(&mut a.value, sc)?;
                    self.plain(c, "a tuple assignment", "assign columns one by one")?;
                    continue;
                }
            };
            if t.tenant.as_deref() == Some(col.as_str()) {
                return Err(Reject::unsupported(format!(
                    "pgveil: {stmt} changing tenant column {qualified}.{col} is not supported: the row's encrypted values are bound to its tenant and would become unreadable; delete the row and insert it again through pgveil"
                )));
            }
            if let Some((owner, _)) = t.blind_index_owner(&col)
                && self.access(owner).write
            {
                return Err(Reject::unsupported(format!(
                    "pgveil: column {qualified}.{col} is the blind index of {} and is maintained by pgveil: remove it from SET",
                    owner.name
                )));
            }
            let Some(cp) = t.column(&col) else {
                let c = self.expr(&mut a.value, sc)?;
                self.plain(
                    c,
                    "copying a protected column into another column",
                    "copy values in the application",
                )?;
                continue;
            };
            let cref = ColumnRef::new(&t.schema, &t.table, &col);
            // SET col = EXCLUDED.col
            if let Expr::CompoundIdentifier(ids) = strip_nested(&mut a.value)
                && ids.len() == 2
                && norm(&ids[0]) == "excluded"
                && norm(&ids[1]) == col
            {
                if !excluded_same_tenant {
                    return Err(Reject::unsupported(format!(
                        "pgveil: {stmt} setting protected column {cref} on tenant table {qualified} needs the tenant column {} in the ON CONFLICT (…) target, so the existing row has the same tenant",
                        t.tenant.as_deref().unwrap_or_default()
                    )));
                }
                self.touch(&cref, Use::Write);
                if self.access(cp).write
                    && let Some(b) = &cp.blind_index
                {
                    for bcol in std::iter::once(&b.column).chain(b.next.iter()) {
                        if !assigned.contains(bcol) {
                            extra.push(Assignment {
                                target: AssignmentTarget::ColumnName(ObjectName(vec![
                                    ObjectNamePart::Identifier(make_ident(bcol)),
                                ])),
                                value: Expr::CompoundIdentifier(vec![
                                    Ident::new("EXCLUDED"),
                                    make_ident(bcol),
                                ]),
                            });
                        }
                    }
                }
                continue;
            }
            let is_null =
                matches!(strip_nested(&mut a.value), Expr::Value(v) if v.value == Value::Null);
            if t.tenant.is_some() && tenant == TenantSource::None && !is_null {
                return Err(Reject::unsupported(format!(
                    "pgveil: {stmt} of protected column {cref} needs the row's tenant: add `WHERE {} = <literal or $n>` so pgveil can encrypt for that tenant",
                    t.tenant.as_deref().unwrap_or_default()
                )));
            }
            if t.tenant.is_some() && !excluded_same_tenant && !is_null {
                return Err(Reject::unsupported(format!(
                    "pgveil: {stmt} setting protected column {cref} on tenant table {qualified} needs the tenant column in the ON CONFLICT (…) target"
                )));
            }
            let w = self.write_value(&cref, cp, &mut a.value, sc, &tenant, stmt)?;
            if self.access(cp).write
                && let Some(b) = &cp.blind_index
            {
                let default = a.value.clone();
                let mut pairs = vec![(b.column.clone(), false)];
                if let Some(n) = &b.next {
                    pairs.push((n.clone(), true));
                }
                for (bcol, next) in pairs {
                    let v = self.bidx_value(&w, &cref, next, &default);
                    extra.push(Assignment {
                        target: AssignmentTarget::ColumnName(ObjectName(vec![
                            ObjectNamePart::Identifier(make_ident(&bcol)),
                        ])),
                        value: v,
                    });
                }
            }
        }
        if !extra.is_empty() {
            self.changed = true;
            list.extend(extra);
        }
        Ok(())
    }

    pub(super) fn update(
        &mut self,
        up: &mut sqlparser::ast::Update,
        sc: &[Scope<'a>],
    ) -> R<Vec<OutCol<'a>>> {
        let mut rels = vec![];
        self.twj(&mut up.table, sc, &mut rels)?;
        if let Some(from) = &mut up.from {
            let tables = match from {
                UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t) => t,
            };
            for t in tables.iter_mut() {
                self.twj(t, sc, &mut rels)?;
            }
        }
        let target = rels.first().cloned();
        let mut usc = sc.to_vec();
        usc.push(Scope { rels, ctes: vec![] });
        match target.as_ref().map(|r| &r.kind) {
            Some(RelKind::Table(t)) => {
                let t: &'a TablePolicy = t;
                let tenant = match (&t.tenant, &mut up.selection) {
                    (Some(tc), Some(w)) => {
                        self.tenant_from_where(w, tc, target.as_ref().expect("target"), &usc)?
                    }
                    _ => TenantSource::None,
                };
                self.assignments(t, &mut up.assignments, &usc, tenant, true, "UPDATE")?;
            }
            Some(RelKind::View(v)) => {
                return Err(Reject::unsupported(format!(
                    "pgveil: updating through view {}.{} over protected data is not supported: update the base table",
                    v.schema, v.name
                )));
            }
            _ => {
                for a in up.assignments.iter_mut() {
                    let c = self.expr(&mut a.value, &usc)?;
                    self.plain(
                        c,
                        "copying a protected column into another column",
                        "copy values in the application",
                    )?;
                }
            }
        }
        if let Some(w) = &mut up.selection {
            let c = self.expr(w, &usc)?;
            self.plain(c, "a WHERE condition", "compare it: col = $1")?;
        }
        let rsc = usc;
        self.returning(&mut up.returning, &rsc)
    }

    /// `WHERE tenant = <lit|$n> AND …` → the tenant.
    pub(super) fn tenant_from_where(
        &mut self,
        w: &mut Expr,
        tc: &str,
        target: &Rel<'a>,
        sc: &[Scope<'a>],
    ) -> R<TenantSource> {
        let mut conj: Vec<&mut Expr> = vec![];
        fn split<'e>(e: &'e mut Expr, out: &mut Vec<&'e mut Expr>) {
            match e {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                } => {
                    split(left, out);
                    split(right, out);
                }
                Expr::Nested(inner) => split(inner, out),
                other => out.push(other),
            }
        }
        split(w, &mut conj);
        for c in conj {
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = c
            {
                let (l, r) = ((**left).clone(), (**right).clone());
                for (col, val) in [(&l, &r), (&r, &l)] {
                    let ok = match col {
                        Expr::Identifier(i) => norm(i) == tc,
                        Expr::CompoundIdentifier(ids) => {
                            let parts: Vec<String> = ids.iter().map(norm).collect();
                            let (last, qual) = parts.split_last().expect("non-empty");
                            last == tc && Self::rel_matches(target, qual)
                        }
                        _ => false,
                    };
                    if ok {
                        let mut probe = (*val).clone();
                        if let Some(ts) = self.tenant_of(&mut probe, sc)? {
                            return Ok(ts);
                        }
                    }
                }
            }
        }
        Ok(TenantSource::None)
    }

    pub(super) fn delete(
        &mut self,
        del: &mut sqlparser::ast::Delete,
        sc: &[Scope<'a>],
    ) -> R<Vec<OutCol<'a>>> {
        let mut rels = vec![];
        let tables = match &mut del.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        for t in tables.iter_mut() {
            self.twj(t, sc, &mut rels)?;
        }
        if let Some(using) = &mut del.using {
            for t in using.iter_mut() {
                self.twj(t, sc, &mut rels)?;
            }
        }
        let mut dsc = sc.to_vec();
        dsc.push(Scope { rels, ctes: vec![] });
        if let Some(w) = &mut del.selection {
            let c = self.expr(w, &dsc)?;
            self.plain(c, "a WHERE condition", "compare it: col = $1")?;
        }
        self.returning(&mut del.returning, &dsc)
    }
}
