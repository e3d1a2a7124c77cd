//! Client → server: plan each statement (cached per text), encrypt literals
//! at Parse/Query and parameters at Bind, inject the Describe that tells the
//! backend side the row shape, and turn rejections into errors raised by
//! PostgreSQL itself at the right point, so the transaction state and the
//! rest of a pipeline behave exactly as with a native error.
//!
//! This file holds the [`Frontend`]'s state and [`Frontend::on_frame`], the
//! dispatcher: the checks every message goes through first, in an order
//! that matters (a broken session, the Describe just before, the skip to
//! Sync after an error, the transaction a decryption failure doomed, the
//! end of COPY windows), then one call per message kind into the file named
//! for it (`simple`, `parse`, `bind`, `describe`, `execute`, `close`,
//! `sync`, `copy_window`, `refusal` for FunctionCall).

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::wire::budget::{Budget, Charge};
use crate::wire::query::TERMINATE_MESSAGE;
use crate::wire::tag::fe;

/// Bytes held per byte of a large statement on protected tables while it
/// is planned and rewritten, beyond the frame and its output (charged by
/// the reader, `proxy::relay::CLIENT_HOLD_FACTOR`). Measured
/// (tests/plan_memory.rs counts the allocator's peak while a 32 MB INSERT
/// is planned; docs/benchmarks.md "Memory budget"): 5.0x for a literal
/// into a protected column (sqlparser's tokens and its copies of the
/// literal while it parses), 9.1x for a literal into a plain column of a
/// protected table, which stays in the text sent, so the check parse of
/// the spliced text holds it once more. Was 13 while the lexers' position
/// table (8 bytes a character) and a clone of the parsed statement were
/// held too.
pub const REWRITE_FACTOR: usize = 9;

/// How long a statement whose reading depends on the answers to earlier
/// requests waits for them, by default (see `Frontend::await_answers_for`).
pub const ANSWERS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes held per byte of a large CopyData into a protected table beyond
/// the frame: the encrypted rows (a bytea envelope in hex is twice the
/// plaintext) and the row being assembled.
pub const COPY_FACTOR: usize = 3;

use super::copy::CopyIn;
use super::{Exchange, Identity};
use crate::sql::batch;
use crate::wire::codec::Frame;

mod audit;
mod bind;
mod close;
mod copy_window;
mod describe;
mod execute;
mod lane;
mod lex;
mod names;
mod params;
mod parse;
mod refusal;
mod render;
mod settle;
mod simple;
mod sql_names;
mod stream;
mod sync;
mod txn;

pub use lane::LaneRun;
pub use lex::LexState;
use names::Names;
pub use refusal::{Refusal, raise_sql};
pub use stream::Pass;
use txn::ends_transaction;

/// What the relay does after a client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The client sent Terminate.
    Terminate,
}

