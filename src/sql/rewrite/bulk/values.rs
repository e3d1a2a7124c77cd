//! `INSERT … SELECT … FROM (VALUES …) AS v(…)`: each cell for a protected
//! column is a parameter or a literal, encrypted for the tenant of its row;
//! the cells of a column must agree on one type, as PostgreSQL gives the
//! VALUES column one type. The blind indexes go as extra VALUES columns.

use sqlparser::ast::{DataType, Expr};

use super::casts::{cast, peel, peel_mut, same_family, storage_type, typed};
use super::{Base, Target};
use crate::crypto::types::PgType;
use crate::policy::TablePolicy;
use crate::sql::rewrite::{Cx, R, Scope, WVal, null_expr, placeholder};
use crate::sql::{ColumnRef, ParamAction, Reject, SlotOp, TenantSource, Use};

impl<'a> Cx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn values_rows(
        &mut self,
        t: &'a TablePolicy,
        targets: &[Target<'a>],
        src: &[usize],
        proj_casts: &[Vec<PgType>],
        add: &[(usize, String, bool)],
        rows: &mut [&mut Vec<Expr>],
        sc: &[Scope<'a>],
    ) -> R<()> {
        let table = t.qualified();
        let width = rows.first().map_or(0, |r| r.len());
        let feeds = |k: usize| src.iter().position(|&s| s == k);
        // Plain cells and the tenant of each row.
        let mut tenants: Vec<TenantSource> = vec![];
        for row in rows.iter_mut() {
            let mut tenant = TenantSource::None;
            for k in 0..width {
                match feeds(k).map(|i| targets[i]) {
                    Some(Target::Protected(_)) => {}
                    Some(Target::Tenant) if t.tenant.is_some() => {
                        if let Some(ts) = self.tenant_of(&mut row[k], sc)? {
                            tenant = ts;
                        }
                    }
                    _ => {
                        let c = self.expr(&mut row[k], sc)?;
                        self.plain(
                            c,
                            "INSERT of a protected column into another column",
                            "copy values in the application",
                        )?;
                    }
                }
            }
            tenants.push(tenant);
        }
        for (i, tg) in targets.iter().enumerate() {
            let Target::Protected(cp) = *tg else { continue };
            let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
            let storage = self.storage_of(&cref);
            let k = src[i];
            // Each cell: its base, its own start type, its casts.
            struct Cell {
                base: Base,
                start: Option<PgType>,
                casts: Vec<PgType>,
            }
            let mut cells = vec![];
            for row in rows.iter() {
                let Some((base, casts)) = peel(&row[k]) else {
                    return Err(self.bulk_reject(
                        &table,
                        &cp.name,
                        "a cast PostgreSQL does not have",
                    ));
                };
                let casts = self.cast_types(&cref, &casts, false)?;
                let base_expr = base.clone();
                if matches!(&base_expr, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
                {
                    return Err(self.bulk_reject(&table, &cp.name, "DEFAULT in a VALUES list inside a SELECT (PostgreSQL does not allow it there)"));
                }
                let b = self.base(&base_expr)?;
                let start = match &b {
                    Base::Param(orig) => {
                        let declared = self.client_types.get(*orig).copied().unwrap_or(0);
                        if declared != 0 {
                            Some(PgType::from_oid(declared).ok_or_else(|| {
                                Reject::unsupported(format!(
                                    "pgveil: parameter ${} for protected column {cref} must be declared as the column's type ({}) or left unspecified",
                                    orig + 1,
                                    cp.ty
                                ))
                            })?)
                        } else {
                            None
                        }
                    }
                    Base::Typed(_, ty) => Some(*ty),
                    Base::Str(_) | Base::Null => None,
                    Base::Array | Base::Other => {
                        return Err(self.bulk_reject(
                            &table,
                            &cp.name,
                            "a VALUES cell computed by the database (only parameters and literals can be encrypted)",
                        ));
                    }
                };
                cells.push(Cell {
                    base: b,
                    start,
                    casts,
                });
            }
            // PostgreSQL gives the VALUES column one type: the cells' own
            // types must agree, untyped cells take it (text if none has one).
            let own = |c: &Cell| c.casts.last().copied().or(c.start);
            let common = cells.iter().find_map(own);
            for c in &cells {
                if let (Some(a), Some(b)) = (own(c), common)
                    && !same_family(a, b)
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: the VALUES rows for protected column {cref} have values of different types ({a} and {b}), which PostgreSQL would convert: give every row the column's type"
                    )));
                }
            }
            let common = common.unwrap_or(PgType::Text);
            let mut wvals = vec![];
            for (r, c) in cells.iter().enumerate() {
                let mut chain = c.casts.clone();
                if own(c).is_none() {
                    chain.push(common);
                }
                chain.extend_from_slice(&proj_casts[i]);
                let tenant = tenants[r].clone();
                if t.tenant.is_some()
                    && tenant == TenantSource::None
                    && !matches!(c.base, Base::Null)
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: INSERT … SELECT FROM VALUES into {table} writes protected column {cref} but a row's tenant is unknown: include the tenant column {} in the column list with a literal or a parameter ($n) in every row",
                        t.tenant.as_deref().unwrap_or_default()
                    )));
                }
                let cell = &mut rows[r][k];
                let w = match &c.base {
                    Base::Null => {
                        self.check_chain(&cref, cp, None, &chain, false)?;
                        WVal::Null
                    }
                    Base::Str(s) | Base::Typed(s, _) => {
                        self.check_chain(&cref, cp, c.start, &chain, false)?;
                        self.check_literal(&cref, s, &chain)?;
                        *peel_mut(cell) =
                            self.slot(Some(s.clone()), &cref, SlotOp::Encrypt, tenant);
                        WVal::Lit(s.clone())
                    }
                    Base::Param(orig) => {
                        self.check_chain(&cref, cp, c.start, &chain, true)?;
                        self.override_type(*orig, chain.first().copied().unwrap_or(cp.ty), false)?;
                        let ph = self.param_protected(
                            *orig,
                            ParamAction::Encrypt {
                                orig: *orig,
                                target: cref.clone(),
                                tenant,
                            },
                        );
                        *peel_mut(cell) = placeholder(ph);
                        WVal::Param(*orig)
                    }
                    Base::Array | Base::Other => unreachable!("refused above"),
                };
                typed(cell, storage_type(storage));
                wvals.push(w);
            }
            for (_, _, next) in add.iter().filter(|a| a.0 == i) {
                for (row, w) in rows.iter_mut().zip(&wvals) {
                    let be = self.bidx_value(w, &cref, *next, &null_expr());
                    let be = match w {
                        WVal::Lit(_) => be,
                        _ => cast(be, DataType::Bytea),
                    };
                    row.push(be);
                }
            }
            self.touch(&cref, Use::Write);
        }
        Ok(())
    }
}
