//! The pending queue as the backend reads it: every answer from PostgreSQL
//! is checked against the request at the front of [`Pending`] before it
//! changes anything (`expect`), the `CopySync` entries of a COPY are
//! resolved once its fate is known (`settle_front`), and the entries an
//! error makes PostgreSQL skip are dropped (`drop_until_sync`, and
//! `pop_if_completes` while discarding). An answer pgveil cannot place ends
//! the session (`out_of_step`); invariant: no answer is applied on a guess
//! of which request it belongs to.

use bytes::BytesMut;

use super::Backend;
use super::describe::NO_DATA_ANSWERS;
use crate::session::{Kind, Pending};
use crate::wire::error;
use crate::wire::tag::be;

impl Backend {
    pub(super) fn front_is<F: Fn(&Pending) -> bool>(&self, f: F) -> bool {
        self.exchange
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .is_some_and(f)
    }

    fn front_kind(&self) -> Option<Kind> {
        self.exchange
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .map(Pending::kind)
    }

    /// Resolve the [`Pending::CopySync`] entries at the front of the queue
    /// from what PostgreSQL said about their COPY: one it never started
    /// (the Query or Execute ended without a CopyInResponse for it) was a
    /// Sync PostgreSQL answers; one of a COPY that completed was ignored.
    /// Of a COPY that failed, pgveil cannot know whether PostgreSQL read
    /// the Sync before or after leaving COPY IN: `false`, the session
    /// cannot go on.
    pub(super) fn settle_front(&mut self) -> bool {
        loop {
            let mut q = self.exchange.pending.lock().expect("pending queue");
            let Some(Pending::CopySync { copy }) = q.front() else {
                return true;
            };
            let copy = *copy;
            if self.copy_in == Some(copy) {
                return false;
            }
            match self.copies.iter().find(|c| c.0 == copy).map(|c| c.1) {
                None => {
                    q[0] = Pending::Sync;
                    return true;
                }
                Some(Some(true)) => {
                    q.pop_front();
                }
                Some(_) => return false,
            }
        }
    }

    /// PostgreSQL answered something pgveil did not ask for, or pgveil can
    /// no longer tell which request an answer belongs to: applying or
    /// skipping a state change on a guess could let a protected value
    /// through raw, so the session ends (FATAL to the client; the frontend
    /// closes the upstream connection at the client's next message, and a
    /// client that closes does it too). Nothing PostgreSQL sends after
    /// this reaches the client.
    pub(super) fn out_of_step(&mut self, what: &'static str, out: &mut BytesMut) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.exchange.set_broken();
        metrics::counter!("pgveil_protocol_desync_total").increment(1);
        tracing::error!(
            answer = what,
            "PostgreSQL's answers are out of step with the requests pgveil forwarded; closing the session"
        );
        out.extend_from_slice(&error::error_response(
            "FATAL",
            "08P01",
            "pgveil: PostgreSQL's answers are out of step with the requests pgveil forwarded (the client sent messages PostgreSQL handles in a way pgveil cannot follow, e.g. Sync inside a COPY that failed); the session is closed",
        ));
    }

    /// Check that the front entry is one of `kinds` (after settling
    /// CopySync entries); otherwise the session ends.
    pub(super) fn expect(
        &mut self,
        kinds: &[Kind],
        what: &'static str,
        out: &mut BytesMut,
    ) -> bool {
        if !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
            return false;
        }
        match self.front_kind() {
            Some(k) if kinds.contains(&k) => true,
            _ => {
                self.out_of_step(what, out);
                false
            }
        }
    }

    /// While discarding, keep the queue in step with what the server answers.
    pub(super) fn pop_if_completes(&mut self, tag: u8, out: &mut BytesMut) {
        let want: &[Kind] = match tag {
            be::PARSE_COMPLETE => &[Kind::Parse],
            be::BIND_COMPLETE => &[Kind::Bind],
            be::CLOSE_COMPLETE => &[Kind::Close],
            be::NO_DATA => NO_DATA_ANSWERS,
            be::PORTAL_SUSPENDED => &[Kind::Execute],
            _ => &[],
        };
        if !want.is_empty() {
            if !self.expect(want, "an answer without its request", out) {
                return;
            }
            // PostgreSQL went on: its statements and portals changed.
            self.exchange.pop_as(matches!(
                tag,
                be::PARSE_COMPLETE | be::BIND_COMPLETE | be::CLOSE_COMPLETE
            ));
            return;
        }
        let pop = match tag {
            be::COMMAND_COMPLETE | be::EMPTY_QUERY => {
                self.front_is(|p| matches!(p, Pending::Execute { .. }))
            }
            be::ROW_DESCRIPTION => self.front_is(|p| {
                matches!(
                    p,
                    Pending::DescribePortal { .. }
                        | Pending::DescribeStatement { .. }
                        | Pending::ResultShape
                )
            }),
            _ => false,
        };
        if pop {
            self.exchange.pop();
        }
    }

    /// An error in the extended protocol: the server skips to Sync, and
    /// none of the skipped messages changes a statement or portal. (An
    /// error of a Query at the front skips nothing.)
    pub(super) fn drop_until_sync(&mut self, out: &mut BytesMut) {
        if self.front_is(|p| matches!(p, Pending::Sync | Pending::Query { .. })) {
            return;
        }
        // pgveil's own Parse/Bind/Describe/Execute/Sync for a simple-query
        // SELECT (`Pending::ResultShape`): its Execute and Sync are the
        // `Query` entry behind it, which the ReadyForQuery pops.
        let own_select = {
            let q = self.exchange.pending.lock().expect("pending queue");
            q.iter()
                .take_while(|p| !matches!(p, Pending::Sync | Pending::Query { .. }))
                .any(|p| matches!(p, Pending::ResultShape))
        };
        if own_select {
            while self.front_is(|p| !matches!(p, Pending::Query { .. })) {
                self.exchange.pop_as(false);
            }
            return;
        }
        self.skipping = true;
        self.exchange.set_skipping(true);
        loop {
            if !self.settle_front() {
                self.out_of_step("a Sync inside a COPY that failed", out);
                return;
            }
            if !self.front_is(|p| !matches!(p, Pending::Sync)) {
                return;
            }
            self.exchange.pop_as(false);
        }
    }
}
