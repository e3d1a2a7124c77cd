//! Client → server: plan each statement (cached per text), encrypt literals
//! at Parse/Query and parameters at Bind, inject the Describe that tells the
//! backend side the row shape, and turn rejections into errors raised by
//! PostgreSQL itself at the right point, so the transaction state and the
//! rest of a pipeline behave exactly as with a native error.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::wire::budget::{Budget, Charge};

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
use super::messages as m;
use super::{AuditInfo, Identity, Pending, Shared};
use crate::sql::{CopyDirection, batch};
use crate::wire::codec::Frame;

mod audit;
mod bind;
mod copy_window;
mod lex;
mod names;
mod parse;
mod refusal;
mod render;
mod settle;
mod simple;
mod sql_names;
mod stream;
mod txn;

use audit::{audit_info, copy_audit};
pub use lex::LexState;
use lex::pg_name;
use names::{Names, Space, View};
use refusal::{FUNCTION_CALL, ambiguous, refuse, unkeyable};
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

pub struct Frontend {
    pub id: Identity,
    pub shared: Arc<Shared>,
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
    /// of pgveil's (see the Execute in [`on_frame`](Self::on_frame)).
    described: Option<String>,
    skip_until_sync: bool,
    /// The COPY FROM STDIN that PostgreSQL may be in when it reads the
    /// client's next message: its id (see [`Pending::CopySync`]). Opened by
    /// a Query holding COPY FROM STDIN statements (counted on PostgreSQL's
    /// tokens) or an Execute of a portal that is one or that pgveil does
    /// not know; each CopyDone or CopyFail moves to the Query's next COPY,
    /// any other message but CopyData, Sync and Flush ends them (as in
    /// PostgreSQL). Outside one, CopyData, CopyDone and CopyFail are not
    /// forwarded: PostgreSQL would ignore them, and if pgveil's reading
    /// were wrong they must not reach a COPY raw.
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
}

