//! DDL that mentions protected tables: what pgveil refuses because it would
//! leave protected data unprotected, or let PostgreSQL compute a stored
//! value from plaintext.
//!
//! - Renaming a schema that holds protected tables, a protected table, or a
//!   protected, blind-index or tenant column: the policy names them.
//! - Changing the type of, generating, or setting a DEFAULT on a protected
//!   column.
//! - Expressions over protected columns in DDL (index expressions, CHECK,
//!   partial-index predicates): the database holds only ciphertext.
//! - Temporary views and tables over protected relations: pgveil reads the
//!   catalog without temporary objects, so it could not plan through them.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Expr, ObjectName, visit_expressions,
    visit_relations,
};

use super::{Cx, R, RelKind, name_parts, norm};
use crate::policy::TablePolicy;
use crate::sql::{Analyzer, ColumnRef, Reject, pglex};

/// `ALTER SCHEMA s RENAME TO …` where `s` holds a protected table: the
/// policy names tables by schema, so the rename would leave them
/// unprotected (and their values unreadable). Read on PostgreSQL's tokens.
pub(crate) fn renames_protected_schema(an: &Analyzer, text: &str) -> Option<Reject> {
    let toks = pglex::tokens(text);
    let word = |i: usize| -> Option<String> {
        let t = toks.get(i)?;
        match t.kind {
            // Not yet checked by `pglex::agree`: a span inside a character
            // reads as no word.
            pglex::Kind::Ident => Some(text.get(t.span.clone())?.to_ascii_lowercase()),
            pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent => pglex::value(text, t),
            _ => None,
        }
    };
    for i in 0..toks.len() {
        if word(i).as_deref() == Some("alter") && word(i + 1).as_deref() == Some("schema") {
            let Some(schema) = word(i + 2) else {
                // A name pgveil cannot read (U&"…" it cannot decode).
                return Some(Reject::unsupported(
                    "pgveil: ALTER SCHEMA with a name pgveil cannot read is not supported while a policy protects tables: run it directly on PostgreSQL",
                ));
            };
            let renames = word(i + 3).as_deref() == Some("rename");
            if renames && an.policy.tables.iter().any(|t| t.schema == schema) {
                return Some(Reject::unsupported(format!(
                    "pgveil: renaming schema {schema}, which holds protected tables, is not supported: the policy names its tables as {schema}.…; rename the tables in the policy and reload pgveil together with the rename, run directly on PostgreSQL"
                )));
            }
        }
    }
    None
}

/// `pg_temp.x` (or `pg_temp_N.x`): created in the session's temporary schema.
pub(super) fn in_temp_schema(name: &ObjectName) -> bool {
    let parts = name_parts(name);
    parts.len() > 1 && parts[0].to_ascii_lowercase().starts_with("pg_temp")
}

impl<'a> Cx<'a> {
    /// A temporary view or table built from protected tables (a copy, a
    /// child, a partition) exists only in the creating session, and pgveil
    /// reads the catalog without temporary objects (so that one session's
    /// objects cannot change how another's statements are planned): pgveil
    /// could not plan statements through it. Refused.
    pub(super) fn refuse_temporary<V: sqlparser::ast::Visit>(
        &self,
        temporary: bool,
        what: &str,
        node: &V,
        parents: &[ObjectName],
    ) -> R<()> {
        if !temporary {
            return Ok(());
        }
        let mut hit: Option<String> = parents.iter().find_map(|n| {
            let parts = name_parts(n);
            (!matches!(self.table_kind(&parts, &[]), Ok((_, _, RelKind::Plain))))
                .then(|| parts.join("."))
        });
        let _ = visit_relations(node, |n| {
            if hit.is_some() {
                return ControlFlow::Break(());
            }
            let parts = name_parts(n);
            match self.table_kind(&parts, &[]) {
                Ok((_, _, RelKind::Plain)) => ControlFlow::Continue(()),
                _ => {
                    hit = Some(parts.join("."));
                    ControlFlow::Break(())
                }
            }
        });
        match hit {
            Some(rel) => Err(Reject::unsupported(format!(
                "pgveil: a temporary {what} over protected relation {rel} is not supported: pgveil does not see temporary objects, so it could not protect what is read or written through it; create a permanent view or table instead (pgveil then plans it like {rel})"
            ))),
            None => Ok(()),
        }
    }

