//! PostgreSQL protocol v3: framing, and the one home of the messages pgveil
//! reads or writes itself, one file per message family.
//!
//! `codec` cuts a connection's bytes into frames (zero-copy slices of the
//! read buffer, lengths checked) and `budget` charges large ones; `tag`
//! names every tag byte by direction; `body` is the one reader and writer of
//! body primitives. The families: `startup` (the first packet), `auth`
//! (Authentication*, the PasswordMessage family), `status` (ReadyForQuery,
//! ParameterStatus, BackendKeyData), `error` (ErrorResponse), `query` (the
//! client's Query, Parse, Bind, Describe, Execute, Close, Sync, Flush) and
//! `result` (RowDescription, DataRow, ParameterDescription).
//!
//! Invariant: no allocation per value. Parameter and column values are
//! returned as slices into the frame, never copied (names, statement text
//! and error fields are the only things read into owned strings).
//! Everything pgveil does not rewrite is forwarded as raw frames, never
//! decoded.

pub mod auth;
pub mod body;
pub mod budget;
pub mod codec;
pub mod error;
pub mod query;
pub mod result;
pub mod startup;
pub mod status;
pub mod tag;

#[cfg(test)]
mod tests;
