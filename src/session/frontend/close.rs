//! Close of a statement or portal: forwarded as the client sent it; the
//! name leaves pgveil's map when PostgreSQL confirms the close
//! (CloseComplete), never before.

use bytes::BytesMut;

use super::Frontend;
use super::lex::target_key;
use crate::session::Pending;
use crate::wire::codec::Frame;

impl Frontend {
    /// A Close (refused when its name cannot be read or keyed as
    /// PostgreSQL keys it).
    pub(super) fn on_close(&mut self, f: &Frame, out: &mut BytesMut) {
        self.names.drain(&self.exchange);
        let unconverted = self.lex.names_unconverted();
        let op = match target_key(f.body(), unconverted) {
            Ok((space, key)) => self.names.set(space, &key, None),
            Err(r) => {
                self.raise(&r, out);
                return;
            }
        };
        self.exchange.push(Pending::Close { op });
        out.extend_from_slice(&f.raw);
    }
}
