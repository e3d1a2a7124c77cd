//! Refusals: [`Refusal`] (SQLSTATE and a message that never holds a
//! value), the messages pgveil refuses with, and how a refusal reaches the
//! client: PostgreSQL itself raises it ([`raise_sql`], as a simple Query or
//! as pgveil's own Parse/Bind/Execute, then skip to Sync), so the
//! transaction state and the rest of a pipeline are PostgreSQL's. Also the
//! FunctionCall, which is always refused.

use bytes::BytesMut;

use super::Frontend;
use super::names::Space;
use crate::session::values::ValueError;
use crate::session::{Pending, QueryOp};
use crate::sql::CopyPlan;
use crate::wire::query::{BindMsg, ParseMsg, encode_execute, encode_flush, encode_query};

/// A statement pgveil refuses: SQLSTATE and message (never values).
#[derive(Debug)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

impl From<ValueError> for Refusal {
    fn from(e: ValueError) -> Self {
        Refusal {
            sqlstate: e.sqlstate(),
            message: e.to_string(),
        }
    }
}

/// A statement or portal name PostgreSQL may key otherwise than pgveil.
pub(super) fn unkeyable(what: &str) -> Refusal {
    refuse(
        "0A000",
        format!(
            "pgveil: a {what} name that is not valid UTF-8, or has non-ASCII characters and is 64 bytes or longer or is sent while client_encoding or server_encoding is not UTF8, is refused: PostgreSQL keys names on their first 63 bytes after encoding conversion, so pgveil could not tell which one it means; use an ASCII name (PostgreSQL uses only its first 63 bytes)"
        ),
    )
}

/// Why a FunctionCall is refused.
pub(super) const FUNCTION_CALL: &str = "pgveil: FunctionCall messages (the fast-path function interface, which libpq's large-object functions lo_* use) are refused while a policy is loaded: they call any function by OID, out of pgveil's analysis; call the function from a SQL statement instead (for large objects: SELECT lo_import(…), lo_get(…), lo_put(…))";

/// Why a statement that is not valid UTF-8 is refused.
pub(super) const NOT_UTF8: &str = "pgveil: a statement that may touch protected tables is not valid UTF-8: pgveil can only analyse statements sent with client_encoding UTF8";

/// A name whose meaning depends on an answer PostgreSQL has not sent yet.
pub(super) fn ambiguous(what: &str, name: &str) -> Refusal {
    refuse(
        "0A000",
        format!(
            "pgveil: {what} \"{name}\" was prepared or closed again before PostgreSQL answered an earlier Sync, and it involves a protected table: wait for the earlier ReadyForQuery before using the name, or use a new name"
        ),
    )
}

/// An array slot whose value pgveil wrote itself did not read back: never
/// expected, refused rather than guessed.
pub(super) fn internal_slot() -> Refusal {
    refuse(
        "XX000",
        "pgveil: internal error while encrypting an array literal; the statement was not sent",
    )
}

/// A binary COPY FROM into a protected table (simple Query or Parse).
pub(super) fn binary_copy_in(cp: &CopyPlan) -> Refusal {
    refuse(
        "0A000",
        format!(
            "pgveil: binary COPY into {}.{} is not supported: use FORMAT text or csv",
            cp.schema, cp.table
        ),
    )
}

pub(super) fn refuse(sqlstate: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        sqlstate,
        message: message.into(),
    }
}

/// A statement that makes PostgreSQL raise the refusal. The message names
/// tables and columns only; it never holds a value.
pub fn raise_sql(r: &Refusal) -> String {
    let msg = r.message.replace('\'', "''").replace("$pgveil$", "");
    format!(
        "DO $pgveil$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END $pgveil$",
        r.sqlstate, msg
    )
}
impl Frontend {
    /// Answer a simple Query with a refusal that PostgreSQL raises (so the
    /// transaction state is PostgreSQL's). `ops` are the Query's name
    /// changes: the raising Query drops the unnamed statement just as the
    /// client's would have.
    pub(super) fn refuse_query(&mut self, r: &Refusal, ops: Vec<QueryOp>, out: &mut BytesMut) {
        self.rejected(r);
        self.exchange.push(Pending::Query {
            protected: false,
            audit: None,
            ops,
            copies: 0..0,
            copy_out: None,
        });
        encode_query(out, &raise_sql(r));
    }

    /// A FunctionCall, always refused ([`FUNCTION_CALL`]). PostgreSQL
    /// answers a FunctionCall as it answers a Query (its response or an
    /// error, then ReadyForQuery): a Query that raises keeps the protocol
    /// in step.
    pub(super) fn on_function_call(&mut self, out: &mut BytesMut) {
        let r = refuse("0A000", FUNCTION_CALL);
        self.refuse_query(&r, Vec::new(), out);
    }

    /// Take note of a refusal: the metric, the log line and the audit
    /// record; a refused statement changes nothing for later ones.
    pub(super) fn rejected(&mut self, r: &Refusal) {
        // A refused statement never runs: it changes nothing for later ones.
        self.unsettled = self.behind_unsettled;
        crate::metrics::hot().statements_rejected.increment(1);
        tracing::info!(sqlstate = r.sqlstate, reason = %r.message, "statement rejected");
        if let Some(log) = &self.engine.audit {
            log.rejected(&self.id, r.sqlstate, &r.message);
        }
    }

    /// Make PostgreSQL raise the refusal where the refused message stood:
    /// pgveil's own Parse and Bind of a parameterless statement on the
    /// unnamed statement and portal (their responses are swallowed).
    pub(super) fn parse_bind_unnamed(
        &mut self,
        query: String,
        result_formats: Vec<i16>,
        out: &mut BytesMut,
    ) {
        ParseMsg {
            name: String::new(),
            query,
            param_types: vec![],
        }
        .encode(out);
        // They replace the client's unnamed statement and portal (with
        // nothing protected: pgveil's own text) once PostgreSQL runs them.
        self.names.drain(&self.exchange);
        let op = self.names.set(Space::Statement, "", None);
        self.exchange.push(Pending::Parse { internal: true, op });
        BindMsg {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![],
            params: vec![],
            result_formats,
        }
        .encode(out);
        let op = self.names.set(Space::Portal, "", None);
        self.exchange.push(Pending::Bind { internal: true, op });
    }

    /// Refuse the extended-protocol message being handled: record the
    /// refusal ([`rejected`](Self::rejected)) and make PostgreSQL raise it
    /// where the message stood ([`inject_raise`](Self::inject_raise)).
    pub(super) fn raise(&mut self, r: &Refusal, out: &mut BytesMut) {
        self.rejected(r);
        self.inject_raise(r, out);
    }

    /// Parse/Bind/Execute of a `DO` block on the unnamed statement, then
    /// discard the client's messages up to Sync, as the server would.
    pub(super) fn inject_raise(&mut self, r: &Refusal, out: &mut BytesMut) {
        self.parse_bind_unnamed(raise_sql(r), vec![], out);
        encode_execute(out, "", 0);
        self.exchange.push(Pending::Execute {
            portal: String::new(),
            protected: false,
            audit: None,
            copies: 0..0,
            copy_out: None,
        });
        encode_flush(out);
        self.skip_until_sync = true;
    }
}
