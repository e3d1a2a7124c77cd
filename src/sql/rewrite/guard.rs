//! Checks on the statement before the AST walk, read on PostgreSQL's
//! tokens (`pglex`) so that no syntax escapes them: functions and views that
//! read tables the statement does not name ([`READS_ANY_TABLE`]), blind-index
//! columns named by a role that may not search them, and reserved keywords
//! sqlparser took for relation names. Also the plain `FETCH` grammar, which
//! pgveil reads on tokens only (a FETCH is never parsed into an AST).

use std::ops::ControlFlow;

use sqlparser::ast::{ObjectNamePart, Statement, visit_relations};

use crate::policy::TablePolicy;
use crate::sql::{Analyzer, Reject, lex, pglex};

/// Functions and views that read tables the statement does not name: the
/// XML and text-search functions run SQL given as a string (`ts_stat`,
/// `ts_rewrite`, `query_to_xml`) or dump whole tables, schemas and
/// databases; `dblink` runs SQL on another connection; the file functions
/// read relation files; the statistics views show the most common values
/// (blind indexes among them) of every column. Statements naming one are analysed
/// (the no-parse pre-check matches them like protected names) and refused.
pub(crate) const READS_ANY_TABLE: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_read_file",
    "pg_read_binary_file",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

/// The first of [`READS_ANY_TABLE`] the text names as an identifier (on
/// PostgreSQL's tokens, quoted or not).
pub(super) fn reads_any_table(text: &str) -> Option<String> {
    pglex::tokens(text).iter().find_map(|t| {
        let name = match t.kind {
            // (`get`: a token pgveil's lexer cut inside a character, as in
            // junk after a number, names nothing.)
            pglex::Kind::Ident => text.get(t.span.clone())?.to_ascii_lowercase(),
            pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent => {
                pglex::value(text, t).unwrap_or_default()
            }
            _ => return None,
        };
        READS_ANY_TABLE.contains(&name.as_str()).then_some(name)
    })
}

