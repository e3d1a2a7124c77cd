//! The bridge between wire values and the crypto core, kept under its old
//! path: the code lives in [`crate::seal`], below both the session layer and
//! the ops commands (`pgveil encrypt`, `rotate`, `shred`) that share it.

pub use crate::seal::*;
