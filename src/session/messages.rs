//! Kept for the moment: the extended-protocol and result codecs moved to
//! `wire::query` and `wire::result`; this re-export keeps the session's
//! `messages::…` paths compiling and goes once they name `wire` directly.

pub use crate::wire::query::*;
pub use crate::wire::result::*;
