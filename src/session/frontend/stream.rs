//! Large client messages: which pass upstream in pieces as they arrive,
//! never held whole ([`Frontend::stream_large`]: a Bind whose parameters
//! pgveil does not transform, CopyData of an unencrypted COPY, or dropped
//! when PostgreSQL would ignore them); the budget charged while one is
//! rewritten; frames forwarded without a copy; and the 53200 refusal of one
//! that did not fit. A simple Query or a Parse never streams.

use bytes::{Bytes, BytesMut};

use super::bind::BindPath;
use super::lex::pg_name;
use super::refusal::{Refusal, refuse};
use super::{Frontend, REWRITE_FACTOR};
use crate::wire::budget::{Budget, Charge};
use crate::wire::codec::{Frame, read_cstr};
use crate::wire::tag::fe;

/// How a large client message passes without being held
/// ([`Frontend::stream_large`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Upstream, piece by piece as it arrives.
    Forward,
    /// Read and dropped: PostgreSQL would ignore it.
    Drop,
}
/// Charge `budget` for what handling a message of `len` bytes holds beyond
/// the message itself, `factor` bytes a byte (nothing for a small one);
/// refused with 53200 when it does not fit.
pub(super) async fn charge_held(
    budget: &Budget,
    len: usize,
    factor: usize,
) -> Result<Option<Charge>, Refusal> {
    if len <= Budget::FREE_BYTES {
        return Ok(None);
    }
    budget
        .charge(len.saturating_mul(factor))
        .await
        .map(Some)
        .map_err(|why| refuse("53200", crate::wire::budget::refusal_message(len, why)))
}

impl Frontend {
    /// Charge what planning and rewriting a message of `len` bytes on
    /// protected tables holds beyond the message itself
    /// ([`REWRITE_FACTOR`]); refused with 53200 when it does not fit.
    pub(super) async fn charge_rewrite(&self, len: usize) -> Result<Option<Charge>, Refusal> {
        charge_held(&self.budget, len, REWRITE_FACTOR).await
    }

    /// Forward `f` unchanged: appended to `out` when small; a large frame
    /// is handed to the relay as it is instead (no copy of its bytes).
    /// Only the last thing a call of [`on_frame`](Self::on_frame) does.
    pub(super) fn forward(&mut self, f: &Frame, out: &mut BytesMut) {
        if f.raw.len() > crate::wire::budget::Budget::FREE_BYTES {
            self.forward = Some(f.raw.clone());
        } else {
            out.extend_from_slice(&f.raw);
        }
    }

    /// The large frame [`on_frame`](Self::on_frame) forwards unchanged, to
    /// be written right after `out`.
    pub fn take_forward(&mut self) -> Option<Bytes> {
        self.forward.take()
    }

    /// A large client message of which only the first bytes (`head`: its
    /// header and what else was read) have arrived: whether it can go
    /// upstream as it arrives, in pieces, never held whole. `None`: hold it
    /// (charged) and hand it to [`on_frame`](Self::on_frame) whole. When it
    /// passes, the bookkeeping `on_frame` would have done for it is done
    /// here (keep this in step with `on_frame`; a Bind passes by the same
    /// [`bind_path`](Self::bind_path) decision as in `on_bind`).
    ///
    /// Only messages whose bytes past their first few pgveil would forward
    /// unread pass: a Bind of a statement whose plan (known since its
    /// Parse) transforms no parameter, CopyData of a COPY that is not
    /// encrypted, and any message PostgreSQL will ignore (after an error,
    /// until Sync; CopyData outside a COPY), which is dropped. A simple
    /// Query or a Parse is always held: its whole text is read for
    /// protected names before any of it goes upstream (docs/threat-model.md
    /// "Memory budget").
    pub fn stream_large(&mut self, tag: u8, head: &[u8]) -> Option<Pass> {
        if self.exchange.is_broken() {
            return None;
        }
        // As in `on_frame`: a Describe the client sent before this message
        // is no longer the one right before the next Execute.
        self.described = None;
        if self.skip_until_sync && !matches!(tag, fe::SYNC | fe::FLUSH | fe::TERMINATE) {
            return Some(Pass::Drop);
        }
        match tag {
            fe::COPY_DATA if self.copy_window.is_none() => Some(Pass::Drop),
            fe::COPY_DATA if self.copy.is_none() => Some(Pass::Forward),
            fe::BIND if !self.exchange.must_abort() => {
                let mut b = head.get(5..)?;
                let (portal, statement) = (read_cstr(&mut b)?, read_cstr(&mut b)?);
                let unconverted = self.lex.names_unconverted();
                let portal = pg_name(portal, unconverted)?;
                let statement = pg_name(statement, unconverted)?;
                self.names.drain(&self.exchange);
                // Only a Bind `on_bind` would forward as it is.
                let BindPath::Forward(prepared) = self.bind_path(statement) else {
                    return None;
                };
                self.end_copies();
                self.bind_portal(portal, prepared);
                Some(Pass::Forward)
            }
            _ => None,
        }
    }

    /// A client message that did not fit in `limits.max_buffered_bytes`
    /// was discarded unread: answer it as PostgreSQL answers a statement
    /// that ran out of memory (53200), in protocol step. Returns false when
    /// the connection must close instead (a message outside a statement).
    pub fn refuse_over_budget(&mut self, tag: u8, message: &str, out: &mut BytesMut) -> bool {
        if self.skip_until_sync {
            return true;
        }
        let r = refuse("53200", message.to_string());
        match tag {
            fe::QUERY => {
                let ops = self.query_ops(b"");
                self.refuse_query(&r, ops, out);
                true
            }
            // PostgreSQL skips to Sync after an error; so does the frontend.
            fe::PARSE | fe::BIND | fe::EXECUTE | fe::DESCRIBE | fe::CLOSE => {
                if !self.skip_until_sync {
                    self.raise(&r, out);
                }
                true
            }
            // Inside a COPY window: fail that COPY (its later data is then
            // outside any window and dropped, as PostgreSQL would ignore it).
            fe::COPY_DATA if self.copy_window.is_some() => {
                self.fail_copy(r, out);
                true
            }
            fe::COPY_DATA => true,
            _ => false,
        }
    }
}
