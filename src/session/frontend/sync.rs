//! Sync: the end of an extended-protocol stretch of messages. PostgreSQL
//! stops skipping messages after an error there, and so does pgveil; the
//! name map starts a new segment (see `Names::segment`). Inside a COPY
//! window PostgreSQL may ignore the Sync: the backend learns which from
//! the COPY's answers ([`Pending::CopySync`]).

use bytes::BytesMut;

use super::Frontend;
use crate::session::Pending;
use crate::wire::codec::Frame;

impl Frontend {
    /// A Sync, always forwarded.
    pub(super) fn on_sync(&mut self, f: &Frame, out: &mut BytesMut) {
        self.skip_until_sync = false;
        self.names.segment += 1;
        // PostgreSQL ignores a Sync while it is in COPY IN: whether
        // it is, the server's answers to the COPY tell.
        self.exchange.push(match self.copy_window {
            Some(copy) => Pending::CopySync { copy },
            None => Pending::Sync,
        });
        out.extend_from_slice(&f.raw);
    }
}
