//! SQL text that names the protocol's prepared statements and portals:
//! the map changes a simple Query makes (the unnamed statement and portal,
//! a lone `DEALLOCATE name` or `CLOSE name`), and the refusal of SQL
//! `EXECUTE` and `FETCH` of statements and portals pgveil rewrote, whose
//! parameters and rows would bypass it.

use std::sync::atomic::Ordering;

use super::Frontend;
use super::lex::sql_name_key;
use super::names::Space;
use super::refusal::{Refusal, refuse};
use crate::session::QueryOp;
use crate::sql::SqlName;

/// The statement a lone `DEALLOCATE [PREPARE] name` drops (`None` for
/// `DEALLOCATE ALL`, which its CommandComplete tag reports, and for
/// anything pgveil does not read with certainty).
pub(super) fn deallocated(stmt: &str) -> Option<String> {
    lone_target(stmt, "deallocate", Some("prepare"))
}

/// The portal a statement that is exactly `CLOSE name` closes (not
/// `CLOSE ALL`, which the backend follows by its tag), as PostgreSQL keys
/// it; `None` for any other form (comments, odd quoting).
pub(super) fn closed_cursor(stmt: &str) -> Option<String> {
    lone_target(stmt, "close", None)
}

/// The name in a statement that is exactly `verb [noise] name`, with the
/// name a plain or double-quoted identifier, folded as PostgreSQL folds
/// it; `None` for `ALL` and for anything else.
fn lone_target(stmt: &str, verb: &str, noise: Option<&str>) -> Option<String> {
    let mut w = stmt.split_ascii_whitespace();
    if !w.next()?.eq_ignore_ascii_case(verb) {
        return None;
    }
    let mut name = w.next()?;
    if noise.is_some_and(|n| name.eq_ignore_ascii_case(n)) {
        name = w.next()?;
    }
    if w.next().is_some() || name.eq_ignore_ascii_case("all") {
        return None;
    }
    if let Some(q) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        return (!q.is_empty()).then(|| q.replace("\"\"", "\""));
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    (name.chars().all(word) && !name.starts_with(|c: char| c.is_ascii_digit() || c == '$'))
        .then(|| name.to_ascii_lowercase())
}
impl Frontend {
    /// Whether PostgreSQL might read `text` (`sql`: its lossy UTF-8
    /// reading) otherwise than pgveil (see [`LexState`](super::LexState)):
    /// not UTF-8, `standard_conforming_strings` off, or a backslash in a
    /// client encoding where it may be part of a character.
    fn read_unsure(&self, text: &[u8], sql: &str) -> bool {
        std::str::from_utf8(text).is_err()
            || !self.lex.standard_strings.load(Ordering::SeqCst)
            || (sql.contains('\\') && !self.lex.backslash_safe_encoding.load(Ordering::SeqCst))
    }

    /// The statement and portal map changes a simple Query makes once
    /// PostgreSQL runs it: it drops the unnamed statement when it starts
    /// (the unnamed portal is left in the map, see below), and a lone
    /// `DEALLOCATE name` drops that statement when it completes (several
    /// statements: left alone, see below).
    pub(super) fn query_ops(&mut self, text: &[u8]) -> Vec<QueryOp> {
        if self.names.is_empty() {
            return Vec::new();
        }
        self.names.drain(&self.exchange);
        let mut ops = Vec::new();
        // Each DEALLOCATE CommandComplete confirms one change, so they are
        // recorded only for a Query of one statement, where nothing can
        // pair the wrong one. A name left in the map after a DEALLOCATE
        // pgveil did not follow is only stale: a Bind of it is rewritten
        // and PostgreSQL reports that the statement does not exist.
        // A lone `CLOSE name` likewise drops one portal (a protocol one
        // too); a name left after a CLOSE pgveil did not follow (in a
        // batch, in a function) is only stale: every Execute of a portal
        // pgveil bound is described right before it runs (see `on_frame`).
        if let Ok(sql) = std::str::from_utf8(text)
            && let [r] = &crate::sql::split_statements(sql)[..]
        {
            let stmt = &sql[r.clone()];
            let lone = [
                (Space::Statement, "DEALLOCATE", deallocated(stmt)),
                (Space::Portal, "CLOSE CURSOR", closed_cursor(stmt)),
            ];
            for (space, tag, name) in lone {
                if let Some(name) = name
                    && let Some(name) = sql_name_key(&name)
                {
                    let id = self.names.set_in(space, name, None, u64::MAX);
                    ops.push(QueryOp {
                        id,
                        confirmed_by: Some(tag),
                    });
                }
            }
        }
        // The unnamed statement only: PostgreSQL replaces the unnamed
        // portal when the Query runs a statement, and a Query that runs
        // none (empty, only comments) or fails before it creates one
        // leaves the client's in place, where it can still be executed
        // inside a transaction block. A name kept after PostgreSQL dropped
        // its portal is only stale (every Execute of a protected portal is
        // described right before it runs); one dropped while PostgreSQL
        // keeps it would let its Execute go out unshaped.
        let id = self.names.set(Space::Statement, "", None);
        if id != 0 {
            ops.push(QueryOp {
                id,
                confirmed_by: None,
            });
        }
        ops
    }

