//! Queries: WITH, set operations, SELECT and its select list, ORDER BY,
//! GROUP BY, DISTINCT, and the RETURNING list of a write.
//!
//! A query's result is its output columns ([`OutCol`]): which protected
//! column, blind index or tenant column each one is, so that an enclosing
//! query, a COPY or a cursor can check what it shows. A protected column may
//! be shown in a select list or RETURNING (decrypted for roles that read
//! it); ordering, grouping or de-duplicating on one is refused (ciphertexts
//! of equal values differ), and so is a set operation that would compare
//! them. `*` expands to the catalog's columns with the blind indexes marked.

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, Ident, OrderByKind, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Value,
};

use super::{Class, Cx, OutCol, ProtCol, R, RelKind, Scope, Via, name_parts, norm};
use crate::sql::{ColumnRef, Reject, Use, quote_ident};

impl<'a> Cx<'a> {
    pub(super) fn query(&mut self, q: &mut Query, outer: &[Scope<'a>]) -> R<Vec<OutCol<'a>>> {
        let mut sc: Vec<Scope<'a>> = outer.to_vec();
        sc.push(Scope::default());
        if let Some(with) = &mut q.with {
            for cte in with.cte_tables.iter_mut() {
                let name = norm(&cte.alias.name);
                // PostgreSQL resolves the target of INSERT/UPDATE/DELETE
                // to the table even when a CTE has its name; pgveil would
                // see the CTE. A CTE may not wear a protected name.
                if self.an.may_touch_protected(&quote_ident(&name)) {
                    return Err(Reject::unsupported(format!(
                        "pgveil: a WITH query named {name} shadows protected table or view {name}: give the WITH query another name"
                    )));
                }
                if with.recursive {
                    // A recursive CTE sees itself with unknown columns.
                    sc.last_mut()
                        .expect("scope")
                        .ctes
                        .push((name.clone(), RelKind::Plain));
                }
                let mut outs = self.query(&mut cte.query, &sc)?;
                Self::positions_known(&outs, !cte.alias.columns.is_empty())?;
                for (i, c) in cte.alias.columns.iter().enumerate() {
                    if let Some(o) = outs.get_mut(i) {
                        o.name = Some(norm(&c.name));
                    }
                }
                let last = sc.last_mut().expect("scope");
                last.ctes.retain(|(n, _)| *n != name);
                last.ctes
                    .push((name, RelKind::Derived(std::rc::Rc::new(outs))));
            }
        }
        let (outs, body_scope) = self.set_expr(&mut q.body, &sc)?;
        // ORDER BY sees the select's FROM (when the body is a plain SELECT)
        // and its output names.
        if let Some(ob) = &mut q.order_by {
            let mut osc = sc.clone();
            if let Some(bs) = body_scope {
                osc.push(bs);
            }
            match &mut ob.kind {
                OrderByKind::All(_) => {
                    if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                        return Err(self.order_reject(&p));
                    }
                }
                OrderByKind::Expressions(items) => {
                    for it in items.iter_mut() {
                        if let Some(p) = self.output_ref(&it.expr, &outs)? {
                            return Err(self.order_reject(&p));
                        }
                        let c = self.expr(&mut it.expr, &osc)?;
                        if let Class::Prot(p) = c {
                            return Err(self.order_reject(&p));
                        }
                        self.plain(c, "", "")?;
                    }
                }
            }
        }
        if let Some(l) = &q.limit_clause {
            let l = l.clone();
            self.generic(&l, &sc)?;
        }
        if let Some(f) = &q.fetch {
            let f = f.clone();
            self.generic(&f, &sc)?;
        }
        Ok(outs)
    }

    pub(super) fn order_reject(&self, p: &ProtCol) -> Reject {
        self.unsupported_on(
            p,
            "ORDER BY",
            "sort in the application after reading, or order by an unprotected column",
        )
    }

    /// Column aliases (`s(a, b, c)`, `WITH s(a, b) AS …`) name outputs by
    /// position: refused when pgveil does not know every position (a `*`
    /// over a protected table without the catalog's column list).
    pub(super) fn positions_known(outs: &[OutCol<'a>], aliased: bool) -> R<()> {
        if aliased && outs.iter().any(|o| o.many) {
            return Err(Reject::unsupported(
                "pgveil: column aliases over * of a protected table are not supported here: pgveil does not know the table's columns; list the columns in the subquery",
            ));
        }
        if aliased && let Some(o) = Self::after_opaque(outs, outs.len()) {
            return Err(Self::position_reject(o, "column aliases"));
        }
        Ok(())
    }

    /// The marker for `*` over a relation whose columns pgveil does not know.
    pub(super) fn opaque() -> OutCol<'a> {
        OutCol {
            opaque: true,
            ..Default::default()
        }
    }

    /// Whether an output carries protected data of any kind.
    pub(super) fn sensitive(o: &OutCol<'a>) -> bool {
        o.prot.is_some() || o.bidx.is_some() || o.unknown || o.many
    }

    /// The first output carrying protected data whose position is unknown
    /// because a `*` over a relation of unknown width comes before it
    /// (among the first `upto` outputs' markers).
    pub(super) fn after_opaque<'o>(outs: &'o [OutCol<'a>], upto: usize) -> Option<&'o OutCol<'a>> {
        let j = outs.iter().take(upto).position(|o| o.opaque)?;
        outs[j..].iter().find(|o| Self::sensitive(o))
    }

    /// Refusal of a positional reference (`what`) that could land on
    /// protected output `o`. Names the column, never a value.
    pub(super) fn position_reject(o: &OutCol<'a>, what: &str) -> Reject {
        let which = match (&o.prot, &o.bidx) {
            (Some(p), _) => format!("protected column {}", p.col),
            (_, Some(b)) => format!("the blind index of protected column {b}"),
            _ => "columns pgveil cannot map".to_string(),
        };
        Reject::unsupported(format!(
            "pgveil: {what} matching columns by position cannot be planned here: a `*` over a relation whose columns pgveil does not know (a plain table, a FROM function, a JOIN … USING) comes before {which}, so pgveil cannot tell which column each position is; list the columns by name instead of `*`"
        ))
    }

    /// `ORDER BY 2` / `GROUP BY alias` / `DISTINCT ON (3)` referring to an
    /// output: the protected column it is, or a refusal when it is a blind
    /// index the role may not search, a column pgveil cannot map, or a
    /// position pgveil cannot tell (after a `*` it cannot expand).
    pub(super) fn output_ref(&self, e: &Expr, outs: &[OutCol<'a>]) -> R<Option<ProtCol<'a>>> {
        let o = match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    let Some(i) = n
                        .to_string()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                    else {
                        return Ok(None);
                    };
                    if outs.iter().take(i + 1).any(|o| o.many) {
                        return Err(Reject::unsupported(
                            "pgveil: a column position over * of a protected table is not supported here: pgveil does not know the table's columns; name the column",
                        ));
                    }
                    if let Some(o) = Self::after_opaque(outs, i + 1) {
                        return Err(Self::position_reject(o, "column references"));
                    }
                    outs.get(i)
                }
                _ => None,
            },
            Expr::Identifier(i) => {
                let n = norm(i);
                outs.iter().find(|o| o.name.as_deref() == Some(n.as_str()))
            }
            _ => None,
        };
        let Some(o) = o else { return Ok(None) };
        if let Some(p) = &o.bidx
            && !self.searches_all(std::slice::from_ref(p))
        {
            return Err(Reject::privilege(format!(
                "pgveil: this refers to the blind index of protected column {p}, which role {} may not search: only pgveil and roles with search access may use it",
                self.role
            )));
        }
        if o.unknown {
            return Err(Reject::unsupported(
                "pgveil: this refers to a view column pgveil cannot map to one protected column: name an unprotected column",
            ));
        }
        Ok(o.prot.clone())
    }

