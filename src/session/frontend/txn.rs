//! The transaction a decryption failure doomed: the client was told its
//! statement failed, so the next statement (unless it ends the transaction)
//! is replaced by one that makes PostgreSQL abort it, and a COMMIT by a
//! ROLLBACK. Must never let a COMMIT make the writes before the failure
//! stand.

use bytes::BytesMut;

use super::Frontend;
use super::refusal::{raise_sql, refuse};
use crate::session::Pending;
use crate::wire::codec::Frame;
use crate::wire::query::encode_query;
use crate::wire::tag::fe;

/// Whether a simple Query is exactly one COMMIT (or END), with optional
/// WORK/TRANSACTION and semicolons.
pub(super) fn is_commit(body: &[u8]) -> bool {
    matches!(
        words(body)[..],
        ["commit" | "end"] | ["commit" | "end", "work" | "transaction"]
    )
}

/// Whether a Query or Parse starts with ROLLBACK (or ABORT), which may run
/// after a failed transaction.
pub(super) fn ends_transaction(f: &Frame) -> bool {
    let text = match f.tag {
        fe::QUERY => f.body(),
        fe::PARSE => match f.body().iter().position(|&c| c == 0) {
            Some(n) => &f.body()[n + 1..],
            None => return false,
        },
        _ => return false,
    };
    matches!(words(text).first(), Some(&("rollback" | "abort")))
}

/// The whitespace- and `;`-separated words of SQL text (up to its first
/// NUL), lowercased; non-ASCII text gives no words.
fn words(text: &[u8]) -> Vec<&'static str> {
    const KNOWN: [&str; 6] = ["commit", "end", "work", "transaction", "rollback", "abort"];
    let text = text.split(|&c| c == 0).next().unwrap_or_default();
    text.split(|c| c.is_ascii_whitespace() || *c == b';')
        .filter(|w| !w.is_empty())
        .map(|w| {
            KNOWN
                .into_iter()
                .find(|k| k.as_bytes().eq_ignore_ascii_case(w))
                .unwrap_or("")
        })
        .collect()
}
impl Frontend {
    /// The first statement after a decryption failure inside a transaction
    /// block (that is not a ROLLBACK): instead of running it, make
    /// PostgreSQL raise 25P02, which aborts its transaction as the failure
    /// would have. From then on PostgreSQL itself refuses every statement
    /// but ROLLBACK, and turns a COMMIT into a rollback.
    pub(super) fn abort_transaction(&mut self, f: &Frame, out: &mut BytesMut) {
        if f.tag == fe::QUERY && is_commit(f.body()) {
            // What PostgreSQL does with a COMMIT of a failed transaction.
            self.exchange.push(Pending::query(false, None));
            encode_query(out, "ROLLBACK");
            return;
        }
        let r = refuse(
            "25P02",
            "current transaction is aborted by the decryption error above; commands ignored until end of transaction block (ROLLBACK)",
        );
        tracing::warn!("statement refused: the transaction failed on a decryption error");
        // A FunctionCall is answered as a Query is.
        if matches!(f.tag, fe::QUERY | fe::FUNCTION_CALL) {
            self.exchange.push(Pending::query(false, None));
            encode_query(out, &raise_sql(&r));
        } else {
            self.inject_raise(&r, out);
        }
    }
}
