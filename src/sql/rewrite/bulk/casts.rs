//! The types of a bulk insert's values: the casts PostgreSQL performs
//! without changing a value, the types of literals and cast targets, and the
//! checks on the chain of casts a value passes through on its way to a
//! protected column. The rewrite keeps the client's casts in place and only
//! changes the types they name (to the column's storage type).

/// The plaintext type PostgreSQL gives a cast target, when it is one pgveil
/// protects and the cast keeps every value as it is: no length, precision
/// or time-zone modifier (`varchar(254)` truncates, `numeric(10, 2)`
/// rounds, `char(n)` pads), no type written as an identifier PostgreSQL
/// could resolve elsewhere on the search path (`"text"`).
use sqlparser::ast::{ArrayElemTypeDef, CastKind, DataType, ExactNumberInfo, Expr, TimezoneInfo};

use crate::crypto::canonical::{Format, canonicalize};
use crate::crypto::types::{PgType, Storage};
use crate::policy::ColumnPolicy;
use crate::sql::rewrite::{Cx, R, null_expr};
use crate::sql::{ColumnRef, Reject};

pub(super) fn plain_type(dt: &DataType) -> Option<PgType> {
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
pub(super) fn array_elem(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::Array(ArrayElemTypeDef::SquareBracket(t, None)) => Some(t),
        _ => None,
    }
}

/// Text and varchar hold the same values.
pub(super) fn same_family(a: PgType, b: PgType) -> bool {
    let text = |t| matches!(t, PgType::Text | PgType::Varchar);
    a == b || (text(a) && text(b))
}

pub(super) fn is_int(t: PgType) -> bool {
    matches!(t, PgType::Int2 | PgType::Int4 | PgType::Int8)
}

/// A cast PostgreSQL performs from `a` to `b` without changing a value:
/// the same type, text ⇄ varchar, an integer to another integer type
/// (range-checked, as PostgreSQL does) or to numeric.
pub(super) fn hop(a: PgType, b: PgType) -> bool {
    same_family(a, b) || (is_int(a) && (is_int(b) || b == PgType::Numeric))
}

/// The type of a number literal as PostgreSQL's lexer gives it.
pub(super) fn number_type(n: &str) -> PgType {
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
pub(super) fn peel(e: &Expr) -> Option<(&Expr, Vec<&DataType>)> {
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

pub(super) fn peel_mut(e: &mut Expr) -> &mut Expr {
    match e {
        Expr::Nested(inner) => peel_mut(inner),
        Expr::Cast { expr, .. } => peel_mut(expr),
        other => other,
    }
}

pub(super) fn cast(e: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(e),
        data_type,
        format: None,
    }
}

pub(super) fn storage_type(s: Storage) -> DataType {
    match s {
        Storage::Bytea => DataType::Bytea,
        Storage::Text => DataType::Text,
    }
}

pub(super) fn array_of(t: DataType) -> DataType {
    DataType::Array(ArrayElemTypeDef::SquareBracket(Box::new(t), None))
}

/// Set the type of every cast around `e`'s base to `to`, or cast `e` to
/// it when it has none: the rewrite keeps the client's casts in place (the
/// fewest edits) and only changes what they name.
pub(super) fn typed(e: &mut Expr, to: DataType) {
    pub(super) fn retype(e: &mut Expr, to: &DataType) -> bool {
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

impl Cx<'_> {
    /// Check the types a value passes through on its way to `cp`: `start`
    /// is its own type (`None`: an untyped literal or parameter, read by
    /// the first cast), `chain` the casts in order, the last one the type
    /// the column receives. A parameter (`param`) is converted at Bind from
    /// its own type to the column's in one step, so every cast after it
    /// must already be the column's type.
    pub(super) fn check_chain(
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
    pub(super) fn check_literal(&self, cref: &ColumnRef, v: &str, chain: &[PgType]) -> R<()> {
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

    pub(super) fn cast_types(
        &self,
        cref: &ColumnRef,
        casts: &[&DataType],
        arrays: bool,
    ) -> R<Vec<PgType>> {
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
}
