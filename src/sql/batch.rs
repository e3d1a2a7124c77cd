//! Statements that change how later statements must be read: DDL changes
//! the catalog pgveil plans against, and some settings change how
//! PostgreSQL reads text (`standard_conforming_strings`,
//! `client_encoding`), which table a name means (`search_path`) or who is
//! asking (`role`, `session_authorization`). pgveil plans every statement
//! of a batch or pipeline before PostgreSQL has run the earlier ones, so a
//! statement on protected tables that follows one of these in the same
//! batch, or before its result has arrived, is refused (the session layer
//! applies the rule; this module only classifies statements, from their
//! leading words as PostgreSQL's lexer reads them).

use super::pglex;

/// What a statement may change for the statements after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    None,
    /// A setting that changes how text, names or identity are read.
    Settings,
    /// The catalog (DDL, or code that can run DDL).
    Catalog,
}

/// Settings whose change alters how pgveil must read later statements.
const SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "names",
    "search_path",
    "schema",
    "role",
    "session_authorization",
    "authorization",
    "all",
];

/// Leading words of statements that change the catalog, or may (DO, CALL
/// and EXECUTE run code pgveil does not see).
const CATALOG: &[&str] = &[
    "create", "alter", "drop", "comment", "grant", "revoke", "security", "import", "do", "call",
    "execute", "reindex", "cluster",
];

/// Classify one statement by its leading words.
pub fn effect(stmt: &str) -> Effect {
    // Hot path (every Parse and Query): the first word decides, read in
    // place; only SET and RESET need the words after it.
    let Some(first) = pglex::Tokens::new(stmt)
        .next()
        .filter(|t| t.kind == pglex::Kind::Ident)
    else {
        return Effect::None;
    };
    let first = &stmt[first.span];
    if CATALOG.iter().any(|w| first.eq_ignore_ascii_case(w)) {
        return Effect::Catalog;
    }
    if first.eq_ignore_ascii_case("discard") {
        return Effect::Settings;
    }
    if !first.eq_ignore_ascii_case("set") && !first.eq_ignore_ascii_case("reset") {
        return Effect::None;
    }
    set_effect(&pglex::leading_words(stmt, 4))
}

/// What a SET or RESET does, from its first four words (lowercased):
/// `SET [SESSION | LOCAL] name …`, `SET SESSION AUTHORIZATION …`.
fn set_effect(w: &[String]) -> Effect {
    let name = w
        .iter()
        .skip(1)
        .find(|x| !matches!(x.as_str(), "session" | "local"))
        .map(String::as_str)
        .unwrap_or(if w.get(1).map(String::as_str) == Some("session") {
            "authorization"
        } else {
            ""
        });
    if SETTINGS.contains(&name) || name.is_empty() {
        Effect::Settings
    } else {
        Effect::None
    }
}

/// Whether the statement calls `set_config` (which can change any setting
/// from inside a query).
pub fn calls_set_config(stmt: &str) -> bool {
    pglex::Tokens::new(stmt).any(|t| {
        matches!(t.kind, pglex::Kind::Ident | pglex::Kind::QuotedIdent)
            && stmt[t.span.clone()]
                .trim_matches('"')
                .eq_ignore_ascii_case("set_config")
    })
}

/// Whether the statement runs code pgveil cannot see into (DO, CALL,
/// EXECUTE), in any of a simple query's statements.
pub fn runs_code(sql: &str) -> bool {
    super::split_statements(sql).into_iter().any(|r| {
        matches!(
            pglex::leading_words(&sql[r], 1).first().map(String::as_str),
            Some("do" | "call" | "execute")
        )
    })
}

/// What may follow DDL before the catalog is re-read: transaction control
/// and more DDL (which writes no values; DO, CALL and EXECUTE excepted).
pub fn may_follow_ddl(stmt: &str) -> bool {
    is_transaction_control(stmt) || (effect(stmt) == Effect::Catalog && !runs_code(stmt))
}

/// Transaction control, which may follow anything.
pub fn is_transaction_control(stmt: &str) -> bool {
    let w = pglex::leading_words(stmt, 1);
    matches!(
        w.first().map(String::as_str),
        Some("begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_leading_words() {
        assert_eq!(
            effect("ALTER TABLE users RENAME COLUMN name TO n2"),
            Effect::Catalog
        );
        assert_eq!(
            effect("/* x */ create temp view v as select 1"),
            Effect::Catalog
        );
        assert_eq!(effect("DO $$ begin end $$"), Effect::Catalog);
        assert_eq!(
            effect("SET standard_conforming_strings = off"),
            Effect::Settings
        );
        assert_eq!(effect("set local search_path to evil"), Effect::Settings);
        assert_eq!(effect("SET SESSION AUTHORIZATION dba"), Effect::Settings);
        assert_eq!(effect("SET NAMES 'SJIS'"), Effect::Settings);
        assert_eq!(effect("RESET ALL"), Effect::Settings);
        assert_eq!(effect("DISCARD ALL"), Effect::Settings);
        assert_eq!(effect("SET statement_timeout = 5"), Effect::None);
        assert_eq!(effect("SELECT 1"), Effect::None);
        assert!(calls_set_config(
            "select set_config('search_path', 'x', false)"
        ));
        assert!(!calls_set_config("select 'set_config'"));
        assert!(is_transaction_control("COMMIT"));
        assert!(!is_transaction_control("INSERT INTO t VALUES (1)"));
    }

    /// The classification as it was before the first word was read in
    /// place: four lowercased words first, then the same rules.
    fn effect_by_words(stmt: &str) -> Effect {
        let w = pglex::leading_words(stmt, 4);
        let Some(first) = w.first() else {
            return Effect::None;
        };
        if CATALOG.contains(&first.as_str()) {
            return Effect::Catalog;
        }
        match first.as_str() {
            "set" | "reset" => set_effect(&w),
            "discard" => Effect::Settings,
            _ => Effect::None,
        }
    }

    #[test]
    fn the_first_word_read_in_place_classifies_as_the_words_did() {
        for stmt in [
            "",
            "   ",
            "/* only a comment */",
            "-- line\nSET search_path = x",
            "Set Local ROLE dba",
            "sEt",
            "set session",
            "SET SESSION statement_timeout = 1",
            "reset",
            "RESET search_path",
            "reset work_mem",
            "Discard PLANS",
            "\"set\" search_path",
            "(select 1)",
            "settings",
            "setx search_path",
            "DROP TABLE t",
            "Execute p(1)",
            "call f()",
            "security label on table t is 'x'",
            "select set_config('role', 'x', false)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "ınsert into t values (1)",
            "ALTER\tTABLE t ADD c int",
            "U&\"set\" x",
        ] {
            assert_eq!(effect(stmt), effect_by_words(stmt), "{stmt:?}");
        }
    }
}
