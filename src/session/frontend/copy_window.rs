//! COPY windows: which COPY FROM STDIN PostgreSQL may be in when it reads
//! the client's next message (opened by a Query or Execute that may start
//! one, moved on by CopyDone/CopyFail, ended by any other message), the
//! transform of a protected COPY's rows, and the CopyFail that aborts a
//! COPY whose row cannot be encrypted.

use std::ops::Range;

use bytes::BytesMut;

use super::Frontend;
use super::refusal::Refusal;
use crate::session::copy::CopyIn;

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
        let s = crate::wire::msg::begin(out, b'f');
        crate::wire::msg::put_cstr(out, &e.message);
        crate::wire::msg::finish(out, s);
    }
}
