//! INSERT on protected tables: the column list, VALUES rows (encrypted
//! values, appended blind indexes, the tenant of each row) and ON CONFLICT.

use sqlparser::ast::{
    ConflictTarget, Expr, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, SetExpr,
    TableObject, Value,
};

use super::{
    Class, ColumnRef, Cx, OutCol, ParamAction, R, Reject, Rel, RelKind, Scope, SlotOp,
    TenantSource, Use, WVal, make_ident, name_parts, norm, null_expr, placeholder,
};
use crate::policy::ColumnPolicy;

impl<'a> Cx<'a> {
    pub(super) fn write_value(
        &mut self,
        cref: &ColumnRef,
        cp: &ColumnPolicy,
        e: &mut Expr,
        sc: &[Scope<'a>],
        tenant: &TenantSource,
        stmt: &str,
    ) -> R<WVal> {
        let access = self.access(cp);
        let c = self.expr(e, sc)?;
        self.touch(cref, Use::Write);
        match c {
            Class::Lit(None) => Ok(WVal::Null),
            Class::Default => Ok(WVal::Default),
            Class::Param(orig) => {
                let action = if access.write {
                    self.override_type(orig, cp.ty, false)?;
                    ParamAction::Encrypt {
                        orig,
                        target: cref.clone(),
                        tenant: tenant.clone(),
                    }
                } else {
                    ParamAction::RequireEnvelope {
                        orig,
                        target: cref.clone(),
                    }
                };
                let ph = self.param_protected(orig, action);
                *e = placeholder(ph);
                Ok(WVal::Param(orig))
            }
            Class::Lit(Some(s)) => {
                let op = if access.write {
                    SlotOp::Encrypt
                } else {
                    SlotOp::RequireEnvelope
                };
                *e = self.slot(Some(s.clone()), cref, op, tenant.clone());
                Ok(WVal::Lit(s))
            }
            Class::Prot(_) | Class::Plain => Err(Reject::unsupported(format!(
                "pgveil: {stmt} of an expression into protected column {cref} is not supported: pgveil can only encrypt a literal or a parameter ($n); compute the value in the application"
            ))),
        }
    }

    pub(super) fn bidx_value(
        &mut self,
        w: &WVal,
        target: &ColumnRef,
        next: bool,
        default: &Expr,
    ) -> Expr {
        let op = if next {
            SlotOp::BlindIndexNext
        } else {
            SlotOp::BlindIndex
        };
        match w {
            WVal::Param(orig) => {
                let action = if next {
                    ParamAction::BlindIndexNext {
                        orig: *orig,
                        target: target.clone(),
                    }
                } else {
                    ParamAction::BlindIndex {
                        orig: *orig,
                        target: target.clone(),
                        tenant: TenantSource::None,
                        array: false,
                    }
                };
                placeholder(self.param_append(action))
            }
            WVal::Lit(s) => self.slot(Some(s.clone()), target, op, TenantSource::None),
            WVal::Null => null_expr(),
            WVal::Default => default.clone(),
        }
    }

    pub(super) fn tenant_of(&mut self, e: &mut Expr, sc: &[Scope<'a>]) -> R<Option<TenantSource>> {
        Ok(match self.expr(e, sc)? {
            Class::Param(i) => {
                self.plain_params.insert(i);
                Some(TenantSource::Param(i))
            }
            Class::Lit(Some(s)) => Some(TenantSource::Literal(s)),
            _ => None,
        })
    }

    pub(super) fn insert(
        &mut self,
        ins: &mut sqlparser::ast::Insert,
        sc: &[Scope<'a>],
    ) -> R<Vec<OutCol<'a>>> {
        let TableObject::TableName(tname) = &ins.table else {
            let probe = ins.clone();
            self.generic(&probe, sc)?;
            return Ok(vec![]);
        };
        let parts = name_parts(tname);
        let (schema, name, kind) = self.table_kind(&parts, sc)?;
        let alias = ins.table_alias.as_ref().map(|a| norm(&a.alias));
        let t = match kind {
            RelKind::Table(t) => t,
            RelKind::View(v) => {
                return Err(Reject::unsupported(format!(
                    "pgveil: writing through view {}.{} over protected data is not supported: insert into the base table",
                    v.schema, v.name
                )));
            }
            _ => {
                // Not protected: analyze the source and RETURNING. The rows
                // land in a table pgveil does not protect.
                if let Some(src) = &mut ins.source {
                    let outs = self.query(src, sc)?;
                    self.exported(&outs, "INSERT … SELECT into an unprotected table")?;
                }
                let mut rsc = sc.to_vec();
                rsc.push(Scope {
                    rels: vec![Rel {
                        alias,
                        schema,
                        name,
                        kind: RelKind::Plain,
                    }],
                    ctes: vec![],
                });
                if let Some(on) = &ins.on {
                    let probe = on.clone();
                    self.generic(&probe, &rsc)?;
                }
                return self.returning(&mut ins.returning, &rsc);
            }
        };
        let qualified = t.qualified();
        if !ins.assignments.is_empty() {
            return Err(Reject::unsupported(format!(
                "pgveil: INSERT … SET into protected table {qualified} is not supported: use INSERT … (columns) VALUES (…)"
            )));
        }
        let width = match ins.source.as_deref().map(|q| q.body.as_ref()) {
            Some(SetExpr::Values(v)) => v.rows.first().map_or(0, |r| r.content.len()),
            _ => 0,
        };
        if ins.columns.is_empty() {
            let known = self
                .an
                .table_columns
                .get(&(t.schema.clone(), t.table.clone()));
            match known {
                Some(cols) if ins.source.is_some() && width <= cols.len() && width > 0 => {
                    ins.columns = cols[..width]
                        .iter()
                        .map(|c| ObjectName(vec![ObjectNamePart::Identifier(make_ident(c))]))
                        .collect();
                    self.changed = true;
                }
                _ if ins.source.is_none() => {}
                _ => {
                    return Err(Reject::unsupported(format!(
                        "pgveil: INSERT into protected table {qualified} without a column list is not supported here: list the columns, e.g. INSERT INTO {qualified} ({}, …) VALUES (…)",
                        t.columns[0].name
                    )));
                }
            }
        }
        let cols: Vec<String> = ins
            .columns
            .iter()
            .map(|c| self.written_column(c, t))
            .collect::<R<_>>()?;
        let row_scope = Scope {
            rels: vec![Rel {
                alias: alias.clone(),
                schema: schema.clone().or_else(|| Some(t.schema.clone())),
                name: name.clone(),
                kind: RelKind::Table(t),
            }],
            ctes: vec![],
        };
        let mut tsc = sc.to_vec();
        tsc.push(row_scope.clone());
        let protected_pos: Vec<(usize, &'a ColumnPolicy)> = cols
            .iter()
            .enumerate()
            .filter_map(|(i, c)| t.column(c).map(|cp| (i, cp)))
            .collect();
        // Writers may not supply blind indexes themselves.
        for c in &cols {
            if let Some((owner, _)) = t.blind_index_owner(c)
                && self.access(owner).write
            {
                return Err(Reject::unsupported(format!(
                    "pgveil: column {qualified}.{c} is the blind index of {} and is maintained by pgveil: remove it from the INSERT",
                    owner.name
                )));
            }
        }
        let tenant_pos = t
            .tenant
            .as_ref()
            .and_then(|tc| cols.iter().position(|c| c == tc));
        let mut row_tenants: Vec<TenantSource> = vec![];
        match ins.source.as_deref_mut() {
            Some(q)
                if matches!(q.body.as_ref(), SetExpr::Values(_))
                    && q.with.is_none()
                    && q.order_by.is_none()
                    && q.limit_clause.is_none() =>
            {
                let SetExpr::Values(values) = q.body.as_mut() else {
                    unreachable!("checked above")
                };
                // Which blind-index columns to append (not named, writer role).
                let mut add: Vec<(String, &'a ColumnPolicy, bool)> = vec![];
                for (_, cp) in &protected_pos {
                    if !self.access(cp).write {
                        continue;
                    }
                    if let Some(b) = &cp.blind_index {
                        add.push((b.column.clone(), cp, false));
                        if let Some(n) = &b.next {
                            add.push((n.clone(), cp, true));
                        }
                    }
                }
                for row in values.rows.iter_mut() {
                    let exprs = &mut row.content;
                    if exprs.len() != cols.len() {
                        return Err(Reject::unsupported(format!(
                            "pgveil: INSERT into {qualified}: each VALUES row must have exactly one value per listed column"
                        )));
                    }
                    let tenant = match (&t.tenant, tenant_pos) {
                        (None, _) => TenantSource::None,
                        (Some(_), Some(p)) => match self.tenant_of(&mut exprs[p], &tsc)? {
                            Some(ts) => ts,
                            None => TenantSource::None,
                        },
                        (Some(_), None) => TenantSource::None,
                    };
                    let mut wvals: Vec<Option<WVal>> = vec![None; cols.len()];
                    for (i, e) in exprs.iter_mut().enumerate() {
                        if Some(i) == tenant_pos {
                            continue;
                        }
                        match t.column(&cols[i]) {
                            Some(cp) => {
                                let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
                                if let Some(tc) = &t.tenant
                                    && tenant == TenantSource::None
                                    && !matches!(e, Expr::Value(v) if v.value == Value::Null)
                                {
                                    return Err(Reject::unsupported(format!(
                                        "pgveil: INSERT into {qualified} writes protected column {cref} but the row's tenant is unknown: include the tenant column {tc} in the column list with a literal or a parameter ($n) value"
                                    )));
                                }
                                wvals[i] =
                                    Some(self.write_value(&cref, cp, e, &tsc, &tenant, "INSERT")?);
                            }
                            None => {
                                let c = self.expr(e, &tsc)?;
                                self.plain(
                                    c,
                                    "INSERT of a protected column into another column",
                                    "copy values in the application",
                                )?;
                            }
                        }
                    }
                    for (_, cp, next) in &add {
                        let pos = cols
                            .iter()
                            .position(|c| *c == cp.name)
                            .expect("protected column listed");
                        let w = wvals[pos].clone().unwrap_or(WVal::Null);
                        let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
                        let default = exprs[pos].clone();
                        let be = self.bidx_value(&w, &cref, *next, &default);
                        exprs.push(be);
                    }
                    row_tenants.push(tenant);
                }
                for (bcol, _, _) in &add {
                    ins.columns
                        .push(ObjectName(vec![ObjectNamePart::Identifier(make_ident(
                            bcol,
                        ))]));
                }
                if !add.is_empty() {
                    self.changed = true;
                }
            }
            Some(q) => {
                if protected_pos.is_empty() {
                    self.query(q, sc)?;
                } else {
                    // Rows the application sends through UNNEST or VALUES
                    // (the ORMs' bulk inserts); anything else is refused.
                    for bcol in self.insert_select(t, &cols, q, sc)? {
                        ins.columns
                            .push(ObjectName(vec![ObjectNamePart::Identifier(make_ident(
                                &bcol,
                            ))]));
                    }
                }
            }
            None => {}
        }
        // ON CONFLICT.
        if let Some(on) = &mut ins.on {
            match on {
                OnInsert::OnConflict(oc) => {
                    if let Some(ConflictTarget::Columns(cs)) = &mut oc.conflict_target {
                        for c in cs.iter_mut() {
                            let n = norm(c);
                            if let Some(cp) = t.column(&n) {
                                // The conflict is found on the blind index
                                // of the inserted value, which pgveil only
                                // computes for roles that write plaintext.
                                if !self.access(cp).write {
                                    return Err(Reject::unsupported(format!(
                                        "pgveil: ON CONFLICT ({n}) on protected column {qualified}.{n} by role {}: the conflict is found on the column's blind index, which pgveil computes only for roles with write access; ask the security team for write access, or use a unique constraint on an unprotected column",
                                        self.role
                                    )));
                                }
                                match &cp.blind_index {
                                    Some(b) => {
                                        *c = make_ident(&b.column);
                                        self.changed = true;
                                    }
                                    None => {
                                        return Err(Reject::unsupported(format!(
                                            "pgveil: ON CONFLICT on protected column {qualified}.{n} is not supported: it has no blind index; use a unique constraint on an unprotected column"
                                        )));
                                    }
                                }
                            }
                        }
                    }
                    let conflict_cols: Vec<String> = match &oc.conflict_target {
                        Some(ConflictTarget::Columns(cs)) => cs.iter().map(norm).collect(),
                        _ => vec![],
                    };
                    if let OnConflictAction::DoUpdate(du) = &mut oc.action {
                        let mut usc = tsc.clone();
                        usc.last_mut().expect("scope").rels.push(Rel {
                            alias: Some("excluded".into()),
                            schema: None,
                            name: "excluded".into(),
                            kind: RelKind::Table(t),
                        });
                        let tenant = if row_tenants.len() == 1 {
                            row_tenants[0].clone()
                        } else {
                            TenantSource::None
                        };
                        let same_tenant = t
                            .tenant
                            .as_ref()
                            .is_none_or(|tc| conflict_cols.contains(tc));
                        self.assignments(
                            t,
                            &mut du.assignments,
                            &usc,
                            tenant,
                            same_tenant,
                            "INSERT … ON CONFLICT DO UPDATE",
                        )?;
                        if let Some(w) = &mut du.selection {
                            let c = self.expr(w, &usc)?;
                            self.plain(c, "a WHERE condition", "compare it: col = $1")?;
                        }
                    }
                }
                other => {
                    let probe = other.clone();
                    self.generic(&probe, &tsc)?;
                }
            }
        }
        self.returning(&mut ins.returning, &tsc)
    }
}
