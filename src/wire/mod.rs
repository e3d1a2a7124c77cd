//! PostgreSQL protocol v3 framing and the handful of messages pgveil reads
//! or writes itself.
//!
//! `tag` names every tag byte by direction; `body` is the one reader and
//! writer of body primitives (strings, integers, length-prefixed values,
//! message headers).

pub mod body;
pub mod budget;
pub mod codec;
pub mod msg;
pub mod tag;
