//! Describe: forwarded as the client sent it, with the [`Pending`] entry
//! that tells the backend how to rewrite the description (the statement as
//! pgveil prepared it; whether the portal is protected). A protected
//! portal's description is remembered as the one right before the next
//! Execute, which then needs no Describe of pgveil's (see
//! [`on_execute`](Frontend::on_execute)).

use bytes::BytesMut;

use super::Frontend;
use super::lex::target_key;
use super::names::Space;
use crate::session::Pending;
use crate::wire::codec::Frame;

impl Frontend {
    /// A Describe of a statement or portal (refused when its name cannot
    /// be read or keyed as PostgreSQL keys it).
    pub(super) fn on_describe(&mut self, f: &Frame, out: &mut BytesMut) {
        self.names.drain(&self.exchange);
        let unconverted = self.lex.names_unconverted();
        let (space, key) = match target_key(f.body(), unconverted) {
            Ok(target) => target,
            Err(r) => {
                self.raise(&r, out);
                return;
            }
        };
        if space == Space::Statement {
            self.exchange.push(Pending::DescribeStatement {
                prepared: self.names.possible(Space::Statement, &key).0,
            })
        } else {
            let known = self.names.possible(Space::Portal, &key).0;
            let protected = match known {
                Some(p) => p.plan.is_some() || p.copy.is_some(),
                // Maybe a SQL cursor (see `protected_cursors`).
                None => self.protected_cursors,
            };
            if protected {
                self.described = Some(key.clone());
            }
            self.exchange.push(Pending::DescribePortal {
                portal: key,
                protected,
                internal: false,
            })
        }
        out.extend_from_slice(&f.raw);
    }
}
