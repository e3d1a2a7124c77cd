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
//! performs without changing the value (see [`hop`]); `SELECT *` maps
//! positionally; ORDER BY may only name source columns that are not
//! protected values. Anything else that writes a protected column is
//! refused with the table, the column and the alternative.

use sqlparser::ast::{
    Array, ArrayElemTypeDef, CastKind, DataType, ExactNumberInfo, Expr, GroupByExpr, OrderByKind,
    Query, Select, SelectFlavor, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    TableAliasColumnDef, TableFactor, TimezoneInfo, Value, WildcardAdditionalOptions,
};

use super::{
    ColumnRef, Cx, ParamAction, R, Reject, Scope, SlotOp, TenantSource, WVal, make_ident,
    name_parts, norm, null_expr, placeholder,
};
use crate::crypto::canonical::{Format, canonicalize};
use crate::crypto::types::{PgType, Storage};
use crate::policy::{ColumnPolicy, TablePolicy};
use crate::sql::ArrayTenant;
use crate::sql::array::{self, ArrayError};

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

/// The plaintext type PostgreSQL gives a cast target, when it is one pgveil
/// protects and the cast keeps every value as it is: no length, precision
/// or time-zone modifier (`varchar(254)` truncates, `numeric(10, 2)`
/// rounds, `char(n)` pads), no type written as an identifier PostgreSQL
/// could resolve elsewhere on the search path (`"text"`).
fn plain_type(dt: &DataType) -> Option<PgType> {
    use DataType as D;
    Some(match dt {
        D::Text => PgType::Text,
        D::Varchar(None) | D::CharacterVarying(None) | D::CharVarying(None) => PgType::Varchar,
        D::Int2(None) | D::SmallInt(None) => PgType::Int2,
        D::Int4(None) | D::Int(None) | D::Integer(None) => PgType::Int4,
        D::Int8(None) | D::BigInt(None) => PgType::Int8,
        D::Numeric(ExactNumberInfo::None) | D::Decimal(ExactNumberInfo::None) => PgType::Numeric,
        D::Bool | D::Boolean => PgType::Bool,
        D::Date => PgType::Date,
        D::Timestamp(None, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => PgType::Timestamp,
        D::Timestamp(None, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => PgType::Timestamptz,
        D::Uuid => PgType::Uuid,
        D::JSONB => PgType::Jsonb,
        D::Bytea => PgType::Bytea,
        _ => return None,
    })
}

/// `T[]` → `T`.
fn array_elem(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::Array(ArrayElemTypeDef::SquareBracket(t, None)) => Some(t),
        _ => None,
    }
}

/// Text and varchar hold the same values.
fn same_family(a: PgType, b: PgType) -> bool {
    let text = |t| matches!(t, PgType::Text | PgType::Varchar);
    a == b || (text(a) && text(b))
}

fn is_int(t: PgType) -> bool {
    matches!(t, PgType::Int2 | PgType::Int4 | PgType::Int8)
}

/// A cast PostgreSQL performs from `a` to `b` without changing a value:
/// the same type, text ⇄ varchar, an integer to another integer type
/// (range-checked, as PostgreSQL does) or to numeric.
fn hop(a: PgType, b: PgType) -> bool {
    same_family(a, b) || (is_int(a) && (is_int(b) || b == PgType::Numeric))
}

/// The type of a number literal as PostgreSQL's lexer gives it.
fn number_type(n: &str) -> PgType {
    if n.bytes().all(|b| b.is_ascii_digit()) {
        match n.parse::<i64>() {
            Ok(v) if i32::try_from(v).is_ok() => PgType::Int4,
            Ok(_) => PgType::Int8,
            Err(_) => PgType::Numeric,
        }
    } else {
        PgType::Numeric
    }
}

/// `e` under its parentheses and casts: the base and the cast types,
/// innermost first. `None` when a cast is not one PostgreSQL's grammar
/// has (`TRY_CAST`, `FORMAT`).
fn peel(e: &Expr) -> Option<(&Expr, Vec<&DataType>)> {
    let mut casts = vec![];
    let mut e = e;
    loop {
        match e {
            Expr::Nested(inner) => e = inner,
            Expr::Cast {
                kind: CastKind::DoubleColon | CastKind::Cast,
                expr,
                data_type,
                format: None,
            } => {
                casts.push(data_type);
                e = expr;
            }
            Expr::Cast { .. } => return None,
            _ => break,
        }
    }
    casts.reverse();
    Some((e, casts))
}

fn peel_mut(e: &mut Expr) -> &mut Expr {
    match e {
        Expr::Nested(inner) => peel_mut(inner),
        Expr::Cast { expr, .. } => peel_mut(expr),
        other => other,
    }
}

fn cast(e: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(e),
        data_type,
        format: None,
    }
}

