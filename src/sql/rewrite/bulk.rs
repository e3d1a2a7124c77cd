//! `INSERT … SELECT` whose rows the application sends: the shapes ORMs use
//! for bulk inserts.
//!
//! - `INSERT INTO t (a, b) SELECT * FROM UNNEST($1::text[], $2::int4[])`
//!   (Django's `bulk_create` on PostgreSQL; with client-side binding the
//!   arrays are literals, `('{…}')::varchar[]` or `ARRAY['x', 'y']`), also
//!   with an alias and an explicit projection: `SELECT u.a, u.b FROM
//!   UNNEST(…) AS u(a, b)`;
//! - `INSERT INTO t (a, b) SELECT p0::VARCHAR, p1::INTEGER FROM (VALUES
//!   ($1::VARCHAR, $2::INTEGER, 0), …) AS v(p0, p1, n) ORDER BY n`
//!   (SQLAlchemy 2's `insertmanyvalues` with ordered RETURNING).
//!
//! Every value for a protected column must be the application's: a
//! parameter, a literal, an element of an array parameter or of an array
//! literal. Each is encrypted for its target column (arrays element by
//! element at Bind, with the tenant of the same row), and its blind index
//! (and the rotation's `next` index) travels as an extra UNNEST argument or
//! VALUES column that the projection maps to the blind-index column. The
//! shape is checked strictly: one FROM item and nothing that filters,
//! groups, joins or computes; the projection maps each target column to
//! exactly one source column, optionally through casts that PostgreSQL
//! performs without changing the value (see [`casts::hop`]); `SELECT *` maps
//! positionally; ORDER BY may only name source columns that are not
//! protected values. Anything else that writes a protected column is
//! refused with the table, the column and the alternative.
//!
//! This file checks the shape and maps the projection (the shared core);
//! `unnest` and `values` rewrite the two kinds of source, `casts` reads the
//! types a value passes through.

mod casts;
mod unnest;
mod values;

use sqlparser::ast::{
    Array, Expr, GroupByExpr, OrderByKind, Query, Select, SelectFlavor, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, TableAliasColumnDef, TableFactor, Value,
    WildcardAdditionalOptions,
};

use self::casts::{number_type, peel, storage_type, typed};
use super::{ColumnRef, Cx, R, Reject, Scope, make_ident, name_parts, norm};
use crate::crypto::types::{PgType, Storage};
use crate::policy::{ColumnPolicy, TablePolicy};

/// What a target column of the INSERT is.
#[derive(Clone, Copy)]
enum Target<'a> {
    Plain,
    Tenant,
    Protected(&'a ColumnPolicy),
}

/// The base of a value under its parentheses and casts.
enum Base {
    Param(usize),
    /// A string literal: untyped until a cast reads it.
    Str(String),
    /// A number or boolean literal, of its own type.
    Typed(String, PgType),
    Null,
    /// `ARRAY[…]`.
    Array,
    Other,
}

fn no_wildcard_options(o: &WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_alias.is_none()
}