/// The client → server half of one session with a policy.
pub struct Frontend {
    pub id: Identity,
    pub exchange: Arc<Exchange>,
    pub engine: Arc<super::Engine>,
    /// Prepared statements and portals that involve protected tables.
    names: Names,
    /// A cursor over protected tables may exist: this session sent a
    /// `DECLARE` pgveil planned as protected (set when it is planned, never
    /// cleared: over-approximating only makes results shaped). SQL cursors
    /// are portals too, which a client may Describe or Execute through the
    /// protocol (psycopg describes its named cursors so): such a portal is
    /// then treated as protected, its rows shaped by its row description.
    protected_cursors: bool,
    /// The portal the client's previous message described, when it was
    /// described as protected: an Execute right after needs no Describe
    /// of pgveil's (see [`on_execute`](Self::on_execute)).
    described: Option<String>,
    skip_until_sync: bool,
    /// The COPY FROM STDIN that PostgreSQL may be in when it reads the
    /// client's next message: its id (see
    /// [`Pending::CopySync`](super::Pending::CopySync)). Opened by a Query
    /// holding COPY FROM STDIN statements (counted on PostgreSQL's tokens)
    /// or an Execute of a portal that is one or that pgveil does not know;
    /// each CopyDone or CopyFail moves to the Query's next COPY, any other
    /// message but CopyData, Sync and Flush ends them (as in PostgreSQL).
    /// Outside one, CopyData, CopyDone and CopyFail are not forwarded:
    /// PostgreSQL would ignore them, and if pgveil's reading were wrong
    /// they must not reach a COPY raw.
    copy_window: Option<u64>,
    /// The ids of the later COPYs of the same Query.
    copy_rest: Range<u64>,
    next_copy: u64,
    /// The rows of the window's COPY are encrypted (a protected COPY).
    copy: Option<CopyIn>,
    /// `limits.max_message_bytes`: also the longest COPY row held back.
    max_message: usize,
    lex: Arc<LexState>,
    statement_id: u64,
    /// A statement that can change the catalog or how text is read
    /// (`sql::batch`) was sent and its result may not have arrived yet.
    unsettled: batch::Effect,
    /// What the statement being handled follows: after a catalog change
    /// whose result has not arrived, every statement but transaction
    /// control is refused; after a settings change, statements that touch
    /// protected tables are.
    behind_unsettled: batch::Effect,
    /// A large frame forwarded unchanged: written after what `out` holds,
    /// without copying it into `out` ([`take_forward`](Self::take_forward)).
    forward: Option<Bytes>,
    /// `limits.max_buffered_bytes`: charged again while a large statement
    /// on protected tables is planned and rewritten.
    budget: Budget,
    /// The charge for the rewrite in `out`, until the relay has written it.
    rewrite_charge: Option<Charge>,
    /// See [`ANSWERS_WAIT`] ([`set_answers_wait`](Self::set_answers_wait)).
    answers_wait: std::time::Duration,
    /// The audit record of the last plan executed, kept while the next
    /// Execute runs the same (shared) plan: an unnamed statement parsed
    /// again for every execution gets its record built once, not per
    /// Execute (`execute::plan_audit`).
    audit_memo: Option<(Arc<crate::sql::RewritePlan>, Option<Arc<super::AuditInfo>>)>,
    /// The prepared statement recorded for the last Parse of a plan
    /// without literals (`parse::shared_prepared`).
    prepared_memo: Option<Arc<super::Prepared>>,
    /// Parse texts the pass-through lane found passable (`lane::Memo`).
    lane_memo: lane::Memo,
}

impl Frontend {
    /// The frontend of a session logged in as `id`, sharing `exchange` with its backend.
    pub fn new(id: Identity, exchange: Arc<Exchange>, engine: Arc<super::Engine>) -> Frontend {
        Frontend {
            id,
            exchange,
            engine,
            names: Names::default(),
            protected_cursors: false,
            described: None,
            skip_until_sync: false,
            copy_window: None,
            copy_rest: 0..0,
            next_copy: 0,
            copy: None,
            max_message: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            lex: Arc::new(LexState::default()),
            statement_id: 0,
            unsettled: batch::Effect::None,
            behind_unsettled: batch::Effect::None,
            forward: None,
            budget: Budget::unlimited(),
            rewrite_charge: None,
            answers_wait: ANSWERS_WAIT,
            audit_memo: None,
            prepared_memo: None,
            lane_memo: lane::Memo::default(),
        }
    }

    /// How long a statement waits for the answers to earlier requests
    /// before it is refused for want of them (a harness with no server
    /// answering sets zero).
    pub fn set_answers_wait(&mut self, wait: std::time::Duration) {
        self.answers_wait = wait;
    }

    /// The charge for the rewrite [`on_frame`](Self::on_frame) just put in
    /// `out`: hold it until `out` is written.
    pub fn take_charge(&mut self) -> Option<Charge> {
        self.rewrite_charge.take()
    }

    /// Charge the rewrite of large statements against `budget`.
    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    fn entry(&self) -> Arc<super::CatalogEntry> {
        self.exchange.entry()
    }

    /// `limits.max_message_bytes` of this session (default 64 MiB).
    pub fn set_max_message(&mut self, n: usize) {
        self.max_message = n;
    }

    /// The session settings that decide how PostgreSQL reads statements
    /// (fed with the server's ParameterStatus messages).
    pub fn lex_state(&self) -> Arc<LexState> {
        self.lex.clone()
    }

