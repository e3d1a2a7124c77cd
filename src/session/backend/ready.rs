//! ReadyForQuery: the end of a Sync's or a Query's answers. The status
//! the client sees says a transaction block failed when a row failed to
//! decrypt in it (until the frontend has made PostgreSQL agree), what an
//! error made PostgreSQL skip is dropped from the queue, and portals are
//! forgotten when the transaction ended. Invariant: the client is never
//! told a block is good after it was told one of its statements failed.

use bytes::BytesMut;

use super::Backend;
use crate::session::{Kind, Pending, Resolution};
use crate::wire::codec::Frame;
use crate::wire::tag::{be, txn};

impl Backend {
    /// ReadyForQuery: the transaction status, and the end of a Sync or
    /// Query.
    pub(super) fn on_ready_for_query(&mut self, f: &Frame, out: &mut BytesMut) {
        let st = self.ready_status(f.body());
        if std::mem::take(&mut self.skipping) {
            self.exchange.set_skipping(false);
            // Everything up to the Sync was skipped, including what
            // the client sent after the error reached pgveil.
            loop {
                if !self.settle_front() {
                    self.out_of_step("a Sync inside a COPY that failed", out);
                    return;
                }
                match self.exchange.pop_as(false) {
                    Some(Pending::Sync) => break,
                    Some(_) => {}
                    None => {
                        self.out_of_step("ReadyForQuery without a Sync", out);
                        return;
                    }
                }
            }
        } else {
            if !self.expect(
                &[Kind::Sync, Kind::Query],
                "ReadyForQuery without a Sync or Query",
                out,
            ) {
                return;
            }
            self.exchange.pop();
        }
        self.after_ready(st);
        out.extend_from_slice(&[be::READY_FOR_QUERY, 0, 0, 0, 5, st]);
    }

    /// After a ReadyForQuery with status `st` has taken its entry from
    /// the queue: COPYs no CopySync can refer to, portals PostgreSQL
    /// dropped.
    pub(super) fn after_ready(&mut self, st: u8) {
        if self.exchange.is_idle() && self.copy_in.is_none() {
            // No CopySync can refer to a COPY seen so far.
            self.copies.clear();
        }
        if st == txn::IDLE {
            self.transaction_ended();
        }
    }

    /// The transaction status a ReadyForQuery reports to the client
    /// (recorded as the session's): PostgreSQL's, or failed after a row
    /// the client was told failed inside a block.
    pub(super) fn ready_status(&mut self, body: &[u8]) -> u8 {
        let mut st = body.first().copied().unwrap_or(txn::IDLE);
        // The client got an error inside a transaction block: it is
        // told the block failed, as after any error, until the
        // frontend has made PostgreSQL agree (at the next
        // statement; a bare Sync before it changes nothing).
        // If the abort was requested when the row failed, the
        // frontend may already have carried it out (the client
        // answered the error with ROLLBACK before this arrived):
        // then it is not requested again.
        let failed = std::mem::take(&mut self.row_failed);
        let early = std::mem::take(&mut self.abort_early);
        if (self.exchange.must_abort() || (failed && !early)) && st == txn::IN_TRANSACTION {
            self.exchange.set_must_abort();
            st = txn::FAILED;
        }
        self.exchange.set_tx_status(st);
        self.discard_until_ready = false;
        self.current = None;
        st
    }

    /// PostgreSQL reported no transaction (ReadyForQuery `I`): it dropped
    /// every portal the protocol bound, so pgveil forgets them too, in
    /// the order of its other answers (a Bind sent after this Sync is
    /// answered after it). SQL cursors `WITH HOLD` survive; they are not
    /// in the map (see `Frontend::protected_cursors`).
    fn transaction_ended(&mut self) {
        if !self.portal_shapes.is_empty() {
            self.portal_shapes.clear();
        }
        if self.exchange.take_bound() {
            self.exchange.resolve(Resolution::ForgetPortals);
        }
    }
}