impl Frontend {
    pub fn new(id: Identity, shared: Arc<Shared>, engine: Arc<super::Engine>) -> Frontend {
        Frontend {
            id,
            shared,
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
        self.shared.entry()
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
        if self.shared.is_broken() {
            // The backend found PostgreSQL's answers out of step and told
            // the client (FATAL): nothing more goes upstream.
            tracing::warn!("session closed: PostgreSQL's answers were out of step");
            out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
            return Flow::Terminate;
        }
        let described = self.described.take();
        if self.skip_until_sync && !matches!(f.tag, b'S' | b'H' | b'X') {
            return Flow::Continue;
        }
        if matches!(f.tag, b'Q' | b'P' | b'B' | b'E' | b'F')
            && self.shared.must_abort()
            && self.shared.take_must_abort()
            && !ends_transaction(&f)
        {
            self.end_copies();
            self.abort_transaction(&f, out);
            return Flow::Continue;
        }
        if !matches!(f.tag, b'd' | b'c' | b'f' | b'S' | b'H') {
            // PostgreSQL ends a COPY FROM STDIN at any other message (and
            // with it the Query that ran it): a later COPY's data is never
            // read with this one's plan.
            self.end_copies();
        }
        match f.tag {
            b'Q' | b'P' => {
                // One span per statement, with an id and no text or values.
                self.statement_id += 1;
                let span = tracing::debug_span!(
                    "statement",
                    id = self.statement_id,
                    protocol = if f.tag == b'Q' { "simple" } else { "extended" }
                );
                let work = async {
                    if f.tag == b'Q' {
                        self.on_query(&f, out).await
                    } else {
                        self.on_parse(&f, out).await
                    }
                };
                tracing::Instrument::instrument(work, span).await
            }
            b'B' => self.on_bind(&f, out).await,
            b'D' => {
                self.names.drain(&self.shared);
                let unconverted = self.lex.names_unconverted();
                match m::decode_target(f.body()) {
                    Some((kind, name)) => {
                        let Some(key) = pg_name(&name, unconverted) else {
                            let r = unkeyable(if kind == b'S' { "statement" } else { "portal" });
                            self.raise(&r, out);
                            return Flow::Continue;
                        };
                        if kind == b'S' {
                            self.shared.push(Pending::DescribeStatement {
                                prepared: self.names.possible(Space::Statement, key).0,
                            })
                        } else {
                            let known = self.names.possible(Space::Portal, key).0;
                            let protected = match known {
                                Some(p) => p.plan.is_some() || p.copy.is_some(),
                                // Maybe a SQL cursor (see `protected_cursors`).
                                None => self.protected_cursors,
                            };
                            if protected {
                                self.described = Some(key.to_string());
                            }
                            self.shared.push(Pending::DescribePortal {
                                portal: key.to_string(),
                                protected,
                                internal: false,
                            })
                        }
                    }
                    None => {
                        let r = unkeyable("statement or portal");
                        self.raise(&r, out);
                        return Flow::Continue;
                    }
                }
                out.extend_from_slice(&f.raw);
            }
            b'E' => {
                let Some((portal, _)) = m::decode_execute(f.body()) else {
                    let r = unkeyable("portal");
                    self.raise(&r, out);
                    return Flow::Continue;
                };
                let Some(portal) =
                    pg_name(&portal, self.lex.names_unconverted()).map(str::to_string)
                else {
                    let r = unkeyable("portal");
                    self.raise(&r, out);
                    return Flow::Continue;
                };
                self.names.drain(&self.shared);
                let prepared = match self.names.view(Space::Portal, &portal) {
                    View::Known(p) => p,
                    View::Ambiguous => {
                        let r = ambiguous("portal", &portal);
                        self.raise(&r, out);
                        return Flow::Continue;
                    }
                };
                let protected = prepared.is_some();
                let copy_out = prepared
                    .as_ref()
                    .and_then(|p| p.copy.clone())
                    .filter(|c| c.decrypts());
                let mut audit = prepared
                    .as_ref()
                    .and_then(|p| p.plan.as_ref())
                    .and_then(|p| audit_info(p))
                    .or_else(|| copy_out.as_deref().and_then(copy_audit));
                // A portal pgveil did not bind may be a SQL cursor over
                // protected tables: its rows are shaped as a FETCH's would
                // be (an unknown portal makes the Describe below fail as
                // the Execute would have).
                let cursor = prepared.is_none() && self.protected_cursors;
                // The rows are shaped by PostgreSQL's description of the
                // portal the name refers to now, asked right before it
                // runs (nothing can run in between), not by what pgveil
                // remembers of it: a name pgveil keeps after PostgreSQL
                // dropped its portal (a CLOSE in a function, a rolled-back
                // savepoint) and then reused for a cursor still gets that
                // cursor's shape.
                let shaped = cursor || prepared.as_ref().is_some_and(|p| p.plan.is_some());
                if shaped && audit.is_none() {
                    // What it decrypts is recorded from the rows' shape.
                    audit = Some(Arc::new(AuditInfo {
                        tables: vec![],
                        columns: vec![],
                        searched: false,
                        decrypted: false,
                    }));
                }
                if shaped && described.as_deref() != Some(portal.as_str()) {
                    m::encode_describe(out, b'P', &portal);
                    self.shared.push(Pending::DescribePortal {
                        portal: portal.clone(),
                        protected: true,
                        internal: true,
                    });
                }
                let protected = protected || cursor;
                // A portal pgveil does not know may be a COPY FROM STDIN of
                // an unprotected table (pass-through statements are not
                // recorded): PostgreSQL tells at its answer.
                let copies = match &prepared {
                    None => self.open_copies(1, None),
                    Some(p) => match &p.copy {
                        Some(copy) if copy.direction == CopyDirection::In => {
                            let t = CopyIn::new(copy.clone(), self.entry(), self.max_message);
                            self.open_copies(1, Some(t))
                        }
                        _ => 0..0,
                    },
                };
                self.shared.push(Pending::Execute {
                    portal,
                    protected,
                    audit,
                    copies,
                    copy_out,
                });
                out.extend_from_slice(&f.raw);
                return Flow::Continue;
            }
            b'C' => {
                self.names.drain(&self.shared);
                let unconverted = self.lex.names_unconverted();
                let op = match m::decode_target(f.body()) {
                    Some((kind, name)) => {
                        let space = if kind == b'S' {
                            Space::Statement
                        } else {
                            Space::Portal
                        };
                        let Some(key) = pg_name(&name, unconverted) else {
                            let r = unkeyable(if kind == b'S' { "statement" } else { "portal" });
                            self.raise(&r, out);
                            return Flow::Continue;
                        };
                        self.names.set(space, key, None)
                    }
                    None => {
                        let r = unkeyable("statement or portal");
                        self.raise(&r, out);
                        return Flow::Continue;
                    }
                };
                self.shared.push(Pending::Close { op });
                out.extend_from_slice(&f.raw);
            }
            b'S' => {
                self.skip_until_sync = false;
                self.names.segment += 1;
                // PostgreSQL ignores a Sync while it is in COPY IN: whether
                // it is, the server's answers to the COPY tell.
                self.shared.push(match self.copy_window {
                    Some(copy) => Pending::CopySync { copy },
                    None => Pending::Sync,
                });
                out.extend_from_slice(&f.raw);
            }
            b'F' => {
                // PostgreSQL answers a FunctionCall as it answers a Query
                // (its response or an error, then ReadyForQuery): a Query
                // that raises keeps the protocol in step.
                let r = refuse("0A000", FUNCTION_CALL);
                self.refuse_query(&r, Vec::new(), out);
            }
            // CopyData, CopyDone and CopyFail outside a COPY window:
            // PostgreSQL ignores them; they are not forwarded.
            b'd' | b'c' | b'f' if self.copy_window.is_none() => {}
            b'd' => match &mut self.copy {
                Some(c) => {
                    // A large CopyData into a protected table: its rows are
                    // encrypted into `out` (hex for bytea: twice the size).
                    let charged = if f.raw.len() > Budget::FREE_BYTES {
                        self.budget
                            .charge(f.raw.len().saturating_mul(COPY_FACTOR))
                            .await
                            .map(Some)
                            .map_err(|why| {
                                refuse(
                                    "53200",
                                    crate::wire::budget::refusal_message(f.raw.len(), why),
                                )
                            })
                    } else {
                        Ok(None)
                    };
                    let done = match charged {
                        Ok(charge) => {
                            self.rewrite_charge = charge;
                            c.data(f.body(), &self.engine, out).await
                        }
                        Err(r) => Err(r),
                    };
                    if let Err(e) = done {
                        self.fail_copy(e, out);
                    }
                }
                None => self.forward(&f, out),
            },
            b'c' => {
                if let Some(mut c) = self.copy.take()
                    && let Err(e) = c.finish(&self.engine, out).await
                {
                    self.fail_copy(e, out);
                    return Flow::Continue;
                }
                out.extend_from_slice(&f.raw);
                self.next_copy_window();
            }
            b'f' => {
                self.copy = None;
                out.extend_from_slice(&f.raw);
                self.next_copy_window();
            }
            b'X' => {
                out.extend_from_slice(&f.raw);
                return Flow::Terminate;
            }
            _ => self.forward(&f, out),
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
