//! Errors: PostgreSQL's ErrorResponse (what an error in the extended
//! protocol makes it skip is dropped from the queue; pgveil's own refusals
//! lose the CONTEXT of the `DO` block that raised them), and the one path
//! by which pgveil fails a result itself (`fail_result`: a row that cannot
//! reach the client). Invariant: an error pgveil writes names what failed,
//! never a value.

use bytes::BytesMut;

use super::Backend;
use crate::session::Pending;
use crate::wire::codec::Frame;
use crate::wire::error;
use crate::wire::tag::{be, field};

impl Backend {
    /// ErrorResponse from PostgreSQL.
    pub(super) fn on_error_response(&mut self, f: &Frame, out: &mut BytesMut) {
        self.audit_failed_read();
        if self.front_is(|p| !matches!(p, Pending::Query { .. } | Pending::Sync)) {
            self.drop_until_sync(out);
            if self.broken {
                return;
            }
        }
        self.forward_error(f, out);
    }

    /// Forward an ErrorResponse (pgveil's own refusals without the
    /// CONTEXT of the `DO` block that raised them).
    pub(super) fn forward_error(&mut self, f: &Frame, out: &mut BytesMut) {
        self.current = None;
        match without_rejection_context(f.body()) {
            Some(body) => {
                out.extend_from_slice(b"E");
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            None => out.extend_from_slice(&f.raw),
        }
    }

    /// A row of the current result cannot reach the client (a value failed
    /// to decrypt): the statement fails for the client with this error,
    /// like a PostgreSQL error at that row. The rest of its answers are
    /// dropped up to ReadyForQuery, and a transaction block it ran in is
    /// made to fail on PostgreSQL too.
    pub(super) fn fail_result(&mut self, sqlstate: &str, message: &str, out: &mut BytesMut) {
        self.row_failed = true;
        // Inside a transaction block, request the abort now: the
        // client can send its next statement as soon as it reads
        // this error, before PostgreSQL's ReadyForQuery arrives.
        if self.exchange.tx_in_block() {
            self.exchange.set_must_abort();
            self.abort_early = true;
        }
        out.extend_from_slice(&error::error_response("ERROR", sqlstate, message));
        self.audit_failed_read();
        self.discard_until_ready = true;
        self.streaming = None;
        self.decryptor.end_statement();
        self.pop_if_completes(be::COMMAND_COMPLETE, out);
    }
}

/// A refusal is raised by PostgreSQL from an injected `DO` block so that it
/// lands at the right point of a pipeline; its CONTEXT line ("PL/pgSQL
/// function inline_code_block line 1 at RAISE") describes that mechanism,
/// not the client's statement. Returns the ErrorResponse body without it
/// for pgveil's own messages, `None` for every other error.
pub(super) fn without_rejection_context(body: &[u8]) -> Option<Vec<u8>> {
    let fields: Vec<&[u8]> = body
        .split(|&b| b == 0)
        .take_while(|f| !f.is_empty())
        .collect();
    let is_ours = fields
        .iter()
        .any(|f| f[0] == field::MESSAGE && f[1..].starts_with(b"pgveil: "));
    let context =
        |f: &&[u8]| f[0] == field::WHERE && f.ends_with(b"inline_code_block line 1 at RAISE");
    if !is_ours || !fields.iter().any(context) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    for f in fields.iter().filter(|f| !context(f)) {
        out.extend_from_slice(f);
        out.push(0);
    }
    out.push(0);
    Some(out)
}