    /// Read statements with the settings `lex` tracks (shared with the relay, which feeds it ParameterStatus).
    pub fn set_lex_state(&mut self, lex: Arc<LexState>) {
        self.lex = lex;
    }

    /// Whether the catalog should be reloaded before the next statement
    /// (only called when no request is in flight, so PostgreSQL runs no
    /// COPY: a COPY keeps its Query or Execute pending until it ends; a
    /// COPY window left open after an answered Execute is no COPY).
    pub fn wants_catalog_refresh(&self) -> bool {
        self.between_statements() && self.engine.is_stale(&self.entry())
    }

    /// No COPY and no extended-protocol error being skipped to its Sync
    /// (with nothing in flight, a point between statements: where the
    /// catalog, or after a reload the engine, may change).
    pub fn between_statements(&self) -> bool {
        self.copy.is_none() && !self.skip_until_sync
    }

    /// No COPY FROM STDIN is open and PostgreSQL is not skipping to a
    /// Sync: what is in flight needs nothing more from the client.
    pub fn needs_no_client_data(&self) -> bool {
        self.copy_window.is_none() && !self.skip_until_sync
    }

    /// Handle one client frame, appending what goes upstream to `out`.
    pub async fn on_frame(&mut self, f: Frame, out: &mut BytesMut) -> Flow {
        if self.exchange.is_broken() {
            // The backend found PostgreSQL's answers out of step and told
            // the client (FATAL): nothing more goes upstream.
            tracing::warn!("session closed: PostgreSQL's answers were out of step");
            out.extend_from_slice(&TERMINATE_MESSAGE);
            return Flow::Terminate;
        }
        let described = self.described.take();
        if self.skip_until_sync && !matches!(f.tag, fe::SYNC | fe::FLUSH | fe::TERMINATE) {
            return Flow::Continue;
        }
        if matches!(
            f.tag,
            fe::QUERY | fe::PARSE | fe::BIND | fe::EXECUTE | fe::FUNCTION_CALL
        ) && self.exchange.must_abort()
            && self.exchange.take_must_abort()
            && !ends_transaction(&f)
        {
            self.end_copies();
            self.abort_transaction(&f, out);
            return Flow::Continue;
        }
        if !matches!(
            f.tag,
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL | fe::SYNC | fe::FLUSH
        ) {
            // PostgreSQL ends a COPY FROM STDIN at any other message (and
            // with it the Query that ran it): a later COPY's data is never
            // read with this one's plan.
            self.end_copies();
        }
        match f.tag {
            fe::QUERY | fe::PARSE => self.on_statement(&f, out).await,
            fe::BIND => self.on_bind(&f, out).await,
            fe::DESCRIBE => self.on_describe(&f, out),
            fe::EXECUTE => self.on_execute(&f, described.as_deref(), out),
            fe::CLOSE => self.on_close(&f, out),
            fe::SYNC => self.on_sync(&f, out),
            fe::FUNCTION_CALL => self.on_function_call(out),
            // CopyData, CopyDone and CopyFail outside a COPY window:
            // PostgreSQL ignores them; they are not forwarded.
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL if self.copy_window.is_none() => {}
            fe::COPY_DATA => self.on_copy_data(&f, out).await,
            fe::COPY_DONE => self.on_copy_done(&f, out).await,
            fe::COPY_FAIL => self.on_copy_fail(&f, out),
            fe::TERMINATE => {
                out.extend_from_slice(&f.raw);
                return Flow::Terminate;
            }
            _ => self.forward(&f, out),
        }
        Flow::Continue
    }

    /// A simple Query or a Parse, in a span of its own: one span per
    /// statement, with an id and no text or values.
    async fn on_statement(&mut self, f: &Frame, out: &mut BytesMut) {
        self.statement_id += 1;
        let span = tracing::debug_span!(
            "statement",
            id = self.statement_id,
            protocol = if f.tag == fe::QUERY {
                "simple"
            } else {
                "extended"
            }
        );
        let work = async {
            if f.tag == fe::QUERY {
                self.on_query(f, out).await
            } else {
                self.on_parse(f, out).await
            }
        };
        tracing::Instrument::instrument(work, span).await
    }
}

#[cfg(test)]
mod tests;