    pub(super) fn set_expr(
        &mut self,
        body: &mut SetExpr,
        sc: &[Scope<'a>],
    ) -> R<(Vec<OutCol<'a>>, Option<Scope<'a>>)> {
        match body {
            SetExpr::Select(s) => {
                let (outs, scope) = self.select(s, sc)?;
                Ok((outs, Some(scope)))
            }
            SetExpr::Query(q) => Ok((self.query(q, sc)?, None)),
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                let (l, _) = self.set_expr(left, sc)?;
                let (r, _) = self.set_expr(right, sc)?;
                let all = matches!(set_quantifier, SetQuantifier::All);
                let outs: Vec<OutCol<'a>> = l
                    .iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let x = r.get(i);
                        OutCol {
                            name: o.name.clone(),
                            prot: o.prot.clone().or_else(|| x.and_then(|x| x.prot.clone())),
                            bidx: o.bidx.clone().or_else(|| x.and_then(|x| x.bidx.clone())),
                            // A tenant id only where both sides show the
                            // same table's tenant column.
                            tenant_of: o
                                .tenant_of
                                .clone()
                                .filter(|t| x.is_some_and(|x| x.tenant_of.as_ref() == Some(t))),
                            unknown: o.unknown || x.is_some_and(|x| x.unknown),
                            many: o.many,
                            opaque: o.opaque,
                        }
                    })
                    .collect();
                // The two sides are matched by position: a side whose
                // width pgveil does not know cannot be lined up with the
                // other side's protected columns.
                for (a, b) in [(&l, &r), (&r, &l)] {
                    if (a.iter().any(|o| o.opaque) || a.len() != b.len())
                        && let Some(o) = b.iter().find(|o| Self::sensitive(o))
                    {
                        return Err(Self::position_reject(
                            o,
                            "a set operation (UNION, INTERSECT, EXCEPT)",
                        ));
                    }
                }
                // A set operation's result columns name no table: nothing
                // masks a blind index or tells which column a value is.
                for side in [&l, &r] {
                    self.exported(side, "a set operation (UNION, INTERSECT, EXCEPT)")?;
                }
                if !all && let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                    let w = match op {
                        SetOperator::Union => "UNION (without ALL)",
                        SetOperator::Intersect => "INTERSECT",
                        SetOperator::Except => "EXCEPT",
                        _ => "a set operation",
                    };
                    return Err(self.unsupported_on(
                        &p,
                        w,
                        "it compares ciphertexts, which differ for equal values; use UNION ALL or compare an unprotected key",
                    ));
                }
                Ok((outs, None))
            }
            SetExpr::Values(v) => {
                for row in v.rows.iter_mut() {
                    for e in row.content.iter_mut() {
                        let c = self.expr(e, sc)?;
                        self.plain(c, "VALUES", "select the column directly")?;
                    }
                }
                // PostgreSQL names VALUES columns column1, column2, …
                let width = v.rows.first().map_or(0, |r| r.content.len());
                Ok((
                    (1..=width)
                        .map(|i| OutCol {
                            name: Some(format!("column{i}")),
                            ..Default::default()
                        })
                        .collect(),
                    None,
                ))
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => {
                Ok((self.dml(s, sc)?, None))
            }
            SetExpr::Table(t) => {
                let mut parts = vec![];
                if let Some(s) = &t.schema_name {
                    parts.push(s.to_ascii_lowercase());
                }
                if let Some(n) = &t.table_name {
                    parts.push(n.to_ascii_lowercase());
                }
                let (_, _, kind) = self.table_kind(&parts, sc)?;
                Ok((self.rel_outputs(&kind), None))
            }
            other => {
                let probe = other.clone();
                self.generic(&probe, sc)?;
                Ok((vec![Self::opaque()], None))
            }
        }
    }

    /// Outputs of `*` over a relation: every column in table order when the
    /// catalog gives it (protected columns and blind indexes marked),
    /// otherwise the protected columns followed by a `many` marker.
    pub(super) fn rel_outputs(&mut self, kind: &RelKind<'a>) -> Vec<OutCol<'a>> {
        match kind {
            RelKind::Table(t) => {
                let all = self
                    .an
                    .table_columns
                    .get(&(t.schema.clone(), t.table.clone()))
                    .cloned();
                let out = |cx: &mut Self, name: &str| -> OutCol<'a> {
                    let col = ColumnRef::new(&t.schema, &t.table, name);
                    if t.column(name).is_some() {
                        cx.touch(&col, Use::Read);
                        return OutCol {
                            name: Some(name.to_string()),
                            prot: Some(ProtCol {
                                col,
                                via: Via::Base,
                            }),
                            ..Default::default()
                        };
                    }
                    OutCol {
                        name: Some(name.to_string()),
                        bidx: t
                            .blind_index_owner(name)
                            .map(|(cp, _)| ColumnRef::new(&t.schema, &t.table, &cp.name)),
                        tenant_of: (t.tenant.as_deref() == Some(name))
                            .then(|| ColumnRef::new(&t.schema, &t.table, name)),
                        ..Default::default()
                    }
                };
                match all {
                    Some(cols) => cols.iter().map(|c| out(self, c)).collect(),
                    None => {
                        let mut v: Vec<OutCol<'a>> =
                            t.columns.iter().map(|c| out(self, &c.name)).collect();
                        v.push(OutCol {
                            many: true,
                            ..Default::default()
                        });
                        v
                    }
                }
            }
            RelKind::View(v) => v
                .columns
                .iter()
                .map(|(n, b)| {
                    let prot = b.as_ref().and_then(|b| {
                        self.an
                            .policy
                            .table(&b.schema, &b.table)?
                            .column(&b.column)?;
                        Some(ProtCol {
                            col: b.clone(),
                            via: Via::View(v),
                        })
                    });
                    if let Some(p) = &prot {
                        self.touch(&p.col.clone(), Use::Read);
                    }
                    OutCol {
                        name: Some(n.clone()),
                        prot,
                        bidx: b.as_ref().and_then(|b| self.blind_index_of(b)),
                        tenant_of: b.as_ref().and_then(|b| self.tenant_column(b)),
                        unknown: v.unknown.contains(n),
                        many: false,
                        opaque: false,
                    }
                })
                .collect(),
            RelKind::Derived(cols) => cols.iter().cloned().collect(),
            RelKind::Plain => vec![Self::opaque()],
        }
    }

    pub(super) fn select(
        &mut self,
        s: &mut sqlparser::ast::Select,
        outer: &[Scope<'a>],
    ) -> R<(Vec<OutCol<'a>>, Scope<'a>)> {
        let top = std::mem::take(&mut self.outer_select);
        let mut rels = vec![];
        for t in s.from.iter_mut() {
            self.twj(t, outer, &mut rels)?;
        }
        let scope = Scope { rels, ctes: vec![] };
        let mut sc = outer.to_vec();
        sc.push(scope.clone());
        let mut outs = vec![];
        for item in s.projection.iter_mut() {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }
                    if top
                        && self
                            .unknown_ref(e, &sc)
                            .is_some_and(|(v, _)| self.may_show_as_stored(v)) =>
                {
                    // Shown as stored (ciphertext or whatever the view
                    // computes); never decrypted, never compared.
                    let name = match &*item {
                        SelectItem::ExprWithAlias { alias, .. } => Some(norm(alias)),
                        SelectItem::UnnamedExpr(e) => item_alias(e),
                        _ => None,
                    };
                    outs.push(OutCol {
                        name,
                        unknown: true,
                        ..Default::default()
                    });
                }
                SelectItem::UnnamedExpr(e) => outs.push(self.expr_column(e, None, &sc, true)?),
                SelectItem::ExprWithAlias { expr, alias } => {
                    outs.push(self.expr_column(expr, Some(&*alias), &sc, true)?);
                }
                SelectItem::Wildcard(_) => {
                    for r in &scope.rels {
                        if let RelKind::View(v) = &r.kind {
                            self.view_wildcard(v, top)?;
                        }
                        let o = self.rel_outputs(&r.kind);
                        outs.extend(o);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(n) => {
                        // `u.*` names the nearest relation called `u`: in
                        // this FROM, or in an enclosing query's (a LATERAL
                        // or correlated subquery), as PostgreSQL resolves it.
                        let parts = name_parts(n);
                        let found = sc
                            .iter()
                            .rev()
                            .find_map(|s| s.rels.iter().find(|r| Self::rel_matches(r, &parts)))
                            .cloned();
                        match found {
                            Some(r) => {
                                if let RelKind::View(v) = &r.kind {
                                    self.view_wildcard(v, top)?;
                                }
                                let o = self.rel_outputs(&r.kind);
                                outs.extend(o);
                            }
                            // A name pgveil cannot resolve: columns it
                            // cannot count.
                            None => outs.push(Self::opaque()),
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let probe = e.clone();
                        self.generic(&probe, &sc)?;
                    }
                },
                other => {
                    let probe = other.clone();
                    self.generic(&probe, &sc)?;
                }
            }
        }
        if let Some(w) = &mut s.selection {
            let c = self.expr(w, &sc)?;
            self.plain(
                c,
                "a WHERE condition",
                "compare it: col = $1, col IN (…), col IS NULL",
            )?;
        }
        match &mut s.group_by {
            GroupByExpr::All(_) => {
                if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                    return Err(self.group_reject(&p));
                }
            }
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs.iter_mut() {
                    if let Some(p) = self.output_ref(e, &outs)? {
                        return Err(self.group_reject(&p));
                    }
                    let c = self.expr(e, &sc)?;
                    if let Class::Prot(p) = c {
                        return Err(self.group_reject(&p));
                    }
                    self.plain(c, "", "")?;
                }
            }
        }
        if let Some(h) = &mut s.having {
            let c = self.expr(h, &sc)?;
            self.plain(c, "HAVING", "filter in the application")?;
        }
        match &mut s.distinct {
            Some(Distinct::Distinct) => {
                if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                    return Err(self.unsupported_on(
                        &p,
                        "DISTINCT",
                        "ciphertexts of equal values differ; de-duplicate in the application, or select the blind-index column",
                    ));
                }
            }
            Some(Distinct::On(exprs)) => {
                for e in exprs.iter_mut() {
                    if let Some(p) = self.output_ref(e, &outs)? {
                        return Err(self.unsupported_on(
                            &p,
                            "DISTINCT ON",
                            "de-duplicate on an unprotected column",
                        ));
                    }
                    let c = self.expr(e, &sc)?;
                    self.plain(c, "DISTINCT ON", "de-duplicate on an unprotected column")?;
                }
            }
            _ => {}
        }
        let rest = (
            s.named_window.clone(),
            s.qualify.clone(),
            s.lateral_views.clone(),
            s.prewhere.clone(),
            s.cluster_by.clone(),
            s.sort_by.clone(),
        );
        self.generic(&rest.0, &sc)?;
        self.generic(&rest.1, &sc)?;
        self.generic(&rest.2, &sc)?;
        self.generic(&rest.3, &sc)?;
        self.generic(&rest.4, &sc)?;
        self.generic(&rest.5, &sc)?;
        Ok((outs, scope))
    }

    pub(super) fn group_reject(&self, p: &ProtCol) -> Reject {
        self.unsupported_on(
            p,
            "GROUP BY",
            "ciphertexts of equal values differ; group by its blind-index column or an unprotected column",
        )
    }

    pub(super) fn returning(
        &mut self,
        ret: &mut Option<Vec<SelectItem>>,
        scope: &[Scope<'a>],
    ) -> R<Vec<OutCol<'a>>> {
        let mut outs = vec![];
        let Some(items) = ret else { return Ok(outs) };
        for item in items.iter_mut() {
            match item {
                SelectItem::UnnamedExpr(e) => outs.push(self.expr_column(e, None, scope, false)?),
                SelectItem::ExprWithAlias { expr, alias } => {
                    outs.push(self.expr_column(expr, Some(&*alias), scope, false)?);
                }
                SelectItem::Wildcard(_) => {
                    let last = scope.last().map(|s| s.rels.clone()).unwrap_or_default();
                    if let Some(r) = last.first() {
                        outs.extend(self.rel_outputs(&r.kind));
                    }
                }
                other => {
                    let probe = other.clone();
                    self.generic(&probe, scope)?;
                }
            }
        }
        Ok(outs)
    }

    /// One expression of a select list or RETURNING as an output column,
    /// named by `alias` or else as PostgreSQL names it (a bare column's
    /// name, taken before the walk rewrites it): a protected column is read
    /// (and decrypted for roles that may), anything else must be plain.
    /// `tenant`: record which tenant column it shows (the select list).
    fn expr_column(
        &mut self,
        e: &mut Expr,
        alias: Option<&Ident>,
        scope: &[Scope<'a>],
        tenant: bool,
    ) -> R<OutCol<'a>> {
        let name = match alias {
            Some(a) => Some(norm(a)),
            None => item_alias(e),
        };
        let tenant_of = if tenant {
            self.tenant_ref(e, scope)
        } else {
            None
        };
        match self.expr(e, scope)? {
            Class::Prot(p) => {
                self.touch(&p.col, Use::Read);
                Ok(OutCol {
                    name,
                    prot: Some(p),
                    ..Default::default()
                })
            }
            c => {
                self.plain(c, "", "")?;
                Ok(OutCol {
                    name,
                    tenant_of,
                    ..Default::default()
                })
            }
        }
    }
}

/// The output name of a select item without alias (a bare column's name).
fn item_alias(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(norm(i)),
        Expr::CompoundIdentifier(ids) => ids.last().map(norm),
        _ => None,
    }
}
