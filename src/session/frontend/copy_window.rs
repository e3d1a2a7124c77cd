//! COPY windows: which COPY FROM STDIN PostgreSQL may be in when it reads
//! the client's next message (opened by a Query or Execute that may start
//! one, moved on by CopyDone/CopyFail, ended by any other message), the
//! client's CopyData, CopyDone and CopyFail inside one (a protected COPY's
//! rows encrypted, the others forwarded), and the CopyFail that aborts a
//! COPY whose row cannot be encrypted. Never forwards CopyData outside a
//! window (`on_frame` drops those).

use std::ops::Range;

use bytes::BytesMut;

use super::refusal::Refusal;
use super::stream::charge_held;
use super::{COPY_FACTOR, Frontend};
use crate::session::copy::CopyIn;
use crate::wire::codec::Frame;
use crate::wire::tag::fe;

impl Frontend {
    /// Open `n` COPY windows (the COPY FROM STDIN statements of one Query,
    /// or the COPY an Execute may start), the first with `transform`.
    pub(super) fn open_copies(&mut self, n: usize, transform: Option<CopyIn>) -> Range<u64> {
        let ids = self.next_copy..self.next_copy + n as u64;
        self.next_copy = ids.end;
        if n > 0 {
            self.copy_window = Some(ids.start);
            self.copy_rest = ids.start + 1..ids.end;
            self.copy = transform;
        }
        ids
    }

    /// The client ended the window's COPY (CopyDone or CopyFail): the
    /// Query's next COPY, if any, reads what follows.
    pub(super) fn next_copy_window(&mut self) {
        self.copy = None;
        self.copy_window = self.copy_rest.next();
    }

    /// CopyData inside a COPY window: a protected COPY's rows encrypted
    /// into `out`, any other forwarded as it is.
    pub(super) async fn on_copy_data(&mut self, f: &Frame, out: &mut BytesMut) {
        match &mut self.copy {
            Some(c) => {
                // A large CopyData into a protected table: its rows are
                // encrypted into `out` (hex for bytea: twice the size).
                let charged = charge_held(&self.budget, f.raw.len(), COPY_FACTOR).await;
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
            None => self.forward(f, out),
        }
    }

    /// CopyDone inside a COPY window: a protected COPY's last row is
    /// encrypted first (or the COPY failed); the Query's next COPY reads
    /// what follows.
    pub(super) async fn on_copy_done(&mut self, f: &Frame, out: &mut BytesMut) {
        if let Some(mut c) = self.copy.take()
            && let Err(e) = c.finish(&self.engine, out).await
        {
            self.fail_copy(e, out);
            return;
        }
        out.extend_from_slice(&f.raw);
        self.next_copy_window();
    }

    /// CopyFail inside a COPY window: forwarded; the Query's next COPY
    /// reads what follows.
    pub(super) fn on_copy_fail(&mut self, f: &Frame, out: &mut BytesMut) {
        self.copy = None;
        out.extend_from_slice(&f.raw);
        self.next_copy_window();
    }

    /// End every COPY window: PostgreSQL ends a COPY FROM STDIN at any
    /// message but CopyData, CopyDone, CopyFail, Sync and Flush.
    pub(super) fn end_copies(&mut self) {
        self.copy = None;
        self.copy_window = None;
        self.copy_rest = 0..0;
    }

    /// A COPY row that cannot be encrypted aborts the COPY with CopyFail, so
    /// PostgreSQL rolls it back and reports the reason.
    /// PostgreSQL leaves COPY at it: the rest of the client's data is not
    /// forwarded.
    pub(super) fn fail_copy(&mut self, e: Refusal, out: &mut BytesMut) {
        self.end_copies();
        self.rejected(&e);
        let s = crate::wire::body::begin(out, fe::COPY_FAIL);
        crate::wire::body::put_cstr(out, &e.message);
        crate::wire::body::finish(out, s);
    }
}