fn storage_type(s: Storage) -> DataType {
    match s {
        Storage::Bytea => DataType::Bytea,
        Storage::Text => DataType::Text,
    }
}

fn array_of(t: DataType) -> DataType {
    DataType::Array(ArrayElemTypeDef::SquareBracket(Box::new(t), None))
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

    /// Check the types a value passes through on its way to `cp`: `start`
    /// is its own type (`None`: an untyped literal or parameter, read by
    /// the first cast), `chain` the casts in order, the last one the type
    /// the column receives. A parameter (`param`) is converted at Bind from
    /// its own type to the column's in one step, so every cast after it
    /// must already be the column's type.
    fn check_chain(
        &self,
        cref: &ColumnRef,
        cp: &ColumnPolicy,
        start: Option<PgType>,
        chain: &[PgType],
        param: bool,
    ) -> R<()> {
        let wrong = |what: String| {
            Reject::unsupported(format!(
                "pgveil: INSERT … SELECT into protected column {cref} casts the value {what}, which PostgreSQL would compute on the plaintext: cast it to the column's type ({}) only, or leave the cast out",
                cp.ty
            ))
        };
        let mut prev = start;
        for &t in chain {
            if let Some(p) = prev
                && !hop(p, t)
            {
                return Err(wrong(format!("from {p} to {t}")));
            }
            if param && !same_family(t, cp.ty) {
                return Err(wrong(format!("to {t}")));
            }
            prev = Some(t);
        }
        match prev {
            Some(p) if same_family(p, cp.ty) => Ok(()),
            Some(p) => Err(wrong(format!("to {p}"))),
            None => Ok(()),
        }
    }

    /// A literal must be valid for every type it is cast through (an
    /// integer narrower on the way is range-checked, as PostgreSQL does);
    /// pgveil encrypts its text, read as the column's type.
    fn check_literal(&self, cref: &ColumnRef, v: &str, chain: &[PgType]) -> R<()> {
        for &t in chain {
            if canonicalize(t, Format::Text, v.as_bytes()).is_err() {
                return Err(Reject {
                    sqlstate: "22P02",
                    message: format!(
                        "pgveil: a value for protected column {cref} is not a valid {t} (the value is not shown)"
                    ),
                });
            }
        }
        Ok(())
    }

    fn cast_types(&self, cref: &ColumnRef, casts: &[&DataType], arrays: bool) -> R<Vec<PgType>> {
        casts
            .iter()
            .map(|dt| {
                let inner = if arrays { array_elem(dt) } else { Some(*dt) };
                let t = inner.and_then(plain_type);
                t.ok_or_else(|| {
                    Reject::unsupported(format!(
                        "pgveil: INSERT … SELECT into protected column {cref} casts the value to {dt}, which PostgreSQL would apply to the plaintext (a length, precision or time-zone modifier changes values; {}): cast to the column's plain type ({}{}) or leave the cast out",
                        if arrays {
                            "the arguments of UNNEST must be one-dimensional arrays"
                        } else {
                            "UNNEST needs arrays, VALUES plain values"
                        },
                        self.col_policy(cref).1.ty,
                        if arrays { "[]" } else { "" }
                    ))
                })
            })
            .collect()
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
    fn unnest_rows(
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
            self.touch(&cref, super::Use::Write);
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

    #[allow(clippy::too_many_arguments)]
    fn values_rows(
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
            self.touch(&cref, super::Use::Write);
        }
        Ok(())
    }
}

/// Set the type of every cast around `e`'s base to `to`, or cast `e` to
/// it when it has none: the rewrite keeps the client's casts in place (the
/// fewest edits) and only changes what they name.
fn typed(e: &mut Expr, to: DataType) {
    fn retype(e: &mut Expr, to: &DataType) -> bool {
        match e {
            Expr::Nested(inner) => retype(inner, to),
            Expr::Cast {
                expr, data_type, ..
            } => {
                *data_type = to.clone();
                retype(expr, to);
                true
            }
            _ => false,
        }
    }
    if !retype(e, &to) {
        let inner = std::mem::replace(e, null_expr());
        *e = cast(inner, to);
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