    /// Refuse SQL `EXECUTE` (also in `EXPLAIN` and `CREATE TABLE … AS`) of
    /// a statement pgveil prepared with a rewrite, known or still waiting
    /// for PostgreSQL's answer: its parameters would reach PostgreSQL as
    /// written, where pgveil's rewrite expects ciphertext, and its rows
    /// would not be decrypted. Only looked at when the session has
    /// prepared something protected, after a byte scan for the word.
    pub(super) fn sql_execute(&mut self, text: &[u8]) -> Option<Refusal> {
        if self.names.is_empty() {
            return None;
        }
        let sql = String::from_utf8_lossy(text);
        if !crate::sql::mentions_execute(&sql) {
            return None;
        }
        self.names.drain(&self.exchange);
        if !self.names.any_statement() {
            return None;
        }
        // Where PostgreSQL might read the text differently (see
        // `LexState`), any EXECUTE counts.
        let hit = if self.read_unsure(text, &sql) {
            Some(SqlName::Unknown)
        } else {
            crate::sql::names_after_execute(&sql)
                .into_iter()
                .map(|n| match n {
                    // Keyed as PostgreSQL keys it; a long non-ASCII name
                    // could be any.
                    SqlName::Ident(i) => match sql_name_key(&i) {
                        Some(k) => SqlName::Ident(k.to_string()),
                        None => SqlName::Unknown,
                    },
                    u => u,
                })
                .find(|n| self.names.may_be_protected(n))
        }?;
        let name = match &hit {
            SqlName::Ident(n) => format!("\"{n}\""),
            SqlName::Unknown => "(a name pgveil cannot read)".into(),
        };
        Some(refuse(
            "0A000",
            format!(
                "pgveil: SQL-level EXECUTE of prepared statement {name}, which involves protected tables, is not supported: use the protocol-level Bind/Execute of your driver's prepared statements instead"
            ),
        ))
    }

    /// SQL `FETCH` from a portal pgveil bound for a statement on protected
    /// tables: its rows are not planned (not matched to the portal's row
    /// shape), so blind indexes would not be masked for roles that may not
    /// search them, and nothing would be decrypted. Refused; the protocol's
    /// Execute with a row limit fetches from such a portal.
    pub(super) fn sql_fetch(&mut self, text: &[u8]) -> Option<Refusal> {
        if self.names.is_empty() {
            return None;
        }
        let sql = String::from_utf8_lossy(text);
        if !sql
            .as_bytes()
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"fetch"))
        {
            return None;
        }
        self.names.drain(&self.exchange);
        if !self.names.any_portal() {
            return None;
        }
        let unsure = self.read_unsure(text, &sql);
        // Any identifier may be the cursor name: every one is checked.
        let hit = unsure
            || crate::sql::pglex::tokens(&sql).iter().any(|t| {
                let name = match t.kind {
                    crate::sql::pglex::Kind::Ident => {
                        // A span inside a character (lexer junk): unsure.
                        Some(
                            sql.get(t.span.clone())
                                .map_or_else(|| "\u{0}".to_string(), str::to_ascii_lowercase),
                        )
                    }
                    crate::sql::pglex::Kind::QuotedIdent
                    | crate::sql::pglex::Kind::UnicodeIdent => crate::sql::pglex::value(&sql, t),
                    _ => None,
                };
                name.is_some_and(|n| {
                    n == "\u{0}"
                        || match sql_name_key(&n) {
                            Some(k) => self.names.may_be_protected_portal(k),
                            None => true,
                        }
                })
            });
        hit.then(|| {
            refuse(
                "0A000",
                "pgveil: SQL FETCH from a portal bound to a statement on protected tables is not supported: fetch its rows with the protocol's Execute and a row limit (your driver's fetch size), or DECLARE a cursor in SQL",
            )
        })
    }
}