/// An unquoted reserved keyword (PostgreSQL's reserved and
/// type-or-function-name keywords, which can never be an unquoted table,
/// schema or column name: [`lex::is_reserved`]) that sqlparser took
/// for (part of) a relation name. PostgreSQL's grammar never reads one as a name, so such a
/// statement means something else to PostgreSQL: `UPDATE ONLY users SET …`
/// is, to sqlparser, an update of a table `ONLY` aliased `users`.
pub(super) fn keyword_as_relation(stmt: &Statement) -> Option<String> {
    let mut hit = None;
    let _ = visit_relations(stmt, |n| {
        for part in &n.0 {
            if let ObjectNamePart::Identifier(i) = part
                && i.quote_style.is_none()
                && lex::is_reserved(&i.value.to_ascii_lowercase())
            {
                hit = Some(i.value.to_ascii_uppercase());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    hit
}

/// Blind-index columns belong to pgveil: the client's statement may name
/// one (in any position: select list, WHERE, column lists, RETURNING,
/// ON CONFLICT, USING …) only if the role has `search` on its column.
/// Otherwise a role could write a guess and compare its blind index with
/// other rows: an equality oracle. pgveil's own rewrite adds such names
/// after this check. Checked on PostgreSQL's tokens, so no syntax escapes
/// it; an unrelated column that happens to share the name is refused too.
pub(super) fn names_blind_index(an: &Analyzer, text: &str, role: &str) -> Option<Reject> {
    // The policy tables whose columns the text reaches: those it names,
    // the tables of the views it names (their blind indexes, from
    // pg_depend), the roots of the children it names; every table when a
    // named relation is one pgveil refuses, or nothing is named.
    let names = |n: &str| lex::NameSet::new([n.to_string()]).matches(text);
    let mut tables: Vec<&TablePolicy> = an
        .policy
        .tables
        .iter()
        .filter(|t| names(&t.table))
        .collect();
    let mut everything = false;
    for v in an.views.values().filter(|v| names(&v.name)) {
        for c in &v.blind_indexes {
            if let Some(t) = an.policy.table(&c.schema, &c.table) {
                tables.push(t);
            }
        }
        everything |= !v.unknown.is_empty() && v.blind_indexes.is_empty();
    }
    for (_, verdict) in an.children.iter().filter(|((_, n), _)| names(n)) {
        match verdict {
            Ok((rs, rt)) => tables.extend(an.policy.table(rs, rt)),
            Err(_) => everything = true,
        }
    }
    if everything || tables.is_empty() {
        tables = an.policy.tables.iter().collect();
    }
    let toks = pglex::tokens(text);
    let word = |i: usize| {
        toks.get(i)
            .filter(|t| t.kind == pglex::Kind::Ident)
            .map(|t| text[t.span.clone()].to_ascii_lowercase())
            .unwrap_or_default()
    };
    // DDL that only declares structure on the column (an index, a
    // constraint, dropping it) reads no value; ALTER … USING could copy
    // values into a readable column, views and CREATE … AS could show them.
    let structural = match (word(0).as_str(), word(1).as_str(), word(2).as_str()) {
        // A partial index's predicate could compare rows: not exempt.
        ("create", "index", _) | ("create", "unique", "index") => !toks.iter().any(|t| {
            t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("where")
        }),
        ("drop", _, _) | ("comment", _, _) => true,
        ("alter", "table" | "index", _) => !toks.iter().any(|t| {
            t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("using")
        }),
        _ => false,
    };
    if structural {
        return None;
    }
    for t in toks.iter() {
        let t = t.clone();
        let name = match t.kind {
            pglex::Kind::Ident => text[t.span.clone()].to_ascii_lowercase(),
            pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent => {
                pglex::value(text, &t).unwrap_or_default()
            }
            _ => continue,
        };
        for tp in &tables {
            if let Some((cp, _)) = tp.blind_index_owner(&name)
                && !an.policy.column_access(role, cp).is_some_and(|a| a.search)
            {
                return Some(Reject::privilege(format!(
                    "pgveil: {}.{}.{name} is the blind index of protected column {}.{}.{}, which role {role} may not search: only pgveil and roles with search access may use it; look the value up with = on {} itself (pgveil rewrites it) from a role with search access",
                    tp.schema, tp.table, tp.schema, tp.table, cp.name, cp.name
                )));
            }
        }
    }
    None
}

/// The statement is a SQL `FETCH` (its first token, as PostgreSQL reads
/// it; comments and whitespace before it do not count).
pub(crate) fn is_fetch(text: &str) -> bool {
    pglex::tokens(text).first().is_some_and(|t| {
        t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("fetch")
    })
}

/// The FETCH is exactly PostgreSQL's `FETCH [direction] [count] [FROM |
/// IN] cursor_name` (direction NEXT, PRIOR, FIRST, LAST, ABSOLUTE n,
/// RELATIVE n, n, ALL, FORWARD [n | ALL], BACKWARD [n | ALL]), read on
/// PostgreSQL's tokens: nothing else (a literal, a second statement, an
/// unterminated comment) can ride along to the server.
pub(crate) fn plain_fetch(text: &str) -> bool {
    let toks = pglex::tokens(text);
    let word = |i: usize| -> Option<String> {
        let t = toks.get(i)?;
        (t.kind == pglex::Kind::Ident).then(|| text[t.span.clone()].to_ascii_lowercase())
    };
    let is_op = |i: usize, op: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == pglex::Kind::Op && &text[t.span.clone()] == op)
    };
    // A signed integer count at i: its length in tokens.
    let count = |i: usize| -> Option<usize> {
        let n = usize::from(is_op(i, "-") || is_op(i, "+"));
        let t = toks.get(i + n)?;
        (t.kind == pglex::Kind::Number && text[t.span.clone()].bytes().all(|b| b.is_ascii_digit()))
            .then_some(n + 1)
    };
    if word(0).as_deref() != Some("fetch") {
        return false;
    }
    let mut i = 1;
    match word(i).as_deref() {
        Some("next" | "prior" | "first" | "last" | "all") => i += 1,
        Some("absolute" | "relative") => match count(i + 1) {
            Some(n) => i += 1 + n,
            None => return false,
        },
        Some("forward" | "backward") => {
            i += 1;
            if word(i).as_deref() == Some("all") {
                i += 1;
            } else if let Some(n) = count(i) {
                i += n;
            }
        }
        _ => {
            if let Some(n) = count(i) {
                i += n;
            }
        }
    }
    if matches!(word(i).as_deref(), Some("from" | "in")) {
        i += 1;
    }
    let name = toks.get(i).is_some_and(|t| {
        matches!(
            t.kind,
            pglex::Kind::Ident | pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent
        )
    });
    let end = i + 1 == toks.len() || (i + 2 == toks.len() && is_op(i + 1, ";"));
    name && end
}
