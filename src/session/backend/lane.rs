//! The answers to a run the frontend's pass-through lane forwarded
//! ([`Pending::PassThrough`], see `frontend::lane`): relayed as
//! PostgreSQL sent them until the run's last ReadyForQuery, with what
//! every answer does to the session's state kept as the per-message path
//! keeps it (the transaction status and the portals it ends, the catalog
//! after DDL, the names `DEALLOCATE ALL`, `DISCARD ALL` and `CLOSE ALL`
//! drop, pgveil's refusals without their `DO` context), and without a
//! queue entry per request. Invariant: an answer such a run cannot have
//! (COPY, FunctionCallResponse, CloseComplete) ends the session, as any
//! answer out of step does.

use bytes::BytesMut;

use super::Backend;
use super::complete::command_tag;
use crate::session::Pending;
use crate::wire::codec::Frame;
use crate::wire::tag::be;

impl Backend {
    /// Whether the answer at hand belongs to a pass-through run: the
    /// front of the queue is one (looked up once per run; the entry stays
    /// at the front, so the queue is not idle, until its last answer).
    pub fn in_lane(&mut self) -> bool {
        if self.lane > 0 {
            return true;
        }
        if !self.exchange.lane_pending() {
            return false;
        }
        let syncs = match self.exchange.pending.lock().expect("pending queue").front() {
            Some(Pending::PassThrough { syncs }) => *syncs,
            _ => return false,
        };
        self.lane = syncs.max(1);
        self.streaming = None;
        self.current = None;
        // What a statement before the run left (rows decrypted before an
        // error, the data keys held for them) ends here, as the first
        // completion after it would end it on the per-message path: no
        // key is held across the run, no later audit record counts them.
        self.decryptor.end_statement();
        self.reset_counts();
        true
    }

    /// Whether `frame` (whole, as PostgreSQL sent it) is an answer of the
    /// pass-through run that goes to the client as sent; if so, what it
    /// does to the session is applied here. `false` for an answer the
    /// per-frame path must see ([`on_lane_frame`](Self::on_lane_frame):
    /// an error, an answer the run cannot have, a ReadyForQuery whose
    /// status the client is told otherwise) and for anything after the
    /// run's last ReadyForQuery.
    pub fn lane_pass(&mut self, tag: u8, frame: &[u8]) -> bool {
        if self.lane == 0 || self.broken {
            return false;
        }
        match tag {
            be::COMMAND_COMPLETE => {
                let tag = command_tag(&frame[5..]);
                self.invalidate_after_ddl(tag);
                self.forget_after(tag);
                true
            }
            be::READY_FOR_QUERY => {
                if frame.len() != 6 || self.row_failed || self.exchange.must_abort() {
                    return false;
                }
                // As sent: no failed row or doomed block to report.
                let st = self.ready_status(&frame[5..]);
                debug_assert_eq!(st, frame[5]);
                self.end_lane_stretch(st);
                true
            }
            be::ERROR_RESPONSE
            | be::COPY_IN
            | be::COPY_OUT
            | be::COPY_BOTH
            | be::COPY_DATA
            | be::COPY_DONE
            | be::FUNCTION_CALL_RESPONSE
            | be::CLOSE_COMPLETE => false,
            _ => true,
        }
    }

    /// A ReadyForQuery of the run with status `st`, as the client sees it
    /// (recorded by `ready_status`): the run is done at its last one.
    fn end_lane_stretch(&mut self, st: u8) {
        // A skip of PostgreSQL's ends at a Sync (the frontend starts no
        // run during one; this keeps the two in step regardless).
        if std::mem::take(&mut self.skipping) {
            self.exchange.set_skipping(false);
        }
        self.lane -= 1;
        if self.lane == 0 {
            self.exchange.pop();
        }
        self.after_ready(st);
    }

    /// One answer of a pass-through run: as sent when
    /// [`lane_pass`](Self::lane_pass) takes it, else the few it leaves.
    pub(super) fn on_lane_frame(&mut self, f: &Frame, out: &mut BytesMut) {
        if self.lane_pass(f.tag, &f.raw) {
            out.extend_from_slice(&f.raw);
            return;
        }
        match f.tag {
            be::ERROR_RESPONSE => self.forward_error(f, out),
            be::READY_FOR_QUERY => {
                let st = self.ready_status(f.body());
                self.end_lane_stretch(st);
                out.extend_from_slice(&[be::READY_FOR_QUERY, 0, 0, 0, 5, st]);
            }
            be::FUNCTION_CALL_RESPONSE => self.out_of_step("FunctionCallResponse", out),
            be::CLOSE_COMPLETE => self.out_of_step("CloseComplete without a Close", out),
            _ => self.out_of_step("a COPY in a pass-through run", out),
        }
    }
}