    /// DDL: plain column names are fine; an expression over a protected
    /// column of a mentioned protected table (index expression, CHECK,
    /// partial-index predicate) is rejected.
    pub(super) fn ddl_exprs<V: sqlparser::ast::Visit>(&mut self, node: &V) -> R<()> {
        let mut tables: Vec<&'a TablePolicy> = vec![];
        let _ = visit_relations(node, |n| {
            if let Ok((_, _, RelKind::Table(t))) = self.table_kind(&name_parts(n), &[]) {
                tables.push(t);
            }
            ControlFlow::<()>::Continue(())
        });
        if tables.is_empty() {
            return Ok(());
        }
        let mut bad = None;
        let _ = visit_expressions(node, |e| {
            if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                return ControlFlow::Continue(());
            }
            let _ = visit_expressions(e, |x| {
                let id = match x {
                    Expr::Identifier(i) => Some(norm(i)),
                    Expr::CompoundIdentifier(ids) => ids.last().map(norm),
                    _ => None,
                };
                if let Some(id) = id
                    && let Some(t) = tables.iter().find(|t| t.column(&id).is_some())
                {
                    bad = Some(ColumnRef::new(&t.schema, &t.table, &id));
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if bad.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if let Some(c) = bad {
            return Err(Reject::unsupported(format!(
                "pgveil: an expression over protected column {c} in DDL is not supported: the database only holds ciphertext; index or constrain its blind-index column instead"
            )));
        }
        Ok(())
    }

    /// ALTER TABLE on a protected table: no rename of the table or of a
    /// column the policy names, no type change, generated expression or
    /// DEFAULT on a protected column, and [`Self::ddl_exprs`].
    pub(super) fn alter_table(&mut self, at: &sqlparser::ast::AlterTable) -> R<()> {
        let parts = name_parts(&at.name);
        if let (_, _, RelKind::Table(t)) = self.table_kind(&parts, &[])? {
            for op in &at.operations {
                // The policy names tables and columns: renaming one would
                // silently leave it unprotected (and its values unreadable).
                let renamed = match op {
                    AlterTableOperation::RenameTable { .. } => Some(format!(
                        "table {}: rename it in the policy (tables: {} → the new name) and reload pgveil together with the rename, run directly on PostgreSQL",
                        t.qualified(),
                        t.qualified()
                    )),
                    AlterTableOperation::RenameColumn {
                        old_column_name, ..
                    } => {
                        let c = norm(old_column_name);
                        (t.column(&c).is_some()
                            || t.blind_index_owner(&c).is_some()
                            || t.tenant.as_deref() == Some(c.as_str()))
                        .then(|| format!(
                            "column {}.{c}: rename it in the policy (tables: {}: columns: {c}, or its blind_index/tenant entry) and reload pgveil together with the rename, run directly on PostgreSQL",
                            t.qualified(),
                            t.qualified()
                        ))
                    }
                    _ => None,
                };
                if let Some(what) = renamed {
                    return Err(Reject::unsupported(format!(
                        "pgveil: renaming protected {what}"
                    )));
                }
                // A type change (with USING or a domain's default) or a
                // generated expression would let PostgreSQL compute the
                // stored value from the client's text: plaintext.
                let computed = match op {
                    AlterTableOperation::AlterColumn {
                        column_name,
                        op:
                            AlterColumnOperation::SetDataType { .. }
                            | AlterColumnOperation::AddGenerated { .. },
                    } => Some(norm(column_name)),
                    AlterTableOperation::AddColumn { column_def, .. }
                        if column_def
                            .options
                            .iter()
                            .any(|o| matches!(o.option, ColumnOption::Generated { .. })) =>
                    {
                        Some(norm(&column_def.name))
                    }
                    _ => None,
                };
                if let Some(c) = computed
                    && (t.column(&c).is_some()
                        || t.blind_index_owner(&c).is_some()
                        || t.tenant.as_deref() == Some(c.as_str()))
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: changing the type of, or generating, protected column {}.{c} through pgveil is not supported: PostgreSQL would compute its stored value from plaintext; its storage type is fixed by the policy (bytea or text), change it directly on PostgreSQL with the policy check",
                        t.qualified()
                    )));
                }
                let col = match op {
                    AlterTableOperation::AlterColumn {
                        column_name,
                        op: AlterColumnOperation::SetDefault { .. },
                    } => Some(norm(column_name)),
                    AlterTableOperation::AddColumn { column_def, .. }
                        if column_def
                            .options
                            .iter()
                            .any(|o| matches!(o.option, ColumnOption::Default(_))) =>
                    {
                        Some(norm(&column_def.name))
                    }
                    _ => None,
                };
                if let Some(c) = col
                    && t.column(&c).is_some()
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: a DEFAULT on protected column {}.{}.{c} is not supported: it would store plaintext; set the value through pgveil on insert",
                        t.schema, t.table
                    )));
                }
            }
        }
        self.ddl_exprs(at)
    }
}
