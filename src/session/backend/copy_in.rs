//! COPY FROM STDIN as PostgreSQL reports it: a CopyInResponse starts the
//! next COPY the Query or Execute at the front planned, its CommandComplete
//! or ErrorResponse ends it. What each one became is what its
//! [`Pending::CopySync`] entries mean (`Backend::settle_front`);
//! invariant: a COPY pgveil did not count never starts silently (its data
//! would go out raw, or with another COPY's plan).

use bytes::BytesMut;

use super::Backend;
use crate::session::Pending;
use crate::wire::codec::Frame;
use crate::wire::tag::be;

impl Backend {
    /// Track the COPY IN PostgreSQL is in from this frame; `false`: the
    /// frame started a COPY pgveil did not plan and the session ended.
    pub(super) fn track_copy_in(&mut self, f: &Frame, out: &mut BytesMut) -> bool {
        // COPY IN as PostgreSQL reports it: CopyInResponse starts it,
        // CommandComplete or ErrorResponse ends it.
        match f.tag {
            be::COMMAND_COMPLETE | be::ERROR_RESPONSE => {
                if let Some(id) = self.copy_in.take()
                    && let Some(c) = self.copies.iter_mut().find(|c| c.0 == id)
                {
                    c.1 = Some(f.tag == be::COMMAND_COMPLETE);
                }
            }
            be::COPY_IN if !self.copy_started(out) => return false,
            _ => {}
        }
        true
    }

    /// A CopyInResponse: PostgreSQL started the next COPY FROM STDIN of the
    /// Query or Execute at the front. One pgveil did not count there (its
    /// data would be forwarded raw, or with another COPY's plan) ends the
    /// session.
    fn copy_started(&mut self, out: &mut BytesMut) -> bool {
        if !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
            return false;
        }
        let ids = match self.exchange.pending.lock().expect("pending queue").front() {
            Some(Pending::Query { copies, .. } | Pending::Execute { copies, .. }) => copies.clone(),
            _ => 0..0,
        };
        let started = self.copies.iter().filter(|c| ids.contains(&c.0)).count() as u64;
        let id = ids.start + started;
        if self.copy_in.is_some() || id >= ids.end {
            self.out_of_step("a CopyInResponse for a COPY pgveil did not plan", out);
            return false;
        }
        self.copies.push_back((id, None));
        self.copy_in = Some(id);
        true
    }
}
