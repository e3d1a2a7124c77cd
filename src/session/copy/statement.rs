//! Which statements are COPYs, read on PostgreSQL's tokens: the frontend
//! counts the COPY FROM STDIN statements of a Query or Execute before it
//! forwards them, so that the CopyData that follows is matched to its
//! COPY's plan. Invariant: a statement the lexer cannot read exactly
//! counts as a COPY FROM STDIN (more COPYs, never fewer).

/// What a statement (as `sql::split_statements` cuts it) is to COPY, read
/// on PostgreSQL's tokens (`sql::pglex`: comments, strings, quoted
/// identifiers and dollar quotes as PostgreSQL ends them; a `--` comment
/// ends at `\n` or `\r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    NotCopy,
    /// `COPY … FROM STDIN`: PostgreSQL reads CopyData from the client.
    FromStdin,
    /// Any other COPY (`TO`, `FROM 'file'`, `FROM PROGRAM`).
    Other,
}

/// How PostgreSQL reads `stmt`'s COPY, if it is one. A token the lexer
/// does not model exactly counts as a COPY FROM STDIN (the cautious
/// reading: more COPYs, never fewer).
pub fn copy_kind(stmt: &str) -> CopyKind {
    use crate::sql::pglex::{Kind, Tokens};
    let mut t = Tokens::new(stmt);
    match t.next() {
        Some(first) if first.kind == Kind::Unsure => return CopyKind::FromStdin,
        Some(first)
            if first.kind == Kind::Ident
                && stmt[first.span.clone()].eq_ignore_ascii_case("copy") => {}
        _ => return CopyKind::NotCopy,
    }
    let mut depth = 0i32;
    let mut unsure = false;
    let cautious = |unsure: bool, k: CopyKind| if unsure { CopyKind::FromStdin } else { k };
    while let Some(tok) = t.next() {
        let text = &stmt[tok.span.clone()];
        match tok.kind {
            Kind::Unsure => unsure = true,
            Kind::Op if text == "(" => depth += 1,
            Kind::Op if text == ")" => depth -= 1,
            // `COPY (query) TO …` has its FROM inside the parentheses.
            Kind::Ident if depth == 0 && text.eq_ignore_ascii_case("to") => {
                return cautious(unsure, CopyKind::Other);
            }
            Kind::Ident if depth == 0 && text.eq_ignore_ascii_case("from") => {
                return match t.next() {
                    Some(n)
                        if n.kind == Kind::Ident
                            && stmt[n.span.clone()].eq_ignore_ascii_case("stdin") =>
                    {
                        CopyKind::FromStdin
                    }
                    Some(n) if n.kind == Kind::Unsure => CopyKind::FromStdin,
                    _ => cautious(unsure, CopyKind::Other),
                };
            }
            _ => {}
        }
    }
    cautious(unsure, CopyKind::Other)
}

/// Whether a statement is a COPY of any kind.
pub fn is_copy_statement(stmt: &str) -> bool {
    copy_kind(stmt) != CopyKind::NotCopy
}

/// How many COPY … FROM STDIN statements PostgreSQL runs for a simple
/// Query with this text, in order (a byte scan for the word first: most
/// queries hold none).
pub fn copies_from_stdin(sql: &str) -> usize {
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return 0;
    }
    crate::sql::split_statements(sql)
        .into_iter()
        .filter(|r| copy_kind(&sql[r.clone()]) == CopyKind::FromStdin)
        .count()
}
