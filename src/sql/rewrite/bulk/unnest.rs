//! `INSERT … SELECT … FROM UNNEST(…)`: each protected column is fed by an
//! array parameter (encrypted element by element at Bind) or an array
//! literal (`'{…}'::text[]`, `ARRAY[…]`, encrypted into one slot), with the
//! tenant of each row from the tenant column's array; the blind indexes go
//! as extra UNNEST arguments.

use sqlparser::ast::{DataType, Expr, Value};

use super::casts::{array_elem, array_of, cast, peel, peel_mut, storage_type, typed};
use super::{Base, Target};
use crate::crypto::types::PgType;
use crate::policy::{ColumnPolicy, TablePolicy};
use crate::sql::array::{self, ArrayError};
use crate::sql::rewrite::{Cx, R, Scope, null_expr, placeholder};
use crate::sql::{ArrayTenant, ColumnRef, ParamAction, Reject, SlotOp, TenantSource, Use};

/// Where the tenants of an UNNEST's rows come from.
enum Tenants {
    /// Not a tenant table.
    NotNeeded,
    /// The tenant column is not written, or computed.
    Unknown,
    /// An array parameter.
    Param(usize),
    /// Per element (`None`: NULL).
    Known(Vec<TenantSource>),
}

impl<'a> Cx<'a> {
    /// The tenants of an UNNEST's rows, from the tenant column's argument.
    fn unnest_tenants(&mut self, arg: Option<&mut Expr>, sc: &[Scope<'a>]) -> R<Tenants> {
        let Some(arg) = arg else {
            return Ok(Tenants::Unknown);
        };
        let Some((base, casts)) = peel(arg) else {
            return Ok(Tenants::Unknown);
        };
        let arrays = !casts.is_empty() && casts.iter().all(|c| array_elem(c).is_some());
        let base = base.clone();
        Ok(match (self.base(&base)?, arrays) {
            (Base::Param(q), _) => {
                self.plain_params.insert(q);
                Tenants::Param(q)
            }
            (Base::Str(s), true) => match array::parse_text(&s) {
                Ok(items) => Tenants::Known(
                    items
                        .into_iter()
                        .map(|i| i.map_or(TenantSource::None, TenantSource::Literal))
                        .collect(),
                ),
                Err(_) => Tenants::Unknown,
            },
            (Base::Array, _) => {
                let Expr::Array(a) = peel_mut(arg) else {
                    unreachable!("peeled to an array")
                };
                let mut out = vec![];
                for el in a.elem.iter_mut() {
                    match self.tenant_of(el, sc)? {
                        Some(ts) => out.push(ts),
                        None if matches!(peel(el).map(|p| p.0), Some(Expr::Value(v)) if v.value == Value::Null) => {
                            out.push(TenantSource::None)
                        }
                        None => return Ok(Tenants::Unknown),
                    }
                }
                Tenants::Known(out)
            }
            _ => {
                let c = self.expr(arg, sc)?;
                self.plain(c, "", "")?;
                Tenants::Unknown
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn unnest_rows(
        &mut self,
        t: &'a TablePolicy,
        targets: &[Target<'a>],
        src: &[usize],
        proj_casts: &[Vec<PgType>],
        tenant_target: Option<usize>,
        add: &[(usize, String, bool)],
        args: &mut Vec<Expr>,
        sc: &[Scope<'a>],
    ) -> R<()> {
        let table = t.qualified();
        let tenants = match (&t.tenant, tenant_target) {
            (None, _) => Tenants::NotNeeded,
            (Some(_), Some(i)) => {
                let k = src[i];
                self.unnest_tenants(args.get_mut(k), sc)?
            }
            (Some(_), None) => Tenants::Unknown,
        };
        // Plain arguments: analysed as any expression (they may not carry
        // protected data either).
        for (k, arg) in args.iter_mut().enumerate() {
            let feeds = src.iter().position(|&s| s == k);
            let plain = match feeds {
                None => true,
                Some(i) => matches!(targets[i], Target::Plain),
            };
            if plain {
                let c = self.expr(arg, sc)?;
                self.plain(
                    c,
                    "INSERT of a protected column into another column",
                    "copy values in the application",
                )?;
            }
        }
        let mut appended: Vec<Expr> = vec![];
        for (i, tg) in targets.iter().enumerate() {
            let Target::Protected(cp) = *tg else { continue };
            let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
            let storage = array_of(storage_type(self.storage_of(&cref)));
            let bidx_next: Vec<bool> = add.iter().filter(|a| a.0 == i).map(|a| a.2).collect();
            let arg = &mut args[src[i]];
            let Some((base, casts)) = peel(arg) else {
                return Err(self.bulk_reject(&table, &cp.name, "a cast PostgreSQL does not have"));
            };
            let arr_types = self.cast_types(&cref, &casts, true)?;
            let base_expr = base.clone();
            let mut chain = arr_types.clone();
            chain.extend_from_slice(&proj_casts[i]);
            if t.tenant.is_some() && matches!(tenants, Tenants::Unknown) {
                return Err(Reject::unsupported(format!(
                    "pgveil: INSERT … SELECT FROM UNNEST into {table} writes protected column {cref} but the rows' tenants are unknown: include the tenant column {} in the column list, fed by an array parameter or an array literal",
                    t.tenant.as_deref().unwrap_or_default()
                )));
            }
            match self.base(&base_expr)? {
                Base::Param(orig) => {
                    let declared = self.client_types.get(orig).copied().unwrap_or(0);
                    let from = if declared != 0 {
                        Some(PgType::from_array_oid(declared).ok_or_else(|| {
                            Reject::unsupported(format!(
                                "pgveil: parameter ${} for protected column {cref} must be declared as an array of the column's type ({}[]) or left unspecified",
                                orig + 1,
                                cp.ty
                            ))
                        })?)
                    } else {
                        None
                    };
                    let Some(elem) = from.or(arr_types.first().copied()) else {
                        return Err(Reject::unsupported(format!(
                            "pgveil: the array parameter ${} for protected column {cref} has no type: cast it to the column's type, UNNEST(${}::{}[])",
                            orig + 1,
                            orig + 1,
                            cp.ty
                        )));
                    };
                    self.check_chain(&cref, cp, from, &chain, true)?;
                    self.override_type(orig, elem, true)?;
                    let tenant = match &tenants {
                        Tenants::NotNeeded => ArrayTenant::None,
                        Tenants::Param(q) => ArrayTenant::Param(*q),
                        Tenants::Known(list) => ArrayTenant::Elements(list.clone()),
                        Tenants::Unknown => unreachable!("refused above"),
                    };
                    let ph = self.param_protected(
                        orig,
                        ParamAction::EncryptArray {
                            orig,
                            target: cref.clone(),
                            tenant,
                            elem: elem.oid(),
                        },
                    );
                    *peel_mut(arg) = placeholder(ph);
                    typed(arg, storage);
                    for next in bidx_next {
                        let ph = self.param_append(ParamAction::BlindIndexArray {
                            orig,
                            target: cref.clone(),
                            next,
                            elem: elem.oid(),
                        });
                        appended.push(cast(placeholder(ph), array_of(DataType::Bytea)));
                    }
                }
                Base::Null if !arr_types.is_empty() => {
                    self.check_chain(&cref, cp, None, &chain, false)?;
                    typed(arg, storage);
                    for _ in bidx_next {
                        appended.push(cast(null_expr(), array_of(DataType::Bytea)));
                    }
                }
                b @ (Base::Str(_) | Base::Array)
                    if !arr_types.is_empty() || matches!(b, Base::Array) =>
                {
                    let items = match b {
                        Base::Str(s) => {
                            self.check_chain(&cref, cp, None, &chain, false)?;
                            let items = array::parse_text(&s).map_err(|e| match e {
                                ArrayError::MultiDimensional => self.bulk_reject(
                                    &table,
                                    &cp.name,
                                    "a multi-dimensional array (UNNEST would flatten it)",
                                ),
                                ArrayError::Malformed => Reject {
                                    sqlstate: "22P02",
                                    message: format!(
                                        "pgveil: the array literal for protected column {cref} is malformed (the value is not shown)"
                                    ),
                                },
                            })?;
                            for v in items.iter().flatten() {
                                self.check_literal(&cref, v, &chain)?;
                            }
                            items
                        }
                        _ => {
                            let Expr::Array(a) = peel_mut(arg) else {
                                unreachable!("peeled to an array")
                            };
                            let elems = std::mem::take(&mut a.elem);
                            self.array_items(&cref, cp, &elems, &chain, arr_types.is_empty())?
                        }
                    };
                    let mut per_row = vec![];
                    if t.tenant.is_some() {
                        let Tenants::Known(list) = &tenants else {
                            return Err(Reject::unsupported(format!(
                                "pgveil: INSERT … SELECT FROM UNNEST into {table}: the values for protected column {cref} are literals but the tenants are an array parameter; send both as parameters or both as literals"
                            )));
                        };
                        for (n, it) in items.iter().enumerate() {
                            let ts = list.get(n).cloned().unwrap_or(TenantSource::None);
                            match (&ts, it) {
                                (TenantSource::Param(_), _) => {
                                    return Err(Reject::unsupported(format!(
                                        "pgveil: INSERT … SELECT FROM UNNEST into {table}: the values for protected column {cref} are literals but the tenants are parameters; send both as parameters or both as literals"
                                    )));
                                }
                                (TenantSource::None, Some(_)) => {
                                    return Err(Reject::unsupported(format!(
                                        "pgveil: INSERT … SELECT FROM UNNEST into {table} writes protected column {cref} in a row whose tenant is NULL or missing: give every row a tenant ({})",
                                        t.tenant.as_deref().unwrap_or_default()
                                    )));
                                }
                                _ => per_row.push(ts),
                            }
                        }
                    }
                    *peel_mut(arg) = self.slot_array(&items, &cref, SlotOp::EncryptArray, per_row);
                    typed(arg, storage);
                    for next in bidx_next {
                        let op = if next {
                            SlotOp::BlindIndexNextArray
                        } else {
                            SlotOp::BlindIndexArray
                        };
                        appended.push(self.slot_array(&items, &cref, op, vec![]));
                    }
                }
                Base::Str(_) | Base::Null => {
                    return Err(Reject::unsupported(format!(
                        "pgveil: the array literal for protected column {cref} has no type: cast it to the column's type, e.g. '{{…}}'::{}[]",
                        cp.ty
                    )));
                }
                _ => {
                    return Err(self.bulk_reject(
                        &table,
                        &cp.name,
                        "an UNNEST argument computed by the database (only array parameters and array literals can be encrypted)",
                    ));
                }
            }
            self.touch(&cref, Use::Write);
        }
        args.extend(appended);
        Ok(())
    }

    /// The elements of `ARRAY[…]` for protected column `cref`: literals and
    /// NULLs, each possibly cast; `untyped`: the array has no cast of its
    /// own, so its elements must be string literals (read as text, as
    /// PostgreSQL reads them).
    fn array_items(
        &mut self,
        cref: &ColumnRef,
        cp: &ColumnPolicy,
        elems: &[Expr],
        chain: &[PgType],
        untyped: bool,
    ) -> R<Vec<Option<String>>> {
        let table = format!("{}.{}", cref.schema, cref.table);
        let mut out = vec![];
        for el in elems {
            let Some((base, casts)) = peel(el) else {
                return Err(self.bulk_reject(
                    &table,
                    &cref.column,
                    "a cast PostgreSQL does not have",
                ));
            };
            let own = self.cast_types(cref, &casts, false)?;
            let base = base.clone();
            let b = self.base(&base)?;
            let typed = !own.is_empty() || !matches!(b, Base::Str(_) | Base::Null);
            if untyped && typed {
                return Err(Reject::unsupported(format!(
                    "pgveil: the ARRAY[…] for protected column {cref} has no type: cast it to the column's type, ARRAY[…]::{}[]",
                    cp.ty
                )));
            }
            let mut full = own.clone();
            if untyped {
                full.push(PgType::Text);
            }
            full.extend_from_slice(chain);
            match b {
                Base::Null => out.push(None),
                Base::Str(s) => {
                    self.check_chain(cref, cp, None, &full, false)?;
                    self.check_literal(cref, &s, &full)?;
                    out.push(Some(s));
                }
                Base::Typed(s, ty) => {
                    self.check_chain(cref, cp, Some(ty), &full, false)?;
                    self.check_literal(cref, &s, &full)?;
                    out.push(Some(s));
                }
                Base::Param(orig) => {
                    return Err(self.bulk_reject(
                        &table,
                        &cref.column,
                        &format!(
                            "parameter ${} inside ARRAY[…] (send the whole array as one parameter, UNNEST($1::{}[]))",
                            orig + 1,
                            cp.ty
                        ),
                    ));
                }
                Base::Array => {
                    return Err(self.bulk_reject(
                        &table,
                        &cref.column,
                        "a multi-dimensional array (UNNEST would flatten it)",
                    ));
                }
                Base::Other => {
                    return Err(self.bulk_reject(
                        &table,
                        &cref.column,
                        "an array element computed by the database",
                    ));
                }
            }
        }
        Ok(out)
    }
}