impl<'a> Cx<'a> {
    fn base(&mut self, e: &Expr) -> R<Base> {
        Ok(match e {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => Base::Param(self.param_index(p)?),
                Value::Null => Base::Null,
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => Base::Str(s.clone()),
                Value::DollarQuotedString(d) => Base::Str(d.value.clone()),
                Value::Number(n, false) => Base::Typed(n.clone(), number_type(n)),
                Value::Boolean(b) => Base::Typed(b.to_string(), PgType::Bool),
                _ => Base::Other,
            },
            Expr::Array(Array { named: true, .. }) => Base::Array,
            _ => Base::Other,
        })
    }

    fn bulk_reject(&self, table: &str, col: &str, what: &str) -> Reject {
        Reject::unsupported(format!(
            "pgveil: INSERT … SELECT into protected column {table}.{col} with {what} is not supported: pgveil can only encrypt values the application sends, so the rows must come from UNNEST of array parameters or literals (INSERT INTO {table} (…) SELECT * FROM UNNEST($1::text[], …)) or from VALUES mapped column by column (SELECT v.a, v.b FROM (VALUES ($1, $2), …) AS v(a, b)); or insert with INSERT … VALUES"
        ))
    }

    /// `INSERT INTO t (cols) <q>` where `q` is not `VALUES` and some of
    /// `cols` are protected: plan the bulk shapes, refuse the rest. Returns
    /// the blind-index columns to append to the INSERT's column list.
    pub(super) fn insert_select(
        &mut self,
        t: &'a TablePolicy,
        cols: &[String],
        q: &mut Query,
        sc: &[Scope<'a>],
    ) -> R<Vec<String>> {
        let table = t.qualified();
        let targets: Vec<Target<'a>> = cols
            .iter()
            .map(|c| match t.column(c) {
                Some(cp) => Target::Protected(cp),
                None if t.tenant.as_deref() == Some(c.as_str()) => Target::Tenant,
                None => Target::Plain,
            })
            .collect();
        let first = targets
            .iter()
            .zip(cols)
            .find_map(|(tg, c)| matches!(tg, Target::Protected(_)).then_some(c.as_str()))
            .unwrap_or_default()
            .to_string();
        let shape = |what: &str| self.bulk_reject(&table, &first, what);
        // Roles that may not write plaintext can only copy envelopes, which
        // pgveil checks value by value in INSERT … VALUES.
        for (tg, c) in targets.iter().zip(cols) {
            if let Target::Protected(cp) = tg
                && !self.access(cp).write
            {
                return Err(Reject::unsupported(format!(
                    "pgveil: role {} may only copy existing ciphertext into protected column {table}.{c}, and pgveil checks envelopes only in INSERT … VALUES: insert with VALUES, or ask the security team for write access",
                    self.role
                )));
            }
        }
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = q;
        if with.is_some() {
            return Err(shape("a WITH clause"));
        }
        if limit_clause.is_some() || fetch.is_some() {
            return Err(shape("LIMIT, OFFSET or FETCH"));
        }
        if !locks.is_empty()
            || for_clause.is_some()
            || settings.is_some()
            || format_clause.is_some()
            || !pipe_operators.is_empty()
        {
            return Err(shape("a locking or vendor clause"));
        }
        let SetExpr::Select(sel) = body.as_mut() else {
            return Err(shape("a set operation or a nested query"));
        };
        let Select {
            select_token: _,
            optimizer_hints,
            distinct,
            select_modifiers,
            top,
            top_before_distinct: _,
            projection,
            exclude,
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode,
            flavor,
        } = sel.as_mut();
        if selection.is_some() || prewhere.is_some() || qualify.is_some() {
            return Err(shape("a WHERE condition (it would filter rows on values)"));
        }
        if distinct.is_some()
            || having.is_some()
            || !matches!(group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty())
            || !named_window.is_empty()
        {
            return Err(shape("DISTINCT, GROUP BY, HAVING or WINDOW"));
        }
        if !optimizer_hints.is_empty()
            || select_modifiers.is_some()
            || top.is_some()
            || exclude.is_some()
            || into.is_some()
            || !lateral_views.is_empty()
            || !connect_by.is_empty()
            || !cluster_by.is_empty()
            || !distribute_by.is_empty()
            || !sort_by.is_empty()
            || value_table_mode.is_some()
            || *flavor != SelectFlavor::Standard
        {
            return Err(shape("a clause pgveil does not plan"));
        }
        if from.len() != 1 || !from[0].joins.is_empty() {
            return Err(shape("more than one FROM item or a join"));
        }
        // The source: its alias, its column names, its width.
        let (alias, width) = match &from[0].relation {
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_offset,
                with_offset_alias,
                with_ordinality,
            } => {
                if *with_offset || with_offset_alias.is_some() || *with_ordinality {
                    return Err(shape("UNNEST … WITH ORDINALITY"));
                }
                (alias.clone(), array_exprs.len())
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                sample,
            } => {
                let plain_values = !*lateral
                    && sample.is_none()
                    && subquery.with.is_none()
                    && subquery.order_by.is_none()
                    && subquery.limit_clause.is_none()
                    && subquery.fetch.is_none()
                    && subquery.locks.is_empty()
                    && subquery.for_clause.is_none()
                    && subquery.settings.is_none()
                    && subquery.format_clause.is_none()
                    && subquery.pipe_operators.is_empty()
                    && matches!(subquery.body.as_ref(), SetExpr::Values(v) if !v.explicit_row && !v.value_keyword && !v.rows.is_empty());
                if !plain_values {
                    return Err(shape(
                        "a subquery (only a plain VALUES list can supply the rows)",
                    ));
                }
                let SetExpr::Values(v) = subquery.body.as_ref() else {
                    unreachable!("checked above")
                };
                let w = v.rows[0].content.len();
                if v.rows.iter().any(|r| r.content.len() != w) {
                    return Err(shape("VALUES rows of different lengths"));
                }
                (alias.clone(), w)
            }
            _ => return Err(shape("rows read from a table, a view or a function")),
        };
        let alias_name = alias.as_ref().map(|a| norm(&a.name));
        let mut names: Vec<String> = vec![];
        if let Some(a) = &alias {
            if a.at.is_some() || a.columns.iter().any(|c| c.data_type.is_some()) {
                return Err(shape("a column definition list"));
            }
            names = a.columns.iter().map(|c| norm(&c.name)).collect();
            if !names.is_empty() && names.len() != width {
                return Err(shape(
                    "an alias naming fewer or more columns than the source has",
                ));
            }
            for (i, n) in names.iter().enumerate() {
                if names[..i].contains(n) {
                    return Err(shape("two source columns of the same name"));
                }
            }
        }
        // The projection: target column → source column and its casts.
        let wildcard = projection.len() == 1
            && match &projection[0] {
                SelectItem::Wildcard(o) => no_wildcard_options(o),
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    o,
                ) => {
                    alias_name.is_some()
                        && name_parts(n) == [alias_name.clone().unwrap_or_default()]
                        && no_wildcard_options(o)
                }
                _ => false,
            };
        let mut src: Vec<usize> = Vec::with_capacity(cols.len());
        let mut proj_casts: Vec<Vec<PgType>> = vec![vec![]; cols.len()];
        let source_ref = |e: &Expr| -> Option<usize> {
            let parts = match e {
                Expr::Identifier(i) => vec![norm(i)],
                Expr::CompoundIdentifier(ids) => ids.iter().map(norm).collect(),
                _ => return None,
            };
            let col = match parts.as_slice() {
                [c] => c,
                [a, c] if Some(a) == alias_name.as_ref() => c,
                _ => return None,
            };
            names.iter().position(|n| n == col)
        };
        if wildcard {
            if width != cols.len() {
                return Err(shape(
                    "SELECT * over a source whose width differs from the column list",
                ));
            }
            src = (0..width).collect();
        } else {
            if projection.len() != cols.len() {
                return Err(shape("a select list of another width than the column list"));
            }
            for (i, item) in projection.iter().enumerate() {
                let e = match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                    _ => return Err(shape("a select list pgveil cannot map")),
                };
                let Some((base, casts)) = peel(e) else {
                    return Err(shape("a cast PostgreSQL does not have"));
                };
                let Some(k) = source_ref(base) else {
                    return Err(self.bulk_reject(
                        &table,
                        &cols[i],
                        "a select list item that is not a column of the UNNEST or VALUES source (a value computed by the database, or a column of another table)",
                    ));
                };
                if src.contains(&k) {
                    return Err(shape("one source column written to two columns"));
                }
                src.push(k);
                if let Target::Protected(cp) = targets[i] {
                    let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
                    proj_casts[i] = self.cast_types(&cref, &casts, false)?;
                }
            }
        }
        // Which target each source column feeds.
        let mut feeds: Vec<Option<usize>> = vec![None; width];
        for (i, &k) in src.iter().enumerate() {
            feeds[k] = Some(i);
        }
        if let Some(ob) = order_by.as_ref() {
            let OrderByKind::Expressions(list) = &ob.kind else {
                return Err(shape("ORDER BY ALL"));
            };
            if ob.interpolate.is_some() {
                return Err(shape("ORDER BY … INTERPOLATE"));
            }
            for o in list {
                let k = if o.with_fill.is_none() {
                    source_ref(&o.expr)
                } else {
                    None
                };
                match k {
                    Some(k)
                        if !feeds[k]
                            .is_some_and(|i| matches!(targets[i], Target::Protected(_))) => {}
                    _ => {
                        return Err(shape(
                            "ORDER BY other than a source column that is not a protected value (e.g. the row counter)",
                        ));
                    }
                }
            }
        }
        // Blind-index columns to add, in order: (target index, column, next).
        let mut add: Vec<(usize, String, bool)> = vec![];
        for (i, tg) in targets.iter().enumerate() {
            if let Target::Protected(cp) = tg
                && let Some(b) = &cp.blind_index
            {
                add.push((i, b.column.clone(), false));
                if let Some(n) = &b.next {
                    add.push((i, n.clone(), true));
                }
            }
        }
        // Names for the added source columns.
        let mut new_names = vec![];
        for (_, bcol, _) in &add {
            let mut n = format!("pgv_{}", bcol.to_lowercase());
            while names.contains(&n) || new_names.contains(&n) {
                n.push('_');
            }
            new_names.push(n);
        }
        let tenant_target = targets.iter().position(|x| matches!(x, Target::Tenant));
        match &mut from[0].relation {
            TableFactor::UNNEST {
                array_exprs, alias, ..
            } => {
                self.unnest_rows(
                    t,
                    &targets,
                    &src,
                    &proj_casts,
                    tenant_target,
                    &add,
                    array_exprs,
                    sc,
                )?;
                push_alias_columns(alias, &new_names);
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let SetExpr::Values(v) = subquery.body.as_mut() else {
                    unreachable!("checked above")
                };
                let mut rows: Vec<&mut Vec<Expr>> =
                    v.rows.iter_mut().map(|r| &mut r.content).collect();
                self.values_rows(t, &targets, &src, &proj_casts, &add, &mut rows, sc)?;
                push_alias_columns(alias, &new_names);
            }
            _ => unreachable!("checked above"),
        }
        // The projection reads the added columns, and the protected
        // columns without their casts (the source holds ciphertext now).
        if !wildcard {
            for (i, item) in projection.iter_mut().enumerate() {
                if let Target::Protected(cp) = targets[i]
                    && let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } =
                        item
                    && matches!(e, Expr::Cast { .. } | Expr::Nested(_))
                {
                    let cref = ColumnRef::new(&t.schema, &t.table, &cp.name);
                    typed(e, storage_type(self.storage_of(&cref)));
                }
            }
            for n in &new_names {
                projection.push(SelectItem::UnnamedExpr(Expr::Identifier(make_ident(n))));
            }
        }
        self.changed = true;
        Ok(add.into_iter().map(|(_, c, _)| c).collect())
    }

    fn storage_of(&self, cref: &ColumnRef) -> Storage {
        self.an.storage.get(cref).copied().unwrap_or(Storage::Bytea)
    }
}

/// Name the columns added to the source in its alias, when it names its
/// columns.
fn push_alias_columns(alias: &mut Option<sqlparser::ast::TableAlias>, names: &[String]) {
    if let Some(a) = alias
        && !a.columns.is_empty()
    {
        for n in names {
            a.columns.push(TableAliasColumnDef {
                name: make_ident(n),
                data_type: None,
            });
        }
    }
}
